"""Tests for utils.plotting: the figures' content, the confusion matrix, bad inputs."""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from utils import plotting  # noqa: E402

RED = mcolors.to_rgba(plotting.WRONG_COLOR)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def texts_of(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, "expected a legend"
    return [t.get_text() for t in legend.get_texts()]


def test_import_does_not_import_jax():
    import subprocess

    code = "import sys, utils.plotting; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_style_applies_and_restores():
    before = plt.rcParams["axes.grid"]
    with plotting.style():
        assert plt.rcParams["axes.grid"] is True
        assert plt.rcParams["axes.spines.top"] is False
    assert plt.rcParams["axes.grid"] == before


@pytest.mark.parametrize(("ratio", "text"), [(3.24, "3.2x"), (0.05, "0.05x"), (48.4, "48x"),
                                             (1.0, "1.0x"), (0.5, "0.5x")])
def test_format_ratio(ratio, text):
    assert plotting.format_ratio(ratio) == text


# ---------------------------------------------------------------- image_grid


def test_image_grid_labels_under_images_and_layout():
    images = np.random.default_rng(0).random((10, 8, 8))
    fig = plotting.image_grid(images, labels=np.arange(10) % 3, ncols=4, title="digits")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 10  # the two empty slots of the 3x4 grid are removed
    assert [ax.get_xlabel() for ax in fig.axes] == [str(i % 3) for i in range(10)]
    assert fig._suptitle.get_text() == "digits"
    assert all(ax.get_images()[0].get_cmap().name == "gray" for ax in fig.axes)
    # grey-scale images share one colour scale
    assert {ax.get_images()[0].get_clim() for ax in fig.axes} == {(images.min(), images.max())}


def test_image_grid_predictions_colour_wrong_ones_red():
    images = np.zeros((4, 5, 5, 1), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1])
    predictions = np.array([0, 2, 2, 0])
    fig = plotting.image_grid(images, labels, predictions, class_names=["cat", "dog", "emu"])
    xlabels = [ax.xaxis.label for ax in fig.axes]
    assert [t.get_text() for t in xlabels] == ["cat/cat", "dog/emu", "emu/emu", "dog/cat"]
    wrong = [mcolors.to_rgba(t.get_color()) == RED for t in xlabels]
    assert wrong == [False, True, False, True]
    assert all(fig.axes[1].spines[s].get_visible() for s in ("left", "top"))
    assert not fig.axes[0].spines["left"].get_visible()


def test_image_grid_rgb_and_jax_like_input():
    images = np.random.default_rng(1).random((3, 4, 4, 3)).astype(np.float32)
    fig = plotting.image_grid(images)
    assert len(fig.axes) == 3
    assert fig.axes[0].get_images()[0].get_array().shape == (4, 4, 3)
    assert all(ax.get_xlabel() == "" for ax in fig.axes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": np.zeros((4, 4))}, "shape"),
        ({"images": np.zeros((2, 4, 4, 2))}, "shape"),
        ({"images": np.zeros((0, 4, 4))}, "empty"),
        ({"images": np.zeros((3, 4, 4)), "labels": [0, 1]}, "labels has 2"),
        ({"images": np.zeros((2, 4, 4)), "labels": [0, 1], "predictions": [1]},
         "predictions has 1"),
        ({"images": np.zeros((2, 4, 4)), "predictions": [0, 1]}, "need labels"),
        ({"images": np.zeros((2, 4, 4)), "labels": [0, 5], "class_names": ["a", "b"]},
         "class_names"),
        ({"images": np.zeros((2, 4, 4)), "labels": [0.5, 1]}, "whole class"),
        ({"images": np.zeros((2, 4, 4)), "ncols": 0}, "ncols"),
    ],
)
def test_image_grid_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plotting.image_grid(**kwargs)


# ---------------------------------------------------------------- plot_measurements


def test_plot_measurements_log_axes_series_and_labels():
    sizes = [64, 128, 256, 512]
    fig = plotting.plot_measurements(
        sizes, {"cpu": [1e-5, 8e-5, 6e-4, 5e-3], "gpu": [2e-5, 3e-5, None, 9e-5]},
        xlabel="n", ylabel="seconds", title="matmul")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "n" and ax.get_ylabel() == "seconds" and ax.get_title() == "matmul"
    assert legend_texts(ax) == ["cpu", "gpu"]
    lines = ax.get_lines()
    assert len(lines) == 2 and all(line.get_marker() not in (None, "None", "") for line in lines)
    np.testing.assert_array_equal(lines[0].get_xdata(), sizes)
    assert np.isnan(lines[1].get_ydata()[2])  # None is a gap, not a zero
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "128", "256", "512"]


