"""Robust image classifiers: attacks, corruptions, calibration, OOD (introduced in lesson 09).

Everything works on images in **pixel units**: floats in ``[0, 1]``, shape ``(N, H, W)``
(or any ``(N, ...)``); a perturbation budget ``epsilon`` is in the same units (an
L-infinity ball). Models that were trained on standardised pixels are wrapped in
:class:`Standardize`, so the normalisation is part of the model and is differentiated
through.

- :func:`eval_view`: the model with dropout off and batch statistics frozen, the view every
  attack differentiates (a train-mode attack is noisy, or raises in NNX).
- :func:`input_gradient`, :func:`fgsm`, :func:`random_start`, :func:`pgd_step`,
  :func:`make_pgd`: the fast gradient sign method and projected gradient descent, with the
  cross-entropy or the :func:`margin_loss` (Carlini-Wagner style) as the attacked loss.
- :func:`make_adversarial_batch_step`: a one-batch training step on attacked images, for
  :func:`utils.training.fit`.
- :data:`CORRUPTIONS`, :func:`corrupt`: noise, blur, rotation and contrast, computed on the
  device with ``jax``, five severities each.
- :func:`reliability_bins`, :func:`expected_calibration_error`, :func:`nll`,
  :func:`fit_temperature`: calibration, and temperature scaling.
- :func:`max_softmax_probability`, :func:`auroc`: out-of-distribution scores and their
  area under the ROC curve (no scikit-learn needed; ties count one half).
- :func:`plot_reliability`, :func:`plot_score_histograms`: the two figures of the lesson.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "Standardize",
    "auroc",
    "corrupt",
    "cross_entropy",
    "eval_view",
    "expected_calibration_error",
    "fgsm",
    "fit_temperature",
    "input_gradient",
    "make_adversarial_batch_step",
    "make_pgd",
    "margin_loss",
    "max_softmax_probability",
    "nll",
    "pgd_step",
    "plot_reliability",
    "plot_score_histograms",
    "random_start",
    "reliability_bins",
]


class Standardize(nnx.Module):
    """``model((x - mean) / std)``: a model on standardised inputs, called on pixels in [0, 1].

    With the normalisation inside the model, an attack's ``epsilon`` and a corruption's
    strength are in pixel units, and gradients with respect to the input are with respect
    to the pixels. Input ``(N, ...)`` as ``model`` expects; output what ``model`` returns.
    """

    def __init__(self, model: nnx.Module, mean: float, std: float):
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}.")
        self.model = model
        self.mean = float(mean)
        self.std = float(std)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.model((x - self.mean) / self.std)


def eval_view(model: nnx.Module) -> nnx.Module:
    """The model in evaluation mode, without changing ``model``: dropout off
    (``deterministic=True``) and batch norm on its running statistics. Attack this view."""
    return nnx.view(model, deterministic=True, use_running_average=True,
                    raise_if_not_found=False)


def _check_epsilon(epsilon: Any, what: str = "epsilon") -> None:
    if isinstance(epsilon, int | float) and not 0 <= epsilon <= 1:
        raise ValueError(f"{what} must be in [0, 1] (pixel units, images in [0, 1]), "
                         f"got {epsilon}.")


def _check_batch(images: Any, labels: Any) -> None:
    if np.ndim(images) < 2:
        raise ValueError(f"images must have shape (N, ...), got shape {np.shape(images)}.")
    if np.shape(labels) != np.shape(images)[:1]:
        raise ValueError(f"labels must have shape ({np.shape(images)[0]},), one per image, "
                         f"got {np.shape(labels)}.")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``logits`` ``(N, K)`` against integer ``labels`` ``(N,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def margin_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner, 2017), ``(N, K), (N,) -> ()``.

    Positive for a misclassified example. Unlike the cross-entropy, its gradient does not
    vanish when the float32 softmax of a confident example rounds to exactly 1 (lesson 09).
    """
    logits = jnp.asarray(logits)
    if logits.ndim != 2 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {logits.shape}.")
    true = jnp.take_along_axis(logits, jnp.asarray(labels)[:, None], axis=-1)[:, 0]
    is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    other = jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=-1)
    return jnp.mean(other - true)


LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def input_gradient(model: nnx.Module, images: jax.Array, labels: jax.Array,
                   loss: LossFn = cross_entropy) -> jax.Array:
    """Gradient of ``loss(logits, labels)`` (default: the mean cross-entropy) with respect
    to the images, in eval mode.

    images ``(N, ...)`` float in [0, 1], labels ``(N,)`` int. Returns ``(N, ...)``.
    """
    _check_batch(images, labels)
    view = eval_view(model)

    def of_images(x: jax.Array) -> jax.Array:
        return loss(view(x), labels)

    return jax.grad(of_images)(images)


def fgsm(model: nnx.Module, images: jax.Array, labels: jax.Array, epsilon: ArrayLike
         ) -> jax.Array:
    """Fast gradient sign method: ``clip(x + epsilon * sign(grad_x loss), 0, 1)``.

    One step of size ``epsilon`` (pixel units) up the loss, on the eval view. images
    ``(N, ...)`` in [0, 1], labels ``(N,)``. Returns adversarial images, same shape.
    """
    _check_epsilon(epsilon)
    grad = input_gradient(model, images, labels)
    return jnp.clip(images + epsilon * jnp.sign(grad), 0.0, 1.0)


def random_start(key: jax.Array, images: jax.Array, epsilon: ArrayLike) -> jax.Array:
    """A uniformly random point of the epsilon ball around ``images``, clipped to [0, 1].

    ``clip(x + U(-epsilon, epsilon), 0, 1)``, noise drawn with ``key``. Returns ``(N, ...)``.
    """
    _check_epsilon(epsilon)
    noise = jax.random.uniform(key, jnp.shape(images), jnp.result_type(images),
                               minval=-1.0, maxval=1.0)
    return jnp.clip(images + epsilon * noise, 0.0, 1.0)


def pgd_step(model: nnx.Module, images: jax.Array, adversarial: jax.Array, labels: jax.Array,
             epsilon: ArrayLike, step_size: ArrayLike, loss: LossFn = cross_entropy
             ) -> jax.Array:
    """One step of projected gradient descent (ascent on ``loss``), L-infinity.

    From ``adversarial``: a step of ``step_size`` along the sign of the input gradient
    there, projected back on the epsilon ball around ``images``, clipped to [0, 1].
    All images ``(N, ...)``; returns ``(N, ...)``. ``loss(logits, labels)``: the mean
    cross-entropy by default, or :func:`margin_loss`.
    """
    _check_epsilon(epsilon)
    grad = input_gradient(model, adversarial, labels, loss)
    moved = adversarial + step_size * jnp.sign(grad)
    projected = images + jnp.clip(moved - images, -epsilon, epsilon)
    return jnp.clip(projected, 0.0, 1.0)


StartFn = Callable[[jax.Array, jax.Array, ArrayLike], jax.Array]
StepFn = Callable[..., jax.Array]


