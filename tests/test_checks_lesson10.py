"""Checkers of lesson 10_pallas_kernels: typical kernel mistakes FAIL, each with a message that
says what is wrong (the cause only where the checker established it), and correct kernels
written another way, or with other tile sizes, PASS.

The classes of mistakes (issue 22): wrong index map, missing accumulator reset,
accumulating across the wrong grid axis, off-by-one block, reading outside the block,
unstable softmax; plus a few that students make on the way (assigning instead of adding,
normalising along the wrong axis, forgetting the rescale of an online sum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from checker_helpers import expect_failed, run_checker
from jax.experimental import pallas as pl

from utils import kernels
from utils.checks import lesson10_pallas_kernels as check


def _passes(capsys, checker, answer, name):
    line, use = run_checker(capsys, checker, answer)
    assert line.startswith(f"PASSED {name}:"), line
    assert use is answer
    return line


# ---------------------------------------------------------------------------- exercise 1


def _launch(x, b, block, *, grid=None, x_map=lambda i, j: (i, j), b_map=lambda i, j: (j,),
            o_map=lambda i, j: (i, j)):
    bm, bn = block
    return pl.pallas_call(
        kernels.bias_relu_kernel,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=grid if grid is not None else (x.shape[0] // bm, x.shape[1] // bn),
        in_specs=[pl.BlockSpec((bm, bn), x_map), pl.BlockSpec((bn,), b_map)],
        out_specs=pl.BlockSpec((bm, bn), o_map),
        interpret=True)(x, b)


def test_bias_relu_accepts_a_correct_launch_with_its_own_default_tiles(capsys):
    def bias_relu(x, b, *, block=(8, 8)):  # another default; the checker passes its own
        return _launch(x, b, block)

    _passes(capsys, check.bias_relu, bias_relu, "bias_relu")


def test_bias_relu_accepts_a_two_dimensional_bias(capsys):
    def bias_relu(x, b, *, block=(16, 32)):
        bm, bn = block
        return pl.pallas_call(
            kernels.bias_relu_kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            grid=(x.shape[0] // bm, x.shape[1] // bn),
            in_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
                      pl.BlockSpec((1, bn), lambda i, j: (0, j))],
            out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)), interpret=True,
        )(x, b.reshape(1, -1))

    _passes(capsys, check.bias_relu, bias_relu, "bias_relu")


def test_bias_relu_rejects_a_wrong_index_map_for_the_bias(capsys):
    def bias_relu(x, b, *, block=(16, 32)):
        return _launch(x, b, block, b_map=lambda i, j: (i,))  # follows the rows

    expect_failed(capsys, check.bias_relu, "bias_relu", bias_relu, "for x of shape")


def test_bias_relu_rejects_swapped_index_maps(capsys):
    def bias_relu(x, b, *, block=(16, 32)):
        return _launch(x, b, block, x_map=lambda i, j: (j, i), o_map=lambda i, j: (j, i))

    expect_failed(capsys, check.bias_relu, "bias_relu", bias_relu, "outside")


def test_bias_relu_rejects_a_grid_one_block_short(capsys):
    def bias_relu(x, b, *, block=(16, 32)):
        return _launch(x, b, block, grid=(x.shape[0] // block[0] - 1, x.shape[1] // block[1]))

    expect_failed(capsys, check.bias_relu, "bias_relu", bias_relu, "were never written")


def test_bias_relu_rejects_a_grid_one_block_long(capsys):
    """Interpret mode clamps the extra program's blocks back in: the values are right, the
    launch is not (on a GPU it would read and write outside the arrays)."""
    def bias_relu(x, b, *, block=(16, 32)):
        return _launch(x, b, block, grid=(x.shape[0] // block[0] + 1, x.shape[1] // block[1]))

    expect_failed(capsys, check.bias_relu, "bias_relu", bias_relu, "outside", "more steps")


def test_bias_relu_rejects_an_index_map_off_by_one_block(capsys):
    def bias_relu(x, b, *, block=(16, 32)):
        return _launch(x, b, block, x_map=lambda i, j: (i + 1, j))

    expect_failed(capsys, check.bias_relu, "bias_relu", bias_relu, "outside")


def test_bias_relu_rejects_an_answer_without_a_kernel(capsys):
    def bias_relu(x, b, *, block=(16, 32)):
        return jnp.maximum(x + b, 0.0)

    expect_failed(capsys, check.bias_relu, "bias_relu", bias_relu, "makes 0",
                  "not to compute the result another way")


# ---------------------------------------------------------------------------- exercise 2


def test_matmul_kernel_accepts_another_correct_body(capsys):
    def matmul_kernel(x_ref, y_ref, o_ref):
        previous = jnp.where(pl.program_id(2) == 0, 0.0, o_ref[...])
        o_ref[...] = previous + jax.lax.dot_general(
            x_ref[...], y_ref[...], (((1,), (0,)), ((), ())))

    _passes(capsys, check.matmul_kernel, matmul_kernel, "matmul_kernel")


def test_matmul_kernel_rejects_a_missing_reset(capsys):
    def matmul_kernel(x_ref, y_ref, o_ref):
        o_ref[...] += x_ref[...] @ y_ref[...]

    expect_failed(capsys, check.matmul_kernel, "matmul_kernel", matmul_kernel,
                  "worst is at index", "got nan",
                  "Every entry is NaN, even when the whole product is a single block")


def test_matmul_kernel_rejects_a_reset_on_the_wrong_grid_axis(capsys):
    def matmul_kernel(x_ref, y_ref, o_ref):
        @pl.when(pl.program_id(0) == 0)
        def _():
            o_ref[...] = jnp.zeros_like(o_ref)

        o_ref[...] += x_ref[...] @ y_ref[...]

    expect_failed(capsys, check.matmul_kernel, "matmul_kernel", matmul_kernel,
                  "were never reset", "program id of the reduction's grid axis")


def test_matmul_kernel_rejects_assigning_instead_of_adding(capsys):
    def matmul_kernel(x_ref, y_ref, o_ref):
        o_ref[...] = x_ref[...] @ y_ref[...]

    expect_failed(capsys, check.matmul_kernel, "matmul_kernel", matmul_kernel,
                  "equals the last reduction step's product alone", "worst is at index")


# ---------------------------------------------------------------------------- exercise 3


def _row_sum_launch(x, block, *, reduction_last=True, reset_axis=1):
    bm, bn = block

    def kernel(x_ref, o_ref):
        @pl.when(pl.program_id(reset_axis) == 0)
        def _():
            o_ref[...] = jnp.zeros_like(o_ref)

        o_ref[...] += jnp.sum(x_ref[...], axis=1)

    if reduction_last:
        grid, x_map, o_map = ((x.shape[0] // bm, x.shape[1] // bn), lambda i, j: (i, j),
                              lambda i, j: (i,))
    else:
        grid, x_map, o_map = ((x.shape[1] // bn, x.shape[0] // bm), lambda j, i: (i, j),
                              lambda j, i: (i,))
    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((x.shape[0],), x.dtype),
                          grid=grid, in_specs=[pl.BlockSpec((bm, bn), x_map)],
                          out_specs=pl.BlockSpec((bm,), o_map), interpret=True)(x)


def test_row_sum_accepts_a_correct_answer_with_other_default_tiles(capsys):
    def row_sum(x, *, block=(4, 4)):
        return _row_sum_launch(x, block)

    _passes(capsys, check.row_sum, row_sum, "row_sum")


def test_row_sum_rejects_the_reduction_on_the_first_grid_axis(capsys):
    """Right values in interpret mode; wrong on hardware, where the output block is
    written back each time the grid moves to another row block."""
    def row_sum(x, *, block=(8, 16)):
        return _row_sum_launch(x, block, reduction_last=False, reset_axis=0)

    expect_failed(capsys, check.row_sum, "row_sum", row_sum, "visited at grid step",
                  "must be the last axis of the grid")


def test_row_sum_rejects_a_missing_reset(capsys):
    def row_sum(x, *, block=(8, 16)):
        bm, bn = block

        def kernel(x_ref, o_ref):
            o_ref[...] += jnp.sum(x_ref[...], axis=1)

        return pl.pallas_call(
            kernel, out_shape=jax.ShapeDtypeStruct((x.shape[0],), x.dtype),
            grid=(x.shape[0] // bm, x.shape[1] // bn),
            in_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j))],
            out_specs=pl.BlockSpec((bm,), lambda i, j: (i,)), interpret=True)(x)

    expect_failed(capsys, check.row_sum, "row_sum", row_sum, "Every entry is NaN")


def test_row_sum_rejects_a_reset_on_the_wrong_grid_axis(capsys):
    def row_sum(x, *, block=(8, 16)):
        return _row_sum_launch(x, block, reset_axis=0)

    expect_failed(capsys, check.row_sum, "row_sum", row_sum, "were never reset")


def test_row_sum_rejects_an_output_index_map_that_follows_the_columns(capsys):
    def row_sum(x, *, block=(8, 16)):
        bm, bn = block
        return pl.pallas_call(
            kernels.row_sum_kernel, out_shape=jax.ShapeDtypeStruct((x.shape[0],), x.dtype),
            grid=(x.shape[0] // bm, x.shape[1] // bn),
            in_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j))],
            out_specs=pl.BlockSpec((bm,), lambda i, j: (j,)), interpret=True)(x)

    expect_failed(capsys, check.row_sum, "row_sum", row_sum, "for x of shape")


# ---------------------------------------------------------------------------- exercise 4


def test_softmax_kernel_accepts_another_stable_body(capsys):
    def softmax_kernel(x_ref, o_ref):
        x = x_ref[...]
        shifted = x - x.max(axis=-1)[:, None]
        o_ref[...] = jnp.exp(shifted - jnp.log(jnp.exp(shifted).sum(axis=-1))[:, None])

    _passes(capsys, check.softmax_kernel, softmax_kernel, "softmax_kernel")


def test_softmax_kernel_rejects_an_unstable_softmax(capsys):
    def softmax_kernel(x_ref, o_ref):
        e = jnp.exp(x_ref[...])
        o_ref[...] = e / jnp.sum(e, axis=1, keepdims=True)

    expect_failed(capsys, check.softmax_kernel, "softmax_kernel", softmax_kernel,
                  "Right on ordinary values but not on these extreme ones")


def test_softmax_kernel_rejects_a_sum_along_the_wrong_axis(capsys):
    def softmax_kernel(x_ref, o_ref):
        x = x_ref[...]
        e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))
        o_ref[...] = e / jnp.sum(e, axis=0, keepdims=True)

    expect_failed(capsys, check.softmax_kernel, "softmax_kernel", softmax_kernel,
                  "not 1: normalise along each row")


def test_softmax_kernel_rejects_a_maximum_along_the_wrong_axis(capsys):
    def softmax_kernel(x_ref, o_ref):
        x = x_ref[...]
        e = jnp.exp(x - jnp.max(x, axis=0, keepdims=True))
        o_ref[...] = e / jnp.sum(e, axis=1, keepdims=True)

    expect_failed(capsys, check.softmax_kernel, "softmax_kernel", softmax_kernel,
                  "worst is at index")


# ---------------------------------------------------------------------------- exercise 5


def _lse_kernel(*, rescale=True, reset_axis=1, stable=True, reset=True):
    def kernel(x_ref, lse_ref, m_ref, s_ref):
        j = pl.program_id(1)
        if reset:
            @pl.when(pl.program_id(reset_axis) == 0)
            def _():
                m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
                s_ref[...] = jnp.zeros_like(s_ref)

        x = x_ref[...]
        if stable:
            m_new = jnp.maximum(m_ref[...], x.max(axis=1))
        else:
            m_new = jnp.zeros_like(m_ref[...])
        old = s_ref[...] * jnp.exp(m_ref[...] - m_new) if rescale else s_ref[...]
        s_ref[...] = old + jnp.exp(x - m_new[:, None]).sum(axis=1)
        m_ref[...] = m_new

        @pl.when(j == pl.num_programs(1) - 1)
        def _():
            lse_ref[...] = m_ref[...] + jnp.log(s_ref[...])

    return kernel


def test_logsumexp_kernel_accepts_a_correct_body(capsys):
    _passes(capsys, check.logsumexp_kernel, _lse_kernel(), "logsumexp_kernel")


def test_logsumexp_kernel_rejects_a_missing_rescale(capsys):
    expect_failed(capsys, check.logsumexp_kernel, "logsumexp_kernel",
                  _lse_kernel(rescale=False), "Right when a row fits in one block but wrong "
                  "when it is cut into")


def test_logsumexp_kernel_rejects_a_missing_reset(capsys):
    expect_failed(capsys, check.logsumexp_kernel, "logsumexp_kernel", _lse_kernel(reset=False),
                  "NaN even when a row is a single block", "got nan")


def test_logsumexp_kernel_rejects_a_reset_on_the_wrong_grid_axis(capsys):
    expect_failed(capsys, check.logsumexp_kernel, "logsumexp_kernel",
                  _lse_kernel(reset_axis=0), "NaN only for row blocks after the first")


def test_logsumexp_kernel_rejects_an_unstable_sum(capsys):
    expect_failed(capsys, check.logsumexp_kernel, "logsumexp_kernel", _lse_kernel(stable=False),
                  "Right on ordinary values but not on these extreme ones")


# ---------------------------------------------------------------------------- exercise 6


def _attention_kernel(*, rescale_o=True, normalise_each_step=False, stable=True, scale=True):
    def kernel(q_ref, k_ref, v_ref, o_ref, m_ref, l_ref):
        j = pl.program_id(1)

        @pl.when(j == 0)
        def _():
            o_ref[...] = jnp.zeros_like(o_ref)
            m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
            l_ref[...] = jnp.zeros_like(l_ref)

        q = q_ref[...]
        s = q @ k_ref[...].T
        if scale:
            s = s / np.sqrt(q.shape[1])
        m_new = jnp.maximum(m_ref[...], s.max(axis=1)) if stable else jnp.zeros_like(m_ref[...])
        p = jnp.exp(s - m_new[:, None])
        c = jnp.exp(m_ref[...] - m_new)
        l_ref[...] = c * l_ref[...] + p.sum(axis=1)
        o_ref[...] = (c[:, None] * o_ref[...] if rescale_o else o_ref[...]) + p @ v_ref[...]
        m_ref[...] = m_new
        if normalise_each_step:
            o_ref[...] = o_ref[...] / l_ref[...][:, None]
        else:
            @pl.when(j == pl.num_programs(1) - 1)
            def _():
                o_ref[...] = o_ref[...] / l_ref[...][:, None]

    return kernel


def test_attention_kernel_accepts_a_correct_body(capsys):
    _passes(capsys, check.attention_kernel, _attention_kernel(), "attention_kernel")


def test_attention_kernel_rejects_values_that_are_not_rescaled(capsys):
    expect_failed(capsys, check.attention_kernel, "attention_kernel",
                  _attention_kernel(rescale_o=False), "wrong when it is cut into",
                  "worst is at index")


def test_attention_kernel_rejects_normalising_at_every_step(capsys):
    expect_failed(capsys, check.attention_kernel, "attention_kernel",
                  _attention_kernel(normalise_each_step=True), "wrong when it is cut into")


def test_attention_kernel_rejects_an_unstable_softmax(capsys):
    expect_failed(capsys, check.attention_kernel, "attention_kernel",
                  _attention_kernel(stable=False), "Right on ordinary values but not on these")


def test_attention_kernel_rejects_scores_without_the_scale(capsys):
    expect_failed(capsys, check.attention_kernel, "attention_kernel",
                  _attention_kernel(scale=False), "worst is at index")


def test_failed_lines_name_the_shape_the_blocks_and_the_grid(capsys):
    line = expect_failed(capsys, check.attention_kernel, "attention_kernel",
                         _attention_kernel(scale=False))
    assert "in blocks (bq, bk) = (8, 8) (grid 2 x 4)" in line, line


# ---------------------------------------------------------------------------- exercise 7


def _looped_kernel(*, extra=0, scaled=True):
    def kernel(x_ref, y_ref, o_ref, *, bk):
        def step(k, acc):
            start = k * bk if scaled else k
            return acc + x_ref[:, pl.ds(start, bk)] @ y_ref[pl.ds(start, bk), :]

        steps = x_ref.shape[1] // bk + extra
        o_ref[...] = jax.lax.fori_loop(0, steps, step, jnp.zeros(o_ref.shape, jnp.float32))

    return kernel


def test_matmul_looped_kernel_accepts_a_python_loop(capsys):
    def matmul_looped_kernel(x_ref, y_ref, o_ref, *, bk):
        acc = jnp.zeros(o_ref.shape, jnp.float32)
        for k in range(x_ref.shape[1] // bk):  # unrolled at trace time: also right
            acc += x_ref[:, k * bk:(k + 1) * bk] @ y_ref[k * bk:(k + 1) * bk, :]
        o_ref[...] = acc

    _passes(capsys, check.matmul_looped_kernel, matmul_looped_kernel, "matmul_looped_kernel")


def test_matmul_looped_kernel_rejects_a_loop_that_reads_past_its_block(capsys):
    expect_failed(capsys, check.matmul_looped_kernel, "matmul_looped_kernel",
                  _looped_kernel(extra=1), "the last slice twice",
                  "reads whatever lies beyond the block")


def test_matmul_looped_kernel_rejects_a_loop_one_slice_short(capsys):
    expect_failed(capsys, check.matmul_looped_kernel, "matmul_looped_kernel",
                  _looped_kernel(extra=-1), "misses the last slice")


def test_matmul_looped_kernel_rejects_overlapping_slices(capsys):
    expect_failed(capsys, check.matmul_looped_kernel, "matmul_looped_kernel",
                  _looped_kernel(scaled=False), "slices overlap")
