"""Exercise checkers of lesson 04_mnist_mlp, with their reference solutions.

Each checker takes the student's answer, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's answer if it passed, else the reference from :mod:`utils.training`).

- :func:`mlp`: the forward pass (``MLP.__call__``): flatten each example, two Linear+ReLU,
  Linear to logits. The spec: ``x`` of shape ``(N, ...)`` holding ``din`` numbers per
  example (``(N, 28, 28)`` or ``(N, 784)`` for MNIST). Checked against the formula on the
  model's own parameters for several sizes and input shapes (``(5, 28, 28)`` with din 784,
  a batch of one too), eagerly and under ``nnx.jit``, and the gradient of a loss through it
  (training differentiates it).
- :func:`cross_entropy_loss`: mean softmax cross-entropy from logits, also for large logits
  (where a hand-made ``log(softmax)`` overflows), one example, two classes; its gradient
  with respect to the logits too. Any stable way passes (``jax.nn.logsumexp``, optax).
- :func:`accuracy`: fraction of argmax predictions equal to the labels, a float32 scalar;
  also with tied logits (the first largest is the prediction) and one example.
- :func:`shuffled_batch_indices`: a permutation on the device cut into full batches
  ``(num_examples // batch_size, batch_size)``; checked by properties (every index at
  most once, and exactly once when nothing is left over; in range; the examples shuffled,
  not only the order of the batches; determined by the key, a new order for a new key;
  the dropped remainder changing with the key; under ``jax.jit``).
- :func:`train_step`: one optimisation step on one batch of the documented shape
  ``(B, 28, 28)``: loss, accuracy and the updated parameters compared with the reference
  step on an identical model (784 -> 16 -> 16 -> 4) and optimizer. The optimizer is plain
  SGD, so the update is the gradient itself (Adam would hide a gradient off by a constant
  factor), on batches of 9 and of 1.
- :func:`training_flops`: the matmul FLOPs of one training step per example for an MLP of
  given layer sizes (forward, weight gradients, and input gradients for every layer but the
  first), exact, for sizes whose count overflows 32-bit integers too.

Every checker draws its random inputs from a fixed seed: the verdict is the same each run.
A FAILED line names a cause only when a probe established it; otherwise it shows the input,
the expected value and what came back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from utils import training
from utils.exercises import CheckFailed, Hints, compare_with_reference, expect_array, run_check

Fn = Callable[..., Any]

__all__ = ["HINTS", "accuracy", "cross_entropy_loss", "mlp", "reference_training_flops",
           "shuffled_batch_indices", "train_step", "training_flops"]

#: What each checker says beyond its verdict (see :class:`utils.exercises.Hints`).
HINTS: dict[str, Hints] = {
    "MLP.__call__": Hints(
        about="In Flax NNX a model's forward pass is its __call__ (section 2): the layers are "
              "made in __init__, and you wire them.",
        think="Flatten each example into one row whatever its shape, but keep the batch "
              "axis, even for a batch of one; which layers get a ReLU, and why must the "
              "output layer not have one?",
        closer="Check the shapes on paper for a batch of one (1, 28, 28) and for din = 12 "
               "with examples of shape (3, 4): what does each layer receive?",
    ),
    "cross_entropy_loss": Hints(
        about="Section 3 shows why the loss is computed from logits: the log of a softmax "
              "overflows for a confident model, the identity log_softmax(z) = z - "
              "logsumexp(z) does not.",
        think="The loss of one example is minus the log-probability of its true class: which "
              "entry of log_softmax is that, and how does the batch's loss become one number?",
        closer="Try logits of size 200 on a few examples, and compare your loss with the "
               "lesson's optax cell: if one is inf or NaN, where does the overflow happen?",
    ),
    "accuracy": Hints(
        about="Accuracy is the fraction of examples whose largest logit is their label "
              "(section 3).",
        think="Which class does each row predict (and which one when two logits tie for the "
              "largest), and how do the matches become a float32 fraction rather than a "
              "count?",
    ),
    "shuffled_batch_indices": Hints(
        about="With the data on the device, an epoch's batches are the rows of a random "
              "permutation of the indices (section 1).",
        think="One random order of all the examples, drawn from the key; as many as fill "
              "whole batches; shaped one batch per row. Which examples are left out must "
              "change with the key, and the examples themselves must be shuffled, not only "
              "the order of the batches.",
    ),
    "train_step": Hints(
        about="A train step is the gradient of the batch's loss with respect to the model, "
              "then the optimizer's update (section 4).",
        think="Differentiate a function of the model that returns the loss and, passed "
              "through, the logits; who applies the gradients, and are the loss and accuracy "
              "you return from before or after the update?",
        closer="With plain SGD the update is the learning rate times the gradient: is your "
               "gradient that of the batch's mean loss?",
    ),
    "training_flops": Hints(
        about="Counting a training step's FLOPs (section 5) shows why it is not simply 3x "
              "the forward pass.",
        think="Per layer: the forward product, the weight gradient, and the gradient of the "
              "layer's input, which only a layer with something below it needs. Counts pass "
              "2**31: which integer type holds them?",
    ),
}

_MLP_CASES = (  # (din, dhidden, dout, input shape)
    (784, 32, 10, (5, 28, 28)),
    (12, 8, 3, (7, 3, 4)),
    (20, 24, 4, (2, 20)),
    (6, 5, 2, (1, 2, 3)),
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
    rng = np.random.default_rng(4001)
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
                if np.any(expected < 0) and np.allclose(got, np.maximum(expected, 0.0),
                                                         rtol=1e-4, atol=1e-4):
                    raise CheckFailed(f"the logits for input shape {shape}{how} are the right "
                                      "ones with every negative logit set to 0: the output "
                                      "layer has a ReLU.")
                raise CheckFailed(f"the output for input shape {shape}{how} differs from "
                                  "relu(relu(x W1 + b1) W2 + b2) W3 + b3 (max difference "
                                  f"{np.max(np.abs(got - expected)):.3g}).")
    _expect_same_gradient(cls, build_jit, rng)
    return (f"logits match the formula for {len(_MLP_CASES)} layer sizes and input shapes "
            "(N, 28, 28), (N, 3, 4), (N, 20), (1, 2, 3); under nnx.jit, and eagerly; the "
            "gradient of a loss through it matches")


def _expect_same_gradient(cls: Any, build_jit: Any, rng: np.random.Generator) -> None:
    """The gradient of a loss through the student's forward pass equals the formula's."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    din, dh, dout, shape = _MLP_CASES[1]
    biases = [jnp.asarray(rng.normal(size=n), jnp.float32) for n in (dh, dh, dout)]
    model = build_jit(din, dh, dout, 7, biases)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(shape[0], dout)), jnp.float32)

    def loss(forward: Any) -> Any:
        return nnx.jit(nnx.grad(lambda m: jnp.sum(jnp.tanh(forward(m, x)) * weights)))(model)

    got = jax.tree.leaves(nnx.state(loss(lambda m, x: m(x)), nnx.Param))
    expected = jax.tree.leaves(nnx.state(loss(_formula_forward), nnx.Param))
    for a, b in zip(got, expected, strict=True):
        if not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5):
            raise CheckFailed(
                "the logits are right, but the gradient of a loss through the model differs "
                "from the formula's: training would follow it. Use only JAX operations of "
                "the inputs and layers (no stop_gradient, no NumPy, no rounding)."
            )


