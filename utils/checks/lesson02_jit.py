"""Exercise checkers of lesson 02_jit, with their reference solutions.

Each checker takes the student's function, tests it on inputs drawn from a fixed seed,
prints one verdict line (``PASSED``, ``FAILED`` or ``NOT ATTEMPTED``) and returns the function
the lesson goes on with (the student's if it passed, else the reference)::

    from utils.checks import lesson02_jit as check
    huber = check.huber(huber)

Exercises, what each checker tests, and on which inputs:

- ``huber(x, delta)``: the Huber loss, elementwise. Traceable with ``x`` and ``delta``
  traced (no Python ``if`` on a traced value, no ``float(...)``); values on shapes ``()`` to
  ``(64,)`` under ``jax.jit``, at exactly ``+-delta``, for outliers of ``1e20`` (finite loss,
  though their square overflows float32); gradients too, ``x = 0`` included.
- ``make_sgd_step()``: returns a *jitted* least-squares SGD step ``step(w, x, y, lr)``; nine
  calls with new data and a new learning rate each, batch sizes 1 to 48: right values, and
  at most one compilation per input shape.
- ``ema(xs, decay)``: exponential moving averages along axis 0, from ``m = 0``. Values on
  short sequences of one to three axes, and on a sequence of 1,000 steps with decays 0.5
  and 0.9 (where a closed formula with powers of ``decay`` overflows float32); ``decay``
  traced; and the program must not grow in proportion to the number of steps, as an
  unrolled Python loop's does (its jaxpr at 8 and at 256 steps is compared). ``lax.scan``
  passes, and so does any other way that keeps the program small
  (``lax.associative_scan``, say).
- ``pad_to_bucket(x, bucket)``: zero-pad a batch to the next multiple of ``bucket`` and
  return ``(padded, mask)``. Sizes around buckets of 8, 5, 1 and 32; float32, int32 and
  uint8 rows, with and without trailing axes, and real rows that are all zeros (the mask
  marks rows by position, never by content); then a jitted masked mean fed padded batches
  of random sizes compiles at most once per bucket.

A FAILED line names a cause only when the checker established it (a tracing error, a
compilation count, a jaxpr size, values that are inf or NaN); otherwise it shows the input,
the expected value and what came back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from utils.exercises import (
    CheckFailed,
    Hints,
    compare_with_reference,
    expect_array,
    expect_close,
    run_check,
    summarize_error,
)
from utils.introspection import CompileCounter, is_traceable, jaxpr_size

__all__ = [
    "HINTS",
    "ema",
    "huber",
    "make_sgd_step",
    "pad_to_bucket",
    "reference_ema",
    "reference_huber",
    "reference_make_sgd_step",
    "reference_pad_to_bucket",
]


#: What each checker says beyond its verdict (see :class:`utils.exercises.Hints`).
HINTS: dict[str, Hints] = {
    "huber": Hints(
        about="A Python if cannot look at a traced value; section 4 shows the three ways "
              "out, and an elementwise loss needs the first of them.",
        think="Under jax.jit x has no value yet: which function chooses between two formulas "
              "element by element? Both formulas are then computed for every element, so "
              "neither may overflow, or lose its derivative, where it is not chosen.",
        closer="Evaluate your function and its gradient at x = 0, at x = delta and at "
               "x = 1e20 (whose loss is finite): which intermediate value becomes inf or NaN?",
    ),
    "make_sgd_step": Hints(
        about="A training step runs thousands of times; section 3 shows what makes JAX "
              "compile again, and this exercise keeps it to one compilation per input shape.",
        think="Which arguments change from call to call, and which of them (if any) belong "
              "in the compilation cache key? The mean is over the batch, whatever its size.",
    ),
    "ema": Hints(
        about="lax.scan is section 4's loop primitive for loops that carry a state: one copy "
              "of the body in the program, however many steps.",
        think="What does each step carry to the next, what does it output, and what is the "
              "average before the first step? A closed formula needs powers of decay that "
              "overflow or underflow float32 on long sequences.",
        closer="Run your function and a plain Python loop on 1,000 random steps with decay "
               "0.5, and print both from step 120 on: where do they part?",
    ),
    "pad_to_bucket": Hints(
        about="Padding to a few bucket sizes keeps the number of compilations small "
              "(section 3); the mask says which rows are real so that results do not change.",
        think="What is the smallest multiple of bucket that is at least n, which dtype and "
              "trailing shape must the zero rows have, and how do you know which rows are "
              "real? A real row can be all zeros too.",
    ),
}


# --------------------------------------------------------------------------------------
# Reference solutions
# --------------------------------------------------------------------------------------

def reference_huber(x: ArrayLike, delta: ArrayLike) -> jax.Array:
    """Huber loss of each element of ``x`` (any shape): quadratic near 0, linear beyond ``delta``.

    ``0.5 * x**2`` where ``|x| <= delta``, else ``delta * (|x| - 0.5 * delta)``. Same shape.
    """
    x = jnp.asarray(x)
    abs_x = jnp.abs(x)
    return jnp.where(abs_x <= delta, 0.5 * x**2, delta * (abs_x - 0.5 * delta))


def _sgd_step(w: jax.Array, x: jax.Array, y: jax.Array, lr: ArrayLike) -> jax.Array:
    """One gradient step of mean squared error 0.5 * mean((x @ w - y)**2).

    w: ``(d,)``, x: ``(n, d)``, y: ``(n,)``, lr: a number. Returns the new ``w``, ``(d,)``.
    """
    residual = x @ w - y
    return w - lr * (x.T @ residual) / x.shape[0]


def reference_make_sgd_step() -> Callable[..., jax.Array]:
    """A jitted ``step(w, x, y, lr)``; ``lr`` is traced, so a new value does not recompile."""

    def sgd_step(w: jax.Array, x: jax.Array, y: jax.Array, lr: ArrayLike) -> jax.Array:
        return _sgd_step(w, x, y, lr)

    return jax.jit(sgd_step)  # a new function per call: its own, empty compilation cache


def reference_ema(xs: ArrayLike, decay: ArrayLike) -> jax.Array:
    """Exponential moving averages along the first axis, with ``lax.scan``.

    ``m[t] = decay * m[t-1] + (1 - decay) * xs[t]`` starting from ``m[-1] = 0``.
    xs: ``(T, ...)``; returns every ``m[t]``, shape ``(T, ...)``, same dtype.
    """
    xs = jnp.asarray(xs)

    def step(m: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        m = decay * m + (1 - decay) * x
        return m, m

    _, ms = lax.scan(step, jnp.zeros_like(xs[0]), xs)
    return ms


def reference_pad_to_bucket(x: ArrayLike, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad the first axis of ``x`` up to the next multiple of ``bucket``, with NumPy.

    Data preparation runs on the host, before a batch goes to the device, so it compiles
    nothing. x: ``(n, ...)`` with n >= 1. Returns ``(padded, mask)``: padded ``(m, ...)``
    with ``m = bucket * ceil(n / bucket)``, same dtype, zeros after row n; mask ``(m,)``
    bool, True for the n real rows.
    """
    x = np.asarray(x)
    n = x.shape[0]
    m = bucket * math.ceil(n / bucket)
    padded = np.zeros((m, *x.shape[1:]), x.dtype)
    padded[:n] = x
    return padded, np.arange(m) < n