def test_plot_measurements_linear_axes_allow_zero_and_negative():
    fig = plotting.plot_measurements(np.arange(3), {"delta": np.array([-1.0, 0.0, 2.0])},
                                     xlabel="step", ylabel="change", logx=False, logy=False)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"


@pytest.mark.parametrize(
    ("x", "series", "kw", "message"),
    [
        ([1, 2], {"a": [1, 2, 3]}, {}, "has 3 values but x has 2"),
        ([0, 2], {"a": [1, 2]}, {}, "positive"),
        ([1, 2], {"a": [1, -2]}, {}, "positive"),
        ([1, 2], {"a": [1, 0]}, {"logx": False}, "positive"),
        ([1, 2], {}, {}, "non-empty"),
        ([], {"a": []}, {}, "empty"),
        ([1, 2], {"a": ["x", "y"]}, {}, "numbers"),
    ],
)
def test_plot_measurements_bad_input(x, series, kw, message):
    with pytest.raises(ValueError, match=message):
        plotting.plot_measurements(x, series, xlabel="x", ylabel="y", **kw)


# ---------------------------------------------------------------- bar_speedups


def test_bar_speedups_texts_and_baseline_line():
    fig = plotting.bar_speedups(["jit", "vmap", "tiny"], [3.24, 12.0, 0.5], title="speed",
                                baseline_label="NumPy")
    (ax,) = fig.axes
    assert texts_of(ax) == ["3.2x", "12x", "0.5x"]
    assert len(ax.patches) == 3
    widths = sorted(p.get_width() for p in ax.patches)
    np.testing.assert_allclose(widths, [0.5, 3.24, 12.0])
    vertical = [line for line in ax.get_lines() if list(line.get_xdata()) == [1.0, 1.0]]
    assert len(vertical) == 1
    assert legend_texts(ax) == ["NumPy (1x)"]
    # first name on top
    ticks = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels()), strict=True))
    assert [ticks[y] for y in sorted(ticks, reverse=True)] == ["jit", "vmap", "tiny"]
    assert ax.get_title() == "speed" and "NumPy" in ax.get_xlabel()
    assert ax.get_xscale() == "linear"


def test_bar_speedups_log_scale_for_wide_spread_bars_from_one():
    fig = plotting.bar_speedups(["small", "big"], [0.02, 400.0])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert all(p.get_x() == pytest.approx(1.0) for p in ax.patches)
    assert texts_of(ax) == ["0.02x", "400x"]


@pytest.mark.parametrize(
    ("names", "ratios", "message"),
    [(["a"], [1.0, 2.0], "names has 1"), (["a", "b"], [1.0, 0.0], "positive"),
     (["a"], [float("nan")], "positive"), ([], [], "empty")],
)
def test_bar_speedups_bad_input(names, ratios, message):
    with pytest.raises(ValueError, match=message):
        plotting.bar_speedups(names, ratios)


# ---------------------------------------------------------------- roofline


def test_roofline_roof_ridge_and_points():
    peak, bandwidth = 1e11, 1e10  # ridge at 10 FLOP/byte
    fig = plotting.roofline(peak, bandwidth, {"add": (1 / 12, 5e8), "matmul": (170.0, 8e10)})
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    roof = ax.get_lines()[0]
    x, y = roof.get_xdata(), roof.get_ydata()
    np.testing.assert_allclose(y, np.minimum(peak, x * bandwidth))
    assert x.min() < 1 / 12 and x.max() > 170.0
    ridge_lines = [line for line in ax.get_lines()
                   if len(line.get_xdata()) == 2 and np.allclose(line.get_xdata(), 10.0)]
    assert ridge_lines, "the ridge point is marked with a vertical line"
    assert any("ridge" in t and "10 FLOP/byte" in t for t in texts_of(ax))
    labels = legend_texts(ax)
    assert labels[1:] == ["add", "matmul"]
    assert "100 GFLOP/s" in labels[0] and "10 GB/s" in labels[0]
    points = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0])
              for line in ax.get_lines() if line.get_label() in ("add", "matmul")}
    assert points == {"add": (pytest.approx(1 / 12), 5e8), "matmul": (170.0, 8e10)}
    low, high = ax.get_ylim()
    assert low < 5e8 and high > peak


