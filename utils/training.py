"""Training helpers for Flax NNX models with an Optax optimizer (introduced in lesson 04).

Lesson 04 builds every piece by hand once (the MLP, the loss, the accuracy, the train step,
the shuffled batches); the later lessons (05_cnn, 06_multi_device) reuse them from here:

- :class:`MLP`: the lesson 04 model, ``784 -> hidden -> hidden -> 10`` with ReLU.
- :func:`cross_entropy_loss`, :func:`accuracy`: the loss and metric on integer labels.
- :func:`create_optimizer`: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
- :func:`train_batch`: one optimisation step on one batch (not jitted; the body).
- :func:`make_train_step`: that body jitted, taking the batch *by index* from a dataset
  already on the device, so no step copies data from the host.
- :func:`make_scan_epoch`: a whole epoch as one ``lax.scan`` (one dispatch per epoch; fast
  for MLPs, but slow for CNNs on CPU, so it is optional).
- :func:`shuffled_batch_indices`: a fresh permutation per epoch, cut into full batches.
- :func:`evaluate`: mean loss and accuracy over a dataset, in batches, on the device, in
  eval mode (:func:`eval_view`).
- :func:`fit`: the epoch loop with a progress bar and a history of loss/accuracy per epoch.
- :func:`validate_data`: clear ``ValueError`` for wrong shapes, dtypes or label ranges.
- :func:`as_float_images`: uint8 images to float32 in [0, 1], inside the compiled code.

Shapes: images ``(N, *image_shape)`` floating point, or uint8 in [0, 255] (kept on the
device as uint8, 4x smaller than float32, and converted to float32 in [0, 1] batch by batch
inside the jitted step and evaluation, bit for bit equal to ``utils.data``'s float images);
labels ``(N,)`` integers in ``[0, num_classes)``, logits ``(N, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

__all__ = [
    "MLP",
    "BatchStep",
    "accuracy",
    "as_float_images",
    "count_params",
    "create_optimizer",
    "cross_entropy_loss",
    "eval_view",
    "evaluate",
    "fit",
    "make_scan_epoch",
    "make_train_step",
    "shuffled_batch_indices",
    "train_batch",
    "validate_data",
]

#: ``batch_step(model, optimizer, images, labels) -> (loss, accuracy)``: one step, one batch.
Metrics = tuple[jax.Array, jax.Array]
BatchStep = Callable[[nnx.Module, nnx.Optimizer, jax.Array, jax.Array], Metrics]


#: ``_UINT8_TO_FLOAT[v] == np.float32(v) / np.float32(255)``: the exact float32 values of
#: ``utils.data.load(..., dtype=float)``. A table lookup, because XLA compiles ``x / 255``
#: into ``x * (1 / 255)``, which differs in the last bit for about half of the 256 values.
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255)


def as_float_images(images: jax.Array) -> jax.Array:
    """uint8 images in [0, 255] -> float32 in [0, 1]; any other dtype is returned unchanged.

    Any shape. The float32 values equal ``images.astype(np.float32) / np.float32(255)``
    exactly (NumPy's, so a dataset stored as uint8 trains bit for bit like the same dataset
    stored as float32). Meant to run inside jitted code, on one batch at a time (introduced
    for lesson 05_cnn's uint8 datasets; lesson 04 may use it too).
    """
    if images.dtype == jnp.uint8:
        return jnp.asarray(_UINT8_TO_FLOAT)[images.astype(jnp.int32)]
    return images


class MLP(nnx.Module):
    """A multilayer perceptron for 28x28 images (introduced in lesson 04).

    ``din -> dhidden -> dhidden -> dout``, ReLU between layers, no activation on the output:
    it returns logits. Input ``(N, 28, 28)`` or ``(N, 784)`` (flattened inside);
    output ``(N, dout)``.
    """

    def __init__(self, din: int = 784, dhidden: int = 512, dout: int = 10, *, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(din, dhidden, rngs=rngs)
        self.hidden2 = nnx.Linear(dhidden, dhidden, rngs=rngs)
        self.out = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.hidden1(x))
        x = nnx.relu(self.hidden2(x))
        return self.out(x)


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (all ``nnx.Param`` leaves) in ``model``."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy. logits ``(N, K)`` float, labels ``(N,)`` int -> scalar.

    Takes logits, not probabilities: ``log_softmax`` computed from logits is numerically
    stable for any logit size.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose largest logit is the label. ``(N, K), (N,)`` -> float32 scalar."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels, dtype=jnp.float32)


def create_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> nnx.Optimizer:
    """An optimizer holding ``tx``'s state for every ``nnx.Param`` of ``model``."""
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def train_batch(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    images: jax.Array,
    labels: jax.Array,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy_loss,
) -> tuple[jax.Array, jax.Array]:
    """One step on one batch: gradients of the loss, optimizer update in place.

    images ``(B, ...)``, labels ``(B,)``. Returns ``(loss, accuracy)`` of the batch,
    computed with the parameters *before* the update. Not jitted: it is the body that
    :func:`make_train_step` and :func:`make_scan_epoch` compile.
    """

    images = as_float_images(images)

    def loss_and_logits(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        logits = model(images)
        return loss_fn(logits, labels), logits

    (loss, logits), grads = nnx.value_and_grad(loss_and_logits, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, accuracy(logits, labels)


def make_train_step(batch_step: BatchStep = train_batch) -> Callable[..., Metrics]:
    """``train_step(model, optimizer, images, labels, indices) -> (loss, accuracy)``, jitted.

    ``images (N, ...)`` and ``labels (N,)`` are the whole dataset, already on the device;
    ``indices (B,)`` picks the batch, gathered inside the compiled step. So a step copies
    nothing from the host, and it compiles once for all batches of the same size. uint8
    images are converted to float32 in [0, 1] after the gather (:func:`as_float_images`).
    """

    @nnx.jit
    def train_step(model, optimizer, images, labels, indices):
        return batch_step(model, optimizer, as_float_images(images[indices]), labels[indices])

    return train_step


def make_scan_epoch(batch_step: BatchStep = train_batch) -> Callable[..., Metrics]:
    """``epoch(model, optimizer, images, labels, batches) -> (losses, accuracies)``, jitted.

    Runs one step per row of ``batches (num_batches, B)`` inside one ``lax.scan``: one
    dispatch for the whole epoch. Returns per-step losses and accuracies, each
    ``(num_batches,)``. Fast for MLPs; on CPU much slower than a step loop for CNNs.
    """

    @nnx.jit
    def scan_epoch(model, optimizer, images, labels, batches):
        graphdef, state = nnx.split((model, optimizer))

        def body(state, indices):
            model, optimizer = nnx.merge(graphdef, state)
            metrics = batch_step(model, optimizer, as_float_images(images[indices]),
                                 labels[indices])
            return nnx.state((model, optimizer)), metrics

        state, (losses, accuracies) = jax.lax.scan(body, state, batches)
        nnx.update((model, optimizer), state)
        return losses, accuracies

    return scan_epoch


def shuffled_batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """A random permutation of ``range(num_examples)`` cut into full batches, on the device.

    Returns int32 ``(num_examples // batch_size, batch_size)``: every index at most once;
    the last ``num_examples % batch_size`` of the permutation (the remainder) are dropped,
    so every batch has the same shape and the step compiles once.
    """
    num_batches = num_examples // batch_size
    if num_batches < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} examples.")
    perm = jax.random.permutation(key, num_examples)
    return perm[: num_batches * batch_size].reshape(num_batches, batch_size).astype(jnp.int32)


def validate_data(
    images: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    image_shape: Sequence[int] | None = None,
    name: str = "data",
) -> None:
    """Raise a ``ValueError`` that says what was expected when images/labels do not fit.

    Checks: images are a floating point or uint8 array ``(N, *image_shape)`` (any
    per-example shape of 1+ dims when ``image_shape`` is None); labels are integers ``(N,)`` in
    ``[0, num_classes - 1]``. Reads the labels' min and max (one small device sync).
    """
    images_shape = tuple(np.shape(images))
    labels_shape = tuple(np.shape(labels))
    expected = ("(N, " + ", ".join(str(d) for d in image_shape) + ")"
                if image_shape is not None else "(N, ...)")
    if len(images_shape) < 2:
        raise ValueError(f"{name}: images must have shape {expected} (a batch of examples), "
                         f"got shape {images_shape}.")
    if image_shape is not None and images_shape[1:] != tuple(image_shape):
        raise ValueError(f"{name}: images must have shape {expected}, got {images_shape}.")
    images_dtype = jnp.result_type(images)
    if not (jnp.issubdtype(images_dtype, jnp.floating) or images_dtype == jnp.uint8):
        raise ValueError(f"{name}: images must be floating point (e.g. float32 in [0, 1]) or "
                         f"uint8 in [0, 255], got dtype {images_dtype}.")
    if len(labels_shape) != 1 or labels_shape[0] != images_shape[0]:
        raise ValueError(f"{name}: labels must have shape ({images_shape[0]},) (one per image), "
                         f"got {labels_shape}.")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"{name}: labels must be integers in [0, {num_classes - 1}], "
                         f"got dtype {jnp.result_type(labels)}.")
    if labels_shape[0]:
        low, high = (int(v) for v in jax.device_get((jnp.min(labels), jnp.max(labels))))
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name}: labels must be in [0, {num_classes - 1}] "
                             f"({num_classes} classes), found values from {low} to {high}.")