#: Fixed seeds: every run tries the same inputs, so a verdict never changes between runs.
_SEED = 20260201

# --------------------------------------------------------------------------------------
# huber: jnp.where, traceable
# --------------------------------------------------------------------------------------

def _huber_args(rng: np.random.Generator, trial: int) -> tuple[Any, float]:
    shapes = [(), (7,), (3, 5), (64,), (2, 3, 4), (1,)]
    delta = float(rng.uniform(0.5, 2.0))
    x = (rng.standard_normal(shapes[trial % len(shapes)]) * 2.5 * delta).astype(np.float32)
    return jnp.asarray(x), delta


def _check_huber(fn: Callable[..., Any]) -> str:
    for probe, what in ((jnp.float32(1.5), "a scalar"), (jnp.ones(4, jnp.float32), "an array")):
        ok, why = is_traceable(fn, probe, 1.0)
        if not ok:
            raise CheckFailed(
                f"your function cannot be traced with {what} x and a traced delta ({why}). "
                "A Python `if` or float(...) needs a concrete value; under jax.jit there is "
                "only a tracer."
            )
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], jnp.float32)
    expect_close(fn(x, 1.0), _numpy_huber(np.asarray(x), 1.0), what=f"huber({x.tolist()}, 1.0)")
    # Large errors (an outlier of 1e20: its square overflows float32 in the branch not taken)
    # and points exactly at +-delta, with a delta other than 1.
    delta = 0.75
    edge = jnp.array([-1e20, -3e4, -delta, delta, 2.5, 1e20], jnp.float32)
    got = fn(edge, delta)
    shown = "[" + ", ".join(f"{v:g}" for v in np.asarray(edge).tolist()) + "]"
    if hasattr(got, "shape") and tuple(got.shape) == edge.shape and not np.all(
            np.isfinite(np.asarray(got, np.float64))):
        raise CheckFailed(
            f"huber({shown}, {delta}) returned {np.asarray(got).tolist()}: inf or NaN for the "
            "largest errors, whose loss is finite. An intermediate overflowed float32 (x**2 "
            "is inf for |x| = 1e20): compute each branch from |x| so the one jnp.where picks "
            "never needs the square of an outlier (sqrt(x**2) or a difference of squares do)."
        )
    expect_close(got, _numpy_huber(np.asarray(edge), delta), rtol=1e-5,
                 what=f"huber({shown}, {delta})")
    _check_huber_gradient(fn)
    # Random shapes under jit only: run op by op, every new shape compiles each operation.
    checked = compare_with_reference(jax.jit(fn), _numpy_huber, _huber_args, trials=6,
                                     jit=False, rtol=1e-5, atol=1e-5,
                                     rng=np.random.default_rng(_SEED))
    return (f"{checked} under jax.jit, and without jit on fixed inputs (outliers of 1e20, "
            "points at +-delta); gradients match, 0 included; traceable (no Python if on "
            "traced values)")


