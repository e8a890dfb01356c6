"""Checkers of lesson 08_precision_reproducibility: right answers (the reference and other
correct ways) pass, typical wrong answers FAIL with a message that says what is wrong.

What every checker must do (reference passes, stable PASSED line, blank is NOT ATTEMPTED,
a crash is one FAILED line) is tested for all lessons in test_checks_common.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from checker_helpers import expect_failed, run_checker

from utils import precision
from utils.checks import lesson08_precision_reproducibility as check


def expect_passed(capsys, checker, name, answer):
    line, use = run_checker(capsys, checker, answer)
    assert line.startswith(f"PASSED {name}:"), line
    assert use is answer
    return line


# --- round_to_bfloat16 ---------------------------------------------------------------------

_MASK = jnp.uint32(0xFFFF0000)


def _bits(x):
    return jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)


def _float(bits):
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def test_round_with_int32_bits_and_own_nan_passes(capsys):
    def signed(x):  # int32 arithmetic wraps the same way; a quiet NaN of its own
        bits = jax.lax.bitcast_convert_type(x, jnp.int32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & jnp.int32(-65536)
        return jnp.where(x != x, jnp.float32(jnp.nan),
                         jax.lax.bitcast_convert_type(rounded, jnp.float32))

    expect_passed(capsys, check.round_to_bfloat16, "round_to_bfloat16", signed)


def test_round_by_truncation_fails(capsys):
    def truncate(x):
        return jnp.where(jnp.isnan(x), x, _float(_bits(x) & _MASK))

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", truncate, "wrong")


def test_round_half_up_fails_on_ties(capsys):
    def half_up(x):
        return jnp.where(jnp.isnan(x), x, _float((_bits(x) + 0x8000) & _MASK))

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", half_up, "ties to even")


def test_round_without_nan_case_fails(capsys):
    def no_nan_case(x):
        bits = _bits(x)
        return _float((bits + 0x7FFF + ((bits >> 16) & 1)) & _MASK)

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", no_nan_case,
                  "NaN must stay a NaN")


def test_round_by_casting_fails(capsys):
    def cast(x):
        return x.astype(jnp.bfloat16).astype(jnp.float32)

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", cast,
                  "converts to bfloat16")


def test_round_returning_bfloat16_fails(capsys):
    def bf16_out(x):
        return precision.round_to_bfloat16(x).astype(jnp.bfloat16)

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", bf16_out, "dtype")


def test_round_flushing_subnormals_fails(capsys):
    def flush(x):
        out = precision.round_to_bfloat16(x)
        return jnp.where(jnp.abs(x) < jnp.finfo(jnp.float32).tiny, x * 0, out)  # keeps -0.0

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", flush, "subnormal")


def test_round_with_numpy_inside_fails_clearly(capsys):
    def with_numpy(x):
        return jnp.asarray(np.asarray(precision.round_to_bfloat16(x)))

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", with_numpy, "raised")


# --- relative_error -------------------------------------------------------------------------


def test_relative_error_other_correct_way_passes(capsys):
    def by_hand(approx, exact):
        d = np.asarray(approx, dtype=np.float64) - np.asarray(exact, dtype=np.float64)
        return np.sqrt(np.sum(d * d) / np.sum(np.asarray(exact, dtype=np.float64) ** 2))

    expect_passed(capsys, check.relative_error, "relative_error", by_hand)


def test_relative_error_in_float32_jax_fails(capsys):
    def in_jax(approx, exact):
        approx, exact = jnp.asarray(approx, jnp.float32), jnp.asarray(exact, jnp.float32)
        return jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact)

    expect_failed(capsys, check.relative_error, "relative_error", in_jax, "float64")


def test_relative_error_in_approx_dtype_fails(capsys):
    def narrow(approx, exact):
        a = np.asarray(approx)
        d = a - np.asarray(exact).astype(a.dtype)
        return float(np.linalg.norm(d.ravel()) / np.linalg.norm(np.asarray(exact).ravel()))

    expect_failed(capsys, check.relative_error, "relative_error", narrow)


def test_relative_error_mean_of_elementwise_fails(capsys):
    def elementwise(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return float(np.mean(np.abs(a - e) / np.abs(e)))

    expect_failed(capsys, check.relative_error, "relative_error", elementwise, "expected")


def test_relative_error_max_norm_fails(capsys):
    def max_norm(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return float(np.max(np.abs(a - e)) / np.max(np.abs(e)))

    expect_failed(capsys, check.relative_error, "relative_error", max_norm, "Frobenius")


def test_relative_error_divided_by_approx_fails(capsys):
    def wrong_denominator(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return float(np.linalg.norm((a - e).ravel()) / np.linalg.norm(a.ravel()))

    expect_failed(capsys, check.relative_error, "relative_error", wrong_denominator)


def test_relative_error_returning_an_array_fails(capsys):
    def per_entry(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return np.abs(a - e) / np.linalg.norm(e)

    expect_failed(capsys, check.relative_error, "relative_error", per_entry, "one number")


# --- update_loss_scale ----------------------------------------------------------------------


def test_loss_scale_other_correct_way_passes(capsys):
    def with_select(scale, good_steps, finite, period):
        finite = jnp.asarray(finite)
        grown = good_steps + 1 == period
        scale = jax.lax.select(finite, jax.lax.select(grown, scale * 2.0, scale),
                               jnp.maximum(scale * 0.5, jnp.float32(1)))
        return scale, jax.lax.select(finite & ~grown, good_steps + 1, jnp.int32(0))

    expect_passed(capsys, check.update_loss_scale, "update_loss_scale", with_select)


def test_loss_scale_with_python_if_fails_under_jit(capsys):
    def python_if(scale, good_steps, finite, period):
        if not finite:
            return jnp.maximum(scale / 2, 1.0), jnp.int32(0)
        if good_steps + 1 >= period:
            return scale * 2, jnp.int32(0)
        return scale, good_steps + 1

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", python_if,
                  "not under jax.jit", "jnp.where")


def test_loss_scale_without_floor_fails(capsys):
    def no_floor(scale, good_steps, finite, period):
        grow = good_steps + 1 >= period
        new = jnp.where(finite, jnp.where(grow, scale * 2, scale), scale / 2)
        return new, jnp.where(finite & ~grow, good_steps + 1, 0)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", no_floor,
                  "never below 1")


def test_loss_scale_growing_one_step_late_fails(capsys):
    def late(scale, good_steps, finite, period):
        grow = good_steps >= period
        new = jnp.where(finite, jnp.where(grow, scale * 2, scale), jnp.maximum(scale / 2, 1.0))
        return new, jnp.where(finite & ~grow, good_steps + 1, 0)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", late, "doubles")


def test_loss_scale_keeping_the_count_on_overflow_fails(capsys):
    def no_reset(scale, good_steps, finite, period):
        grow = finite & (good_steps + 1 >= period)
        new = jnp.where(finite, jnp.where(grow, scale * 2, scale), jnp.maximum(scale / 2, 1.0))
        return new, jnp.where(grow, 0, good_steps + jnp.where(finite, 1, 0))

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", no_reset,
                  "restarts the count")


def test_loss_scale_not_resetting_after_growth_fails(capsys):
    def no_reset_after_growth(scale, good_steps, finite, period):
        grow = (good_steps + 1) % period == 0
        new = jnp.where(finite, jnp.where(grow, scale * 2, scale), jnp.maximum(scale / 2, 1.0))
        return new, jnp.where(finite, good_steps + 1, 0)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", no_reset_after_growth,
                  "expected")


def test_loss_scale_returning_python_floats_fails(capsys):
    def floats(scale, good_steps, finite, period):
        new_scale, new_steps = precision.update_loss_scale(scale, good_steps, finite, period)
        return float(new_scale), int(new_steps)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", floats, "new_scale")


# --- split_for_workers ----------------------------------------------------------------------


def test_split_with_fold_in_passes(capsys):
    def folded(key, num_workers):
        workers = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_workers))
        return jax.random.fold_in(key, num_workers), workers

    expect_passed(capsys, check.split_for_workers, "split_for_workers", folded)


def test_split_keeping_the_given_key_fails(capsys):
    def keeps_key(key, num_workers):
        return key, jax.random.split(key, num_workers)

    expect_failed(capsys, check.split_for_workers, "split_for_workers", keeps_key,
                  "the key you were given")


def test_split_twice_from_the_same_key_fails(capsys):
    def split_twice(key, num_workers):
        return jax.random.split(key)[0], jax.random.split(key, num_workers)

    expect_failed(capsys, check.split_for_workers, "split_for_workers", split_twice,
                  "are the same")


def test_split_reusing_one_key_for_all_workers_fails(capsys):
    def one_for_all(key, num_workers):
        next_key, worker = jax.random.split(key)
        return next_key, jnp.broadcast_to(worker, (num_workers,))

    line = expect_failed(capsys, check.split_for_workers, "split_for_workers", one_for_all)
    assert "num_workers=2" in line or "are the same" in line, line


def test_split_ignoring_the_key_fails(capsys):
    def fixed(key, num_workers):
        keys = jax.random.split(jax.random.key(0), num_workers + 1)
        return keys[0], keys[1:]

    line = expect_failed(capsys, check.split_for_workers, "split_for_workers", fixed)
    # Fed back in, its next_key is the key it was given; or two keys give the same keys.
    assert "key you were given" in line or "derive them from the key" in line, line


def test_split_returning_raw_key_data_fails(capsys):
    def raw(key, num_workers):
        keys = jax.random.key_data(jax.random.split(key, num_workers + 1))
        return keys[0], keys[1:]

    expect_failed(capsys, check.split_for_workers, "split_for_workers", raw, "typed keys")


def test_split_with_fresh_randomness_fails(capsys):
    counter = iter(range(10**6))

    def not_deterministic(key, num_workers):
        keys = jax.random.split(jax.random.fold_in(key, next(counter)), num_workers + 1)
        return keys[0], keys[1:]

    expect_failed(capsys, check.split_for_workers, "split_for_workers", not_deterministic,
                  "the same key gave different keys")


# --- first_difference -----------------------------------------------------------------------


def test_first_difference_with_views_passes(capsys):
    def by_views(tree_a, tree_b):
        paths_a, struct_a = jax.tree_util.tree_flatten_with_path(tree_a)
        paths_b, struct_b = jax.tree_util.tree_flatten_with_path(tree_b)
        if struct_a != struct_b:
            raise ValueError("structures differ")
        for (path, a), (_, b) in zip(paths_a, paths_b, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
                    a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)):
                continue
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            if a.shape != b.shape:
                return name, np.nan
            return name, np.abs(a.astype(np.float64) - b.astype(np.float64)).max()
        return None

    expect_passed(capsys, check.first_difference, "first_difference", by_views)


def _first_difference_using(equal):
    def first_difference(tree_a, tree_b):
        paths_a, struct_a = jax.tree_util.tree_flatten_with_path(tree_a)
        paths_b, struct_b = jax.tree_util.tree_flatten_with_path(tree_b)
        if struct_a != struct_b:
            raise ValueError("structures differ")
        for (path, a), (_, b) in zip(paths_a, paths_b, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if equal(a, b):
                continue
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            return name, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        return None

    return first_difference


def test_first_difference_with_array_equal_fails_on_nans(capsys):
    answer = _first_difference_using(lambda a, b: np.array_equal(a, b))
    expect_failed(capsys, check.first_difference, "first_difference", answer,
                  "NaN equals itself")


def test_first_difference_with_equal_nan_misses_signed_zero(capsys):
    answer = _first_difference_using(lambda a, b: np.array_equal(a, b, equal_nan=True))
    expect_failed(capsys, check.first_difference, "first_difference", answer, "0.0 against -0.0")


def test_first_difference_ignoring_dtype_fails(capsys):
    def same_values(a, b):
        with np.errstate(invalid="ignore"):
            return a.shape == b.shape and np.array_equal(
                a.astype(np.float64), b.astype(np.float64), equal_nan=True) and np.array_equal(
                np.signbit(a.astype(np.float64)), np.signbit(b.astype(np.float64)))

    answer = _first_difference_using(same_values)
    expect_failed(capsys, check.first_difference, "first_difference", answer, "another dtype")


def test_first_difference_reporting_the_last_leaf_fails(capsys):
    def last(tree_a, tree_b):
        found = None
        paths_a, _ = jax.tree_util.tree_flatten_with_path(tree_a)
        paths_b, _ = jax.tree_util.tree_flatten_with_path(tree_b)
        if len(paths_a) != len(paths_b):
            raise ValueError("structures differ")
        for (path, a), (_, b) in zip(paths_a, paths_b, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
                found = (jax.tree_util.keystr(path, simple=True, separator="/"),
                         float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
        return found

    expect_failed(capsys, check.first_difference, "first_difference", last, "the path")


def test_first_difference_with_default_keystr_fails(capsys):
    def default_names(tree_a, tree_b):
        found = precision.first_difference(tree_a, tree_b)
        if found is None:
            return None
        paths, _ = jax.tree_util.tree_flatten_with_path(tree_a)
        for path, _leaf in paths:
            if jax.tree_util.keystr(path, simple=True, separator="/") == found[0]:
                return jax.tree_util.keystr(path), found[1]
        raise AssertionError("unreachable")

    expect_failed(capsys, check.first_difference, "first_difference", default_names,
                  "keystr")


def test_first_difference_signed_difference_fails(capsys):
    def signed(tree_a, tree_b):
        found = precision.first_difference(tree_a, tree_b)
        if found is None:
            return None
        leaves_a, leaves_b = (dict((jax.tree_util.keystr(p, simple=True, separator="/"), v)
                                   for p, v in jax.tree_util.tree_flatten_with_path(t)[0])
                              for t in (tree_a, tree_b))
        a = np.asarray(leaves_a[found[0]], np.float64)
        b = np.asarray(leaves_b[found[0]], np.float64)
        return found[0], float(np.max(a - b)) if a.shape == b.shape else found[1]

    expect_failed(capsys, check.first_difference, "first_difference", signed, "max_abs_diff")


def test_first_difference_without_structure_check_fails(capsys):
    def zipped(tree_a, tree_b):
        found = None
        for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(tree_a)[0],
                                     jax.tree_util.tree_flatten_with_path(tree_b)[0],
                                     strict=False):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
                found = found or (jax.tree_util.keystr(path, simple=True, separator="/"),
                                  float(np.max(np.abs(a.astype(np.float64)
                                                      - b.astype(np.float64))))
                                  if a.shape == b.shape else float("nan"))
        return found

    expect_failed(capsys, check.first_difference, "first_difference", zipped, "ValueError")
