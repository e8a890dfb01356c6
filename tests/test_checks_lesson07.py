"""Checkers of lesson 07_performance: typical wrong answers FAIL with a message that says
what is wrong, and right answers written differently from the reference PASS. (The shared
behaviour, reference PASSED, blank NOT ATTEMPTED, crash FAILED, is in test_checks_common.py.)
"""

from __future__ import annotations

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from checker_helpers import expect_failed, run_checker

from utils.checks import lesson07_performance as check

# --- arithmetic_intensity -------------------------------------------------------------------


def test_intensity_written_differently_passes(capsys):
    def mine(cost):
        return cost.get("flops", 0) / cost.get("bytes accessed")

    line, use = run_checker(capsys, check.arithmetic_intensity, mine)
    assert line.startswith("PASSED arithmetic_intensity:"), line
    assert use is mine


def test_intensity_upside_down_fails(capsys):
    expect_failed(capsys, check.arithmetic_intensity, "arithmetic_intensity",
                  lambda c: c["bytes accessed"] / max(c["flops"], 1e-30), "bytes per FLOP")


def test_intensity_summing_every_bytes_key_fails(capsys):
    def summed(cost):
        moved = sum(v for k, v in cost.items() if k.startswith("bytes accessed"))
        return cost["flops"] / moved

    expect_failed(capsys, check.arithmetic_intensity, "arithmetic_intensity", summed,
                  "total 'bytes accessed'")


def test_intensity_with_floor_division_fails(capsys):
    expect_failed(capsys, check.arithmetic_intensity, "arithmetic_intensity",
                  lambda c: c["flops"] // c["bytes accessed"], "expected")


def test_intensity_returning_text_fails(capsys):
    expect_failed(capsys, check.arithmetic_intensity, "arithmetic_intensity",
                  lambda c: f"{c['flops'] / c['bytes accessed']:.2f}", "a single number")


def test_intensity_that_changes_the_dict_fails(capsys):
    def pops(cost):
        return cost["flops"] / cost.pop("bytes accessed")

    expect_failed(capsys, check.arithmetic_intensity, "arithmetic_intensity", pops,
                  "changed the dict")


# --- prefetch_to_device ---------------------------------------------------------------------


def test_prefetch_written_with_a_list_passes(capsys):
    def mine(batches, size):
        it = iter(batches)
        ahead = [jax.device_put(b) for b in itertools.islice(it, size)]
        while ahead:
            ahead.extend(jax.device_put(b) for b in itertools.islice(it, 1))
            yield ahead.pop(0)

    line, _ = run_checker(capsys, check.prefetch_to_device, mine)
    assert line.startswith("PASSED prefetch_to_device:"), line


def test_prefetch_reading_everything_first_fails(capsys):
    def greedy(batches, size):
        return iter([jax.device_put(b) for b in batches])

    expect_failed(capsys, check.prefetch_to_device, "prefetch_to_device", greedy, "at most")


def test_prefetch_that_does_not_prefetch_fails(capsys):
    def one_at_a_time(batches, size):
        for b in batches:
            yield jax.device_put(b)

    expect_failed(capsys, check.prefetch_to_device, "prefetch_to_device", one_at_a_time,
                  "only", "start the next")


def test_prefetch_one_short_fails(capsys):
    """Refilling only after the yield keeps size - 1 batches ahead, not size."""
    def late_refill(batches, size):
        it = iter(batches)
        queue = collections.deque(jax.device_put(b) for b in itertools.islice(it, size))
        while queue:
            yield queue.popleft()
            queue.extend(jax.device_put(b) for b in itertools.islice(it, 1))

    expect_failed(capsys, check.prefetch_to_device, "prefetch_to_device", late_refill, "only")


def test_prefetch_dropping_the_last_batches_fails(capsys):
    def drops(batches, size):
        it = iter(batches)
        queue = collections.deque(jax.device_put(b) for b in itertools.islice(it, size))
        for b in it:
            item = queue.popleft()
            queue.append(jax.device_put(b))
            yield item

    expect_failed(capsys, check.prefetch_to_device, "prefetch_to_device", drops,
                  "expected all")


def test_prefetch_leaving_batches_on_the_host_fails(capsys):
    def on_host(batches, size):
        it = iter(batches)
        queue = collections.deque(itertools.islice(it, size))
        while queue:
            item = queue.popleft()
            queue.extend(itertools.islice(it, 1))
            yield item

    expect_failed(capsys, check.prefetch_to_device, "prefetch_to_device", on_host,
                  "jax.Array")


def test_prefetch_of_only_the_first_leaf_fails(capsys):
    def first_leaf(batches, size):
        from utils.pipeline import prefetch_to_device

        for item in prefetch_to_device(batches, size):
            yield item[0] if isinstance(item, tuple) else item

    expect_failed(capsys, check.prefetch_to_device, "prefetch_to_device", first_leaf,
                  "structure")


# --- accumulated_grads ----------------------------------------------------------------------


def test_accumulation_with_a_python_loop_passes(capsys):
    def mine(loss_fn, params, images, labels, k):
        xs, ys = jnp.split(images, k), jnp.split(labels, k)
        grads = [jax.grad(loss_fn)(params, x, y) for x, y in zip(xs, ys, strict=True)]
        return jax.tree.map(lambda *g: sum(g) / k, *grads)

    line, _ = run_checker(capsys, check.accumulated_grads, mine)
    assert line.startswith("PASSED accumulated_grads:"), line


def test_accumulation_summing_without_averaging_fails(capsys):
    def summed(loss_fn, params, images, labels, k):
        xs, ys = jnp.split(images, k), jnp.split(labels, k)
        grads = [jax.grad(loss_fn)(params, x, y) for x, y in zip(xs, ys, strict=True)]
        return jax.tree.map(lambda *g: sum(g), *grads)

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", summed,
                  "times too large")


