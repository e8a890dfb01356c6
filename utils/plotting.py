"""Figures for the course: image grids, measurements, speed-ups, rooflines, training curves.

Introduced in lesson 01_gpu_basics (measurements, speed-ups, rooflines) and used again in
00_setup and 04 (image grids, training curves, confusion matrices). Matplotlib only: nothing
here imports JAX, and JAX arrays are accepted wherever an array is (they are converted with
``np.asarray``).

Every plotting function draws inside :func:`style` (one look for the whole course), returns
the :class:`matplotlib.figure.Figure` it made and never calls ``plt.show()``. The figure is
registered with pyplot, so in a notebook end the cell with ``plt.show()``, or assign the
result (``fig = plotting.roofline(...)``); leaving the returned figure as the cell's last
expression shows it twice. Bad input raises a ``ValueError`` that says what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, NullLocator
from numpy.typing import ArrayLike

__all__ = [
    "COURSE_STYLE",
    "WRONG_COLOR",
    "bar_speedups",
    "confusion_matrix",
    "format_ratio",
    "image_grid",
    "plot_confusion_matrix",
    "plot_history",
    "plot_measurements",
    "roofline",
    "show_misclassified",
    "style",
]

#: The course's matplotlib settings, applied by :func:`style` around every figure.
COURSE_STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 6,
    "image.interpolation": "nearest",
}

#: Colour of wrong predictions (labels and frames) in image grids.
WRONG_COLOR = "tab:red"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_MAX_WIDTH_IN = 12.0
_MAX_GRID_IMAGES = 256


@contextmanager
def style() -> Iterator[None]:
    """Context manager applying :data:`COURSE_STYLE`; use it for your own figures too::

        with plotting.style():
            fig, ax = plt.subplots()
    """
    with plt.rc_context(COURSE_STYLE):
        yield


def format_ratio(ratio: float) -> str:
    """A speed-up as written on bars: ``"0.05x"``, ``"3.2x"``, ``"48x"`` (lesson 01)."""
    if not math.isfinite(ratio):
        return f"{ratio}x"
    if ratio >= 10:
        return f"{ratio:.0f}x"
    if ratio >= 1:
        return f"{ratio:.1f}x"
    return f"{ratio:.2g}x"


def _engineering(value: float, unit: str) -> str:
    """``1.23e11, "FLOP/s"`` -> ``"123 GFLOP/s"`` (three significant digits)."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


# ---------------------------------------------------------------------------- validation


def _vector(values: Any, what: str) -> np.ndarray:
    """``values`` as a 1-D float array (None -> NaN), or a ValueError naming ``what``."""
    try:
        if hasattr(values, "__array__"):
            array = np.asarray(values, dtype=float)
        else:
            array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be a sequence of numbers ({error}).") from None
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{what} is empty: there is nothing to plot.")
    return array


def _positive(array: np.ndarray, what: str, *, allow_nan: bool = False) -> None:
    finite = array[~np.isnan(array)] if allow_nan else array
    if not allow_nan and np.isnan(array).any():
        raise ValueError(f"{what} contains NaN.")
    if np.any(~np.isfinite(finite)) or np.any(finite <= 0):
        bad = finite[~np.isfinite(finite) | (finite <= 0)][0]
        raise ValueError(
            f"{what} must be positive and finite on a log axis, but contains {bad!r}."
        )


def _positive_number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what} must be a positive finite number, got {value!r}.")
    return number


def _int_vector(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional (N,), got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.number) and np.all(array == np.round(array))):
            raise ValueError(f"{what} must hold whole class indices, got dtype {array.dtype}.")
    return array.astype(np.int64)


def _images(images: ArrayLike) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            "images must have shape (N, H, W) or (N, H, W, C) with C in {1, 3, 4}, got shape "
            f"{array.shape}; for one image use images[None]."
        )
    if array.shape[0] == 0:
        raise ValueError("images is empty (N = 0): there is nothing to show.")
    return array


def _class_name(index: int, class_names: Sequence[str] | None) -> str:
    return str(index) if class_names is None else str(class_names[index])


def _check_class_range(values: np.ndarray, class_names: Sequence[str] | None, what: str) -> None:
    if class_names is not None and values.size:
        if values.min() < 0 or values.max() >= len(class_names):
            raise ValueError(
                f"{what} holds class {int(values.min()) if values.min() < 0 else int(values.max())}"
                f", outside the {len(class_names)} class_names."
            )


# ---------------------------------------------------------------------------- images


