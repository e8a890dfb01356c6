"""Exercise checkers of lesson 09_robustness, with their reference solutions.

Each checker takes the student's answer, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's answer if it passed, else the reference from :mod:`utils.robustness`). What a
checker says beyond the verdict comes from :data:`HINTS` (never a line of the solution).

- :func:`fgsm`: one signed-gradient step of size epsilon, clipped to [0, 1], on the eval
  view. Checked on small models *with dropout in train mode* (so an attack of the train-mode
  model is caught), images with pixels at 0 and 1, batch sizes 1, 6 and 17, three epsilons
  (0.3, 0.1, 0.03), under ``nnx.jit`` (batch 1 also eagerly); the model must be left as
  it was.
  Pixels whose gradient is (nearly) zero may move either way or stay.
- :func:`random_start`: uniform noise in the epsilon ball, clipped; checked by properties on
  two shapes (batch 1 and 64) and three epsilons, eagerly (batch 1 also traced under
  ``jax.jit``): inside the ball and [0, 1], decided by the
  key (same key, same start; another key, another start); then on 64 grey 32x32 images
  (no clipping) with epsilon 0.25: independent across the batch and along each image axis
  (no two images, rows or columns with correlated noise: the same noise for every image is
  rejected), and uniform on [-epsilon, epsilon] by a Kolmogorov-Smirnov test on 65,536
  draws. Both tests use fixed keys, so a verdict never changes; a correct answer drawing
  from another random stream would fail them with probability below 1e-7 (stated where
  they are made).
- :func:`pgd_step`: one PGD step from a point of the ball (some pixels on its edge): gradient
  at that point, step, projection on the ball around the clean images, clipping; the same
  models and batch sizes as FGSM, with step sizes below and above epsilon; compared with
  the reference. A FAILED line says the gradient was taken at the clean images only when
  the answer equals that variant.
- :func:`expected_calibration_error`: against a float64 NumPy loop on random inputs (batch
  sizes 1 to 1000, 2 to 10 classes, 1 to 20 bins, empty bins, confidences of exactly 1)
  and on degenerate ones: a constant classifier (every row the same), every label the same
  class, confidences tied at four values; eagerly (the first also traced under ``jax.jit``,
  which compiles nothing: checks stay quick).
  Confidences on an interior bin edge are never tried (conventions differ there). A FAILED
  line blames confidences of exactly 1 only after the same input without them passes.
- :func:`fit_temperature`: the NLL at the returned temperature is within 0.2% of the best
  one, on over- and under-confident logits, two to ten classes, logits in the hundreds (a
  softmax written with a plain exponential overflows there) and constant logits (any
  positive temperature is right). A FAILED line says "1/T" or "log T" only when that
  transform of the answer is the best temperature.
- :func:`auroc`: against a pairwise float64 count (ties one half) on scores with many ties,
  all scores equal, sets of one score, perfectly separated sets, and scores of magnitude
  1e30 and near 1e6 (nothing may squash or bin them); eagerly (the first also traced under
  ``jax.jit``). A FAILED line names swapped arguments, a dependence on the scores' sizes
  (not only their order) or ties only when a probe shows it.

Every random input comes from a fixed seed, so a verdict never changes between runs, and
no PASSED line holds a measured value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from utils import robustness
from utils.exercises import (
    CheckFailed,
    Hints,
    call_student,
    expect_array,
    expect_close,
    run_check,
    summarize_error,
)

Fn = Callable[..., Any]

__all__ = ["HINTS", "auroc", "expected_calibration_error", "fgsm", "fit_temperature",
           "pgd_step", "random_start"]

#: What each checker says beyond its verdict: NOT ATTEMPTED shows ``about``, a first FAILED
#: ``think``, later ones ``closer``. None of it is code from the solution.
HINTS: dict[str, Hints] = {
    "fgsm": Hints(
        about=("This exercise builds the fast gradient sign method, an attack made of one "
               "gradient of the loss with respect to the pixels; section 2, 'Adversarial "
               "examples: FGSM', gives the step, the budget in pixel units and why an attack "
               "differentiates the model in evaluation mode"),
        think=("Compare your output with the clean images pixel by pixel: how far may a pixel "
               "move, in which direction, and may it leave the range of valid pixels? The "
               "gradient must come from the model as it is used (dropout off), without "
               "changing the model"),
        closer=("Only the sign of each pixel's gradient matters, and every pixel that has a "
                "gradient moves by the whole budget; the budget and the pixel range are two "
                "separate limits, applied one after the other"),
    ),
    "random_start": Hints(
        about=("This exercise draws PGD's random start, a uniformly random point of the "
               "epsilon ball around every image; section 3 says why PGD starts there, and the "
               "text above the exercise lists the properties the checker tests"),
        think=("Every pixel of every image needs a draw of its own, spread evenly over the "
               "whole interval from minus epsilon to plus epsilon, decided by the key you are "
               "given. Which shape does your draw have, and which range?"),
        closer=("Print your noise for two images of the batch, and for two neighbouring rows "
                "of one image: nothing may repeat. Then histogram it: flat, reaching both ends "
                "of the interval, with nothing piled up anywhere"),
    ),
    "pgd_step": Hints(
        about=("This exercise writes one step of projected gradient descent; section 3 "
               "describes it: a signed step taken with the gradient at the current adversarial "
               "images, a projection back onto the epsilon ball around the clean images, and "
               "the pixel range"),
        think=("Three things happen in order: the signed step from the adversarial images "
               "(with the gradient taken there), the projection that keeps each pixel within "
               "epsilon of its clean value, the clip to the pixel range. Which of them does "
               "the failing pixel break?"),
        closer=("The projection is measured from the clean images, not from the point you "
                "stepped from; the step size and epsilon are separate arguments, and a step "
                "may be longer than the ball is wide"),
    ),
    "expected_calibration_error": Hints(
        about=("This exercise measures calibration; section 6 defines the expected "
               "calibration error: equal-width bins of confidence, right-closed, each bin's "
               "gap between accuracy and mean confidence weighted by its share of the "
               "predictions"),
        think=("Redo the failing input by hand: which bin does each confidence fall in (a "
               "confidence of exactly 1 belongs to the last one), what are each bin's accuracy "
               "and mean confidence, and how much does the bin weigh?"),
        closer=("An empty bin adds nothing (never a NaN); the weights are counts over the "
                "number of predictions; the bin edges are fixed on [0, 1], whatever range the "
                "confidences happen to cover"),
    ),
    "fit_temperature": Hints(
        about=("This exercise fits temperature scaling, one number that divides the logits; "
               "section 6 explains why it is fitted by minimising the negative log-likelihood "
               "on held-out data, and why doing it over the logarithm of T is convenient"),
        think=("Evaluate the NLL at your temperature and at a few others around it: is yours "
               "the lowest? Check the direction (dividing, not multiplying), the range you "
               "search, and that the NLL stays finite when the logits are large"),
        closer=("Search over the logarithm of T wide enough to reach both very soft and very "
                "sharp models, and compute the NLL from log-probabilities computed stably "
                "(the course's nll helper does), never from a plain exponential"),
    ),
    "auroc": Hints(
        about=("This exercise scores an out-of-distribution detector over all thresholds at "
               "once; section 7 defines the AUROC as the probability that an in-distribution "
               "score is above an out-of-distribution one, a tie counting one half"),
        think=("On the failing input, count by hand the pairs where the in-score is above, "
               "equal to and below the out-score. Does your answer treat ties as one half, keep "
               "the two roles apart, and use the scores as they are, whatever their size?"),
        closer=("Only the order of the scores matters: no binning, rescaling or squashing; "
                "sorted out-scores let you count, for each in-score, how many lie below it and "
                "how many equal it"),
    ),
}

#: (batch, image shape, hidden width, classes, epsilon, step size) of the attack checks:
#: batch 1, and step sizes below and above epsilon.
_ATTACK_CASES = (
    (1, (4, 5), 16, 3, 0.3, 0.1),
    (6, (7, 3), 12, 4, 0.1, 0.25),
    (17, (5, 5), 24, 10, 0.03, 0.01),
)


@functools.cache
def _dropout_net_class() -> Any:
    """One class for every check, so compiled references are reused between checks."""
    from flax import nnx

    class DropoutNet(nnx.Module):
        """Linear -> ReLU -> Dropout(0.5) -> Linear on flattened images; train mode."""

        def __init__(self, din: int, dhidden: int, dout: int, *, rngs: nnx.Rngs):
            self.hidden = nnx.Linear(din, dhidden, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.out = nnx.Linear(dhidden, dout, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            x = x.reshape(x.shape[0], -1)
            return self.out(self.drop(nnx.relu(self.hidden(x))))

    return DropoutNet


def _attack_case(case: int, rng: np.random.Generator) -> tuple[Any, Any, Any, float, float]:
    """A model with dropout (train mode), images with exact 0s and 1s, labels, eps, step."""
    import jax.numpy as jnp

    n, shape, hidden, classes, eps, step = _ATTACK_CASES[case]
    # Larger biases so few hidden units are dead and every pixel gets a clear gradient.
    bias = jnp.asarray(rng.uniform(0.1, 0.5, hidden), jnp.float32)
    model = _jitted()["build"](int(np.prod(shape)), hidden, classes, case + 7, bias)
    pixels = rng.uniform(0, 1, (n, *shape))
    pixels[rng.uniform(size=pixels.shape) < 0.3] = 0.0
    pixels[rng.uniform(size=pixels.shape) < 0.2] = 1.0
    images = jnp.asarray(pixels, jnp.float32)
    labels = jnp.asarray(rng.integers(0, classes, n), jnp.int32)
    return model, images, labels, eps, step


@functools.cache
def _jitted() -> dict[str, Any]:
    """The checks' own compiled helpers, built once per process (checks stay quick)."""
    import jax
    from flax import nnx

    def build(din: int, dhidden: int, dout: int, seed: int, bias: Any) -> Any:
        model = _dropout_net_class()(din, dhidden, dout, rngs=nnx.Rngs(seed))
        model.hidden.bias[...] = bias
        return model

    return {
        "build": nnx.jit(build, static_argnums=(0, 1, 2, 3)),
        "fgsm": nnx.jit(robustness.fgsm),
        "pgd_step": nnx.jit(robustness.pgd_step),
        "gradient": nnx.jit(robustness.input_gradient),
        "start": jax.jit(robustness.random_start),
    }


