"""Exercise checkers of lesson 00_setup, with their reference solutions.

Each checker takes the student's function, tests it on inputs drawn from a fixed seed,
prints one verdict line (``PASSED``, ``FAILED`` or ``NOT ATTEMPTED``) and returns the function
the lesson goes on with (the student's if it passed, else the reference)::

    from utils.checks import lesson00_setup as check
    array_nbytes = check.array_nbytes(array_nbytes)

Exercises, what each checker tests, and on which inputs:

- ``array_nbytes(shape, dtype)``: the bytes an array of that shape and dtype takes, a whole
  number. Tried on random shapes in eight dtypes, a scalar ``()``, empty shapes, a batch of
  one, and two arrays of about 2 GiB whose counts overflow 32-bit integers: 2**29 float32
  elements (the *bytes* pass 2**31) and 2 x (2**30 + 8) int8 elements (the *elements* pass
  2**31).
- ``to_unit_float(images)``: integer pixels to float32 in [0, 1], dividing by the largest
  value the integer dtype holds (255 for uint8, 65535 for uint16), whether or not the batch
  contains it; float images in [0, 1] only become float32. NumPy and device arrays, shapes
  with a batch of one and an empty batch, under ``jax.jit`` too.
- ``class_counts(labels, num_classes)``: examples per class, int32 ``(num_classes,)``.
  Classes that never occur (the first and the last one included), a batch of one, an empty
  batch, int32 and uint8 labels, and uint8 labels with more than 255 (and more than 65535)
  examples of one class, as MNIST's 60,000 uint8 labels have: counts must not wrap. Under
  ``jax.jit`` with ``num_classes`` static.

A FAILED line names a cause only when a probe on extra inputs established it (the answer
equals a specific wrong formula on every probe); otherwise it shows the input, the expected
value and what came back.
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
    Hints,
    compare_with_reference,
    expect_array,
    expect_close,
    run_check,
)

__all__ = [
    "HINTS",
    "array_nbytes",
    "class_counts",
    "reference_array_nbytes",
    "reference_class_counts",
    "reference_to_unit_float",
    "to_unit_float",
]

#: What each checker says beyond its verdict (see :class:`utils.exercises.Hints`).
HINTS: dict[str, Hints] = {
    "array_nbytes": Hints(
        about="Knowing an array's size before allocating it tells you whether a batch, a "
              "model or a dataset fits in memory; exercise 1 of section 4 says what one "
              "element of each dtype takes.",
        think="How many elements does the shape hold (a scalar holds one, a shape with a 0 "
              "in it none), and how many bytes does one element of this dtype take? Arrays "
              "of billions of elements exist: which integer type can hold such counts?",
        closer="Work three cases out on paper and compare: a scalar in float32, a (7, 0) "
               "array, and an int8 array of 2 by (2**30 + 8) elements (just over 2 GiB).",
    ),
    "to_unit_float": Hints(
        about="Networks train on float32 inputs in a small range; this exercise is about the "
              "dtype rules (type promotion) shown just before it in section 6.",
        think="Which dtype does your result have, and what does the largest value the "
              "integer dtype can hold become, whether or not this batch contains it? Images "
              "that are already floats only need the right dtype.",
        closer="Look at the promotion cell again (what / gives for uint8 in NumPy and in "
               "jnp), and ask which number plays the role of 255 for uint16 pixels.",
    ),
    "class_counts": Hints(
        about="Counting the examples of each class shows how balanced a dataset is "
              "(section 6); the promotion cell's 200 + 100 = 44 in uint8 matters here.",
        think="The result has one entry per class whatever the labels hold (under jax.jit "
              "its shape may depend only on num_classes), and a count can be in the "
              "thousands: in which dtype is your count kept while it grows?",
        closer="MNIST's labels are uint8 and each digit has about 6,000 examples: count them "
               "with your function and compare with the lesson's table.",
    ),
}


# --------------------------------------------------------------------------------------
# Reference solutions
# --------------------------------------------------------------------------------------

def reference_array_nbytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes taken by an array of ``shape`` (a tuple, ``()`` for a scalar) and ``dtype``."""
    return math.prod(shape) * jnp.dtype(dtype).itemsize


def reference_to_unit_float(images: ArrayLike) -> jax.Array:
    """Pixels (any shape) to float32 in [0, 1], same shape.

    Integer pixels are divided by the largest value their dtype holds (255 for uint8, 65535
    for uint16), so that value becomes exactly 1.0 whether or not the batch contains it;
    float pixels (already in [0, 1]) only become float32.
    """
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) / jnp.iinfo(images.dtype).max
    return images.astype(jnp.float32)