def mlp(student_cls: Any, *, quiet: bool = False) -> Any:
    """Check the student's ``MLP`` class (its ``__call__``); return the class to use."""
    return run_check(
        "MLP.__call__", student_cls, training.MLP, _check_mlp,
        HINTS["MLP.__call__"],
        quiet=quiet,
    )


_LOGIT_CASES = (  # (n, k, kind)
    (8, 10, "normal"), (3, 5, "normal"), (64, 10, "large"), (5, 2, "large"), (1, 10, "normal"),
    (1, 3, "large"), (16, 4, "ties"), (12, 10, "ties"),
)


def _logits_and_labels(rng: np.random.Generator, trial: int) -> tuple[Any, Any]:
    import jax.numpy as jnp

    n, k, kind = _LOGIT_CASES[trial]
    logits = rng.normal(size=(n, k))
    if kind == "large":  # a hand-made log(softmax) overflows
        logits = 200.0 * logits
    if kind == "ties":  # small whole numbers: several classes share the largest logit
        logits = np.round(logits)
    labels = rng.integers(0, k, size=n)
    labels[0] = k - 1  # the last class is always present
    return jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.int32)


def _jitted_comparison(fn: Fn, reference: Fn, seed: int) -> str:
    """compare_with_reference on jitted functions: one compile per shape instead of per op."""
    import jax

    what = compare_with_reference(jax.jit(fn), jax.jit(reference), _logits_and_labels,
                                  trials=len(_LOGIT_CASES), jit=False, rtol=1e-4, atol=1e-5,
                                  rng=np.random.default_rng(seed))
    return what + " under jax.jit"


