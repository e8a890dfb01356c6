"""Checkers of lesson 09_robustness: typical wrong answers FAIL with a message that says what is
wrong, correct alternatives PASS, and verdicts never change between runs (the reference
passing, blanks and crashes are tested for every checker in tests/test_checks_common.py).

Classes of wrong answers (issue 21): noise shared by the images of a batch or along an image
axis, noise that is not uniform; attacks that ignore their epsilon or step size or break on
a batch of one; ECE and AUROC on ties, degenerate inputs (a constant classifier, one class,
equal scores) and large values; temperatures fitted on too narrow a range or with an
overflowing softmax.
"""

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
    expect_failed(capsys, check.fgsm, "fgsm", _wrong_fgsm)


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

    expect_failed(capsys, check.random_start, "random_start", one_sided, "never negative")


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
                  floor_bins, "differs", "confidences of exactly 1")


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
    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  _wrong_ece, "differs")


# --- fit_temperature -----------------------------------------------------------------------


def test_temperature_by_gradient_descent_passes(capsys):
    def descent(logits, labels):
        grad = jax.grad(lambda lt: robustness.nll(logits, labels, jnp.exp(lt)))
        log_t = jax.lax.fori_loop(0, 300, lambda _, lt: lt - 0.5 * grad(lt), jnp.zeros(()))
        return jnp.exp(log_t)

    line, _ = run_checker(capsys, check.fit_temperature, jax.jit(descent))
    assert line.startswith("PASSED fit_temperature:"), line


def test_temperature_inverted_fails(capsys):
    expect_failed(capsys, check.fit_temperature, "fit_temperature", _wrong_temperature, "1/T",
                  "inverted")


def test_temperature_always_one_fails(capsys):
    expect_failed(capsys, check.fit_temperature, "fit_temperature",
                  lambda logits, labels: jnp.float32(1.0), "reachable")


def test_temperature_log_returned_fails(capsys):
    def log_t(logits, labels):
        return jnp.log(robustness.fit_temperature(logits, labels))

    expect_failed(capsys, check.fit_temperature, "fit_temperature", log_t, "log T")


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
    expect_failed(capsys, check.auroc, "auroc", _wrong_auroc, "differs", "swapped")


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


# --- random_start: independence and uniformity ---------------------------------------------


def _clipped(images, noise):
    return jnp.clip(images + noise, 0.0, 1.0)


def test_random_start_same_noise_for_every_image_fails(capsys):
    def shared(key, images, epsilon):
        noise = jax.random.uniform(key, images.shape[1:], minval=-epsilon, maxval=epsilon)
        return _clipped(images, noise)

    expect_failed(capsys, check.random_start, "random_start", shared,
                  "every image of the batch got exactly the same noise")


def test_random_start_one_key_per_image_reused_fails(capsys):
    """vmap over images with the one key: the same noise again, found by correlation."""
    def vmapped(key, images, epsilon):
        def one(image):
            return _clipped(image, jax.random.uniform(key, image.shape, minval=-epsilon,
                                                      maxval=epsilon))
        return jax.vmap(one)(images)

    expect_failed(capsys, check.random_start, "random_start", vmapped, "same noise")


def test_random_start_noise_shared_along_the_width_fails(capsys):
    def per_row(key, images, epsilon):
        shape = images.shape[:-1] + (1,)
        return _clipped(images, jax.random.uniform(key, shape, minval=-epsilon, maxval=epsilon))

    expect_failed(capsys, check.random_start, "random_start", per_row, "columns", "same noise")


def test_random_start_noise_shared_along_the_height_fails(capsys):
    def per_column(key, images, epsilon):
        shape = images.shape[:-2] + (1, images.shape[-1])
        return _clipped(images, jax.random.uniform(key, shape, minval=-epsilon, maxval=epsilon))

    expect_failed(capsys, check.random_start, "random_start", per_column, "rows", "same noise")


def test_random_start_truncated_normal_fails(capsys):
    expect_failed(capsys, check.random_start, "random_start", _wrong_start, "not uniform",
                  "Kolmogorov-Smirnov")


def test_random_start_on_most_of_the_ball_fails(capsys):
    """Uniform on 95% of the interval: its fractions beyond eps/2 and within eps/10 look
    right; only the distribution test sees it."""
    def narrow(key, images, epsilon):
        return _clipped(images, jax.random.uniform(key, images.shape, minval=-0.95 * epsilon,
                                                   maxval=0.95 * epsilon))

    expect_failed(capsys, check.random_start, "random_start", narrow, "not uniform")


@pytest.mark.parametrize("how", ["split per image", "affine", "feasible box"])
def test_random_start_correct_alternatives_pass(capsys, how):
    def per_image(key, images, epsilon):
        keys = jax.random.split(key, images.shape[0])
        noise = jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:], minval=-epsilon,
                                                      maxval=epsilon))(keys)
        return _clipped(images, noise)

    def affine(key, images, epsilon):
        return _clipped(images, epsilon * (2.0 * jax.random.uniform(key, images.shape) - 1.0))

    def feasible_box(key, images, epsilon):
        low, high = jnp.maximum(images - epsilon, 0.0), jnp.minimum(images + epsilon, 1.0)
        return jax.random.uniform(key, images.shape, minval=low, maxval=high)

    answer = {"split per image": per_image, "affine": affine, "feasible box": feasible_box}[how]
    line, use = run_checker(capsys, check.random_start, answer)
    assert line.startswith("PASSED random_start:"), line
    assert use is answer


