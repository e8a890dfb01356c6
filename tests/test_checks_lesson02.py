"""Checkers of lesson 02_jit: the reference passes, a stub is NOT ATTEMPTED, and typical
wrong answers FAIL with a message that says what is wrong."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from checker_helpers import expect_failed, run_checker
from jax import lax

from utils.checks import lesson02_jit as check

# ---- reference values -----------------------------------------------------------------

def test_reference_huber_values():
    x = jnp.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(check.reference_huber(x, 1.0), [2.5, 0.5, 0.0, 0.125, 1.5])


def test_reference_ema_values():
    np.testing.assert_allclose(check.reference_ema(jnp.array([1.0, 1.0, 0.0, 4.0]), 0.5),
                               [0.5, 0.75, 0.375, 2.1875])


def test_reference_pad_to_bucket_values():
    padded, mask = check.reference_pad_to_bucket(jnp.ones((5, 2)), 4)
    assert padded.shape == (8, 2) and mask.tolist() == [True] * 5 + [False] * 3
    assert float(padded[5:].sum()) == 0.0
    padded, mask = check.reference_pad_to_bucket(jnp.ones(8), 4)
    assert padded.shape == (8,) and bool(mask.all())


def test_reference_sgd_step_is_one_gradient_step():
    step = check.reference_make_sgd_step()
    w, x, y = jnp.zeros(2), jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 2.0])
    # gradient of 0.5 * mean((x @ w - y)^2) at w = 0 is -x.T @ y / 2 = [-0.5, -2]
    np.testing.assert_allclose(step(w, x, y, 0.1), [0.05, 0.2])


# ---- huber ----------------------------------------------------------------------------

def huber_python_if(x, delta):
    if jnp.abs(x) <= delta:
        return 0.5 * x**2
    return delta * (jnp.abs(x) - 0.5 * delta)


def huber_float_delta(x, delta):
    d = float(delta)
    return jnp.where(jnp.abs(x) <= d, 0.5 * x**2, d * (jnp.abs(x) - 0.5 * d))


def huber_forgot_abs(x, delta):
    return jnp.where(x <= delta, 0.5 * x**2, delta * (jnp.abs(x) - 0.5 * delta))


def huber_lax_cond(x, delta):
    return lax.cond(jnp.abs(x) <= delta, lambda: 0.5 * x**2,
                    lambda: delta * (jnp.abs(x) - 0.5 * delta))


def test_huber_python_if_fails_as_not_traceable(capsys):
    expect_failed(capsys, check.huber, "huber", huber_python_if,
                   "cannot be traced", "TracerBoolConversionError")


def test_huber_float_of_traced_delta_fails(capsys):
    expect_failed(capsys, check.huber, "huber", huber_float_delta,
                   "cannot be traced", "ConcretizationTypeError")


def test_huber_wrong_values_fail(capsys):
    expect_failed(capsys, check.huber, "huber", huber_forgot_abs, "differs from the reference")


def test_huber_lax_cond_on_arrays_fails(capsys):
    # lax.cond works for a scalar but needs a scalar predicate: arrays fail
    expect_failed(capsys, check.huber, "huber", huber_lax_cond, "your function raised")


# ---- make_sgd_step --------------------------------------------------------------------

def _sgd(w, x, y, lr):
    return w - lr * x.T @ (x @ w - y) / x.shape[0]


def make_static_lr():
    def step(w, x, y, lr):
        return _sgd(w, x, y, lr)

    return jax.jit(step, static_argnames="lr")


def make_static_lr_by_position():
    return functools.partial(jax.jit, static_argnums=3)(lambda w, x, y, lr: _sgd(w, x, y, lr))


def make_float_lr():
    def step(w, x, y, lr):
        return _sgd(w, x, y, float(lr))

    return jax.jit(step)


def make_not_jitted():
    return _sgd


def make_wrong_gradient():
    return jax.jit(lambda w, x, y, lr: w - lr * x.T @ (x @ w - y))  # forgot / n


def test_sgd_static_lr_fails_on_recompilation(capsys):
    line = expect_failed(capsys, check.make_sgd_step, "make_sgd_step", make_static_lr,
                          "compiled 9 times for 9 calls", "static")
    assert "learning rate" in line


def test_sgd_static_lr_by_position_fails(capsys):
    expect_failed(capsys, check.make_sgd_step, "make_sgd_step", make_static_lr_by_position,
                   "compiled 9 times")


def test_sgd_python_float_fails_as_not_traceable(capsys):
    expect_failed(capsys, check.make_sgd_step, "make_sgd_step", make_float_lr,
                   "cannot be traced", "ConcretizationTypeError")


def test_sgd_not_jitted_fails(capsys):
    expect_failed(capsys, check.make_sgd_step, "make_sgd_step", make_not_jitted, "not jitted")


def test_sgd_wrong_values_fail(capsys):
    expect_failed(capsys, check.make_sgd_step, "make_sgd_step", make_wrong_gradient,
                   "differs from the reference")


def test_sgd_reference_passes_again_after_its_shapes_were_compiled(capsys):
    # the second check must not be fooled or broken by JAX's compilation cache
    for _ in range(2):
        line, _ = run_checker(capsys, check.make_sgd_step, check.reference_make_sgd_step)
        assert line.startswith("PASSED make_sgd_step:")


# ---- ema ------------------------------------------------------------------------------

def ema_python_loop(xs, decay):
    m, out = jnp.zeros_like(xs[0]), []
    for x in xs:
        m = decay * m + (1 - decay) * x
        out.append(m)
    return jnp.stack(out)


def ema_at_set_loop(xs, decay):
    ms, m = jnp.zeros_like(xs), jnp.zeros_like(xs[0])
    for t in range(xs.shape[0]):
        m = decay * m + (1 - decay) * xs[t]
        ms = ms.at[t].set(m)
    return ms


def ema_starts_from_first(xs, decay):
    def step(m, x):
        m = decay * m + (1 - decay) * x
        return m, m

    return lax.scan(step, xs[0], xs)[1]


def ema_python_if_on_decay(xs, decay):
    if decay > 0.5:
        decay = decay * 1.0
    return check.reference_ema(xs, decay)


def ema_fori_loop(xs, decay):
    def body(t, carry):
        m, ms = carry
        m = decay * m + (1 - decay) * xs[t]
        return m, ms.at[t].set(m)

    return lax.fori_loop(0, xs.shape[0], body, (jnp.zeros_like(xs[0]), jnp.zeros_like(xs)))[1]


def test_ema_python_loop_fails_on_jaxpr_growth(capsys):
    expect_failed(capsys, check.ema, "ema", ema_python_loop,
                   "equations for 8 steps but", "unrolled Python loop")


def test_ema_at_set_loop_fails_on_jaxpr_growth(capsys):
    expect_failed(capsys, check.ema, "ema", ema_at_set_loop, "equations for 8 steps but")


def ema_closed_form(xs, decay):  # m[t] = (1 - d) d^t cumsum(x[s] / d^s): d^t underflows
    t = jnp.arange(xs.shape[0], dtype=xs.dtype).reshape(-1, *([1] * (xs.ndim - 1)))
    powers = decay**t
    return (1 - decay) * powers * jnp.cumsum(xs / powers, axis=0)


def ema_associative_scan(xs, decay):  # m[t] = a m[t-1] + b[t] composes associatively
    a = jnp.full_like(xs, decay)
    b = (1 - decay) * xs

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    return lax.associative_scan(combine, (a, b))[1]


def test_ema_closed_form_fails_on_long_sequences(capsys):
    expect_failed(capsys, check.ema, "ema", ema_closed_form,
                  "shape (1000, 2) with decay 0.5", "inf or NaN")


def test_ema_associative_scan_is_accepted(capsys):
    line, use = run_checker(capsys, check.ema, ema_associative_scan)
    assert line.startswith("PASSED ema:"), line
    assert use is ema_associative_scan


def test_ema_wrong_start_fails(capsys):
    expect_failed(capsys, check.ema, "ema", ema_starts_from_first, "differs from the reference")


def test_ema_python_if_fails(capsys):
    expect_failed(capsys, check.ema, "ema", ema_python_if_on_decay, "cannot be traced")


def test_ema_fori_loop_is_accepted(capsys):
    line, use = run_checker(capsys, check.ema, ema_fori_loop)
    assert line.startswith("PASSED ema:"), line
    assert use is ema_fori_loop


# ---- pad_to_bucket --------------------------------------------------------------------

def pad_always_one_more_bucket(x, bucket):
    n = x.shape[0]
    m = (n // bucket + 1) * bucket
    return jnp.pad(x, [(0, m - n)] + [(0, 0)] * (x.ndim - 1)), jnp.arange(m) < n


def pad_with_edge_values(x, bucket):
    n = x.shape[0]
    m = bucket * math.ceil(n / bucket)
    return (jnp.pad(x, [(0, m - n)] + [(0, 0)] * (x.ndim - 1), mode="edge"),
            jnp.arange(m) < n)


def pad_mask_all_true(x, bucket):
    padded, mask = check.reference_pad_to_bucket(x, bucket)
    return padded, jnp.ones_like(mask)


def pad_mask_as_float(x, bucket):
    padded, mask = check.reference_pad_to_bucket(x, bucket)
    return padded, mask.astype(jnp.float32)


def pad_returns_only_padded(x, bucket):
    return check.reference_pad_to_bucket(x, bucket)[0]


def pad_mask_from_content(x, bucket):  # real rows of zeros look like padding
    padded, _ = check.reference_pad_to_bucket(x, bucket)
    return padded, np.any(padded.reshape(len(padded), -1) != 0, axis=1)


def test_pad_one_bucket_too_many_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_always_one_more_bucket,
                   "already fill")


def test_pad_with_edge_values_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_with_edge_values,
                   "not all zeros")


def test_pad_mask_all_true_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_mask_all_true,
                   "False for the padding")


def test_pad_mask_from_the_rows_content_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_mask_from_content,
                  "is a real row that is all zeros", "False for the padding")


def test_pad_mask_dtype_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_mask_as_float,
                   "dtype float32 but expected bool")


def test_pad_single_output_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_returns_only_padded,
                   "expected a tuple")


def test_pad_jnp_implementation_is_accepted(capsys):
    def pad_jnp(x, bucket):
        n = x.shape[0]
        m = bucket * math.ceil(n / bucket)
        return jnp.pad(x, [(0, m - n)] + [(0, 0)] * (x.ndim - 1)), jnp.arange(m) < n

    line, _ = run_checker(capsys, check.pad_to_bucket, pad_jnp)
    assert line.startswith("PASSED pad_to_bucket:"), line


# ---- near misses: edge values, gradients, varied parameters, donation -----------------

def huber_sqrt_abs(x, delta):  # |x| as sqrt(x**2): inf for outliers, and NaN gradient at 0
    abs_x = jnp.sqrt(x**2)
    return jnp.where(abs_x <= delta, 0.5 * x**2, delta * (abs_x - 0.5 * delta))


def huber_nan_gradient_at_zero(x, delta):  # right values everywhere; d sqrt(u)/du at u = 0
    abs_x = jnp.where(jnp.abs(x) > 1e18, jnp.abs(x), jnp.sqrt(jnp.minimum(x**2, 1e36)))
    return jnp.where(abs_x <= delta, 0.5 * x**2, delta * (abs_x - 0.5 * delta))


def huber_difference_of_squares(x, delta):  # right algebra; inf - inf = NaN for outliers
    return 0.5 * x**2 - 0.5 * jnp.maximum(jnp.abs(x) - delta, 0.0) ** 2


def huber_delta_one(x, delta):  # ignores the delta it receives
    return check.reference_huber(x, 1.0)


def huber_stop_gradient(x, delta):  # values right, gradient cut
    return lax.stop_gradient(check.reference_huber(x, delta)) + 0.0 * x


def test_huber_nan_gradient_at_zero_fails(capsys):
    expect_failed(capsys, check.huber, "huber", huber_nan_gradient_at_zero,
                  "gradient of huber at x = 0")


def test_huber_overflowing_outliers_fail(capsys):
    for wrong in (huber_difference_of_squares, huber_sqrt_abs):
        expect_failed(capsys, check.huber, "huber", wrong, "overflowed float32")


def test_huber_hard_coded_delta_fails(capsys):
    expect_failed(capsys, check.huber, "huber", huber_delta_one, "differs from the reference")


def test_huber_wrong_gradient_fails(capsys):
    expect_failed(capsys, check.huber, "huber", huber_stop_gradient, "gradient of huber")


def make_donating_step():
    def step(w, x, y, lr):
        return _sgd(w, x, y, lr)

    return jax.jit(step, donate_argnums=0)  # lesson 02 recommends donating the parameters


def make_fixed_batch_size():
    return jax.jit(lambda w, x, y, lr: w - lr * x.T @ (x @ w - y) / 32)


def make_mean_over_features():
    return jax.jit(lambda w, x, y, lr: w - lr * x.T @ (x @ w - y) / x.shape[1])


def test_sgd_donating_the_parameters_passes(capsys):
    line, use = run_checker(capsys, check.make_sgd_step, make_donating_step)
    assert line.startswith("PASSED make_sgd_step:"), line
    assert use is make_donating_step


def test_sgd_hard_coded_batch_size_fails(capsys):
    expect_failed(capsys, check.make_sgd_step, "make_sgd_step", make_fixed_batch_size,
                  "differs from the reference", "shape (1, 3)")


def test_sgd_mean_over_features_fails(capsys):
    expect_failed(capsys, check.make_sgd_step, "make_sgd_step", make_mean_over_features,
                  "differs from the reference")


def ema_swapped_decay(xs, decay):  # the same as the reference at decay = 0.5 only
    return check.reference_ema(xs, 1 - decay) * 1.0


def test_ema_swapped_decay_fails(capsys):
    expect_failed(capsys, check.ema, "ema", ema_swapped_decay,
                  "with decay 0.9 differs from the first step on")


def pad_hard_coded_bucket(x, bucket):
    return check.reference_pad_to_bucket(x, 8)


def pad_always_float32(x, bucket):
    padded, mask = check.reference_pad_to_bucket(x, bucket)
    return padded.astype(np.float32), mask


def pad_two_dimensional_only(x, bucket):
    x = np.asarray(x)
    n, m = x.shape[0], bucket * math.ceil(x.shape[0] / bucket)
    padded = np.zeros((m, x.shape[1] if x.ndim > 1 else 1), x.dtype)
    padded[:n] = x.reshape(n, -1)[:, : padded.shape[1]]
    return padded, np.arange(m) < n


def test_pad_hard_coded_bucket_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_hard_coded_bucket,
                  "has shape", ", 5)")


def test_pad_changing_the_dtype_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_always_float32,
                  "dtype float32 but expected int32")


def test_pad_ignoring_trailing_axes_fails(capsys):
    expect_failed(capsys, check.pad_to_bucket, "pad_to_bucket", pad_two_dimensional_only,
                  "has shape")
