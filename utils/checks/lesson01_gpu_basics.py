"""Exercise checkers of lesson 01_gpu_basics, with their reference solutions.

Each checker takes the student's function, tests it on inputs drawn from a fixed seed,
prints one verdict line (``PASSED``, ``FAILED`` or ``NOT ATTEMPTED``) and returns the function
the lesson goes on with (the student's if it passed, else the reference)::

    from utils.checks import lesson01_gpu_basics as check
    matmul_flops = check.matmul_flops(matmul_flops)

Exercises, what each checker tests, and on which inputs:

- ``swap_rows(x, i, j)``: a copy of ``x`` with rows ``i`` and ``j`` exchanged, with ``.at[]``
  (JAX arrays are immutable). Negative indices, a row with itself, int32 rows near the top
  of their range and float32 rows of very different sizes (an arithmetic swap loses them),
  with ``i`` and ``j`` traced under ``jax.jit``.
- ``matmul_flops(n, k, m)``: floating-point operations of ``A @ B``, A ``(n, k)``, B ``(k, m)``,
  exact, on nine shapes: (1, 1, 1), an empty inner dimension, non-square ones, and sizes
  whose count passes 2**31 and 2**32.
- ``matmul_bytes(n, k, m)``: bytes a float32 ``A @ B`` moves at least (A, B read, C
  written), exact on the same shapes; (32768, 32768, 32768) moves 12 GiB, past 2**31.
- ``time_call(fn, *args)``: seconds per call of ``fn(*args)`` once compiled. Tried on two
  simulated devices that behave like JAX on a GPU: the first call compiles (slow, and
  returns when done), every call returns at once, and the device runs the calls one after
  another, so a result is ready only after every earlier call's work. Timing one call, or
  queueing several and waiting once (then dividing by their number), both pass. It fails
  when the clock stops before the result is ready, when the first call or the warm-up's
  unfinished work is inside the timed region (the checker records which results were waited
  for, and when), when a total over several calls is not divided, and for milliseconds.

A FAILED line names a cause only when a probe established it (the answer equals a specific
wrong formula on every probe, or the recorded calls and waits show it); otherwise it shows
the input, the expected value and what came back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from utils.exercises import CheckFailed, Hints, compare_with_reference, run_check

__all__ = [
    "FLOAT32_BYTES",
    "HINTS",
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

#: What each checker says beyond its verdict (see :class:`utils.exercises.Hints`).
HINTS: dict[str, Hints] = {
    "swap_rows": Hints(
        about="JAX arrays never change; section 2 shows how .at[] makes an updated copy. "
              "Swapping two rows is the smallest case where the order of two updates matters.",
        think="Each .at[] update returns a new array and leaves its input as it was: from "
              "which array must each of the two rows be read, so that the second update does "
              "not see the first one's result?",
        closer="Work it out by hand on three rows [[1, 2], [3, 4], [5, 6]], swapping the first "
               "with the last (given as -1), and a row with itself: what must come out?",
    ),
    "matmul_flops": Hints(
        about="A FLOP count turns a measured time into FLOP/s; section 5 counts the work of a "
              "matrix multiply from its shapes alone.",
        think="How many outputs does A @ B have, how many products does each one add up, and "
              "what does one term of such a sum cost by the usual convention? Counts reach "
              "10**14: which integer type holds them?",
    ),
    "matmul_bytes": Hints(
        about="The least memory traffic of a matmul sets its arithmetic intensity, the x axis "
              "of section 7's roofline.",
        think="Which arrays must cross memory at least once (both inputs and the output), how "
              "many elements does each one hold, and how many bytes is one float32? Large "
              "matrices move more than 2 GiB: which integer type holds that?",
    ),
    "time_call": Hints(
        about="Timing JAX code honestly is section 4's subject: asynchronous dispatch and the "
              "first call's compilation both fool a plain stopwatch.",
        think="What must be finished before the clock starts (the first call compiles, and "
              "its result arrives after the call returns), what must the clock wait for "
              "before it stops, and how many calls did the timed region hold?",
        closer="List your function's calls and waits in order: the warm-up's result must be "
               "ready before the clock starts, the last timed result before it stops, and a "
               "total over several calls is shared among them.",
    ),
}


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

    Calls once to warm up (tracing and compiling a jitted ``fn``) and waits for that result,
    then times one more call up to when ``jax.block_until_ready`` says its outputs are
    computed. (Queueing several calls, waiting once for the last and dividing the time by
    their number is as right, and averages out the clock's resolution.)
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


def _whole(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _first_explanation(fn: Callable[..., Any], probes: Sequence[tuple[int, int, int]],
                       hypotheses: Sequence[tuple[Callable[..., int], str]]) -> str:
    """The explanation of the first wrong formula ``fn`` equals on *every* probe, else "".

    A FAILED line names a cause only when such a targeted probe established it.
    """
    for formula, why in hypotheses:
        try:
            if all(_whole(fn(*p)) == formula(*p) for p in probes):
                return why
        except Exception:  # the student's function fails on a probe
            continue
    return ""


#: Fixed seed: every run tries the same shapes, so a verdict never changes between runs.
_SEED = 20260101

#: Shapes that tell the usual wrong formulas apart: non-square, and one of them large
#: enough that 32-bit arithmetic wraps (for FLOPs and for bytes alike).
_PROBES = ((3, 5, 7), (2, 9, 4), (6, 1, 11), (32768, 32768, 32768))


def _shapes(rng: np.random.Generator | None = None) -> list[tuple[int, int, int]]:
    """Matrix sizes (n, k, m): fixed edge cases plus random non-square ones."""
    rng = np.random.default_rng(_SEED) if rng is None else rng
    # a batch of one (1, k, m); an empty inner dimension k = 0 (no products, so no FLOPs,
    # while C still has n * m elements to write); 4096**3 * 2 passes 2**31 FLOPs, and
    # (32768, 32768, 32768) moves 12 GiB, past 2**31 bytes
    cases = [(1, 1, 1), (3, 5, 7), (1, 784, 10), (6, 0, 4), (4096, 4096, 4096)]
    while len(cases) < 9:
        n, k, m = (int(v) for v in rng.integers(2, 3000, size=3))
        if len({n, k, m}) == 3:
            cases.append((n, k, m))
    rng.shuffle(cases)
    return [*cases, (32768, 32768, 32768)]


def _int32_of(formula: Callable[[int, int, int], int]) -> Callable[[int, int, int], int]:
    """``formula`` computed in 32-bit integers: every intermediate product wraps."""
    def wrapped(n: int, k: int, m: int) -> int:
        return _wrapped_int32(formula(n, k, m))
    return wrapped


# --------------------------------------------------------------------------------------
# matmul_flops
# --------------------------------------------------------------------------------------

_FLOPS_HYPOTHESES = (
    (lambda n, k, m: n * k * m,
     " On every probe it counted the multiplies only: each product is also added to the sum, "
     "so the convention counts 2 FLOPs per term."),
    (lambda n, k, m: n * m * (2 * k - 1),
     " On every probe it counted k - 1 additions per output exactly; the usual convention "
     "(behind every FLOP/s figure) counts a multiply and an add per term."),
    (lambda n, k, m: 2 * n**3,
     " On every probe it gave 2 * n**3, as if the matrices were square; A is (n, k) and B "
     "is (k, m)."),
    (lambda n, k, m: 2 * (n * k + k * m),
     " On every probe it counted the inputs' elements, not the operations."),
    (lambda n, k, m: 2 * n * max(k, 1) * m,
     " It is right wherever k > 0; with k = 0 there are no products, so no FLOPs."),
)


def _check_matmul_flops(fn: Callable[..., Any]) -> str:
    cases = _shapes()
    for n, k, m in cases:
        call = f"matmul_flops({n}, {k}, {m})"
        got = _as_whole_number(fn(n, k, m), call, "FLOPs")
        expected = reference_matmul_flops(n, k, m)
        if got == expected:
            continue
        why = ""
        if expected >= 2**31 and got in (_wrapped_int32(expected), _wrapped_int32(expected // 2)):
            why = (f" {got} is exactly what 32-bit integer arithmetic gives (it wraps around "
                   "past 2**31; jnp and np.int32 integers are 32-bit): Python ints never "
                   "overflow.")
        else:
            probes = (*_PROBES[:3], (6, 0, 4))
            why = _first_explanation(fn, probes, _FLOPS_HYPOTHESES)
        raise CheckFailed(f"{call} returned {got} but the answer is {expected}.{why}")
    return (f"matches 2*n*k*m on {len(cases)} matrix shapes, from (1, 1, 1) and an empty "
            "inner dimension to non-square ones, (4096, 4096, 4096) and (32768, 32768, 32768)")


def matmul_flops(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``matmul_flops(n, k, m) -> int``; print a verdict; return the function to use."""
    return run_check("matmul_flops", student_fn, reference_matmul_flops, _check_matmul_flops,
                     HINTS["matmul_flops"])