def make_pgd(steps: int, start: StartFn = random_start, step: StepFn = pgd_step
             ) -> Callable[..., jax.Array]:
    """``pgd(model, images, labels, key, epsilon, step_size) -> adversarial images``, jitted.

    A random start (``start(key, images, epsilon)``), then ``steps`` PGD steps
    (``step(model, images, adversarial, labels, epsilon, step_size)``) in a
    ``lax.fori_loop``. ``epsilon`` and ``step_size`` are traced: one compilation serves
    every budget. Madry et al. use ``step_size = 2.5 * epsilon / steps``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive whole number, got {steps!r}.")

    @nnx.jit
    def pgd(model, images, labels, key, epsilon, step_size):
        adversarial = start(key, images, epsilon)

        def body(_, adv):
            return step(model, images, adv, labels, epsilon, step_size)

        return jax.lax.fori_loop(0, steps, body, adversarial)

    return pgd


def make_adversarial_batch_step(
    attack: Callable[..., jax.Array], key: jax.Array, epsilon: float, step_size: float,
    batch_step: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """A one-batch training step on attacked images, for :func:`utils.training.fit`.

    ``attack(model, images, labels, key, epsilon, step_size)`` (e.g. the PGD of
    :func:`make_pgd`, unjitted or jitted) makes the batch's adversarial images on the eval
    view, with a key folded from ``key`` and the optimizer's step count (fresh noise every
    step); then ``batch_step`` (default :func:`utils.training.train_batch`) trains on them.
    Returns ``step(model, optimizer, images, labels) -> (loss, accuracy)`` on the attacked
    batch.
    """
    from utils import training

    _check_epsilon(epsilon)
    inner = training.train_batch if batch_step is None else batch_step

    def adversarial_step(model, optimizer, images, labels):
        step_key = jax.random.fold_in(key, optimizer.step[...])
        adversarial = jax.lax.stop_gradient(
            attack(model, images, labels, step_key, epsilon, step_size))
        return inner(model, optimizer, adversarial, labels)

    return adversarial_step


# ---------------------------------------------------------------------------- corruptions

#: The strength of each corruption at severities 1..5 (pixel units, degrees, factors).
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian noise": (0.08, 0.16, 0.24, 0.32, 0.40),   # standard deviation
    "blur": (0.5, 1.0, 1.5, 2.0, 2.5),                  # Gaussian sigma, in pixels
    "rotation": (10.0, 20.0, 30.0, 45.0, 60.0),         # degrees
    "contrast": (0.6, 0.4, 0.25, 0.15, 0.08),           # factor around the image mean
}


def _gaussian_noise(images: jax.Array, sigma: ArrayLike, key: jax.Array) -> jax.Array:
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.clip(images + sigma * noise, 0.0, 1.0)


#: Half-width of the blur kernel: 3 sigma of the strongest blur (one compilation for all).
_BLUR_RADIUS = int(np.ceil(3 * max(SEVERITIES["blur"])))


def _blur(images: jax.Array, sigma: ArrayLike, key: jax.Array) -> jax.Array:
    offsets = jnp.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=images.dtype)
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = images[:, None]  # (N, 1, H, W): one channel
    x = jax.lax.conv_general_dilated(x, kernel.reshape(1, 1, -1, 1), (1, 1), "SAME")
    x = jax.lax.conv_general_dilated(x, kernel.reshape(1, 1, 1, -1), (1, 1), "SAME")
    return jnp.clip(x[:, 0], 0.0, 1.0)


def _rotate(images: jax.Array, degrees: ArrayLike, key: jax.Array) -> jax.Array:
    height, width = images.shape[-2:]
    angle = jnp.deg2rad(degrees)
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=images.dtype),
                              jnp.arange(width, dtype=images.dtype), indexing="ij")
    cy, cx = (height - 1) / 2, (width - 1) / 2
    # Where each output pixel comes from: the inverse rotation, bilinear interpolation.
    src_r = cy + (rows - cy) * jnp.cos(angle) - (cols - cx) * jnp.sin(angle)
    src_c = cx + (rows - cy) * jnp.sin(angle) + (cols - cx) * jnp.cos(angle)

    def one(image: jax.Array) -> jax.Array:
        return jax.scipy.ndimage.map_coordinates(image, [src_r, src_c], order=1, cval=0.0)

    return jax.vmap(one)(images)


def _contrast(images: jax.Array, factor: ArrayLike, key: jax.Array) -> jax.Array:
    mean = images.mean(axis=(-2, -1), keepdims=True)
    return jnp.clip(mean + factor * (images - mean), 0.0, 1.0)


CORRUPTIONS: dict[str, Callable[[jax.Array, float, jax.Array], jax.Array]] = {
    "gaussian noise": _gaussian_noise,
    "blur": _blur,
    "rotation": _rotate,
    "contrast": _contrast,
}


def corrupt(images: ArrayLike, name: str, severity: int, key: jax.Array) -> jax.Array:
    """``images`` ``(N, H, W)`` in [0, 1] with corruption ``name`` at ``severity`` 1..5.

    Computed on the device with ``jax``, one compilation per corruption and image shape (the
    strength is an argument); ``key`` is used by the random ones (noise).
    Returns float ``(N, H, W)`` in [0, 1].
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: expected one of "
                         f"{', '.join(repr(n) for n in CORRUPTIONS)}.")
    levels = SEVERITIES[name]
    if not isinstance(severity, int | np.integer) or not 1 <= severity <= len(levels):
        raise ValueError(f"severity must be a whole number from 1 to {len(levels)}, "
                         f"got {severity!r}.")
    images = jnp.asarray(images)
    if images.ndim != 3 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError("images must be floating point (N, H, W) in [0, 1], got "
                         f"{images.dtype} {images.shape}.")
    return _corrupt(images, name, jnp.float32(levels[severity - 1]), key)


