"""Checkers of lesson 05_cnn: student answers written differently pass, typical wrong answers
FAIL with a message that says what is wrong. (The reference passing, the stable PASSED line,
blank and crashing answers are tested for every checker in test_checks_common.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from checker_helpers import expect_failed, run_checker
from flax import nnx

from utils import cnn
from utils.checks import lesson05_cnn as check

# --- 1. conv_output_size ---------------------------------------------------------------------


def test_conv_output_size_written_differently_passes(capsys):
    import math

    def student(size, kernel, stride, padding):
        return math.ceil(size / stride) if padding == "SAME" else \
            math.floor((size - kernel) / stride) + 1

    line, use = run_checker(capsys, check.conv_output_size, student)
    assert line.startswith("PASSED conv_output_size:") and use is student


def test_conv_output_size_ignoring_stride_for_same_fails(capsys):
    def wrong(size, kernel, stride, padding):
        return size if padding == "SAME" else (size - kernel) // stride + 1

    expect_failed(capsys, check.conv_output_size, "conv_output_size", wrong, "stride=2",
                  "expected")


def test_conv_output_size_true_division_fails(capsys):
    def wrong(size, kernel, stride, padding):
        return -(-size // stride) if padding == "SAME" else (size - kernel) / stride + 1

    expect_failed(capsys, check.conv_output_size, "conv_output_size", wrong,
                  "but an int was expected")


def test_conv_output_size_off_by_one_valid_fails(capsys):
    def wrong(size, kernel, stride, padding):
        return -(-size // stride) if padding == "SAME" else (size - kernel + 1) // stride

    expect_failed(capsys, check.conv_output_size, "conv_output_size", wrong, "VALID")


# --- 2. conv2d_im2col ------------------------------------------------------------------------


def _im2col_conv(x, w, stride, padding, *, symmetric=False, channel_first=False):
    kh, kw, c, o = w.shape
    (sh, sw), (n, h, wd, _) = stride, x.shape
    oh, ow = (cnn.conv_output_size(h, kh, sh, padding), cnn.conv_output_size(wd, kw, sw, padding))
    if padding == "SAME":
        if symmetric:  # the usual mistake: k // 2 on both sides
            pads = ((kh // 2, kh // 2), (kw // 2, kw // 2))
        else:
            pads = (cnn.same_padding(h, kh, sh), cnn.same_padding(wd, kw, sw))
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    slices = [x[:, i: i + (oh - 1) * sh + 1: sh, j: j + (ow - 1) * sw + 1: sw, :]
              for i in range(kh) for j in range(kw)]
    axis = 4 if channel_first else 3  # channel_first: patches ordered (c, kh, kw)
    patches = jnp.stack(slices, axis=axis).reshape(n, oh, ow, kh * kw * c)
    return patches @ w.reshape(kh * kw * c, o)


def test_conv2d_im2col_student_version_passes(capsys):
    line, use = run_checker(capsys, check.conv2d_im2col, _im2col_conv)
    assert line.startswith("PASSED conv2d_im2col:") and use is _im2col_conv


def test_conv2d_im2col_symmetric_same_padding_fails(capsys):
    def wrong(x, w, stride, padding):
        return _im2col_conv(x, w, stride, padding, symmetric=True)

    expect_failed(capsys, check.conv2d_im2col, "conv2d_im2col", wrong, "SAME")


def test_conv2d_im2col_patches_in_wrong_order_fail(capsys):
    def wrong(x, w, stride, padding):
        return _im2col_conv(x, w, stride, padding, channel_first=True)

    expect_failed(capsys, check.conv2d_im2col, "conv2d_im2col", wrong,
                  "differs from lax.conv_general_dilated")


def test_conv2d_im2col_calling_the_convolution_fails(capsys):
    def cheat(x, w, stride, padding):
        return jax.lax.conv_general_dilated(x, w, stride, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    expect_failed(capsys, check.conv2d_im2col, "conv2d_im2col", cheat,
                  "contains a convolution primitive")


# --- 3. max_pool -----------------------------------------------------------------------------


def test_max_pool_by_reshape_passes(capsys):
    def student(x, window):
        n, h, w, c = x.shape
        oh, ow = h // window, w // window
        x = x[:, : oh * window, : ow * window]
        return x.reshape(n, oh, window, ow, window, c).max(axis=(2, 4))

    line, use = run_checker(capsys, check.max_pool, student)
    assert line.startswith("PASSED max_pool:") and use is student


def test_max_pool_starting_from_zero_fails(capsys):
    def wrong(x, window):
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, 0.0, jax.lax.max, dims, dims, "VALID")

    line = expect_failed(capsys, check.max_pool, "max_pool", wrong, "negative",
                         "Every output is 0, though every input is below 0")
    assert "-inf" not in line and "jnp." not in line  # what it saw, not the line to write


def test_average_pool_fails(capsys):
    def wrong(x, window):
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, dims, "VALID") / window**2

    expect_failed(capsys, check.max_pool, "max_pool", wrong, "differs from the maximum")


def test_max_pool_keeping_partial_windows_fails(capsys):
    def wrong(x, window):
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, dims, "SAME")

    expect_failed(capsys, check.max_pool, "max_pool", wrong, "shape")


# --- 4. CNN.__call__ -------------------------------------------------------------------------


class StudentCNN(cnn.CNN):
    def __call__(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            x = self.pool(jax.nn.relu(bn(conv(x))), 2)
        x = self.dense1(x.reshape(len(x), -1))
        return self.dense2(self.dropout(jax.nn.relu(x)))


class BatchNormAfterReluCNN(cnn.CNN):
    def __call__(self, x):
        x = cnn.max_pool(self.bn1(nnx.relu(self.conv1(x))), 2)
        x = cnn.max_pool(self.bn2(nnx.relu(self.conv2(x))), 2)
        x = self.dropout(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
        return self.dense2(x)


class NoBatchNormCNN(cnn.CNN):
    def __call__(self, x):
        x = cnn.max_pool(nnx.relu(self.conv1(x)), 2)
        x = cnn.max_pool(nnx.relu(self.conv2(x)), 2)
        x = self.dropout(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
        return self.dense2(x)


class NoDropoutCNN(cnn.CNN):
    def __call__(self, x):
        x = cnn.max_pool(nnx.relu(self.bn1(self.conv1(x))), 2)
        x = cnn.max_pool(nnx.relu(self.bn2(self.conv2(x))), 2)
        return self.dense2(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))


class FixedPoolCNN(cnn.CNN):  # right values with the default pool, but ignores self.pool
    def __call__(self, x):
        x = cnn.max_pool(nnx.relu(self.bn1(self.conv1(x))), 2)
        x = cnn.max_pool(nnx.relu(self.bn2(self.conv2(x))), 2)
        x = self.dropout(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
        return self.dense2(x)


class ReluOnLogitsCNN(cnn.CNN):
    def __call__(self, x):
        return nnx.relu(cnn.CNN.__call__(self, x))


def test_cnn_student_class_passes(capsys):
    line, use = run_checker(capsys, check.cnn, StudentCNN)
    assert line.startswith("PASSED CNN.__call__:") and use is StudentCNN


def test_cnn_batchnorm_after_relu_fails(capsys):
    expect_failed(capsys, check.cnn, "CNN.__call__", BatchNormAfterReluCNN, "eval mode")


def test_cnn_without_batchnorm_fails(capsys):
    expect_failed(capsys, check.cnn, "CNN.__call__", NoBatchNormCNN, "differ")


def test_cnn_without_dropout_fails(capsys):
    expect_failed(capsys, check.cnn, "CNN.__call__", NoDropoutCNN,
                  "in train mode dropout had no effect")


def test_cnn_ignoring_self_pool_fails(capsys):
    expect_failed(capsys, check.cnn, "CNN.__call__", FixedPoolCNN, "pool=<a min-pool>",
                  "equal the logits of the same model max-pooled")


def test_cnn_relu_on_logits_fails(capsys):
    expect_failed(capsys, check.cnn, "CNN.__call__", ReluOnLogitsCNN,
                  "None of its logits is negative")


# --- 5. random_translate ---------------------------------------------------------------------


def test_random_translate_written_differently_passes(capsys):
    def student(key, images, max_shift):  # a gather with per-example coordinates
        n, h, w, _ = images.shape
        dy, dx = jax.random.randint(key, (2, n, 1, 1), -max_shift, max_shift + 1)
        rows = jnp.arange(h)[None, :, None] - dy
        cols = jnp.arange(w)[None, None, :] - dx
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        batch = jnp.arange(n)[:, None, None]
        moved = images[batch, jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)]
        return jnp.where(inside[..., None], moved, 0.0)

    line, use = run_checker(capsys, check.random_translate, student)
    assert line.startswith("PASSED random_translate:") and use is student


def test_one_shift_for_the_whole_batch_fails(capsys):
    def wrong(key, images, max_shift):
        n = images.shape[0]
        shift = jax.random.randint(key, (2,), -max_shift, max_shift + 1)
        return cnn.random_translate(jax.random.key(0), images, 0) if max_shift == 0 else \
            _shift_all(images, shift, max_shift, n)

    expect_failed(capsys, check.random_translate, "random_translate", wrong,
                  "moved by the same", "its own shift")


def _shift_all(images, shift, m, n):
    h, w, c = images.shape[1:]
    padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
    return jax.lax.dynamic_slice(padded, (0, m - shift[0], m - shift[1], 0), (n, h, w, c))


def test_roll_wraps_around_and_fails(capsys):
    def wrong(key, images, max_shift):
        shifts = jax.random.randint(key, (images.shape[0], 2), -max_shift, max_shift + 1)
        return jax.vmap(lambda im, s: jnp.roll(im, (s[0], s[1]), axis=(0, 1)))(images, shifts)

    expect_failed(capsys, check.random_translate, "random_translate", wrong, "rolled by",
                  "come back on the other")


def test_shifts_never_reaching_max_fail(capsys):
    def wrong(key, images, max_shift):  # randint's upper bound is exclusive
        n, h, w, c = images.shape
        m = max_shift
        shifts = jax.random.randint(key, (n, 2), -m, max(m, 1) if m == 0 else m)
        padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
        return jax.vmap(lambda im, s: jax.lax.dynamic_slice(
            im, (m - s[0], m - s[1], 0), (h, w, c)))(padded, shifts)

    line = expect_failed(capsys, check.random_translate, "random_translate", wrong,
                         "this often", "never [2]", "chi-square")
    assert "randint" not in line  # it says what it saw, not a cause it did not establish


def test_ignoring_the_key_fails(capsys):
    def wrong(key, images, max_shift):
        return cnn.random_translate(jax.random.key(42), images, max_shift)

    expect_failed(capsys, check.random_translate, "random_translate", wrong,
                  "different keys gave the same")


# --- issue 21: the shifts' distribution, feedback that names only established causes --------


def _crop_at(images, starts_y, starts_x, pad):
    """Crop an (H, W) window from images padded by ``pad`` ((top, bottom), (left, right)),
    starting per example at (starts_y, starts_x)."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), *pad, (0, 0)))
    return jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(
        padded, starts_y, starts_x)


