"""Exercise checkers of lesson 00_setup, with their reference solutions.

Each checker takes the student's function, tests it on fresh random inputs, prints one
verdict line (``PASSED``, ``FAILED`` or ``NOT ATTEMPTED``) and returns the function the
lesson goes on with (the student's if it passed, else the reference)::

    from utils.checks import lesson00_setup as check
    array_nbytes = check.array_nbytes(array_nbytes)

Exercises:

- ``array_nbytes(shape, dtype)``: the bytes an array of that shape and dtype takes.
- ``to_unit_float(images)``: uint8 pixels in 0..255 to float32 in [0, 1].
- ``class_counts(labels, num_classes)``: how many examples of each class, as int32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from utils.exercises import (
    CheckFailed,
    compare_with_reference,
    expect_array,
    expect_close,
    run_check,
)

__all__ = [
    "array_nbytes",
    "class_counts",
    "reference_array_nbytes",
    "reference_class_counts",
    "reference_to_unit_float",
    "to_unit_float",
]


# --------------------------------------------------------------------------------------
# Reference solutions
# --------------------------------------------------------------------------------------

def reference_array_nbytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes taken by an array of ``shape`` (a tuple, ``()`` for a scalar) and ``dtype``."""
    return math.prod(shape) * jnp.dtype(dtype).itemsize


def reference_to_unit_float(images: ArrayLike) -> jax.Array:
    """uint8 pixels (any shape) in 0..255 to float32 in [0, 1], same shape (0 -> 0, 255 -> 1)."""
    return jnp.asarray(images).astype(jnp.float32) / 255.0


def reference_class_counts(labels: ArrayLike, num_classes: int) -> jax.Array:
    """Examples per class: labels ``(N,)`` of ints in 0..num_classes-1 -> int32 ``(num_classes,)``.

    Classes that never occur get 0.
    """
    return jnp.bincount(jnp.asarray(labels), length=num_classes).astype(jnp.int32)


# --------------------------------------------------------------------------------------
# array_nbytes
# --------------------------------------------------------------------------------------

# No float64: JAX makes float32 arrays when asked for float64 unless x64 mode is on.
_NBYTES_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.int8, jnp.uint8, jnp.int32,
                  jnp.int16, jnp.bool_)


#: Fixed seeds: every run tries the same inputs, so a verdict never changes between runs.
_SEED = 20260001

#: 2**29 float32 elements: 2 GiB, one byte past what an int32 holds (32-bit arithmetic
#: wraps to a negative number). Tried last, after every small shape passed.
_OVERFLOW_CASE = ((16384, 32768), jnp.float32)


def _nbytes_cases(rng: np.random.Generator) -> list[tuple[tuple[int, ...], Any]]:
    cases: list[tuple[tuple[int, ...], Any]] = [
        ((3, 5), jnp.float16),       # 2 bytes per element
        ((), jnp.float32),           # a scalar still takes its 4 bytes
        ((28, 28), jnp.uint8),       # one MNIST image
        ((1, 784), jnp.bfloat16),    # a batch of one
        ((0, 28, 28), jnp.float32),  # an empty batch takes 0 bytes
        ((7, 0), jnp.int8),
    ]
    for dtype in _NBYTES_DTYPES:
        ndim = int(rng.integers(1, 5))
        shape = tuple(int(d) for d in rng.integers(1, 40, size=ndim))
        cases.append((shape, dtype))
    rng.shuffle(cases)
    return [*cases, _OVERFLOW_CASE]


def _dtype_name(dtype: Any) -> str:
    return jnp.dtype(dtype).name


def _as_whole_number(value: Any, call: str) -> int:
    if isinstance(value, bool | str | bytes) or value is None:
        raise CheckFailed(f"{call} returned {value!r}, but a whole number of bytes was expected.")
    if hasattr(value, "shape") and tuple(value.shape) != ():
        raise CheckFailed(f"{call} returned an array of shape {tuple(value.shape)}, but a single "
                          "number of bytes was expected.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CheckFailed(f"{call} returned a {type(value).__name__}, but a whole number of "
                          "bytes was expected.") from None
    if not number.is_integer():
        raise CheckFailed(f"{call} returned {number:g}, which is not a whole number of bytes.")
    return int(number)


