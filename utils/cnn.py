"""Convolutional networks for 28x28 digits: the pieces of lesson 05_cnn, as library code.

Lesson 05 builds each piece once by hand (as an exercise) and then uses these:

- :func:`conv_output_size`: the spatial size of a convolution's or pooling's output.
- :func:`same_padding`: the (low, high) padding XLA uses for ``padding="SAME"``.
- :func:`im2col`: the patches of an NHWC batch, one row per output pixel.
- :func:`conv2d_im2col`: a 2-D convolution as patches + one matmul, equal to
  :func:`conv2d` (``jax.lax.conv_general_dilated``).
- :func:`conv2d_flops`: the multiply-adds of a convolution, as FLOPs.
- :func:`max_pool`: max pooling; non-overlapping windows by a reshape and ``jnp.max`` (its
  gradient is elementwise), overlapping ones with ``jax.lax.reduce_window``.
- :func:`max_pool_reduce_window`: max pooling with ``jax.lax.reduce_window`` always (the
  exercise's way; lesson 05 times its gradient against :func:`max_pool`'s).
- :func:`random_translate`: a per-example random shift of a batch, drawn on the device.
- :class:`RandomTranslate`: that shift as an NNX layer, active in train mode only.
- :class:`CNN`: conv -> BatchNorm -> ReLU -> max-pool, twice, then dense -> ReLU ->
  dropout -> dense, for NHWC images.
- :class:`GlobalAveragePoolCNN`: the same network with global average pooling in place of
  flatten (its dense layer no longer grows with the image).
- :class:`Augmented`: a model with :class:`RandomTranslate` in front (train mode only).
- :func:`save_checkpoint`, :func:`restore_checkpoint`: a model's state with Orbax.
- :func:`checkpoint_manager`, :func:`save_training_state`, :func:`restore_training_state`:
  the whole training state (model, optimizer, step, RNG streams) with Orbax's
  ``CheckpointManager``, so an interrupted run resumes exactly; :func:`train_steps` runs
  any range of a run's steps with the batches the uninterrupted run would use.

Layouts: images NHWC ``(N, H, W, C)``; convolution kernels HWIO ``(KH, KW, C_in, C_out)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "CNN",
    "Augmented",
    "CheckpointError",
    "GlobalAveragePoolCNN",
    "RandomTranslate",
    "checkpoint_manager",
    "conv2d",
    "conv2d_flops",
    "conv2d_im2col",
    "conv_output_size",
    "im2col",
    "max_pool",
    "max_pool_reduce_window",
    "random_translate",
    "restore_checkpoint",
    "restore_training_state",
    "same_padding",
    "save_checkpoint",
    "save_training_state",
    "train_steps",
]

Pair = tuple[int, int]


def _pair(value: int | Sequence[int], what: str) -> Pair:
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}.")
    return int(pair[0]), int(pair[1])


def _check_padding(padding: str) -> str:
    if padding not in ("SAME", "VALID"):
        raise ValueError(f'padding must be "SAME" or "VALID", got {padding!r}.')
    return padding


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: str = "VALID") -> int:
    """Output length along one spatial axis of a convolution or pooling window (lesson 05).

    ``"VALID"`` (no padding): ``(size - kernel) // stride + 1`` windows that fit, 0 if none;
    ``"SAME"``: ``ceil(size / stride)`` (padding makes room for every stride position).
    """
    _check_padding(padding)
    if size < 0 or kernel < 1 or stride < 1:
        raise ValueError(f"need size >= 0, kernel >= 1, stride >= 1; got {size}, {kernel}, "
                         f"{stride}.")
    if padding == "SAME":
        return -(-size // stride)
    return max(0, (size - kernel) // stride + 1)


def same_padding(size: int, kernel: int, stride: int) -> Pair:
    """(low, high) zeros added along one axis for ``"SAME"``; the odd one goes high, as XLA."""
    out = conv_output_size(size, kernel, stride, "SAME")
    total = max(0, (out - 1) * stride + kernel - size)
    return total // 2, total - total // 2


def im2col(x: jax.Array, kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
           padding: str = "VALID") -> jax.Array:
    """Patches of ``x (N, H, W, C)``: ``(N, OH, OW, KH * KW * C)``, ordered (kh, kw, c).

    Row ``[n, i, j]`` holds the input window under output pixel ``(i, j)``, flattened in the
    same order as an HWIO kernel reshaped to ``(KH * KW * C, O)`` (lesson 05).
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    _check_padding(padding)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (N, H, W, C), got shape {tuple(x.shape)}.")
    _, h, w, _ = x.shape
    oh, ow = (conv_output_size(h, kh, sh, padding), conv_output_size(w, kw, sw, padding))
    if padding == "SAME":
        x = jnp.pad(x, ((0, 0), same_padding(h, kh, sh), same_padding(w, kw, sw), (0, 0)))
    columns = [x[:, i: i + (oh - 1) * sh + 1: sh, j: j + (ow - 1) * sw + 1: sw, :]
               for i in range(kh) for j in range(kw)]
    patches = jnp.stack(columns, axis=3)  # (N, OH, OW, KH * KW, C)
    return patches.reshape(*patches.shape[:3], -1)