def _with_shifts(draw):
    """A random_translate whose (dy, dx) per example come from ``draw(key, n, m)``."""
    def translate(key, images, max_shift):
        m = max_shift
        dy, dx = draw(key, images.shape[0], m)
        return _crop_at(images, m - dy, m - dx, ((m, m), (m, m)))

    return translate


def test_start_drawn_directly_and_the_other_direction_pass(capsys):
    def starts(key, images, max_shift):  # draws the window's start, 0 .. 2 * max_shift
        m = max_shift
        s = jax.random.randint(key, (2, images.shape[0]), 0, 2 * m + 1)
        return _crop_at(images, s[0], s[1], ((m, m), (m, m)))

    def other_way(key, images, max_shift):  # moves by -(dy, dx): the same distribution
        m = max_shift
        d = jax.random.randint(key, (2, images.shape[0]), -m, m + 1)
        return _crop_at(images, m + d[0], m + d[1], ((m, m), (m, m)))

    for student in (starts, other_way):
        line, use = run_checker(capsys, check.random_translate, student)
        assert line.startswith("PASSED random_translate:") and use is student, line


def test_shifts_not_uniform_over_the_range_fail(capsys):
    def triangular(key, n, m):  # the sum of two uniform draws: the middle is too likely
        a, b = jax.random.split(key)
        return (jax.random.randint(a, (2, n), 0, m + 1) + jax.random.randint(b, (2, n), 0, m + 1)
                - m)

    def rounded_normal(key, n, m):
        d = jnp.clip(jnp.round(jax.random.normal(key, (2, n)) * m / 2), -m, m)
        return d.astype(jnp.int32)

    for draw in (triangular, rounded_normal):
        line = expect_failed(capsys, check.random_translate, "random_translate",
                             _with_shifts(draw), "this often", "uniform draws give about",
                             "false-alarm rate 1e-06")
        assert "randint" not in line