def _check_array_nbytes(fn: Callable[..., Any]) -> str:
    cases = _nbytes_cases(np.random.default_rng(_SEED))
    for shape, dtype in cases:
        call = f"array_nbytes({shape}, jnp.{_dtype_name(dtype)})"
        got = _as_whole_number(fn(shape, dtype), call)
        expected = reference_array_nbytes(shape, dtype)
        if got == expected:
            continue
        size, itemsize = math.prod(shape), jnp.dtype(dtype).itemsize
        why = ""
        if got == size and itemsize != 1:
            why = (" That is the number of elements: each one takes "
                   f"{itemsize} bytes in {_dtype_name(dtype)}.")
        elif got == 8 * expected:
            why = " That is the number of bits; a byte has 8 of them."
        elif got == 4 * size:
            why = " That assumes 4 bytes per element whatever the dtype."
        elif got == len(shape) * itemsize:
            why = " That multiplies by the number of dimensions, not the number of elements."
        elif expected >= 2**31 and got == (expected + 2**31) % 2**32 - 2**31:
            why = (" That is a 32-bit integer overflow (jnp arrays of integers are int32): "
                   "compute with Python ints, e.g. math.prod(shape).")
        elif size == 0:
            why = " A shape with a 0 in it has no elements, so it takes 0 bytes."
        raise CheckFailed(f"{call} returned {got} but the answer is {expected}.{why}")
    names = sorted({_dtype_name(d) for _, d in cases})
    return (f"matches the reference on {len(cases)} shapes (random ones, a scalar (), empty "
            f"ones and one of 2 GiB) in {', '.join(names)}")


