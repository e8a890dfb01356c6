"""Exercise checkers of lesson 02_jit, with their reference solutions.

Each checker takes the student's function, tests it on fresh random inputs, prints one
verdict line (``PASSED``, ``FAILED`` or ``NOT ATTEMPTED``) and returns the function the
lesson goes on with (the student's if it passed, else the reference)::

    from utils.checks import lesson02_jit as check
    huber = check.huber(huber)

Exercises, and the property each one checks beyond values:

- ``huber(x, delta)``: the Huber loss, elementwise, with ``jnp.where``. Must be traceable
  (no Python ``if`` on a traced value, no ``float(...)``).
- ``make_sgd_step()``: returns a *jitted* least-squares SGD step ``step(w, x, y, lr)``.
  New data and a new learning rate must not compile again (one compilation per shape).
- ``ema(xs, decay)``: exponential moving averages of a sequence with ``lax.scan``. Its
  jaxpr must not grow with the number of steps (no Python loop over time).
- ``pad_to_bucket(x, bucket)``: zero-pad a batch to the next multiple of ``bucket`` and
  return a mask. A jitted function fed padded batches of many sizes compiles once per bucket.
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
    compare_with_reference,
    expect_array,
    expect_close,
    run_check,
    summarize_error,
)
from utils.introspection import CompileCounter, is_traceable, jaxpr_size

__all__ = [
    "ema",
    "huber",
    "make_sgd_step",
    "pad_to_bucket",
    "reference_ema",
    "reference_huber",
    "reference_make_sgd_step",
    "reference_pad_to_bucket",
]


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
    # Random shapes under jit only: run op by op, every new shape compiles each operation.
    checked = compare_with_reference(jax.jit(fn), _numpy_huber, _huber_args, trials=6,
                                     jit=False, rtol=1e-5, atol=1e-5)
    return (f"{checked} under jax.jit, and without jit on a fixed input; traceable (no "
            "Python if on traced values)")


def _numpy_huber(x: ArrayLike, delta: float) -> np.ndarray:
    x = np.asarray(x)
    return np.where(np.abs(x) <= delta, 0.5 * x**2, delta * (np.abs(x) - 0.5 * delta)).astype(
        x.dtype)


def huber(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``huber(x, delta)``; print a verdict; return the function to use."""
    return run_check(
        "huber", student_fn, reference_huber, _check_huber,
        hint="compute both branches and pick with jnp.where(jnp.abs(x) <= delta, quadratic, "
             "linear); never `if` on x.",
    )


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
    rng = np.random.default_rng()
    shapes = [(32, 5), (48, 3)]
    lrs = [float(v) for v in rng.uniform(0.01, 0.5, size=3)]
    calls = 0
    with CompileCounter(step) as counter:
        for n, d in shapes:
            for lr in lrs:  # a new learning rate and a new batch every call
                w, x, y = _sgd_case(rng, n, d)
                try:
                    got = step(w, x, y, lr)
                except _TRACER_ERRORS as error:
                    raise CheckFailed(
                        f"the step cannot be traced ({summarize_error(error)}): float(...), "
                        "np.asarray(...) or a Python if turns a traced value into a Python one."
                    ) from None
                calls += 1
                w_, x_, y_ = (np.asarray(a, np.float64) for a in (w, x, y))
                expected = (w_ - lr * x_.T @ (x_ @ w_ - y_) / n).astype(np.float32)
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
            f"and compiled at most once per input shape ({len(shapes)} shapes)")


