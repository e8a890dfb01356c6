"""Checkers of lesson 08_precision_reproducibility: right answers (the reference and other
correct ways) pass, typical wrong answers FAIL with a message that says what is wrong.

The wrong answers cover the classes of issue 21 that apply to this lesson: a property the
exercise is about (ties, subnormals, NaNs, collisions of keys, NaN rules), a set-up that
could hide the error (indices only small, one key only, one period), overflow and range
(int32 packings of indices, squares that overflow float16), correct alternatives that must
pass, a parameter that must be varied (the key given, the period), and feedback that names
a cause only when the checker established it.

What every checker must do (reference passes, stable PASSED line, blank is NOT ATTEMPTED,
a crash is one FAILED line) is tested for all lessons in test_checks_common.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checker_helpers import expect_failed, run_checker

from utils import exercises, precision
from utils.checks import lesson08_precision_reproducibility as check


def expect_passed(capsys, checker, name, answer):
    line, use = run_checker(capsys, checker, answer)
    assert line.startswith(f"PASSED {name}:"), line
    assert use is answer
    return line


def without_hint(line):
    return line.split(" Hint:")[0]


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


def test_round_by_truncation_fails_and_says_truncation(capsys):
    def truncate(x):
        return jnp.where(jnp.isnan(x), x, _float(_bits(x) & _MASK))

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", truncate, "truncation")


def test_round_half_up_fails_and_says_half_up(capsys):
    def half_up(x):
        return jnp.where(jnp.isnan(x), x, _float((_bits(x) + 0x8000) & _MASK))

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", half_up,
                  "rounding half up")


def test_round_half_down_fails_on_ties_only(capsys):
    def half_down(x):  # rounds to nearest, but every tie goes down
        return jnp.where(jnp.isnan(x), x, _float((_bits(x) + 0x7FFF) & _MASK))

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", half_down,
                  "Only exact ties are wrong")


def test_round_without_nan_case_fails(capsys):
    def no_nan_case(x):
        bits = _bits(x)
        return _float((bits + 0x7FFF + ((bits >> 16) & 1)) & _MASK)

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", no_nan_case,
                  "NaN input that did not come back as a NaN")


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

    expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", flush,
                  "Only subnormal inputs")


def test_round_with_an_unrelated_error_names_no_cause(capsys):
    def scaled(x):  # wrong everywhere, in no pattern the checker knows
        return precision.round_to_bfloat16(x * 1.01)

    line = expect_failed(capsys, check.round_to_bfloat16, "round_to_bfloat16", scaled,
                         "values are wrong", "expected")
    for cause in ("truncation", "half up", "ties", "subnormal", "NaN input"):
        assert cause not in without_hint(line), line


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


def test_relative_error_in_float32_jax_fails_and_says_float32(capsys):
    def in_jax(approx, exact):
        approx, exact = jnp.asarray(approx, jnp.float32), jnp.asarray(exact, jnp.float32)
        return jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact)

    expect_failed(capsys, check.relative_error, "relative_error", in_jax,
                  "computed in float32")


def test_relative_error_in_approx_dtype_fails_and_says_float16(capsys):
    def narrow(approx, exact):
        a = np.asarray(approx)
        d = a - np.asarray(exact).astype(a.dtype)
        return float(np.linalg.norm(d.ravel()) / np.linalg.norm(np.asarray(exact).ravel()))

    expect_failed(capsys, check.relative_error, "relative_error", narrow, "computed in float16")


def test_relative_error_mean_of_elementwise_fails_and_says_so(capsys):
    def elementwise(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return float(np.mean(np.abs(a - e) / np.abs(e)))

    expect_failed(capsys, check.relative_error, "relative_error", elementwise,
                  "mean of the entries' relative errors")


def test_relative_error_max_norm_fails_and_says_so(capsys):
    def max_norm(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return float(np.max(np.abs(a - e)) / np.max(np.abs(e)))

    expect_failed(capsys, check.relative_error, "relative_error", max_norm, "a max norm")


def test_relative_error_divided_by_approx_fails_and_says_so(capsys):
    def wrong_denominator(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return float(np.linalg.norm((a - e).ravel()) / np.linalg.norm(a.ravel()))

    expect_failed(capsys, check.relative_error, "relative_error", wrong_denominator,
                  "norm of approx")


def test_relative_error_with_an_unrelated_error_names_no_cause(capsys):
    def doubled(approx, exact):
        return 2 * precision.relative_error(approx, exact)

    line = expect_failed(capsys, check.relative_error, "relative_error", doubled, "expected")
    assert "That is what" not in line, line


def test_relative_error_returning_an_array_fails(capsys):
    def per_entry(approx, exact):
        a, e = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
        return np.abs(a - e) / np.linalg.norm(e)

    expect_failed(capsys, check.relative_error, "relative_error", per_entry, "one number")


# --- update_loss_scale ----------------------------------------------------------------------


def test_loss_scale_with_select_passes(capsys):
    def with_select(scale, good_steps, finite, period):
        finite = jnp.asarray(finite)
        grown = good_steps + 1 == period
        scale = jax.lax.select(finite, jax.lax.select(grown, scale * 2.0, scale),
                               jnp.maximum(scale * 0.5, jnp.float32(1)))
        return scale, jax.lax.select(finite & ~grown, good_steps + 1, jnp.int32(0))

    expect_passed(capsys, check.update_loss_scale, "update_loss_scale", with_select)


def test_loss_scale_with_lax_cond_passes(capsys):
    def with_cond(scale, good_steps, finite, period):
        def on_finite(state):
            scale, good = state
            return jax.lax.cond(good + 1 >= period, lambda: (scale * 2, jnp.int32(0)),
                                lambda: (scale, good + 1))

        def on_overflow(state):
            return jnp.maximum(state[0] / 2, jnp.float32(1)), jnp.int32(0)

        state = (jnp.asarray(scale, jnp.float32), jnp.asarray(good_steps, jnp.int32))
        return jax.lax.cond(finite, on_finite, on_overflow, state)

    expect_passed(capsys, check.update_loss_scale, "update_loss_scale", with_cond)


def test_loss_scale_with_python_if_fails_under_jit(capsys):
    def python_if(scale, good_steps, finite, period):
        if not finite:
            return jnp.maximum(scale / 2, 1.0), jnp.int32(0)
        if good_steps + 1 >= period:
            return scale * 2, jnp.int32(0)
        return scale, good_steps + 1

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", python_if,
                  "not under jax.jit")


def test_loss_scale_without_floor_fails(capsys):
    def no_floor(scale, good_steps, finite, period):
        grow = good_steps + 1 >= period
        new = jnp.where(finite, jnp.where(grow, scale * 2, scale), scale / 2)
        return new, jnp.where(finite & ~grow, good_steps + 1, 0)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", no_floor,
                  "never below 1")


def test_loss_scale_growing_fourfold_fails(capsys):
    def fourfold(scale, good_steps, finite, period):
        grow = good_steps + 1 >= period
        new = jnp.where(finite, jnp.where(grow, scale * 4, scale), jnp.maximum(scale / 2, 1.0))
        return new, jnp.where(finite & ~grow, good_steps + 1, 0)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", fourfold, "doubles")


def test_loss_scale_with_a_fixed_period_fails(capsys):
    def fixed_period(scale, good_steps, finite, period):  # ignores the period it is given
        return precision.update_loss_scale(scale, good_steps, finite, 5)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", fixed_period, "period")


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


def test_loss_scale_in_float16_fails(capsys):
    def half(scale, good_steps, finite, period):
        new_scale, new_steps = precision.update_loss_scale(scale, good_steps, finite, period)
        return new_scale.astype(jnp.float16), new_steps

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", half, "float16")


def test_loss_scale_returning_python_floats_fails(capsys):
    def floats(scale, good_steps, finite, period):
        new_scale, new_steps = precision.update_loss_scale(scale, good_steps, finite, period)
        return float(new_scale), int(new_steps)

    expect_failed(capsys, check.update_loss_scale, "update_loss_scale", floats, "new_scale")


def test_loss_scale_failed_lines_show_the_tiers_and_the_same_verdict(capsys, monkeypatch):
    monkeypatch.setattr(exercises, "_FAILED_BEFORE", set())

    def late(scale, good_steps, finite, period):
        return precision.update_loss_scale(scale, good_steps, finite, period + 1)

    first = expect_failed(capsys, check.update_loss_scale, "update_loss_scale", late)
    second = expect_failed(capsys, check.update_loss_scale, "update_loss_scale", late)
    hints = check.HINTS["update_loss_scale"]
    assert " ".join(hints.think.split()) in first and " ".join(hints.closer.split()) in second
    assert without_hint(first) == without_hint(second)


# --- worker_key -----------------------------------------------------------------------------


def test_worker_key_nested_in_another_order_passes(capsys):
    def other_order(key, epoch, step, worker):
        key = jax.random.fold_in(key, worker)
        return jax.random.fold_in(jax.random.fold_in(key, step), epoch)

    expect_passed(capsys, check.worker_key, "worker_key", other_order)


def test_worker_key_summing_the_indices_fails_and_names_the_triples(capsys):
    def summed(key, epoch, step, worker):
        return jax.random.fold_in(key, epoch + step + worker)

    expect_failed(capsys, check.worker_key, "worker_key", summed,
                  "(0, 0, 1) and (0, 1, 0) got the same key")


@pytest.mark.parametrize("pack", [
    lambda e, s, w: e * 1_000_000 + s * 1000 + w,  # decimal packing
    lambda e, s, w: (e << 20) | (s << 8) | w,  # bit fields
])
def test_worker_key_packing_into_one_integer_fails(capsys, pack):
    def packed(key, epoch, step, worker):
        return jax.random.fold_in(key, pack(epoch, step, worker))

    expect_failed(capsys, check.worker_key, "worker_key", packed, "got the same key")


def test_worker_key_ignoring_the_worker_fails(capsys):
    def per_step(key, epoch, step, worker):
        return jax.random.fold_in(jax.random.fold_in(key, epoch), step)

    expect_failed(capsys, check.worker_key, "worker_key", per_step, "(0, 0, 0) and (0, 0, 1)")


def test_worker_key_ignoring_the_key_given_fails(capsys):
    def fixed(key, epoch, step, worker):
        return precision.worker_key(jax.random.key(0), epoch, step, worker)

    expect_failed(capsys, check.worker_key, "worker_key", fixed,
                  "two different keys gave the same key")


def test_worker_key_with_hidden_state_fails(capsys):
    calls = iter(range(10**6))

    def counting(key, epoch, step, worker):  # a counter outside: not the same key twice
        return precision.worker_key(jax.random.fold_in(key, next(calls)), epoch, step, worker)

    expect_failed(capsys, check.worker_key, "worker_key", counting, "eagerly and another")


def test_worker_key_with_a_python_if_fails_under_jit(capsys):
    def branching(key, epoch, step, worker):
        if worker:  # a traced value under jit and vmap
            key = jax.random.fold_in(key, worker)
        return jax.random.fold_in(jax.random.fold_in(key, epoch), step)

    expect_failed(capsys, check.worker_key, "worker_key", branching, "traced")


def test_worker_key_returning_raw_key_data_fails(capsys):
    def raw(key, epoch, step, worker):
        return jax.random.key_data(precision.worker_key(key, epoch, step, worker))

    expect_failed(capsys, check.worker_key, "worker_key", raw, "typed key")


def test_worker_key_returning_the_key_for_the_first_triple_fails(capsys):
    def lazy(key, epoch, step, worker):
        derived = precision.worker_key(key, epoch, step, worker)
        first = (jnp.asarray(epoch) == 0) & (jnp.asarray(step) == 0) & (jnp.asarray(worker) == 0)
        return jax.random.wrap_key_data(jnp.where(first, jax.random.key_data(key),
                                                  jax.random.key_data(derived)))

    expect_failed(capsys, check.worker_key, "worker_key", lazy, "the key it was given")


# --- first_difference -----------------------------------------------------------------------


def test_first_difference_by_other_means_passes(capsys):
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
            a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            if np.any(np.isnan(a) != np.isnan(b)):
                return name, np.nan
            keep = ~np.isnan(a) & (a != b)
            return name, float(np.max(np.abs(a[keep] - b[keep]), initial=0.0))
        return None

    expect_passed(capsys, check.first_difference, "first_difference", by_views)


def _first_difference_using(equal, distance=None):
    def default_distance(a, b):
        with np.errstate(invalid="ignore"):
            return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)),
                                initial=0.0))

    distance = default_distance if distance is None else distance

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
            return name, (np.nan if a.shape != b.shape else distance(a, b))
        return None

    return first_difference


def _bitwise(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_first_difference_with_array_equal_fails_on_nans(capsys):
    answer = _first_difference_using(lambda a, b: np.array_equal(a, b))
    expect_failed(capsys, check.first_difference, "first_difference", answer,
                  "identical trees with NaNs in the same places")


def test_first_difference_with_equal_nan_misses_signed_zero(capsys):
    answer = _first_difference_using(lambda a, b: np.array_equal(a, b, equal_nan=True))
    expect_failed(capsys, check.first_difference, "first_difference", answer, "0.0 against -0.0")


def test_first_difference_distance_spoilt_by_nans_in_the_same_place_fails(capsys):
    answer = _first_difference_using(_bitwise)  # max |a - b|: NaN wherever a NaN sits
    expect_failed(capsys, check.first_difference, "first_difference", answer,
                  "one-ulp change in a leaf that also holds a NaN")


def test_first_difference_distance_ignoring_a_nan_against_a_number_fails(capsys):
    def nanmax(a, b):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return float(np.nanmax(d)) if not np.all(np.isnan(d)) else 0.0

    answer = _first_difference_using(_bitwise, nanmax)
    expect_failed(capsys, check.first_difference, "first_difference", answer,
                  "a NaN in one tree where the other has a number")


def test_first_difference_distance_of_inf_against_inf_fails(capsys):
    def without_equal_check(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore"):
            d = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
        return float(np.max(d, initial=0.0))

    answer = _first_difference_using(_bitwise, without_equal_check)
    expect_failed(capsys, check.first_difference, "first_difference", answer, "inf against inf")


def test_first_difference_ignoring_dtype_fails(capsys):
    def same_float64_bytes(a, b):  # equal after a cast to float64: the dtype is lost
        return a.shape == b.shape and (a.astype(np.float64).tobytes()
                                       == b.astype(np.float64).tobytes())

    answer = _first_difference_using(same_float64_bytes, precision._leaf_distance)
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
            if not _bitwise(a, b):
                found = (jax.tree_util.keystr(path, simple=True, separator="/"),
                         precision._leaf_distance(a, b))
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
    def signed(a, b):
        return float(np.max(a.astype(np.float64) - b.astype(np.float64)))

    answer = _first_difference_using(_bitwise, signed)
    expect_failed(capsys, check.first_difference, "first_difference", answer, "distance")


def test_first_difference_without_structure_check_fails(capsys):
    def zipped(tree_a, tree_b):
        for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(tree_a)[0],
                                     jax.tree_util.tree_flatten_with_path(tree_b)[0],
                                     strict=False):
            a, b = np.asarray(a), np.asarray(b)
            if not _bitwise(a, b):
                return (jax.tree_util.keystr(path, simple=True, separator="/"),
                        precision._leaf_distance(a, b))
        return None

    expect_failed(capsys, check.first_difference, "first_difference", zipped, "ValueError")