def conv2d_im2col(x: jax.Array, w: jax.Array, stride: int | Sequence[int] = 1,
                  padding: str = "VALID") -> jax.Array:
    """A 2-D convolution as im2col + one matmul. ``x (N, H, W, C)``, ``w (KH, KW, C, O)``.

    Returns ``(N, OH, OW, O)``, equal to :func:`conv2d` (lesson 05, exercise 2's reference).
    """
    kh, kw, c, o = w.shape
    if x.shape[-1] != c:
        raise ValueError(f"x has {x.shape[-1]} channels but the kernel expects {c}.")
    patches = im2col(x, (kh, kw), stride, padding)
    return patches @ w.reshape(kh * kw * c, o)


def conv2d(x: jax.Array, w: jax.Array, stride: int | Sequence[int] = 1,
           padding: str = "VALID") -> jax.Array:
    """``jax.lax.conv_general_dilated`` on NHWC inputs and HWIO kernels (as ``nnx.Conv``)."""
    return jax.lax.conv_general_dilated(x, w, _pair(stride, "stride"), _check_padding(padding),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d_flops(x_shape: Sequence[int], w_shape: Sequence[int],
                 stride: int | Sequence[int] = 1, padding: str = "VALID") -> int:
    """FLOPs of one convolution's forward pass: 2 per multiply-add (lesson 05).

    ``2 * N * OH * OW * O * (KH * KW * C)``: every output value is a dot product of length
    ``KH * KW * C``. Biases and padding zeros are not subtracted.
    """
    n, h, w, c = x_shape
    kh, kw, _, o = w_shape
    sh, sw = _pair(stride, "stride")
    oh, ow = conv_output_size(h, kh, sh, padding), conv_output_size(w, kw, sw, padding)
    return 2 * n * oh * ow * o * kh * kw * c


def max_pool_reduce_window(x: jax.Array, window: int = 2,
                           stride: int | None = None) -> jax.Array:
    """Max over ``window x window`` windows of ``x (N, H, W, C)`` with ``lax.reduce_window``.

    ``stride`` defaults to ``window`` (no overlap); ``"VALID"``: rows/columns that do not
    fill a window are dropped. Returns ``(N, OH, OW, C)``. Its gradient is XLA's
    ``select_and_scatter``, which sends each window's gradient to one maximum; on the CPUs
    measured so far it took about 10x the reshaped pooling's gradient (lesson 05 times it).
    """
    stride = window if stride is None else stride
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1), "VALID")


def max_pool(x: jax.Array, window: int = 2, stride: int | None = None) -> jax.Array:
    """Max over ``window x window`` windows of ``x (N, H, W, C)``, ``"VALID"`` (lesson 05).

    ``stride`` defaults to ``window`` (no overlap). Rows/columns that do not fill a window
    are dropped. Returns ``(N, OH, OW, C)``, the same values as
    :func:`max_pool_reduce_window`.

    Without overlap the windows tile the (cropped) image, so the batch is reshaped to
    ``(N, OH, window, OW, window, C)`` and reduced with ``jnp.max``. Its gradient is
    elementwise (a comparison with the maximum: no scatter); where a window holds several
    equal maxima it is shared among them, where ``reduce_window``'s goes to one.
    Overlapping windows (``stride != window``) use ``reduce_window``.
    """
    stride = window if stride is None else stride
    if stride != window:
        return max_pool_reduce_window(x, window, stride)
    n, h, w, c = x.shape
    oh, ow = h // window, w // window
    x = x[:, : oh * window, : ow * window, :]
    return jnp.max(x.reshape(n, oh, window, ow, window, c), axis=(2, 4))