@jax.jit(static_argnums=1)
def _corrupt(images: jax.Array, name: str, strength: jax.Array, key: jax.Array) -> jax.Array:
    return CORRUPTIONS[name](images, strength, key)


# ---------------------------------------------------------------------------- calibration


def _check_probs(probs: Any, labels: Any) -> None:
    if np.ndim(probs) != 2 or np.shape(probs)[0] == 0:
        raise ValueError(f"probs must have shape (N, K) with N >= 1, got {np.shape(probs)}.")
    if np.shape(labels) != np.shape(probs)[:1]:
        raise ValueError(f"labels must have shape ({np.shape(probs)[0]},), one per row of "
                         f"probs, got {np.shape(labels)}.")


def _check_bins(num_bins: Any) -> None:
    if not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive whole number, got {num_bins!r}.")


def reliability_bins(probs: ArrayLike, labels: ArrayLike, num_bins: int = 15
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram.

    probs ``(N, K)`` (rows sum to 1), labels ``(N,)``. Confidence = the largest
    probability; bins of equal width on [0, 1], right-closed: bin ``b`` holds confidences in
    ``(b / num_bins, (b + 1) / num_bins]`` (a confidence of exactly 1 is in the last bin).
    Returns three ``(num_bins,)`` arrays; an empty bin has confidence and accuracy 0.
    """
    _check_probs(probs, labels)
    _check_bins(num_bins)
    return _reliability_bins(jnp.asarray(probs), jnp.asarray(labels), num_bins)


@jax.jit(static_argnums=2)
def _reliability_bins(probs, labels, num_bins):
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
    index = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    counts = jax.ops.segment_sum(jnp.ones_like(confidence), index, num_bins)
    conf_sum = jax.ops.segment_sum(confidence, index, num_bins)
    correct_sum = jax.ops.segment_sum(correct, index, num_bins)
    safe = jnp.maximum(counts, 1.0)
    return conf_sum / safe, correct_sum / safe, counts


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, num_bins: int = 15
                               ) -> jax.Array:
    """ECE = sum over bins of (bin count / N) * |accuracy - mean confidence| in the bin.

    Bins as in :func:`reliability_bins`; empty bins add nothing. Returns a float scalar.
    """
    conf, acc, counts = reliability_bins(probs, labels, num_bins)
    return jnp.sum(counts * jnp.abs(acc - conf)) / jnp.sum(counts)


def nll(logits: ArrayLike, labels: ArrayLike, temperature: ArrayLike = 1.0) -> jax.Array:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``. ``(N, K), (N,)``."""
    logits = jnp.asarray(logits)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits / temperature, jnp.asarray(labels)).mean()


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """The temperature ``T > 0`` that minimises :func:`nll` of ``logits / T`` (float32 scalar).

    Fit it on held-out data, never on the test set. The NLL is a smooth function of
    ``log T``: a grid over ``T`` in [0.05, 20] finds the basin, a finer grid around the best
    point refines it. One compiled call; logits ``(N, K)``, labels ``(N,)``.
    """
    _check_probs(logits, labels)
    return _fit_temperature(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))


