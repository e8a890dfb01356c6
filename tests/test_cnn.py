"""utils.cnn: convolution pieces against lax, pooling, augmentation, the CNN, checkpoints."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from utils import cnn, training


def _normal(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --- sizes, im2col, FLOPs -------------------------------------------------------------------


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), [
    (s, k, st, p) for s, k, st, p in itertools.product((1, 4, 7, 28), (1, 2, 3, 5), (1, 2, 3),
                                                      ("SAME", "VALID")) if k <= s])
def test_conv_output_size_matches_lax(size, kernel, stride, padding):
    out = jax.eval_shape(lambda x, w: cnn.conv2d(x, w, stride, padding),
                         jax.ShapeDtypeStruct((1, size, 3, 1), jnp.float32),
                         jax.ShapeDtypeStruct((kernel, 1, 1, 1), jnp.float32))
    assert out.shape[1] == cnn.conv_output_size(size, kernel, stride, padding)


def test_conv_output_size_scalar_cases_and_bad_input():
    assert cnn.conv_output_size(28, 3, 1, "SAME") == 28
    assert cnn.conv_output_size(28, 3, 2, "VALID") == 13
    assert cnn.conv_output_size(2, 3, 1, "VALID") == 0
    with pytest.raises(ValueError, match='padding must be "SAME" or "VALID"'):
        cnn.conv_output_size(28, 3, 1, "same")
    with pytest.raises(ValueError, match="stride >= 1"):
        cnn.conv_output_size(28, 3, 0)


@pytest.mark.parametrize(("xs", "ws", "stride", "padding"), [
    ((1, 5, 7, 1), (3, 3, 1, 2), 1, "SAME"),
    ((2, 8, 6, 3), (3, 3, 3, 4), 2, "SAME"),
    ((3, 9, 5, 2), (2, 4, 2, 3), (2, 1), "VALID"),
    ((2, 7, 4, 1), (2, 2, 1, 3), (1, 3), "SAME"),
    ((1, 1, 1, 3), (1, 1, 3, 2), 1, "SAME"),
])
def test_conv2d_im2col_matches_lax_values_and_gradients(xs, ws, stride, padding):
    x, w = _normal(xs, 1), _normal(ws, 2)
    np.testing.assert_allclose(cnn.conv2d_im2col(x, w, stride, padding),
                               cnn.conv2d(x, w, stride, padding), rtol=1e-4, atol=1e-4)
    grads = [jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w, stride, padding) ** 2),
                              argnums=(0, 1)))(x, w) for f in (cnn.conv2d_im2col, cnn.conv2d)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_im2col_shape_and_order():
    x = jnp.arange(2 * 4 * 5 * 3, dtype=jnp.float32).reshape(2, 4, 5, 3)
    patches = cnn.im2col(x, (2, 3), 1, "VALID")
    assert patches.shape == (2, 3, 3, 2 * 3 * 3)
    np.testing.assert_array_equal(patches[1, 2, 1], np.asarray(x[1, 2:4, 1:4, :]).ravel())
    with pytest.raises(ValueError, match="NHWC"):
        cnn.im2col(x[0], 3)
    with pytest.raises(ValueError, match="channels"):
        cnn.conv2d_im2col(x, jnp.zeros((3, 3, 2, 4)))


def test_conv2d_flops_formula():
    assert cnn.conv2d_flops((128, 14, 14, 32), (3, 3, 32, 64), 1, "SAME") == \
        2 * 128 * 14 * 14 * 64 * 3 * 3 * 32
    assert cnn.conv2d_flops((1, 5, 5, 1), (5, 5, 1, 1)) == 2 * 25


# --- pooling ---------------------------------------------------------------------------------


def test_max_pool_matches_numpy_including_negative_values_and_odd_sizes():
    x = -np.abs(np.asarray(_normal((2, 7, 5, 3), 3))) - 1
    got = np.asarray(cnn.max_pool(jnp.asarray(x), 2))
    expected = x[:, :6, :4, :].reshape(2, 3, 2, 2, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(got, expected)
    assert cnn.max_pool(jnp.ones((1, 1, 1, 1)), 1).shape == (1, 1, 1, 1)


@pytest.mark.parametrize(("shape", "window"), [((2, 7, 5, 3), 2), ((1, 9, 6, 2), 3),
                                               ((3, 4, 4, 1), 4), ((1, 1, 1, 1), 1)])
def test_max_pool_by_reshape_equals_reduce_window_in_values_and_gradient(shape, window):
    x = _normal(shape, sum(shape))  # continuous values: one maximum per window
    r = _normal(cnn.max_pool_reduce_window(x, window).shape, 7)
    np.testing.assert_array_equal(np.asarray(cnn.max_pool(x, window)),
                                  np.asarray(cnn.max_pool_reduce_window(x, window)))
    grads = [jax.grad(lambda x, f=f: jnp.sum(f(x, window) * r))(x)
             for f in (cnn.max_pool, cnn.max_pool_reduce_window)]
    np.testing.assert_array_equal(np.asarray(grads[0]), np.asarray(grads[1]))


def test_max_pool_shares_the_gradient_among_ties_and_reduce_window_picks_one():
    x = jnp.zeros((1, 2, 2, 1)).at[0, 0, 1, 0].set(1.0).at[0, 1, 0, 0].set(1.0)
    shared = jax.grad(lambda x: jnp.sum(cnn.max_pool(x, 2)))(x)
    picked = jax.grad(lambda x: jnp.sum(cnn.max_pool_reduce_window(x, 2)))(x)
    np.testing.assert_array_equal(np.asarray(shared)[0, :, :, 0], [[0, 0.5], [0.5, 0]])
    assert float(jnp.sum(picked)) == 1.0 and int(jnp.count_nonzero(picked)) == 1


def test_overlapping_max_pool_uses_reduce_window():
    x = _normal((2, 7, 7, 3), 4)
    got = np.asarray(cnn.max_pool(x, 3, stride=2))
    assert got.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(got, np.asarray(cnn.max_pool_reduce_window(x, 3, 2)))
    expected = np.max([np.asarray(x)[:, i: i + 5: 2, j: j + 5: 2] for i in range(3)
                       for j in range(3)], axis=0)
    np.testing.assert_array_equal(got, expected)


# --- augmentation ---------------------------------------------------------------------------


def test_random_translate_shifts_each_example_within_range_with_zeros():
    images = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (64, 6, 9, 2)), jnp.float32)
    out = np.asarray(cnn.random_translate(jax.random.key(0), images, 2))
    assert out.shape == images.shape and out.dtype == np.float32
    shifts = set()
    for image, result in zip(np.asarray(images), out, strict=True):
        rows = np.flatnonzero(result.any(axis=(1, 2)))
        cols = np.flatnonzero(result.any(axis=(0, 2)))
        dy = rows[0] if rows[0] > 0 else -(5 - rows[-1])
        dx = cols[0] if cols[0] > 0 else -(8 - cols[-1])
        assert abs(dy) <= 2 and abs(dx) <= 2
        moved = np.roll(image, (dy, dx), axis=(0, 1))
        mask = result != 0
        np.testing.assert_array_equal(result[mask], moved[mask])
        shifts.add((int(dy), int(dx)))
    assert len(shifts) > 10
    np.testing.assert_array_equal(cnn.random_translate(jax.random.key(0), images, 0), images)
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        cnn.random_translate(jax.random.key(0), images, -1)


def test_random_translate_jitted_compiles_once_for_new_keys():
    traces = []

    @jax.jit
    def f(key, images):
        traces.append(1)
        return cnn.random_translate(key, images, 2)

    images = jnp.ones((4, 8, 8, 1))
    outs = [np.asarray(f(jax.random.key(s), images)) for s in range(3)]
    assert len(traces) == 1
    assert not np.array_equal(outs[0], outs[1])


def test_random_translate_layer_is_off_in_eval_mode():
    layer = cnn.RandomTranslate(2, rngs=nnx.Rngs(0))
    x = jnp.ones((8, 6, 6, 1))
    assert not np.array_equal(layer(x), x)
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    view = training.eval_view(cnn.RandomTranslate(2, rngs=nnx.Rngs(0)))
    np.testing.assert_array_equal(view(x), x)


# --- the CNN --------------------------------------------------------------------------------


def test_cnn_shapes_params_and_modes():
    model = cnn.CNN(rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 28, 28, 1)), jnp.float32)
    model.eval()
    assert model(x).shape == (5, 10)
    np.testing.assert_array_equal(model(x), model(x))
    expected = (3 * 3 * 32 + 2 * 32) + (3 * 3 * 32 * 64 + 2 * 64) + (7 * 7 * 64 * 256 + 256) \
        + (256 * 10 + 10)
    assert training.count_params(model) == expected
    small = cnn.CNN(3, channels=(2, 3), hidden=8, in_channels=2, image_size=(12, 20),
                    rngs=nnx.Rngs(1))
    small.train()
    y = jnp.ones((1, 12, 20, 2))
    a, b = small(y), small(y)
    assert a.shape == (1, 3) and not np.array_equal(a, b)  # dropout draws a new mask


def test_fit_trains_a_cnn_with_batchnorm_dropout_and_augmentation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 96).astype(np.int32)
    images = np.zeros((96, 8, 8, 1), np.uint8)
    images[labels == 0, 2:6, 3:5] = 255  # a vertical bar
    images[labels == 1, 3:5, 2:6] = 255  # a horizontal bar
    import optax

    def run():
        net = cnn.CNN(2, channels=(4, 4), hidden=8, dropout=0.2, image_size=(8, 8),
                      rngs=nnx.Rngs(0))
        model = cnn.Augmented(net, 1, rngs=nnx.Rngs(augment=1))
        opt = training.create_optimizer(model, optax.adam(1e-2))
        before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(net, nnx.BatchStat))]
        history = training.fit(model, opt, (images, labels), (images, labels), epochs=4,
                               batch_size=16, key=jax.random.key(0), num_classes=2,
                               progress=False)
        after = [np.asarray(v) for v in jax.tree.leaves(nnx.state(net, nnx.BatchStat))]
        return net, model, history, before, after

    net, model, history, before, after = run()
    assert history["test_accuracy"][-1] > 0.9
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert model.translate.deterministic and net.dropout.deterministic  # fit ends in eval
    _, _, again, _, _ = run()
    assert again == history  # same seeds: identical, dropout and augmentation included


# --- checkpoints ----------------------------------------------------------------------------


def _saved(model):
    return [np.asarray(v) for v in
            jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))]


def test_checkpoint_round_trip_into_a_fresh_model(tmp_path):
    model = cnn.CNN(channels=(4, 6), hidden=8, rngs=nnx.Rngs(0))
    model.bn1.mean[...] = jnp.arange(4, dtype=jnp.float32)
    path = cnn.save_checkpoint(tmp_path / "ckpt", model)
    assert path.is_dir() and path.is_absolute()
    fresh = cnn.CNN(channels=(4, 6), hidden=8, rngs=nnx.Rngs(1))
    assert not all(np.array_equal(a, b) for a, b in zip(_saved(model), _saved(fresh),
                                                         strict=True))
    assert cnn.restore_checkpoint(path, fresh) is fresh
    for a, b in zip(_saved(model), _saved(fresh), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(cnn.CheckpointError, match="already exists"):
        cnn.save_checkpoint(path, model)
    cnn.save_checkpoint(path, fresh, overwrite=True)


def test_missing_mismatched_or_corrupt_checkpoint_is_one_clear_error(tmp_path, capfd):
    model = cnn.CNN(channels=(4, 6), hidden=8, rngs=nnx.Rngs(0))
    with pytest.raises(cnn.CheckpointError, match="no checkpoint at"):
        cnn.restore_checkpoint(tmp_path / "missing", model)
    path = cnn.save_checkpoint(tmp_path / "ckpt", model)
    with pytest.raises(cnn.CheckpointError, match="does not fit this model"):
        cnn.restore_checkpoint(path, cnn.CNN(channels=(4, 7), hidden=8, rngs=nnx.Rngs(0)))
    with pytest.raises(cnn.CheckpointError, match="another architecture"):
        cnn.restore_checkpoint(path, training.MLP(rngs=nnx.Rngs(0)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(cnn.CheckpointError, match="not a complete checkpoint"):
        cnn.restore_checkpoint(tmp_path / "empty", model)
    assert "Traceback" not in capfd.readouterr().err


# --- global average pooling, resumable training state ---------------------------------------


def test_global_average_pool_cnn_params_and_output():
    model = cnn.GlobalAveragePoolCNN(channels=(4, 6), hidden=8, rngs=nnx.Rngs(0))
    flat = cnn.CNN(channels=(4, 6), hidden=8, rngs=nnx.Rngs(0))
    assert model.dense1.kernel.shape == (6, 8)
    assert training.count_params(flat) - training.count_params(model) == (7 * 7 - 1) * 6 * 8
    model.eval()
    x = _normal((3, 28, 28, 1), 5)
    maps = model.pool(nnx.relu(model.bn2(model.conv2(
        model.pool(nnx.relu(model.bn1(model.conv1(x))), 2)))), 2)
    expected = model.dense2(nnx.relu(model.dense1(maps.mean(axis=(1, 2)))))
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)
    big = cnn.GlobalAveragePoolCNN(channels=(4, 6), hidden=8, image_size=(56, 56),
                                   rngs=nnx.Rngs(0))
    assert training.count_params(big) == training.count_params(model)  # size-independent


def _tiny_run(seed):
    import optax

    net = cnn.CNN(2, channels=(2, 3), hidden=4, dropout=0.3, image_size=(8, 8),
                  rngs=nnx.Rngs(seed))
    model = cnn.Augmented(net, 1, rngs=nnx.Rngs(augment=seed + 1))
    schedule = optax.linear_schedule(1e-2, 1e-3, 12)
    return model, training.create_optimizer(model, optax.adamw(schedule))


def _tiny_data():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (40, 8, 8, 1)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 2, 40), jnp.int32)
    return images, labels


def _params(model):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model))
            if not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)]


def test_train_steps_in_pieces_equal_one_run():
    images, labels = _tiny_data()
    step = training.make_train_step()
    kwargs = dict(key=jax.random.key(3), batch_size=16)  # 2 steps per epoch
    a, opt_a = _tiny_run(0)
    whole = cnn.train_steps(step, a, opt_a, images, labels, start=0, stop=5, **kwargs)
    b, opt_b = _tiny_run(0)
    pieces = np.concatenate([cnn.train_steps(step, b, opt_b, images, labels, start=s, stop=t,
                                             **kwargs) for s, t in ((0, 3), (3, 3), (3, 5))])
    assert whole.shape == (5,)
    np.testing.assert_array_equal(whole, pieces)
    with pytest.raises(ValueError, match="start <= stop"):
        cnn.train_steps(step, b, opt_b, images, labels, start=4, stop=2, **kwargs)


def test_training_state_resumes_exactly_and_keeps_the_newest(tmp_path):
    images, labels = _tiny_data()
    step = training.make_train_step()
    kwargs = dict(key=jax.random.key(3), batch_size=16)
    a, opt_a = _tiny_run(0)
    uninterrupted = cnn.train_steps(step, a, opt_a, images, labels, start=0, stop=8, **kwargs)
    b, opt_b = _tiny_run(0)
    manager = cnn.checkpoint_manager(tmp_path / "run", max_to_keep=2)
    for s in range(0, 5):
        cnn.train_steps(step, b, opt_b, images, labels, start=s, stop=s + 1, **kwargs)
        cnn.save_training_state(manager, s + 1, b, opt_b)
    assert list(manager.all_steps()) == [4, 5]
    c, opt_c = _tiny_run(7)  # other initial values, other RNG streams: all overwritten
    assert cnn.restore_training_state(manager, c, opt_c) == 5
    resumed = cnn.train_steps(step, c, opt_c, images, labels, start=5, stop=8, **kwargs)
    np.testing.assert_array_equal(resumed, uninterrupted[5:])
    for x, y in zip(_params(a), _params(c), strict=True):
        np.testing.assert_array_equal(x, y)
    manager.close()


def test_training_state_errors_say_what_to_do(tmp_path):
    manager = cnn.checkpoint_manager(tmp_path / "empty")
    model, opt = _tiny_run(0)
    with pytest.raises(cnn.CheckpointError, match="no training state"):
        cnn.restore_training_state(manager, model, opt)
    cnn.save_training_state(manager, 1, model, opt)
    with pytest.raises(cnn.CheckpointError, match="no training state of step 3"):
        cnn.restore_training_state(manager, model, opt, step=3)
    import optax

    other = cnn.Augmented(cnn.CNN(2, channels=(2, 4), hidden=4, image_size=(8, 8),
                                  rngs=nnx.Rngs(0)), 1, rngs=nnx.Rngs(augment=1))
    with pytest.raises(cnn.CheckpointError, match="Build them as they were"):
        cnn.restore_training_state(manager, other,
                                   training.create_optimizer(other, optax.adamw(1e-2)))
    manager.close()
    with pytest.raises(ValueError, match="max_to_keep"):
        cnn.checkpoint_manager(tmp_path / "x", max_to_keep=0)
