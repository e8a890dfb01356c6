"""Exercise checkers of lesson 05_cnn, with their reference solutions in :mod:`utils.cnn`.

Each checker takes the student's answer, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's answer if it passed, else the reference).

- :func:`conv_output_size`: the output length of a convolution along one axis, for
  ``"SAME"`` and ``"VALID"``, every stride, kernels as large as the input.
- :func:`conv2d_im2col`: a convolution as patches + one matmul, against
  ``jax.lax.conv_general_dilated`` on non-square shapes, batch 1, strides that differ per
  axis, even kernels (uneven ``"SAME"`` padding); gradients compared too; no convolution
  primitive allowed.
- :func:`max_pool`: non-overlapping max pooling against ``lax.reduce_window``: negative
  inputs, ties, sizes that do not divide, gradients.
- :func:`cnn`: the CNN's ``__call__``: eval mode and train mode (output, BatchNorm
  statistics, dropout) and gradients, on several sizes, against the reference forward pass
  run on the student's own model; it must pool with ``self.pool``.
- :func:`random_translate`: properties of a per-example random shift: each example is its
  input shifted by a whole number of pixels within range with zeros shifted in; examples
  get different shifts; the key decides; jittable without recompiling per key.

All random inputs come from fixed seeds, so a verdict never changes between runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from utils import cnn as _cnn
from utils.exercises import CheckFailed, expect_array, run_check

Fn = Callable[..., Any]

__all__ = ["cnn", "conv2d_im2col", "conv_output_size", "max_pool", "random_translate",
           "reference_conv2d_im2col", "reference_max_pool", "reference_random_translate"]


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
            raise CheckFailed(f"returned {type(got).__name__} {got!r} for {where}: return an "
                              "int (use // for floor division).")
        expected = _cnn.conv_output_size(size, kernel, stride, padding)
        if got != expected:
            raise CheckFailed(f"returned {got} for {where}, expected {expected}.")
    return (f"equals the output size of lax.conv_general_dilated for {len(_SIZE_CASES)} "
            "sizes, kernels, strides and both paddings")


def conv_output_size(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``conv_output_size(size, kernel, stride, padding) -> int``."""
    return run_check(
        "conv_output_size", student_fn, _cnn.conv_output_size, _check_conv_output_size,
        'VALID: (size - kernel) // stride + 1; SAME: ceil(size / stride), i.e. '
        "-(-size // stride); return an int.",
        quiet=quiet,
    )


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
                                  "lax.conv_general_dilated (max difference "
                                  f"{np.max(np.abs(got - expected)):.3g}).")
        if case == 0:
            used = _primitives(jax.make_jaxpr(fn, static_argnums=(2, 3))(x, w, stride,
                                                                        padding).jaxpr)
            if "conv_general_dilated" in used:
                raise CheckFailed("it calls a convolution (conv_general_dilated): build the "
                                  "patches and use one matmul instead.")
        r = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
        got_grads = _conv_grads(fn, stride, padding)(x, w, r)
        ref_grads = _conv_grads(_cnn.conv2d, stride, padding)(x, w, r)
        for name, g, e in zip(("x", "w"), got_grads, ref_grads, strict=True):
            if not np.allclose(np.asarray(g), np.asarray(e), rtol=1e-3, atol=1e-3):
                raise CheckFailed(f"the gradient with respect to {name} for {where} differs "
                                  "from the convolution's.")
    return (f"equals lax.conv_general_dilated on {len(_CONV_CASES)} shapes (batch 1, "
            "non-square, strides per axis, even kernels, SAME and VALID), gradients for x "
            "and w too; no convolution primitive; under jax.jit, and eagerly")