@jax.jit
def _fit_temperature(logits, labels):
    def nll_at(log_t):
        return nll(logits, labels, jnp.exp(log_t))

    coarse = jnp.linspace(np.log(0.05), np.log(20.0), 121)
    best = coarse[jnp.argmin(jax.lax.map(nll_at, coarse))]
    spacing = coarse[1] - coarse[0]
    fine = best + jnp.linspace(-spacing, spacing, 81)
    return jnp.exp(fine[jnp.argmin(jax.lax.map(nll_at, fine))]).astype(jnp.float32)


# ---------------------------------------------------------------------------- OOD


def max_softmax_probability(logits: ArrayLike) -> jax.Array:
    """The largest softmax probability of each row: ``(N, K) -> (N,)``. Higher = more
    in-distribution, in the maximum-softmax-probability baseline (Hendrycks & Gimpel)."""
    return jnp.max(jax.nn.softmax(jnp.asarray(logits), axis=-1), axis=-1)


def auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> jax.Array:
    """Area under the ROC curve for telling in- (higher scores) from out-of-distribution.

    Equals the probability that a random in-distribution score is above a random
    out-of-distribution one, ties counting one half (the Mann-Whitney statistic).
    in_scores ``(N,)``, out_scores ``(M,)``, N, M >= 1. Returns a float32 scalar in [0, 1];
    ``O((N + M) log M)`` with sorting, so 10,000 x 10,000 is quick.
    """
    for what, scores in (("in_scores", in_scores), ("out_scores", out_scores)):
        if np.ndim(scores) != 1 or np.shape(scores)[0] == 0:
            raise ValueError(f"{what} must be a non-empty 1-D array of scores, got shape "
                             f"{np.shape(scores)}.")
    return _auroc(jnp.asarray(in_scores, jnp.float32), jnp.asarray(out_scores, jnp.float32))


@jax.jit
def _auroc(in_scores, out_scores):
    ordered = jnp.sort(out_scores)
    below = jnp.searchsorted(ordered, in_scores, side="left")
    not_above = jnp.searchsorted(ordered, in_scores, side="right")
    wins = below + 0.5 * (not_above - below)
    return (jnp.sum(wins, dtype=jnp.float32)
            / (in_scores.shape[0] * out_scores.shape[0])).astype(jnp.float32)


# ---------------------------------------------------------------------------- figures


def plot_reliability(probs: ArrayLike, labels: ArrayLike, num_bins: int = 15,
                     title: str | None = None, ax: Any = None) -> Any:
    """Reliability diagram: accuracy per confidence bin against the diagonal (lesson 09).

    Bars: each non-empty bin's accuracy; the gap to the diagonal is miscalibration. The ECE
    is written in the legend. Returns the figure.
    """
    import matplotlib.pyplot as plt

    conf, acc, counts = (np.asarray(a) for a in reliability_bins(probs, labels, num_bins))
    ece = float(expected_calibration_error(probs, labels, num_bins))
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 4.0), layout="constrained")
    else:
        fig = ax.figure
    edges = np.linspace(0, 1, num_bins + 1)
    full = counts > 0
    ax.bar(edges[:-1][full], acc[full], width=1 / num_bins, align="edge", alpha=0.8,
           edgecolor="black", label=f"accuracy (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence (largest probability)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    return fig


def plot_score_histograms(in_scores: ArrayLike, out_scores: ArrayLike,
                          names: tuple[str, str] = ("in-distribution", "out-of-distribution"),
                          xlabel: str = "score", title: str | None = None) -> Any:
    """Histograms of two sets of scores on one axis (densities, 30 bins). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    low = float(min(np.min(in_scores), np.min(out_scores)))
    high = float(max(np.max(in_scores), np.max(out_scores)))
    bins = np.linspace(low, high if high > low else low + 1, 31)
    for scores, name in zip((in_scores, out_scores), names, strict=True):
        ax.hist(np.asarray(scores), bins=bins, alpha=0.6, density=True, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    if title:
        ax.set_title(title)
    return fig