def image_grid(
    images: ArrayLike,
    labels: ArrayLike | None = None,
    predictions: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """A grid of images with their labels under them (lessons 00 and 04).

    Args:
      images: ``(N, H, W)`` grey-scale or ``(N, H, W, C)`` with C in {1, 3, 4}; any dtype
        ``imshow`` accepts. Grey-scale images share one colour scale.
      labels: ``(N,)`` class indices, written under each image.
      predictions: ``(N,)`` predicted classes (needs ``labels``): each image is labelled
        ``"true/pred"`` and the wrong ones are drawn in :data:`WRONG_COLOR`.
      class_names: names indexed by class, used instead of the numbers.
      ncols: images per row (at most).

    Returns:
      The figure, with one Axes per image (label in ``ax.get_xlabel()``).
    """
    array = _images(images)
    n = array.shape[0]
    if n > _MAX_GRID_IMAGES:
        raise ValueError(f"{n} images is too many for one grid (at most {_MAX_GRID_IMAGES}); "
                         "pass a slice such as images[:32].")
    if not isinstance(ncols, int) or isinstance(ncols, bool) or ncols < 1:
        raise ValueError(f"ncols must be a positive whole number, got {ncols!r}.")
    if predictions is not None and labels is None:
        raise ValueError("predictions need labels to compare with: pass labels= as well.")
    label_array = None if labels is None else _int_vector(labels, "labels")
    pred_array = None if predictions is None else _int_vector(predictions, "predictions")
    for what, values in (("labels", label_array), ("predictions", pred_array)):
        if values is not None:
            if len(values) != n:
                raise ValueError(f"{what} has {len(values)} entries but there are {n} images.")
            _check_class_range(values, class_names, what)

    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    cell = min(1.4, _MAX_WIDTH_IN / cols)
    grey = array.ndim == 3
    vmin, vmax = (float(np.min(array)), float(np.max(array))) if grey else (None, None)
    with style():
        fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, (cell + 0.3) * rows
                                                      + (0.4 if title else 0.0)),
                                 squeeze=False, layout="constrained")
        for i, ax in enumerate(axes.flat):
            if i >= n:
                fig.delaxes(ax)
                continue
            ax.imshow(array[i], cmap="gray" if grey else None, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if label_array is None:
                continue
            true = _class_name(int(label_array[i]), class_names)
            if pred_array is None:
                ax.set_xlabel(true, fontsize=9)
                continue
            wrong = int(pred_array[i]) != int(label_array[i])
            ax.set_xlabel(f"{true}/{_class_name(int(pred_array[i]), class_names)}", fontsize=9,
                          color=WRONG_COLOR if wrong else "black")
            if wrong:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(WRONG_COLOR)
                    spine.set_linewidth(2)
        if title:
            fig.suptitle(title)
    return fig


def show_misclassified(
    images: ArrayLike,
    labels: ArrayLike,
    predictions: ArrayLike,
    class_names: Sequence[str] | None = None,
    max_images: int = 24,
    ncols: int = 8,
) -> Figure:
    """The images whose prediction is wrong, labelled ``"true/pred"`` in red (lesson 04).

    Args:
      images: ``(N, H, W)`` or ``(N, H, W, C)``.
      labels, predictions: ``(N,)`` class indices.
      max_images: show at most this many (the first ones); the title says how many are wrong.

    Returns:
      A figure from :func:`image_grid`, or, when every prediction is right, a figure with
      one Axes that says so.
    """
    array = _images(images)
    label_array = _int_vector(labels, "labels")
    pred_array = _int_vector(predictions, "predictions")
    n = array.shape[0]
    if len(label_array) != n or len(pred_array) != n:
        raise ValueError(f"images, labels and predictions must have the same length, got "
                         f"{n}, {len(label_array)} and {len(pred_array)}.")
    if not isinstance(max_images, int) or isinstance(max_images, bool) or max_images < 1:
        raise ValueError(f"max_images must be a positive whole number, got {max_images!r}.")
    wrong = np.flatnonzero(label_array != pred_array)
    if wrong.size == 0:
        with style():
            fig, ax = plt.subplots(figsize=(6.0, 1.2), layout="constrained")
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"No misclassified images: all {n} predictions are correct.",
                    ha="center", va="center", transform=ax.transAxes)
        return fig
    shown = wrong[:max_images]
    title = (f"{len(shown)} of {wrong.size} misclassified images (out of {n}); "
             "labels are true/predicted")
    return image_grid(array[shown], label_array[shown], pred_array[shown],
                      class_names=class_names, ncols=ncols, title=title)


# ---------------------------------------------------------------------------- measurements