def reference_class_counts(labels: ArrayLike, num_classes: int) -> jax.Array:
    """Examples per class: labels ``(N,)`` of ints in 0..num_classes-1 -> int32 ``(num_classes,)``.

    Classes that never occur get 0. The counts are int32 whatever the labels' dtype (uint8
    labels, as MNIST's, would wrap past 255).
    """
    return jnp.bincount(jnp.asarray(labels), length=num_classes).astype(jnp.int32)


#: Fixed seeds: every run tries the same inputs, so a verdict never changes between runs.
_SEED = 20260001


def _wrap32(value: int) -> int:
    """``value`` as a signed 32-bit integer holds it (wrapped around)."""
    return (value + 2**31) % 2**32 - 2**31


def _first_explanation(fn: Callable[..., Any], probes: Sequence[tuple[Any, ...]],
                       hypotheses: Sequence[tuple[Callable[..., Any], str]]) -> str:
    """The explanation of the first wrong formula that ``fn`` equals on *every* probe.

    This is how a FAILED line may name a cause: only when a targeted probe established it.
    ``""`` when no hypothesis holds (the line then shows input, expected and got).
    """
    for formula, why in hypotheses:
        try:
            if all(_whole(fn(*p)) == formula(*p) for p in probes):
                return why
        except Exception:  # the student's function or the formula fails on a probe
            continue
    return ""


def _whole(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


# --------------------------------------------------------------------------------------
# array_nbytes
# --------------------------------------------------------------------------------------

# No float64: JAX makes float32 arrays when asked for float64 unless x64 mode is on.
_NBYTES_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.int8, jnp.uint8, jnp.int32,
                  jnp.int16, jnp.bool_)

#: Counts that overflow 32-bit integers, tried last, after every small shape passed (about
#: 2 GiB each, should an answer create the array after all): 2**29 float32 elements take
#: 2**31 bytes; 2 * (2**30 + 8) int8 elements pass 2**31 as a count of elements.
_OVERFLOW_CASES = (((16384, 32768), jnp.float32), ((2, 2**30 + 8), jnp.int8))

#: Probes that tell the usual wrong formulas apart (different itemsizes, ndims, sizes).
_NBYTES_PROBES = (((3, 5), jnp.float16), ((2, 7, 4), jnp.float32), ((6,), jnp.bfloat16),
                  ((4, 3), jnp.int32))


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
    return [*cases, *_OVERFLOW_CASES]


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


def _itemsize(dtype: Any) -> int:
    return jnp.dtype(dtype).itemsize


_NBYTES_HYPOTHESES = (
    (lambda s, d: math.prod(s),
     " On every probe (float16, float32, bfloat16 and int32 shapes) your function returned the "
     "number of elements: each element takes the dtype's itemsize in bytes."),
    (lambda s, d: 8 * math.prod(s) * _itemsize(d),
     " On every probe your function returned the number of bits; a byte has 8 of them."),
    (lambda s, d: 4 * math.prod(s),
     " On every probe your function used 4 bytes per element, whatever the dtype."),
    (lambda s, d: len(s) * _itemsize(d),
     " On every probe your function multiplied by the number of dimensions, not of "
     "elements."),
)


def _overflowed(shape: tuple[int, ...], dtype: Any, got: int) -> bool:
    """``got`` is what 32-bit integer arithmetic gives for this count (elements or bytes)."""
    size, itemsize = math.prod(shape), _itemsize(dtype)
    wrapped = {_wrap32(size * itemsize), _wrap32(size) * itemsize,
               _wrap32(_wrap32(size) * itemsize)}
    return got != size * itemsize and got in wrapped