def array_nbytes(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``array_nbytes(shape, dtype) -> int``; print a verdict; return the function to use."""
    return run_check(
        "array_nbytes", student_fn, reference_array_nbytes, _check_array_nbytes,
        hint="how many elements does the shape hold (a scalar holds one, a 0 anywhere means "
             "none), and how many bytes does one element of this dtype take? Keep the "
             "arithmetic in Python ints.",
    )


# --------------------------------------------------------------------------------------
# to_unit_float
# --------------------------------------------------------------------------------------

_PROBE_PIXELS = np.array([[0, 1, 51, 128], [200, 254, 255, 255]], dtype=np.uint8)


def _random_images(rng: np.random.Generator, trial: int) -> tuple[Any]:
    shapes = [(28, 28), (1, 28, 28), (7,), (2, 5, 4, 3), (16, 784), (1, 1), (0, 28, 28)]
    shape = shapes[trial % len(shapes)]
    # The range varies: full 0..255, dark (no 255), bright (no 0), one value only. An answer
    # that divides by x.max() or rescales min..max is right only on the full range.
    low, high = [(0, 256), (0, 200), (60, 256), (17, 18), (0, 256), (0, 256), (0, 256)][
        trial % len(shapes)]
    images = rng.integers(low, high, size=shape, dtype=np.uint8)
    if trial == 0 and images.size > 1:
        flat = images.reshape(-1)
        flat[0], flat[-1] = 255, 0  # both ends of the range
    # MNIST comes as NumPy uint8; a batch already on the device is a jax.Array.
    return (jnp.asarray(images) if trial % 2 else images,)


def _check_to_unit_float(fn: Callable[..., Any]) -> str:
    got = fn(_PROBE_PIXELS)
    if hasattr(got, "dtype") and hasattr(got, "shape") and tuple(got.shape) == _PROBE_PIXELS.shape:
        dtype = np.dtype(got.dtype)
        if np.issubdtype(dtype, np.integer) or dtype == np.dtype(bool):
            raise CheckFailed(
                f"the output has dtype {dtype}: the division stayed in integers (// or no "
                "cast), so every pixel below 255 becomes 0."
            )
        if dtype == np.float64:
            raise CheckFailed(
                "the output has dtype float64 (NumPy turns uint8 / 255 into float64), but "
                "float32 was expected: it takes half the memory and GPUs are faster at it."
            )
        values = np.asarray(got, dtype=np.float64)
        if np.isclose(values[1, 2], 255 / 256, rtol=1e-6):
            raise CheckFailed("pixel 255 became 0.99609375 (255/256): divide by 255 so the "
                              "brightest pixel is exactly 1.0.")
    expect_array(got, _PROBE_PIXELS.shape, np.float32,
                 what=f"the output for a {_PROBE_PIXELS.shape} uint8 input")
    return compare_with_reference(fn, reference_to_unit_float, _random_images, trials=7,
                                  rtol=1e-6, atol=1e-7, rng=np.random.default_rng(_SEED))


def to_unit_float(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``to_unit_float(images) -> float32``; print a verdict; return the function to use."""
    return run_check(
        "to_unit_float", student_fn, reference_to_unit_float, _check_to_unit_float,
        hint="which dtype does the result need, and which number must the brightest possible "
             "pixel, 255, map to (whether or not this batch contains it)?",
    )


# --------------------------------------------------------------------------------------
# class_counts
# --------------------------------------------------------------------------------------

def _random_labels(rng: np.random.Generator, trial: int) -> tuple[Any, int]:
    num_classes = int(rng.integers(3, 21))
    n = (1, 50, 333, 64, 1000, 20, 0)[trial % 7]  # a batch of one, and an empty one
    if trial % 3 == 0:  # only some classes occur: never the first or the last one
        middle = np.arange(1, num_classes - 1)
        present = rng.choice(middle, size=max(1, len(middle) // 2), replace=False)
        labels = rng.choice(present, size=n)
    elif trial % 3 == 1:  # one class only: the last one, the top of the range
        labels = np.full(n, num_classes - 1)
    else:  # every class, the first and the last included
        labels = rng.integers(0, num_classes, size=n)
        if n >= 2:
            labels[:2] = (0, num_classes - 1)
    # MNIST's labels come as uint8 NumPy arrays; JAX code passes int32 device arrays.
    labels = labels.astype(np.uint8) if trial % 2 else jnp.asarray(labels, dtype=jnp.int32)
    return labels, num_classes


def _check_class_counts(fn: Callable[..., Any]) -> str:
    labels = jnp.array([0, 2, 2, 5, 2, 0], dtype=jnp.int32)  # classes 1, 3, 4, 6 never occur
    got = fn(labels, 7)
    shape = tuple(getattr(got, "shape", ()))
    if isinstance(got, int | float | np.number) or shape == ():
        raise CheckFailed(
            f"class_counts({labels.tolist()}, 7) returned the single number {got}; expected "
            "an array with one count per class, shape (7,)."
        )
    if len(shape) == 1 and shape[0] != 7:
        raise CheckFailed(
            f"class_counts({labels.tolist()}, 7) returned {shape[0]} counts, but there are 7 "
            "classes: a class that never occurs must still get its count, 0."
        )
    expect_close(got, reference_class_counts(labels, 7),
                 what=f"the output for labels {labels.tolist()} and 7 classes")
    return compare_with_reference(fn, reference_class_counts, _random_labels, trials=7,
                                  static_argnums=(1,), rng=np.random.default_rng(_SEED))


def class_counts(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``class_counts(labels, num_classes) -> int32 (num_classes,)``; print a verdict."""
    return run_check(
        "class_counts", student_fn, reference_class_counts, _check_class_counts,
        hint="the result has one entry per class whatever labels hold (under jax.jit its "
             "shape may depend only on num_classes, never on the values); which jnp "
             "function counts occurrences, and how do you tell it the length?",
    )