def _check_huber_gradient(fn: Callable[..., Any]) -> None:
    """A loss is differentiated later: its gradient must be right, at 0 and at +-delta too."""
    delta = 1.5
    x = jnp.array([-4.0, -1.5, -0.3, 0.0, 0.7, 1.5, 6.0, 1e20], jnp.float32)
    got = jax.grad(lambda v: jnp.sum(fn(v, delta)))(x)
    expected = np.clip(np.asarray(x, np.float64), -delta, delta)  # x inside, +-delta outside
    bad = ~np.isclose(np.asarray(got, np.float64), expected, rtol=1e-5, atol=1e-6)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise CheckFailed(
            f"the gradient of huber at x = {float(x[i]):g} (delta = {delta}) is "
            f"{float(got[i]):g}, but it should be {expected[i]:g}: x inside the threshold, "
            "+-delta outside. The values may be right while the gradient is not: a NaN comes "
            "from an operation whose derivative is undefined at that point (sqrt(x**2) at 0, "
            "say), or from a branch that overflows even where jnp.where does not pick it."
        )


def _numpy_huber(x: ArrayLike, delta: float) -> np.ndarray:
    x = np.asarray(x)
    wide = x.astype(np.float64)  # float64: the square of an outlier does not overflow here
    return np.where(np.abs(wide) <= delta, 0.5 * wide**2,
                    delta * (np.abs(wide) - 0.5 * delta)).astype(x.dtype)


