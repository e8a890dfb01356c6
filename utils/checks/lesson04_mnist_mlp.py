"""Exercise checkers of lesson 04_mnist_mlp, with their reference solutions.

Each checker takes the student's answer, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's answer if it passed, else the reference from :mod:`utils.training`).

- :func:`mlp`: the forward pass (``MLP.__call__``): flatten, two Linear+ReLU, Linear to
  logits. Checked against the formula on the model's own parameters, several sizes and
  input shapes, eagerly and under ``nnx.jit``.
- :func:`cross_entropy_loss`: mean softmax cross-entropy from logits, also for large logits
  (where a hand-made ``log(softmax)`` overflows).
- :func:`accuracy`: fraction of argmax predictions equal to the labels, a float32 scalar.
- :func:`shuffled_batch_indices`: a permutation on the device cut into full batches
  ``(num_examples // batch_size, batch_size)``; checked by properties (every index at
  most once, in range, shuffled, determined by the key, under ``jax.jit``).
- :func:`train_step`: one optimisation step on one batch: loss, accuracy and the updated
  parameters compared with the reference step on an identical model and optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from utils import training
from utils.exercises import CheckFailed, compare_with_reference, expect_array, run_check

Fn = Callable[..., Any]

__all__ = ["accuracy", "cross_entropy_loss", "mlp", "shuffled_batch_indices", "train_step"]

_MLP_CASES = (  # (din, dhidden, dout, input shape)
    (784, 32, 10, (5, 28, 28)),
    (12, 8, 3, (7, 3, 4)),
    (20, 24, 4, (2, 20)),
)


def _formula_forward(model: Any, x: Any) -> Any:
    """The MLP forward pass written out with the model's own parameters."""
    import jax.numpy as jnp

    def dense(layer: Any, h: Any) -> Any:
        return h @ layer.kernel[...] + layer.bias[...]

    h = jnp.reshape(x, (x.shape[0], -1))
    h = jnp.maximum(dense(model.hidden1, h), 0.0)
    h = jnp.maximum(dense(model.hidden2, h), 0.0)
    return dense(model.out, h)


def _check_mlp(cls: Any) -> str:
    import jax.numpy as jnp
    from flax import nnx

    def build(din: int, dh: int, dout: int, seed: int, biases: list[Any]) -> Any:
        model = cls(din, dh, dout, rngs=nnx.Rngs(seed))
        for name in ("hidden1", "hidden2", "out"):
            if not isinstance(getattr(model, name, None), nnx.Linear):
                raise CheckFailed(f"the model has no nnx.Linear layer '{name}': keep the given "
                                  "__init__ and write only __call__.")
        # Random biases (not zeros), so that a missing or misplaced ReLU changes the output.
        for layer, bias in zip((model.hidden1, model.hidden2, model.out), biases, strict=True):
            layer.bias[...] = bias
        return model

    # Compiled calls keep the check quick: eager JAX compiles every new shape op by op.
    build_jit = nnx.jit(build, static_argnums=(0, 1, 2, 3))
    forward_jit = nnx.jit(lambda m, x: m(x))
    formula_jit = nnx.jit(_formula_forward)
    rng = np.random.default_rng()
    for case, (din, dh, dout, shape) in enumerate(_MLP_CASES):
        biases = [jnp.asarray(rng.normal(size=n), jnp.float32) for n in (dh, dh, dout)]
        model = build_jit(din, dh, dout, case, biases)
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        expected = np.asarray(formula_jit(model, x))
        ways = [(" under nnx.jit", forward_jit)]
        if case == 0:
            ways.insert(0, ("", lambda m, x: m(x)))
        for how, fn in ways:
            got = expect_array(fn(model, x), (shape[0], dout), "float32",
                               f"the output for input shape {shape}{how}")
            if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                if np.all(got >= 0) and np.any(expected < 0):
                    raise CheckFailed(f"the logits for input shape {shape} are never negative: "
                                      "is there a ReLU (or softmax) on the output layer?")
                raise CheckFailed(f"the output for input shape {shape}{how} differs from "
                                  "relu(relu(x W1 + b1) W2 + b2) W3 + b3 (max difference "
                                  f"{np.max(np.abs(got - expected)):.3g}).")
    return (f"logits match the formula for {len(_MLP_CASES)} layer sizes and input shapes "
            "(N, 28, 28), (N, 3, 4), (N, 20); under nnx.jit, and eagerly")


