"""utils.kernels: the lesson's Pallas kernels (interpret mode), the block checker, the
memory-traffic counter and the choice of a path to run kernels on."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from utils import kernels


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _integers(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(-3, 4, size=shape), jnp.float32)


# ---------------------------------------------------------------------------- check_blocks


def test_check_blocks_gives_the_grid():
    assert kernels.check_blocks((64,), (16,)) == (4,)
    assert kernels.check_blocks((48, 32), (16, 32)) == (3, 1)
    assert kernels.check_blocks((8, 8, 6), (8, 4, 3)) == (1, 2, 2)


@pytest.mark.parametrize(("shape", "block", "fragment"), [
    ((64, 100), (16, 32), "axis 1 of x has size 100, not a multiple of its block size 32"),
    ((64,), (16, 16), "but the block has 2"),
    ((64,), (0,), "not a positive whole number"),
    ((64,), (True,), "not a positive whole number"),
    ((0, 8), (4, 4), "axis 0 of x has size 0"),
])
def test_check_blocks_says_what_is_wrong(shape, block, fragment):
    with pytest.raises(ValueError) as error:
        kernels.check_blocks(shape, block)
    assert fragment in str(error.value)


def test_check_blocks_suggests_a_padded_size():
    with pytest.raises(ValueError, match="Pad x to 128"):
        kernels.check_blocks((100,), (32,))


# ---------------------------------------------------------------------------- the kernels


def test_bias_relu_matches_numpy_for_several_blocks():
    x, b = _normal(0, (32, 48)), _normal(1, (48,))
    expected = np.maximum(np.asarray(x) + np.asarray(b), 0)
    for block in ((16, 16), (32, 48), (8, 24)):
        np.testing.assert_allclose(kernels.bias_relu(x, b, block=block), expected, rtol=1e-6)


def test_bias_relu_rejects_a_bias_of_the_wrong_length():
    with pytest.raises(ValueError, match="b must have shape"):
        kernels.bias_relu(_normal(0, (16, 32)), _normal(1, (16,)), block=(16, 16))


def test_matmul_is_exact_on_integers_and_checks_shapes():
    x, y = _integers(2, (32, 48)), _integers(3, (48, 16))
    expected = np.asarray(x) @ np.asarray(y)
    for block in ((16, 16, 16), (32, 16, 48), (8, 8, 8)):
        np.testing.assert_array_equal(kernels.matmul(x, y, block=block), expected)
    with pytest.raises(ValueError, match="x's columns to match y's rows"):
        kernels.matmul(x, _integers(4, (32, 16)))
    with pytest.raises(ValueError, match="not a multiple"):
        kernels.matmul(x, y, block=(16, 16, 32))


def test_matmul_looped_matches_numpy_and_runs_under_jit():
    x, y = _integers(5, (32, 64)), _integers(6, (64, 48))
    got = jax.jit(functools.partial(kernels.matmul_looped, block=(16, 16, 16)))(x, y)
    np.testing.assert_array_equal(got, np.asarray(x) @ np.asarray(y))


def test_row_sum_and_softmax_match_numpy():
    x = _normal(7, (16, 32), scale=3)
    np.testing.assert_allclose(kernels.row_sum(x, block=(8, 8)), np.asarray(x).sum(1),
                               rtol=1e-5, atol=1e-5)
    e = np.exp(np.asarray(x, np.float64) - np.asarray(x).max(1, keepdims=True))
    np.testing.assert_allclose(kernels.softmax(x, block_rows=8), e / e.sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-7)


def test_softmax_and_logsumexp_survive_extreme_rows():
    x = np.random.default_rng(8).normal(size=(8, 32)) * 3
    x[0] *= 1000
    x[1] = 1e4
    x[2] = -1e4
    x = jnp.asarray(x, jnp.float32)
    soft = np.asarray(kernels.softmax(x, block_rows=8))
    assert np.all(np.isfinite(soft))
    np.testing.assert_allclose(soft[1], np.full(32, 1 / 32), rtol=1e-6)
    lse = kernels.logsumexp(x, block=(8, 8))
    np.testing.assert_allclose(lse, jax.nn.logsumexp(x, axis=1), rtol=1e-5, atol=1e-5)


def test_attention_matches_the_plain_version_with_several_key_blocks():
    q, k, v = _normal(9, (16, 8), scale=30), _normal(10, (32, 8)), _normal(11, (32, 4))
    with jax.default_matmul_precision("float32"):
        got = kernels.attention(q, k, v, block=(8, 8))
        expected = kernels.reference_attention(q, k, v)
    scores = np.asarray(q, np.float64) @ np.asarray(k, np.float64).T / np.sqrt(8)
    weights = np.exp(scores - scores.max(1, keepdims=True))
    by_numpy = (weights / weights.sum(1, keepdims=True)) @ np.asarray(v, np.float64)
    np.testing.assert_allclose(expected, by_numpy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, by_numpy, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="need q"):
        kernels.attention(q, k, v[:, :2].T, block=(8, 8))


def test_wrappers_reject_arrays_that_are_not_matrices():
    with pytest.raises(ValueError, match="must be a 2-D array"):
        kernels.softmax(jnp.ones(8), block_rows=8)


# ---------------------------------------------------------------------------- traffic


def _add(x, y, *, block, grid=None, index=lambda i: (i,)):
    spec = pl.BlockSpec((block,), index)
    return pl.pallas_call(
        lambda a, b, o: o.__setitem__(..., a[...] + b[...]),
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=grid or (x.shape[0] // block,), in_specs=[spec, spec], out_specs=spec,
        interpret=True)(x, y)


def test_count_traffic_of_a_vector_add():
    x = jnp.ones(1024)
    traffic = kernels.count_traffic(_add, x, x, block=256, names=("x", "y"))
    assert traffic.grid == (4,) and traffic.programs == 4
    assert [o.name for o in traffic.operands] == ["x", "y", "output 0"]
    assert traffic.bytes_read == 2 * 1024 * 4 and traffic.bytes_written == 1024 * 4
    assert not traffic.outside and not traffic.revisited
    assert "grid (4,): 4 programs" in str(traffic)


def test_count_traffic_of_the_matmul_matches_the_count_by_hand():
    x, y = jnp.ones((64, 96)), jnp.ones((96, 32))
    for block in ((16, 16, 16), (32, 8, 48), (64, 32, 96)):
        traffic = kernels.count_traffic(kernels.matmul, x, y, block=block)
        bm, bn, bk = block
        tiles = (64 // bm) * (32 // bn)
        if 96 // bk > 1:
            assert traffic.bytes_read == tiles * kernels.tile_read_bytes(block, 96)
        assert traffic.bytes_written == 64 * 32 * 4
    # One tile for everything: every number read once (lesson 01's count).
    assert traffic.bytes_read == 4 * (64 * 96 + 96 * 32)


def test_count_traffic_skips_a_copy_when_consecutive_steps_use_the_same_block():
    x, y = jnp.ones((32, 16)), jnp.ones((16, 64))
    traffic = kernels.count_traffic(kernels.matmul, x, y, block=(16, 16, 16))  # one k step
    x_copies = traffic.operands[0].copies
    assert x_copies == 2  # block (i, 0) stays for all j: once per row of tiles
    assert traffic.operands[1].copies == 2 * 4  # y's block changes at every step


def test_count_traffic_finds_revisited_outputs_and_blocks_outside():
    x = jnp.ones((32, 32))

    def reduction_first(x):  # the column blocks are the first grid axis: wrong on hardware
        return pl.pallas_call(
            kernels.row_sum_kernel, out_shape=jax.ShapeDtypeStruct((32,), x.dtype),
            grid=(4, 2), in_specs=[pl.BlockSpec((16, 8), lambda j, i: (i, j))],
            out_specs=pl.BlockSpec((16,), lambda j, i: (i,)), interpret=True)(x)

    traffic = kernels.count_traffic(reduction_first, x)
    assert traffic.revisited and "visited at grid step (0, 0) and again at (1, 0)" in (
        traffic.revisited[0])
    too_long = kernels.count_traffic(_add, jnp.ones(64), jnp.ones(64), block=16, grid=(5,))
    assert too_long.outside and "grid step (4,) maps input 0 to block (4,)" in (
        too_long.outside[0])
    shifted = kernels.count_traffic(_add, jnp.ones(64), jnp.ones(64), block=16,
                                    index=lambda i: (i + 1,))
    assert shifted.outside


def test_count_traffic_looks_inside_jit_and_refuses_what_it_cannot_count():
    x = jnp.ones((16, 32))
    traffic = kernels.count_traffic(jax.jit(lambda a: kernels.softmax(a, block_rows=8)), x)
    assert traffic.grid == (2,)
    with pytest.raises(ValueError, match="makes 0"):
        kernels.count_traffic(jnp.sin, x)
    with pytest.raises(ValueError, match="makes 2"):
        kernels.count_traffic(lambda a: kernels.softmax(kernels.softmax(a)), x)


def test_tile_read_bytes():
    assert kernels.tile_read_bytes((16, 16, 16), 64) == 4 * (16 * 16 + 16 * 16) * 4
    assert kernels.tile_read_bytes((32, 8, 4), 8, itemsize=2) == 2 * (32 * 4 + 4 * 8) * 2


def test_launch_source_shows_the_launch_only():
    text = kernels.launch_source(kernels.matmul)
    assert "pl.pallas_call(" in text and "grid=(ni, nj, nk)" in text
    assert '"""' not in text and "import" not in text and "raise" not in text
    assert not text.startswith(" ")


