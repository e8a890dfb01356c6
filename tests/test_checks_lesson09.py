"""Checkers of lesson 09_robustness: typical wrong answers FAIL with a message that says what is
wrong (the reference passing, blanks and crashes are tested for every checker in
tests/test_checks_common.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from checker_helpers import expect_failed, run_checker

from utils import robustness
from utils.checks import lesson09_robustness as check


def _loss(model, labels):
    return lambda x: optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()


def _eval_loss(model, labels):
    return _loss(robustness.eval_view(model), labels)


# --- fgsm ----------------------------------------------------------------------------------


def test_fgsm_written_by_hand_passes(capsys):
    def by_hand(model, images, labels, epsilon):
        view = robustness.eval_view(model)

        def loss(x):
            logits = view(x)
            return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])

        return jnp.clip(images + epsilon * jnp.sign(jax.grad(loss)(images)), 0, 1)

    line, use = run_checker(capsys, check.fgsm, by_hand)
    assert line.startswith("PASSED fgsm:"), line
    assert use is by_hand


def test_fgsm_in_train_mode_fails(capsys):
    def train_mode(model, images, labels, epsilon):
        grad = jax.grad(_loss(model, labels))(images)
        return jnp.clip(images + epsilon * jnp.sign(grad), 0, 1)

    expect_failed(capsys, check.fgsm, "fgsm", train_mode, "train mode")


def test_fgsm_switching_the_model_to_eval_fails(capsys):
    def switches(model, images, labels, epsilon):
        model.eval()
        grad = jax.grad(_loss(model, labels))(images)
        return jnp.clip(images + epsilon * jnp.sign(grad), 0, 1)

    expect_failed(capsys, check.fgsm, "fgsm", switches, "eval mode")


def test_fgsm_without_clipping_fails(capsys):
    def unclipped(model, images, labels, epsilon):
        return images + epsilon * jnp.sign(jax.grad(_eval_loss(model, labels))(images))

    expect_failed(capsys, check.fgsm, "fgsm", unclipped, "outside [0, 1]")


def test_fgsm_descending_the_loss_fails(capsys):
    def descent(model, images, labels, epsilon):
        grad = jax.grad(_eval_loss(model, labels))(images)
        return jnp.clip(images - epsilon * jnp.sign(grad), 0, 1)

    expect_failed(capsys, check.fgsm, "fgsm", descent, "against the gradient")


def test_fgsm_raw_gradient_fails(capsys):
    def no_sign(model, images, labels, epsilon):
        grad = jax.grad(_eval_loss(model, labels))(images)
        return jnp.clip(images + epsilon * grad / jnp.max(jnp.abs(grad)), 0, 1)

    expect_failed(capsys, check.fgsm, "fgsm", no_sign, "differ")


def test_fgsm_ignoring_epsilon_fails(capsys):
    def fixed(model, images, labels, epsilon):
        return robustness.fgsm(model, images, labels, 0.1)

    expect_failed(capsys, check.fgsm, "fgsm", fixed)


# --- random_start --------------------------------------------------------------------------


def test_random_start_unclipped_fails(capsys):
    def unclipped(key, images, epsilon):
        return images + jax.random.uniform(key, images.shape, minval=-epsilon, maxval=epsilon)

    expect_failed(capsys, check.random_start, "random_start", unclipped, "outside [0, 1]")


def test_random_start_gaussian_fails(capsys):
    def gaussian(key, images, epsilon):
        noise = jnp.clip(epsilon * jax.random.normal(key, images.shape), -epsilon, epsilon)
        return jnp.clip(images + noise, 0, 1)

    expect_failed(capsys, check.random_start, "random_start", gaussian, "not uniform")


def test_random_start_sign_noise_fails(capsys):
    def corners(key, images, epsilon):
        noise = epsilon * jax.random.rademacher(key, images.shape, jnp.float32)
        return jnp.clip(images + noise, 0, 1)

    expect_failed(capsys, check.random_start, "random_start", corners, "not uniform")


def test_random_start_one_sided_fails(capsys):
    def one_sided(key, images, epsilon):
        return jnp.clip(images + jax.random.uniform(key, images.shape, maxval=epsilon), 0, 1)

    expect_failed(capsys, check.random_start, "random_start", one_sided, "not centred")


def test_random_start_ignoring_the_key_fails(capsys):
    def fixed_key(key, images, epsilon):
        return robustness.random_start(jax.random.key(0), images, epsilon)

    expect_failed(capsys, check.random_start, "random_start", fixed_key, "different keys")


def test_random_start_one_value_per_image_fails(capsys):
    def per_image(key, images, epsilon):
        shape = (images.shape[0],) + (1,) * (images.ndim - 1)
        noise = jax.random.uniform(key, shape, minval=-epsilon, maxval=epsilon)
        return jnp.clip(images + noise, 0, 1)

    expect_failed(capsys, check.random_start, "random_start", per_image, "every pixel")


# --- pgd_step ------------------------------------------------------------------------------


def _step(model, adversarial, labels, step_size):
    grad = jax.grad(_eval_loss(model, labels))(adversarial)
    return adversarial + step_size * jnp.sign(grad)


def test_pgd_step_without_projection_fails(capsys):
    def no_projection(model, images, adversarial, labels, epsilon, step_size):
        return jnp.clip(_step(model, adversarial, labels, step_size), 0, 1)

    expect_failed(capsys, check.pgd_step, "pgd_step", no_projection, "project")


def test_pgd_step_without_clipping_fails(capsys):
    def no_clip(model, images, adversarial, labels, epsilon, step_size):
        moved = _step(model, adversarial, labels, step_size)
        return images + jnp.clip(moved - images, -epsilon, epsilon)

    expect_failed(capsys, check.pgd_step, "pgd_step", no_clip, "outside [0, 1]")


def test_pgd_step_with_gradient_at_clean_images_fails(capsys):
    def at_clean(model, images, adversarial, labels, epsilon, step_size):
        grad = jax.grad(_eval_loss(model, labels))(images)
        moved = adversarial + step_size * jnp.sign(grad)
        return jnp.clip(images + jnp.clip(moved - images, -epsilon, epsilon), 0, 1)

    expect_failed(capsys, check.pgd_step, "pgd_step", at_clean, "clean images")


def test_pgd_step_in_train_mode_fails(capsys):
    def train_mode(model, images, adversarial, labels, epsilon, step_size):
        moved = adversarial + step_size * jnp.sign(jax.grad(_loss(model, labels))(adversarial))
        return jnp.clip(images + jnp.clip(moved - images, -epsilon, epsilon), 0, 1)

    expect_failed(capsys, check.pgd_step, "pgd_step", train_mode, "train mode")


def test_pgd_step_of_size_epsilon_fails(capsys):
    def step_epsilon(model, images, adversarial, labels, epsilon, step_size):
        return robustness.pgd_step(model, images, adversarial, labels, epsilon, epsilon)

    expect_failed(capsys, check.pgd_step, "pgd_step", step_epsilon, "differ")


# --- expected_calibration_error ------------------------------------------------------------


def _parts(probs, labels, num_bins):
    conf = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
    return conf, correct


def test_ece_floor_binning_fails(capsys):
    """Bins by floor(conf * M): a confidence of exactly 1 falls off the last bin."""
    def floor_bins(probs, labels, num_bins=15):
        conf, correct = _parts(probs, labels, num_bins)
        index = jnp.floor(conf * num_bins).astype(jnp.int32)
        count = jax.ops.segment_sum(jnp.ones_like(conf), index, num_bins)
        gap = jax.ops.segment_sum(correct - conf, index, num_bins)
        return jnp.sum(jnp.abs(gap)) / jnp.sum(count)

    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  floor_bins, "differs")


def test_ece_left_closed_bins_pass(capsys):
    """floor binning with the top clipped is a valid convention (differs only on edges)."""
    def left_closed(probs, labels, num_bins=15):
        conf, correct = _parts(probs, labels, num_bins)
        index = jnp.minimum(jnp.floor(conf * num_bins).astype(jnp.int32), num_bins - 1)
        gap = jax.ops.segment_sum(correct - conf, index, num_bins)
        return jnp.sum(jnp.abs(gap)) / conf.shape[0]

    line, _ = run_checker(capsys, check.expected_calibration_error, left_closed)
    assert line.startswith("PASSED expected_calibration_error:"), line


def test_ece_unweighted_bins_fail(capsys):
    def unweighted(probs, labels, num_bins=15):
        conf, correct = _parts(probs, labels, num_bins)
        index = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
        count = jax.ops.segment_sum(jnp.ones_like(conf), index, num_bins)
        gap = jax.ops.segment_sum(correct - conf, index, num_bins) / jnp.maximum(count, 1)
        return jnp.sum(jnp.abs(gap)) / jnp.sum(count > 0)

    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  unweighted, "differs")


def test_ece_nan_for_empty_bins_fails(capsys):
    def nan_bins(probs, labels, num_bins=15):
        conf, correct = _parts(probs, labels, num_bins)
        index = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
        count = jax.ops.segment_sum(jnp.ones_like(conf), index, num_bins)
        acc = jax.ops.segment_sum(correct, index, num_bins) / count
        mean_conf = jax.ops.segment_sum(conf, index, num_bins) / count
        return jnp.sum(count * jnp.abs(acc - mean_conf)) / jnp.sum(count)

    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  nan_bins, "differs")


def test_ece_confidence_of_the_true_label_fails(capsys):
    def true_label(probs, labels, num_bins=15):
        conf = probs[jnp.arange(labels.shape[0]), labels]
        correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
        index = jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
        gap = jax.ops.segment_sum(correct - conf, index, num_bins)
        return jnp.sum(jnp.abs(gap)) / conf.shape[0]

    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  true_label, "differs")


def test_ece_fixed_number_of_bins_fails(capsys):
    def fifteen(probs, labels, num_bins=15):
        return robustness.expected_calibration_error(probs, labels, 15)

    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  fifteen, "differs")


# --- fit_temperature -----------------------------------------------------------------------


def test_temperature_by_gradient_descent_passes(capsys):
    def descent(logits, labels):
        grad = jax.grad(lambda lt: robustness.nll(logits, labels, jnp.exp(lt)))
        log_t = jax.lax.fori_loop(0, 300, lambda _, lt: lt - 0.5 * grad(lt), jnp.zeros(()))
        return jnp.exp(log_t)

    line, _ = run_checker(capsys, check.fit_temperature, jax.jit(descent))
    assert line.startswith("PASSED fit_temperature:"), line


def test_temperature_inverted_fails(capsys):
    def inverse(logits, labels):
        return 1.0 / robustness.fit_temperature(logits, labels)

    expect_failed(capsys, check.fit_temperature, "fit_temperature", inverse, "1/T")


def test_temperature_always_one_fails(capsys):
    expect_failed(capsys, check.fit_temperature, "fit_temperature",
                  lambda logits, labels: jnp.float32(1.0), "reachable")


def test_temperature_log_returned_fails(capsys):
    def log_t(logits, labels):
        return jnp.log(robustness.fit_temperature(logits, labels))

    expect_failed(capsys, check.fit_temperature, "fit_temperature", log_t)


def test_temperature_per_example_fails(capsys):
    def per_row(logits, labels):
        return jnp.full(labels.shape, robustness.fit_temperature(logits, labels))

    expect_failed(capsys, check.fit_temperature, "fit_temperature", per_row, "scalar")


# --- auroc ---------------------------------------------------------------------------------


def test_auroc_pairwise_passes(capsys):
    def pairwise(in_scores, out_scores):
        a, b = in_scores[:, None], out_scores[None, :]
        return jnp.mean((a > b) + 0.5 * (a == b), dtype=jnp.float32)

    line, _ = run_checker(capsys, check.auroc, pairwise)
    assert line.startswith("PASSED auroc:"), line


@pytest.mark.parametrize("tie_weight", [0.0, 1.0])
def test_auroc_ties_not_halved_fail(capsys, tie_weight):
    def wrong_ties(in_scores, out_scores):
        a, b = in_scores[:, None], out_scores[None, :]
        return jnp.mean((a > b) + tie_weight * (a == b), dtype=jnp.float32)

    expect_failed(capsys, check.auroc, "auroc", wrong_ties, "differs")


def test_auroc_swapped_fails(capsys):
    expect_failed(capsys, check.auroc, "auroc",
                  lambda in_scores, out_scores: robustness.auroc(out_scores, in_scores),
                  "differs")


def test_auroc_ranks_without_tie_averaging_fail(capsys):
    """Mann-Whitney with argsort ranks: ties broken by position instead of averaged."""
    def ordinal_ranks(in_scores, out_scores):
        both = jnp.concatenate([in_scores, out_scores])
        ranks = jnp.argsort(jnp.argsort(both)) + 1.0
        n, m = in_scores.shape[0], out_scores.shape[0]
        u = jnp.sum(ranks[:n]) - n * (n + 1) / 2
        return (u / (n * m)).astype(jnp.float32)

    expect_failed(capsys, check.auroc, "auroc", ordinal_ranks, "differs")


def test_numpy_ece_oracle_matches_the_library():
    rng = np.random.default_rng(0)
    for trial in range(6):
        probs, labels, bins = check._probs_case(rng, trial)
        np.testing.assert_allclose(
            check._numpy_ece(probs, labels, bins),
            robustness.expected_calibration_error(probs, labels, bins), rtol=1e-4, atol=1e-6)