def _ticks_at(axis: Any, values: np.ndarray) -> None:
    """Major ticks exactly at ``values`` (e.g. matrix sizes 64, 128, ...), no minor ticks."""
    axis.set_major_locator(FixedLocator(values))
    axis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def plot_measurements(
    x: Sequence[float] | ArrayLike,
    series: Mapping[str, Sequence[float] | ArrayLike],
    xlabel: str,
    ylabel: str,
    logx: bool = True,
    logy: bool = True,
    title: str | None = None,
) -> Figure:
    """Measured quantities against a size, one line with markers per series (lesson 01).

    Args:
      x: ``(M,)`` sizes (e.g. matrix sizes, bytes); positive on a log axis.
      series: name -> ``(M,)`` measured values (e.g. seconds, FLOP/s); ``None`` or NaN
        marks a point not measured. Positive on a log axis.
      logx, logy: logarithmic axes (the default; sizes usually grow geometrically).

    Returns:
      The figure, with one Axes and a legend naming each series.
    """
    xs = _vector(x, "x")
    if logx:
        _positive(xs, "x")
    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must be a non-empty dict of name -> values.")
    data = {}
    for name, values in series.items():
        ys = _vector(values, f"series {name!r}")
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} values but x has {len(xs)}.")
        if logy:
            _positive(ys, f"series {name!r}", allow_nan=True)
        data[name] = ys
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
        for i, (name, ys) in enumerate(data.items()):
            ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], label=str(name))
        if logx:
            ax.set_xscale("log")
            if len(xs) <= 12:
                _ticks_at(ax.xaxis, xs)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
        if title:
            ax.set_title(title)
    return fig


