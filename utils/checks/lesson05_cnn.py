"""Exercise checkers of lesson 05_cnn, with their reference solutions in :mod:`utils.cnn`.

Each checker takes the student's answer, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's answer if it passed, else the reference). What the line says beyond the verdict
comes from :data:`HINTS` (no hint holds a line of the solution), and a FAILED line names a
cause only where a targeted probe established it; otherwise it shows the input, what was
expected and what came back.

- :func:`conv_output_size`: the output length of a convolution along one axis, for
  ``"SAME"`` and ``"VALID"``, every stride, kernels as large as the input.
- :func:`conv2d_im2col`: a convolution as patches + one matmul, against
  ``jax.lax.conv_general_dilated`` on non-square shapes, batch 1, strides that differ per
  axis, even kernels (uneven ``"SAME"`` padding); gradients compared too; no convolution
  primitive allowed.
- :func:`max_pool`: non-overlapping max pooling against ``lax.reduce_window``: negative
  inputs, ties, sizes that do not divide, values of 1e30, gradients.
- :func:`cnn`: the CNN's ``__call__``: eval mode and train mode (output, BatchNorm
  statistics, dropout) and gradients, on several sizes, against the reference forward pass
  run on the student's own model; built with another pooling (a min-pool), it must use
  ``self.pool``. Max- and min-pooling commute with ReLU, so pooling before or after the ReLU
  is accepted (both are right; the lesson states it).
- :func:`random_translate`: properties of a per-example random shift. Each example is its
  input moved by whole pixels with zeros shifted in (the test images hold distinct values,
  so the shift of every example is read off exactly); within ``max_shift``; the key decides
  (eagerly and under ``jax.jit``, one trace for several keys); and, over 800 examples of
  one call, the distribution: each axis's offset uniform over ``[-max_shift, max_shift]``
  and the two axes independent (chi-square tests, each with a false-alarm rate of
  :data:`FALSE_ALARM`, so a correct answer fails one of the three with probability below
  3e-6; the keys are fixed, so the verdict never changes between runs).

All random inputs come from fixed seeds, so a verdict never changes between runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from utils import cnn as _cnn
from utils.exercises import CheckFailed, Hints, expect_array, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = ["FALSE_ALARM", "HINTS", "cnn", "conv2d_im2col", "conv_output_size", "max_pool",
           "random_translate", "reference_conv2d_im2col", "reference_max_pool",
           "reference_random_translate"]

#: What each checker says beyond its verdict (utils.exercises.Hints): never solution code.
HINTS: dict[str, Hints] = {
    "conv_output_size": Hints(
        about="Exercise 1 practises the two output-size rules of section 2 (\"Output size\"): "
              "how many windows fit along one axis, without padding and with \"SAME\" padding",
        think="Count the windows by hand for a small case, say size 5, kernel 3, stride 2, "
              "under both paddings, and compare with what your function returns; the answer "
              "is always a whole number",
        closer="With \"SAME\" only the stride matters (the padding makes room); with "
               "\"VALID\" a window must fit entirely, so count the start positions that leave "
               "room for the whole kernel, one every stride pixels",
    ),
    "conv2d_im2col": Hints(
        about="Exercise 2 computes a convolution as one matmul of image patches with the "
              "reshaped kernel (section 2, \"im2col\"), which is why conv layers run at "
              "matmul-like speed",
        think="Check the parts one at a time on a tiny input: the padding of each axis "
              "(cnn.same_padding puts the odd zero at the end), the strided slice that each "
              "kernel offset sees, and whether your patches are ordered like the kernel's "
              "reshape (kernel row, then kernel column, then channel)",
        closer="Compare the patch of one output pixel with the input window under it, by "
               "hand: first a 1x1 kernel with stride 1, then a 2x2 kernel with stride 2 and "
               "\"SAME\" padding on an odd-sized image",
    ),
    "max_pool": Hints(
        about="Exercise 3 writes the max-pool of section 2 (\"Pooling\"): the largest value "
              "of each non-overlapping window, rows and columns that do not fill a window "
              "dropped",
        think="Try an input whose values are all negative, and one whose height does not "
              "divide by the window: what must each window's maximum be, and which rows "
              "take part?",
        closer="A running maximum needs a start value that never beats a real input; and "
               "the gradient must reach each window's largest input and nothing else",
    ),
    "CNN.__call__": Hints(
        about="Exercise 4 wires the layers of cnn.CNN into the forward pass of section 3, "
              "with BatchNorm and dropout, whose behaviour depends on train or eval mode",
        think="Go through the order of section 3 layer by layer, call each layer once, let "
              "the layers decide their own mode (pass no mode arguments), pool with the "
              "pooling the model was built with, and return the last layer's output as it is",
        closer="Print the shapes after each layer for one batch and compare them with "
               "section 3's table; then compare one train-mode call's BatchNorm running "
               "averages before and after",
    ),
    "random_translate": Hints(
        about="Exercise 5 moves every example by its own random whole-pixel offset on the "
              "device (section 4), so that augmentation runs inside the jitted step",
        think="Each example needs its own offset per axis, every value from -max_shift to "
              "+max_shift equally likely and the two axes drawn independently; then check "
              "which way your crop moves the image for an offset you chose yourself",
        closer="Draw the offsets for 1,000 examples and count how often each value occurs on "
               "each axis; then move one small test image by a known offset and look where "
               "its pixels land and what comes in at the edges",
    ),
}


# --- 1. conv_output_size ---------------------------------------------------------------------

_SIZE_CASES = [(size, kernel, stride, padding)
               for size in (1, 2, 5, 7, 28, 13)
               for kernel in (1, 2, 3, 5)
               for stride in (1, 2, 3)
               for padding in ("VALID", "SAME")
               if kernel <= size]


def _check_conv_output_size(fn: Fn) -> str:
    for size, kernel, stride, padding in _SIZE_CASES:
        got = fn(size, kernel, stride, padding)
        where = f"size={size}, kernel={kernel}, stride={stride}, padding={padding!r}"
        if isinstance(got, bool) or not isinstance(got, int | np.integer):
            raise CheckFailed(f"returned {type(got).__name__} {got!r} for {where}, but an int "
                              "was expected.")
        expected = _cnn.conv_output_size(size, kernel, stride, padding)
        if got != expected:
            raise CheckFailed(f"returned {got} for {where}, expected {expected}.")
    return (f"equals the output size of lax.conv_general_dilated for {len(_SIZE_CASES)} "
            "sizes, kernels, strides and both paddings")


def conv_output_size(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``conv_output_size(size, kernel, stride, padding) -> int``."""
    return run_check("conv_output_size", student_fn, _cnn.conv_output_size,
                     _check_conv_output_size, HINTS["conv_output_size"], quiet=quiet)


