"""Checkers of lesson 00_setup: the reference passes, a stub is NOT ATTEMPTED, and typical
wrong answers FAIL with a message that says what is wrong."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from checker_helpers import run_checker

from utils.checks import lesson00_setup as check

# ---- array_nbytes ---------------------------------------------------------------------

def _nbytes_elements(shape, dtype):
    return math.prod(shape)


def _nbytes_bits(shape, dtype):
    return math.prod(shape) * jnp.dtype(dtype).itemsize * 8


def _nbytes_always_4(shape, dtype):
    return math.prod(shape) * 4


def _nbytes_ndim(shape, dtype):
    return len(shape) * jnp.dtype(dtype).itemsize


def _nbytes_as_string(shape, dtype):
    return str(math.prod(shape) * jnp.dtype(dtype).itemsize)


def _nbytes_int32(shape, dtype):  # jnp integer arithmetic is int32: wraps past 2 GiB
    return int(jnp.prod(jnp.asarray(shape, jnp.int32)) * jnp.dtype(dtype).itemsize)


def _nbytes_at_least_one_element(shape, dtype):  # right for every non-empty shape
    return max(1, math.prod(shape)) * jnp.dtype(dtype).itemsize


def _nbytes_int32_elements(shape, dtype):  # the bytes in Python, the elements in int32
    return int(jnp.prod(jnp.asarray(shape, jnp.int32))) * jnp.dtype(dtype).itemsize


def _nbytes_numpy_int32(shape, dtype):  # np.prod with an int32 accumulator wraps too
    return int(np.prod(shape, dtype=np.int32)) * np.dtype(dtype).itemsize


@pytest.mark.parametrize(("wrong", "says"), [
    (_nbytes_elements, "number of elements"),
    (_nbytes_bits, "number of bits"),
    (_nbytes_always_4, "4 bytes per element"),
    (_nbytes_ndim, "returned"),
    (_nbytes_as_string, "whole number of bytes"),
    (_nbytes_int32, "32-bit integer arithmetic"),
    (_nbytes_int32_elements, "32-bit integer arithmetic"),
    (_nbytes_numpy_int32, "32-bit integer arithmetic"),
    (_nbytes_at_least_one_element, "0 bytes"),
])
def test_array_nbytes_rejects_wrong_answers(capsys, wrong, says):
    line, use = run_checker(capsys, check.array_nbytes, wrong)
    assert line.startswith("FAILED array_nbytes:"), line
    assert says in line
    assert use is check.reference_array_nbytes


def test_array_nbytes_accepts_other_correct_ways(capsys):
    def via_numpy(shape, dtype):  # np.prod(()) is the float 1.0: still the right number
        return np.prod(shape) * np.dtype(dtype).itemsize

    def via_dtype(shape, dtype):
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    for fn in (via_numpy, via_dtype):
        line, use = run_checker(capsys, check.array_nbytes, fn)
        assert line.startswith("PASSED array_nbytes:"), line
        assert use is fn


def test_array_nbytes_reference_values():
    assert check.reference_array_nbytes((), jnp.float32) == 4
    assert check.reference_array_nbytes((60000, 28, 28), jnp.uint8) == 47_040_000
    assert check.reference_array_nbytes((4096, 4096), jnp.bfloat16) == 32 * 2**20
    assert check.reference_array_nbytes((3, 0), jnp.float32) == 0


# ---- to_unit_float --------------------------------------------------------------------

def _unit_divide_by_255(x):  # right for uint8 only: 16-bit pixels become up to 257
    return jnp.asarray(x).astype(jnp.float32) / 255


def _unit_divide_always(x):  # right for integers; float images in [0, 1] shrink 255-fold
    x = jnp.asarray(x)
    top = jnp.iinfo(x.dtype).max if jnp.issubdtype(x.dtype, jnp.integer) else 255
    return x.astype(jnp.float32) / top


def _unit_iinfo_only(x):  # jnp.iinfo of a float dtype raises
    x = jnp.asarray(x)
    return x.astype(jnp.float32) / jnp.iinfo(x.dtype).max


@pytest.mark.parametrize(("wrong", "says"), [
    (lambda x: x.astype(jnp.float32) / 256, "255, became 0.99609375"),
    (lambda x: x // 255, "dtype uint8"),
    (lambda x: np.asarray(x) / 255, "dtype float64"),
    (lambda x: x.astype(jnp.float32), "must become exactly 1.0"),
    (lambda x: x.astype(jnp.float32).reshape(-1) / 255, "shape"),
    (_unit_divide_by_255, "65535, became 257"),
    (_unit_divide_always, "differs from the reference"),
    (_unit_iinfo_only, "your function raised"),
    (lambda x: check.reference_to_unit_float(x) if x.ndim == 2 else x, "dtype uint8"),
    # right only when the batch holds the top value (every probe does): the range is fixed
    (lambda x: jnp.asarray(x, jnp.float32) / jnp.maximum(jnp.max(x), 1), "differs"),
    (lambda x: (jnp.asarray(x, jnp.float32) - jnp.min(x))
     / jnp.maximum(jnp.max(x) - jnp.min(x), 1), "differs"),
])
def test_to_unit_float_rejects_wrong_answers(capsys, wrong, says):
    line, use = run_checker(capsys, check.to_unit_float, wrong)
    assert line.startswith("FAILED to_unit_float:"), line
    assert says in line
    assert use is check.reference_to_unit_float


def test_to_unit_float_catches_code_that_breaks_under_jit(capsys):
    def numpy_only(x):  # np.asarray of a tracer raises under jax.jit
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)
        return x.astype(np.float32)

    line, _ = run_checker(capsys, check.to_unit_float, numpy_only)
    assert line.startswith("FAILED to_unit_float:"), line
    assert "your function raised" in line


def test_to_unit_float_reference_values():
    out = check.reference_to_unit_float(np.array([0, 51, 255], np.uint8))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), [0.0, 0.2, 1.0], rtol=1e-6)
    wide = check.reference_to_unit_float(np.array([0, 65535], np.uint16))
    np.testing.assert_array_equal(np.asarray(wide), [0.0, 1.0])
    floats = check.reference_to_unit_float(np.array([0.25, 1.0], np.float64))
    assert floats.dtype == jnp.float32 and floats.tolist() == [0.25, 1.0]


# ---- class_counts ---------------------------------------------------------------------

@pytest.mark.parametrize(("wrong", "says"), [
    (lambda labels, k: len(set(np.asarray(labels).tolist())), "single number"),
    (lambda labels, k: jnp.unique(labels, return_counts=True)[1], "still needs its count"),
    (lambda labels, k: jnp.bincount(labels), "still needs its count"),
    (lambda labels, k: np.bincount(np.asarray(labels), minlength=k), "dtype int64"),
    (lambda labels, k: jnp.bincount(labels, length=k).astype(jnp.float32), "dtype float32"),
    (lambda labels, k: jnp.bincount(labels, length=k).at[0].set(0).astype(jnp.int32),
     "differs from the reference"),
    # a histogram's bins span the labels present, not 0..k-1: wrong when 0 or k-1 is absent
    (lambda labels, k: jnp.histogram(jnp.asarray(labels), bins=k)[0].astype(jnp.int32),
     "differs from the reference"),
    (lambda labels, k: jnp.bincount(labels, length=10).astype(jnp.int32), "shape"),
    # forgets the last class, the top of the range
    (lambda labels, k: jnp.bincount(labels, length=k - 1).astype(jnp.int32),
     "still needs its count"),
    # counters in the labels' dtype: uint8 labels (MNIST's) wrap past 255
    (lambda labels, k: jnp.zeros(k, jnp.asarray(labels).dtype).at[labels].add(1)
     .astype(jnp.int32), "wrapped past 255"),
    (lambda labels, k: (jnp.asarray(labels)[:, None] == jnp.arange(k))
     .sum(0, dtype=jnp.asarray(labels).dtype).astype(jnp.int32), "wrapped past 255"),
    (lambda labels, k: jnp.bincount(labels, length=k).astype(jnp.asarray(labels).dtype),
     "wrapped past 255"),
    # a uint16 counter: right for MNIST's 6,000 per digit, wrong past 65535
    (lambda labels, k: jnp.zeros(k, jnp.uint16).at[labels].add(1).astype(jnp.int32),
     "wrapped past 65535"),
])
def test_class_counts_rejects_wrong_answers(capsys, wrong, says):
    line, use = run_checker(capsys, check.class_counts, wrong)
    assert line.startswith("FAILED class_counts:"), line
    assert says in line
    assert use is check.reference_class_counts


def test_class_counts_accepts_scatter_add_and_comparison(capsys):
    def scatter(labels, k):
        return jnp.zeros(k, jnp.int32).at[jnp.asarray(labels)].add(1)

    def compare(labels, k):
        return (jnp.asarray(labels)[:, None] == jnp.arange(k)).sum(0).astype(jnp.int32)

    for fn in (scatter, compare):
        line, use = run_checker(capsys, check.class_counts, fn)
        assert line.startswith("PASSED class_counts:"), line
        assert "jax.jit" in line
        assert use is fn


def test_to_unit_float_accepts_other_correct_ways(capsys):
    def numpy_float32(x):  # x.astype works on NumPy arrays, jax.Arrays and tracers alike
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)
        return x.astype(np.float32)

    def by_dtype_table(x):
        x = jnp.asarray(x)
        top = {jnp.dtype(jnp.uint8): 255.0, jnp.dtype(jnp.uint16): 65535.0}.get(x.dtype, 1.0)
        return x.astype(jnp.float32) / top

    for fn in (numpy_float32, by_dtype_table):
        line, use = run_checker(capsys, check.to_unit_float, fn)
        assert line.startswith("PASSED to_unit_float:"), line
        assert use is fn


def test_class_counts_uint8_labels_count_past_255():
    labels = np.full(300, 2, np.uint8)
    assert check.reference_class_counts(labels, 3).tolist() == [0, 0, 300]


def test_class_counts_reference_values():
    out = check.reference_class_counts(np.array([0, 2, 2, 5], np.uint8), 7)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), [1, 0, 2, 0, 0, 1, 0])
