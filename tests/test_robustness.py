"""Tests of utils/robustness.py: attacks, corruptions, calibration and OOD metrics (lesson 09)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
from flax import nnx

from utils import robustness, training

matplotlib.use("Agg")


class Linear(nnx.Module):
    """logits = flatten(x) @ W + b: the input gradient has a closed form."""

    def __init__(self, din, dout, seed=0):
        self.layer = nnx.Linear(din, dout, rngs=nnx.Rngs(seed))

    def __call__(self, x):
        return self.layer(x.reshape(x.shape[0], -1))


class WithDropout(nnx.Module):
    def __init__(self, din, dout, seed=0):
        rngs = nnx.Rngs(seed)
        self.hidden = nnx.Linear(din, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(16, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))))


def _batch(n=6, shape=(4, 5), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.uniform(0, 1, (n, *shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, classes, n), jnp.int32)
    return images, labels


def _pairwise_auroc(a, b):
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def _ece_oracle(probs, labels, bins):
    probs = np.asarray(probs, np.float64)
    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for b in range(bins):
        inside = (conf > edges[b]) & (conf <= edges[b + 1])
        if b == 0:
            inside |= conf <= 0
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - conf[inside].mean())
    return total / len(conf)


# ---------------------------------------------------------------------------- models


def test_standardize_applies_the_normalisation_inside():
    inner = Linear(20, 3)
    model = robustness.Standardize(inner, 0.2, 0.5)
    x, _ = _batch(shape=(4, 5))
    np.testing.assert_allclose(model(x), inner((x - 0.2) / 0.5), rtol=1e-6)


def test_standardize_rejects_a_non_positive_std():
    with pytest.raises(ValueError, match="std must be positive"):
        robustness.Standardize(Linear(20, 3), 0.0, 0.0)


def test_eval_view_turns_dropout_off_and_leaves_the_model_alone():
    model = WithDropout(20, 3)
    x, _ = _batch()
    view = robustness.eval_view(model)
    np.testing.assert_array_equal(view(x), view(x))
    assert view.drop.deterministic and not model.drop.deterministic
    assert not np.array_equal(model(x), model(x))  # the model itself still drops units


def test_eval_view_of_a_model_without_dropout_is_the_model():
    model = Linear(20, 3)
    x, _ = _batch()
    np.testing.assert_array_equal(robustness.eval_view(model)(x), model(x))


# ---------------------------------------------------------------------------- attacks


def test_input_gradient_of_a_linear_model_has_the_closed_form():
    model = Linear(20, 3)
    x, y = _batch()
    w = np.asarray(model.layer.kernel[...])
    p = np.asarray(jax.nn.softmax(model(x)))
    expected = ((p - np.eye(3)[np.asarray(y)]) @ w.T / len(y)).reshape(x.shape)
    np.testing.assert_allclose(robustness.input_gradient(model, x, y), expected,
                               rtol=1e-4, atol=1e-7)


def test_input_gradient_uses_the_eval_view_under_jit():
    model = WithDropout(20, 3)
    x, y = _batch()
    grad = nnx.jit(robustness.input_gradient)
    np.testing.assert_array_equal(grad(model, x, y), grad(model, x, y))


def test_input_gradient_rejects_mismatched_labels():
    x, y = _batch()
    with pytest.raises(ValueError, match="labels must have shape"):
        robustness.input_gradient(Linear(20, 3), x, y[:3])


@pytest.mark.parametrize("n", [1, 7])
def test_fgsm_moves_every_pixel_by_epsilon_up_the_loss_within_0_1(n):
    model = Linear(20, 3)
    x, y = _batch(n)
    x = x.at[:, 0, 0].set(0.0).at[:, 0, 1].set(1.0)
    adv = robustness.fgsm(model, x, y, 0.1)
    grad = robustness.input_gradient(model, x, y)
    expected = np.clip(np.asarray(x) + 0.1 * np.sign(np.asarray(grad)), 0, 1)
    np.testing.assert_allclose(adv, expected, atol=1e-7)
    assert adv.shape == x.shape and adv.dtype == jnp.float32
    loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(model(z), y).mean()
    assert loss(adv) > loss(x)


@pytest.mark.parametrize("epsilon", [-0.1, 1.5])
def test_attacks_reject_epsilon_outside_0_1(epsilon):
    x, y = _batch()
    with pytest.raises(ValueError, match="epsilon must be in"):
        robustness.fgsm(Linear(20, 3), x, y, epsilon)
    with pytest.raises(ValueError, match="epsilon must be in"):
        robustness.random_start(jax.random.key(0), x, epsilon)


def test_random_start_is_uniform_in_the_ball_and_clipped():
    x = jnp.full((50, 10, 10), 0.5).at[:, 0].set(0.0)
    start = np.asarray(robustness.random_start(jax.random.key(1), x, 0.2))
    delta = start - np.asarray(x)
    assert np.all(np.abs(delta) <= 0.2 + 1e-6) and start.min() >= 0 and start.max() <= 1
    inner = delta[:, 1:] / 0.2
    assert abs(inner.mean()) < 0.03 and 0.45 < np.mean(np.abs(inner) > 0.5) < 0.55
    again = robustness.random_start(jax.random.key(1), x, 0.2)
    other = robustness.random_start(jax.random.key(2), x, 0.2)
    np.testing.assert_array_equal(again, start)
    assert not np.array_equal(other, start)


def test_pgd_step_from_the_clean_images_with_step_epsilon_is_fgsm():
    model = Linear(20, 3)
    x, y = _batch()
    np.testing.assert_allclose(robustness.pgd_step(model, x, x, y, 0.1, 0.1),
                               robustness.fgsm(model, x, y, 0.1), atol=1e-7)


def test_pgd_step_projects_on_the_ball_and_clips():
    model = Linear(20, 3)
    x, y = _batch(9)
    start = robustness.random_start(jax.random.key(0), x, 0.05)
    out = np.asarray(robustness.pgd_step(model, x, start, y, 0.05, 0.04))
    assert np.max(np.abs(out - np.asarray(x))) <= 0.05 + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    # Moved along the gradient sign at the start, except where projected or clipped.
    grad = np.sign(np.asarray(robustness.input_gradient(model, start, y)))
    free = np.abs(np.asarray(start) + 0.04 * grad - np.asarray(x)) < 0.05 - 1e-6
    free &= (out > 0) & (out < 1)
    np.testing.assert_allclose(out[free], (np.asarray(start) + 0.04 * grad)[free], atol=1e-6)


def test_make_pgd_is_stronger_than_fgsm_and_compiles_once():
    model = robustness.Standardize(training.MLP(20, 32, 3, rngs=nnx.Rngs(0)), 0.5, 0.3)
    x, y = _batch(64)
    pgd = robustness.make_pgd(10)
    loss = lambda z: float(optax.softmax_cross_entropy_with_integer_labels(model(z), y).mean())
    adv = pgd(model, x, y, jax.random.key(0), 0.1, 0.025)
    assert np.max(np.abs(np.asarray(adv - x))) <= 0.1 + 1e-6
    assert loss(adv) >= loss(robustness.fgsm(model, x, y, 0.1)) - 1e-4
    with jax.log_compiles(True):
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("jax").addHandler(handler)
        try:
            pgd(model, x, y, jax.random.key(1), 0.2, 0.05)  # new budget, same compilation
        finally:
            logging.getLogger("jax").removeHandler(handler)
    assert not [r for r in records if "Compiling" in r.getMessage()]


def test_margin_loss_matches_numpy_for_one_example_and_a_batch():
    logits = jnp.asarray([[2.0, 5.0, -1.0]])
    assert float(robustness.margin_loss(logits, jnp.asarray([1]))) == pytest.approx(-3.0)
    assert float(robustness.margin_loss(logits, jnp.asarray([0]))) == pytest.approx(3.0)
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(7, 4)).astype(np.float32), rng.integers(0, 4, 7)
    other = np.where(np.eye(4, dtype=bool)[y], -np.inf, z).max(axis=1)
    expected = np.mean(other - z[np.arange(7), y])
    assert float(robustness.margin_loss(jnp.asarray(z), jnp.asarray(y))) == pytest.approx(
        expected, rel=1e-6)


def test_margin_loss_rejects_one_class_logits():
    with pytest.raises(ValueError, match="K >= 2"):
        robustness.margin_loss(jnp.zeros((3, 1)), jnp.zeros((3,), jnp.int32))


def test_margin_gradient_survives_a_saturated_softmax():
    """Logit gap 200: the float32 softmax is exactly 1 and every other probability underflows
    to 0, so the cross-entropy's input gradient is exactly 0; the margin's is not."""
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    model.kernel[...] = jnp.asarray([[100.0, -100.0], [0.0, 0.0]])
    model.bias[...] = jnp.zeros(2)
    x, y = jnp.asarray([[1.0, 0.5]]), jnp.asarray([0])
    assert float(jax.nn.softmax(model(x))[0, 0]) == 1.0
    assert not np.any(np.asarray(robustness.input_gradient(model, x, y)))
    grad = robustness.input_gradient(model, x, y, robustness.margin_loss)
    np.testing.assert_allclose(grad, [[-200.0, 0.0]])
    step = robustness.pgd_step(model, x, x, y, 0.1, 0.05, loss=robustness.margin_loss)
    np.testing.assert_allclose(step, [[0.95, 0.5]], rtol=1e-6)


def test_make_pgd_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps must be a positive whole number"):
        robustness.make_pgd(0)


def test_adversarial_batch_step_trains_on_attacked_images():
    seen = []

    def spy_step(model, optimizer, images, labels):
        seen.append(images)
        return training.train_batch(model, optimizer, images, labels)

    model = Linear(20, 3)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    attack = robustness.make_pgd(2)
    step = robustness.make_adversarial_batch_step(attack, jax.random.key(0), 0.1, 0.05,
                                                  batch_step=spy_step)
    x, y = _batch(8)
    before = np.asarray(model.layer.kernel[...])
    loss, acc = step(model, optimizer, x, y)
    assert loss.shape == () and acc.shape == ()
    used = np.asarray(seen[0])
    assert 0 < np.max(np.abs(used - np.asarray(x))) <= 0.1 + 1e-6
    assert not np.array_equal(before, np.asarray(model.layer.kernel[...]))


def test_adversarial_batch_step_works_with_fit():
    model = Linear(20, 3)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    step = robustness.make_adversarial_batch_step(robustness.make_pgd(2), jax.random.key(0),
                                                  0.1, 0.05)
    x, y = _batch(64)
    history = training.fit(model, optimizer, (x, y), epochs=2, batch_size=16,
                           key=jax.random.key(1), num_classes=3, batch_step=step,
                           progress=False)
    assert len(history["train_loss"]) == 2


# ---------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", list(robustness.CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 5])
def test_corruptions_keep_shape_dtype_and_range(name, severity):
    x, _ = _batch(3, (12, 12))
    out = robustness.corrupt(x, name, severity, jax.random.key(0))
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not np.allclose(out, x)


def test_stronger_severity_changes_the_images_more():
    x, _ = _batch(4, (16, 16))
    for name in robustness.CORRUPTIONS:
        change = [float(jnp.mean(jnp.abs(robustness.corrupt(x, name, s, jax.random.key(0)) - x)))
                  for s in (1, 5)]
        assert change[1] > change[0], name


def test_rotation_by_a_severity_matches_an_exact_rotation_of_a_symmetric_case():
    image = jnp.zeros((1, 15, 15)).at[0, 7, 2:13].set(1.0)  # a horizontal bar through the centre
    rotated = np.asarray(robustness._rotate(image, 90.0, None))[0]
    np.testing.assert_allclose(rotated, np.asarray(image[0]).T, atol=1e-5)  # now vertical


def test_contrast_keeps_the_mean_and_blur_keeps_the_mass_of_a_centred_image():
    x = jnp.zeros((1, 21, 21)).at[0, 10, 10].set(1.0)
    blurred = robustness.corrupt(x, "blur", 2, jax.random.key(0))
    np.testing.assert_allclose(float(blurred.sum()), 1.0, rtol=1e-4)
    y, _ = _batch(2, (10, 10))
    low = robustness.corrupt(y, "contrast", 3, jax.random.key(0))
    np.testing.assert_allclose(low.mean(axis=(1, 2)), y.mean(axis=(1, 2)), rtol=1e-5)


def test_gaussian_noise_depends_on_the_key():
    x, _ = _batch(2, (8, 8))
    a, b = (robustness.corrupt(x, "gaussian noise", 2, jax.random.key(k)) for k in (0, 1))
    assert not np.allclose(a, b)


def test_corrupt_rejects_bad_input():
    x, _ = _batch(2, (8, 8))
    with pytest.raises(ValueError, match="unknown corruption"):
        robustness.corrupt(x, "fog", 1, jax.random.key(0))
    for severity in (0, 6, 2.0):
        with pytest.raises(ValueError, match="severity must be a whole number from 1 to 5"):
            robustness.corrupt(x, "blur", severity, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        robustness.corrupt(x[0], "blur", 1, jax.random.key(0))


# ---------------------------------------------------------------------------- calibration


def _probs(n, k, seed, hard=0.2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ones = rng.uniform(size=n) < hard
    probs[ones] = np.eye(k)[rng.integers(0, k, int(ones.sum()))]
    labels = np.where(rng.uniform(size=n) < 0.7, probs.argmax(1), rng.integers(0, k, n))
    return jnp.asarray(probs, jnp.float32), jnp.asarray(labels, jnp.int32)


@pytest.mark.parametrize(("n", "k", "bins"), [(1, 3, 10), (40, 2, 15), (500, 10, 20)])
def test_ece_matches_a_loop_over_bins(n, k, bins):
    probs, labels = _probs(n, k, n)
    np.testing.assert_allclose(robustness.expected_calibration_error(probs, labels, bins),
                               _ece_oracle(probs, labels, bins), rtol=1e-5, atol=1e-7)


def test_reliability_bins_put_confidence_one_in_the_last_bin_and_leave_empty_bins_zero():
    probs = jnp.asarray([[1.0, 0.0], [0.55, 0.45]], jnp.float32)
    conf, acc, counts = robustness.reliability_bins(probs, jnp.asarray([0, 1]), 10)
    np.testing.assert_array_equal(counts, [0, 0, 0, 0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_allclose(np.asarray(conf)[[5, 9]], [0.55, 1.0])
    np.testing.assert_array_equal(np.asarray(acc)[[5, 9]], [0.0, 1.0])
    assert float(conf[0]) == 0 and not np.any(np.isnan(conf))
    np.testing.assert_allclose(robustness.expected_calibration_error(probs, jnp.asarray([0, 1]),
                                                                     10), 0.55 / 2, rtol=1e-6)


def test_ece_of_a_perfectly_calibrated_set_is_zero():
    probs = jnp.asarray([[0.75, 0.25]] * 4, jnp.float32)
    np.testing.assert_allclose(
        robustness.expected_calibration_error(probs, jnp.asarray([0, 0, 0, 1]), 10), 0.0,
        atol=1e-7)


def test_calibration_rejects_bad_input():
    probs, labels = _probs(5, 3, 0)
    with pytest.raises(ValueError, match="num_bins must be a positive whole number"):
        robustness.expected_calibration_error(probs, labels, 0)
    with pytest.raises(ValueError, match="labels must have shape"):
        robustness.expected_calibration_error(probs, labels[:2], 10)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, K\)"):
        robustness.reliability_bins(probs[0], labels, 10)


def test_nll_with_temperature_is_the_cross_entropy_of_scaled_logits():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)) * 3, jnp.float32)
    labels = jnp.arange(6) % 4
    expected = training.cross_entropy_loss(logits / 2.5, labels)
    np.testing.assert_allclose(robustness.nll(logits, labels, 2.5), expected, rtol=1e-6)


@pytest.mark.parametrize(("scale", "above_one"), [(5.0, True), (0.3, False)])
def test_fit_temperature_finds_the_minimum(scale, above_one):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 5))
    p = np.exp(base) / np.exp(base).sum(1, keepdims=True)
    labels = jnp.asarray([rng.choice(5, p=row) for row in p], jnp.int32)
    logits = jnp.asarray(base * scale, jnp.float32)
    t = robustness.fit_temperature(logits, labels)
    assert t.shape == () and t.dtype == jnp.float32
    assert (float(t) > 1) == above_one
    np.testing.assert_allclose(float(t), scale, rtol=0.25)  # the labels came from T = scale
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    best = min(float(robustness.nll(logits, labels, g)) for g in grid[::10])
    assert float(robustness.nll(logits, labels, t)) <= best + 1e-5


# ---------------------------------------------------------------------------- OOD


def test_max_softmax_probability():
    logits = jnp.asarray([[0.0, 0.0], [10.0, -10.0], [1.0, 2.0]])
    np.testing.assert_allclose(robustness.max_softmax_probability(logits),
                               [0.5, 1.0, 1 / (1 + np.exp(-1.0))], rtol=1e-6)


@pytest.mark.parametrize(("n", "m", "levels"), [(1, 1, 2), (1, 9, 3), (200, 300, 7)])
def test_auroc_matches_the_pairwise_count_with_ties(n, m, levels):
    rng = np.random.default_rng(n + m)
    a = rng.integers(0, levels, n).astype(np.float32)
    b = rng.integers(0, levels, m).astype(np.float32)
    np.testing.assert_allclose(robustness.auroc(a, b), _pairwise_auroc(a, b), rtol=1e-6)


def test_auroc_extremes():
    assert float(robustness.auroc(jnp.ones(5), jnp.zeros(3))) == 1.0
    assert float(robustness.auroc(jnp.zeros(5), jnp.ones(3))) == 0.0
    assert float(robustness.auroc(jnp.ones(5), jnp.ones(3))) == 0.5
    assert robustness.auroc(jnp.ones(5), jnp.ones(3)).dtype == jnp.float32


def test_auroc_of_10000_by_10000_is_quick_and_exact_for_distinct_scores():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 10_000), rng.normal(0, 1, 10_000)
    ranks = np.argsort(np.argsort(np.concatenate([a, b]))) + 1
    u = ranks[:10_000].sum() - 10_000 * 10_001 / 2
    np.testing.assert_allclose(robustness.auroc(a, b), u / 1e8, rtol=1e-5)


def test_auroc_rejects_empty_or_2d_scores():
    with pytest.raises(ValueError, match="in_scores must be a non-empty 1-D array"):
        robustness.auroc(jnp.zeros(0), jnp.ones(3))
    with pytest.raises(ValueError, match="out_scores must be a non-empty 1-D array"):
        robustness.auroc(jnp.zeros(3), jnp.ones((3, 1)))


# ---------------------------------------------------------------------------- figures


def test_figures_are_drawn():
    import matplotlib.pyplot as plt

    probs, labels = _probs(100, 10, 0)
    fig = robustness.plot_reliability(probs, labels, 10, title="t")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(fig.axes) == 1 and any("ECE" in t for t in texts), texts
    fig2 = robustness.plot_score_histograms(np.random.rand(50), np.random.rand(40))
    assert len(fig2.axes[0].patches) == 60
    plt.close("all")