def bar_speedups(
    names: Sequence[str],
    ratios: Sequence[float] | ArrayLike,
    title: str | None = None,
    baseline_label: str = "baseline",
    log: bool | None = None,
) -> Figure:
    """Horizontal bars of speed-ups, each written on its bar (``"3.2x"``), a line at 1x (01, 02).

    Args:
      names: ``(K,)`` what each ratio measures, e.g. ``"jit vs eager"``.
      ratios: ``(K,)`` positive speed-ups (baseline time / new time); below 1 means slower.
      baseline_label: legend text of the line at 1x, e.g. ``"NumPy"``.
      log: logarithmic ratio axis, bars drawn from 1x; by default when the ratios span
        more than a factor of 100.

    Returns:
      The figure, with one Axes; bar texts are ``format_ratio(r)``.
    """
    labels = [str(n) for n in names]
    values = _vector(ratios, "ratios")
    if len(labels) != len(values):
        raise ValueError(f"names has {len(labels)} entries but ratios has {len(values)}.")
    if np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"ratios must be positive finite speed-ups, got {values.tolist()}.")
    if log is None:
        log = bool(values.max() / values.min() > 100)
    y = np.arange(len(values))[::-1]
    colors = ["tab:blue" if r >= 1 else "tab:orange" for r in values]
    with style():
        fig, ax = plt.subplots(figsize=(7.4, 1.0 + 0.45 * len(values)), layout="constrained")
        if log:
            ax.set_xscale("log")
            ax.barh(y, values - 1.0, left=1.0, color=colors, height=0.6)
            low, high = min(values.min(), 1.0) / 2.5, max(values.max(), 1.0) * 2.5
        else:
            ax.barh(y, values, color=colors, height=0.6)
            low, high = 0.0, max(values.max(), 1.0) * 1.18
        for yi, r in zip(y, values, strict=True):
            left_of_one = log and r < 1
            ax.text(r / 1.08 if left_of_one else (r * 1.08 if log else r + 0.01 * high), yi,
                    format_ratio(float(r)), va="center", ha="right" if left_of_one else "left")
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1.2,
                   label=f"{baseline_label} (1x)")
        ax.set_xlim(low, high)
        ax.set_yticks(y, labels)
        ax.grid(False, axis="y")
        ax.set_xlabel(f"speed-up over {baseline_label} (higher is faster)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        if title:
            ax.set_title(title)
    return fig


def roofline(
    peak_flops: float,
    peak_bytes_per_s: float,
    points: Mapping[str, tuple[float, float]],
    title: str | None = None,
) -> Figure:
    """A log-log roofline: attainable FLOP/s = min(peak, intensity x bandwidth) (lesson 01).

    Args:
      peak_flops: the compute roof in FLOP/s (in the course: the best matmul measured).
      peak_bytes_per_s: the memory roof in bytes/s (the best large copy measured).
      points: name -> ``(arithmetic intensity in FLOP/byte, achieved FLOP/s)``, one marker
        per measured kernel.

    Returns:
      The figure, with one Axes: the roof, the ridge point (where the two roofs meet, at
      ``peak_flops / peak_bytes_per_s`` FLOP/byte) marked, and the points.
    """
    flops = _positive_number(peak_flops, "peak_flops")
    bandwidth = _positive_number(peak_bytes_per_s, "peak_bytes_per_s")
    if not isinstance(points, Mapping):
        raise ValueError("points must be a dict of name -> (intensity, achieved FLOP/s).")
    checked: dict[str, tuple[float, float]] = {}
    for name, point in points.items():
        if not isinstance(point, Sequence | np.ndarray) or len(point) != 2:
            raise ValueError(f"points[{name!r}] must be (intensity, achieved FLOP/s), "
                             f"got {point!r}.")
        checked[name] = (_positive_number(point[0], f"the intensity of {name!r}"),
                         _positive_number(point[1], f"the achieved FLOP/s of {name!r}"))
    ridge = flops / bandwidth
    intensities = [i for i, _ in checked.values()] + [ridge]
    lo, hi = min(intensities) / 4, max(intensities) * 4
    xs = np.geomspace(lo, hi, 256)
    with style():
        fig, ax = plt.subplots(figsize=(8.4, 4.4), layout="constrained")
        ax.plot(xs, np.minimum(flops, xs * bandwidth), color="black", linewidth=2.2,
                label=f"roof: {_engineering(flops, 'FLOP/s')} peak,\n"
                      f"{_engineering(bandwidth, 'B/s')} memory")
        ax.axvline(ridge, color="gray", linestyle=":", linewidth=1.2)
        ax.plot([ridge], [flops], marker="o", color="black", linestyle="none")
        ax.annotate(f"ridge point\n{ridge:.3g} FLOP/byte", (ridge, flops),
                    textcoords="offset points", xytext=(6, -28), fontsize=9)
        for i, (name, (intensity, achieved)) in enumerate(checked.items()):
            ax.plot([intensity], [achieved], marker=_MARKERS[i % len(_MARKERS)],
                    linestyle="none", markersize=8, label=str(name))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ymin = min([achieved for _, achieved in checked.values()] + [lo * bandwidth])
        ax.set_ylim(ymin / 3, flops * 3)
        ax.set_xlim(lo, hi)
        ax.yaxis.set_major_formatter(EngFormatter(unit="FLOP/s"))
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("attainable FLOP/s")
        ax.text(0.02, 0.97, "memory-bound", transform=ax.transAxes, va="top", color="gray")
        ax.text(0.98, 0.03, "compute-bound", transform=ax.transAxes, ha="right", color="gray")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        ax.set_title(title or "Roofline")
    return fig


# ---------------------------------------------------------------------------- training


_SPLIT_PREFIXES = ("train_", "test_", "val_", "valid_", "validation_", "eval_")


def _metric_kind(name: str) -> str:
    for prefix in _SPLIT_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


def plot_history(history: Mapping[str, Sequence[float]], title: str | None = None) -> Figure:
    """Training curves against the epoch, one panel per kind of metric (lesson 04).

    Args:
      history: name -> ``(E,)`` one value per epoch, e.g. ``{"train_loss": [...],
        "test_loss": [...], "train_accuracy": [...], "test_accuracy": [...]}``. Names
        ``<split>_<metric>`` (split: train, test, val, valid, validation, eval) share the
        panel of ``<metric>``; series may have different lengths (epochs 1..E each).

    Returns:
      The figure, with one Axes per metric kind, in order of first appearance.
    """
    if not isinstance(history, Mapping) or not history:
        raise ValueError("history must be a non-empty dict of name -> values per epoch.")
    panels: dict[str, dict[str, np.ndarray]] = {}
    for name, values in history.items():
        ys = _vector(values, f"history[{name!r}]")
        panels.setdefault(_metric_kind(str(name)), {})[str(name)] = ys
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(min(4.6 * len(panels), 14), 3.6),
                                 squeeze=False, layout="constrained")
        for ax, (kind, curves) in zip(axes.flat, panels.items(), strict=True):
            for i, (name, ys) in enumerate(curves.items()):
                epochs = np.arange(1, len(ys) + 1)
                ax.plot(epochs, ys, marker=_MARKERS[i % len(_MARKERS)] if len(ys) <= 30 else None,
                        label=name)
            longest = max(len(ys) for ys in curves.values())
            if longest <= 12:
                ax.set_xticks(np.arange(1, longest + 1))
            ax.set_xlabel("epoch")
            ax.set_ylabel(kind.replace("_", " "))
            ax.set_title(kind.replace("_", " "))
            ax.legend()
        if title:
            fig.suptitle(title)
    return fig


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs (lesson 04).

    Args:
      labels, predictions: ``(N,)`` whole class indices in ``[0, num_classes)``.

    Returns:
      ``(num_classes, num_classes)`` int64 NumPy array; rows are true classes, columns
      predicted, so ``m[i, j]`` counts examples of class i predicted as j.
    """
    if not isinstance(num_classes, int | np.integer) or isinstance(num_classes, bool) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive whole number, got {num_classes!r}.")
    k = int(num_classes)
    true = _int_vector(labels, "labels")
    pred = _int_vector(predictions, "predictions")
    if len(true) != len(pred):
        raise ValueError(f"labels has {len(true)} entries but predictions has {len(pred)}.")
    for what, values in (("labels", true), ("predictions", pred)):
        if values.size and (values.min() < 0 or values.max() >= k):
            raise ValueError(f"{what} must lie in [0, {k}), got values from {values.min()} "
                             f"to {values.max()}.")
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def plot_confusion_matrix(
    matrix: ArrayLike,
    class_names: Sequence[str] | None = None,
    normalize: bool = False,
    title: str | None = None,
    errors_only: bool = False,
) -> Figure:
    """A confusion matrix as a heat map with the count (or row fraction) in each cell (04).

    Args:
      matrix: ``(K, K)`` non-negative counts, rows true classes, columns predicted (as
        :func:`confusion_matrix` returns).
      class_names: ``K`` names for the ticks.
      normalize: divide each row by its total, so a cell shows the fraction of that true
        class predicted as each class (rows of zeros stay zero).
      errors_only: colour the off-diagonal cells (the errors) only, on a scale from 0 to the
        largest error, with a colour bar; the diagonal (the correct predictions) is drawn in
        grey with its numbers. For a good classifier the diagonal is hundreds of times
        larger than any error, so on one shared scale every error looks like 0.

    Returns:
      The figure, with one Axes (and a colour bar with ``errors_only``); cell texts are
      counts, or fractions with two decimals. The coloured image is the Axes' last image.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"matrix must be square (K, K) with K >= 1, got shape {m.shape}.")
    if not np.issubdtype(m.dtype, np.number) or np.any(~np.isfinite(m)) or np.any(m < 0):
        raise ValueError("matrix must hold non-negative finite counts.")
    k = m.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"class_names has {len(class_names)} names but matrix is {k}x{k}.")
    if normalize:
        totals = m.sum(axis=1, keepdims=True).astype(float)
        shown = np.divide(m, totals, out=np.zeros((k, k)), where=totals > 0)
        texts = [[f"{v:.2f}" for v in row] for row in shown]
    else:
        shown = m.astype(float)
        texts = [[f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in row] for row in m]
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    size = min(max(3.5, 0.5 * k + 1.5), 11.0)
    diagonal = np.eye(k, dtype=bool)
    coloured = np.ma.masked_array(shown, mask=diagonal) if errors_only else shown
    top = float(coloured.max()) if not (errors_only and k == 1) else 0.0
    top = max(top if np.isfinite(top) else 0.0, 1e-12)
    with style():
        fig, ax = plt.subplots(figsize=(size + (1.0 if errors_only else 0.0), size),
                               layout="constrained")
        if errors_only:  # the diagonal in light grey, outside the colour scale
            ax.imshow(np.where(diagonal, 1.0, np.nan), cmap="Greys", vmin=0, vmax=5)
        image = ax.imshow(coloured, cmap="Blues" if not errors_only else "Reds", vmin=0,
                          vmax=top)
        if errors_only:
            fig.colorbar(image, ax=ax, shrink=0.8,
                         label="errors" if not normalize else "fraction of the true class")
        ax.grid(False)
        if k <= 30:
            threshold = top / 2
            for i in range(k):
                for j in range(k):
                    dark = shown[i, j] > threshold and not (errors_only and i == j)
                    ax.text(j, i, texts[i][j], ha="center", va="center",
                            fontsize=9 if k <= 12 else 7, color="white" if dark else "black")
        ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 3 else 0,
                      ha="right" if max(map(len, names)) > 3 else "center")
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        default = ("Confusion matrix (fraction of each true class)" if normalize
                   else "Confusion matrix (counts)")
        if errors_only:
            default += "; colour: errors only, diagonal (correct) in grey"
        ax.set_title(title or default)
    return fig