def test_both_axes_sharing_one_offset_fail(capsys):
    def shared(key, n, m):
        d = jax.random.randint(key, (n,), -m, m + 1)
        return d, d

    expect_failed(capsys, check.random_translate, "random_translate", _with_shifts(shared),
                  "not independent", "dy == dx in 100%")


def test_one_axis_a_function_of_the_other_fails(capsys):
    def dependent(key, n, m):  # dx is dy rotated by one: both uniform, never independent
        dy = jax.random.randint(key, (n,), -m, m + 1)
        return dy, (dy + m + 1) % (2 * m + 1) - m

    expect_failed(capsys, check.random_translate, "random_translate", _with_shifts(dependent),
                  "not independent", "times, against about 32 for independent draws")


def test_vertical_only_shifts_fail_without_blaming_randint(capsys):
    def vertical(key, n, m):
        return jax.random.randint(key, (n,), -m, m + 1), jnp.zeros((n,), jnp.int32)

    line = expect_failed(capsys, check.random_translate, "random_translate",
                         _with_shifts(vertical), "dx (right) took the values",
                         "never [-2, -1, 1, 2]")
    assert "randint" not in line and "exclusive" not in line


def test_padding_on_one_side_fails_without_blaming_randint(capsys):
    def one_side(key, images, max_shift):  # zeros only below and right; the window clamps
        m = max_shift
        d = jax.random.randint(key, (2, images.shape[0]), -m, m + 1)
        return _crop_at(images, m - d[0], m - d[1], ((0, m), (0, m)))

    line = expect_failed(capsys, check.random_translate, "random_translate", one_side,
                         "this often", "never [1, 2]")
    assert "randint" not in line and "exclusive" not in line