def make_sgd_step(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``make_sgd_step() -> jitted step``; print a verdict; return the factory to use."""
    return run_check(
        "make_sgd_step", student_fn, reference_make_sgd_step, _check_make_sgd_step,
        hint="write step(w, x, y, lr) with jnp operations only and return jax.jit(step), "
             "with no static arguments.",
    )


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


def _check_ema(fn: Callable[..., Any]) -> str:
    xs = jnp.array([1.0, 1.0, 0.0, 4.0], jnp.float32)
    expect_close(fn(xs, 0.5), _numpy_ema(np.asarray(xs), 0.5), rtol=1e-5, atol=1e-6,
                 what="ema([1, 1, 0, 4], 0.5)")
    ok, why = is_traceable(fn, xs, 0.9)
    if not ok:
        raise CheckFailed(f"your function cannot be traced with a traced decay ({why}).")
    short, long = (jax.ShapeDtypeStruct((t, 3), jnp.float32) for t in (8, 64))
    small, big = jaxpr_size(fn, short, 0.9), jaxpr_size(fn, long, 0.9)
    if big != small:
        raise CheckFailed(
            f"the jaxpr has {small} equations for 8 steps but {big} for 64: a Python loop "
            "over the steps is unrolled into the program, so compile time grows with the "
            "sequence length. Let lax.scan carry m from step to step."
        )
    checked = compare_with_reference(jax.jit(fn), _numpy_ema, _ema_args, trials=6,
                                     jit=False, rtol=1e-4, atol=1e-5)
    return (f"{checked} under jax.jit, and without jit on a fixed input; its jaxpr is as long "
            "for 8 steps as for 64 (no Python loop over time)")


def ema(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``ema(xs, decay)``; print a verdict; return the function to use."""
    return run_check(
        "ema", student_fn, reference_ema, _check_ema,
        hint="lax.scan(step, jnp.zeros_like(xs[0]), xs) with step(m, x) returning "
             "(new_m, new_m), where new_m = decay * m + (1 - decay) * x.",
    )


# --------------------------------------------------------------------------------------
# pad_to_bucket: shapes from a few buckets, so a jitted consumer compiles once per bucket
# --------------------------------------------------------------------------------------

_SIZES_CHECKED = 6
_BUCKET = 8  # fixed, so the shapes (and their compiled programs) repeat between runs


def _check_pad_to_bucket(fn: Callable[..., Any]) -> str:
    rng = np.random.default_rng()
    bucket = _BUCKET
    # the edges (1, a full bucket, one more) and one random size: _SIZES_CHECKED in all
    sizes = [1, bucket - 1, bucket, bucket + 1, 3 * bucket, int(rng.integers(2, 4 * bucket))]
    for n in sizes:
        tail = (3,) if n % 2 else ()
        x = rng.uniform(1.0, 2.0, size=(n, *tail)).astype(np.float32)
        out = fn(x, bucket)
        call = f"pad_to_bucket(x of shape {tuple(x.shape)}, {bucket})"
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{call} returned a {type(out).__name__}; expected a tuple "
                              "(padded, mask).")
        m = bucket * math.ceil(n / bucket)
        padded = expect_array(out[0], (m, *tail), jnp.float32, what=f"padded from {call}")
        mask = expect_array(out[1], (m,), jnp.bool_, what=f"mask from {call}")
        if not np.array_equal(padded[:n], x):
            raise CheckFailed(f"the first {n} rows of padded from {call} are not x itself.")
        if np.any(padded[n:] != 0):
            raise CheckFailed(f"the padding rows from {call} are not all zeros.")
        if not np.array_equal(mask, np.arange(m) < n):
            raise CheckFailed(f"mask from {call} should be True for the {n} real rows and "
                              "False for the padding.")
    return _check_one_compile_per_bucket(fn, rng, bucket)


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
    return (f"right shapes, zeros and mask for {_SIZES_CHECKED} sizes around the bucket; "
            f"{len(sizes)} batches of random sizes made a jitted masked mean compile at most "
            "once per bucket, with the right means")


def pad_to_bucket(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``pad_to_bucket(x, bucket) -> (padded, mask)``; print a verdict; return the fn."""
    return run_check(
        "pad_to_bucket", student_fn, reference_pad_to_bucket, _check_pad_to_bucket,
        hint="m = bucket * math.ceil(n / bucket); padded = np.zeros((m, *x.shape[1:]), "
             "x.dtype); padded[:n] = x; mask = np.arange(m) < n.",
    )