def _check_array_nbytes(fn: Callable[..., Any]) -> str:
    cases = _nbytes_cases(np.random.default_rng(_SEED))
    for shape, dtype in cases:
        call = f"array_nbytes({shape}, jnp.{_dtype_name(dtype)})"
        got = _as_whole_number(fn(shape, dtype), call)
        expected = reference_array_nbytes(shape, dtype)
        if got == expected:
            continue
        why = ""
        if (shape, dtype) in _OVERFLOW_CASES and all(
                _overflowed(s, d, _whole(fn(s, d)) or 0) or _whole(fn(s, d)) ==
                reference_array_nbytes(s, d) for s, d in _OVERFLOW_CASES):
            why = (" On the two arrays whose counts pass 2**31, your function returned "
                   "exactly what 32-bit integer arithmetic gives (it wraps around; jnp "
                   "integers are int32): Python ints never overflow.")
        elif math.prod(shape) == 0 and all(
                _whole(fn(s, d)) == reference_array_nbytes(s, d) for s, d in _NBYTES_PROBES):
            why = (" It is right on non-empty shapes; a shape with a 0 in it has no elements, "
                   "so it takes 0 bytes.")
        else:
            why = _first_explanation(fn, _NBYTES_PROBES, _NBYTES_HYPOTHESES)
        raise CheckFailed(f"{call} returned {got} but the answer is {expected}.{why}")
    names = sorted({_dtype_name(d) for _, d in cases})
    return (f"matches the reference on {len(cases)} shapes (random ones, a scalar (), empty "
            "ones, and two whose counts pass 2**31: bytes of float32, elements of int8) "
            f"in {', '.join(names)}")