@functools.lru_cache(maxsize=32)
def _compiled(fn: Fn, kind: str) -> Fn:
    """``fn`` under ``nnx.jit`` or ``jax.jit``, one wrapper per function: checking the same
    answer again reuses its compilation (the verdict does not depend on it)."""
    import jax
    from flax import nnx

    return nnx.jit(fn) if kind == "nnx" else jax.jit(fn)


def _check_traceable(fn: Fn, args: tuple[Any, ...], static: tuple[int, ...], got: Any,
                     where: str) -> None:
    """``fn`` traces as under ``jax.jit`` (``num_bins`` and the like static), to an output of
    the shape and dtype it gave eagerly. Tracing compiles nothing, so this costs little; a
    function that traces compiles under ``jax.jit`` with the same result."""
    import jax

    fixed = {i: args[i] for i in static}
    dynamic = [a for i, a in enumerate(args) if i not in fixed]

    def with_static(*rest: Any) -> Any:
        it = iter(rest)
        return fn(*(fixed[i] if i in fixed else next(it) for i in range(len(args))))

    try:
        shape = jax.eval_shape(with_static, *dynamic)
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        raise CheckFailed(f"{where}, your function works eagerly but fails under jax.jit: "
                          f"{summarize_error(error).rstrip('.')}.") from None
    if not hasattr(shape, "shape") or (tuple(shape.shape), np.dtype(shape.dtype)) != (
            tuple(np.shape(got)), np.dtype(getattr(got, "dtype", None))):
        raise CheckFailed(f"{where}, under jax.jit your function returns {shape}, but "
                          f"{getattr(got, 'dtype', type(got).__name__)} of shape "
                          f"{np.shape(got)} eagerly.")