# --- attacks: varied budgets, batch of one --------------------------------------------------


def test_fgsm_squeezing_the_batch_fails(capsys):
    """Right for every batch but one image: squeeze drops the batch axis."""
    def squeezed(model, images, labels, epsilon):
        return jnp.squeeze(robustness.fgsm(model, images, labels, epsilon))

    expect_failed(capsys, check.fgsm, "fgsm", squeezed, "1 image(s)", "shape (4, 5)")


def test_pgd_step_with_a_fixed_step_size_fails(capsys):
    expect_failed(capsys, check.pgd_step, "pgd_step", _wrong_pgd, "differ")


def test_pgd_step_projecting_around_the_start_fails(capsys):
    def around_start(model, images, adversarial, labels, epsilon, step_size):
        moved = _step(model, adversarial, labels, step_size)
        return jnp.clip(adversarial + jnp.clip(moved - adversarial, -epsilon, epsilon), 0, 1)

    expect_failed(capsys, check.pgd_step, "pgd_step", around_start, "more than epsilon")


def test_pgd_step_clipping_before_projecting_passes(capsys):
    """Both boxes are intervals per pixel: clipping first, then projecting, is the same."""
    def clip_first(model, images, adversarial, labels, epsilon, step_size):
        moved = jnp.clip(_step(model, adversarial, labels, step_size), 0.0, 1.0)
        return images + jnp.clip(moved - images, -epsilon, epsilon)

    line, _ = run_checker(capsys, check.pgd_step, clip_first)
    assert line.startswith("PASSED pgd_step:"), line


# --- ECE: degenerate inputs, ties, large batches --------------------------------------------


def _right_closed_index(conf, num_bins):
    return jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)


