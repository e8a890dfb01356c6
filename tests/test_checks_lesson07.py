"""Checkers of lesson 07_performance: typical wrong answers FAIL with a message that says
what is wrong, and right answers written differently from the reference PASS. (The shared
behaviour, reference PASSED, blank NOT ATTEMPTED, crash FAILED, is in test_checks_common.py.)

Wrong answers by class (issue 21): a property the exercise is about is not tested (memory for
accumulation and remat, host reads for the epoch loop), structure judged instead of behaviour
(a scan over stacked blocks is a right answer), and the usual wrong values.
"""

from __future__ import annotations

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from checker_helpers import expect_failed, run_checker

from utils.checks import lesson07_performance as check

# --- roofline_time --------------------------------------------------------------------------


def test_roofline_written_with_the_ridge_point_passes(capsys):
    def mine(cost, peak_flops, peak_bandwidth):
        intensity = cost["flops"] / cost["bytes accessed"] if cost["bytes accessed"] else np.inf
        if intensity < peak_flops / peak_bandwidth:
            return cost["bytes accessed"] / peak_bandwidth, "memory"
        return cost["flops"] / peak_flops, "compute"

    line, use = run_checker(capsys, check.roofline_time, mine)
    assert line.startswith("PASSED roofline_time:"), line
    assert use is mine


def test_roofline_adding_the_two_times_fails(capsys):
    def added(cost, peak_flops, peak_bandwidth):
        compute = cost["flops"] / peak_flops
        memory = cost["bytes accessed"] / peak_bandwidth
        return compute + memory, "memory" if memory > compute else "compute"

    expect_failed(capsys, check.roofline_time, "roofline_time", added, "the bytes alone")


def test_roofline_taking_the_faster_resource_fails(capsys):
    def faster(cost, peak_flops, peak_bandwidth):
        compute = cost["flops"] / peak_flops
        memory = cost["bytes accessed"] / peak_bandwidth
        return min(compute, memory), "memory" if memory < compute else "compute"

    expect_failed(capsys, check.roofline_time, "roofline_time", faster, "expected")


def test_roofline_naming_the_wrong_roof_fails(capsys):
    def swapped(cost, peak_flops, peak_bandwidth):
        seconds, bound = check.reference_roofline_time(cost, peak_flops, peak_bandwidth)
        return seconds, {"memory": "compute", "compute": "memory"}[bound]

    expect_failed(capsys, check.roofline_time, "roofline_time", swapped, "roof, expected")


def test_roofline_calling_the_ridge_memory_bound_fails(capsys):
    def ridge_is_memory(cost, peak_flops, peak_bandwidth):
        compute = cost["flops"] / peak_flops
        memory = cost["bytes accessed"] / peak_bandwidth
        return max(compute, memory), "memory" if memory >= compute else "compute"

    expect_failed(capsys, check.roofline_time, "roofline_time", ridge_is_memory,
                  "named the 'memory' roof, expected 'compute'")


def test_roofline_using_xla_optimal_seconds_fails(capsys):
    def xla_estimate(cost, peak_flops, peak_bandwidth):
        _, bound = check.reference_roofline_time(cost, peak_flops, peak_bandwidth)
        return cost["optimal_seconds"], bound

    expect_failed(capsys, check.roofline_time, "roofline_time", xla_estimate, "expected")


def test_roofline_summing_every_bytes_key_fails(capsys):
    def summed(cost, peak_flops, peak_bandwidth):
        moved = sum(v for k, v in cost.items() if k.startswith("bytes accessed"))
        return check.reference_roofline_time({"flops": cost["flops"], "bytes accessed": moved},
                                             peak_flops, peak_bandwidth)

    expect_failed(capsys, check.roofline_time, "roofline_time", summed, "expected")


def test_roofline_returning_only_the_time_fails(capsys):
    def only_time(cost, peak_flops, peak_bandwidth):
        return check.reference_roofline_time(cost, peak_flops, peak_bandwidth)[0]

    expect_failed(capsys, check.roofline_time, "roofline_time", only_time,
                  "expected a tuple (seconds, bound)")


