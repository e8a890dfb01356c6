"""Exercise checkers of lesson 01_gpu_basics, with their reference solutions.

Each checker takes the student's function, tests it on fresh random inputs, prints one
verdict line (``PASSED``, ``FAILED`` or ``NOT ATTEMPTED``) and returns the function the
lesson goes on with (the student's if it passed, else the reference)::

    from utils.checks import lesson01_gpu_basics as check
    matmul_flops = check.matmul_flops(matmul_flops)

Exercises:

- ``swap_rows(x, i, j)``: a copy of ``x`` with rows ``i`` and ``j`` exchanged, with ``.at[]``
  (JAX arrays are immutable).
- ``matmul_flops(n, k, m)``: floating-point operations of ``A @ B``, A ``(n, k)``, B ``(k, m)``.
- ``matmul_bytes(n, k, m)``: bytes a float32 ``A @ B`` must move at least (A, B read, C written).
- ``time_call(fn, *args)``: seconds of one steady-state call, timed honestly (warm-up first,
  then wait for the result with ``jax.block_until_ready``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from utils.exercises import CheckFailed, compare_with_reference, run_check

__all__ = [
    "FLOAT32_BYTES",
    "matmul_bytes",
    "matmul_flops",
    "reference_matmul_bytes",
    "reference_matmul_flops",
    "reference_swap_rows",
    "reference_time_call",
    "swap_rows",
    "time_call",
]

#: Bytes per float32 element.
FLOAT32_BYTES = 4


# --------------------------------------------------------------------------------------
# Reference solutions
# --------------------------------------------------------------------------------------

def reference_swap_rows(x: ArrayLike, i: ArrayLike, j: ArrayLike) -> jax.Array:
    """A copy of ``x`` (shape ``(n, ...)``) with rows ``i`` and ``j`` exchanged.

    ``i`` and ``j`` may be negative (counted from the end) and may be equal. Both rows are
    read from ``x``, which never changes, so the second update sees the original row.
    """
    x = jnp.asarray(x)
    return x.at[i].set(x[j]).at[j].set(x[i])


def reference_matmul_flops(n: int, k: int, m: int) -> int:
    """FLOPs of ``A @ B`` with A ``(n, k)`` and B ``(k, m)``: ``2 * n * k * m``.

    Each of the ``n * m`` outputs is a sum of ``k`` products: ``k`` multiplies and ``k``
    adds (the usual convention, one fused multiply-add counting as 2 FLOPs).
    """
    return 2 * n * k * m


def reference_matmul_bytes(n: int, k: int, m: int) -> int:
    """Bytes a float32 ``A @ B`` moves at least: ``4 * (n*k + k*m + n*m)``.

    A ``(n, k)`` and B ``(k, m)`` read once, C ``(n, m)`` written once, 4 bytes per float32.
    """
    return FLOAT32_BYTES * (n * k + k * m + n * m)


def reference_time_call(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds one call of ``fn(*args)`` takes once warm, waiting for its result.

    Calls once to warm up (tracing and compiling a jitted ``fn``), then times one more call
    up to when ``jax.block_until_ready`` says its outputs are computed.
    """
    jax.block_until_ready(fn(*args))  # warm-up: compile outside the timed region
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------

def _as_whole_number(value: Any, call: str, unit: str) -> int:
    if isinstance(value, bool | str | bytes) or value is None:
        raise CheckFailed(f"{call} returned {value!r}, but a whole number of {unit} was expected.")
    if hasattr(value, "shape") and tuple(value.shape) != ():
        raise CheckFailed(f"{call} returned an array of shape {tuple(value.shape)}, but a single "
                          f"number of {unit} was expected.")
    if hasattr(value, "dtype") and np.issubdtype(np.dtype(value.dtype), np.integer):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CheckFailed(f"{call} returned a {type(value).__name__}, but a whole number of "
                          f"{unit} was expected.") from None
    if not number.is_integer():
        raise CheckFailed(f"{call} returned {number:g}, which is not a whole number of {unit}.")
    return int(number)