@pytest.mark.parametrize(
    ("peak", "bandwidth", "points", "message"),
    [(0, 1e9, {}, "peak_flops"), (1e9, -1, {}, "peak_bytes_per_s"),
     (1e9, float("inf"), {}, "peak_bytes_per_s"),
     (1e9, 1e9, {"k": (0.0, 1e6)}, "intensity"), (1e9, 1e9, {"k": (1.0, -1)}, "FLOP/s"),
     (1e9, 1e9, {"k": (1.0,)}, "intensity, achieved"), (1e9, 1e9, [(1.0, 1.0)], "dict")],
)
def test_roofline_bad_input(peak, bandwidth, points, message):
    with pytest.raises(ValueError, match=message):
        plotting.roofline(peak, bandwidth, points)


# ---------------------------------------------------------------- plot_history


def test_plot_history_one_panel_per_metric_kind():
    history = {"train_loss": [1.0, 0.5, 0.3], "test_loss": [1.1, 0.7, 0.5],
               "train_accuracy": [0.6, 0.8, 0.9], "test_accuracy": [0.55, 0.75, 0.85]}
    fig = plotting.plot_history(history, title="MLP")
    assert len(fig.axes) == 2
    loss, accuracy = fig.axes
    assert loss.get_ylabel() == "loss" and accuracy.get_ylabel() == "accuracy"
    assert legend_texts(loss) == ["train_loss", "test_loss"]
    assert legend_texts(accuracy) == ["train_accuracy", "test_accuracy"]
    assert loss.get_xlabel() == "epoch"
    np.testing.assert_array_equal(loss.get_lines()[0].get_xdata(), [1, 2, 3])
    assert fig._suptitle.get_text() == "MLP"


def test_plot_history_single_series_and_uneven_lengths():
    fig = plotting.plot_history({"loss": np.linspace(2, 1, 50), "val_loss": [1.5, 1.2]})
    (ax,) = fig.axes
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [50, 2]


@pytest.mark.parametrize("history", [{}, {"loss": []}, [1.0, 2.0], {"loss": [[1.0], [2.0]]}])
def test_plot_history_bad_input(history):
    with pytest.raises(ValueError):
        plotting.plot_history(history)


# ---------------------------------------------------------------- confusion matrix


def numpy_confusion(labels, predictions, k):
    m = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(labels, predictions, strict=True):
        m[t, p] += 1
    return m


@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 3), (1000, 10)])
def test_confusion_matrix_matches_numpy_oracle(n, k):
    rng = np.random.default_rng(n)
    labels, predictions = rng.integers(0, k, n), rng.integers(0, k, n)
    got = plotting.confusion_matrix(labels, predictions, k)
    assert got.dtype == np.int64 and got.shape == (k, k)
    np.testing.assert_array_equal(got, numpy_confusion(labels, predictions, k))
    assert got.sum() == n


def test_confusion_matrix_rows_are_true_classes():
    m = plotting.confusion_matrix([0, 0, 0], [1, 1, 2], num_classes=3)
    assert m[0].tolist() == [0, 2, 1] and m[:, 0].tolist() == [0, 0, 0]


def test_confusion_matrix_empty_input_is_zeros():
    m = plotting.confusion_matrix(np.array([], dtype=int), np.array([], dtype=int), 4)
    assert m.shape == (4, 4) and m.sum() == 0


@pytest.mark.parametrize(
    ("labels", "predictions", "k", "message"),
    [([0, 1], [0], 2, "labels has 2"), ([0, 2], [0, 1], 2, r"\[0, 2\)"),
     ([0, 1], [0, -1], 2, "predictions"), ([0, 1], [0, 1], 0, "num_classes"),
     ([[0, 1]], [[0, 1]], 2, "one-dimensional"), ([0.5], [0], 2, "whole class")],
)
def test_confusion_matrix_bad_input(labels, predictions, k, message):
    with pytest.raises(ValueError, match=message):
        plotting.confusion_matrix(labels, predictions, k)