def conv2d_im2col(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``conv2d_im2col(x (N,H,W,C), w (KH,KW,C,O), stride (sh, sw), padding)``."""
    return run_check(
        "conv2d_im2col", student_fn, reference_conv2d_im2col, _check_conv,
        "pad (SAME: same_padding per axis, the odd zero at the end), then for every (i, j) "
        "of the kernel take x[:, i : i + (OH-1)*sh + 1 : sh, j : j + (OW-1)*sw + 1 : sw, :], "
        "stack on axis 3 and reshape to (N, OH, OW, KH*KW*C); multiply by "
        "w.reshape(KH*KW*C, O).",
        quiet=quiet,
    )


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
                hint = (" Start the maximum from -inf, not 0." if kind == "negative"
                        and np.all(got == 0) else "")
                raise CheckFailed(f"the output for {where}{how} differs from the maximum of "
                                  f"each {window}x{window} window.{hint}")
        if kind in ("normal", "large"):  # no ties: the gradient goes to the one maximum
            r = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
            try:
                got, exp = (jax.jit(jax.grad(lambda x, r, f=f, k=window: jnp.sum(f(x, k) * r)))(
                    x, r) for f in (fn, _cnn.max_pool))
            except (NotImplementedError, CheckFailed):
                raise
            except Exception as error:
                raise CheckFailed(f"jax.grad of it fails for {where} "
                                  f"({type(error).__name__}): the network needs its gradient; "
                                  "use jax.lax.max with -jnp.inf as the start.") from None
            if not np.allclose(np.asarray(got), np.asarray(exp), rtol=1e-5, atol=1e-6):
                raise CheckFailed(f"the gradient for {where} differs from max pooling's (it "
                                  "should reach only each window's largest input).")
    return (f"equals lax.reduce_window max on {len(_POOL_CASES)} shapes (batch 1, odd sizes "
            "dropped, negative values, ties, values of 1e30), gradients too; under jax.jit, "
            "and eagerly")


def max_pool(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``max_pool(x (N, H, W, C), window) -> (N, H // window, W // window, C)``."""
    return run_check(
        "max_pool", student_fn, reference_max_pool, _check_pool,
        "jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), "
        '(1, window, window, 1), "VALID").',
        quiet=quiet,
    )


# --- 4. the CNN's __call__ -------------------------------------------------------------------

_CNN_CASES = (  # (num_classes, channels, hidden, in_channels, image_size, batch)
    (10, (4, 6), 16, 1, (28, 28), 3),
    (3, (2, 3), 8, 2, (12, 20), 1),
)


def _average_pool(x: Any, window: int) -> Any:
    """A pooling other than the default, to see that ``__call__`` uses ``self.pool``."""
    import jax

    dims = (1, window, window, 1)
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, dims, "VALID") / window**2


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