def array_nbytes(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``array_nbytes(shape, dtype) -> int``; print a verdict; return the function to use."""
    return run_check("array_nbytes", student_fn, reference_array_nbytes, _check_array_nbytes,
                     HINTS["array_nbytes"])


# --------------------------------------------------------------------------------------
# to_unit_float
# --------------------------------------------------------------------------------------

_PROBE_PIXELS = np.array([[0, 1, 51, 128], [200, 254, 255, 255]], dtype=np.uint8)
_PROBE_WIDE = np.array([[0, 257, 4096, 32768], [65000, 65534, 65535, 1]], dtype=np.uint16)


def _random_images(rng: np.random.Generator, trial: int) -> tuple[Any]:
    shapes = [(28, 28), (1, 28, 28), (7,), (2, 5, 4, 3), (16, 784), (1, 1), (0, 28, 28),
              (3, 8, 8), (4, 6)]
    shape = shapes[trial % len(shapes)]
    # The range varies: full, dark (no top value), bright (no 0), one value only. An answer
    # that divides by x.max() or rescales min..max is right only on the full range.
    kind = ["full", "dark", "bright", "one", "full", "full", "full", "uint16", "float"][trial]
    if kind == "uint16":  # 16-bit images (scientific, medical, 16-bit PNG): no 65535 here
        images = rng.integers(0, 60000, size=shape, dtype=np.uint16)
    elif kind == "float":  # already floats in [0, 1]: only the dtype changes
        images = rng.uniform(0.0, 1.0, size=shape).astype(np.float64)
    else:
        low, high = {"full": (0, 256), "dark": (0, 200), "bright": (60, 256), "one": (17, 18)}[kind]
        images = rng.integers(low, high, size=shape, dtype=np.uint8)
        if trial == 0 and images.size > 1:
            flat = images.reshape(-1)
            flat[0], flat[-1] = 255, 0  # both ends of the range
    # MNIST comes as NumPy uint8; a batch already on the device is a jax.Array.
    return (jnp.asarray(images) if trial % 2 else images,)


def _check_probe(fn: Callable[..., Any], pixels: np.ndarray) -> None:
    top = np.iinfo(pixels.dtype).max
    got = fn(pixels)
    name = f"a {pixels.shape} {pixels.dtype} input"
    if hasattr(got, "dtype") and hasattr(got, "shape") and tuple(got.shape) == pixels.shape:
        dtype = np.dtype(got.dtype)
        if np.issubdtype(dtype, np.integer) or dtype == np.dtype(bool):
            raise CheckFailed(
                f"for {name} the output has dtype {dtype}: the division stayed in integers, "
                f"so every pixel below {top} becomes 0."
            )
        if dtype == np.float64:
            raise CheckFailed(
                f"for {name} the output has dtype float64 (NumPy promotes integers divided "
                "by a number to float64), but float32 was expected: half the memory, and "
                "GPUs are much faster at it."
            )
        values = np.asarray(got, dtype=np.float64)
        where_top = tuple(int(i) for i in np.argwhere(pixels == top)[0])
        if not np.isclose(values[where_top], 1.0, rtol=1e-6):
            raise CheckFailed(
                f"for {name} the largest value its dtype holds, {top}, became "
                f"{values[where_top]:.8g}; it must become exactly 1.0 (input {pixels.tolist()})."
            )
    expect_array(got, pixels.shape, np.float32, what=f"the output for {name}")


def _check_to_unit_float(fn: Callable[..., Any]) -> str:
    for pixels in (_PROBE_PIXELS, _PROBE_WIDE):
        _check_probe(fn, pixels)
    return compare_with_reference(fn, reference_to_unit_float, _random_images, trials=9,
                                  rtol=1e-6, atol=1e-7, rng=np.random.default_rng(_SEED))


def to_unit_float(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``to_unit_float(images) -> float32``; print a verdict; return the function to use."""
    return run_check("to_unit_float", student_fn, reference_to_unit_float, _check_to_unit_float,
                     HINTS["to_unit_float"])


# --------------------------------------------------------------------------------------
# class_counts
# --------------------------------------------------------------------------------------

#: Batch sizes: one, some, none; then 300 and 70,000 uint8 labels with more than 255 and
#: 65,535 examples of one class (MNIST has about 6,000 of each digit, as uint8 labels).
_LABEL_SIZES = (1, 50, 333, 64, 1000, 20, 0, 300, 70_000)


def _random_labels(rng: np.random.Generator, trial: int) -> tuple[Any, int]:
    num_classes = int(rng.integers(3, 21))
    n = _LABEL_SIZES[trial]
    if trial >= 7:  # one class takes almost all: its count passes 255 (and 65535)
        labels = rng.integers(0, num_classes, size=n)
        labels[: n - 20] = num_classes // 2
        return labels.astype(np.uint8), num_classes
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


def _expect_no_wrap(fn: Callable[..., Any]) -> None:
    """uint8 labels with 300 and 70,000 examples of one class: the counts must not wrap."""
    rng = np.random.default_rng(_SEED + 1)
    for trial in (7, 8):
        labels, k = _random_labels(rng, trial)
        expected = np.asarray(reference_class_counts(labels, k))
        got = fn(labels, k)
        if hasattr(got, "shape") and tuple(got.shape) == expected.shape:
            values = np.asarray(got).astype(np.int64)
            for bits in (16, 8):  # a 16-bit wrap also matches modulo 256
                if np.array_equal(values % 2**bits, expected % 2**bits) and \
                        not np.array_equal(values, expected):
                    top = 2**bits - 1
                    raise CheckFailed(
                        f"for {labels.size} uint8 labels with {expected.max()} examples of "
                        f"class {int(expected.argmax())}, your counts are {values.tolist()}: "
                        f"each is the right count modulo {2**bits}, so the counter wrapped "
                        f"past {top}, as a {bits}-bit unsigned integer does. Expected "
                        f"{expected.tolist()}."
                    )
        expect_close(got, expected, what=f"the output for {labels.size} uint8 labels "
                                         f"({k} classes, one of them {expected.max()} times)")


def _check_class_counts(fn: Callable[..., Any]) -> str:
    labels = jnp.array([0, 2, 2, 5, 2, 0], dtype=jnp.int32)  # classes 1, 3, 4, 6 never occur
    got = fn(labels, 7)
    shape = tuple(getattr(got, "shape", ()))
    if isinstance(got, int | float | np.number) or shape == ():
        raise CheckFailed(
            f"class_counts({labels.tolist()}, 7) returned the single number {got}; expected "
            "an array with one count per class, shape (7,)."
        )
    if len(shape) == 1 and shape[0] < 7:
        raise CheckFailed(
            f"class_counts({labels.tolist()}, 7) returned {shape[0]} counts, but there are 7 "
            "classes (shape (7,)): classes 1, 3, 4 and 6 never occur there, and each still "
            "needs its count, 0."
        )
    if len(shape) == 1 and shape[0] > 7:
        raise CheckFailed(f"class_counts({labels.tolist()}, 7) returned {shape[0]} counts, but "
                          "there are 7 classes: expected shape (7,).")
    expect_close(got, reference_class_counts(labels, 7),
                 what=f"the output for labels {labels.tolist()} and 7 classes")
    _expect_no_wrap(fn)
    checked = compare_with_reference(fn, reference_class_counts, _random_labels, trials=7,
                                     static_argnums=(1,), rng=np.random.default_rng(_SEED))
    return (checked + "; uint8 labels with 300 and 70000 examples of one class count past 255 "
            "and 65535 without wrapping")


def class_counts(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``class_counts(labels, num_classes) -> int32 (num_classes,)``; print a verdict."""
    return run_check("class_counts", student_fn, reference_class_counts, _check_class_counts,
                     HINTS["class_counts"])