def mlp(student_cls: Any, *, quiet: bool = False) -> Any:
    """Check the student's ``MLP`` class (its ``__call__``); return the class to use."""
    return run_check(
        "MLP.__call__", student_cls, training.MLP, _check_mlp,
        "flatten with x.reshape(x.shape[0], -1), then nnx.relu(self.hidden1(x)), "
        "nnx.relu(self.hidden2(x)), and return self.out(x) with no activation (logits).",
        quiet=quiet,
    )


def _logits_and_labels(rng: np.random.Generator, trial: int) -> tuple[Any, Any]:
    import jax.numpy as jnp

    n, k = ((8, 10), (3, 5), (64, 10), (5, 2))[trial % 4]
    scale = 1.0 if trial < 2 else 200.0  # large logits: a hand-made log(softmax) overflows
    logits = jnp.asarray(scale * rng.normal(size=(n, k)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, k, size=n), jnp.int32)
    return logits, labels


def _jitted_comparison(fn: Fn, reference: Fn) -> str:
    """compare_with_reference on jitted functions: one compile per shape instead of per op."""
    import jax

    what = compare_with_reference(jax.jit(fn), jax.jit(reference), _logits_and_labels,
                                  trials=4, jit=False, rtol=1e-4, atol=1e-5)
    return what + " under jax.jit"


