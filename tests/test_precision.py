"""Tests of utils/precision.py (lesson 08): float formats, bfloat16 rounding, relative error,
the mixed-precision MLP, dynamic loss scaling, keys, bit-for-bit comparison and the
deterministic-ops flag."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

from utils import environment, precision, training
from utils.introspection import CompileCounter

# --- float formats --------------------------------------------------------------------------


def test_float_formats_widest_first_and_float8_optional(monkeypatch):
    names = [d.name for d in precision.float_formats()]
    assert names[:3] == ["float32", "bfloat16", "float16"]
    assert [d.name for d in precision.float_formats(include_float8=False)] == names[:3]
    monkeypatch.delattr(jnp, "float8_e5m2")  # a JAX without this float8 name
    assert "float8_e5m2" not in [d.name for d in precision.float_formats()]


def test_format_table_reads_finfo():
    table = precision.format_table([jnp.float16, jnp.bfloat16])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("format")
    f16 = lines[2].split()
    assert f16[:4] == ["float16", "16", "5", "10"] and f16[4] == "6.55e+04"
    assert lines[3].split()[:4] == ["bfloat16", "16", "8", "7"]


def test_format_table_rejects_an_integer_dtype():
    with pytest.raises(ValueError, match="not a floating point dtype"):
        precision.format_table([jnp.int32])


@pytest.mark.parametrize(("value", "dtype", "expected"), [
    (1.0, jnp.bfloat16, "0 01111111 0000000"),
    (-2.0, jnp.float16, "1 10000 0000000000"),
    (1.0, jnp.float32, "0 01111111 " + "0" * 23),
])
def test_bit_fields(value, dtype, expected):
    assert precision.bit_fields(value, dtype) == expected


# --- round_to_bfloat16, relative_error ------------------------------------------------------


def _expected_bf16(x):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def test_round_to_bfloat16_scalar_tie_to_even():
    assert float(precision.round_to_bfloat16(jnp.float32(1 + 2**-8))) == 1.0
    assert float(precision.round_to_bfloat16(jnp.float32(1 + 3 * 2**-8))) == 1 + 2**-6


def test_round_to_bfloat16_matches_ml_dtypes_on_every_kind_of_bits():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=(64, 1024), dtype=np.uint64).astype(np.uint32)
    bits[0, :8] = [0x7F800001, 0xFF800001, 0x7FC00000, 0x7F7FFFFF, 0x3F808000, 0x3F818000,
                   0x00008000, 0x80000000]
    x = bits.view(np.float32)
    got = np.asarray(jax.jit(precision.round_to_bfloat16)(x))
    expected = _expected_bf16(x)
    nan = np.isnan(x)
    assert got.shape == x.shape and got.dtype == np.float32
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))


@pytest.mark.parametrize("bits", [7, 10])
def test_round_mantissa_matches_a_cast_for_bfloat16_and_tf32_rounds_to_nearest(bits):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(64, 16)) * np.exp2(rng.integers(-30, 30, (64, 16)))).astype(np.float32)
    x[0, :4] = [np.nan, np.inf, -0.0, np.finfo(np.float32).max]
    got = np.asarray(precision.round_mantissa(x, bits))
    if bits == 7:
        expected = _expected_bf16(x)
    else:  # nearest value with 10 explicit mantissa bits: spacing 2**(e - 10)
        e = np.floor(np.log2(np.abs(x.astype(np.float64)), where=np.isfinite(x) & (x != 0),
                             out=np.zeros(x.shape)))
        step = np.exp2(e - 10)
        with np.errstate(all="ignore"):
            expected = (np.round(x / step) * step).astype(np.float32)  # ties to even
        expected = np.where(np.isfinite(x) & (x != 0), expected, x)
        expected[0, 3] = np.inf  # float32's largest is beyond TF32's: rounds up to inf
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def test_round_mantissa_rejects_bad_bits():
    for bits in (0, 24, 7.0, True):
        with pytest.raises(ValueError, match="mantissa_bits"):
            precision.round_mantissa(np.ones(2, np.float32), bits)
    assert np.array_equal(precision.round_mantissa(np.float32([1.1]), 23), np.float32([1.1]))


def test_relative_error_scalar_batched_and_mixed_dtypes():
    assert precision.relative_error(np.float32(1.5), 1.0) == pytest.approx(0.5)
    exact = np.array([[3.0, 4.0]])
    assert precision.relative_error(exact + [[0.0, 0.5]], exact) == pytest.approx(0.1)
    x = np.linspace(1, 2, 50)
    err = precision.relative_error(jnp.asarray(x, jnp.bfloat16), x)
    assert 0 < err < 2**-8


def test_relative_error_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        precision.relative_error(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="all zeros"):
        precision.relative_error(np.ones(3), np.zeros(3))


# --- the mixed-precision MLP ----------------------------------------------------------------


def test_mixed_mlp_in_float32_equals_training_mlp():
    x = jax.random.normal(jax.random.key(1), (3, 3, 4))
    mixed = precision.MixedPrecisionMLP(12, 16, 5, rngs=nnx.Rngs(5))
    plain = training.MLP(12, 16, 5, rngs=nnx.Rngs(5))
    forward = nnx.jit(lambda model, x: model(x))
    np.testing.assert_array_equal(forward(mixed, x), forward(plain, x))


def test_mixed_mlp_bfloat16_compute_float32_parameters_and_logits():
    model = precision.MixedPrecisionMLP(12, 8, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 12))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        np.dtype("float32")}
    assert model.hidden1(x).dtype == jnp.bfloat16
    assert model(x).dtype == jnp.float32 and model(x).shape == (1, 3)


def test_mixed_mlp_rejects_an_integer_dtype():
    with pytest.raises(ValueError, match="float dtype"):
        precision.MixedPrecisionMLP(4, 4, 2, dtype=jnp.int8, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(("platform", "capability", "expected"), [
    ("cpu", None, "float32"), ("tpu", None, "bfloat16"), ("gpu", "7.5", "float16"),
    ("gpu", "8.0", "bfloat16"), ("gpu", "9.0", "bfloat16"), ("gpu", None, "bfloat16"),
])
def test_pick_compute_dtype(platform, capability, expected):
    device = SimpleNamespace(platform=platform, compute_capability=capability)
    assert jnp.dtype(precision.pick_compute_dtype(device)).name == expected


def test_pick_compute_dtype_default_device_is_jax_first():
    expected = "float32" if jax.default_backend() == "cpu" else None
    got = jnp.dtype(precision.pick_compute_dtype()).name
    assert expected is None or got == expected


# --- dynamic loss scaling -------------------------------------------------------------------


def _rule(scale, good, finite, period):
    if not finite:
        return max(scale / 2, 1.0), 0
    return (scale * 2, 0) if good + 1 >= period else (scale, good + 1)


def test_update_loss_scale_follows_the_rule_over_random_sequences():
    rng = np.random.default_rng(3)
    update = jax.jit(precision.update_loss_scale, static_argnums=3)
    for period in (1, 2, 6):
        scale, good = 8.0, 0
        for finite in rng.random(40) < 0.7:
            got = update(jnp.float32(scale), jnp.int32(good), jnp.asarray(finite), period)
            scale, good = _rule(scale, good, bool(finite), period)
            assert (float(got[0]), int(got[1])) == (scale, good)
            assert got[0].dtype == jnp.float32 and got[1].dtype == jnp.int32


def test_update_loss_scale_eager_with_python_bool_and_floor():
    scale, good = precision.update_loss_scale(1.0, 3, False, 5)
    assert (float(scale), int(good)) == (1.0, 0)


def test_all_finite():
    assert bool(precision.all_finite({"a": jnp.ones(3), "b": [jnp.zeros((2, 2))]}))
    assert not bool(precision.all_finite({"a": jnp.ones(3), "b": jnp.array([0.0, jnp.inf])}))
    assert not bool(precision.all_finite([jnp.array([jnp.nan], jnp.float16)]))
    assert bool(precision.all_finite({}))


def test_loss_scaled_rejects_bad_settings():
    model = training.MLP(4, 4, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="period"):
        precision.LossScaled(model, period=0)
    with pytest.raises(ValueError, match="init_scale"):
        precision.LossScaled(model, init_scale=float("inf"))


def _scaled_setup(init_scale, period=3):
    model = precision.MixedPrecisionMLP(12, 16, 4, dtype=jnp.float16, rngs=nnx.Rngs(0))
    scaled = precision.LossScaled(model, init_scale=init_scale, period=period)
    optimizer = nnx.Optimizer(scaled, optax.adam(1e-2), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 12)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, size=8), jnp.int32)
    return scaled, optimizer, x, y


def test_loss_scaled_step_skips_and_halves_on_overflow():
    scaled, optimizer, x, y = _scaled_setup(2.0**40)  # float16 gradients overflow
    before = jax.tree.map(np.asarray, nnx.state(scaled, nnx.Param))
    step = nnx.jit(precision.loss_scaled_batch_step())
    loss, acc = step(scaled, optimizer, x, y)
    assert np.isfinite(float(loss)) and 0 <= float(acc) <= 1
    after = jax.tree.map(np.asarray, nnx.state(scaled, nnx.Param))
    assert precision.first_difference(before, after) is None  # the update was skipped
    assert int(optimizer.step[...]) == 0
    assert float(scaled.scale[...]) == 2.0**39 and int(scaled.skipped[...]) == 1


def test_loss_scaled_step_trains_grows_and_compiles_once():
    scaled, optimizer, x, y = _scaled_setup(2.0**4, period=3)
    reference = precision.MixedPrecisionMLP(12, 16, 4, dtype=jnp.float16, rngs=nnx.Rngs(0))
    ref_optimizer = nnx.Optimizer(reference, optax.adam(1e-2), wrt=nnx.Param)
    step = nnx.jit(precision.loss_scaled_batch_step())
    plain = nnx.jit(training.train_batch)
    for i in range(4):
        with CompileCounter() as compiles:
            loss, _ = step(scaled, optimizer, x, y)
            ref_loss, _ = plain(reference, ref_optimizer, x, y)
        np.testing.assert_allclose(loss, ref_loss, rtol=2e-3)
        assert i == 0 or compiles.compiles == 0, compiles.names  # compiled once
    assert float(scaled.scale[...]) == 2.0**5 and int(scaled.good_steps[...]) == 1
    assert int(scaled.skipped[...]) == 0
    got = jax.tree.leaves(nnx.state(scaled.model, nnx.Param))
    want = jax.tree.leaves(nnx.state(reference, nnx.Param))
    for a, b in zip(got, want, strict=True):  # the same updates as without scaling
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-4)


def test_loss_scaled_model_trains_with_fit():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = precision.MixedPrecisionMLP(12, 16, 2, dtype=jnp.float16, rngs=nnx.Rngs(0))
    scaled = precision.LossScaled(model, init_scale=2.0**15, period=4)
    optimizer = nnx.Optimizer(scaled, optax.adam(1e-2), wrt=nnx.Param)
    history = training.fit(scaled, optimizer, (x, y), epochs=3, batch_size=16,
                           key=jax.random.key(0), num_classes=2,
                           batch_step=precision.loss_scaled_batch_step(), progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]


# --- keys and bit-for-bit comparison --------------------------------------------------------


def test_worker_key_distinct_deterministic_and_jittable():
    key = jax.random.key(3)
    triples = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (2**31 - 1, 5, 7)]
    keys = [precision.worker_key(key, *t) for t in triples]
    rows = {np.asarray(jax.random.key_data(k)).tobytes() for k in keys + [key]}
    assert len(rows) == len(triples) + 1  # all different, none the key given
    jitted = jax.jit(jax.vmap(precision.worker_key, in_axes=(None, 0, 0, 0)))
    batch = jitted(key, *(jnp.asarray([t[i] for t in triples], jnp.int32) for i in range(3)))
    assert batch.shape == (len(triples),) and jax.dtypes.issubdtype(batch.dtype,
                                                                    jax.dtypes.prng_key)
    for k, b in zip(keys, batch, strict=True):
        assert np.array_equal(jax.random.key_data(k), jax.random.key_data(b))


def test_first_difference_bitwise():
    a = {"w": np.array([0.0, np.nan], np.float32), "b": np.ones(2, np.float32)}
    same = {"w": np.array([0.0, np.nan], np.float32), "b": np.ones(2, np.float32)}
    assert precision.first_difference(a, same) is None
    signed = {"w": np.array([-0.0, np.nan], np.float32), "b": np.ones(2, np.float32) * 3}
    assert precision.first_difference(a, signed) == ("b", 2.0)  # "b" comes first
    signed["b"] = np.ones(2, np.float32)
    # NaN against NaN counts 0, -0.0 against 0.0 counts 0: the leaf differs, at distance 0
    assert precision.first_difference(a, signed) == ("w", 0.0)
    ulp = {"w": np.array([np.nextafter(np.float32(0), np.float32(1)), np.nan], np.float32),
           "b": np.ones(2, np.float32)}
    assert precision.first_difference(a, ulp) == ("w", float(np.float32(2.0**-149)))
    number = {"w": np.array([0.0, 1.0], np.float32), "b": np.ones(2, np.float32)}
    path, diff = precision.first_difference(a, number)
    assert path == "w" and np.isnan(diff)  # a NaN against a number
    infs = {"x": np.array([np.inf, -np.inf], np.float32)}
    assert precision.first_difference(infs, {"x": np.array([np.inf, np.inf], np.float32)}) == (
        "x", float("inf"))
    payload = {"x": np.array([np.nan], np.float32)}
    other = {"x": np.array([0x7FC00001], np.uint32).view(np.float32)}
    assert precision.first_difference(payload, other) == ("x", 0.0)


def test_first_difference_scalars_shapes_and_nnx_state():
    assert precision.first_difference([np.float32(1)], [np.float32(1)]) is None
    path, diff = precision.first_difference({"x": np.ones(2)}, {"x": np.ones(3)})
    assert path == "x" and np.isnan(diff)
    a = nnx.state(training.MLP(4, 3, 2, rngs=nnx.Rngs(0)), nnx.Param)
    b = nnx.state(training.MLP(4, 3, 2, rngs=nnx.Rngs(1)), nnx.Param)
    path, diff = precision.first_difference(a, b)
    assert path.startswith("hidden1/kernel") and diff > 0


def test_first_difference_rejects_different_structures():
    with pytest.raises(ValueError, match="different structures"):
        precision.first_difference({"a": 1.0}, {"b": 1.0})


# --- the deterministic-ops flag -------------------------------------------------------------


@pytest.mark.parametrize(("flags", "enabled"), [
    ("", False),
    ("--xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops=TRUE", True),
    ("--xla_gpu_deterministic_ops=1", True),
    ("--xla_gpu_deterministic_ops", True),
    ("--xla_gpu_deterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops=0", False),
    ("--xla_gpu_exclude_nondeterministic_ops=true", True),
    ("--xla_gpu_exclude_nondeterministic_ops", True),
    ("--xla_gpu_exclude_nondeterministic_ops=1", True),
    ("--xla_gpu_deterministic_ops_something_else=true", False),  # another flag
    ("--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false", False),  # last wins
    ("--xla_force_host_platform_device_count=2 --xla_gpu_exclude_nondeterministic_ops=0 "
     "--xla_gpu_deterministic_ops=1", True),
])
def test_deterministic_ops_enabled_reads_both_flags_as_xla_does(monkeypatch, flags, enabled):
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert precision.deterministic_ops_enabled() is enabled
    assert precision.deterministic_ops_enabled(flags) is enabled


def test_set_deterministic_ops_edits_xla_flags_before_jax_starts(monkeypatch):
    monkeypatch.setattr(environment, "jax_started", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    flags = precision.set_deterministic_ops(True)
    assert flags.split() == ["--xla_force_host_platform_device_count=2",
                             precision.DETERMINISTIC_FLAG]
    assert precision.deterministic_ops_enabled()
    assert precision.set_deterministic_ops(True) == flags  # asking again is harmless
    assert precision.set_deterministic_ops(False) == "--xla_force_host_platform_device_count=2"
    assert not precision.deterministic_ops_enabled()
    flags = precision.set_deterministic_ops(True, flag=precision.EXCLUDE_NONDETERMINISTIC_FLAG)
    assert flags.split()[-1] == "--xla_gpu_exclude_nondeterministic_ops=true"
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_exclude_nondeterministic_ops "
                                    "--xla_gpu_deterministic_ops=1")
    assert precision.set_deterministic_ops(False) == ""  # both flags removed
    with pytest.raises(ValueError, match="DETERMINISTIC_FLAG"):
        precision.set_deterministic_ops(True, flag="--xla_gpu_deterministic_ops")


def test_set_deterministic_ops_unsets_an_empty_variable(monkeypatch):
    monkeypatch.setattr(environment, "jax_started", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", precision.DETERMINISTIC_FLAG)
    assert precision.set_deterministic_ops(False) == ""
    import os

    assert "XLA_FLAGS" not in os.environ


def test_set_deterministic_ops_after_jax_started(monkeypatch):
    jnp.zeros(1).block_until_ready()  # JAX has started in this process
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert precision.set_deterministic_ops(False) == ""  # nothing to change: fine
    with pytest.raises(environment.RestartKernelError, match="Restart the kernel"):
        precision.set_deterministic_ops(True)
    with pytest.raises(ValueError, match="True or False"):
        precision.set_deterministic_ops("yes")


def test_determinism_probe_in_a_child_process_with_the_flag():
    child = precision.run_determinism_probe(True, size=4096, repeats=3)
    json.dumps(child)
    assert child["deterministic_flag"] is True and child["backend"] == jax.default_backend()
    if jax.default_backend() == "cpu":  # the CPU backend is deterministic, flag or not
        for op in ("scatter_add", "sum", "maxpool_grad"):
            assert child[op]["identical"] and child[op]["distinct_results"] == 1
            assert child[op]["max_abs_diff"] == 0.0 and child[op]["median_s"] > 0


def test_determinism_probe_untimed_compares_results_only():
    child = precision.run_determinism_probe(
        True, size=1024, repeats=2, flag=precision.EXCLUDE_NONDETERMINISTIC_FLAG, timed=False)
    assert child["deterministic_flag"] is True  # the narrower flag, accepted by CPU builds too
    assert child["sum"]["identical"] and child["sum"]["median_s"] is None
    with pytest.raises(ValueError, match="EXCLUDE_NONDETERMINISTIC_FLAG"):
        precision.run_determinism_probe(True, flag="--xla_gpu_deterministic_ops")


def test_run_determinism_probe_reports_a_failing_child(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_no_such_flag_for_the_test=1")  # aborts XLA
    with pytest.raises(RuntimeError, match="determinism probe"):
        precision.run_determinism_probe(False, size=64, repeats=1)


def test_reproducibility_report_lists_versions_and_settings():
    text = precision.reproducibility_report()
    for field in ("jax ", "XLA_FLAGS", "deterministic GPU ops", "jax_default_matmul_precision",
                  "jax_enable_x64", "jax_threefry_partitionable", "compute capability",
                  "devices:"):
        assert field in text


def test_cuda_library_versions_reads_installed_packages(monkeypatch):
    import importlib.metadata

    installed = {"nvidia-cudnn-cu12": "9.19.0.56", "nvidia-cuda-runtime": "13.0.96"}

    def version(name):
        if name in installed:
            return installed[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert precision.cuda_library_versions() == {
        "CUDA runtime": "nvidia-cuda-runtime 13.0.96", "cuDNN": "nvidia-cudnn-cu12 9.19.0.56"}
    installed.clear()
    assert precision.cuda_library_versions() == {}
