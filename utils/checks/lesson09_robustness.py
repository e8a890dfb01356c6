"""Exercise checkers of lesson 09_robustness, with their reference solutions.

Each checker takes the student's answer, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's answer if it passed, else the reference from :mod:`utils.robustness`).

- :func:`fgsm`: one signed-gradient step of size epsilon, clipped to [0, 1], on the eval
  view. Checked on small models *with dropout in train mode* (so an attack of the train-mode
  model is caught), images with pixels at 0 and 1, batch sizes from 1, several epsilons,
  under ``nnx.jit`` and eagerly; the model must be left as it was.
- :func:`random_start`: uniform noise in the epsilon ball, clipped; checked by properties
  (inside the ball and [0, 1], uniform, independent per pixel, decided by the key).
- :func:`pgd_step`: one PGD step from a point of the ball: gradient at that point, step,
  projection on the ball, clipping; compared with the reference, with a diagnosis of a
  missing projection, a missing clip, or the gradient taken at the clean images.
- :func:`expected_calibration_error`: against the reference on random inputs with empty
  bins, confidences of exactly 1, 1 to 20 bins, batch size 1; under ``jax.jit``.
- :func:`fit_temperature`: the fitted temperature's NLL is within a small tolerance of the
  best one, on over- and under-confident logits.
- :func:`auroc`: against a pairwise NumPy count (ties one half) on scores with many ties,
  sizes from 1, under ``jax.jit``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from utils import robustness
from utils.exercises import CheckFailed, expect_array, expect_close, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = ["auroc", "expected_calibration_error", "fgsm", "fit_temperature", "pgd_step",
           "random_start"]

#: (batch, image shape, hidden width, classes, epsilon, step size) of the attack checks.
_ATTACK_CASES = (
    (1, (4, 5), 16, 3, 0.3, 0.1),
    (6, (7, 3), 12, 4, 0.1, 0.04),
    (17, (5, 5), 24, 10, 0.03, 0.03),
)
_EVAL_HINT = ("differentiate the eval view, view = robustness.eval_view(model) (dropout off), "
              "not the model itself")


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
                              "tried to draw random numbers inside jax.grad. Attack the eval "
                              "view.") from None
        raise
    if model.drop.deterministic:
        raise CheckFailed(f"{where}, your function left the model in eval mode (model.eval() "
                          "changes the model for good, also for the training that follows): "
                          "use a view instead.")
    after = _model_state(model)
    if any(a.shape != b.shape or not np.array_equal(a, b)
           for a, b in zip(before, after, strict=True)) or len(before) != len(after):
        raise CheckFailed(f"{where}, the model's state changed (its dropout random numbers "
                          "were used: the attack ran in train mode, or updated the model). "
                          "Attack the eval view and change nothing.")
    return out


def _attack_ways(fn: Fn) -> list[tuple[str, Fn]]:
    from flax import nnx

    return [(" under nnx.jit", nnx.jit(fn)), ("", fn)]


def _gradient(model: Any, images: Any, labels: Any) -> np.ndarray:
    return np.asarray(_jitted()["gradient"](model, images, labels))


def _compare_adversarial(got: np.ndarray, expected: np.ndarray, grad: np.ndarray,
                         where: str) -> None:
    """Equal, except where the reference gradient is so small that its sign is noise."""
    tiny = np.abs(grad) <= 1e-6 * max(float(np.max(np.abs(grad))), 1e-30)
    bad = ~np.isclose(got, expected, rtol=1e-5, atol=1e-6) & ~tiny
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CheckFailed(f"{where}, {int(bad.sum())} of {bad.size} pixels differ from the "
                          f"reference; e.g. at {index}: got {got[index]:.4g}, expected "
                          f"{expected[index]:.4g}.")


def _check_fgsm(fn: Fn) -> str:
    rng = np.random.default_rng(9)
    for case in range(len(_ATTACK_CASES)):
        for how, way in _attack_ways(fn)[: 2 if case == 0 else 1]:
            model, images, labels, eps, _ = _attack_case(case, rng)
            where = f"for {images.shape[0]} image(s) of shape {images.shape[1:]}, eps={eps}{how}"
            out = _call_attack(way, model, (images, labels, eps), where)
            got = expect_array(out, images.shape, "float32", f"the output {where}")
            grad = _gradient(model, images, labels)
            x = np.asarray(images)
            if got.min() < -1e-6 or got.max() > 1 + 1e-6:
                raise CheckFailed(f"{where}, some pixels are outside [0, 1]: clip the result "
                                  "with jnp.clip(..., 0, 1).")
            if np.max(np.abs(got - x)) > eps * (1 + 1e-5) + 1e-6:
                raise CheckFailed(f"{where}, some pixels moved by more than epsilon: the step "
                                  "is epsilon * sign(gradient), not the gradient itself.")
            moved = np.abs(got - x) > 1e-7
            if np.any(moved) and np.mean(np.sign(got - x)[moved] == np.sign(grad)[moved]) < 0.5:
                raise CheckFailed(f"{where}, the pixels moved against the gradient: FGSM "
                                  "*increases* the loss, x + epsilon * sign(gradient).")
            expected = np.asarray(_jitted()["fgsm"](model, images, labels, eps))
            _compare_adversarial(got, expected, grad, where)
    return (f"matches clip(x + eps * sign(grad), 0, 1) of the eval view for {len(_ATTACK_CASES)} "
            "models with dropout (batch sizes 1 to 17, three epsilons); the model is left "
            "unchanged; under nnx.jit, and eagerly")


def fgsm(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``fgsm(model, images, labels, epsilon) -> adversarial images``."""
    return run_check(
        "fgsm", student_fn, robustness.fgsm, _check_fgsm,
        f"{_EVAL_HINT}; loss(x) = mean cross-entropy of view(x); g = jax.grad(loss)(images); "
        "return jnp.clip(images + epsilon * jnp.sign(g), 0, 1).",
        quiet=quiet,
    )