@nnx.jit(static_argnames=("batch_size",))
def _evaluate(model, images, labels, *, batch_size):
    n = images.shape[0]
    num_batches = -(-n // batch_size)
    positions = jnp.arange(num_batches * batch_size).reshape(num_batches, batch_size)
    valid = positions < n
    indices = jnp.minimum(positions, n - 1)  # the last batch repeats example n-1, masked out

    def body(totals, batch):
        idx, mask = batch
        logits = model(as_float_images(images[idx]))
        y = labels[idx]
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = jnp.argmax(logits, axis=-1) == y
        loss_sum = jnp.sum(jnp.where(mask, per_example, 0.0))
        correct_sum = jnp.sum(jnp.where(mask, correct, False), dtype=jnp.float32)
        return (totals[0] + loss_sum, totals[1] + correct_sum), None

    zero = jnp.zeros((), jnp.float32)
    (loss_sum, correct_sum), _ = jax.lax.scan(body, (zero, zero), (indices, valid))
    return loss_sum / n, correct_sum / n


def evaluate(
    model: nnx.Module,
    images: ArrayLike,
    labels: ArrayLike,
    *,
    batch_size: int = 1000,
    num_classes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy of ``model`` on a dataset, in batches, on the device.

    images ``(N, ...)`` (float, or uint8 converted batch by batch), labels ``(N,)``. One
    compiled call (a ``lax.scan`` over batches of
    ``batch_size``; a short last batch is padded and masked), so memory stays bounded
    however large N is. Returns two float32 scalars ``(loss, accuracy)`` (device arrays:
    ``float()`` them to print). With ``num_classes`` the data is validated first.
    The model runs in eval mode (:func:`eval_view`: dropout off, BatchNorm on its running
    statistics), whatever mode ``model`` is in; ``model`` itself is not changed.
    """
    if num_classes is not None:
        validate_data(images, labels, num_classes=num_classes, name="evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    n = int(np.shape(images)[0])
    if n == 0:
        raise ValueError("evaluate: the dataset is empty.")
    return _evaluate(eval_view(model), jnp.asarray(images), jnp.asarray(labels),
                     batch_size=min(batch_size, n))


def eval_view(model: nnx.Module) -> nnx.Module:
    """``model`` in eval mode, sharing its variables (introduced for lesson 05_cnn).

    Every layer with a ``deterministic`` attribute (``nnx.Dropout``, random augmentation)
    turns it on and every ``use_running_average`` (``nnx.BatchNorm``) too, on a view: the
    caller's ``model`` keeps its mode. A model with neither (lesson 04's MLP) is returned
    as is.
    """
    return nnx.view(model, deterministic=True, use_running_average=True,
                    raise_if_not_found=False)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch")


def fit(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    num_classes: int = 10,
    image_shape: Sequence[int] | None = None,
    batch_step: BatchStep = train_batch,
    batch_indices: Callable[[jax.Array, int, int], jax.Array] = shuffled_batch_indices,
    scan: bool = False,
    progress: bool = True,
    eval_batch_size: int = 1000,
) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs`` epochs; return the history per epoch.

    The training set is moved to the device once (``jax.device_put``; uint8 images stay
    uint8 there and are converted per batch inside the step). Every epoch draws
    fresh shuffled batch indices on the device from ``jax.random.fold_in(key, epoch)``
    (``batch_indices(key, N, batch_size) -> (num_batches, batch_size)``) and runs either a
    Python loop of jitted steps (default) or, with ``scan=True``, the epoch as one
    ``lax.scan``. ``batch_step`` is the one-batch step (see :func:`train_batch`).

    Returns ``{"train_loss", "train_accuracy"}`` (means over the epoch's batches, taken while
    the model was changing) and, with ``test``, ``{"test_loss", "test_accuracy"}`` (the
    whole test set after the epoch), each a list of ``epochs`` floats. ``progress=False``
    turns the progress bar off (e.g. under tests).

    Modes (lesson 05): the steps run with ``model.train()`` (dropout on, BatchNorm on the
    batch's statistics and updating its running averages; nothing changes for a model
    without such layers); the test set is evaluated in eval mode (:func:`evaluate`). ``fit``
    returns with the model in eval mode, ready to predict. Dropout and augmentation layers
    draw their keys from the ``nnx.Rngs`` the model was built with, inside the jitted step.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    images, labels = train
    validate_data(images, labels, num_classes=num_classes, image_shape=image_shape, name="train")
    if test is not None:
        shape = tuple(np.shape(images))[1:] if image_shape is None else image_shape
        validate_data(*test, num_classes=num_classes, image_shape=shape, name="test")
    n = int(np.shape(images)[0])
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and the {n} training examples, "
                         f"got {batch_size}.")
    images, labels = jax.device_put((images, jnp.asarray(labels, jnp.int32)))
    if test is not None:
        test = jax.device_put((test[0], jnp.asarray(test[1], jnp.int32)))

    step = make_scan_epoch(batch_step) if scan else make_train_step(batch_step)
    history: dict[str, list[float]] = {"train_loss": [], "train_accuracy": []}
    if test is not None:
        history.update(test_loss=[], test_accuracy=[])
    bar = _progress(epochs, progress, "training" + (" (scan)" if scan else ""))
    model.train()
    for epoch in range(epochs):
        batches = batch_indices(jax.random.fold_in(key, epoch), n, batch_size)
        if scan:
            losses, accs = step(model, optimizer, images, labels, batches)
            loss_mean, acc_mean = jnp.mean(losses), jnp.mean(accs)
        else:
            metrics = [step(model, optimizer, images, labels, indices)
                       for indices in batches]  # iterating splits the rows on the device
            losses, accs = (jnp.stack(column) for column in zip(*metrics, strict=True))
            loss_mean, acc_mean = jnp.mean(losses), jnp.mean(accs)
        history["train_loss"].append(float(loss_mean))
        history["train_accuracy"].append(float(acc_mean))
        if test is not None:
            test_loss, test_acc = evaluate(model, *test, batch_size=eval_batch_size)
            history["test_loss"].append(float(test_loss))
            history["test_accuracy"].append(float(test_acc))
        if bar is not None:
            shown = {k: f"{v[-1]:.4f}" for k, v in history.items()}
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return history