def random_translate(key: jax.Array, images: jax.Array, max_shift: int,
                     fill: float = 0.0) -> jax.Array:
    """Shift each image by its own random whole-pixel offset, filling with ``fill`` (lesson 05).

    ``images (N, H, W, C)``; every example gets its own ``(dy, dx)``, each uniform in
    ``[-max_shift, max_shift]``, drawn from ``key``. Pixels shifted out are lost; those
    shifted in are ``fill`` (MNIST's background is 0). Same shape and dtype. Jittable: the
    shifts are data, so a new key does not recompile.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}.")
    n, h, w, c = images.shape
    m = int(max_shift)
    shifts = jax.random.randint(key, (n, 2), -m, m + 1)
    padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=fill)

    def crop(image: jax.Array, shift: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (m - shift[0], m - shift[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, shifts)


class RandomTranslate(nnx.Module):
    """:func:`random_translate` as a layer: shifts in train mode, identity in eval mode.

    Draws a fresh key per call from the ``augment`` stream of the ``nnx.Rngs`` it is given
    (like ``nnx.Dropout`` with ``dropout``); ``model.eval()`` sets ``deterministic=True``.
    """

    def __init__(self, max_shift: int, *, rngs: nnx.Rngs, deterministic: bool = False):
        self.max_shift = max_shift
        self.deterministic = deterministic
        self.rngs = rngs["augment"].fork()

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view`` (e.g. ``utils.training.eval_view``), as ``nnx.Dropout``'s."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(self, images: jax.Array) -> jax.Array:
        if self.deterministic or self.max_shift == 0:
            return images
        return random_translate(self.rngs(), images, self.max_shift)


class CNN(nnx.Module):
    """A small CNN for NHWC images (lesson 05): returns logits ``(N, num_classes)``.

    ``conv1 (3x3, channels[0]) -> bn1 -> relu -> 2x2 pool -> conv2 (3x3, channels[1]) ->
    bn2 -> relu -> 2x2 pool -> flatten -> dense1 (hidden) -> relu -> dropout -> dense2``.
    Convolutions use ``"SAME"`` padding and no bias (BatchNorm's shift replaces it). Input
    ``(N, H, W, in_channels)`` with ``image_size == (H, W)``. ``pool(x, window)`` is the
    pooling, :func:`max_pool` by default (:func:`max_pool_reduce_window` gives the same
    values with the gradient XLA computes for ``reduce_window``).
    """

    def __init__(self, num_classes: int = 10, *, channels: Sequence[int] = (32, 64),
                 hidden: int = 256, dropout: float = 0.5, in_channels: int = 1,
                 image_size: Sequence[int] = (28, 28),
                 pool: Callable[[jax.Array, int], jax.Array] = max_pool, rngs: nnx.Rngs):
        c1, c2 = channels
        self.conv1 = nnx.Conv(in_channels, c1, (3, 3), padding="SAME", use_bias=False,
                              rngs=rngs)
        self.bn1 = nnx.BatchNorm(c1, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c2, momentum=0.9, rngs=rngs)
        h, w = image_size
        self.dense1 = nnx.Linear((h // 4) * (w // 4) * c2, hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.pool = pool

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.pool(nnx.relu(self.bn1(self.conv1(x))), 2)
        x = self.pool(nnx.relu(self.bn2(self.conv2(x))), 2)
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(nnx.relu(self.dense1(x)))
        return self.dense2(x)


class GlobalAveragePoolCNN(CNN):
    """:class:`CNN` with global average pooling in place of flatten (lesson 05).

    After the second block each of the ``channels[1]`` feature maps is averaged over its
    pixels, so ``dense1`` sees ``channels[1]`` numbers instead of
    ``(H // 4) * (W // 4) * channels[1]``: its parameter count no longer grows with the
    image size (Lin et al., 2014, "Network In Network", introduced the idea). Same
    arguments and layer names as :class:`CNN`.
    """

    def __init__(self, num_classes: int = 10, *, channels: Sequence[int] = (32, 64),
                 hidden: int = 256, dropout: float = 0.5, in_channels: int = 1,
                 image_size: Sequence[int] = (28, 28),
                 pool: Callable[[jax.Array, int], jax.Array] = max_pool, rngs: nnx.Rngs):
        super().__init__(num_classes, channels=channels, hidden=hidden, dropout=dropout,
                         in_channels=in_channels, image_size=image_size, pool=pool, rngs=rngs)
        self.dense1 = nnx.Linear(channels[1], hidden, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.pool(nnx.relu(self.bn1(self.conv1(x))), 2)
        x = self.pool(nnx.relu(self.bn2(self.conv2(x))), 2)
        x = jnp.mean(x, axis=(1, 2))  # (N, H', W', C) -> (N, C): one number per feature map
        x = self.dropout(nnx.relu(self.dense1(x)))
        return self.dense2(x)


class Augmented(nnx.Module):
    """``model`` with :class:`RandomTranslate` in front: augmented in train mode (lesson 05).

    The augmentation runs inside whatever jitted step calls the model, on the device, with
    a fresh key per call. In eval mode it is the plain model. Save ``.model``, not this.
    """

    def __init__(self, model: nnx.Module, max_shift: int, *, rngs: nnx.Rngs):
        self.translate = RandomTranslate(max_shift, rngs=rngs)
        self.model = model

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.model(self.translate(x))


def _saved_state(model: nnx.Module) -> nnx.State:
    """What a checkpoint holds: the parameters and the BatchNorm statistics (no RNG state)."""
    return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


def _check_metadata(path: Path, checkpointer: Any, target: Any) -> None:
    """Compare the stored arrays' names and shapes with the model's, before reading any."""
    if not (path / "_CHECKPOINT_METADATA").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no _CHECKPOINT_METADATA "
                              "file): an interrupted save, or another folder. Save it again "
                              "with save_checkpoint.")
    try:
        stored = checkpointer.metadata(path)
    except Exception as error:
        raise CheckpointError(f"{path} is not a complete checkpoint ({type(error).__name__}). "
                              "Save it again with save_checkpoint.") from None
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    flat_stored = {jax.tree_util.keystr(k): tuple(getattr(v, "shape", ()))
                   for k, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
    flat_target = {jax.tree_util.keystr(k): tuple(v.shape)
                   for k, v in jax.tree_util.tree_flatten_with_path(target)[0]}
    if flat_stored.keys() != flat_target.keys():
        missing = sorted(flat_target.keys() - flat_stored.keys())[:3]
        extra = sorted(flat_stored.keys() - flat_target.keys())[:3]
        raise CheckpointError(f"the checkpoint at {path} was saved from another architecture: "
                              f"missing {missing}, unexpected {extra}. Build the model as it was "
                              "when saved.")
    for name, shape in flat_target.items():
        if flat_stored[name] != shape:
            raise CheckpointError(f"the checkpoint at {path} does not fit this model: {name} is "
                                  f"{flat_stored[name]} there, {shape} here. Build the model "
                                  "with the sizes it was saved with.")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model (lesson 05)."""


def _checkpointer() -> Any:
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_checkpoint(directory: str | os.PathLike[str], model: nnx.Module, *,
                    overwrite: bool = False) -> Path:
    """Save ``model``'s whole state (parameters and BatchNorm statistics) with Orbax.

    ``directory`` is created; Orbax writes to a temporary folder and renames it when
    complete, so an interrupted save never leaves a checkpoint that looks whole. An existing
    checkpoint is replaced only with ``overwrite=True``. Returns the absolute path.
    """
    path = Path(directory).absolute()
    if path.exists():
        if not overwrite:
            raise CheckpointError(f"{path} already exists: pass overwrite=True to replace it, "
                                  "or choose another folder.")
    checkpointer = _checkpointer()
    checkpointer.save(path, nnx.to_pure_dict(_saved_state(model)), force=overwrite)
    checkpointer.wait_until_finished()
    checkpointer.close()
    return path


def restore_checkpoint(directory: str | os.PathLike[str], model: nnx.Module) -> nnx.Module:
    """Load a checkpoint saved by :func:`save_checkpoint` into ``model`` (in place); return it.

    ``model`` is a freshly built model of the same architecture: its structure tells Orbax
    the shapes and dtypes to restore. A missing, incomplete or mismatched checkpoint raises
    :class:`CheckpointError` with what to do.
    """
    path = Path(directory).absolute()
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: save one with save_checkpoint(path, "
                              "model) first, or check the folder name.")
    state = _saved_state(model)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          nnx.to_pure_dict(state))
    checkpointer = _checkpointer()
    try:
        _check_metadata(path, checkpointer, target)
        restored = checkpointer.restore(path, target)
    except CheckpointError:
        raise
    except Exception as error:  # Orbax raises several kinds; say it once, clearly
        message = " ".join(str(error).split())[:300]
        raise CheckpointError(f"could not restore the checkpoint at {path} into this model "
                              f"({type(error).__name__}: {message}). Is it complete, and was "
                              "it saved from a model of the same architecture?") from None
    finally:
        checkpointer.close()
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


# --- resumable training: the whole training state, with Orbax's CheckpointManager ----------


def train_steps(step: Callable[..., Any], model: nnx.Module, optimizer: nnx.Optimizer,
                images: jax.Array, labels: jax.Array, *, key: jax.Array, batch_size: int,
                start: int, stop: int) -> np.ndarray:
    """Run steps ``start, ..., stop - 1`` of a training run whose batches ``key`` fixes.

    Step ``s`` trains on batch ``s % B`` of epoch ``s // B`` (``B = N // batch_size``
    batches per epoch), each epoch shuffled as :func:`utils.training.fit` shuffles it
    (``shuffled_batch_indices(fold_in(key, epoch), N, batch_size)``). So a run cut at any
    step and resumed from a checkpoint of that step sees the batches the uninterrupted run
    sees (lesson 05). ``step(model, optimizer, images, labels, indices) -> (loss, accuracy)``
    is a jitted train step (:func:`utils.training.make_train_step`); ``images (N, ...)`` and
    ``labels (N,)`` are on the device. The model is put in train mode. Returns the
    ``stop - start`` losses as NumPy (one transfer, after the last step).
    """
    from utils import training

    if not 0 <= start <= stop:
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}.")
    n = int(images.shape[0])
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} examples.")
    model.train()
    losses, batches, epoch = [], None, -1
    for s in range(start, stop):
        if s // per_epoch != epoch:
            epoch = s // per_epoch
            batches = training.shuffled_batch_indices(jax.random.fold_in(key, epoch), n,
                                                      batch_size)
        loss, _ = step(model, optimizer, images, labels, batches[s % per_epoch])
        losses.append(loss)
    return np.asarray(jnp.stack(losses)) if losses else np.zeros((0,), np.float32)