def _check_loss(fn: Fn) -> str:
    import jax

    what = _jitted_comparison(fn, training.cross_entropy_loss, 4002)
    rng = np.random.default_rng(4003)
    student, reference = (jax.jit(jax.grad(f)) for f in (fn, training.cross_entropy_loss))
    for trial in (0, 2, 4):  # training differentiates the loss: compare its gradient too
        logits, labels = _logits_and_labels(rng, trial)
        got, expected = np.asarray(student(logits, labels)), np.asarray(reference(logits, labels))
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-6):
            raise CheckFailed(
                f"the loss is right, but its gradient with respect to the logits (shape "
                f"{tuple(logits.shape)}) differs from the reference: training follows the "
                "gradient, so compute the loss from the logits with JAX operations only (no "
                "stop_gradient)."
            )
    return (what + ", including logits of size ~200, one example and two classes; its "
            "gradient matches")


def cross_entropy_loss(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``cross_entropy_loss(logits (N, K), labels (N,)) -> mean loss (scalar)``."""
    return run_check(
        "cross_entropy_loss", student_fn, training.cross_entropy_loss,
        _check_loss,
        HINTS["cross_entropy_loss"],
        quiet=quiet,
    )


def accuracy(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``accuracy(logits (N, K), labels (N,)) -> float32 fraction correct``."""
    return run_check(
        "accuracy", student_fn, training.accuracy,
        lambda fn: _jitted_comparison(fn, training.accuracy, 4004)
        + ", including tied logits (the first largest is the prediction) and one example",
        HINTS["accuracy"],
        quiet=quiet,
    )


_BATCH_CASES = ((1000, 128), (60, 7), (10, 10), (257, 16), (5, 1), (96, 12))


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
        rows = np.asarray(out)
        if bs >= 7 and n // bs >= 2 and np.all(np.diff(np.sort(rows, axis=1), axis=1) == 1):
            raise CheckFailed(
                f"every batch holds consecutive examples for num_examples={n}, batch_size={bs}: "
                "shuffle the examples themselves, not only the order of the batches, so each "
                "epoch's batches are new random draws."
            )
    _expect_new_orders_and_remainders(fn)
    return (f"a shuffled permutation in full batches for {len(_BATCH_CASES)} sizes (batch size "
            "1 too); every example exactly once when nothing is left over; the key decides "
            "the order, a new key gives a new order and drops other examples; under "
            "jax.jit, and eagerly")


def _expect_new_orders_and_remainders(fn: Callable[..., Any]) -> None:
    """Different keys (epochs) give different orders, and over many keys the dropped
    remainder moves around: every example is used in some epoch."""
    import jax

    jitted = jax.jit(fn, static_argnums=(1, 2))
    n, bs = _BATCH_CASES[0]
    a, b = (np.asarray(jitted(jax.random.key(s), n, bs)) for s in (1, 2))
    if np.array_equal(a, b):
        raise CheckFailed("two different keys gave the same order: use the key you are given.")
    if np.array_equal(np.sort(a[0]), np.sort(b[0])):
        raise CheckFailed("two different keys gave the same examples in the first batch: each "
                          "epoch's batches must be a fresh random draw.")
    n, bs = 40, 16  # 8 of the 40 examples are left out in each epoch
    seen = np.zeros(n, bool)
    for epoch in range(12):
        seen[np.asarray(jitted(jax.random.fold_in(jax.random.key(5), epoch), n, bs)).ravel()] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise CheckFailed(
            f"over 12 epochs (12 keys) with num_examples={n}, batch_size={bs}, examples "
            f"{missing[:5].tolist()}{'...' if missing.size > 5 else ''} were never used: the "
            "dropped examples must be a random remainder of the permutation of all "
            "num_examples, not always the same last ones."
        )


def shuffled_batch_indices(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``shuffled_batch_indices(key, num_examples, batch_size) -> (B_count, B) ints``."""
    return run_check(
        "shuffled_batch_indices", student_fn, training.shuffled_batch_indices, _check_batches,
        HINTS["shuffled_batch_indices"],
        quiet=quiet,
    )


def _check_train_step(fn: Callable[..., Any]) -> str:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    rng = np.random.default_rng(4005)
    how = " under nnx.jit"  # the way the lesson runs it
    pairs = []
    for step in (fn, training.train_batch):
        model = training.MLP(784, 16, 4, rngs=nnx.Rngs(3))
        # Plain SGD: the update is -learning_rate * gradient, so a gradient off by any factor
        # shows (Adam divides it out).
        pairs.append((model, training.create_optimizer(model, optax.sgd(0.5)), nnx.jit(step)))
    for i, batch in enumerate((9, 9, 1)):
        x = jnp.asarray(rng.normal(size=(batch, 28, 28)), jnp.float32)  # as documented
        labels = rng.integers(0, 4, size=batch)
        labels[0] = 3  # the last class is present
        y = jnp.asarray(labels, jnp.int32)
        (m, o, student), (rm, ro, reference) = pairs
        before = jax.tree.map(np.asarray, nnx.state(m, nnx.Param))
        where = f"step {i + 1} (a batch of {batch}){how}"
        out = student(m, o, x, y)
        expected = reference(rm, ro, x, y)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"returned {type(out).__name__}{how}; expected a tuple "
                              "(loss, accuracy).")
        loss = expect_array(out[0], (), "float32", f"the loss{how}")
        acc = expect_array(out[1], (), "float32", f"the accuracy{how}")
        if not np.allclose(loss, expected[0], rtol=1e-4, atol=1e-5):
            raise CheckFailed(f"{where}: loss {float(loss):.5g}, expected "
                              f"{float(expected[0]):.5g} (the mean loss of the batch before "
                              "the update).")
        if not np.allclose(acc, expected[1]):
            raise CheckFailed(f"{where}: accuracy {float(acc):.4g}, expected "
                              f"{float(expected[1]):.4g} (of the batch, before the update).")
        after = jax.tree.map(np.asarray, nnx.state(m, nnx.Param))
        if all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                      jax.tree.leaves(after), strict=True)):
            raise CheckFailed(f"{where}: the parameters did not change: the optimizer must "
                              "update the model with the gradients.")
        wanted = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(rm, nnx.Param)))
        for a, b, old in zip(jax.tree.leaves(after), wanted, jax.tree.leaves(before),
                             strict=True):
            if not np.allclose(a, b, rtol=1e-4, atol=1e-5):
                moved, expected_move = a - old, b - old
                scale = float(np.sum(moved * expected_move) / max(np.sum(expected_move**2), 1e-30))
                parallel = np.allclose(moved, scale * expected_move, rtol=1e-3, atol=1e-6)
                if parallel and batch > 1 and abs(scale - batch) < 0.01 * batch:
                    why = (f" (every parameter moved {batch} times as far as expected, the "
                           f"batch size: that is the gradient of the loss summed over the "
                           "batch, not of its mean)")
                elif parallel and abs(scale - 1) > 0.01:
                    why = f" (every parameter moved {scale:.3g} times as far as expected)"
                else:
                    why = ""
                raise CheckFailed(f"{where}: the updated parameters differ from one step of the "
                                  f"optimizer on the gradient of the mean loss{why}.")
    return ("under nnx.jit, loss, accuracy and updated parameters match the reference "
            "over 3 steps of SGD on (B, 28, 28) images (batches of 9 and 1), which shows any "
            "error in the gradient")


def train_step(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``train_step(model, optimizer, images, labels) -> (loss, accuracy)``."""
    return run_check(
        "train_step", student_fn, training.train_batch, _check_train_step,
        HINTS["train_step"],
        quiet=quiet,
    )


# ---------------------------------------------------------------------------------------
# The FLOPs of one training step of an MLP
# ---------------------------------------------------------------------------------------


def reference_training_flops(layer_sizes: Any) -> int:
    """Matmul FLOPs of one training step, per example, for an MLP with ``layer_sizes``.

    ``layer_sizes = (d0, d1, ..., dL)``: L dense layers ``d_{i-1} -> d_i``. Forward: one
    ``(1, a) @ (a, b)`` product per layer, ``2 a b`` FLOPs. Backward: the weight gradient of
    every layer (``2 a b``) and the input gradient of every layer but the first (nothing
    needs the gradient with respect to the data). Biases and activations are not counted.
    """
    sizes = [int(d) for d in layer_sizes]
    layers = [2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False)]
    return 2 * sum(layers) + sum(layers[1:])


_FLOP_CASES = (
    (784, 512, 512, 10), (784, 10), (3, 5, 7, 2, 4), (1, 1, 1), (100, 1, 100),
    (40_001, 60_007, 30_011), (20, 30, 40),
)


def _forward_flops(sizes: Any) -> int:
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def _always_three_times_forward(fn: Fn) -> bool:
    """The probe behind naming that mistake: 3 x forward on every MLP of 2+ layers."""
    try:
        return all(fn(sizes) == 3 * _forward_flops(sizes) for sizes in _FLOP_CASES
                   if len(sizes) > 2)
    except Exception:
        return False


def _check_training_flops(fn: Fn) -> str:
    for sizes in _FLOP_CASES:
        for given in (sizes, list(sizes)):
            got = fn(given)
            expected = reference_training_flops(sizes)
            where = f"for layer sizes {given!r}"
            if isinstance(got, bool) or not isinstance(got, int | float | np.number) \
                    and not (hasattr(got, "shape") and np.shape(got) == ()):
                raise CheckFailed(f"returned {type(got).__name__} {where}; expected one number "
                                  "(a Python int).")
            value = got.item() if hasattr(got, "item") else got
            if value != expected:
                if len(sizes) > 2 and _always_three_times_forward(fn):
                    why = (" On every MLP of two layers or more it returned 3 x the forward "
                           "FLOPs: the first layer's input gradient (with respect to the "
                           "data) is never computed.")
                elif expected < 2**63 and value % 2**32 == expected % 2**32:
                    why = (" The low 32 bits are right: the count overflowed a 32-bit integer "
                           "(use Python ints, not jnp arrays).")
                else:
                    why = ""
                raise CheckFailed(f"{value!r} {where}, expected {expected}.{why}")
    return (f"exact for {len(_FLOP_CASES)} MLPs (one to four layers, sizes 1 to 60007, counts "
            "beyond 32-bit integers), given as tuples and lists")


def training_flops(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``training_flops(layer_sizes) -> int``: matmul FLOPs of one training step."""
    return run_check(
        "training_flops", student_fn, reference_training_flops, _check_training_flops,
        HINTS["training_flops"],
        quiet=quiet,
    )
