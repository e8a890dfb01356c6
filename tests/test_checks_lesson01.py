"""Checkers of lesson 01_gpu_basics: the reference passes, a stub is NOT ATTEMPTED, and typical
wrong answers FAIL with a message that says what is wrong."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from checker_helpers import expect_failed, run_checker

from utils.checks import lesson01_gpu_basics as check

# ---- matmul_flops ---------------------------------------------------------------------

def test_reference_values():
    assert check.reference_matmul_flops(2, 3, 4) == 48
    assert check.reference_matmul_bytes(2, 3, 4) == 4 * (6 + 12 + 8)


def test_matmul_flops_other_correct_forms_pass(capsys):
    line, _ = run_checker(capsys, check.matmul_flops, lambda n, k, m: float(2 * n * k * m))
    assert line.startswith("PASSED"), line
    line, _ = run_checker(capsys, check.matmul_flops, lambda n, k, m: np.int64(n) * k * m * 2)
    assert line.startswith("PASSED"), line


def test_matmul_flops_rejects_forgetting_the_factor_two(capsys):
    expect_failed(capsys, check.matmul_flops, "matmul_flops", lambda n, k, m: n * k * m,
           "multiplies only")


def test_matmul_flops_rejects_assuming_square_matrices(capsys):
    expect_failed(capsys, check.matmul_flops, "matmul_flops", lambda n, k, m: 2 * n**3,
           "square")


def test_matmul_flops_rejects_int32_overflow(capsys):
    def int32(n, k, m):
        with np.errstate(over="ignore"):
            return int(np.int32(2) * np.int32(n) * np.int32(k) * np.int32(m))

    expect_failed(capsys, check.matmul_flops, "matmul_flops", int32, "overflow")


def test_matmul_flops_rejects_an_array_or_a_fraction(capsys):
    expect_failed(capsys, check.matmul_flops, "matmul_flops",
                  lambda n, k, m: np.array([2 * n * k * m]), "array of shape (1,)")
    expect_failed(capsys, check.matmul_flops, "matmul_flops", lambda n, k, m: 2 * n * k * m + 0.5,
           "not a whole number")


# ---- matmul_bytes ---------------------------------------------------------------------

def test_matmul_bytes_rejects_leaving_out_the_output(capsys):
    expect_failed(capsys, check.matmul_bytes, "matmul_bytes", lambda n, k, m: 4 * (n * k + k * m),
           "left out the output")


def test_matmul_bytes_rejects_bits(capsys):
    expect_failed(capsys, check.matmul_bytes, "matmul_bytes",
           lambda n, k, m: 32 * (n * k + k * m + n * m), "bits")


def test_matmul_bytes_rejects_counting_elements(capsys):
    expect_failed(capsys, check.matmul_bytes, "matmul_bytes", lambda n, k, m: n * k + k * m + n * m,
           "number of elements")


def test_matmul_bytes_rejects_square_assumption(capsys):
    expect_failed(capsys, check.matmul_bytes, "matmul_bytes", lambda n, k, m: 12 * n * n, "square")


# ---- time_call ------------------------------------------------------------------------

def _no_block(fn, *args):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _no_warm_up(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _milliseconds(fn, *args):
    return 1000 * check.reference_time_call(fn, *args)


def test_time_call_rejects_not_waiting_for_the_result(capsys):
    expect_failed(capsys, check.time_call, "time_call", _no_block, "asynchronous dispatch")


def test_time_call_rejects_timing_the_compilation(capsys):
    expect_failed(capsys, check.time_call, "time_call", _no_warm_up, "only once",
                  "compiling")


def _no_wait_for_the_warm_up(fn, *args):  # the warm-up's work still runs when the clock starts
    fn(*args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _queued_no_wait_for_the_warm_up(fn, *args):  # the same, diluted over five timed calls
    fn(*args)
    start = time.perf_counter()
    jax.block_until_ready([fn(*args) for _ in range(5)])
    return (time.perf_counter() - start) / 5


def _queued_total(fn, *args):  # forgets to divide by the number of calls
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready([fn(*args) for _ in range(3)])
    return time.perf_counter() - start


def _waits_for_the_first_queued_call(fn, *args):  # the clock stops at the first of four
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    outs = [fn(*args) for _ in range(4)]
    jax.block_until_ready(outs[0])
    return (time.perf_counter() - start) / 4


def _compile_inside_the_clock(fn, *args):  # starts the clock before the warm-up call
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    middle = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start + 0 * middle


def test_time_call_rejects_not_waiting_for_the_warm_up(capsys):
    expect_failed(capsys, check.time_call, "time_call", _no_wait_for_the_warm_up,
                  "waited only after the last one")
    expect_failed(capsys, check.time_call, "time_call", _queued_no_wait_for_the_warm_up,
                  "waited only after the last one")


def test_time_call_rejects_an_undivided_total(capsys):
    expect_failed(capsys, check.time_call, "time_call", _queued_total,
                  "made 3 calls after the warm-up", "divide")


def test_time_call_rejects_stopping_at_the_first_queued_result(capsys):
    expect_failed(capsys, check.time_call, "time_call", _waits_for_the_first_queued_call,
                  "the clock stopped before the device finished")


def test_time_call_rejects_a_clock_started_before_the_warm_up(capsys):
    expect_failed(capsys, check.time_call, "time_call", _compile_inside_the_clock,
                  "compiling plus the work of all 2 calls")


def test_time_call_accepts_queueing_several_calls_and_waiting_once(capsys):
    def queued(fn, *args):
        jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        outs = [fn(*args) for _ in range(4)]
        jax.block_until_ready(outs[-1])
        return (time.perf_counter() - start) / 4

    def two_warm_ups_then_queued(fn, *args):
        fn(*args)
        jax.block_until_ready(fn(*args))  # waiting for the second covers the first too
        start = time.perf_counter()
        jax.block_until_ready([fn(*args) for _ in range(3)])
        return (time.perf_counter() - start) / 3

    for answer in (queued, two_warm_ups_then_queued):
        line, use = run_checker(capsys, check.time_call, answer)
        assert line.startswith("PASSED time_call:"), line
        assert use is answer


def test_time_call_rejects_milliseconds(capsys):
    expect_failed(capsys, check.time_call, "time_call", _milliseconds, "milliseconds")


def test_time_call_rejects_ignoring_the_arguments(capsys):
    def no_args(fn, *args):
        jax.block_until_ready(fn())
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start

    expect_failed(capsys, check.time_call, "time_call", no_args, "arguments")


def test_time_call_rejects_a_non_number(capsys):
    expect_failed(capsys, check.time_call, "time_call", lambda fn, *a: str(_no_warm_up(fn, *a)),
           "number of seconds")


def test_time_call_accepts_other_ways_to_wait(capsys):
    def method_and_benchmark(fn, *args):
        fn(*args).block_until_ready()
        start = time.perf_counter()
        np.asarray(fn(*args))
        return time.perf_counter() - start

    line, _ = run_checker(capsys, check.time_call, method_and_benchmark)
    assert line.startswith("PASSED"), line

    from utils.timing import benchmark

    line, _ = run_checker(capsys, check.time_call,
                   lambda fn, *args: benchmark(fn, *args, repeats=3).median_s)
    assert line.startswith("PASSED"), line


def test_reference_time_call_waits_for_a_real_jax_computation():
    """The simulated device models JAX: a jitted matmul returns before its result is ready."""
    matmul = jax.jit(jnp.matmul)
    a = jnp.ones((1024, 1024), jnp.float32)
    honest = check.reference_time_call(matmul, a, a)
    naive = min(_no_block(matmul, a, a) for _ in range(3))
    assert honest > 0
    assert naive < honest


# ---- near misses: edge shapes, overflow, other conventions --------------------------

def test_matmul_flops_rejects_the_exact_addition_count(capsys):
    # n*m*(2k-1) counts k-1 additions: right by another convention, not the lesson's
    expect_failed(capsys, check.matmul_flops, "matmul_flops",
                  lambda n, k, m: n * m * (2 * k - 1), "k - 1 additions")


def test_matmul_flops_rejects_jnp_int32_arithmetic(capsys):
    def jnp_int32(n, k, m):  # a Python int times a jnp int32 stays int32, and wraps
        return int(jnp.int32(2) * n * k * m)

    expect_failed(capsys, check.matmul_flops, "matmul_flops", jnp_int32, "overflow")


def test_matmul_flops_rejects_counting_the_output_elements(capsys):
    expect_failed(capsys, check.matmul_flops, "matmul_flops", lambda n, k, m: 2 * n * max(k, 1) * m,
                  "returned 48 but the answer is 0")


def test_matmul_bytes_rejects_float64_and_int32(capsys):
    expect_failed(capsys, check.matmul_bytes, "matmul_bytes",
                  lambda n, k, m: 8 * (n * k + k * m + n * m), "float64")

    def int32(n, k, m):
        with np.errstate(over="ignore"):
            return int(np.int32(4) * (np.int32(n) * np.int32(k) + np.int32(k) * np.int32(m)
                                      + np.int32(n) * np.int32(m)))

    def jnp_int32(n, k, m):  # a Python int times a jnp int32 stays int32, and wraps
        return int(4 * (jnp.int32(n) * k + jnp.int32(k) * m + jnp.int32(n) * m))

    # (32768, 32768, 32768) moves 12 GiB: past 2**31 bytes
    for wrong in (int32, jnp_int32):
        expect_failed(capsys, check.matmul_bytes, "matmul_bytes", wrong,
                      "matmul_bytes(32768, 32768, 32768)", "32-bit integer arithmetic")


def test_matmul_shapes_are_the_same_every_run():
    assert check._shapes() == check._shapes()
    assert (6, 0, 4) in check._shapes() and (1, 784, 10) in check._shapes()
    assert check.reference_matmul_bytes(*check._shapes()[-1]) > 2**31


# ---- swap_rows ------------------------------------------------------------------------

def swap_sequentially(x, i, j):  # the second update reads the already updated array
    y = jnp.asarray(x).at[i].set(x[j])
    return y.at[j].set(y[i])


def swap_by_arithmetic(x, i, j):  # exact for ints (wrapping), loses small floats to big ones
    x = jnp.asarray(x)
    d = x[j] - x[i]
    return x.at[i].add(d).at[j].add(-d)


def swap_with_python_if(x, i, j):  # needs a concrete i and j: fails under jax.jit
    if i == j:
        return jnp.asarray(x)
    return check.reference_swap_rows(x, i, j)


def swap_numpy_in_place(x, i, j):  # a NumPy copy swapped in place: no tracer under jit
    x = np.array(x)
    x[[i, j]] = x[[j, i]]
    return x


def swap_by_fancy_index(x, i, j):  # right too: a permutation of the rows
    x = jnp.asarray(x)
    order = jnp.arange(x.shape[0])
    i, j = i % x.shape[0], j % x.shape[0]
    return x[order.at[i].set(j).at[j].set(i)]


def test_swap_rows_reference_values():
    x = jnp.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(check.reference_swap_rows(x, 0, -1), [[4, 5], [2, 3], [0, 1]])
    np.testing.assert_array_equal(check.reference_swap_rows(x, 1, 1), x)


def test_swap_rows_rejects_reading_the_updated_array(capsys):
    expect_failed(capsys, check.swap_rows, "swap_rows", swap_sequentially,
                  "already updated array")


def test_swap_rows_rejects_an_arithmetic_swap(capsys):
    expect_failed(capsys, check.swap_rows, "swap_rows", swap_by_arithmetic, "differs")


def test_swap_rows_rejects_a_python_if(capsys):
    expect_failed(capsys, check.swap_rows, "swap_rows", swap_with_python_if, "jax.jit")


def test_swap_rows_rejects_numpy_in_place(capsys):
    expect_failed(capsys, check.swap_rows, "swap_rows", swap_numpy_in_place, "jax.jit")


def test_swap_rows_accepts_a_permutation(capsys):
    line, use = run_checker(capsys, check.swap_rows, swap_by_fancy_index)
    assert line.startswith("PASSED swap_rows:"), line
    assert use is swap_by_fancy_index