# --------------------------------------------------------------------------------------
# matmul_bytes
# --------------------------------------------------------------------------------------

_BYTES_HYPOTHESES = (
    (lambda n, k, m: FLOAT32_BYTES * (n * k + k * m),
     " On every probe it left out the output: C (n, m) is written to memory too."),
    (lambda n, k, m: n * k + k * m + n * m,
     " On every probe it gave the number of elements: each float32 takes 4 bytes."),
    (lambda n, k, m: 8 * FLOAT32_BYTES * (n * k + k * m + n * m),
     " On every probe it gave the number of bits; a byte has 8 of them."),
    (lambda n, k, m: n * k + k * m,
     " On every probe it counted the input elements only: C is written too, and each "
     "element takes 4 bytes."),
    (lambda n, k, m: 3 * FLOAT32_BYTES * n**2,
     " On every probe it gave 3 * 4 * n**2, as if the matrices were square; A is (n, k), "
     "B (k, m) and C (n, m)."),
    (lambda n, k, m: 8 * (n * k + k * m + n * m),
     " On every probe it used 8 bytes per element (float64); the lesson uses float32, 4 "
     "bytes."),
)


def _check_matmul_bytes(fn: Callable[..., Any]) -> str:
    cases = _shapes()
    for n, k, m in cases:
        call = f"matmul_bytes({n}, {k}, {m})"
        got = _as_whole_number(fn(n, k, m), call, "bytes")
        expected = reference_matmul_bytes(n, k, m)
        if got == expected:
            continue
        elements = n * k + k * m + n * m
        if expected >= 2**31 and got in (_wrapped_int32(expected), _wrapped_int32(elements),
                                          FLOAT32_BYTES * _wrapped_int32(elements)):
            why = (f" {got} is exactly what 32-bit integer arithmetic gives (it wraps around "
                   "past 2**31; jnp and np.int32 integers are 32-bit): Python ints never "
                   "overflow.")
        else:
            why = _first_explanation(fn, _PROBES[:3], _BYTES_HYPOTHESES)
        raise CheckFailed(f"{call} returned {got} but the answer is {expected}.{why}")
    return (f"matches 4*(n*k + k*m + n*m) bytes on {len(cases)} matrix shapes, square and "
            "non-square, up to 12 GiB (past 2**31)")


