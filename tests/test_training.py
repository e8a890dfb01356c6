"""utils.training: compile once, learning, reproducibility, clear errors, evaluation vs NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from utils import training


def _toy_data(n=96, seed=0, classes=3):
    """Linearly separable-ish 3-class problem on 4x4 'images'."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n).astype(np.int32)
    centers = rng.normal(size=(classes, 16)).astype(np.float32) * 2.0
    images = centers[labels] + 0.5 * rng.normal(size=(n, 16)).astype(np.float32)
    return images.reshape(n, 4, 4), labels


def _model_and_optimizer(seed=0, lr=1e-2):
    model = training.MLP(16, 32, 3, rngs=nnx.Rngs(seed))
    return model, training.create_optimizer(model, optax.adam(lr))


def _params(model):
    return [np.asarray(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))]


# --- the model and the small functions ------------------------------------------------------


def test_mlp_shapes_and_param_count():
    model = training.MLP(rngs=nnx.Rngs(0))
    assert model(jnp.zeros((5, 28, 28))).shape == (5, 10)
    assert model(jnp.zeros((1, 784))).shape == (1, 10)
    assert training.count_params(model) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


def test_loss_and_accuracy_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, size=50)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(50), labels].mean()
    np.testing.assert_allclose(training.cross_entropy_loss(logits, labels), expected_loss,
                               rtol=1e-5)
    acc = training.accuracy(jnp.asarray(logits), jnp.asarray(labels))
    assert acc.dtype == jnp.float32 and acc.shape == ()
    np.testing.assert_allclose(acc, (logits.argmax(1) == labels).mean())


def test_loss_is_stable_for_large_logits():
    logits = jnp.asarray([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]])
    loss = training.cross_entropy_loss(logits, jnp.asarray([0, 0]))
    np.testing.assert_allclose(loss, 500.0, rtol=1e-6)


@pytest.mark.parametrize(("n", "bs"), [(10, 3), (60000, 128), (8, 8), (1, 1)])
def test_shuffled_batch_indices_is_a_permutation_in_full_batches(n, bs):
    batches = training.shuffled_batch_indices(jax.random.key(0), n, bs)
    assert batches.shape == (n // bs, bs) and batches.dtype == jnp.int32
    values = np.asarray(batches).ravel()
    assert len(np.unique(values)) == values.size and values.min() >= 0 and values.max() < n
    again = training.shuffled_batch_indices(jax.random.key(0), n, bs)
    np.testing.assert_array_equal(batches, again)
    if n >= 100:
        other = training.shuffled_batch_indices(jax.random.key(1), n, bs)
        assert not np.array_equal(batches, other)
        assert not np.array_equal(np.sort(values), values)


def test_shuffled_batch_indices_rejects_batch_larger_than_data():
    with pytest.raises(ValueError, match="larger than the 5 examples"):
        training.shuffled_batch_indices(jax.random.key(0), 5, 8)


# --- the train step --------------------------------------------------------------------------


def test_train_step_compiles_once():
    traces = []

    def counting_step(model, optimizer, images, labels):
        traces.append(1)  # runs only while tracing
        return training.train_batch(model, optimizer, images, labels)

    step = training.make_train_step(counting_step)
    images, labels = jax.device_put(_toy_data())
    model, optimizer = _model_and_optimizer()
    for seed in range(4):  # new batches (new data, same shape): no new trace
        indices = training.shuffled_batch_indices(jax.random.key(seed), 96, 32)[0]
        step(model, optimizer, images, labels, indices)
    assert len(traces) == 1
    step(model, optimizer, images, labels, jnp.arange(16))  # a new batch shape does retrace
    assert len(traces) == 2


def test_train_step_updates_in_place_and_returns_batch_metrics():
    images, labels = jax.device_put(_toy_data())
    model, optimizer = _model_and_optimizer()
    before = _params(model)
    step = training.make_train_step()
    indices = jnp.arange(32)
    expected_loss = training.cross_entropy_loss(model(images[:32]), labels[:32])
    loss, acc = step(model, optimizer, images, labels, indices)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert 0.0 <= float(acc) <= 1.0
    assert all(not np.array_equal(a, b) for a, b in zip(before, _params(model), strict=True))


def test_loss_decreases_on_a_tiny_problem():
    images, labels = _toy_data()
    model, optimizer = _model_and_optimizer()
    history = training.fit(model, optimizer, (images, labels), (images, labels), epochs=8,
                           batch_size=16, key=jax.random.key(0), num_classes=3, progress=False)
    losses = history["train_loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert history["test_accuracy"][-1] > 0.9
    assert set(history) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert all(len(v) == 8 for v in history.values())


def test_scan_epoch_matches_step_loop():
    images, labels = _toy_data()
    runs = []
    for scan in (False, True):
        model, optimizer = _model_and_optimizer(seed=5)
        history = training.fit(model, optimizer, (images, labels), epochs=2, batch_size=16,
                               key=jax.random.key(3), num_classes=3, scan=scan, progress=False)
        runs.append((history, _params(model)))
    (h_loop, p_loop), (h_scan, p_scan) = runs
    np.testing.assert_allclose(h_loop["train_loss"], h_scan["train_loss"], rtol=1e-4)
    for a, b in zip(p_loop, p_scan, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_same_seed_gives_identical_parameters_on_cpu():
    images, labels = _toy_data()
    runs = []
    for _ in range(2):
        model, optimizer = _model_and_optimizer(seed=7)
        training.fit(model, optimizer, (images, labels), epochs=2, batch_size=16,
                     key=jax.random.key(42), num_classes=3, progress=False)
        runs.append(_params(model))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    model, optimizer = _model_and_optimizer(seed=7)  # another shuffling key: other parameters
    training.fit(model, optimizer, (images, labels), epochs=2, batch_size=16,
                 key=jax.random.key(43), num_classes=3, progress=False)
    assert not np.array_equal(_params(model)[0], runs[0][0])


def test_fit_progress_bar_can_be_on(capsys):
    images, labels = _toy_data(n=32)
    model, optimizer = _model_and_optimizer()
    training.fit(model, optimizer, (images, labels), epochs=1, batch_size=16,
                 key=jax.random.key(0), num_classes=3, progress=True)
    assert "training" in capsys.readouterr().err


# --- input validation -----------------------------------------------------------------------


def _fit(images, labels, **kwargs):
    model, optimizer = _model_and_optimizer()
    kwargs = {"epochs": 1, "batch_size": 8, "key": jax.random.key(0), "num_classes": 3,
              "progress": False, **kwargs}
    return training.fit(model, optimizer, (images, labels), **kwargs)


def test_wrong_image_shape_is_a_clear_error():
    images, labels = _toy_data()
    with pytest.raises(ValueError, match=r"images must have shape \(N, 4, 4\), got \(96, 16\)"):
        _fit(images.reshape(96, 16), labels, image_shape=(4, 4))
    with pytest.raises(ValueError, match=r"images must have shape"):
        _fit(images[0, 0], labels[:4])


def test_test_set_of_another_shape_is_a_clear_error():
    images, labels = _toy_data()
    with pytest.raises(ValueError, match=r"test: images must have shape \(N, 4, 4\)"):
        _fit(images, labels, test=(images.reshape(96, 16), labels))


def test_labels_out_of_range_are_a_clear_error():
    images, labels = _toy_data()
    bad = labels.copy()
    bad[5] = 3
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] \(3 classes\), found "
                                         r"values from 0 to 3"):
        _fit(images, bad)
    bad[5] = -1
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        _fit(images, bad)


def test_labels_of_wrong_dtype_or_length_are_a_clear_error():
    images, labels = _toy_data()
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 2\], got dtype float32"):
        _fit(images, labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"labels must have shape \(96,\)"):
        _fit(images, labels[:50])
    with pytest.raises(ValueError, match=r"images must be floating point .* or uint8 in "
                                         r"\[0, 255\], got dtype int32"):
        _fit((images * 255).astype(np.int32), labels)