# ---------------------------------------------------------------------------- paths


def test_choose_path_for_each_kind_of_device():
    cpu = kernels.choose_path(None)
    assert cpu.name == "interpret mode" and not cpu.compiled
    assert dict(cpu.options) == {"interpret": True}
    t4 = kernels.choose_path((7, 5))
    assert t4.name == "interpret mode" and "7.5" in t4.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # choosing a path must not warn
        h100 = kernels.choose_path((9, 0))
    assert h100.compiled
    if kernels.pallas_call_gpu_default() == "Mosaic GPU":  # JAX 0.10
        assert h100.name == "Mosaic GPU" and dict(h100.options) == {}
    else:  # newer JAX: pallas_call compiles for GPUs through Triton only
        assert h100.name == "Triton" and "deprecated" in h100.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor on 8.x
        a100 = kernels.choose_path((8, 0))
    assert a100.name in ("Triton", "interpret mode")
    if a100.name == "Triton":
        assert "deprecated" in a100.reason
        assert type(a100.options["compiler_params"]).__name__ == "CompilerParams"


def test_pallas_call_gpu_default_follows_the_jax_version():
    major, minor = (int(p) for p in jax.__version__.split(".")[:2])
    expected = "Mosaic GPU" if (major, minor) < (0, 11) else "Triton"
    assert kernels.pallas_call_gpu_default() == expected


def test_warnings_as_lines_collects_each_warning_once():
    said: list[str] = []
    with kernels.warnings_as_lines(said):
        warnings.warn("old   API", DeprecationWarning, stacklevel=1)
        warnings.warn("old   API", DeprecationWarning, stacklevel=1)
    assert said == ["DeprecationWarning: old API"]