def _stats(model: Any) -> list[np.ndarray]:
    import jax
    from flax import nnx

    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def _check_cnn(cls: Any) -> str:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(11)
    reference_call = _cnn.CNN.__call__

    # Few compiled functions (compiling dominates the check's time): per call, the logits
    # and the parameters' gradients together, for the student's __call__ and the reference.
    def logits_and_grads(call: Fn) -> Fn:
        def f(m: Any, x: Any, r: Any) -> Any:
            def loss(m: Any) -> Any:
                logits = call(m, x)
                return jnp.sum(logits * r), logits

            (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(m)
            return logits, grads

        return nnx.jit(f)

    student_eval, reference_eval = (logits_and_grads(c)
                                    for c in (lambda m, x: m(x), reference_call))
    forward = nnx.jit(lambda m, x: m(x))
    reference = nnx.jit(lambda m, x: reference_call(m, x))

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
        model.eval()
        got, got_grads = student_eval(model, x, r)
        expected, expected_grads = reference_eval(model, x, r)
        got = expect_array(got, (n, k), "float32",
                           f"the logits in eval mode for {where} under nnx.jit")
        expected = np.asarray(expected)
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            if np.all(got >= 0) and np.any(expected < 0):
                raise CheckFailed(f"the logits for {where} are never negative: no ReLU "
                                  "(or softmax) on the output layer.")
            raise CheckFailed(f"the logits in eval mode for {where} under nnx.jit differ from "
                              "conv1 -> bn1 -> relu -> pool -> conv2 -> bn2 -> relu -> "
                              "pool -> flatten -> dense1 -> relu -> dropout -> dense2 "
                              f"(max difference {np.max(np.abs(got - expected)):.3g}).")
        for g, e in zip(*(jax.tree.leaves(g) for g in (got_grads, expected_grads)),
                        strict=True):
            if not np.allclose(np.asarray(g), np.asarray(e), rtol=1e-3, atol=1e-4):
                raise CheckFailed(f"the gradients of the parameters for {where} differ from "
                                  "the reference forward pass's.")
        model.train()  # train mode: batch statistics, running averages updated, dropout on
        student, ref = nnx.clone(model), nnx.clone(model)
        got = np.asarray(forward(student, x))
        expected = np.asarray(reference(ref, x))
        if not all(np.allclose(a, b, rtol=1e-4, atol=1e-5)
                   for a, b in zip(_stats(student), _stats(ref), strict=True)):
            raise CheckFailed(f"in train mode the BatchNorm running statistics for {where} "
                              "differ from the reference's: call self.bn1 and self.bn2 once "
                              "each, on the convolutions' outputs.")
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            eval_logits = np.asarray(forward(nnx.view(model, deterministic=True), x))
            why = (" It ignores dropout: apply self.dropout after relu(dense1)."
                   if np.allclose(got, eval_logits, rtol=1e-4, atol=1e-4) else "")
            raise CheckFailed(f"the logits in train mode for {where} differ from the "
                              f"reference's (dropout after relu(dense1), once).{why}")
        if case == 0:  # built with another pooling, the model must use it
            model = build(k, channels, hidden, cin, size, case, _average_pool)
            model.train()  # the train-mode functions compiled above, with this pooling
            student, ref = nnx.clone(model), nnx.clone(model)
            if not np.allclose(np.asarray(forward(student, x)),
                               np.asarray(reference(ref, x)), rtol=1e-4, atol=1e-4):
                raise CheckFailed("built with pool=<an average pool> it still max-pools: pool "
                                  "with self.pool(x, 2), the pooling the model was built with.")
    return (f"logits equal the reference in eval and train mode for {len(_CNN_CASES)} "
            "sizes (batch 1, non-square images, 2 input channels); BatchNorm statistics, "
            "dropout, gradients and the chosen pooling too; under nnx.jit")


def cnn(student_cls: Any, *, quiet: bool = False) -> Any:
    """Check the student's ``CNN`` class (its ``__call__``); return the class to use."""
    return run_check(
        "CNN.__call__", student_cls, _cnn.CNN, _check_cnn,
        "self.pool(nnx.relu(self.bn1(self.conv1(x))), 2), the same with conv2/bn2, "
        "x.reshape(x.shape[0], -1), self.dropout(nnx.relu(self.dense1(x))), then "
        "self.dense2(x) with no activation.",
        quiet=quiet,
    )


# --- 5. random_translate ---------------------------------------------------------------------

_SHIFT_CASES = (  # (images shape, max_shift)
    ((64, 8, 8, 1), 2),
    ((1, 5, 9, 2), 1),
    ((33, 6, 4, 1), 3),
    ((4, 5, 5, 1), 0),
)


def reference_random_translate(key: Any, images: Any, max_shift: int) -> Any:
    """Exercise 5's reference: :func:`utils.cnn.random_translate` (zeros shifted in)."""
    return _cnn.random_translate(key, images, max_shift)


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image (H, W, C)`` moved down by dy and right by dx, zeros shifted in."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = \
        image[max(-dy, 0): h - max(dy, 0), max(-dx, 0): w - max(dx, 0)]
    return out


def _find_shifts(images: np.ndarray, out: np.ndarray, m: int, where: str) -> list[tuple]:
    shifts = []
    candidates = [(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
    for i, (image, result) in enumerate(zip(images, out, strict=True)):
        found = [s for s in candidates if np.array_equal(_shifted(image, *s), result)]
        if not found:
            wider = any(np.array_equal(_shifted(image, dy, dx), result)
                        for dy in range(-m - 2, m + 3) for dx in range(-m - 2, m + 3))
            if wider:
                raise CheckFailed(f"example {i} for {where} is shifted by more than "
                                  f"max_shift={m} pixels: draw each shift in "
                                  f"[-max_shift, max_shift].")
            raise CheckFailed(f"example {i} for {where} is not its input shifted by whole "
                              f"pixels (at most {m}) with zeros shifted in (jnp.roll wraps "
                              "pixels around instead; pad with zeros and crop).")
        shifts.append(found[0])
    return shifts


def _check_translate(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(13)
    traces: list[int] = []

    def counted(key: Any, images: Any, m: int) -> Any:
        traces.append(1)  # runs only while tracing
        return fn(key, images, m)

    jitted = jax.jit(counted, static_argnums=2)
    seen: set[tuple] = set()
    for case, (shape, m) in enumerate(_SHIFT_CASES):
        images = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        where = f"images {shape}, max_shift={m}"
        key = jax.random.key(100 + case)
        outs = []
        ways = ([("", fn)] if case == 0 else []) + [(" under jax.jit", jitted)]
        for how, f in ways:
            out = expect_array(f(key, jnp.asarray(images), m), shape, "float32",
                               f"the output for {where}{how}")
            outs.append(out)
            shifts = _find_shifts(images, out, m, where + how)
        if not all(np.array_equal(outs[0], o) for o in outs[1:]):
            raise CheckFailed(f"eager and jitted calls with the same key differ for {where}: "
                              "draw the shifts from the key you are given.")
        if case == 0:
            if len(set(shifts)) < 5:
                raise CheckFailed(f"the {shape[0]} examples for {where} got only "
                                  f"{len(set(shifts))} different shifts: draw one shift per "
                                  "example (shape (N, 2)), not one for the batch.")
            seen |= set(shifts)
            other = np.asarray(jitted(jax.random.key(7), jnp.asarray(images), m))
            if np.array_equal(other, outs[0]):
                raise CheckFailed("two different keys gave the same shifts: use the key.")
            seen |= set(_find_shifts(images, other, m, where))
            np.asarray(jitted(jax.random.key(8), jnp.asarray(images), m))
            if len(traces) != 1:
                raise CheckFailed(f"jax.jit traced it {len(traces)} times for 3 keys of the "
                                  "same shape: keep the shifts as arrays (no int() or Python "
                                  "branch on them), so a new key does not recompile.")
        if m == 0 and not np.array_equal(outs[0], images):
            raise CheckFailed("with max_shift=0 the images must come back unchanged.")
    extremes = {-2, 2}
    if not extremes <= {dy for dy, _ in seen} or not extremes <= {dx for _, dx in seen}:
        raise CheckFailed("over 128 examples with max_shift=2 no example moved by the full 2 "
                          "pixels in some direction: draw shifts from -max_shift to +max_shift "
                          "inclusive (randint's upper bound is exclusive).")
    return (f"each example shifted by its own whole-pixel offset within max_shift, zeros "
            f"shifted in, on {len(_SHIFT_CASES)} shapes (batch 1, non-square, 2 channels, "
            "max_shift=0); the key decides; jitted once for several keys")


def random_translate(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``random_translate(key, images (N, H, W, C), max_shift) -> same shape``."""
    return run_check(
        "random_translate", student_fn, reference_random_translate, _check_translate,
        "shifts = jax.random.randint(key, (N, 2), -max_shift, max_shift + 1); pad the images "
        "with max_shift zeros on each side; jax.vmap a lax.dynamic_slice of (H, W, C) "
        "starting at (max_shift - dy, max_shift - dx, 0).",
        quiet=quiet,
    )