# --- 2. conv2d_im2col ------------------------------------------------------------------------

_CONV_CASES = (  # (x shape NHWC, w shape HWIO, stride, padding)
    ((1, 5, 7, 1), (3, 3, 1, 2), (1, 1), "SAME"),
    ((2, 8, 6, 3), (3, 3, 3, 4), (2, 2), "SAME"),
    ((3, 9, 5, 2), (2, 4, 2, 3), (2, 1), "VALID"),
    ((1, 6, 6, 2), (6, 6, 2, 1), (1, 1), "VALID"),
    ((2, 7, 4, 1), (2, 2, 1, 3), (1, 3), "SAME"),
    ((1, 1, 1, 3), (1, 1, 3, 2), (1, 1), "SAME"),
)


def reference_conv2d_im2col(x: Any, w: Any, stride: tuple[int, int], padding: str) -> Any:
    """Exercise 2's reference: :func:`utils.cnn.conv2d_im2col`."""
    return _cnn.conv2d_im2col(x, w, stride, padding)


def _primitives(jaxpr: Any) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                names |= _primitives(getattr(inner, "jaxpr", inner))
    return names


def _conv_grads(fn: Fn, stride: tuple[int, int], padding: str) -> Fn:
    """Jitted gradients of ``sum(fn(x, w) * r)`` with respect to x and w."""
    import jax
    import jax.numpy as jnp

    def loss(x: Any, w: Any, r: Any) -> Any:
        return jnp.sum(fn(x, w, stride, padding) * r)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _first_difference(got: np.ndarray, expected: np.ndarray) -> str:
    """``at index (0, 1, 2, 0): got 0.5, expected 0.75`` for the first differing entry."""
    bad = ~np.isclose(got, expected, rtol=1e-4, atol=1e-4)
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"at index {index}: got {float(got[index]):.4g}, expected "
            f"{float(expected[index]):.4g}; {int(bad.sum())} of {bad.size} entries differ")