def _model_state(model: Any) -> list[np.ndarray]:
    """Every leaf of the model's state (parameters, RNG keys and counts) as NumPy."""
    import jax
    from flax import nnx

    def plain(leaf: Any) -> np.ndarray:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)

    return [plain(leaf) for leaf in jax.tree.leaves(nnx.state(model))]


def _call_attack(fn: Fn, model: Any, args: tuple[Any, ...], where: str) -> Any:
    """Call the student's attack; a train-mode attack (NNX refuses it) gets its own message."""
    before = _model_state(model)
    try:
        out = fn(model, *args)
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        if "TraceContextError" in type(error).__name__ or "different trace level" in str(error):
            raise CheckFailed(f"{where}, the attack ran the model in train mode: its dropout "
                              "tried to draw random numbers inside jax.grad (NNX raised "
                              f"{type(error).__name__}).") from None
        raise CheckFailed(f"{where}, your function raised "
                          f"{summarize_error(error).rstrip('.')}.") from None
    if model.drop.deterministic:
        raise CheckFailed(f"{where}, your function left the model in eval mode (its dropout "
                          "is now off for good, also for the training that follows).")
    after = _model_state(model)
    if any(a.shape != b.shape or not np.array_equal(a, b)
           for a, b in zip(before, after, strict=True)) or len(before) != len(after):
        raise CheckFailed(f"{where}, the model's state changed (its dropout random numbers "
                          "were used, or its parameters were updated): an attack must leave "
                          "the model as it was.")
    return out


def _attack_ways(fn: Fn, first: bool) -> list[tuple[str, Fn]]:
    """Every case under ``nnx.jit`` (one compilation per shape), the first also eagerly (an
    eager gradient compiles every operation of the backward pass on its own)."""
    jitted = [(" under nnx.jit", _compiled(fn, "nnx"))]
    return jitted + [("", fn)] if first else jitted


def _gradient(model: Any, images: Any, labels: Any) -> np.ndarray:
    return np.asarray(_jitted()["gradient"](model, images, labels))


def _pixel(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(i) for i in index) + ")"


def _check_box(got: np.ndarray, clean: np.ndarray, eps: float, where: str) -> None:
    """Inside [0, 1] and within epsilon of the clean images; else the first offender."""
    outside = (got < -1e-6) | (got > 1 + 1e-6)
    if np.any(outside):
        i = tuple(int(k) for k in np.argwhere(outside)[0])
        raise CheckFailed(f"{where}, {int(outside.sum())} pixels are outside [0, 1]; e.g. at "
                          f"{_pixel(i)}: got {got[i]:.4g} (clean pixel {clean[i]:.4g}).")
    far = np.abs(got - clean) > eps * (1 + 1e-5) + 1e-6
    if np.any(far):
        i = tuple(int(k) for k in np.argwhere(far)[0])
        raise CheckFailed(f"{where}, {int(far.sum())} pixels moved by more than epsilon from "
                          f"the clean images; e.g. at {_pixel(i)}: clean {clean[i]:.4g}, got "
                          f"{got[i]:.4g}, a change of {abs(got[i] - clean[i]):.4g} > {eps}.")


def _compare_adversarial(got: np.ndarray, expected: np.ndarray, grad: np.ndarray,
                         where: str) -> None:
    """Equal, except where the reference gradient is so small that its sign is noise."""
    tiny = np.abs(grad) <= 1e-6 * max(float(np.max(np.abs(grad))), 1e-30)
    bad = ~np.isclose(got, expected, rtol=1e-5, atol=1e-6) & ~tiny
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CheckFailed(f"{where}, {int(bad.sum())} of {bad.size} pixels differ from the "
                          f"reference; e.g. at {_pixel(index)}: got {got[index]:.4g}, "
                          f"expected {expected[index]:.4g}.")