def huber(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``huber(x, delta)``; print a verdict; return the function to use."""
    return run_check("huber", student_fn, reference_huber, _check_huber, HINTS["huber"])


_TRACER_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerIntegerConversionError)


# --------------------------------------------------------------------------------------
# make_sgd_step: jitted, and no recompilation for new data or a new learning rate
# --------------------------------------------------------------------------------------

def _sgd_case(rng: np.random.Generator, n: int, d: int) -> tuple[jax.Array, ...]:
    w = jnp.asarray(rng.standard_normal(d), jnp.float32)
    x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
    y = jnp.asarray(rng.standard_normal(n), jnp.float32)
    return w, x, y


def _check_make_sgd_step(make: Callable[..., Any]) -> str:
    step = make()
    if not callable(step):
        raise CheckFailed(f"make_sgd_step() returned a {type(step).__name__}, not a function.")
    if not callable(getattr(step, "lower", None)):
        raise CheckFailed("make_sgd_step() returned a function that is not jitted: return "
                          "jax.jit(...) of it.")
    rng = np.random.default_rng(_SEED)
    shapes = [(32, 5), (1, 3), (48, 3)]  # a batch of one; n != d, so /n and /d differ
    lrs = [float(v) for v in rng.uniform(0.01, 0.5, size=3)]
    calls = 0
    with CompileCounter(step) as counter:
        for n, d in shapes:
            for lr in lrs:  # a new learning rate and a new batch every call
                w, x, y = _sgd_case(rng, n, d)
                # The expected value first, from host copies: a step that donates its
                # arguments (donate_argnums, as lesson 02 recommends) deletes w, so the
                # checker never reads an argument after the call.
                w_, x_, y_ = (np.asarray(a, np.float64) for a in (w, x, y))
                expected = (w_ - lr * x_.T @ (x_ @ w_ - y_) / n).astype(np.float32)
                try:
                    got = step(w, x, y, lr)
                except _TRACER_ERRORS as error:
                    raise CheckFailed(
                        f"the step cannot be traced ({summarize_error(error)}): float(...), "
                        "np.asarray(...) or a Python if turns a traced value into a Python one."
                    ) from None
                calls += 1
                expect_close(got, expected, rtol=1e-4, atol=1e-5,
                             what=f"the new w for x of shape {(n, d)} and lr={lr:.3f}")
    if counter.compiles > len(shapes):
        raise CheckFailed(
            f"the step compiled {counter.compiles} times for {calls} calls with only "
            f"{len(shapes)} input shapes: every new learning rate compiled again. A static "
            "argument (static_argnums / static_argnames) is part of the cache key; keep lr "
            "an ordinary traced argument."
        )
    return (f"jitted; correct on {calls} calls with new data and {len(lrs)} learning rates, "
            f"batch sizes 1 to 48, and compiled at most once per input shape "
            f"({len(shapes)} shapes)")


def make_sgd_step(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``make_sgd_step() -> jitted step``; print a verdict; return the factory to use."""
    return run_check("make_sgd_step", student_fn, reference_make_sgd_step,
                     _check_make_sgd_step, HINTS["make_sgd_step"])


# --------------------------------------------------------------------------------------
# ema: lax.scan, the jaxpr does not grow with the number of steps
# --------------------------------------------------------------------------------------

def _ema_args(rng: np.random.Generator, trial: int) -> tuple[jax.Array, float]:
    shapes = [(1,), (5,), (37,), (12, 3), (8, 2, 2), (100,)]
    xs = rng.standard_normal(shapes[trial % len(shapes)]).astype(np.float32)
    return jnp.asarray(xs), float(rng.uniform(0.5, 0.99))


def _numpy_ema(xs: ArrayLike, decay: float) -> np.ndarray:
    xs = np.asarray(xs)
    out, m = np.zeros_like(xs), np.zeros_like(xs[0])
    for t, x in enumerate(xs):
        m = decay * m + (1 - decay) * x
        out[t] = m
    return out


#: The long sequences: 1,000 steps (one compilation: decay is traced), where decay**-t passes
#: float32's largest number (3.4e38) after 128 steps at 0.5 and about 840 at 0.9.
_LONG_STEPS, _LONG_DECAYS = 1000, (0.5, 0.9)

#: Steps at which the program's size is compared: an unrolled loop grows 32-fold between
#: them; lax.scan not at all, and lax.associative_scan by a few equations per doubling.
_GROWTH_STEPS = (8, 256)


def _expect_long_sequences(fn: Callable[..., Any]) -> None:
    rng = np.random.default_rng(_SEED + 4)
    jitted = jax.jit(fn)
    xs = rng.standard_normal((_LONG_STEPS, 2)).astype(np.float32)
    for decay in _LONG_DECAYS:
        got = expect_array(jitted(jnp.asarray(xs), decay), xs.shape, np.float32,
                           what=f"ema of a sequence of shape {xs.shape} with decay {decay}")
        expected = _numpy_ema(xs.astype(np.float64), decay)
        bad = ~np.isclose(got, expected, rtol=1e-4, atol=1e-5)
        if bad.any():
            t = int(np.argwhere(bad)[0][0])
            finite = "" if np.all(np.isfinite(got)) else " (some values are inf or NaN)"
            where = (f"differs from the first step on{finite}" if t == 0 else
                     f"is right for the first {t} steps, then differs{finite}")
            raise CheckFailed(
                f"ema of a random sequence of shape {xs.shape} with decay {decay} {where}: at "
                f"step {t} got {np.round(got[t], 5).tolist()}, expected "
                f"{np.round(expected[t], 5).tolist()}."
            )


def _expect_no_unrolled_loop(fn: Callable[..., Any]) -> None:
    short, long = (jax.ShapeDtypeStruct((t, 3), jnp.float32) for t in _GROWTH_STEPS)
    small, big = jaxpr_size(fn, short, 0.9), jaxpr_size(fn, long, 0.9)
    ratio = _GROWTH_STEPS[1] // _GROWTH_STEPS[0]
    if big >= (ratio // 2) * max(small, 1):
        raise CheckFailed(
            f"the jaxpr has {small} equations for {_GROWTH_STEPS[0]} steps but {big} for "
            f"{_GROWTH_STEPS[1]}: it grows in proportion to the number of steps, as an "
            "unrolled Python loop does, so compiling takes longer the longer the sequence."
        )


def _check_ema(fn: Callable[..., Any]) -> str:
    xs = jnp.array([1.0, 1.0, 0.0, 4.0], jnp.float32)
    expect_close(fn(xs, 0.5), _numpy_ema(np.asarray(xs), 0.5), rtol=1e-5, atol=1e-6,
                 what="ema([1, 1, 0, 4], 0.5)")
    ok, why = is_traceable(fn, xs, 0.9)
    if not ok:
        raise CheckFailed(f"your function cannot be traced with a traced decay ({why}).")
    _expect_no_unrolled_loop(fn)
    _expect_long_sequences(fn)
    checked = compare_with_reference(jax.jit(fn), _numpy_ema, _ema_args, trials=6,
                                     jit=False, rtol=1e-4, atol=1e-5,
                                     rng=np.random.default_rng(_SEED))
    return (f"{checked} under jax.jit, and without jit on a fixed input; right on a sequence "
            f"of {_LONG_STEPS} steps with decays {' and '.join(map(str, _LONG_DECAYS))}; its "
            "program does not grow in proportion to the number of steps")


def ema(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``ema(xs, decay)``; print a verdict; return the function to use."""
    return run_check("ema", student_fn, reference_ema, _check_ema, HINTS["ema"])


# --------------------------------------------------------------------------------------
# pad_to_bucket: shapes from a few buckets, so a jitted consumer compiles once per bucket
# --------------------------------------------------------------------------------------

_BUCKETS = (8, 5, 1, 32)  # varied: an answer that hard-codes one bucket size fails


def _pad_input(rng: np.random.Generator, n: int, trial: int) -> np.ndarray:
    """float32, int32 or uint8 (values up to 255) rows, with or without trailing axes.

    Some real rows are all zeros (the last one in every other input, and one in the
    middle): real data has them (a blank image, a zero feature vector), so a mask must come
    from the row count, never from the rows' content.
    """
    tail = ((3,), (), (2, 2))[trial % 3]
    kind = trial % 3
    if kind == 0:
        x = rng.uniform(1.0, 2.0, size=(n, *tail)).astype(np.float32)
    elif kind == 1:
        x = rng.integers(-1000, 1000, size=(n, *tail)).astype(np.int32)
    else:
        x = rng.integers(200, 256, size=(n, *tail)).astype(np.uint8)
    if trial % 2 == 0:
        x[n - 1] = 0
    if n >= 3:
        x[n // 2] = 0
    return x


def _sizes_for(bucket: int, rng: np.random.Generator) -> list[int]:
    """The edges (1, a full bucket, one more, several buckets) and one random size."""
    return sorted({1, max(1, bucket - 1), bucket, bucket + 1, 3 * bucket,
                   int(rng.integers(1, 4 * bucket + 1))})


def _check_pad_to_bucket(fn: Callable[..., Any]) -> str:
    rng = np.random.default_rng(_SEED)
    tried = 0
    for bucket in _BUCKETS:
        for n in _sizes_for(bucket, rng):
            x = _pad_input(rng, n, tried)
            tried += 1
            out = fn(x, bucket)
            call = f"pad_to_bucket(x of shape {tuple(x.shape)} and dtype {x.dtype}, {bucket})"
            if not isinstance(out, tuple | list) or len(out) != 2:
                raise CheckFailed(f"{call} returned a {type(out).__name__}; expected a tuple "
                                  "(padded, mask).")
            m = bucket * math.ceil(n / bucket)
            rows = getattr(out[0], "shape", (None,))[:1]
            if rows and rows[0] != m and rows[0] == m + bucket and n % bucket == 0:
                raise CheckFailed(f"{call} returned {rows[0]} rows, but {n} rows already fill "
                                  f"{n // bucket} bucket(s) of {bucket}: pad to {m}, the next "
                                  "multiple at or above n, adding no rows when n is one.")
            padded = expect_array(out[0], (m, *x.shape[1:]), x.dtype, what=f"padded from {call}")
            mask = expect_array(out[1], (m,), jnp.bool_, what=f"mask from {call}")
            if not np.array_equal(padded[:n], x):
                raise CheckFailed(f"the first {n} rows of padded from {call} are not x itself.")
            if np.any(padded[n:] != 0):
                raise CheckFailed(f"the padding rows from {call} are not all zeros.")
            right = np.arange(m) < n
            if not np.array_equal(mask, right):
                wrong = np.flatnonzero(mask != right)
                zero_rows = [int(i) for i in wrong if i < n and not np.any(x[i])]
                seen = (f" (x[{zero_rows[0]}] is a real row that is all zeros)"
                        if zero_rows else "")
                raise CheckFailed(
                    f"mask from {call} is {mask[wrong[0]]} at row {int(wrong[0])}{seen}, but "
                    f"should be True for the {n} real row{'s' if n > 1 else ''} (rows 0 to "
                    f"{n - 1}) and False for the padding.")
    return (f"right shapes, dtypes, zeros and mask for {tried} sizes around buckets of "
            f"{', '.join(map(str, _BUCKETS))} (float32, int32 and uint8 rows, some real rows "
            "all zeros); "
            + _check_one_compile_per_bucket(fn, rng, _BUCKETS[0]))


def _check_one_compile_per_bucket(fn: Callable[..., Any], rng: np.random.Generator,
                                  bucket: int) -> str:
    def masked_mean_for_check(x: jax.Array, mask: jax.Array) -> jax.Array:
        return jnp.sum(x * mask[:, None]) / (jnp.sum(mask) * x.shape[1])

    consumer = jax.jit(masked_mean_for_check)  # a new function: an empty compilation cache
    sizes = rng.integers(1, 4 * bucket + 1, size=12)
    with CompileCounter(consumer) as counter:
        for n in sizes:
            x = rng.standard_normal((int(n), 2)).astype(np.float32)
            got = consumer(*fn(x, bucket))
            expect_close(got, np.mean(x), rtol=1e-4, atol=1e-5,
                         what=f"the masked mean of a padded batch of {int(n)} rows")
    buckets = len({math.ceil(int(n) / bucket) for n in sizes})
    if counter.compiles > buckets:  # pragma: no cover - the shape checks catch this first
        raise CheckFailed(f"a jitted function fed padded batches compiled {counter.compiles} "
                          f"times for {buckets} buckets.")
    return (f"{len(sizes)} batches of random sizes made a jitted masked mean compile at most "
            "once per bucket, with the right means")


def pad_to_bucket(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``pad_to_bucket(x, bucket) -> (padded, mask)``; print a verdict; return the fn."""
    return run_check("pad_to_bucket", student_fn, reference_pad_to_bucket, _check_pad_to_bucket,
                     HINTS["pad_to_bucket"])