def _wrapped_int32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


#: Fixed seed: every run tries the same shapes, so a verdict never changes between runs.
_SEED = 20260101


def _shapes(rng: np.random.Generator | None = None) -> list[tuple[int, int, int]]:
    """Matrix sizes (n, k, m): fixed edge cases plus random non-square ones."""
    rng = np.random.default_rng(_SEED) if rng is None else rng
    # a batch of one (1, k, m); an empty inner dimension k = 0 (no products, so no FLOPs,
    # while C still has n * m elements to write); the last one overflows int32
    cases = [(1, 1, 1), (3, 5, 7), (1, 784, 10), (6, 0, 4), (4096, 4096, 4096)]
    while len(cases) < 9:
        n, k, m = (int(v) for v in rng.integers(2, 3000, size=3))
        if len({n, k, m}) == 3:
            cases.append((n, k, m))
    rng.shuffle(cases)
    return cases


# --------------------------------------------------------------------------------------
# matmul_flops
# --------------------------------------------------------------------------------------

def _check_matmul_flops(fn: Callable[..., Any]) -> str:
    cases = _shapes()
    for n, k, m in cases:
        call = f"matmul_flops({n}, {k}, {m})"
        got = _as_whole_number(fn(n, k, m), call, "FLOPs")
        expected = reference_matmul_flops(n, k, m)
        if got == expected:
            continue
        why = ""
        if got == n * k * m:
            why = (" That counts the multiplies only: each product is also added to the sum, "
                   "so there are 2 FLOPs per term.")
        elif got == n * m * (2 * k - 1):
            why = (" That counts k - 1 additions per output exactly; the usual convention "
                   "(used for every FLOP/s figure) counts a multiply and an add per term.")
        elif got in (2 * n**3, 2 * k**3, 2 * m**3):
            why = " That assumes square matrices; A is (n, k) and B is (k, m)."
        elif got in (_wrapped_int32(expected), _wrapped_int32(expected // 2)):
            why = (" That is a 32-bit integer overflow: compute with Python ints, not "
                   "jnp/np.int32 values.")
        elif got == 2 * (n * k + k * m):
            why = " That counts the inputs' elements, not the operations."
        raise CheckFailed(f"{call} returned {got} but the answer is {expected}.{why}")
    return (f"matches 2*n*k*m on {len(cases)} matrix shapes, from (1, 1, 1) and an empty "
            "inner dimension to non-square ones and (4096, 4096, 4096)")


def matmul_flops(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``matmul_flops(n, k, m) -> int``; print a verdict; return the function to use."""
    return run_check(
        "matmul_flops", student_fn, reference_matmul_flops, _check_matmul_flops,
        hint="how many outputs are there, how many terms does each one sum, and how many "
             "operations does one term cost? Keep the arithmetic in Python ints.",
    )


# --------------------------------------------------------------------------------------
# matmul_bytes
# --------------------------------------------------------------------------------------

def _check_matmul_bytes(fn: Callable[..., Any]) -> str:
    cases = _shapes()
    for n, k, m in cases:
        call = f"matmul_bytes({n}, {k}, {m})"
        got = _as_whole_number(fn(n, k, m), call, "bytes")
        expected = reference_matmul_bytes(n, k, m)
        if got == expected:
            continue
        elements = n * k + k * m + n * m
        why = ""
        if got == FLOAT32_BYTES * (n * k + k * m):
            why = " That leaves out the output: C (n, m) is written to memory too."
        elif got == elements:
            why = " That is the number of elements: each float32 takes 4 bytes."
        elif got == 8 * expected:
            why = " That is the number of bits; a byte has 8 of them."
        elif got == n * k + k * m:
            why = " That counts the input elements only: add C and use 4 bytes per element."
        elif got in (3 * FLOAT32_BYTES * n**2, 3 * FLOAT32_BYTES * k**2, 3 * FLOAT32_BYTES * m**2):
            why = " That assumes square matrices; A is (n, k), B (k, m) and C (n, m)."
        elif got == 8 * elements:
            why = " That uses 8 bytes per element (float64); the lesson uses float32, 4 bytes."
        elif got in (_wrapped_int32(expected), _wrapped_int32(elements)):
            why = " That is a 32-bit integer overflow: compute with Python ints."
        raise CheckFailed(f"{call} returned {got} but the answer is {expected}.{why}")
    return (f"matches 4*(n*k + k*m + n*m) bytes on {len(cases)} matrix shapes, square and "
            "non-square")


def matmul_bytes(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``matmul_bytes(n, k, m) -> int``; print a verdict; return the function to use."""
    return run_check(
        "matmul_bytes", student_fn, reference_matmul_bytes, _check_matmul_bytes,
        hint="which arrays must cross memory at least once (inputs and output), how many "
             "elements does each hold, and how many bytes is a float32?",
    )


# --------------------------------------------------------------------------------------
# time_call
# --------------------------------------------------------------------------------------

class _Pending:
    """What an asynchronous call returns: a handle whose value is ready only later.

    Like a ``jax.Array`` fresh from a dispatch, it is returned at once; waiting for it
    (``jax.block_until_ready``, ``.block_until_ready()``, ``np.asarray``, ``float``)
    blocks until the simulated device has finished.
    """

    def __init__(self, ready_at: float) -> None:
        self._ready_at = ready_at

    def block_until_ready(self) -> _Pending:
        wait = self._ready_at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        return self

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self.block_until_ready()
        return np.zeros((), dtype=dtype or np.float32)

    def __float__(self) -> float:
        self.block_until_ready()
        return 0.0


class _SimulatedDevice:
    """A function that behaves like a jitted JAX function on an accelerator.

    The first call is slow (``compile_s``: tracing and compiling) and returns when done;
    every call then returns at once a result that is ready ``work_s`` seconds later.
    """

    def __init__(self, work_s: float, compile_s: float, expected_args: tuple[Any, ...]) -> None:
        self.work_s, self.compile_s = work_s, compile_s
        self.expected_args = expected_args
        self.calls = 0
        self.bad_args = False

    def __call__(self, *args: Any) -> _Pending:
        self.calls += 1
        if len(args) != len(self.expected_args) or any(
            a is not b for a, b in zip(args, self.expected_args, strict=False)
        ):
            self.bad_args = True
        if self.calls == 1:
            time.sleep(self.compile_s)
        return _Pending(time.perf_counter() + self.work_s)


_SCENARIOS = ((0.06, 0.4, 1), (0.03, 0.4, 2))  # (work_s, compile_s, number of arguments)


def _check_time_call(fn: Callable[..., Any]) -> str:
    for work_s, compile_s, nargs in _SCENARIOS:
        args = tuple(np.ones(i + 2, dtype=np.float32) for i in range(nargs))
        device = _SimulatedDevice(work_s, compile_s, args)
        call = f"time_call(fn, {', '.join(f'x{i}' for i in range(nargs))})"
        got = fn(device, *args)
        if isinstance(got, bool) or not isinstance(got, int | float | np.floating | np.integer):
            raise CheckFailed(f"{call} returned a {type(got).__name__}, but a number of seconds "
                              "(a float such as time.perf_counter() differences) was expected.")
        got = float(got)
        if device.calls == 0:
            raise CheckFailed(f"{call} never called fn.")
        if device.bad_args:
            raise CheckFailed(f"{call} did not call fn with the arguments it was given: "
                              "call fn(*args).")
        if not got > 0:
            raise CheckFailed(f"{call} returned {got:g}: a duration must be positive "
                              "(end - start, both from time.perf_counter()).")
        if 1000 * work_s * 0.8 <= got <= 1000 * (work_s + compile_s) * 1.5:
            raise CheckFailed(f"{call} returned {got:g} for a call that takes "
                              f"{work_s:g} seconds: that looks like milliseconds; return seconds.")
        if got < 0.8 * work_s:
            raise CheckFailed(
                f"{call} returned {got:.3g} s, but the call's result was ready only after "
                f"{work_s:g} s: your timer stopped when fn returned, before the device "
                "finished (asynchronous dispatch). Wait for the result inside the timed region."
            )
        if got > work_s + 0.5 * compile_s:
            raise CheckFailed(
                f"{call} returned {got:.3g} s for a call that takes {work_s:g} s once warm: "
                f"the timing includes the {compile_s:g} s first call (tracing and compiling). "
                "Call fn once before starting the clock."
            )
    # Nothing measured goes into the PASSED line: strict nbval compares it, and a measured
    # time differs from run to run (it flaked under load when it was printed).
    return ("waits for the asynchronous result and leaves the first call (compilation) out "
            f"(tried on {len(_SCENARIOS)} simulated devices with different call lengths)")


def time_call(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``time_call(fn, *args) -> seconds``; print a verdict; return the function to use."""
    return run_check(
        "time_call", student_fn, reference_time_call, _check_time_call,
        hint="what must happen before the clock starts (the first call compiles), and what "
             "must the clock wait for before it stops (the call returns before its result "
             "exists)?",
    )


# --------------------------------------------------------------------------------------
# swap_rows: .at[] updates of an immutable array
# --------------------------------------------------------------------------------------

_SWAP_SHAPES = ((5, 3), (1, 4), (6,), (4, 2, 3), (2, 2), (7, 1))


def _swap_args(rng: np.random.Generator, trial: int) -> tuple[Any, int, int]:
    shape = _SWAP_SHAPES[trial % len(_SWAP_SHAPES)]
    n = shape[0]
    if trial % 3 == 1:  # int32 rows, values near the top of the range
        x = rng.integers(2**31 - 1000, 2**31 - 1, size=shape, dtype=np.int64).astype(np.int32)
    else:  # float32 rows of very different sizes: an arithmetic swap loses the small ones
        x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 30, size=shape)).astype(
            np.float32)
    i = int(rng.integers(0, n))
    j = i if trial == 1 else int(rng.integers(0, n))  # a row with itself (n = 1 here)
    if n > 1 and i == j and trial != 1:
        j = (i + 1) % n
    if trial % 2 == 0:  # negative indices count from the end, as in Python
        i -= n
    return jnp.asarray(x), i, j


def _check_swap_rows(fn: Callable[..., Any]) -> str:
    x = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], jnp.float32)
    got = fn(x, 0, 2)
    got = np.asarray(got) if hasattr(got, "shape") else got
    if isinstance(got, np.ndarray) and got.shape == x.shape and np.array_equal(
            got, [[5.0, 6.0], [3.0, 4.0], [5.0, 6.0]]):
        raise CheckFailed(
            "swap_rows(x, 0, 2) gave both rows the value of row 2: the second update read row "
            "0 from the already updated array. Read both rows from the original x, which "
            "never changes."
        )
    checked = compare_with_reference(fn, reference_swap_rows, _swap_args, trials=6,
                                     rtol=0.0, atol=0.0, rng=np.random.default_rng(_SEED))
    return (f"{checked} with i and j traced; negative indices, a row with itself, int32 "
            "values near the top of the range and float32 rows of very different sizes")


def swap_rows(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``swap_rows(x, i, j)``; print a verdict; return the function to use."""
    return run_check(
        "swap_rows", student_fn, reference_swap_rows, _check_swap_rows,
        hint="a JAX array cannot change, so each .at[...] update makes a new one: from which "
             "array must each of the two rows be read?",
    )