def cross_entropy_loss(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``cross_entropy_loss(logits (N, K), labels (N,)) -> mean loss (scalar)``."""
    return run_check(
        "cross_entropy_loss", student_fn, training.cross_entropy_loss,
        lambda fn: _jitted_comparison(fn, training.cross_entropy_loss)
        + ", including logits of size ~200",
        "return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), "
        "on the logits themselves (no softmax first), averaged over the batch.",
        quiet=quiet,
    )


def accuracy(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``accuracy(logits (N, K), labels (N,)) -> float32 fraction correct``."""
    return run_check(
        "accuracy", student_fn, training.accuracy,
        lambda fn: _jitted_comparison(fn, training.accuracy),
        "compare jnp.argmax(logits, axis=-1) with labels and take the mean as float32 "
        "(a fraction in [0, 1], not a count).",
        quiet=quiet,
    )


_BATCH_CASES = ((1000, 128), (60, 7), (10, 10), (257, 16))


def _check_batches(fn: Callable[..., Any]) -> str:
    import jax

    jitted = jax.jit(fn, static_argnums=(1, 2))
    for seed, (n, bs) in enumerate(_BATCH_CASES):
        key = jax.random.key(seed + 11)
        ways = [(" under jax.jit", jitted)] + ([("", fn)] if seed == 0 else [])
        for how, f in ways:
            out = f(key, n, bs)
            where = f"for num_examples={n}, batch_size={bs}{how}"
            if not isinstance(out, jax.Array):
                raise CheckFailed(f"returned a {type(out).__name__} {where}: build it with "
                                  "jax.random on the device, not with NumPy.")
            shape = (n // bs, bs)
            if tuple(out.shape) != shape:
                extra = (" (drop the last, incomplete batch)" if out.size > n // bs * bs else "")
                raise CheckFailed(f"shape {tuple(out.shape)} {where}, expected {shape}{extra}.")
            if not np.issubdtype(out.dtype, np.integer):
                raise CheckFailed(f"dtype {out.dtype} {where}: indices must be integers.")
            values = np.asarray(out).ravel()
            if values.min() < 0 or values.max() >= n:
                raise CheckFailed(f"indices outside [0, {n - 1}] {where}.")
            if len(np.unique(values)) != values.size:
                raise CheckFailed(f"some indices appear twice {where}: use a permutation, "
                                  "so every example is seen at most once per epoch.")
            if not np.array_equal(np.asarray(f(key, n, bs)), np.asarray(out)):
                raise CheckFailed(f"two calls with the same key differ {where}: the key alone "
                                  "must decide the order.")
        if n >= 60 and np.array_equal(np.sort(values), values):
            raise CheckFailed(f"the indices are in order for num_examples={n}: shuffle them.")
    n, bs = _BATCH_CASES[0]
    a, b = (np.asarray(fn(jax.random.key(s), n, bs)) for s in (1, 2))
    if np.array_equal(a, b):
        raise CheckFailed("two different keys gave the same order: use the key you are given.")
    return (f"a shuffled permutation in full batches for {len(_BATCH_CASES)} sizes; the key "
            "decides the order; remainder dropped; under jax.jit, and eagerly")


def shuffled_batch_indices(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``shuffled_batch_indices(key, num_examples, batch_size) -> (B_count, B) ints``."""
    return run_check(
        "shuffled_batch_indices", student_fn, training.shuffled_batch_indices, _check_batches,
        "take jax.random.permutation(key, num_examples), keep the first "
        "(num_examples // batch_size) * batch_size entries, reshape to (-1, batch_size).",
        quiet=quiet,
    )


def _check_train_step(fn: Callable[..., Any]) -> str:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    rng = np.random.default_rng()
    for how in (" under nnx.jit",):  # the way the lesson runs it
        pairs = []
        for step in (fn, training.train_batch):
            model = training.MLP(12, 16, 4, rngs=nnx.Rngs(3))
            pairs.append((model, training.create_optimizer(model, optax.adam(1e-2)),
                          nnx.jit(step)))
        for i in range(2):
            x = jnp.asarray(rng.normal(size=(9, 3, 4)), jnp.float32)
            y = jnp.asarray(rng.integers(0, 4, size=9), jnp.int32)
            (m, o, student), (rm, ro, reference) = pairs
            before = jax.tree.map(np.asarray, nnx.state(m, nnx.Param))
            out = student(m, o, x, y)
            expected = reference(rm, ro, x, y)
            if not isinstance(out, tuple | list) or len(out) != 2:
                raise CheckFailed(f"returned {type(out).__name__}{how}; expected a tuple "
                                  "(loss, accuracy).")
            loss = expect_array(out[0], (), "float32", f"the loss{how}")
            acc = expect_array(out[1], (), "float32", f"the accuracy{how}")
            if not np.allclose(loss, expected[0], rtol=1e-4, atol=1e-5):
                raise CheckFailed(f"step {i + 1}{how}: loss {float(loss):.5g}, expected "
                                  f"{float(expected[0]):.5g} (the loss of the batch before the "
                                  "update).")
            if not np.allclose(acc, expected[1]):
                raise CheckFailed(f"step {i + 1}{how}: accuracy {float(acc):.4g}, expected "
                                  f"{float(expected[1]):.4g}.")
            after = jax.tree.map(np.asarray, nnx.state(m, nnx.Param))
            if all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                          jax.tree.leaves(after), strict=True)):
                raise CheckFailed(f"step {i + 1}{how}: the parameters did not change: call "
                                  "optimizer.update(model, grads).")
            wanted = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(rm, nnx.Param)))
            for a, b in zip(jax.tree.leaves(after), wanted, strict=True):
                if not np.allclose(a, b, rtol=1e-4, atol=1e-5):
                    raise CheckFailed(f"step {i + 1}{how}: the updated parameters differ from "
                                      "one Adam step on the gradient of the mean loss.")
    return ("under nnx.jit, loss, accuracy and updated parameters match the reference "
            "over 2 steps")


def train_step(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``train_step(model, optimizer, images, labels) -> (loss, accuracy)``."""
    return run_check(
        "train_step", student_fn, training.train_batch, _check_train_step,
        "define loss_fn(model) returning (loss, logits), get (loss, logits), grads with "
        "nnx.value_and_grad(loss_fn, has_aux=True)(model), call optimizer.update(model, grads), "
        "return loss, accuracy(logits, labels).",
        quiet=quiet,
    )
