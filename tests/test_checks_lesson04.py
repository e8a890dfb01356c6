"""Checkers of lesson 04_mnist_mlp: the reference passes, a stub is NOT ATTEMPTED, and typical
wrong answers FAIL with a message that says what is wrong."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from checker_helpers import expect_failed, run_checker
from flax import nnx

from utils import training
from utils.checks import lesson04_mnist_mlp as check


class _MLPBase(nnx.Module):
    """The notebook's given __init__; subclasses write __call__."""

    def __init__(self, din=784, dhidden=512, dout=10, *, rngs):
        self.hidden1 = nnx.Linear(din, dhidden, rngs=rngs)
        self.hidden2 = nnx.Linear(dhidden, dhidden, rngs=rngs)
        self.out = nnx.Linear(dhidden, dout, rngs=rngs)



class StudentMLP(_MLPBase):
    def __call__(self, x):
        x = x.reshape(len(x), -1)
        return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


class NoReluMLP(_MLPBase):
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(self.hidden2(self.hidden1(x)))


class ReluOnLogitsMLP(_MLPBase):
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return nnx.relu(self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x))))))


class NoFlattenMLP(_MLPBase):
    def __call__(self, x):
        return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


class OneHiddenMLP(_MLPBase):
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(nnx.relu(self.hidden1(x)))


class HardcodedFlattenMLP(_MLPBase):  # right for MNIST only
    def __call__(self, x):
        x = x.reshape(-1, 784)
        return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


class SqueezedMLP(_MLPBase):  # a batch of one loses its batch axis
    def __call__(self, x):
        x = jnp.squeeze(x.reshape(x.shape[0], -1))
        return self.out(nnx.relu(self.hidden2(nnx.relu(self.hidden1(x)))))


class FrozenFirstLayerMLP(_MLPBase):  # right logits, no gradient for the first layer
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        h = jax.lax.stop_gradient(nnx.relu(self.hidden1(x)))
        return self.out(nnx.relu(self.hidden2(h)))










# --- MLP.__call__ --------------------------------------------------------------------------


def test_mlp_student_class_with_own_layout_passes(capsys):
    line, use = run_checker(capsys, check.mlp, StudentMLP)
    assert line.startswith("PASSED MLP.__call__:"), line
    assert use is StudentMLP


def test_mlp_without_relu_fails(capsys):
    expect_failed(capsys, check.mlp, "MLP.__call__", NoReluMLP, "differs from")


def test_mlp_with_relu_on_logits_fails(capsys):
    expect_failed(capsys, check.mlp, "MLP.__call__", ReluOnLogitsMLP,
                  "every negative logit set to 0: the output layer has a ReLU")


def test_mlp_without_flatten_fails(capsys):
    expect_failed(capsys, check.mlp, "MLP.__call__", NoFlattenMLP, "raised")


def test_mlp_hardcoded_784_fails(capsys):
    expect_failed(capsys, check.mlp, "MLP.__call__", HardcodedFlattenMLP, "raised")


def test_mlp_squeezing_a_batch_of_one_fails(capsys):
    expect_failed(capsys, check.mlp, "MLP.__call__", SqueezedMLP, "(1, 2, 3)")


def test_mlp_without_gradient_through_a_layer_fails(capsys):
    expect_failed(capsys, check.mlp, "MLP.__call__", FrozenFirstLayerMLP, "the gradient of a loss")


def test_mlp_skipping_a_layer_fails(capsys):
    expect_failed(capsys, check.mlp, "MLP.__call__", OneHiddenMLP, "differs from")


# --- cross_entropy_loss --------------------------------------------------------------------


def test_loss_naive_log_softmax_fails_on_large_logits(capsys):
    def naive(logits, labels):
        probs = jnp.exp(logits) / jnp.sum(jnp.exp(logits), axis=-1, keepdims=True)
        return -jnp.mean(jnp.log(probs[jnp.arange(len(labels)), labels]))

    # Right on small logits, so only the large-logit trials catch it.
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 10)), jnp.float32)
    labels = jnp.arange(8) % 10
    np.testing.assert_allclose(naive(logits, labels),
                               training.cross_entropy_loss(logits, labels), rtol=1e-5)
    expect_failed(capsys, check.cross_entropy_loss, "cross_entropy_loss", naive)


def test_loss_from_logsumexp_passes(capsys):
    def from_logsumexp(logits, labels):  # section 3's identity, as the exercise asks
        log_probs = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    def with_log_softmax(logits, labels):
        picked = jax.nn.log_softmax(logits)[jnp.arange(labels.shape[0]), labels]
        return -picked.mean()

    for answer in (from_logsumexp, with_log_softmax):
        line, use = run_checker(capsys, check.cross_entropy_loss, answer)
        assert line.startswith("PASSED cross_entropy_loss:"), line
        assert use is answer


