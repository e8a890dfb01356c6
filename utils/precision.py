"""Float formats, mixed precision, loss scaling and reproducible runs (introduced in lesson 08).

Lesson 08_precision_reproducibility builds the small pieces by hand once; they live here so
tests and later lessons can import them:

- :func:`float_formats`, :func:`format_table`, :func:`bit_fields`: the floating-point
  formats the installed JAX has (float8 only where it exists), their range and precision
  from ``jnp.finfo``, and how one number is stored.
- :func:`round_to_bfloat16`: float32 -> the nearest bfloat16 value (round half to even), on
  the bits; :func:`round_mantissa` the same for any number of mantissa bits (10: TF32, the
  format of NVIDIA's tensor cores for float32 matmuls on A100 and newer).
  :func:`relative_error`: ``||approx - exact|| / ||exact||`` in float64.
- :class:`MixedPrecisionMLP`: lesson 04's MLP with a compute ``dtype`` and a parameter
  ``param_dtype`` (``utils.training.MLP`` is float32 only); its logits come out in float32.
- :func:`pick_compute_dtype`: bfloat16, float16 or float32 for the device at hand.
- Dynamic loss scaling for float16: :func:`update_loss_scale`, :func:`all_finite`,
  :class:`LossScaled` (a model wrapper holding the scale) and
  :func:`loss_scaled_batch_step` (a batch step for ``utils.training.fit``).
- Reproducibility: :func:`worker_key` (one key per (epoch, step, worker), none reused),
  :func:`first_difference` (the first leaf where two parameter trees differ, bit for bit),
  :func:`deterministic_ops_enabled` / :func:`set_deterministic_ops` (XLA's two GPU
  determinism flags, ``--xla_gpu_deterministic_ops`` and
  ``--xla_gpu_exclude_nondeterministic_ops``, in ``XLA_FLAGS`` before JAX starts),
  :func:`determinism_probe` / :func:`run_determinism_probe` (repeat operations that may be
  non-deterministic on a GPU, in a child process with or without the flag) and
  :func:`reproducibility_report`.

Importing this module imports JAX but does not start it, so ``set_deterministic_ops`` still
works after the import (it must run before JAX's first array or device query).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "CUDA_PACKAGES",
    "DETERMINISTIC_FLAG",
    "EXCLUDE_NONDETERMINISTIC_FLAG",
    "LossScaleVariable",
    "LossScaled",
    "MixedPrecisionMLP",
    "all_finite",
    "bit_fields",
    "cuda_library_versions",
    "determinism_probe",
    "deterministic_ops_enabled",
    "first_difference",
    "float_formats",
    "format_table",
    "loss_scaled_batch_step",
    "pick_compute_dtype",
    "relative_error",
    "reproducibility_report",
    "round_mantissa",
    "round_to_bfloat16",
    "run_determinism_probe",
    "set_deterministic_ops",
    "update_loss_scale",
    "worker_key",
]

#: The XLA flag that asks for run-to-run determinism on a GPU (CPU builds accept it and
#: ignore it). It is a superset of :data:`EXCLUDE_NONDETERMINISTIC_FLAG` (XLA pull request
#: 12520): it sets that flag too, and when that one was added (2024) it also stopped the
#: autotuner from timing candidate kernels; XLA's autotuner now takes its first candidate
#: under either flag.
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
#: The narrower flag that XLA's determinism page documents: deterministic kernels only
#: (scatter, GEMMs, convolutions, fused attention); compilation fails on select-and-scatter.
EXCLUDE_NONDETERMINISTIC_FLAG = "--xla_gpu_exclude_nondeterministic_ops=true"
_DETERMINISM_FLAG_NAMES = ("xla_gpu_deterministic_ops", "xla_gpu_exclude_nondeterministic_ops")

_BASE_FORMATS = ("float32", "bfloat16", "float16")
_FLOAT8_FORMATS = ("float8_e4m3fn", "float8_e5m2")  # OCP FP8 as on H100-class GPUs


# --------------------------------------------------------------------------------------
# Float formats
# --------------------------------------------------------------------------------------


def float_formats(include_float8: bool = True) -> list[np.dtype]:
    """The float formats of the lesson that the installed JAX has, widest first.

    float32, bfloat16, float16 and, with ``include_float8``, float8_e4m3fn and float8_e5m2
    (skipped where this JAX does not define them: float8 names differ between versions).
    """

    names = _BASE_FORMATS + (_FLOAT8_FORMATS if include_float8 else ())
    found = []
    for name in names:
        dtype = getattr(jnp, name, None)
        if dtype is None:
            continue
        try:
            jnp.finfo(dtype)
        except (TypeError, ValueError):  # pragma: no cover - a name without finfo support
            continue
        found.append(np.dtype(dtype))
    return found


def format_table(dtypes: Sequence[Any] | None = None) -> str:
    """A text table of float formats from ``jnp.finfo``: bits, exponent and mantissa bits,
    largest value, smallest normal and subnormal, machine epsilon and decimal digits.

    ``dtypes`` defaults to :func:`float_formats`. Raises ``ValueError`` for a non-float dtype.
    """

    dtypes = float_formats() if dtypes is None else list(dtypes)
    rows = [("format", "bits", "exponent", "mantissa", "largest", "smallest normal",
             "smallest subnormal", "epsilon", "digits")]
    for dtype in dtypes:
        try:
            info = jnp.finfo(dtype)
        except (TypeError, ValueError) as error:
            raise ValueError(f"format_table: {dtype!r} is not a floating point dtype "
                             "(expected e.g. jnp.float32 or jnp.bfloat16).") from error
        rows.append((np.dtype(dtype).name, str(info.bits), str(info.nexp), str(info.nmant),
                     f"{float(info.max):.4g}", f"{float(info.tiny):.4g}",
                     f"{float(info.smallest_subnormal):.4g}", f"{float(info.eps):.4g}",
                     str(info.precision)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def bit_fields(value: float, dtype: Any) -> str:
    """How ``value`` is stored in ``dtype``: ``"sign exponent mantissa"`` bits.

    e.g. ``bit_fields(1.0, jnp.bfloat16) == "0 01111111 0000000"``. The value is first
    rounded to ``dtype`` (to nearest, as ``astype`` does).
    """

    info = jnp.finfo(dtype)
    uint = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}[info.bits]
    bits = int(np.asarray(value, np.float64).astype(np.dtype(dtype)).reshape(1).view(uint)[0])
    text = format(bits, f"0{info.bits}b")
    return f"{text[0]} {text[1:1 + info.nexp]} {text[1 + info.nexp:]}"


def round_to_bfloat16(x: Any) -> Any:
    """Round float32 values to the nearest bfloat16 value, ties to even; float32 out.

    x: float32 array, any shape. Returns float32 of the same shape whose low 16 bits are
    zero (a bfloat16 value), NaN stays NaN, +-inf stay, float32 values beyond bfloat16's
    largest round to +-inf. Bit manipulation only: add ``0x7FFF`` plus the lowest kept bit,
    then clear the low 16 bits. Equal to ``x.astype(jnp.bfloat16).astype(jnp.float32)``.
    """

    x = jnp.asarray(x, jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    lowest_kept = (bits >> 16) & jnp.uint32(1)
    rounded = (bits + jnp.uint32(0x7FFF) + lowest_kept) & jnp.uint32(0xFFFF0000)
    return jnp.where(jnp.isnan(x), jnp.nan, jax.lax.bitcast_convert_type(rounded, jnp.float32))


def round_mantissa(x: Any, mantissa_bits: int) -> Any:
    """Round float32 values to ``mantissa_bits`` explicit mantissa bits, ties to even.

    x: float32 array, any shape; ``mantissa_bits`` from 1 to 23. Returns float32 of the same
    shape: the nearest value of a format with float32's 8 exponent bits and that many
    mantissa bits (7: bfloat16, the same as :func:`round_to_bfloat16`; 10: TF32, what
    NVIDIA's tensor cores round float32 inputs to). NaN stays NaN; values beyond the
    format's largest round to +-inf. Raises ``ValueError`` for other ``mantissa_bits``.
    """

    if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, int) or not (
            1 <= mantissa_bits <= 23):
        raise ValueError(f"round_mantissa: mantissa_bits must be an int from 1 to 23 (7: "
                         f"bfloat16, 10: TF32), got {mantissa_bits!r}.")
    x = jnp.asarray(x, jnp.float32)
    if mantissa_bits == 23:
        return x
    dropped = 23 - mantissa_bits
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    lowest_kept = (bits >> dropped) & jnp.uint32(1)
    half = jnp.uint32((1 << (dropped - 1)) - 1)
    mask = jnp.uint32((0xFFFFFFFF >> dropped) << dropped)
    rounded = (bits + half + lowest_kept) & mask
    return jnp.where(jnp.isnan(x), jnp.nan, jax.lax.bitcast_convert_type(rounded, jnp.float32))


def relative_error(approx: Any, exact: Any) -> float:
    """``||approx - exact|| / ||exact||`` (Frobenius norm over all entries), in float64.

    approx, exact: arrays of the same shape, any float dtypes (JAX or NumPy; bfloat16 too).
    Both are converted to float64 NumPy arrays first, so neither the difference nor the
    squares round or overflow in a narrow format. Returns a Python float.
    Raises ``ValueError`` when the shapes differ or ``exact`` is all zeros.
    """
    a = np.asarray(approx).astype(np.float64)
    e = np.asarray(exact).astype(np.float64)
    if a.shape != e.shape:
        raise ValueError(f"relative_error: approx has shape {a.shape} but exact has {e.shape}; "
                         "compare arrays of the same shape.")
    scale = np.linalg.norm(e.ravel())
    if scale == 0:
        raise ValueError("relative_error: exact is all zeros, so a relative error is undefined.")
    return float(np.linalg.norm((a - e).ravel()) / scale)


# --------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------


class MixedPrecisionMLP(nnx.Module):
    """Lesson 04's MLP ``784 -> hidden -> hidden -> 10`` with chosen dtypes (lesson 08).

    ``param_dtype``: the dtype the parameters are stored (and updated) in.
    ``dtype``: the dtype the layers compute in (inputs and parameters are cast to it).
    The logits are cast to float32 at the end, so the loss and its softmax run in float32.
    Input ``(N, 28, 28)`` or ``(N, 784)``; output float32 ``(N, dout)``. With both dtypes
    float32 it computes what ``utils.training.MLP`` computes, from the same initial
    parameters for the same ``rngs``.
    """

    def __init__(self, din: int = 784, dhidden: int = 512, dout: int = 10, *,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
            if not jnp.issubdtype(value, jnp.floating):
                raise ValueError(f"MixedPrecisionMLP: {name} must be a float dtype such as "
                                 f"jnp.float32 or jnp.bfloat16, got {value!r}.")
        self.dtype = np.dtype(dtype)
        self.param_dtype = np.dtype(param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)
        self.hidden1 = nnx.Linear(din, dhidden, **kw)
        self.hidden2 = nnx.Linear(dhidden, dhidden, **kw)
        self.out = nnx.Linear(dhidden, dout, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.hidden1(x))
        x = nnx.relu(self.hidden2(x))
        return self.out(x).astype(jnp.float32)


def pick_compute_dtype(device: Any = None) -> Any:
    """The compute dtype for mixed precision on ``device`` (default: JAX's first device).

    - TPU, or an NVIDIA GPU of compute capability 8.0 or newer (A100, L4, H100, ...):
      ``bfloat16`` (tensor cores for it; float32's range, so no loss scaling);
    - an older NVIDIA GPU (T4, V100: float16 tensor cores only): ``float16``, with loss
      scaling;
    - anything else (a CPU): ``float32``, where narrow formats are rarely faster.
    """

    from utils import environment

    device = jax.devices()[0] if device is None else device
    if device.platform == "tpu":
        return jnp.bfloat16
    if device.platform == "gpu":
        capability = environment.compute_capability(device)
        if capability is None:  # not CUDA (e.g. ROCm): bfloat16 is the safe mixed format
            return jnp.bfloat16
        return jnp.bfloat16 if capability >= (8, 0) else jnp.float16
    return jnp.float32


# --------------------------------------------------------------------------------------
# Dynamic loss scaling
# --------------------------------------------------------------------------------------


def update_loss_scale(scale: Any, good_steps: Any, finite: Any, period: int,
                      factor: float = 2.0, min_scale: float = 1.0) -> tuple[Any, Any]:
    """One update of a dynamic loss scale. Returns ``(new_scale, new_good_steps)``.

    scale: float32 scalar; good_steps: int32 scalar (finite steps since the last change);
    finite: bool scalar, whether this step's gradients were all finite; period: grow after
    this many finite steps in a row.

    - finite step: ``good_steps + 1``; when that reaches ``period`` the scale is multiplied
      by ``factor`` and the count restarts at 0;
    - non-finite step (the step is skipped): the scale is divided by ``factor`` (never below
      ``min_scale``) and the count restarts at 0.

    Works under ``jax.jit`` (``jnp.where``, no Python ``if`` on the traced values).
    """

    scale = jnp.asarray(scale, jnp.float32)
    good_steps = jnp.asarray(good_steps, jnp.int32)
    grow = good_steps + 1 >= period
    new_scale = jnp.where(finite, jnp.where(grow, scale * factor, scale),
                          jnp.maximum(scale / factor, jnp.float32(min_scale)))
    new_steps = jnp.where(jnp.logical_and(finite, jnp.logical_not(grow)), good_steps + 1, 0)
    return new_scale.astype(jnp.float32), new_steps.astype(jnp.int32)


def all_finite(tree: Any) -> Any:
    """A bool scalar: every entry of every leaf of ``tree`` is finite (no inf, no NaN)."""

    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


class LossScaleVariable(nnx.Variable):
    """State of a dynamic loss scale: not an ``nnx.Param``, so neither gradients nor the
    optimizer touch it."""


class LossScaled(nnx.Module):
    """A model together with its dynamic loss scale, for float16 training (lesson 08).

    Calls are passed to ``model``. ``scale`` (float32), ``good_steps`` and ``skipped`` (int32:
    steps skipped so far for non-finite gradients) are :class:`LossScaleVariable` s, so
    ``training.fit``, ``nnx.jit`` and the optimizer carry them along without treating them as
    parameters. ``period``: finite steps in a row before the scale doubles.
    """

    def __init__(self, model: nnx.Module, *, init_scale: float = 2.0**15, period: int = 2000):
        if not (isinstance(period, int) and not isinstance(period, bool) and period >= 1):
            raise ValueError(f"LossScaled: period must be a positive int, got {period!r}.")
        if not (np.isfinite(init_scale) and init_scale >= 1):
            raise ValueError("LossScaled: init_scale must be a finite number >= 1 "
                             f"(e.g. 2.0**15), got {init_scale!r}.")
        self.model = model
        self.period = period
        self.scale = LossScaleVariable(jnp.asarray(init_scale, jnp.float32))
        self.good_steps = LossScaleVariable(jnp.zeros((), jnp.int32))
        self.skipped = LossScaleVariable(jnp.zeros((), jnp.int32))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def loss_scaled_batch_step(
    update: Callable[..., tuple[Any, Any]] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
) -> Callable[..., tuple[Any, Any]]:
    """A batch step for ``utils.training.fit`` that trains a :class:`LossScaled` model.

    ``batch_step(model, optimizer, images, labels) -> (loss, accuracy)``: the loss (in
    float32) is multiplied by ``model.scale`` before differentiating, the gradients are
    divided by it; if any gradient is not finite the update is skipped (parameters and
    optimizer state stay as they were) and ``model.skipped`` counts it. Then
    ``update(scale, good_steps, finite, period)`` (default :func:`update_loss_scale`) sets
    the new scale. The returned loss is the unscaled one.
    """

    from utils import training

    update = update_loss_scale if update is None else update
    loss_fn = training.cross_entropy_loss if loss_fn is None else loss_fn

    def batch_step(model: Any, optimizer: Any, images: Any, labels: Any) -> tuple[Any, Any]:
        scale = model.scale[...]

        def scaled_loss(model: Any) -> tuple[Any, tuple[Any, Any]]:
            logits = model(images).astype(jnp.float32)
            loss = loss_fn(logits, labels)
            return loss * scale, (loss, logits)

        (_, (loss, logits)), grads = nnx.value_and_grad(scaled_loss, has_aux=True)(model)
        grads = jax.tree.map(lambda g: (g.astype(jnp.float32) / scale).astype(g.dtype), grads)
        finite = all_finite(grads)
        before = jax.tree.map(jnp.asarray, nnx.state((model, optimizer)))  # a snapshot
        optimizer.update(model, grads)
        after = nnx.state((model, optimizer))
        nnx.update((model, optimizer),
                   jax.tree.map(lambda new, old: jnp.where(finite, new, old), after, before))
        new_scale, new_steps = update(scale, model.good_steps[...], finite, model.period)
        model.scale[...] = jnp.asarray(new_scale, jnp.float32)
        model.good_steps[...] = jnp.asarray(new_steps, jnp.int32)
        model.skipped[...] = model.skipped[...] + jnp.logical_not(finite).astype(jnp.int32)
        return loss, training.accuracy(logits, labels)

    return batch_step


# --------------------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------------------


def worker_key(key: Any, epoch: Any, step: Any, worker: Any) -> Any:
    """The key of one worker at one step of one epoch, derived from ``key`` alone.

    key: a typed key (``jax.random.key``); epoch, step, worker: non-negative integers below
    2**31 (Python ints or int32 scalars, traced under ``jax.jit`` or ``jax.vmap`` too).
    Returns a typed key of shape ``()``. Every (epoch, step, worker) gets its own key, none
    equal to ``key``; the same arguments always give the same key; another ``key`` gives
    other keys. One ``jax.random.fold_in`` per index, each into the key the previous one
    gave: a path down a tree, so no packing of the three numbers into one can collide.
    """

    for index in (epoch, step, worker):
        key = jax.random.fold_in(key, index)
    return key


def _path_name(path: Any) -> str:

    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _leaf_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest ``|a - b|`` in float64; equal numbers (inf too) and NaN against NaN count 0,
    NaN against a number makes it NaN."""
    if a.shape != b.shape:
        return float("nan")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a64 - b64)
    diff = np.where((a64 == b64) | (nan_a & nan_b), 0.0, diff)
    diff = np.where(nan_a != nan_b, np.nan, diff)
    return float(np.max(diff, initial=0.0)) if not np.isnan(diff).any() else float("nan")


def first_difference(tree_a: Any, tree_b: Any) -> tuple[str, float] | None:
    """Compare two pytrees bit for bit; ``None`` when identical, else the first difference.

    Two leaves are identical when their shapes, dtypes and bytes are equal (so ``0.0`` and
    ``-0.0`` differ, and a NaN equals the same NaN). Returns ``(path, distance)`` for the
    first leaf (in ``jax.tree_util`` order) that is not identical: ``path`` is
    ``jax.tree_util.keystr(path, simple=True, separator="/")`` (e.g.
    ``"hidden1/kernel/value"``) and ``distance`` the largest ``|a - b|`` over that leaf's
    entries, in float64, where

    - entries that are equal numbers (``0.0`` and ``-0.0``, ``inf`` and ``inf``) count 0;
    - an entry where both are NaN counts 0 (whatever their bits);
    - an entry where exactly one is NaN makes the distance NaN;
    - the distance is NaN when the two leaves' shapes differ.

    So a leaf whose only change is a sign of zero, a NaN payload or its dtype has distance
    0.0. Raises ``ValueError`` when the two trees' structures differ.
    """

    leaves_a, struct_a = jax.tree_util.tree_flatten_with_path(tree_a)
    leaves_b, struct_b = jax.tree_util.tree_flatten_with_path(tree_b)
    if struct_a != struct_b:
        raise ValueError("first_difference: the two trees have different structures "
                         f"({len(leaves_a)} and {len(leaves_b)} leaves); compare trees of the "
                         "same model, e.g. nnx.state(model_a, nnx.Param) and "
                         "nnx.state(model_b, nnx.Param).")
    for (path, a), (_, b) in zip(leaves_a, leaves_b, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes():
            continue
        return _path_name(path), _leaf_distance(a, b)
    return None


def _flag_value(token: str, name: str) -> bool | None:
    """The value XLA reads from one ``XLA_FLAGS`` token for the bool flag ``name``, or None
    when the token is another flag. Like XLA's parser: a bare flag is true, ``=true`` /
    ``=1`` true and ``=false`` / ``=0`` false (case does not matter)."""
    prefix = "--" + name
    if not token.startswith(prefix):
        return None
    rest = token[len(prefix):]
    if rest == "":
        return True
    if not rest.startswith("="):  # a longer flag name that begins the same way
        return None
    value = rest[1:].lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    return None  # XLA refuses to start with such a value


def deterministic_ops_enabled(flags: str | None = None) -> bool:
    """Whether ``flags`` (default: ``XLA_FLAGS``) asks XLA for deterministic GPU kernels.

    True when ``--xla_gpu_deterministic_ops`` or ``--xla_gpu_exclude_nondeterministic_ops``
    is on, written as XLA reads it: bare, ``=true`` or ``=1`` (``=false`` / ``=0`` turn it
    off; the last occurrence of a flag wins).
    """
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    state = dict.fromkeys(_DETERMINISM_FLAG_NAMES, False)
    for token in flags.split():
        for name in _DETERMINISM_FLAG_NAMES:
            value = _flag_value(token, name)
            if value is not None:
                state[name] = value
    return any(state.values())


def _flags_with(flags: str, enabled: bool, flag: str = DETERMINISTIC_FLAG) -> str:
    kept = [f for f in flags.split()
            if not any(_flag_value(f, name) is not None or f.startswith(f"--{name}=")
                       for name in _DETERMINISM_FLAG_NAMES)]
    return " ".join(kept + ([flag] if enabled else []))


def set_deterministic_ops(enabled: bool = True, *, flag: str = DETERMINISTIC_FLAG) -> str:
    """Ask XLA for deterministic GPU kernels (or stop asking) in ``XLA_FLAGS``; returns it.

    ``flag`` is :data:`DETERMINISTIC_FLAG` (``--xla_gpu_deterministic_ops=true``, the
    default and the broader one) or :data:`EXCLUDE_NONDETERMINISTIC_FLAG`
    (``--xla_gpu_exclude_nondeterministic_ops=true``, the one XLA's determinism page
    documents). ``enabled=False``
    removes both flags. XLA reads its flags once, when JAX starts its backend: call this
    before any cell that uses JAX (next to ``environment.configure_gpu_memory``). Asking for
    a change after JAX started raises ``environment.RestartKernelError``; asking for what is
    already set is harmless. On a CPU the flags are accepted and change nothing. On a GPU
    XLA then picks deterministic kernels (scatter-adds get slower) and refuses to compile
    operations that have none, such as max-pool gradients written with ``reduce_window``
    (``select_and_scatter``).
    """
    from utils import environment

    if not isinstance(enabled, bool):
        raise ValueError(f"set_deterministic_ops: enabled must be True or False, got {enabled!r}.")
    if flag not in (DETERMINISTIC_FLAG, EXCLUDE_NONDETERMINISTIC_FLAG):
        raise ValueError(f"set_deterministic_ops: flag must be precision.DETERMINISTIC_FLAG or "
                         f"precision.EXCLUDE_NONDETERMINISTIC_FLAG, got {flag!r}.")
    if deterministic_ops_enabled() == enabled:
        return os.environ.get("XLA_FLAGS", "")
    if environment.jax_started():
        raise environment.RestartKernelError(
            f"{flag.split('=')[0]} must be set before JAX starts, but JAX has already "
            "started in this kernel. Restart the kernel (Kernel > Restart Kernel, or Runtime > "
            "Restart session on Colab) and run this cell before any cell that uses JAX.")
    flags = _flags_with(os.environ.get("XLA_FLAGS", ""), enabled, flag)
    if flags:
        os.environ["XLA_FLAGS"] = flags
    else:
        os.environ.pop("XLA_FLAGS", None)
    return flags


def determinism_probe(size: int = 1 << 20, bins: int = 1000, repeats: int = 5,
                      timed: bool = True) -> dict[str, Any]:
    """Run operations that may be non-deterministic on a GPU ``repeats`` times; compare.

    - ``scatter_add``: ``size`` float32 values added into ``bins`` bins at random indices
      (``x.at[idx].add(v)``; on a GPU, atomic adds in whatever order threads finish);
    - ``sum``: ``jnp.sum`` of the same ``size`` values;
    - ``maxpool_grad``: the gradient of a 2x2 max pool (``select_and_scatter`` on a GPU);
      some settings refuse it, which is reported as an error instead of results.

    Returns a JSON-able dict: ``backend``, ``deterministic_flag`` and, per operation, either
    ``{"identical": bool, "distinct_results": int, "max_abs_diff": float, "median_s":
    float}`` (``median_s`` from ``timing.benchmark``; ``None`` with ``timed=False``) or
    ``{"error": "Type: message"}``.
    """
    from utils import timing
    from utils.exercises import summarize_error

    key = jax.random.key(0)
    k_idx, k_val, k_img = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (size,), 0, bins)
    values = jax.random.normal(k_val, (size,), jnp.float32)
    side = max(8, int(np.sqrt(size / 16)) // 2 * 2)
    images = jax.random.normal(k_img, (16, side, side, 1), jnp.float32)

    def maxpool_loss(x: Any) -> Any:
        pooled = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                       "VALID")
        return jnp.sum(pooled * pooled)

    ops = {
        "scatter_add": (jax.jit(lambda i, v: jnp.zeros(bins, jnp.float32).at[i].add(v)),
                        (idx, values)),
        "sum": (jax.jit(jnp.sum), (values,)),
        "maxpool_grad": (jax.jit(jax.grad(maxpool_loss)), (images,)),
    }
    results: dict[str, Any] = {"backend": jax.default_backend(),
                               "deterministic_flag": deterministic_ops_enabled()}
    for name, (fn, args) in ops.items():
        try:
            outs = [np.asarray(jax.block_until_ready(fn(*args))) for _ in range(repeats)]
            median_s = (timing.benchmark(fn, *args, repeats=5, name=name).median_s if timed
                        else None)
        except Exception as error:  # e.g. no deterministic kernel under the flag
            results[name] = {"error": summarize_error(error)}
            continue
        distinct = len({o.tobytes() for o in outs})
        diff = max(float(np.max(np.abs(o.astype(np.float64) - outs[0]))) for o in outs)
        results[name] = {"identical": distinct == 1, "distinct_results": distinct,
                         "max_abs_diff": diff, "median_s": median_s}
    return results


def run_determinism_probe(deterministic: bool, *, size: int = 1 << 20, repeats: int = 5,
                          flag: str = DETERMINISTIC_FLAG, timed: bool = True,
                          timeout: float = 300) -> dict[str, Any]:
    """:func:`determinism_probe` in a fresh Python process, with or without the flag.

    XLA's flags are fixed once JAX has started, so a notebook compares both settings by
    starting a child process for each (``python -m utils.precision``): the same
    ``XLA_FLAGS`` without either determinism flag, or with ``flag``
    (:data:`DETERMINISTIC_FLAG` or :data:`EXCLUDE_NONDETERMINISTIC_FLAG`). Running both
    settings this way compares like with like (the same start-up, the same state of the
    machine). ``timed=False`` skips the timing (the results are compared all the same).
    Raises ``RuntimeError`` with the child's last error lines if it fails or writes
    anything to stderr.
    """
    if flag not in (DETERMINISTIC_FLAG, EXCLUDE_NONDETERMINISTIC_FLAG):
        raise ValueError(f"run_determinism_probe: flag must be precision.DETERMINISTIC_FLAG or "
                         f"precision.EXCLUDE_NONDETERMINISTIC_FLAG, got {flag!r}.")
    env = dict(os.environ)
    flags = _flags_with(env.get("XLA_FLAGS", ""), deterministic, flag)
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with the notebook
    cmd = [sys.executable, "-m", "utils.precision", "--size", str(size),
           "--repeats", str(repeats)] + ([] if timed else ["--untimed"])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or done.stderr.strip():
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"the determinism probe (deterministic={deterministic}) failed with "
                           f"exit code {done.returncode}:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


#: pip packages that carry the CUDA libraries JAX's CUDA plugin loads (CUDA 12 and 13
#: names); a system-wide CUDA install (``jax[cuda12-local]``) has none of them.
CUDA_PACKAGES = (("CUDA runtime", ("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime")),
                 ("cuDNN", ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13")),
                 ("cuBLAS", ("nvidia-cublas-cu12", "nvidia-cublas")))


def cuda_library_versions() -> dict[str, str]:
    """``{"cuDNN": "nvidia-cudnn-cu12 9.19.0.56", ...}``: the CUDA, cuDNN and cuBLAS pip
    packages installed here, read with ``importlib.metadata`` (nothing is imported). Empty
    where none is installed (a CPU-only install, or CUDA from the system)."""
    import importlib.metadata

    found = {}
    for label, names in CUDA_PACKAGES:
        for name in names:
            try:
                found[label] = f"{name} {importlib.metadata.version(name)}"
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def reproducibility_report() -> str:
    """What a reproducible result should be published with. Starts JAX.

    Lesson 00's ``environment.report()`` (Python, platform, JAX, jaxlib, the CUDA plugin,
    Flax, Optax, NumPy, the NVIDIA driver and GPU where ``nvidia-smi`` answers, Colab or not,
    the devices), then the GPU's compute capability, the CUDA / cuDNN / cuBLAS packages
    (:func:`cuda_library_versions`), ``XLA_FLAGS`` and whether they ask for deterministic
    kernels, and the JAX settings that change numbers: the default matmul precision, 64-bit
    mode, the random number generator and ``jax_threefry_partitionable`` (which changes the
    random streams; on by default since JAX 0.5).
    """

    from utils import environment

    lines = [environment.report()]
    capability = environment.compute_capability()
    settings = {"compute capability": ("-" if capability is None
                                       else f"{capability[0]}.{capability[1]}")}
    settings.update(cuda_library_versions() or {"CUDA libraries (pip)": "-"})
    settings.update({
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") or "(none)",
        "deterministic GPU ops": "yes" if deterministic_ops_enabled() else "no",
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "jax_enable_x64": str(jax.config.jax_enable_x64),
        "jax_default_prng_impl": str(jax.config.jax_default_prng_impl),
        "jax_threefry_partitionable": str(jax.config.jax_threefry_partitionable),
    })
    width = max(len(k) for k in settings)
    lines += [f"{k:<{width}}  {v}" for k, v in settings.items()]
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run the determinism probe; print JSON.")
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--untimed", action="store_true", help="compare results only")
    args = parser.parse_args(argv)
    print(json.dumps(determinism_probe(size=args.size, repeats=args.repeats,
                                       timed=not args.untimed)))


if __name__ == "__main__":
    _main()