def test_bad_batch_size_or_epochs_are_clear_errors():
    images, labels = _toy_data()
    with pytest.raises(ValueError, match="batch_size must be between 1 and the 96"):
        _fit(images, labels, batch_size=97)
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        _fit(images, labels, epochs=0)


# --- evaluation -----------------------------------------------------------------------------


def _numpy_forward(model, x):
    h = x.reshape(len(x), -1)
    for layer in (model.hidden1, model.hidden2):
        h = np.maximum(h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...]), 0)
    return h @ np.asarray(model.out.kernel[...]) + np.asarray(model.out.bias[...])


@pytest.mark.parametrize("batch_size", [1000, 32, 7, 1])
def test_evaluate_matches_numpy(batch_size):
    images, labels = _toy_data(n=50)
    model, _ = _model_and_optimizer(seed=2)
    logits = _numpy_forward(model, images).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(50), labels].mean()
    expected_acc = (logits.argmax(1) == labels).mean()
    loss, acc = training.evaluate(model, images, labels, batch_size=batch_size, num_classes=3)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
    np.testing.assert_allclose(acc, expected_acc, atol=1e-6)


def test_evaluate_validates_when_asked():
    images, labels = _toy_data(n=20)
    model, _ = _model_and_optimizer()
    with pytest.raises(ValueError, match=r"evaluate: labels must be in \[0, 1\]"):
        training.evaluate(model, images, labels, num_classes=2)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        training.evaluate(model, images, labels, batch_size=0)


def test_step_loop_copies_nothing_from_the_host():
    images, labels = jax.device_put(_toy_data())
    model, optimizer = _model_and_optimizer()
    step = training.make_train_step()
    batches = training.shuffled_batch_indices(jax.random.key(0), 96, 16)
    step(model, optimizer, images, labels, batches[0])  # compile outside the guard
    with jax.transfer_guard_host_to_device("disallow"):
        for indices in batches:
            loss, _ = step(model, optimizer, images, labels, indices)
    assert np.isfinite(float(loss))