def _check_fgsm(fn: Fn) -> str:
    rng = np.random.default_rng(9)
    for case in range(len(_ATTACK_CASES)):
        model, images, labels, eps, _ = _attack_case(case, rng)
        for how, way in _attack_ways(fn, first=case == 0):
            where = f"for {images.shape[0]} image(s) of shape {images.shape[1:]}, eps={eps}{how}"
            out = _call_attack(way, model, (images, labels, eps), where)
            got = expect_array(out, images.shape, "float32", f"the output {where}")
            x = np.asarray(images)
            _check_box(got, x, eps, where)
            grad = _gradient(model, images, labels)
            moved = np.abs(got - x) > 1e-7
            if np.any(moved) and np.mean(np.sign(got - x)[moved] == np.sign(grad)[moved]) < 0.5:
                raise CheckFailed(f"{where}, most moved pixels moved against the gradient of "
                                  "the loss (they lower the loss instead of raising it).")
            expected = np.asarray(_jitted()["fgsm"](model, images, labels, eps))
            _compare_adversarial(got, expected, grad, where)
    return (f"matches the reference FGSM of the eval view for {len(_ATTACK_CASES)} models "
            "with dropout (batch sizes 1 to 17, epsilons 0.03 to 0.3); the model is left "
            "unchanged; under nnx.jit, and eagerly")