def test_loss_on_softmax_probabilities_fails(capsys):
    def softmax_first(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(
            jax.nn.softmax(logits), labels).mean()

    expect_failed(capsys, check.cross_entropy_loss, "cross_entropy_loss", softmax_first,
                   "differs")


def test_loss_summed_not_averaged_fails(capsys):
    def summed(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    expect_failed(capsys, check.cross_entropy_loss, "cross_entropy_loss", summed, "differs")


def test_loss_per_example_not_reduced_fails(capsys):
    def unreduced(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    expect_failed(capsys, check.cross_entropy_loss, "cross_entropy_loss", unreduced, "shape")


def test_loss_for_ten_classes_only_fails(capsys):
    def one_hot_ten(logits, labels):
        return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 10)).mean()

    expect_failed(capsys, check.cross_entropy_loss, "cross_entropy_loss", one_hot_ten)


def test_loss_with_constant_normaliser_fails_on_the_gradient(capsys):
    def detached(logits, labels):  # the right value, but logsumexp is cut out of the gradient
        log_probs = logits - jax.lax.stop_gradient(jax.nn.logsumexp(logits, axis=-1,
                                                                   keepdims=True))
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    expect_failed(capsys, check.cross_entropy_loss, "cross_entropy_loss", detached,
                  "its gradient with respect to the logits")


# --- accuracy ------------------------------------------------------------------------------


def test_accuracy_count_not_fraction_fails(capsys):
    def count(logits, labels):
        return jnp.sum(jnp.argmax(logits, axis=-1) == labels)

    expect_failed(capsys, check.accuracy, "accuracy", count, "dtype")


def test_accuracy_wrong_axis_fails(capsys):
    def wrong_axis(logits, labels):
        return jnp.mean(jnp.argmax(logits, axis=0)[: len(labels)] == labels[: logits.shape[1]])

    expect_failed(capsys, check.accuracy, "accuracy", wrong_axis)


def test_accuracy_argmin_fails(capsys):
    def argmin(logits, labels):
        return jnp.mean(jnp.argmin(logits, axis=-1) == labels)

    expect_failed(capsys, check.accuracy, "accuracy", argmin, "differs")


def test_accuracy_counting_ties_as_correct_fails(capsys):
    def ties_correct(logits, labels):
        true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        return jnp.mean(true_logit == logits.max(axis=-1), dtype=jnp.float32)

    expect_failed(capsys, check.accuracy, "accuracy", ties_correct, "differs")


def test_accuracy_with_argmax_over_all_fails(capsys):
    def flat_argmax(logits, labels):
        return jnp.mean(jnp.argmax(logits) % logits.shape[-1] == labels, dtype=jnp.float32)

    expect_failed(capsys, check.accuracy, "accuracy", flat_argmax, "differs")


# --- shuffled_batch_indices ----------------------------------------------------------------


def test_batches_unshuffled_fail(capsys):
    def in_order(key, n, bs):
        return jnp.arange(n // bs * bs).reshape(-1, bs)

    expect_failed(capsys, check.shuffled_batch_indices, "shuffled_batch_indices", in_order,
                   "in order")


def test_batches_with_replacement_fail(capsys):
    def with_replacement(key, n, bs):
        return jax.random.randint(key, (n // bs, bs), 0, n)

    expect_failed(capsys, check.shuffled_batch_indices, "shuffled_batch_indices",
                   with_replacement, "appear twice")


def test_batches_keeping_the_remainder_fail(capsys):
    def padded(key, n, bs):
        perm = jax.random.permutation(key, n)
        count = -(-n // bs)
        return jnp.pad(perm, (0, count * bs - n), mode="wrap").reshape(count, bs)

    expect_failed(capsys, check.shuffled_batch_indices, "shuffled_batch_indices", padded,
                   "drop the last")


def test_batches_with_numpy_fail(capsys):
    def with_numpy(key, n, bs):
        return np.random.permutation(n)[: n // bs * bs].reshape(-1, bs)

    expect_failed(capsys, check.shuffled_batch_indices, "shuffled_batch_indices", with_numpy)


def test_batches_ignoring_the_key_fail(capsys):
    def fixed_key(key, n, bs):
        return training.shuffled_batch_indices(jax.random.key(0), n, bs)

    expect_failed(capsys, check.shuffled_batch_indices, "shuffled_batch_indices", fixed_key,
                   "different keys")


def test_batches_shuffling_only_the_batch_order_fail(capsys):
    def batch_order_only(key, n, bs):
        blocks = jnp.arange(n // bs * bs).reshape(-1, bs)
        return blocks[jax.random.permutation(key, n // bs)]

    expect_failed(capsys, check.shuffled_batch_indices, "shuffled_batch_indices",
                  batch_order_only, "consecutive examples")


def test_batches_always_dropping_the_last_examples_fail(capsys):
    def permute_full_batches_only(key, n, bs):
        return jax.random.permutation(key, n // bs * bs).reshape(-1, bs)

    expect_failed(capsys, check.shuffled_batch_indices, "shuffled_batch_indices",
                  permute_full_batches_only, "were never used")


def test_batches_sorted_within_each_batch_pass(capsys):
    def sorted_rows(key, n, bs):  # still a fresh random draw per batch
        return jnp.sort(training.shuffled_batch_indices(key, n, bs), axis=1)

    line, _ = run_checker(capsys, check.shuffled_batch_indices, sorted_rows)
    assert line.startswith("PASSED shuffled_batch_indices:"), line


# --- train_step ----------------------------------------------------------------------------


def test_train_step_without_update_fails(capsys):
    def no_update(model, optimizer, images, labels):
        logits = model(images)
        return training.cross_entropy_loss(logits, labels), training.accuracy(logits, labels)

    expect_failed(capsys, check.train_step, "train_step", no_update, "did not change")


def test_train_step_loss_after_update_fails(capsys):
    def loss_after(model, optimizer, images, labels):
        training.train_batch(model, optimizer, images, labels)
        logits = model(images)
        return training.cross_entropy_loss(logits, labels), training.accuracy(logits, labels)

    expect_failed(capsys, check.train_step, "train_step", loss_after, "before the update")


def test_train_step_gradient_ascent_fails(capsys):
    def ascent(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(images)
            return -training.cross_entropy_loss(logits, labels), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return -loss, training.accuracy(logits, labels)

    expect_failed(capsys, check.train_step, "train_step", ascent, "updated parameters differ")


def test_train_step_returning_only_loss_fails(capsys):
    def only_loss(model, optimizer, images, labels):
        return training.train_batch(model, optimizer, images, labels)[0]

    expect_failed(capsys, check.train_step, "train_step", only_loss, "expected a tuple")


def test_train_step_with_gradient_of_the_summed_loss_fails(capsys):
    def summed_gradient(model, optimizer, images, labels):  # Adam would hide the factor B
        def loss_fn(model):
            logits = model(images)
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return per_example.sum(), (per_example.mean(), logits)

        (_, (loss, logits)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, training.accuracy(logits, labels)

    expect_failed(capsys, check.train_step, "train_step", summed_gradient,
                  "moved 9 times as far as expected, the batch size")


def test_train_step_calling_the_reference_body_passes(capsys):
    def step(model, optimizer, images, labels):
        return training.train_batch(model, optimizer, images, labels)

    line, _ = run_checker(capsys, check.train_step, step)
    assert line.startswith("PASSED train_step:"), line


def test_train_step_flattening_the_documented_images_passes(capsys):
    def flattening_step(model, optimizer, images, labels):  # (B, 28, 28), as documented
        flat = images.reshape(-1, 28 * 28)

        def loss_fn(model):
            logits = model(flat)
            return training.cross_entropy_loss(logits, labels), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, training.accuracy(logits, labels)

    line, use = run_checker(capsys, check.train_step, flattening_step)
    assert line.startswith("PASSED train_step:"), line
    assert use is flattening_step


# --- training_flops --------------------------------------------------------------------------


def test_reference_training_flops_for_the_lesson_mlp():
    weights = 784 * 512 + 512 * 512 + 512 * 10
    assert check.reference_training_flops((784, 512, 512, 10)) == 6 * weights - 2 * 784 * 512
    assert check.reference_training_flops([784, 10]) == 4 * 784 * 10


def _flops_three_times_forward(sizes):
    return 3 * sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def _flops_forward_and_weights(sizes):
    return 2 * sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def _flops_int32(sizes):
    s = jnp.asarray(sizes, jnp.int32)
    layers = 2 * s[:-1] * s[1:]
    return 2 * jnp.sum(layers) + jnp.sum(layers[1:])


def _flops_float32(sizes):
    s = jnp.asarray(sizes, jnp.float32)
    layers = 2 * s[:-1] * s[1:]
    return 2 * jnp.sum(layers) + jnp.sum(layers[1:])


def _flops_for_three_layers_only(sizes):
    d0, d1, d2, d3 = 784, 512, 512, 10
    return 2 * 2 * (d0 * d1 + d1 * d2 + d2 * d3) + 2 * (d1 * d2 + d2 * d3)


def _flops_with_biases(sizes):
    return check.reference_training_flops(sizes) + sum(sizes[1:])


@pytest.mark.parametrize(("wrong", "says"), [
    (_flops_three_times_forward, "3 x the forward FLOPs"),
    (_flops_forward_and_weights, "expected"),
    (_flops_int32, "overflowed a 32-bit integer"),
    (_flops_float32, "(40001, 60007, 30011)"),
    (_flops_for_three_layers_only, "(784, 10)"),
    (_flops_with_biases, "expected"),
])
def test_training_flops_wrong_answers_fail(capsys, wrong, says):
    expect_failed(capsys, check.training_flops, "training_flops", wrong, says)