def test_plot_confusion_matrix_counts_in_cells():
    m = np.array([[5, 1], [0, 3]])
    fig = plotting.plot_confusion_matrix(m, class_names=["no", "yes"])
    (ax,) = fig.axes
    assert texts_of(ax) == ["5", "1", "0", "3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["no", "yes"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    # the darkest cell gets white text
    assert mcolors.to_rgba(ax.texts[0].get_color()) == mcolors.to_rgba("white")


def test_plot_confusion_matrix_normalized_rows():
    fig = plotting.plot_confusion_matrix(np.array([[3, 1], [0, 0]]), normalize=True)
    assert texts_of(fig.axes[0]) == ["0.75", "0.25", "0.00", "0.00"]
    assert "fraction" in fig.axes[0].get_title()


def test_plot_confusion_matrix_errors_only_scales_colours_to_the_errors():
    m = np.array([[980, 2, 7], [1, 1100, 0], [12, 3, 1010]])  # a good classifier
    fig = plotting.plot_confusion_matrix(m, errors_only=True)
    ax = fig.axes[0]
    coloured = ax.images[-1]
    assert coloured.get_clim() == (0, 12)  # the largest error, not the largest count
    data = coloured.get_array()
    assert np.ma.is_masked(data) and data.mask.tolist() == np.eye(3, dtype=bool).tolist()
    assert texts_of(ax) == ["980", "2", "7", "1", "1100", "0", "12", "3", "1010"]
    # diagonal texts stay black (on grey); the largest error gets white text
    assert mcolors.to_rgba(ax.texts[0].get_color()) == mcolors.to_rgba("black")
    assert mcolors.to_rgba(ax.texts[6].get_color()) == mcolors.to_rgba("white")
    assert len(fig.axes) == 2  # the colour bar
    assert "errors only" in ax.get_title()


def test_plot_confusion_matrix_errors_only_without_errors_or_one_class():
    for m in (np.diag([5, 7]), np.array([[4]])):
        fig = plotting.plot_confusion_matrix(m, errors_only=True)
        assert fig.axes[0].images[-1].get_clim()[1] > 0  # a valid scale even with no errors


def test_plot_confusion_matrix_default_scale_is_shared():
    m = np.array([[980, 2], [12, 1010]])
    fig = plotting.plot_confusion_matrix(m)
    assert fig.axes[0].images[-1].get_clim() == (0, 1010)
    assert len(fig.axes) == 1


@pytest.mark.parametrize(
    ("matrix", "names", "message"),
    [(np.zeros((2, 3)), None, "square"), (np.zeros(4), None, "square"),
     (np.array([[1, -1], [0, 1]]), None, "non-negative"), (np.eye(2), ["a"], "class_names")],
)
def test_plot_confusion_matrix_bad_input(matrix, names, message):
    with pytest.raises(ValueError, match=message):
        plotting.plot_confusion_matrix(matrix, class_names=names)


# ---------------------------------------------------------------- show_misclassified


def test_show_misclassified_shows_only_the_wrong_ones():
    images = np.arange(6 * 4 * 4, dtype=np.float32).reshape(6, 4, 4)
    labels = np.array([0, 1, 2, 3, 4, 5])
    predictions = np.array([0, 2, 2, 1, 4, 0])
    fig = plotting.show_misclassified(images, labels, predictions)
    assert [ax.get_xlabel() for ax in fig.axes] == ["1/2", "3/1", "5/0"]
    assert all(mcolors.to_rgba(ax.xaxis.label.get_color()) == RED for ax in fig.axes)
    np.testing.assert_array_equal(fig.axes[1].get_images()[0].get_array(), images[3])
    assert "3 of 3 misclassified" in fig._suptitle.get_text()


def test_show_misclassified_caps_the_number_shown():
    labels = np.zeros(40, dtype=int)
    fig = plotting.show_misclassified(np.zeros((40, 3, 3)), labels, labels + 1, max_images=5)
    assert len(fig.axes) == 5
    assert "5 of 40" in fig._suptitle.get_text()


def test_show_misclassified_says_so_when_none_are_wrong():
    fig = plotting.show_misclassified(np.zeros((3, 4, 4)), [1, 2, 3], [1, 2, 3])
    assert len(fig.axes) == 1
    assert texts_of(fig.axes[0]) == ["No misclassified images: all 3 predictions are correct."]


def test_show_misclassified_bad_input():
    with pytest.raises(ValueError, match="same length"):
        plotting.show_misclassified(np.zeros((3, 4, 4)), [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="max_images"):
        plotting.show_misclassified(np.zeros((1, 4, 4)), [1], [2], max_images=0)


def test_functions_do_not_call_show(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("plt.show() called")

    monkeypatch.setattr(plt, "show", fail)
    plotting.image_grid(np.zeros((2, 3, 3)))
    plotting.plot_measurements([1, 2], {"a": [1, 2]}, "x", "y")
    plotting.bar_speedups(["a"], [2.0])
    plotting.roofline(1e9, 1e9, {"k": (1.0, 1e8)})
    plotting.plot_history({"loss": [1.0]})
    plotting.plot_confusion_matrix(np.eye(2, dtype=int))
    plotting.show_misclassified(np.zeros((1, 3, 3)), [0], [0])