def test_ece_bins_over_the_data_range_fail(capsys):
    """np.histogram's habit: bin edges from the smallest to the largest confidence."""
    def data_range(probs, labels, num_bins=15):
        conf, correct = _parts(probs, labels, num_bins)
        low, high = conf.min(), conf.max()
        scaled = (conf - low) / (high - low)
        index = jnp.clip(jnp.ceil(scaled * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
        gap = jax.ops.segment_sum(correct - conf, index, num_bins)
        return jnp.sum(jnp.abs(gap)) / conf.shape[0]

    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  data_range, "differs")


def test_ece_one_global_bin_fails(capsys):
    def global_gap(probs, labels, num_bins=15):
        conf, correct = _parts(probs, labels, num_bins)
        return jnp.abs(correct.mean() - conf.mean())

    expect_failed(capsys, check.expected_calibration_error, "expected_calibration_error",
                  global_gap, "differs")


# --- fit_temperature: ranges and large logits -----------------------------------------------


def test_temperature_with_an_overflowing_softmax_fails(capsys):
    """Gradient descent on log T with a softmax from a plain exp: right until the logits are
    large enough to overflow float32 (e**89)."""
    def naive(logits, labels):
        def nll(log_t):
            e = jnp.exp(logits / jnp.exp(log_t))
            p = e / e.sum(axis=1, keepdims=True)
            return -jnp.mean(jnp.log(p[jnp.arange(labels.shape[0]), labels]))

        grad = jax.grad(nll)
        return jnp.exp(jax.lax.fori_loop(0, 300, lambda _, lt: lt - 0.5 * grad(lt),
                                         jnp.zeros(())))

    expect_failed(capsys, check.fit_temperature, "fit_temperature", jax.jit(naive),
                  "large (up to a few hundred)", "positive and finite")


def test_temperature_on_a_narrow_range_fails(capsys):
    def narrow(logits, labels):
        grid = jnp.linspace(0.5, 2.0, 301)
        return grid[jnp.argmin(jax.vmap(lambda t: robustness.nll(logits, labels, t))(grid))]

    expect_failed(capsys, check.fit_temperature, "fit_temperature", narrow, "is reachable")


def test_temperature_grid_over_t_itself_passes(capsys):
    @jax.jit
    def linear_grid(logits, labels):
        grid = jnp.linspace(0.05, 20.0, 2000)
        return grid[jnp.argmin(jax.vmap(lambda t: robustness.nll(logits, labels, t))(grid))]

    line, _ = run_checker(capsys, check.fit_temperature, linear_grid)
    assert line.startswith("PASSED fit_temperature:"), line


# --- auroc: ties, degenerate inputs, large values -------------------------------------------


def test_auroc_histogram_on_unit_interval_fails(capsys):
    """Fine for probabilities, wrong for logits or energies: the scores are binned on [0, 1]."""
    def binned(in_scores, out_scores):
        edges = jnp.linspace(0.0, 1.0, 1001)
        a = jnp.clip(jnp.searchsorted(edges, in_scores), 0, 1001)
        b = jnp.clip(jnp.searchsorted(edges, out_scores), 0, 1001)
        return jnp.mean((a[:, None] > b[None]) + 0.5 * (a[:, None] == b[None]),
                        dtype=jnp.float32)

    expect_failed(capsys, check.auroc, "auroc", binned, "differs")


def test_auroc_roc_sweep_without_merging_ties_fails(capsys):
    """The ROC curve walked one score at a time: tied scores get an arbitrary order."""
    def sweep(in_scores, out_scores):
        scores = jnp.concatenate([in_scores, out_scores])
        positive = jnp.concatenate([jnp.ones_like(in_scores), jnp.zeros_like(out_scores)])
        order = jnp.argsort(-scores, stable=True)
        tpr = jnp.concatenate([jnp.zeros(1), jnp.cumsum(positive[order]) / in_scores.shape[0]])
        fpr = jnp.concatenate([jnp.zeros(1),
                               jnp.cumsum(1 - positive[order]) / out_scores.shape[0]])
        return jnp.trapezoid(tpr, fpr).astype(jnp.float32)

    expect_failed(capsys, check.auroc, "auroc", sweep, "differs", "ties")


def test_auroc_min_max_normalised_scores_fail(capsys):
    """Rescaling the scores to [0, 1] divides by zero when they are all equal."""
    def rescaled(in_scores, out_scores):
        both = jnp.concatenate([in_scores, out_scores])
        low, high = both.min(), both.max()
        a, b = (in_scores - low) / (high - low), (out_scores - low) / (high - low)
        return jnp.mean((a[:, None] > b[None]) + 0.5 * (a[:, None] == b[None]),
                        dtype=jnp.float32)

    expect_failed(capsys, check.auroc, "auroc", rescaled, "differs", "every score equal")


def test_auroc_rescaled_scores_collapse_large_values(capsys):
    """Rescaled to [0, 1] (guarded against equal scores): 1e6 and 1e6 + 1 become one value
    next to 1e30, so new ties appear."""
    def rescaled(in_scores, out_scores):
        both = jnp.concatenate([in_scores, out_scores])
        low, span = both.min(), both.max() - both.min()
        span = jnp.where(span > 0, span, 1.0)
        a, b = (in_scores - low) / span, (out_scores - low) / span
        return jnp.mean((a[:, None] > b[None]) + 0.5 * (a[:, None] == b[None]),
                        dtype=jnp.float32)

    expect_failed(capsys, check.auroc, "auroc", rescaled, "differs", "magnitude 1e6 to 1e30",
                  "sizes of the scores")


def test_auroc_average_ranks_pass(capsys):
    """Mann-Whitney with tied ranks averaged (scipy's rankdata): a correct alternative."""
    def ranks(in_scores, out_scores):
        both = jnp.concatenate([in_scores, out_scores])
        ordered = jnp.sort(both)
        low = jnp.searchsorted(ordered, in_scores, side="left")
        high = jnp.searchsorted(ordered, in_scores, side="right")
        n, m = in_scores.shape[0], out_scores.shape[0]
        u = jnp.sum((low + high + 1) / 2.0) - n * (n + 1) / 2
        return (u / (n * m)).astype(jnp.float32)

    line, _ = run_checker(capsys, check.auroc, ranks)
    assert line.startswith("PASSED auroc:"), line


# --- verdicts never change ------------------------------------------------------------------


def _wrong_start(key, images, epsilon):
    return _clipped(images, epsilon * jax.random.truncated_normal(key, -1.0, 1.0, images.shape))


def _wrong_fgsm(model, images, labels, epsilon):
    return robustness.fgsm(model, images, labels, 0.1)


def _wrong_pgd(model, images, adversarial, labels, epsilon, step_size):
    return robustness.pgd_step(model, images, adversarial, labels, epsilon, epsilon / 4)


def _wrong_ece(probs, labels, num_bins=15):
    return robustness.expected_calibration_error(probs, labels, 15)


def _wrong_temperature(logits, labels):
    return 1.0 / robustness.fit_temperature(logits, labels)


def _wrong_auroc(in_scores, out_scores):
    return robustness.auroc(out_scores, in_scores)


_REPEATED = {
    "fgsm": (check.fgsm, robustness.fgsm, _wrong_fgsm),
    "random_start": (check.random_start, robustness.random_start, _wrong_start),
    "pgd_step": (check.pgd_step, robustness.pgd_step, _wrong_pgd),
    "expected_calibration_error": (check.expected_calibration_error,
                                   robustness.expected_calibration_error, _wrong_ece),
    "fit_temperature": (check.fit_temperature, robustness.fit_temperature, _wrong_temperature),
    "auroc": (check.auroc, robustness.auroc, _wrong_auroc),
}


@pytest.mark.parametrize("name", list(_REPEATED))
def test_verdicts_are_identical_over_ten_runs(capsys, name):
    checker, reference, wrong = _REPEATED[name]
    for answer, verdict in ((reference, "PASSED"), (wrong, "FAILED")):
        lines = {run_checker(capsys, checker, answer)[0] for _ in range(10)}
        assert len(lines) == 1, lines
        assert lines.pop().startswith(f"{verdict} {name}:")