# --- uint8 images ---------------------------------------------------------------------------


def _uint8_data(n=96, seed=0):
    images, labels = _toy_data(n=n, seed=seed)
    low, high = images.min(), images.max()
    return np.round((images - low) / (high - low) * 255).astype(np.uint8), labels


def test_as_float_images_matches_numpy_bit_for_bit():
    values = np.arange(256, dtype=np.uint8)
    expected = values.astype(np.float32) / np.float32(255)
    for fn in (training.as_float_images, jax.jit(training.as_float_images)):
        got = fn(jnp.asarray(values))
        assert got.dtype == jnp.float32 and got.shape == (256,)
        np.testing.assert_array_equal(np.asarray(got), expected)
    batch = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7, 1)).astype(np.uint8)
    np.testing.assert_array_equal(training.as_float_images(jnp.asarray(batch)),
                                  batch.astype(np.float32) / np.float32(255))
    floats = jnp.asarray([[0.5, 2.0]], jnp.float32)  # float input: returned unchanged
    assert training.as_float_images(floats) is floats
    halves = jnp.asarray([300.0], jnp.bfloat16)
    assert training.as_float_images(halves).dtype == jnp.bfloat16


def test_uint8_images_train_and_evaluate_exactly_like_float32():
    images_u8, labels = _uint8_data()
    images_f32 = images_u8.astype(np.float32) / np.float32(255)
    for scan in (False, True):
        runs = []
        for images in (images_u8, images_f32):
            model, optimizer = _model_and_optimizer(seed=3)
            history = training.fit(model, optimizer, (images, labels), (images, labels),
                                   epochs=2, batch_size=16, key=jax.random.key(1),
                                   num_classes=3, scan=scan, progress=False)
            runs.append((history, _params(model)))
        (h_u8, p_u8), (h_f32, p_f32) = runs
        assert h_u8 == h_f32
        for a, b in zip(p_u8, p_f32, strict=True):
            np.testing.assert_array_equal(a, b)
    model, _ = _model_and_optimizer(seed=4)
    for batch_size in (1000, 7):
        np.testing.assert_array_equal(
            training.evaluate(model, images_u8, labels, batch_size=batch_size, num_classes=3),
            training.evaluate(model, images_f32, labels, batch_size=batch_size))


def test_uint8_images_stay_uint8_on_the_device_and_the_step_compiles_once():
    images_u8, labels = _uint8_data()
    images, labels = jax.device_put((images_u8, labels))
    assert images.dtype == jnp.uint8 and images.nbytes == images_u8.size
    traces = []

    def counting_step(model, optimizer, batch, batch_labels):
        traces.append(batch.dtype)  # runs only while tracing
        return training.train_batch(model, optimizer, batch, batch_labels)

    model, optimizer = _model_and_optimizer()
    step = training.make_train_step(counting_step)
    batches = training.shuffled_batch_indices(jax.random.key(0), 96, 16)
    step(model, optimizer, images, labels, batches[0])
    with jax.transfer_guard_host_to_device("disallow"):
        for indices in batches:
            loss, acc = step(model, optimizer, images, labels, indices)
    assert traces == [jnp.float32]  # the step body sees float32, traced once
    assert np.isfinite(float(loss)) and 0.0 <= float(acc) <= 1.0


# --- train and eval modes (lesson 05) -------------------------------------------------------


class _DropoutMLP(nnx.Module):
    def __init__(self, *, rngs):
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.hidden(x.reshape(x.shape[0], -1))))
        return self.out(self.dropout(x))


def test_evaluate_runs_in_eval_mode_and_leaves_the_model_mode_alone():
    images, labels = _toy_data(n=40)
    model = _DropoutMLP(rngs=nnx.Rngs(0))
    model.train()
    stats = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    first = training.evaluate(model, images, labels, batch_size=7)
    second = training.evaluate(model, images, labels, batch_size=40)
    np.testing.assert_allclose(first, second, rtol=1e-5)  # no dropout, running statistics
    assert not model.dropout.deterministic and not model.bn.use_running_average
    for a, b in zip(stats, jax.tree.leaves(nnx.state(model, nnx.BatchStat)), strict=True):
        np.testing.assert_array_equal(a, b)  # evaluation changed no statistics
    mlp = training.MLP(16, 8, 3, rngs=nnx.Rngs(0))
    assert training.eval_view(mlp)(jnp.ones((2, 16))).shape == (2, 3)


def test_fit_trains_in_train_mode_and_returns_in_eval_mode():
    images, labels = _toy_data()
    model = _DropoutMLP(rngs=nnx.Rngs(0))
    optimizer = training.create_optimizer(model, optax.adam(1e-2))
    before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    history = training.fit(model, optimizer, (images, labels), (images, labels), epochs=3,
                           batch_size=16, key=jax.random.key(0), num_classes=3, progress=False)
    after = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert model.dropout.deterministic and model.bn.use_running_average
    assert history["test_accuracy"][-1] > 0.8