def fgsm(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``fgsm(model, images, labels, epsilon) -> adversarial images``."""
    return run_check("fgsm", student_fn, robustness.fgsm, _check_fgsm, HINTS["fgsm"],
                     quiet=quiet)


#: The distribution test of random_start: grey images, so nothing is clipped.
_GREY_SHAPE, _GREY_EPS = (64, 32, 32), 0.25
#: Kolmogorov-Smirnov bound on the 65,536 draws. By the Dvoretzky-Kiefer-Wolfowitz
#: inequality, uniform draws exceed it with probability at most 2 exp(-2 n t^2) = 1.3e-8
#: (the false-alarm rate for a correct answer drawing another random stream). Uniform noise
#: on 95% of the interval is 0.025 away, a truncated normal 0.05.
_KS_LIMIT = 0.012
#: Largest correlation allowed between the noise of two images, two rows or two columns.
#: Independent noise gives correlations of standard deviation 1/sqrt(values) <= 1/32 here,
#: so 0.5 is 16 standard deviations: with every pair of slices (about 3,000) the false-alarm
#: rate is below 1e-12 (normal approximation).
_CORRELATION_LIMIT = 0.5


def _slice_correlation(noise: np.ndarray, axis: int) -> tuple[float, int, int]:
    """The largest |correlation| between two slices of ``noise`` along ``axis``, and which
    two (a slice with no spread at all counts as correlation 1 with its neighbour)."""
    rows = np.moveaxis(noise, axis, 0).reshape(noise.shape[axis], -1)
    centred = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    flat = np.flatnonzero(norms < 1e-12)
    if flat.size:
        i = int(flat[0])
        return 1.0, i, (i + 1) % rows.shape[0]
    corr = np.abs((centred / norms[:, None]) @ (centred / norms[:, None]).T)
    np.fill_diagonal(corr, 0.0)
    i, j = np.unravel_index(int(np.argmax(corr)), corr.shape)
    return float(corr[i, j]), int(min(i, j)), int(max(i, j))


def _check_noise_independence(noise: np.ndarray) -> None:
    """Noise ``(64, 32, 32)`` in units of epsilon: not shared by images, rows or columns."""
    per_image = noise.reshape(noise.shape[0], -1)
    if np.all(per_image.std(axis=1) < 1e-6):
        raise CheckFailed("on grey images, every pixel of an image moved by the same amount "
                          "(one noise value per image).")
    if np.all(np.abs(noise - noise[:1]) < 1e-6):
        raise CheckFailed(f"on {noise.shape[0]} grey images, every image of the batch got "
                          "exactly the same noise.")
    # Within an image first: noise shared along an axis also correlates whole images.
    names = {2: "columns of an image", 1: "rows of an image", 0: "images of the batch"}
    for axis, name in names.items():
        r, i, j = _slice_correlation(noise, axis)
        if r > _CORRELATION_LIMIT:
            same = np.allclose(np.take(noise, i, axis), np.take(noise, j, axis), atol=1e-6)
            how = "the same noise" if same else f"noise with correlation {r:.2f}"
            raise CheckFailed(f"on grey images of shape {noise.shape}, the {name} {i} and {j} "
                              f"got {how} (independent noise stays below "
                              f"{_CORRELATION_LIMIT} at this size).")


def _check_noise_uniform(noise: np.ndarray) -> None:
    """Noise in units of epsilon: uniform on [-1, 1] (Kolmogorov-Smirnov)."""
    draws = np.sort(noise.ravel())
    n = draws.size
    cdf = np.clip((draws + 1) / 2, 0, 1)
    gap = float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))
    if gap <= _KS_LIMIT:
        return
    far, near = float(np.mean(np.abs(draws) > 0.5)), float(np.mean(np.abs(draws) < 0.1))
    shown = (f"{far:.0%} of it beyond epsilon/2 (uniform: 50%), {near:.0%} within epsilon/10 "
             f"(uniform: 10%), range [{draws[0]:.3f}, {draws[-1]:.3f}] epsilon")
    if draws[0] >= -1e-6 or draws[-1] <= 1e-6:
        side = "negative" if draws[0] >= -1e-6 else "positive"
        raise CheckFailed(f"on grey images, the noise is never {side}: it is not centred on "
                          f"the image ({shown}).")
    values = np.unique(np.round(draws, 5))
    if values.size <= 3:
        raise CheckFailed(f"on grey images, the noise takes only the values "
                          f"{', '.join(f'{v:g}' for v in values)} times epsilon: it is not "
                          "uniform on [-epsilon, epsilon].")
    raise CheckFailed(f"on grey images, the noise is not uniform on [-epsilon, epsilon]: its "
                      f"distribution differs from the uniform one by {gap:.3f} (Kolmogorov-"
                      f"Smirnov, {n} draws; uniform draws stay below {_KS_LIMIT}): {shown}.")


def _check_random_start(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    # Two shapes only (each is a compilation per answer); the second at two epsilons.
    cases = ((1, (3, 4), 0.3), (64, (32, 32), 0.1), (64, (32, 32), 0.05))
    for i, (n, shape, eps) in enumerate(cases):
        pixels = rng.uniform(0, 1, (n, *shape))
        pixels[rng.uniform(size=pixels.shape) < 0.3] = 0.0
        pixels[rng.uniform(size=pixels.shape) < 0.2] = 1.0
        images = jnp.asarray(pixels, jnp.float32)
        x = np.asarray(images)
        key = jax.random.key(100 + i)
        where = f"for images of shape {images.shape}, eps={eps}"
        out = fn(key, images, eps)
        got = expect_array(out, images.shape, "float32", f"the output {where}")
        _check_box(got, x, eps, where)
        if not np.array_equal(np.asarray(fn(key, images, eps)), got):
            raise CheckFailed(f"{where}, two calls with the same key differ.")
        if i == 0:
            _check_traceable(fn, (key, images, eps), (), out, where)
        other = np.asarray(fn(jax.random.key(200 + i), images, eps))
        if np.array_equal(other, got):
            raise CheckFailed(f"for images of shape {images.shape}, two different keys gave the "
                              "same start.")
    # The distribution, on grey images (nothing clipped): independent and uniform.
    grey = jnp.full(_GREY_SHAPE, 0.5, jnp.float32)
    got = expect_array(fn(jax.random.key(7), grey, _GREY_EPS), _GREY_SHAPE, "float32",
                       f"the output for grey images of shape {_GREY_SHAPE}")
    noise = (got.astype(np.float64) - 0.5) / _GREY_EPS
    _check_noise_independence(noise)
    _check_noise_uniform(noise)
    return ("inside the epsilon ball and [0, 1], decided by the key, for batches of 1 and "
            "64, three epsilons, eagerly and traced under jax.jit; noise independent across "
            "images, "
            "rows and columns, and uniform (Kolmogorov-Smirnov, 65,536 draws)")


def random_start(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``random_start(key, images, epsilon) -> a random point of the ball``."""
    return run_check("random_start", student_fn, robustness.random_start,
                     _check_random_start, HINTS["random_start"], quiet=quiet)


def _check_pgd_step(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    for case in range(len(_ATTACK_CASES)):
        model, images, labels, eps, step = _attack_case(case, rng)
        start = np.asarray(_jitted()["start"](jax.random.key(case), images, eps))
        # Some pixels exactly on the ball's edge, where the step must be projected back.
        x = np.asarray(images)
        edge = rng.uniform(size=x.shape) < 0.3
        sign = rng.choice([-1.0, 1.0], size=x.shape)
        start = jnp.asarray(np.where(edge, np.clip(x + eps * sign, 0.0, 1.0), start),
                            jnp.float32)
        a = np.asarray(start)
        for how, way in _attack_ways(fn, first=case == 0):
            where = (f"for {images.shape[0]} image(s) of shape {images.shape[1:]}, eps={eps}, "
                     f"step_size={step}{how}")
            out = _call_attack(way, model, (images, start, labels, eps, step), where)
            got = expect_array(out, images.shape, "float32", f"the output {where}")
            _check_box(got, x, eps, where)
            grad = _gradient(model, start, labels)
            expected = np.asarray(_jitted()["pgd_step"](model, images, start, labels, eps, step))
            try:
                _compare_adversarial(got, expected, grad, where)
            except CheckFailed:
                # Probe: the same step with the gradient taken at the clean images.
                sign_clean = np.sign(_gradient(model, images, labels))
                at_clean = np.clip(x + np.clip(a + step * sign_clean - x, -eps, eps), 0, 1)
                if np.allclose(got, at_clean, atol=1e-6):
                    raise CheckFailed(f"{where}, your result is the step taken with the "
                                      "gradient at the clean images, not at the adversarial "
                                      "images.") from None
                raise
    return (f"matches the reference PGD step of the eval view for {len(_ATTACK_CASES)} models "
            "with dropout (batch sizes 1 to 17, step sizes below and above epsilon), from "
            "points on and inside the ball's edge; the model is left unchanged; under nnx.jit, "
            "and eagerly")


def pgd_step(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``pgd_step(model, images, adversarial, labels, epsilon, step_size)``."""
    return run_check("pgd_step", student_fn, robustness.pgd_step, _check_pgd_step,
                     HINTS["pgd_step"], quiet=quiet)


def _random_probs(rng: np.random.Generator, n: int, k: int, bins: int,
                  hard: float = 0.2) -> np.ndarray:
    """Softmax rows of random sharpness, a share ``hard`` of them one-hot (confidence 1),
    none with its confidence on an interior bin edge (where conventions legitimately
    differ)."""
    logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 6.0)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    one_hot = rng.uniform(size=n) < hard
    probs[one_hot] = np.eye(k)[rng.integers(0, k, int(one_hot.sum()))]
    probs = probs.astype(np.float32)
    scaled = probs.max(axis=1) * bins
    on_edge = (np.abs(scaled - np.round(scaled)) < 1e-4) & (probs.max(axis=1) < 1)
    probs[on_edge] = np.eye(k, dtype=np.float32)[probs[on_edge].argmax(axis=1)]
    return probs


def _labels_for(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Labels right for about 70% of the rows."""
    n, k = probs.shape
    return np.where(rng.uniform(size=n) < 0.7, probs.argmax(axis=1), rng.integers(0, k, n))


def _probs_case(rng: np.random.Generator, trial: int) -> tuple[Any, Any, int]:
    """One of six random ECE inputs (batch 1 to 1000, 1 to 20 bins)."""
    import jax.numpy as jnp

    n, k, bins = ((1, 3, 10), (7, 2, 15), (50, 10, 20), (200, 4, 5), (1000, 10, 15),
                  (33, 5, 1))[trial % 6]
    probs = _random_probs(rng, n, k, bins)
    return jnp.asarray(probs), jnp.asarray(_labels_for(rng, probs), jnp.int32), bins


def _ece_cases(rng: np.random.Generator) -> list[tuple[str, tuple[Any, ...]]]:
    """(what the input is, arguments): random inputs, then degenerate and tied ones."""
    import jax.numpy as jnp

    cases = [("random probabilities", _probs_case(rng, trial)) for trial in range(6)]
    # The degenerate and tied inputs reuse the shapes above (fewer compilations per answer).
    constant = np.tile(np.array([[0.7, 0.1, 0.1, 0.1]], np.float32), (200, 1))
    cases.append(("every row the same probabilities (a constant classifier)",
                  (jnp.asarray(constant), jnp.asarray(rng.integers(0, 4, 200), jnp.int32), 5)))
    probs = _random_probs(rng, 50, 10, 20)
    cases.append(("every label the same class",
                  (jnp.asarray(probs), jnp.full((50,), 2, jnp.int32), 20)))
    levels = np.array([[0.46, 0.3, 0.14, 0.1], [0.63, 0.2, 0.1, 0.07], [0.83, 0.1, 0.04, 0.03],
                       [1.0, 0.0, 0.0, 0.0]], np.float32)
    tied = levels[rng.integers(0, 4, 200)]
    tied = np.take_along_axis(tied, np.argsort(rng.uniform(size=tied.shape), axis=1), axis=1)
    cases.append(("confidences tied at four values, one of them exactly 1",
                  (jnp.asarray(tied), jnp.asarray(_labels_for(rng, tied), jnp.int32), 5)))
    return cases


def _numpy_ece(probs: Any, labels: Any, num_bins: int) -> np.ndarray:
    """ECE by a loop over right-closed bins (lo, hi], in float64: the checks' oracle."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    total = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        inside = (conf > lo) & (conf <= hi) if b else conf <= hi
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - conf[inside].mean())
    return np.float32(total / len(conf))


def _describe_args(args: tuple[Any, ...]) -> str:
    shapes = " and ".join(str(tuple(a.shape)) for a in args if hasattr(a, "shape"))
    extra = [repr(a) for a in args if not hasattr(a, "shape")]
    return f"shapes {shapes}" + (f", num_bins={extra[0]}" if extra else "")


def _compare(fn: Fn, oracle: Fn, cases: list[tuple[str, tuple[Any, ...]]],
             static_argnums: tuple[int, ...], rtol: float, atol: float,
             probe: Callable[[Fn, Fn, str, tuple[Any, ...]], str | None]) -> None:
    """Every case eagerly, the first (smallest) also traced as under jax.jit; outputs as the
    oracle's. On a difference, ``probe(fn, oracle, what, args)`` may name a cause it
    established. (Eager calls reuse the operations compiled for earlier answers; a new
    jitted function would compile anew for every shape.)"""
    for i, (what, args) in enumerate(cases):
        expected = oracle(*args)
        where = f"for {what} ({_describe_args(args)})"
        got = call_student(where, fn, *args)
        try:
            expect_close(got, expected, rtol=rtol, atol=atol, what=f"the output {where}")
        except CheckFailed as wrong:
            cause = probe(fn, oracle, what, args) if np.size(got) == 1 else None
            if cause:
                raise CheckFailed(f"{wrong} {cause}") from None
            raise
        if i == 0:
            _check_traceable(fn, args, static_argnums, got, where)


def _ece_probe(f: Fn, oracle: Fn, what: str, args: tuple[Any, ...]) -> str | None:
    """Wrong only because of confidences of exactly 1? Try an input without them, then the
    same input with a few one-hot rows added."""
    import jax.numpy as jnp

    rng = np.random.default_rng(23)
    probs = _random_probs(rng, 60, 4, 10, hard=0.0)
    probs = probs[probs.max(axis=1) < 1]
    labels = _labels_for(rng, probs)
    ones = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
    with_ones = (np.concatenate([probs, ones]),
                 np.concatenate([labels, rng.integers(0, 4, 6)]))
    try:
        right = [np.isclose(float(f(jnp.asarray(p), jnp.asarray(y, jnp.int32), 10)),
                            float(oracle(p, y, 10)), rtol=1e-4, atol=1e-5)
                 for p, y in ((probs, labels), with_ones)]
    except Exception:
        return None
    if right == [True, False]:
        return ("Your function is right on an input without confidences of exactly 1 and "
                "wrong once a few are added: those rows are what goes wrong.")
    return None


def _check_ece(fn: Fn) -> str:
    rng = np.random.default_rng(11)
    _compare(fn, _numpy_ece, _ece_cases(rng), (2,), rtol=1e-4, atol=1e-5, probe=_ece_probe)
    return ("matches a float64 NumPy ECE on 9 inputs (the first also traced under jax.jit): batch "
            "sizes 1 to 1000, 2 to 10 classes, 1 to 20 bins, empty bins, confidences of "
            "exactly 1, a constant classifier, one class for every label, tied confidences")


def expected_calibration_error(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``expected_calibration_error(probs, labels, num_bins) -> scalar``."""
    return run_check("expected_calibration_error", student_fn,
                     robustness.expected_calibration_error, _check_ece,
                     HINTS["expected_calibration_error"], quiet=quiet)


def _temperature_cases(rng: np.random.Generator) -> list[tuple[str, Any, Any]]:
    """(kind, logits, labels): labels drawn from softmax(base), logits = base * scale."""
    import jax.numpy as jnp

    cases = []
    for n, k, spread, scale, kind in (
            (400, 10, 1.0, 6.0, "over-confident"), (300, 5, 1.0, 0.4, "under-confident"),
            (64, 3, 1.0, 1.5, "about calibrated"), (500, 2, 1.5, 3.0, "two-class"),
            (400, 10, 3.0, 12.0, "large (up to a few hundred)")):
        base = rng.normal(size=(n, k)) * spread
        p = np.exp(base - base.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        labels = jnp.asarray([rng.choice(k, p=row) for row in p], jnp.int32)
        cases.append((kind, jnp.asarray(base * scale, jnp.float32), labels))
    cases.append(("constant (every logit 0, so the NLL does not depend on T)",
                  jnp.zeros((300, 5), jnp.float32),
                  jnp.asarray(rng.integers(0, 5, 300), jnp.int32)))
    return cases


def _numpy_nll(logits: np.ndarray, labels: np.ndarray, temperatures: Any) -> np.ndarray:
    """Mean NLL of softmax(logits / T) in float64, for each T of ``temperatures``."""
    t = np.asarray(temperatures, np.float64).reshape(-1, 1, 1)
    z = logits[None] / t
    top = z.max(axis=2, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=2)) + top[..., 0]
    picked = np.take_along_axis(z, labels[None, :, None], axis=2)[..., 0]
    return (log_norm - picked).mean(axis=1)


def _best_nll(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(T, NLL) of the best temperature in [0.01, 100]: a grid over log T, then a finer one."""
    coarse = np.linspace(np.log(0.01), np.log(100.0), 241)
    i = int(np.argmin(_numpy_nll(logits, labels, np.exp(coarse))))
    fine = np.linspace(coarse[max(i - 1, 0)], coarse[min(i + 1, coarse.size - 1)], 201)
    values = _numpy_nll(logits, labels, np.exp(fine))
    j = int(np.argmin(values))
    return float(np.exp(fine[j])), float(values[j])


@functools.cache
def _temperature_problems() -> tuple[tuple[str, Any, Any, float, float], ...]:
    """The cases with their best (T, NLL), computed once per process."""
    problems = []
    for kind, logits, labels in _temperature_cases(np.random.default_rng(13)):
        best_t, best = _best_nll(np.asarray(logits, np.float64), np.asarray(labels))
        problems.append((kind, logits, labels, best_t, best))
    return tuple(problems)


def _check_temperature(fn: Fn) -> str:
    for kind, logits, labels, best_t, best in _temperature_problems():
        where = f"for {kind} logits of shape {logits.shape}"
        t = call_student(where, fn, logits, labels)
        if not hasattr(t, "shape") and not isinstance(t, int | float):
            raise CheckFailed(f"{where}, returned a {type(t).__name__}; expected one number.")
        if np.size(t) != 1 or np.ndim(t) != 0:
            raise CheckFailed(f"{where}, returned shape {np.shape(t)}; expected a scalar "
                              "temperature.")
        value = float(t)
        if not np.isfinite(value) or value <= 0:
            raise CheckFailed(f"{where}, the temperature is {value:.4g}; it must be positive "
                              "and finite.")
        z, y = np.asarray(logits, np.float64), np.asarray(labels)
        limit = best + 2e-3 * max(1.0, abs(best))
        candidates = {"value": value, "inverse": 1.0 / value,
                      "exp": float(np.exp(min(value, 80.0)))}
        nlls = dict(zip(candidates, _numpy_nll(z, y, list(candidates.values())), strict=True))
        if nlls["value"] <= limit:
            continue
        cause = ""
        if nlls["inverse"] <= limit:
            cause = " Its inverse, 1/T, is a best temperature: the answer is inverted."
        elif nlls["exp"] <= limit:
            cause = " exp of it is a best temperature: the answer is log T."
        raise CheckFailed(f"{where}, the NLL at your temperature {value:.4g} is "
                          f"{nlls['value']:.4f}, but {best:.4f} is reachable (at T = "
                          f"{best_t:.3g}).{cause}")
    return ("the NLL at the returned temperature is within 0.2% of the best, for over-, "
            "under- and about calibrated logits, two to ten classes, logits up to a few "
            "hundred, and constant logits")


def fit_temperature(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``fit_temperature(logits, labels) -> T`` (a positive scalar)."""
    return run_check("fit_temperature", student_fn, robustness.fit_temperature,
                     _check_temperature, HINTS["fit_temperature"], quiet=quiet)


def _scores_case(rng: np.random.Generator, trial: int) -> tuple[Any, Any]:
    """One of six tied AUROC inputs (1 to 300 scores per set)."""
    import jax.numpy as jnp

    n, m, levels = ((1, 1, 3), (1, 6, 2), (9, 1, 4), (50, 80, 5), (300, 200, 12),
                    (40, 40, 1))[trial % 6]
    shift = 1.0 if trial % 2 else 0.0
    in_scores = rng.integers(0, levels, n) + shift * rng.integers(0, 2, n)
    out_scores = rng.integers(0, levels, m)
    return (jnp.asarray(in_scores / 3.0, jnp.float32), jnp.asarray(out_scores / 3.0, jnp.float32))


def _auroc_cases(rng: np.random.Generator) -> list[tuple[str, tuple[Any, Any]]]:
    import jax.numpy as jnp

    names = ("one score each, possibly tied", "one in-score, tied out-scores",
             "one out-score", "scores tied at five levels", "scores tied at twelve levels",
             "every score equal")
    cases = [(name, _scores_case(rng, trial)) for trial, name in enumerate(names[:5])]
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    # The others reuse the shape (50, 80): fewer compilations per answer.
    cases.append((names[5], (f32(np.full(50, 0.7)), f32(np.full(80, 0.7)))))
    cases.append(("scores without ties", (f32(rng.normal(size=50) + 0.7),
                                          f32(rng.normal(size=80)))))
    cases.append(("perfectly separated scores", (f32(rng.uniform(2, 3, 50)),
                                                 f32(rng.uniform(0, 1, 80)))))
    big = [-1e30, -3e6, 1e6, 1e6 + 1, 1e6 + 2, 5e29, 1e30]
    cases.append(("scores of magnitude 1e6 to 1e30, some tied",
                  (f32(rng.choice(big, 50)), f32(rng.choice(big, 80)))))
    return cases


def _pairwise_auroc(in_scores: Any, out_scores: Any) -> np.ndarray:
    a, b = np.asarray(in_scores, np.float64)[:, None], np.asarray(out_scores, np.float64)[None]
    return np.float32(np.mean((a > b) + 0.5 * (a == b)))


def _auroc_probe(f: Fn, oracle: Fn, what: str, args: tuple[Any, ...]) -> str | None:
    """Swapped roles, sizes instead of order, or wrong only on ties? Try the input swapped,
    its scores replaced by their ranks (ties kept), then by ranks with every tie broken."""
    import jax.numpy as jnp

    a, b = (np.asarray(x, np.float64) for x in args)
    both = np.concatenate([a, b])
    kept = np.unique(both, return_inverse=True)[1].astype(np.float32)
    broken = np.argsort(np.argsort(both, kind="stable"), kind="stable").astype(np.float32)

    def right(x: np.ndarray, y: np.ndarray) -> bool:
        return bool(np.isclose(float(f(jnp.asarray(x), jnp.asarray(y))), float(oracle(x, y)),
                               atol=1e-6))

    try:
        if float(oracle(b, a)) != float(oracle(a, b)) and np.isclose(
                float(f(*args[::-1])), float(oracle(a, b)), atol=1e-6):
            return ("Called with the two sets swapped, your function gives the expected value: "
                    "it treats the out-scores as the in-distribution ones.")
        if right(kept[: a.size], kept[a.size:]):
            return ("With the scores replaced by their ranks (same order, same ties) it gives "
                    "the right value: your function depends on the sizes of the scores, not "
                    "only on their order.")
        if np.unique(both).size < both.size and right(broken[: a.size], broken[a.size:]):
            return ("With every tie of this input broken (same order otherwise), it gives the "
                    "right value: the ties are what goes wrong.")
    except Exception:
        return None
    return None


def _check_auroc(fn: Fn) -> str:
    cases = _auroc_cases(np.random.default_rng(17))
    _compare(fn, _pairwise_auroc, cases, (), rtol=1e-5, atol=1e-6, probe=_auroc_probe)
    return (f"matches a pairwise float64 count on {len(cases)} inputs (the first also traced "
            "under jax.jit): 1 to 300 scores per set, many ties (a tie counts one half), every "
            "score equal, perfect separation, scores of magnitude 1e6 to 1e30")


def auroc(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``auroc(in_scores, out_scores) -> scalar`` (ties count one half)."""
    return run_check("auroc", student_fn, robustness.auroc, _check_auroc, HINTS["auroc"],
                     quiet=quiet)