def test_roofline_that_changes_the_dict_fails(capsys):
    def pops(cost, peak_flops, peak_bandwidth):
        cost.pop("optimal_seconds")
        return check.reference_roofline_time(cost, peak_flops, peak_bandwidth)

    expect_failed(capsys, check.roofline_time, "roofline_time", pops, "changed the dict")


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


def _micro_batches(images, labels, k):
    return (images.reshape(k, -1, *images.shape[1:]), labels.reshape(k, -1))


def test_accumulation_with_fori_loop_passes(capsys):
    def mine(loss_fn, params, images, labels, k):
        size = images.shape[0] // k

        def body(i, total):
            x = jax.lax.dynamic_slice_in_dim(images, i * size, size)
            y = jax.lax.dynamic_slice_in_dim(labels, i * size, size)
            return jax.tree.map(jnp.add, total, jax.grad(loss_fn)(params, x, y))

        zeros = jax.tree.map(jnp.zeros_like, params)
        return jax.tree.map(lambda t: t / k, jax.lax.fori_loop(0, k, body, zeros))

    line, _ = run_checker(capsys, check.accumulated_grads, mine)
    assert line.startswith("PASSED accumulated_grads:"), line


def test_accumulation_in_one_go_fails_on_memory(capsys):
    """The large batch's gradient in one go: the right values, but nothing bounded."""
    def one_go(loss_fn, params, images, labels, k):
        return jax.grad(loss_fn)(params, images, labels)

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", one_go,
                  "temporary memory", "as much as the whole batch in one go")


def test_accumulation_of_all_micro_batches_at_once_fails_on_memory(capsys):
    """vmap over the micro-batches: every micro-batch's activations and gradient at once."""
    def vmapped(loss_fn, params, images, labels, k):
        xs, ys = _micro_batches(images, labels, k)
        grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))(params, xs, ys)
        return jax.tree.map(lambda g: g.mean(0), grads)

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", vmapped,
                  "temporary memory")


def test_accumulation_in_an_unrolled_python_loop_fails_on_memory(capsys):
    """Right values, but jax.jit unrolls the loop and XLA (on a CPU, at least) keeps the
    micro-batches' work alive together: the compiled program is judged, not the source."""
    def unrolled(loss_fn, params, images, labels, k):
        total = jax.tree.map(jnp.zeros_like, params)
        for x, y in zip(jnp.split(images, k), jnp.split(labels, k), strict=True):
            total = jax.tree.map(jnp.add, total, jax.grad(loss_fn)(params, x, y))
        return jax.tree.map(lambda t: t / k, total)

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", unrolled,
                  "temporary memory")


def test_accumulation_summing_without_averaging_fails(capsys):
    def summed(loss_fn, params, images, labels, k):
        total = check.reference_accumulated_grads(loss_fn, params, images, labels, k)
        return jax.tree.map(lambda g: g * k, total)

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", summed,
                  "times too large")


def test_accumulation_of_the_last_micro_batch_only_fails(capsys):
    def last_only(loss_fn, params, images, labels, k):
        return jax.grad(loss_fn)(params, jnp.split(images, k)[-1], jnp.split(labels, k)[-1])

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", last_only,
                  "differs from the reference")


def test_accumulation_returning_a_list_fails(capsys):
    def as_list(loss_fn, params, images, labels, k):
        return jax.tree.leaves(check.reference_accumulated_grads(loss_fn, params, images,
                                                                 labels, k))

    expect_failed(capsys, check.accumulated_grads, "accumulated_grads", as_list, "structure")


# --- remat_forward --------------------------------------------------------------------------


def _stacked(params):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)


def test_remat_with_jax_remat_inside_the_loop_passes(capsys):
    def mine(params, x):
        for w1, b1, w2, b2 in params:
            x = jax.remat(lambda blk, x: check.mlp_block(blk, x))((w1, b1, w2, b2), x)
        return x

    line, _ = run_checker(capsys, check.remat_forward, mine)
    assert line.startswith("PASSED remat_forward:"), line