def _check_conv(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    for case, (xs, ws, stride, padding) in enumerate(_CONV_CASES):
        x = jnp.asarray(rng.normal(size=xs), jnp.float32)
        w = jnp.asarray(rng.normal(size=ws), jnp.float32)
        expected = np.asarray(_cnn.conv2d(x, w, stride, padding))
        where = f"x {xs}, w {ws}, stride {stride}, padding {padding!r}"
        ways = [("", fn)] if case == 0 else []
        ways.append((" under jax.jit", jax.jit(fn, static_argnums=(2, 3))))
        for how, f in ways:
            got = expect_array(f(x, w, stride, padding), expected.shape, "float32",
                               f"the output for {where}{how}")
            if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                raise CheckFailed(f"the output for {where}{how} differs from "
                                  "lax.conv_general_dilated's, "
                                  f"{_first_difference(got, expected)}.")
        if case == 0:
            used = _primitives(jax.make_jaxpr(fn, static_argnums=(2, 3))(x, w, stride,
                                                                        padding).jaxpr)
            if "conv_general_dilated" in used:
                raise CheckFailed("its program contains a convolution primitive "
                                  "(conv_general_dilated); the exercise is to compute it from "
                                  "patches and one matmul.")
        r = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
        got_grads = _conv_grads(fn, stride, padding)(x, w, r)
        ref_grads = _conv_grads(_cnn.conv2d, stride, padding)(x, w, r)
        for name, g, e in zip(("x", "w"), got_grads, ref_grads, strict=True):
            if not np.allclose(np.asarray(g), np.asarray(e), rtol=1e-3, atol=1e-3):
                raise CheckFailed(f"the gradient with respect to {name} for {where} differs "
                                  "from the convolution's (the values agree).")
    return (f"equals lax.conv_general_dilated on {len(_CONV_CASES)} shapes (batch 1, "
            "non-square, strides per axis, even kernels, SAME and VALID), gradients for x "
            "and w too; no convolution primitive; under jax.jit, and eagerly")


def conv2d_im2col(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``conv2d_im2col(x (N,H,W,C), w (KH,KW,C,O), stride (sh, sw), padding)``."""
    return run_check("conv2d_im2col", student_fn, reference_conv2d_im2col, _check_conv,
                     HINTS["conv2d_im2col"], quiet=quiet)


# --- 3. max_pool -----------------------------------------------------------------------------

_POOL_CASES = (  # (shape, window, kind of values)
    ((2, 7, 5, 3), 2, "negative"),
    ((1, 4, 4, 1), 2, "normal"),
    ((3, 6, 9, 2), 3, "ties"),
    ((2, 5, 5, 1), 5, "large"),
    ((1, 3, 8, 2), 2, "normal"),
)


def reference_max_pool(x: Any, window: int) -> Any:
    """Exercise 3's reference: :func:`utils.cnn.max_pool` with stride = window."""
    return _cnn.max_pool(x, window)


def _pool_input(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    values = rng.normal(size=shape)
    if kind == "negative":
        values = -np.abs(values) - 1.0
    elif kind == "ties":
        values = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif kind == "large":
        values = values * 1e30
    return values.astype(np.float32)


def _check_pool(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(7)
    jitted = jax.jit(fn, static_argnums=1)
    for case, (shape, window, kind) in enumerate(_POOL_CASES):
        x = jnp.asarray(_pool_input(rng, shape, kind))
        expected = np.asarray(_cnn.max_pool(x, window))
        where = f"input {shape} ({kind} values), window {window}"
        ways = ([("", fn)] if case == 0 else []) + [(" under jax.jit", jitted)]
        for how, f in ways:
            got = expect_array(f(x, window), expected.shape, "float32",
                               f"the output for {where}{how}")
            if not np.array_equal(got, expected):
                seen = (" Every output is 0, though every input is below 0."
                        if kind == "negative" and np.all(got == 0) else "")
                raise CheckFailed(f"the output for {where}{how} differs from the maximum of "
                                  f"each {window}x{window} window, "
                                  f"{_first_difference(got, expected)}.{seen}")
        if kind in ("normal", "large"):  # no ties: the gradient goes to the one maximum
            r = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
            try:
                got, exp = (jax.jit(jax.grad(lambda x, r, f=f, k=window: jnp.sum(f(x, k) * r)))(
                    x, r) for f in (fn, _cnn.max_pool))
            except CheckFailed:
                raise
            except Exception as error:  # NotImplementedError too: JAX's, for a missing rule
                raise CheckFailed(f"jax.grad of it fails for {where} "
                                  f"({summarize_error(error)}); the network trains through "
                                  "the pooling, so it needs a gradient.") from None
            if not np.allclose(np.asarray(got), np.asarray(exp), rtol=1e-5, atol=1e-6):
                raise CheckFailed(f"the gradient for {where} differs from max pooling's, which "
                                  "reaches each window's largest input only (the values "
                                  "agree).")
    return (f"equals lax.reduce_window max on {len(_POOL_CASES)} shapes (batch 1, odd sizes "
            "dropped, negative values, ties, values of 1e30), gradients too; under jax.jit, "
            "and eagerly")


def max_pool(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``max_pool(x (N, H, W, C), window) -> (N, H // window, W // window, C)``."""
    return run_check("max_pool", student_fn, reference_max_pool, _check_pool,
                     HINTS["max_pool"], quiet=quiet)


# --- 4. the CNN's __call__ -------------------------------------------------------------------

_CNN_CASES = (  # (num_classes, channels, hidden, in_channels, image_size, batch)
    (10, (4, 6), 16, 1, (28, 28), 3),
    (3, (2, 3), 8, 2, (12, 20), 1),
)


def _min_pool(x: Any, window: int) -> Any:
    """A pooling other than the default, to see that ``__call__`` uses ``self.pool``.

    Like a max-pool, a min-pool commutes with ReLU (both are monotone), so an answer that
    pools before the ReLU, which is right for a max-pool, is right here too.
    """
    return -_cnn.max_pool(-x, window)


def _build(cls: Any, rng: np.random.Generator, seed: int, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs, rngs=nnx.Rngs(seed))`` with random values from ``rng``.

    The model is built abstractly (``nnx.eval_shape``: no initializer is compiled or run,
    which would take longer than the whole check) and then given NumPy values: weights
    scaled by 1/sqrt(fan-in), the RNG streams seeded with ``seed``.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(*args, **kwargs,
                                                           rngs=nnx.Rngs(seed))))

    def value(leaf: Any) -> Any:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map(value, state))


def _randomize_batchnorm(model: Any, rng: np.random.Generator) -> None:
    """Random scale, shift and running statistics, so that a missing BatchNorm shows."""
    import jax.numpy as jnp

    for bn in (model.bn1, model.bn2):
        n = bn.scale.shape[0]
        bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
        bn.bias[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
        bn.mean[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
        bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)


def _running(model: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"bn1": (mean, var), "bn2": (mean, var)}`` as NumPy arrays."""
    return {name: (np.asarray(getattr(model, name).mean[...]),
                   np.asarray(getattr(model, name).var[...])) for name in ("bn1", "bn2")}


def _compare_running(before: dict, student: dict, ref: dict, where: str) -> None:
    """FAILED, saying what the running averages did, unless the student's equal the reference's."""
    for name in ("bn1", "bn2"):
        for i, stat in enumerate(("mean", "variance")):
            got, exp, old = student[name][i], ref[name][i], before[name][i]
            if np.allclose(got, exp, rtol=1e-4, atol=1e-5):
                continue
            if np.array_equal(got, old):
                raise CheckFailed(f"after one train-mode call for {where}, {name}'s running "
                                  f"{stat} has not moved (the reference's moved by up to "
                                  f"{np.max(np.abs(exp - old)):.3g}): in train mode BatchNorm "
                                  "normalises with the batch's statistics and updates its "
                                  "running averages; only eval mode uses them as they are.")
            raise CheckFailed(f"after one train-mode call for {where}, {name}'s running "
                              f"{stat} is {np.round(got[:3], 4).tolist()}... where the "
                              f"reference's is {np.round(exp[:3], 4).tolist()}... (both "
                              f"started from {np.round(old[:3], 4).tolist()}...).")


@functools.cache
def _compiled() -> tuple[Fn, Fn]:
    """``(logits_and_grads(m, x, r), forward(m, x))``, each one ``nnx.jit`` for every check.

    Compiling dominates a check's time. These two are shared by all checks in a process, so
    what was compiled for a model's graph (its class, layers, pooling and mode) and input
    shape is reused: the reference's computations (run on :func:`_as_reference` copies, whose
    graph is always ``cnn.CNN``'s) compile once, and a student's once per class.
    """
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def logits_and_grads(m: Any, x: Any, r: Any) -> Any:
        def loss(m: Any) -> Any:
            logits = m(x)
            return jnp.sum(logits * r), logits

        (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(m)
        return logits, grads

    return logits_and_grads, nnx.jit(lambda m, x: m(x))


@functools.cache
def _reference_graph(k: int, channels: tuple, hidden: int, cin: int, size: tuple,
                     pool: Fn) -> Any:
    from flax import nnx

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: _cnn.CNN(
        k, channels=channels, hidden=hidden, dropout=0.5, in_channels=cin, image_size=size,
        pool=pool, rngs=nnx.Rngs(0))))
    return graphdef


def _as_reference(model: Any, train: bool, *args: Any) -> Any:
    """A ``cnn.CNN`` holding a copy of ``model``'s variables, in the same mode."""
    from flax import nnx

    try:
        reference = nnx.merge(_reference_graph(*args), nnx.state(nnx.clone(model)))
    except Exception as error:
        raise CheckFailed("the model's variables differ from cnn.CNN's "
                          f"({summarize_error(error, 160)}): keep the given __init__ "
                          "(subclass cnn.CNN) and write only __call__.") from None
    if train:
        reference.train()
    else:
        reference.eval()
    return reference


def _check_cnn(cls: Any) -> str:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(11)
    logits_and_grads, forward = _compiled()

    def build(k: int, channels: tuple, hidden: int, cin: int, size: tuple, seed: int,
              pool: Fn = _cnn.max_pool) -> Any:
        return _build(cls, rng, seed, k, channels=channels, hidden=hidden, dropout=0.5,
                      in_channels=cin, image_size=size, pool=pool)

    for case, (k, channels, hidden, cin, size, n) in enumerate(_CNN_CASES):
        model = build(k, channels, hidden, cin, size, case)
        for name in ("conv1", "bn1", "conv2", "bn2", "dense1", "dropout", "dense2"):
            if not hasattr(model, name):
                raise CheckFailed(f"the model has no layer '{name}': keep the given __init__ "
                                  "(subclass cnn.CNN) and write only __call__.")
        _randomize_batchnorm(model, rng)
        x = jnp.asarray(rng.uniform(0, 1, size=(n, *size, cin)), jnp.float32)
        r = jnp.asarray(rng.normal(size=(n, k)), jnp.float32)
        where = f"input {(n, *size, cin)}, channels {channels}"
        graph = (k, channels, hidden, cin, size)
        model.eval()
        got, got_grads = logits_and_grads(model, x, r)
        expected, expected_grads = logits_and_grads(
            _as_reference(model, False, *graph, _cnn.max_pool), x, r)
        got = expect_array(got, (n, k), "float32",
                           f"the logits in eval mode for {where} under nnx.jit")
        expected = np.asarray(expected)
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            seen = (f" None of its logits is negative, while {int(np.sum(expected < 0))} of "
                    "the reference's are." if np.all(got >= 0) and np.any(expected < 0)
                    else "")
            raise CheckFailed(f"the logits in eval mode for {where} under nnx.jit differ from "
                              "those of section 3's order of layers, "
                              f"{_first_difference(got, expected)}.{seen}")
        for g, e in zip(*(jax.tree.leaves(g) for g in (got_grads, expected_grads)),
                        strict=True):
            if not np.allclose(np.asarray(g), np.asarray(e), rtol=1e-3, atol=1e-4):
                raise CheckFailed(f"the gradients of the parameters for {where} differ from "
                                  "the reference forward pass's (the logits agree).")
        model.train()  # train mode: batch statistics, running averages updated, dropout on
        before = _running(model)
        student, ref = nnx.clone(model), _as_reference(model, True, *graph, _cnn.max_pool)
        got = np.asarray(forward(student, x))
        expected = np.asarray(forward(ref, x))
        _compare_running(before, _running(student), _running(ref), where)
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            no_dropout = np.asarray(forward(nnx.view(nnx.clone(model), deterministic=True), x))
            seen = (" They equal the logits with dropout switched off: in train mode dropout "
                    "had no effect." if np.allclose(got, no_dropout, rtol=1e-4, atol=1e-4)
                    else "")
            raise CheckFailed(f"the logits in train mode for {where} differ from the "
                              f"reference's, {_first_difference(got, expected)}.{seen}")
        if case == 0:  # built with another pooling, the model must use it
            model = build(k, channels, hidden, cin, size, case, _min_pool)
            model.train()
            got = np.asarray(forward(nnx.clone(model), x))
            expected = np.asarray(forward(_as_reference(model, True, *graph, _min_pool), x))
            if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                max_pooled = np.asarray(forward(
                    _as_reference(model, True, *graph, _cnn.max_pool), x))
                seen = (" They equal the logits of the same model max-pooled: the pooling "
                        "the model was built with (self.pool) was not used."
                        if np.allclose(got, max_pooled, rtol=1e-4, atol=1e-4) else "")
                raise CheckFailed("built with pool=<a min-pool>, its train-mode logits for "
                                  f"{where} differ from the reference's, "
                                  f"{_first_difference(got, expected)}.{seen}")
    return (f"logits equal the reference in eval and train mode for {len(_CNN_CASES)} "
            "sizes (batch 1, non-square images, 2 input channels); BatchNorm statistics, "
            "dropout, gradients and the chosen pooling too; under nnx.jit")


def cnn(student_cls: Any, *, quiet: bool = False) -> Any:
    """Check the student's ``CNN`` class (its ``__call__``); return the class to use."""
    return run_check("CNN.__call__", student_cls, _cnn.CNN, _check_cnn, HINTS["CNN.__call__"],
                     quiet=quiet)


# --- 5. random_translate ---------------------------------------------------------------------

_SHIFT_CASES = (  # (images shape, max_shift): the edge cases, one call each
    ((1, 5, 9, 2), 1),
    ((33, 6, 4, 1), 3),
    ((4, 5, 5, 1), 0),
)
#: The distribution test: one call on this many examples (of 7x7 pixels) with max_shift=2.
_DISTRIBUTION = ((800, 7, 7, 1), 2)
#: False-alarm rate of each chi-square test: the probability that a correct answer fails it.
FALSE_ALARM = 1e-6


def reference_random_translate(key: Any, images: Any, max_shift: int) -> Any:
    """Exercise 5's reference: :func:`utils.cnn.random_translate` (zeros shifted in)."""
    return _cnn.random_translate(key, images, max_shift)


def _coded(shape: tuple[int, ...]) -> np.ndarray:
    """Images whose values are 1, 2, 3, ...: every pixel of every example is distinct, so
    where each output pixel came from can be read off its value (exact in float32)."""
    return (1 + np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape).astype(
        np.float32)


def _moved(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Each ``images[i] (H, W, C)`` moved down by ``dy[i]`` and right by ``dx[i]``, zeros in."""
    n, h, w, _ = images.shape
    rows = np.arange(h)[None, :] - dy[:, None]  # (N, H): the source row of each output row
    cols = np.arange(w)[None, :] - dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    picked = images[np.arange(n)[:, None, None], np.clip(rows, 0, h - 1)[:, :, None],
                    np.clip(cols, 0, w - 1)[:, None, :]]
    return np.where(inside[..., None], picked, 0).astype(images.dtype)


def _read_shifts(images: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """``(dy, dx, ok)`` per example: the shift that its first non-zero output pixel implies,
    and whether the whole example is its input moved by that shift, zeros shifted in."""
    n, h, w, c = images.shape
    flat = out.reshape(n, -1)
    first = (flat != 0).argmax(axis=1)
    value = flat[np.arange(n), first].astype(np.float64)
    local = np.rint(value).astype(np.int64) - 1 - np.arange(n) * (h * w * c)
    valid = (value == np.rint(value)) & (local >= 0) & (local < h * w * c)
    local = np.where(valid, local, 0)
    dy = (first // c) // w - (local // c) // w
    dx = (first // c) % w - (local // c) % w
    ok = valid & np.all((out == _moved(images, dy, dx)).reshape(n, -1), axis=1)
    return dy, dx, ok


def _describe_wrong(images: np.ndarray, out: np.ndarray, i: int, m: int, where: str) -> str:
    """Why example ``i`` is not a shifted copy: what the probes established, or what came back."""
    n, h, w, c = images.shape
    image, result = images[i], out[i]
    if not np.any(result):
        return f"example {i} for {where} came back all zeros."
    for dy in range(-m - 2, m + 3):
        for dx in range(-m - 2, m + 3):
            if np.array_equal(np.roll(image, (dy, dx), axis=(0, 1)), result):
                return (f"example {i} for {where} is its input rolled by ({dy}, {dx}): the "
                        "pixels pushed out on one side come back on the other, where zeros "
                        "should come in.")
    sources = np.rint(result[result != 0]).astype(np.int64) - 1
    others = sorted({int(s) // (h * w * c) for s in sources} - {i})
    if others:
        return (f"example {i} for {where} holds pixels of example {others[0]}: each "
                "example should hold only its own pixels.")
    foreign = np.argwhere(~np.isin(result, np.append(image, 0)))
    if foreign.size:
        row, col, ch = (int(v) for v in foreign[0])
        return (f"example {i} for {where} has the value {float(result[row, col, ch]):.4g} at "
                f"(row {row}, column {col}, channel {ch}), which is neither 0 nor one of its "
                "input's values: a whole-pixel shift only moves values.")
    return (f"example {i} for {where} is not its input moved by a whole number of pixels "
            "with zeros shifted in: its pixels were rearranged some other way.")


def _shifts_of(images: np.ndarray, out: np.ndarray, m: int, where: str) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    dy, dx, ok = _read_shifts(images, out)
    if not np.all(ok):
        raise CheckFailed(_describe_wrong(images, out, int(np.argmin(ok)), m, where))
    beyond = np.flatnonzero((np.abs(dy) > m) | (np.abs(dx) > m))
    if beyond.size:
        i = int(beyond[0])
        raise CheckFailed(f"example {i} for {where} moved by ({int(dy[i])}, {int(dx[i])}) "
                          f"pixels (down, right), beyond max_shift={m}; "
                          f"{beyond.size} of {len(dy)} examples did.")
    return dy, dx


def _chi_square_rejects(counts: np.ndarray) -> bool:
    """Whether a chi-square test against equal counts rejects, at :data:`FALSE_ALARM`."""
    from scipy import stats

    expected = counts.sum() / counts.size
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    return bool(stats.chi2.sf(statistic, counts.size - 1) < FALSE_ALARM)


def _check_distribution(dy: np.ndarray, dx: np.ndarray, m: int) -> None:
    n, k = len(dy), 2 * m + 1
    test = f"(chi-square test, false-alarm rate {FALSE_ALARM:g})"
    for axis, d in (("dy (down)", dy), ("dx (right)", dx)):
        counts = np.bincount(d + m, minlength=k)
        if _chi_square_rejects(counts):
            never = [v - m for v in range(k) if counts[v] == 0]
            absent = f"; never {never}" if never else ""
            raise CheckFailed(f"over {n} examples of one call with max_shift={m}, {axis} took "
                              f"the values {-m}..{m} this often: {counts.tolist()}{absent}; "
                              f"uniform draws give about {n / k:.0f} each {test}.")
    joint = np.bincount((dy + m) * k + (dx + m), minlength=k * k)
    if _chi_square_rejects(joint):
        same, opposite = float(np.mean(dy == dx)), float(np.mean(dy == -dx))
        relation, share = ("dy == dx", same) if same >= opposite else ("dy == -dx", opposite)
        if share >= 2 / k:
            seen = f"{relation} in {share:.0%} of the examples, against about {1 / k:.0%}"
        else:
            top = int(np.argmax(joint))
            seen = (f"the offset ({top // k - m}, {top % k - m}) came {int(joint[top])} times, "
                    f"against about {n / k**2:.0f}")
        raise CheckFailed(f"over {n} examples of one call with max_shift={m}, each axis's "
                          f"offsets are uniform but the two are not independent: {seen} for "
                          f"independent draws {test}.")


def _check_translate(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    traces: list[int] = []

    def counted(key: Any, images: Any, m: int) -> Any:
        traces.append(1)  # runs only while tracing
        return fn(key, images, m)

    jitted = jax.jit(counted, static_argnums=2)

    def call(f: Fn, key: Any, images: np.ndarray, m: int, what: str) -> np.ndarray:
        return expect_array(f(key, jnp.asarray(images), m), images.shape, "float32", what)

    shape, m = _DISTRIBUTION
    images = _coded(shape)
    where = f"images {shape}, max_shift={m}"
    key = jax.random.key(100)
    eager = call(fn, key, images, m, f"the output for {where}")
    dy, dx = _shifts_of(images, eager, m, where)
    jit_out = call(jitted, key, images, m, f"the output for {where} under jax.jit")
    _shifts_of(images, jit_out, m, where + " under jax.jit")
    if not np.array_equal(eager, jit_out):
        raise CheckFailed(f"eager and jitted calls with the same key differ for {where}: the "
                          "shifts should come from the key alone.")
    if len(set(zip(dy.tolist(), dx.tolist(), strict=True))) == 1:
        raise CheckFailed(f"all {shape[0]} examples for {where} moved by the same "
                          f"({int(dy[0])}, {int(dx[0])}): each example needs its own shift.")
    _check_distribution(dy, dx, m)
    other = call(jitted, jax.random.key(7), images, m, f"the output for {where}")
    if np.array_equal(other, jit_out):
        raise CheckFailed(f"two different keys gave the same shifts for {where}: the key "
                          "should decide them.")
    call(jitted, jax.random.key(8), images, m, f"the output for {where}")
    if len(traces) != 1:
        raise CheckFailed(f"jax.jit traced it {len(traces)} times for 3 keys of the same "
                          "shape: a new key should not recompile (keep the shifts as arrays, "
                          "never Python numbers).")
    for case, (shape, m) in enumerate(_SHIFT_CASES):
        images = _coded(shape)
        where = f"images {shape}, max_shift={m}"
        out = call(jitted, jax.random.key(200 + case), images, m,
                   f"the output for {where} under jax.jit")
        _shifts_of(images, out, m, where)
        if m == 0 and not np.array_equal(out, images):
            raise CheckFailed("with max_shift=0 the images must come back unchanged.")
    return (f"each example moved by its own whole-pixel offset within max_shift, zeros "
            f"shifted in, offsets uniform and independent per axis over {_DISTRIBUTION[0][0]} "
            f"examples (chi-square, false-alarm rate {FALSE_ALARM:g}); "
            f"{len(_SHIFT_CASES)} more shapes (batch 1, non-square, 2 channels, "
            "max_shift=0); the key decides; jitted once for several keys")


def random_translate(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``random_translate(key, images (N, H, W, C), max_shift) -> same shape``."""
    return run_check("random_translate", student_fn, reference_random_translate,
                     _check_translate, HINTS["random_translate"], quiet=quiet)