def test_accumulation_of_the_last_micro_batch_only_fails(capsys):
    def last_only(loss_fn, params, images, labels, k):
        return jax.grad(loss_fn)(params, jnp.split(images, k)[-1], jnp.split(labels, k)[-1])

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", last_only,
                  "differs from the reference")


def test_accumulation_returning_a_list_fails(capsys):
    def as_list(loss_fn, params, images, labels, k):
        return jax.tree.leaves(jax.grad(loss_fn)(params, images, labels))

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", as_list, "structure")


# --- remat_forward --------------------------------------------------------------------------


def test_remat_with_jax_remat_inside_the_loop_passes(capsys):
    def mine(params, x):
        for w1, b1, w2, b2 in params:
            x = jax.remat(lambda blk, x: check.mlp_block(blk, x))((w1, b1, w2, b2), x)
        return x

    line, _ = run_checker(capsys, check.remat_forward, mine)
    assert line.startswith("PASSED remat_forward:"), line


def test_remat_without_checkpoint_fails(capsys):
    expect_failed(capsys, check.remat_forward, "remat_forward", check.plain_forward,
                  "0 jax.checkpoint region(s)")


def test_remat_of_the_whole_forward_fails(capsys):
    expect_failed(capsys, check.remat_forward, "remat_forward",
                  jax.checkpoint(check.plain_forward), "wrap each block")


def test_remat_saving_everything_fails(capsys):
    def saves_all(params, x):
        block = jax.checkpoint(check.mlp_block,
                               policy=jax.checkpoint_policies.everything_saveable)
        for b in params:
            x = block(b, x)
        return x

    expect_failed(capsys, check.remat_forward, "remat_forward", saves_all,
                  "recomputes nothing")


def test_remat_without_the_inner_relu_fails(capsys):
    def no_inner_relu(params, x):
        def block(b, x):
            w1, b1, w2, b2 = b
            return jax.nn.relu((x @ w1 + b1) @ w2 + b2)

        for b in params:
            x = jax.checkpoint(block)(b, x)
        return x

    expect_failed(capsys, check.remat_forward, "remat_forward", no_inner_relu,
                  "differs from the reference")


# --- train_epoch ----------------------------------------------------------------------------


def test_train_epoch_summing_on_the_device_passes(capsys):
    def mine(step, params, batches):
        total = jnp.zeros(())
        for batch in batches:
            params, loss = step(params, batch)
            total = total + loss
        return params, total / len(batches)

    line, _ = run_checker(capsys, check.train_epoch, mine)
    assert line.startswith("PASSED train_epoch:"), line


def test_train_epoch_with_float_in_the_loop_fails(capsys):
    def syncing(step, params, batches):
        total = 0.0
        for batch in batches:
            params, loss = step(params, batch)
            total += float(loss)
        return params, jnp.asarray(total / len(batches))

    expect_failed(capsys, check.train_epoch, "train_epoch", syncing, "host sync")


def test_train_epoch_returning_a_python_float_fails(capsys):
    def returns_float(step, params, batches):
        params, losses = check.reference_train_epoch(step, params, batches)
        return params, float(losses)

    expect_failed(capsys, check.train_epoch, "train_epoch", returns_float, "not a jax.Array")


def test_train_epoch_with_numpy_mean_fails(capsys):
    def numpy_mean(step, params, batches):
        losses = []
        for batch in batches:
            params, loss = step(params, batch)
            losses.append(loss)
        return params, jnp.asarray(np.mean(np.stack(losses)))

    expect_failed(capsys, check.train_epoch, "train_epoch", numpy_mean, "host sync")


def test_train_epoch_returning_the_last_loss_fails(capsys):
    def last(step, params, batches):
        for batch in batches:
            params, loss = step(params, batch)
        return params, loss

    expect_failed(capsys, check.train_epoch, "train_epoch", last, "the mean loss")


def test_train_epoch_stepping_twice_fails(capsys):
    def twice(step, params, batches):
        losses = []
        for batch in batches:
            params, _ = step(params, batch)
            params, loss = step(params, batch)
            losses.append(loss)
        return params, jnp.mean(jnp.stack(losses))

    expect_failed(capsys, check.train_epoch, "train_epoch", twice, "once, in order")


def test_count_primitives_finds_nested_equations():
    jaxpr = jax.make_jaxpr(lambda x: jax.checkpoint(lambda y: jnp.sin(y) @ y)(x) @ x)(
        jnp.ones((2, 2)))
    assert check.count_primitives(jaxpr, {"dot_general"}) == 2
    assert check.count_primitives(jaxpr, check.REMAT_PRIMITIVES) == 1