def test_remat_as_a_scan_over_stacked_blocks_passes(capsys):
    """One checkpoint region in the program, but the same memory: judged by behaviour."""
    def scanned(params, x):
        block = jax.checkpoint(check.mlp_block)
        return jax.lax.scan(lambda x, b: (block(b, x), None), x, _stacked(params))[0]

    line, _ = run_checker(capsys, check.remat_forward, scanned)
    assert line.startswith("PASSED remat_forward:"), line


def test_remat_without_checkpoint_fails(capsys):
    expect_failed(capsys, check.remat_forward, "remat_forward", check.plain_forward,
                  "keeps", "(128, 128)", "for the backward pass")


def test_remat_of_the_whole_forward_fails_on_peak_memory(capsys):
    """Keeps only x, but its backward pass recomputes every block at once."""
    expect_failed(capsys, check.remat_forward, "remat_forward",
                  jax.checkpoint(check.plain_forward), "at its peak", "without remat")


def test_remat_saving_the_matmul_outputs_fails(capsys):
    def saves_dots(params, x):
        block = jax.checkpoint(
            check.mlp_block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        for b in params:
            x = block(b, x)
        return x

    expect_failed(capsys, check.remat_forward, "remat_forward", saves_dots,
                  "for the backward pass")


def test_remat_of_each_layer_instead_of_each_block_fails(capsys):
    """The (B, h) output of a block's first layer is the second layer's input: kept."""
    def per_layer(params, x):
        layer = jax.checkpoint(lambda x, w, b: jax.nn.relu(x @ w + b))
        for w1, b1, w2, b2 in params:
            x = layer(layer(x, w1, b1), w2, b2)
        return x

    expect_failed(capsys, check.remat_forward, "remat_forward", per_layer,
                  "for the backward pass")


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

    expect_failed(capsys, check.train_epoch, "train_epoch", syncing, "read a value",
                  "on the host")


def test_train_epoch_printing_every_loss_fails(capsys):
    """Runs under jax.jit (it prints a tracer there) and a CPU's transfer guard never fires:
    only counting the host reads catches it."""
    def logging(step, params, batches):
        losses = []
        for i, batch in enumerate(batches):
            params, loss = step(params, batch)
            print(f"step {i}: loss {loss:.4f}" if not isinstance(loss, jax.core.Tracer)
                  else f"step {i}", end="\r")
            losses.append(loss)
        return params, jnp.mean(jnp.stack(losses))

    expect_failed(capsys, check.train_epoch, "train_epoch", logging, "read a value")


def test_train_epoch_waiting_for_every_step_fails(capsys):
    def waiting(step, params, batches):
        losses = []
        for batch in batches:
            params, loss = step(params, batch)
            losses.append(jax.block_until_ready(loss))
        return params, jnp.mean(jnp.stack(losses))

    expect_failed(capsys, check.train_epoch, "train_epoch", waiting, "waited for")


def test_train_epoch_with_numpy_mean_fails(capsys):
    def numpy_mean(step, params, batches):
        losses = []
        for batch in batches:
            params, loss = step(params, batch)
            losses.append(loss)
        return params, jnp.asarray(np.mean(np.stack(losses)))

    expect_failed(capsys, check.train_epoch, "train_epoch", numpy_mean, "host sync")


def test_train_epoch_returning_a_python_float_fails(capsys):
    def returns_float(step, params, batches):
        params, losses = check.reference_train_epoch(step, params, batches)
        return params, losses.tolist()

    expect_failed(capsys, check.train_epoch, "train_epoch", returns_float, "on the host")


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


# --- verdicts and helpers -------------------------------------------------------------------


def test_a_memory_verdict_is_the_same_every_run(capsys):
    """Memory figures come from JAX's trace and from the compiler: no run-to-run noise (the
    checker's fixtures are computed once per process, so the second run recomputes only the
    answer's own figures)."""
    whole = jax.checkpoint(check.plain_forward)
    first, _ = run_checker(capsys, check.remat_forward, whole)
    second, _ = run_checker(capsys, check.remat_forward, whole)
    assert first.startswith("FAILED") and first == second