def _check_random_start(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    cases = ((1, (3, 4), 0.3), (5, (28, 28), 0.1), (64, (10, 13), 0.2))
    jitted = jax.jit(fn)
    for i, (n, shape, eps) in enumerate(cases):
        pixels = rng.uniform(0, 1, (n, *shape))
        pixels[rng.uniform(size=pixels.shape) < 0.3] = 0.0
        pixels[rng.uniform(size=pixels.shape) < 0.2] = 1.0
        images = jnp.asarray(pixels, jnp.float32)
        key = jax.random.key(100 + i)
        for how, f in ((" under jax.jit", jitted), ("", fn))[: 2 if i == 0 else 1]:
            where = f"for images of shape {images.shape}, eps={eps}{how}"
            got = expect_array(f(key, images, eps), images.shape, "float32",
                               f"the output {where}")
            if got.min() < -1e-6 or got.max() > 1 + 1e-6:
                raise CheckFailed(f"{where}, some pixels are outside [0, 1]: clip to [0, 1].")
            if np.max(np.abs(got - pixels)) > eps * (1 + 1e-5) + 1e-6:
                raise CheckFailed(f"{where}, some pixels moved by more than epsilon: draw the "
                                  "noise in [-epsilon, epsilon].")
            if not np.array_equal(np.asarray(f(key, images, eps)), got):
                raise CheckFailed(f"{where}, two calls with the same key differ: draw the "
                                  "noise with the key you are given.")
        other = np.asarray(jitted(jax.random.key(200 + i), images, eps))
        if np.array_equal(other, got):
            raise CheckFailed(f"for images of shape {images.shape}, two different keys gave the "
                              "same start: use the key you are given.")
    # The distribution, on grey images (no clipping): uniform on [-eps, eps], per pixel.
    eps = 0.25
    grey = jnp.full((40, 16, 16), 0.5, jnp.float32)
    delta = (np.asarray(jitted(jax.random.key(7), grey, eps)) - 0.5) / eps
    if np.std(delta.reshape(40, -1), axis=1).min() < 0.2:
        raise CheckFailed("the noise is (nearly) the same for every pixel of an image: draw "
                          "one value per pixel, with the images' shape.")
    if abs(float(delta.mean())) > 0.05:
        raise CheckFailed("the noise is not centred on the image: draw it in "
                          "[-epsilon, epsilon], not [0, epsilon].")
    far, near = float(np.mean(np.abs(delta) > 0.5)), float(np.mean(np.abs(delta) < 0.1))
    if not (0.45 <= far <= 0.55 and 0.07 <= near <= 0.13):
        raise CheckFailed(f"the noise is not uniform on [-epsilon, epsilon] ({far:.0%} of it "
                          "beyond epsilon / 2, uniform noise has 50%): use "
                          "jax.random.uniform(key, images.shape, minval=-epsilon, "
                          "maxval=epsilon).")
    return ("uniform in the epsilon ball, clipped to [0, 1], one draw per pixel, decided by "
            "the key; 3 shapes (batch 1 to 64); under jax.jit, and eagerly")


def random_start(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``random_start(key, images, epsilon) -> a random point of the ball``."""
    return run_check(
        "random_start", student_fn, robustness.random_start, _check_random_start,
        "noise = jax.random.uniform(key, images.shape, minval=-epsilon, maxval=epsilon); "
        "return jnp.clip(images + noise, 0, 1).",
        quiet=quiet,
    )


def _check_pgd_step(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    for case in range(len(_ATTACK_CASES)):
        for how, way in _attack_ways(fn)[: 2 if case == 0 else 1]:
            model, images, labels, eps, step = _attack_case(case, rng)
            start = np.asarray(_jitted()["start"](jax.random.key(case), images, eps))
            # Some pixels exactly on the ball's edge, where the step must be projected back.
            x = np.asarray(images)
            edge = rng.uniform(size=x.shape) < 0.3
            sign = rng.choice([-1.0, 1.0], size=x.shape)
            start = jnp.asarray(np.where(edge, np.clip(x + eps * sign, 0.0, 1.0), start),
                                jnp.float32)
            where = (f"for {images.shape[0]} image(s) of shape {images.shape[1:]}, eps={eps}, "
                     f"step_size={step}{how}")
            out = _call_attack(way, model, (images, start, labels, eps, step), where)
            got = expect_array(out, images.shape, "float32", f"the output {where}")
            x, a = np.asarray(images), np.asarray(start)
            if got.min() < -1e-6 or got.max() > 1 + 1e-6:
                raise CheckFailed(f"{where}, some pixels are outside [0, 1]: clip to [0, 1] "
                                  "after the projection.")
            if np.max(np.abs(got - x)) > eps * (1 + 1e-5) + 1e-6:
                raise CheckFailed(f"{where}, some pixels are farther than epsilon from the "
                                  "clean images: project with images + jnp.clip(adversarial - "
                                  "images, -epsilon, epsilon).")
            grad = _gradient(model, start, labels)
            expected = np.asarray(_jitted()["pgd_step"](model, images, start, labels, eps, step))
            try:
                _compare_adversarial(got, expected, grad, where)
            except CheckFailed:
                at_clean = np.asarray(_jitted()["pgd_step"](model, images, images, labels, eps,
                                                            step))
                sign_clean = np.sign(_gradient(model, images, labels))
                from_start = np.clip(x + np.clip(a + step * sign_clean - x, -eps, eps), 0, 1)
                if np.allclose(got, from_start, atol=1e-6) or np.allclose(got, at_clean,
                                                                          atol=1e-6):
                    raise CheckFailed(f"{where}, the step used the gradient at the clean "
                                      "images: take it at the adversarial images.") from None
                raise
    return (f"matches a step of the eval view's gradient sign at the adversarial point, "
            f"projected on the epsilon ball and clipped to [0, 1], for {len(_ATTACK_CASES)} "
            "models with dropout (batch sizes 1 to 17); the model is left unchanged; "
            "under nnx.jit, and eagerly")


def pgd_step(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``pgd_step(model, images, adversarial, labels, epsilon, step_size)``."""
    return run_check(
        "pgd_step", student_fn, robustness.pgd_step, _check_pgd_step,
        f"{_EVAL_HINT}; g = gradient of the loss at *adversarial*; moved = adversarial + "
        "step_size * sign(g); project: images + jnp.clip(moved - images, -epsilon, epsilon); "
        "then jnp.clip to [0, 1].",
        quiet=quiet,
    )


def _probs_case(rng: np.random.Generator, trial: int) -> tuple[Any, Any, int]:
    import jax.numpy as jnp

    n, k, bins = ((1, 3, 10), (7, 2, 15), (50, 10, 20), (200, 4, 5), (1000, 10, 15),
                  (33, 5, 1))[trial % 6]
    logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 6.0)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    hard = rng.uniform(size=n) < 0.2  # some rows fully confident: confidence exactly 1
    probs[hard] = np.eye(k)[rng.integers(0, k, int(hard.sum()))]
    probs = probs.astype(np.float32)
    # Keep interior confidences off the bin edges (where conventions legitimately differ).
    conf = probs.max(axis=1)
    scaled = conf * bins
    on_edge = (np.abs(scaled - np.round(scaled)) < 1e-4) & (conf < 1)
    probs[on_edge] = np.eye(k, dtype=np.float32)[probs[on_edge].argmax(axis=1)]
    pred = probs.argmax(axis=1)
    labels = np.where(rng.uniform(size=n) < 0.7, pred, rng.integers(0, k, n))
    return jnp.asarray(probs), jnp.asarray(labels, jnp.int32), bins


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


def _compare(fn: Fn, oracle: Fn, cases: list[tuple[Any, ...]], static_argnums: tuple[int, ...],
             rtol: float, atol: float) -> str:
    """Every case under jax.jit, the first (smallest) also eagerly; outputs as the oracle's."""
    import jax

    jitted = jax.jit(fn, static_argnums=static_argnums)
    for i, args in enumerate(cases):
        expected = oracle(*args)
        for how, f in ((" under jax.jit", jitted), ("", fn))[: 2 if i == 0 else 1]:
            shapes = "x".join(str(tuple(a.shape)) for a in args if hasattr(a, "shape"))
            where = f"for inputs of shape {shapes}{how}"
            try:
                got = f(*args)
            except (NotImplementedError, CheckFailed):
                raise
            except Exception as error:
                raise CheckFailed(f"{where}, your function raised "
                                  f"{summarize_error(error).rstrip('.')}.") from None
            expect_close(got, expected, rtol=rtol, atol=atol, what=f"the output {where}")
    return f"matches the reference on {len(cases)} random inputs under jax.jit (one also eagerly)"


def _check_ece(fn: Fn) -> str:
    rng = np.random.default_rng(11)
    cases = [_probs_case(rng, trial) for trial in range(6)]
    what = _compare(fn, _numpy_ece, cases, (2,), rtol=1e-4, atol=1e-5)
    return (what + ": batch sizes 1 to 1000, 2 to 10 classes, 1 to 20 bins, with empty bins "
            "and confidences of exactly 1")


def expected_calibration_error(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``expected_calibration_error(probs, labels, num_bins) -> scalar``."""
    return run_check(
        "expected_calibration_error", student_fn, robustness.expected_calibration_error,
        _check_ece,
        "confidence = max prob, correct = argmax == label; bin = clip(ceil(conf * num_bins) - 1, "
        "0, num_bins - 1); per bin sum counts, confidences, corrects with jax.ops.segment_sum; "
        "ECE = sum |corrects - confidences| / N (an empty bin adds 0, never NaN).",
        quiet=quiet,
    )


def _check_temperature(fn: Fn) -> str:
    import jax.numpy as jnp

    rng = np.random.default_rng(13)
    cases = ((400, 10, 6.0, "over-confident"), (300, 5, 0.4, "under-confident"),
             (64, 3, 1.5, "about calibrated"))
    for n, k, scale, kind in cases:
        base = rng.normal(size=(n, k))
        # Labels drawn from softmax(base): logits * scale is over- (> 1) or under-confident.
        p = np.exp(base) / np.exp(base).sum(axis=1, keepdims=True)
        labels = jnp.asarray([rng.choice(k, p=row) for row in p], jnp.int32)
        logits = jnp.asarray(base * scale, jnp.float32)
        where = f"for {kind} logits of shape {logits.shape}"
        t = fn(logits, labels)
        if not hasattr(t, "shape") and not isinstance(t, int | float):
            raise CheckFailed(f"{where}, returned a {type(t).__name__}; expected one number.")
        if np.size(t) != 1 or np.ndim(t) != 0:
            raise CheckFailed(f"{where}, returned shape {np.shape(t)}; expected a scalar "
                              "temperature.")
        value = float(t)
        if not np.isfinite(value) or value <= 0:
            raise CheckFailed(f"{where}, the temperature is {value:.4g}; it must be positive "
                              "(optimise log T, and return T = exp(log T)).")
        best_t = robustness.fit_temperature(logits, labels)
        got, best = float(robustness.nll(logits, labels, value)), float(
            robustness.nll(logits, labels, best_t))
        if got > best + 2e-3 * max(1.0, abs(best)):
            raise CheckFailed(f"{where}, the NLL at your temperature {value:.3g} is {got:.4f}, "
                              f"but {best:.4f} is reachable (T = {float(best_t):.3g}); is it "
                              "T, not 1/T, and did the optimisation converge?")
    return ("the NLL at the fitted temperature is within 0.2% of the best for over-confident, "
            "under-confident and about calibrated logits")


def fit_temperature(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``fit_temperature(logits, labels) -> T`` (a positive scalar)."""
    return run_check(
        "fit_temperature", student_fn, robustness.fit_temperature, _check_temperature,
        "evaluate robustness.nll(logits, labels, jnp.exp(log_t)) on a grid "
        "log_t = jnp.linspace(jnp.log(0.05), jnp.log(20.0), 401) (jax.vmap over it), take the "
        "argmin and return jnp.exp of it.",
        quiet=quiet,
    )


def _scores_case(rng: np.random.Generator, trial: int) -> tuple[Any, Any]:
    import jax.numpy as jnp

    n, m, levels = ((1, 1, 3), (1, 6, 2), (9, 1, 4), (50, 80, 5), (300, 200, 12),
                    (40, 40, 1))[trial % 6]
    shift = 1.0 if trial % 2 else 0.0
    in_scores = rng.integers(0, levels, n) + shift * rng.integers(0, 2, n)
    out_scores = rng.integers(0, levels, m)
    return (jnp.asarray(in_scores / 3.0, jnp.float32), jnp.asarray(out_scores / 3.0, jnp.float32))


def _pairwise_auroc(in_scores: Any, out_scores: Any) -> np.ndarray:
    a, b = np.asarray(in_scores, np.float64)[:, None], np.asarray(out_scores, np.float64)[None]
    return np.float32(np.mean((a > b) + 0.5 * (a == b)))


def _check_auroc(fn: Fn) -> str:
    rng = np.random.default_rng(17)
    cases = [_scores_case(rng, trial) for trial in range(6)]
    what = _compare(fn, _pairwise_auroc, cases, (), rtol=1e-5, atol=1e-6)
    return (what + ": 1 to 300 scores per set, with many ties (a tie counts one half), all "
            "scores equal")


def auroc(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``auroc(in_scores, out_scores) -> scalar`` (ties count one half)."""
    return run_check(
        "auroc", student_fn, robustness.auroc, _check_auroc,
        "sort out_scores; for every in-score count the out-scores below it "
        "(jnp.searchsorted side='left') and those equal (side='right' minus left); "
        "AUROC = sum(below + 0.5 * equal) / (N * M), as float32.",
        quiet=quiet,
    )