def matmul_bytes(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``matmul_bytes(n, k, m) -> int``; print a verdict; return the function to use."""
    return run_check("matmul_bytes", student_fn, reference_matmul_bytes, _check_matmul_bytes,
                     HINTS["matmul_bytes"])


# --------------------------------------------------------------------------------------
# time_call
# --------------------------------------------------------------------------------------

class _Pending:
    """What an asynchronous call returns: a handle whose value is ready only later.

    Like a ``jax.Array`` fresh from a dispatch, it is returned at once; waiting for it
    (``jax.block_until_ready``, ``.block_until_ready()``, ``np.asarray``, ``float``)
    blocks until the simulated device has finished, and is recorded.
    """

    def __init__(self, device: _SimulatedDevice, ready_at: float) -> None:
        self._device, self._ready_at = device, ready_at

    def block_until_ready(self) -> _Pending:
        self._device.waits.append(self._device.calls)  # how many calls had been made
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
    """A function that behaves like a jitted JAX function on a GPU.

    The first call is slow (``compile_s``: tracing and compiling) and returns when done;
    every call then returns at once. The device runs the calls one after another, each for
    ``work_s`` seconds, so a result is ready only after all earlier calls' work. ``waits``
    records, for every wait on a result, how many calls had been made by then.
    """

    def __init__(self, work_s: float, compile_s: float, expected_args: tuple[Any, ...]) -> None:
        self.work_s, self.compile_s = work_s, compile_s
        self.expected_args = expected_args
        self.calls = 0
        self.waits: list[int] = []
        self.bad_args = False
        self._busy_until = 0.0

    def __call__(self, *args: Any) -> _Pending:
        self.calls += 1
        if len(args) != len(self.expected_args) or any(
            a is not b for a, b in zip(args, self.expected_args, strict=False)
        ):
            self.bad_args = True
        if self.calls == 1:
            time.sleep(self.compile_s)
        start = max(time.perf_counter(), self._busy_until)
        self._busy_until = start + self.work_s
        return _Pending(self, self._busy_until)


#: (work_s, compile_s, number of arguments). A call's time must come out within
#: [0.5, 1.5] x work_s: wide enough for a loaded machine's sleep and clock jitter, narrow
#: enough to reject twice the work (an unfinished warm-up, or an undivided pair of calls).
_SCENARIOS = ((0.12, 0.3, 1), (0.08, 0.3, 2))


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
        _judge_time_call(call, got, device)
    # Nothing measured goes into the PASSED line: strict nbval compares it, and a measured
    # time differs from run to run (it flaked under load when it was printed).
    return ("waits for the warm-up's result before timing and for the timed result before "
            "stopping, and leaves the first call (compilation) out; one call or several "
            f"queued and divided both pass (tried on {len(_SCENARIOS)} simulated devices that "
            "queue calls, with different call lengths)")


def _judge_time_call(call: str, got: float, device: _SimulatedDevice) -> None:
    work_s, compile_s, calls = device.work_s, device.compile_s, device.calls
    if calls == 0:
        raise CheckFailed(f"{call} never called fn.")
    if device.bad_args:
        raise CheckFailed(f"{call} did not call fn with the arguments it was given: "
                          "call fn(*args).")
    if not got > 0:
        raise CheckFailed(f"{call} returned {got:g}: a duration must be positive "
                          "(end - start, both from time.perf_counter()).")
    if 1000 * work_s * 0.8 <= got <= 1000 * (work_s + compile_s) * calls * 1.5:
        raise CheckFailed(f"{call} returned {got:g} for a call that takes {work_s:g} seconds: "
                          "that is about 1000 times too large, i.e. milliseconds; return "
                          "seconds.")
    if calls == 1:
        raise CheckFailed(
            f"{call} called fn only once, so the time it returned ({got:.3g} s) includes that "
            f"call's tracing and compiling ({compile_s:g} s here): there was no warm-up call."
        )
    if not device.waits:
        raise CheckFailed(
            f"{call} never waited for a result, so its clock stopped when fn returned, before "
            "the device had done the work (asynchronous dispatch). Expected about "
            f"{work_s:g} s per call, got {got:.3g} s."
        )
    if min(device.waits) == calls:  # every wait came after the last call
        raise CheckFailed(
            f"{call} made {calls} calls and waited only after the last one: nothing waited for "
            "the first call's result before the next call, so the warm-up's unfinished work "
            f"(or its compiling) was inside the timed region. Expected about {work_s:g} s per "
            f"call, got {got:.3g} s."
        )
    if got < 0.5 * work_s:
        raise CheckFailed(
            f"{call} returned {got:.3g} s, but each call's result was ready only "
            f"{work_s:g} s after the previous one: the clock stopped before the device "
            "finished the timed work (asynchronous dispatch; a wait after stopping the clock "
            "does not count)."
        )
    if got > 1.5 * work_s:
        timed = calls - 1  # every call after the warm-up
        if timed >= 2 and abs(got - timed * work_s) < 0.5 * work_s:
            why = (f" It made {timed} calls after the warm-up, and {got:.3g} s is about their "
                   "total: divide by the number of timed calls.")
        elif abs(got - (compile_s + calls * work_s)) < 0.5 * work_s:
            why = (f" That is about the first call's {compile_s:g} s of compiling plus the "
                   f"work of all {calls} calls: the clock ran from before the first call.")
        else:
            why = ""
        raise CheckFailed(f"{call} returned {got:.3g} s for a call that takes {work_s:g} s once "
                          f"compiled.{why}")


def time_call(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``time_call(fn, *args) -> seconds``; print a verdict; return the function to use."""
    return run_check("time_call", student_fn, reference_time_call, _check_time_call,
                     HINTS["time_call"])


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
    return run_check("swap_rows", student_fn, reference_swap_rows, _check_swap_rows,
                     HINTS["swap_rows"])