def test_crop_window_started_at_the_shift_fails(capsys):
    def wrong_way(key, images, max_shift):  # start = shift: negative starts clamp to 0
        m = max_shift
        d = jax.random.randint(key, (2, images.shape[0]), -m, m + 1)
        return _crop_at(images, d[0], d[1], ((m, m), (m, m)))

    expect_failed(capsys, check.random_translate, "random_translate", wrong_way, "this often",
                  "uniform draws give about 160 each")


def test_shift_beyond_max_shift_is_reported_with_the_shift(capsys):
    def double(key, n, m):
        return 2 * jax.random.randint(key, (2, n), -m, m + 1)

    def translate(key, images, max_shift):
        m = max_shift
        dy, dx = double(key, images.shape[0], m)
        return _crop_at(images, 2 * m - dy, 2 * m - dx, ((2 * m, 2 * m), (2 * m, 2 * m)))

    expect_failed(capsys, check.random_translate, "random_translate", translate,
                  "beyond max_shift=2")


def test_examples_mixed_up_fail(capsys):
    def mixed(key, images, max_shift):
        return cnn.random_translate(key, images[::-1], max_shift)

    expect_failed(capsys, check.random_translate, "random_translate", mixed,
                  "holds pixels of example")


class PoolBeforeReluCNN(cnn.CNN):  # right: max-pooling and ReLU commute
    def __call__(self, x):
        x = nnx.relu(self.pool(self.bn1(self.conv1(x)), 2))
        x = nnx.relu(self.pool(self.bn2(self.conv2(x)), 2))
        x = self.dropout(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
        return self.dense2(x)


class RunningAverageBatchNormCNN(cnn.CNN):  # BatchNorm forced to its running averages
    def __call__(self, x):
        x = self.pool(nnx.relu(self.bn1(self.conv1(x), use_running_average=True)), 2)
        x = self.pool(nnx.relu(self.bn2(self.conv2(x), use_running_average=True)), 2)
        x = self.dropout(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
        return self.dense2(x)


class BatchNormTwiceCNN(cnn.CNN):  # bn1 called twice: its running averages move twice
    def __call__(self, x):
        self.bn1(self.conv1(x))
        return cnn.CNN.__call__(self, x)


def test_cnn_pooling_before_relu_passes(capsys):
    line, use = run_checker(capsys, check.cnn, PoolBeforeReluCNN)
    assert line.startswith("PASSED CNN.__call__:") and use is PoolBeforeReluCNN, line


def test_cnn_batchnorm_on_running_averages_in_train_mode_fails_saying_so(capsys):
    line = expect_failed(capsys, check.cnn, "CNN.__call__", RunningAverageBatchNormCNN,
                         "has not moved", "only eval mode uses them")
    assert "once each" not in line


def test_cnn_batchnorm_called_twice_fails_with_the_values(capsys):
    expect_failed(capsys, check.cnn, "CNN.__call__", BatchNormTwiceCNN,
                  "bn1's running mean is", "where the reference's is")


def test_max_pool_without_a_gradient_fails_naming_the_error(capsys):
    def wrong(x, window):  # a reduce_window with its own function: right values, no gradient
        dims = (1, window, window, 1)
        return jax.lax.reduce_window(x, -jnp.inf, lambda a, b: jnp.maximum(a, b), dims, dims,
                                     "VALID")

    expect_failed(capsys, check.max_pool, "max_pool", wrong, "jax.grad of it fails",
                  "needs a gradient")


def test_failed_verdicts_are_the_same_every_run(capsys):
    def shared(key, n, m):
        d = jax.random.randint(key, (n,), -m, m + 1)
        return d, d

    answer = _with_shifts(shared)
    first, second, third = (expect_failed(capsys, check.random_translate, "random_translate",
                                          answer) for _ in range(3))
    assert first.split(" Hint:")[0] == second.split(" Hint:")[0] == third.split(" Hint:")[0]