def checkpoint_manager(directory: str | os.PathLike[str], *, max_to_keep: int = 2) -> Any:
    """An Orbax ``CheckpointManager`` for one training run's states (lesson 05).

    Each save is a folder named by its step under ``directory`` (created if missing); only
    the newest ``max_to_keep`` are kept. Use it with :func:`save_training_state` and
    :func:`restore_training_state`; ``close()`` it when done.
    """
    import orbax.checkpoint as ocp

    if max_to_keep < 1:
        raise ValueError(f"max_to_keep must be at least 1, got {max_to_keep}.")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _is_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)


def _storable(tree: Any) -> Any:
    """Typed PRNG keys as their raw key data (uint32 arrays), which Orbax can store."""
    return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree)


def save_training_state(manager: Any, step: int, model: nnx.Module,
                        optimizer: nnx.Optimizer) -> None:
    """Save everything needed to resume training at ``step`` (lesson 05); wait until written.

    The state of ``model`` and ``optimizer`` together: parameters, BatchNorm statistics,
    the state of the RNG streams (dropout, augmentation), the optimizer's moments and its
    step count (which drives a learning-rate schedule). The data order is not state: with
    :func:`train_steps` it follows from the run's key and the step.
    """
    import orbax.checkpoint as ocp

    tree = _storable(nnx.to_pure_dict(nnx.state((model, optimizer))))
    manager.save(int(step), args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()


def restore_training_state(manager: Any, model: nnx.Module, optimizer: nnx.Optimizer,
                           step: int | None = None) -> int:
    """Load a state saved by :func:`save_training_state` into ``model`` and ``optimizer``.

    ``step`` defaults to the newest saved one. ``model`` and ``optimizer`` are freshly built
    as for the run (same architecture and optimizer): they tell Orbax the shapes and dtypes.
    Returns the step to resume from. No checkpoint, or one that does not fit, raises
    :class:`CheckpointError` with what to do.
    """
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else int(step)
    if step is None or step not in manager.all_steps():
        raise CheckpointError(f"no training state {'' if step is None else f'of step {step} '}"
                              f"in {manager.directory}: save one with save_training_state "
                              f"first (saved steps: {list(manager.all_steps())}).")
    state = nnx.state((model, optimizer))
    pure = nnx.to_pure_dict(state)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _storable(pure))
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as error:  # Orbax raises several kinds; say it once, clearly
        message = " ".join(str(error).split())[:300]
        raise CheckpointError(f"could not restore step {step} from {manager.directory} into "
                              f"this model and optimizer ({type(error).__name__}: {message}). "
                              "Build them as they were when saved.") from None
    restored = jax.tree.map(
        lambda mine, saved: jax.random.wrap_key_data(saved, impl=jax.random.key_impl(mine))
        if _is_key(mine) else saved, pure, restored)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update((model, optimizer), state)
    return step
