"""Checkers of lesson 06_multi_device: typical wrong answers FAIL with a message that says what
is wrong (naming a cause only where the checker's probe established it), correct alternatives
PASS, on meshes of several devices.

A multi-device bug hides on one device, so these tests need 8 CPU devices. JAX fixes its
device count when it starts, and the test session's process may already have started it
with one: then the multi-device tests run in a fresh pytest process of this file with 8
simulated devices (``test_in_a_process_with_8_devices``), and are skipped here.

Wrong answers, by the class of mistake a checker must catch:
- the checker's set-up would hide it: a ring that works only for powers of two; a ring that
  ignores its ``axis_name``; a pmap step that averages the updated parameters (the same as
  averaging the gradients under SGD, not under Adam);
- the value is wrong: psum instead of pmean, one ring round too many, sending one's own
  value every round, a loss summed over the devices, float arithmetic on large byte counts;
- the FAILED line must not name a cause it did not establish: a loss summed over the
  examples (with pmean used correctly) is not reported as "psum".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils import environment

_CHILD = "COURSE_LESSON06_CHECKER_TESTS"
if os.environ.get(_CHILD) == "1":
    environment.simulate_cpu_devices(8)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from checker_helpers import expect_failed, run_checker  # noqa: E402
from flax import nnx  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from utils import parallel, training  # noqa: E402
from utils.checks import lesson06_multi_device as check  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _eight_devices() -> bool:
    return environment.jax_started() and len(jax.devices("cpu")) >= 8


needs_8 = pytest.mark.skipif(os.environ.get(_CHILD) != "1",
                             reason="runs in a child process with 8 CPU devices")


def test_in_a_process_with_8_devices():
    """Run this file's multi-device tests in a fresh process with 8 simulated devices."""
    if os.environ.get(_CHILD) == "1":
        assert _eight_devices()
        return
    env = dict(os.environ, **{_CHILD: "1"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(Path(__file__))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


# --- ring_all_reduce -------------------------------------------------------------------------


@needs_8
def test_ring_correct_alternatives_pass(capsys):
    def other_direction(x, axis_name, axis_size):  # sends each value straight to its target
        total = x
        for shift in range(1, axis_size):
            total = total + lax.ppermute(
                x, axis_name, [(i, (i - shift) % axis_size) for i in range(axis_size)])
        return total

    def asks_the_axis_size(x, axis_name, axis_size):  # ignores axis_size, asks JAX instead
        n = lax.axis_size(axis_name)
        total = passed = x
        for _ in range(n - 1):
            passed = lax.ppermute(passed, axis_name, [(i, (i + 1) % n) for i in range(n)])
            total = total + passed
        return total

    for answer in (other_direction, asks_the_axis_size):
        line, use = run_checker(capsys, check.ring_all_reduce, answer)
        assert line.startswith("PASSED ring_all_reduce:"), line
        assert "1, 2, 3, 5, 6, 7 and 8 devices" in line and "2 x 3" in line, line
        assert use is answer


@needs_8
def test_ring_using_psum_fails(capsys):
    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce",
                  lambda x, name, n: lax.psum(x, name), "uses psum")


@needs_8
def test_ring_using_all_gather_fails(capsys):
    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce",
                  lambda x, name, n: lax.all_gather(x, name).sum(axis=0), "all_gather")


@needs_8
def test_ring_returning_x_fails(capsys):
    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", lambda x, name, n: x,
                  "no ppermute")


@needs_8
def test_ring_with_one_round_too_many_fails(capsys):
    def n_rounds(x, axis_name, axis_size):
        ring = [(i, (i + 1) % axis_size) for i in range(axis_size)]
        total = passed = x
        for _ in range(axis_size):
            passed = lax.ppermute(passed, axis_name, perm=ring)
            total = total + passed
        return total

    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", n_rounds, "twice")


@needs_8
def test_ring_passing_own_value_each_round_fails(capsys):
    def always_own(x, axis_name, axis_size):  # sends x every round: adds a neighbour N-1 times
        ring = [(i, (i + 1) % axis_size) for i in range(axis_size)]
        total = x
        for _ in range(axis_size - 1):
            total = total + lax.ppermute(x, axis_name, perm=ring)
        return total

    line = expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", always_own,
                         "on 3 devices (axis 'ring')", "got [", "expected the sum [")
    assert "twice" not in line


@needs_8
def test_ring_for_powers_of_two_only_fails(capsys):
    def doubling(x, axis_name, axis_size):  # log2(N) rounds of doubling shifts: right for 2, 4, 8
        total, shift = x, 1
        while shift < axis_size:
            total = total + lax.ppermute(
                total, axis_name, [(i, (i + shift) % axis_size) for i in range(axis_size)])
            shift *= 2
        return total

    # Right on 2 devices; on 3 the shifts 1 and 2 add x_i + x_(i-1) + x_(i-2) + x_(i-3), and
    # x_(i-3) is x_i again: the probe finds the sum plus each device's own value.
    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", doubling,
                  "on 3 devices (axis 'ring')", "own x twice")


@needs_8
def test_ring_butterfly_for_powers_of_two_only_fails(capsys):
    def butterfly(x, axis_name, axis_size):  # partners i XOR 1, 2, 4: no partner 3 on 3 devices
        total, shift = x, 1
        while shift < axis_size:
            total = total + lax.ppermute(
                total, axis_name, [(i, i ^ shift) for i in range(axis_size)])
            shift *= 2
        return total

    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", butterfly,
                  "on 3 devices (axis 'ring'), your function raised")


@needs_8
def test_ring_ignoring_its_axis_name_fails(capsys):
    def lessons_axis(x, axis_name, axis_size):  # always the lesson's axis 'data'
        return parallel.ring_all_reduce(x, "data", axis_size)

    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", lessons_axis,
                  "on 3 devices (axis 'ring')", "named 'data' works", "axis_name")


# --- allreduce_traffic -----------------------------------------------------------------------


@needs_8
def test_traffic_alternatives_pass(capsys):
    def as_list_of_numpy_ints(nbytes, n_devices):
        chunk = np.int64(nbytes // n_devices) if nbytes < 2**62 else nbytes // n_devices
        return [(n_devices - 1) * nbytes, 2 * (n_devices - 1) * chunk]

    line, use = run_checker(capsys, check.allreduce_traffic, as_list_of_numpy_ints)
    assert line.startswith("PASSED allreduce_traffic:"), line
    assert use is as_list_of_numpy_ints


@needs_8
def test_traffic_in_float_arithmetic_fails(capsys):
    expect_failed(capsys, check.allreduce_traffic, "allreduce_traffic",
                  lambda nbytes, n: ((n - 1) * nbytes, 2 * (n - 1) / n * nbytes),
                  "2**53", "lost the last digits")


@needs_8
def test_traffic_swapped_fails(capsys):
    expect_failed(capsys, check.allreduce_traffic, "allreduce_traffic",
                  lambda nbytes, n: parallel.allreduce_traffic(nbytes, n)[::-1], "other order")


@needs_8
def test_traffic_with_n_rounds_fails(capsys):
    line = expect_failed(capsys, check.allreduce_traffic, "allreduce_traffic",
                         lambda nbytes, n: (n * nbytes, 2 * nbytes), "the naive ring",
                         "expected 2")
    assert "float" not in line


@needs_8
def test_traffic_without_chunks_fails(capsys):
    expect_failed(capsys, check.allreduce_traffic, "allreduce_traffic",
                  lambda nbytes, n: ((n - 1) * nbytes, 2 * (n - 1) * nbytes),
                  "reduce-scatter + all-gather came back as 4, expected 2")


@needs_8
def test_traffic_returning_one_number_fails(capsys):
    expect_failed(capsys, check.allreduce_traffic, "allreduce_traffic",
                  lambda nbytes, n: (n - 1) * nbytes, "expected a pair")


# --- device_grads ----------------------------------------------------------------------------


@needs_8
def test_grads_then_pmean_fails_naming_the_trap(capsys):
    def pmap_style(loss_fn, params, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        return lax.pmean(loss, "data"), lax.pmean(grads, "data")

    expect_failed(capsys, check.device_grads, "device_grads", pmap_style,
                  "the loss is right but the gradients are 2 times", "already sums")


@needs_8
def test_grads_of_summed_loss_fail_as_sums(capsys):
    def summed(loss_fn, params, images, labels):
        return jax.value_and_grad(lambda p: lax.psum(loss_fn(p, images, labels), "data"))(params)

    line = expect_failed(capsys, check.device_grads, "device_grads", summed,
                         "both 2 times", "sums over the devices, not means")
    assert "already sums" not in line


@needs_8
def test_grads_returning_local_loss_fail(capsys):
    def local_loss(loss_fn, params, images, labels):
        _, grads = parallel.device_grads(loss_fn, params, images, labels)
        return loss_fn(params, images, labels), grads

    expect_failed(capsys, check.device_grads, "device_grads", local_loss)


@needs_8
def test_grads_of_a_loss_summed_over_examples_fail_without_a_named_cause(capsys):
    def sum_over_examples(loss_fn, params, images, labels):  # not the trap, not a psum
        n = images.shape[0]
        return jax.value_and_grad(
            lambda p: lax.pmean(loss_fn(p, images, labels) * n, "data"))(params)

    line = expect_failed(capsys, check.device_grads, "device_grads", sum_over_examples,
                         "on 2 devices (12 examples each)", "at index")
    assert "already sums" not in line and "sums over the devices" not in line


@needs_8
def test_grads_divided_by_axis_size_pass(capsys):
    def divided(loss_fn, params, images, labels):  # the other correct form
        n = lax.axis_size("data")
        loss, grads = jax.value_and_grad(
            lambda p: loss_fn(p, images, labels) / n)(params)
        return lax.psum(loss, "data"), grads

    line, _ = run_checker(capsys, check.device_grads, divided)
    assert line.startswith("PASSED device_grads:"), line
    assert "2, 3 and 8 devices" in line, line


# --- data_parallel_step ----------------------------------------------------------------------


def _step(reduce_grads, reduce_loss=True, loss_scale=1.0):
    def step(graphdef, state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(
            lambda m: loss_scale * training.cross_entropy_loss(m(images), labels))(model)
        grads = reduce_grads(grads)
        optimizer.update(model, grads)
        loss = lax.pmean(loss, "data") if reduce_loss else loss
        return nnx.state((model, optimizer)), loss

    return step


def _averaged_parameters(graphdef, state, images, labels):
    """Each device updates with its own gradient; the new states are averaged afterwards."""
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(
        lambda m: training.cross_entropy_loss(m(images), labels))(model)
    optimizer.update(model, grads)
    return lax.pmean(nnx.state((model, optimizer)), "data"), lax.pmean(loss, "data")


@needs_8
def test_pmap_step_alternative_passes(capsys):
    def psum_then_divide(g):
        return jax.tree.map(lambda v: lax.psum(v, "data") / lax.axis_size("data"), g)

    answer = _step(psum_then_divide)
    line, use = run_checker(capsys, check.data_parallel_step, answer)
    assert line.startswith("PASSED data_parallel_step:"), line
    assert "SGD on a mesh of 2 devices and with Adam on a mesh of 3 devices" in line
    assert use is answer


@needs_8
def test_pmap_step_without_pmean_fails(capsys):
    expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                  _step(lambda g: g), "differs from device 0's", "same update")


@needs_8
def test_pmap_step_with_psum_fails(capsys):
    expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                  _step(lambda g: lax.psum(g, "data")), "with SGD on 2 devices",
                  "moved 2 times as far", "2 times the mean gradient")


@needs_8
def test_pmap_step_with_a_fixed_device_count_fails(capsys):
    def over_two(g):  # the mean on 2 devices only: 1.5 times the mean on 3
        return jax.tree.map(lambda v: lax.psum(v, "data") / 2, g)

    line = expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                         _step(over_two), "with Adam on 3 devices",
                         "differs from the single-device step")
    assert "average of" not in line


@needs_8
def test_pmap_step_averaging_parameters_fails_under_adam(capsys):
    line = expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                         _averaged_parameters, "with Adam on 3 devices",
                         "average of 3 updates", "not under Adam")
    assert "SGD on" not in line.split(":")[1]  # it passed the SGD steps: Adam caught it


@needs_8
def test_pmap_step_with_local_loss_fails(capsys):
    expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                  _step(lambda g: lax.pmean(g, "data"), reduce_loss=False),
                  "each device's own examples")


@needs_8
def test_pmap_step_with_a_scaled_loss_names_no_cause(capsys):
    # The loss summed over the examples (4 per device): pmean is used, as it should be; the
    # gradient is 4 times too large for another reason. No "psum" or "sum over the devices".
    line = expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                         _step(lambda g: lax.pmean(g, "data"), loss_scale=6.0),
                         "differs from the single-device step")
    said = line.split(" Hint:")[0]  # what the checker found (the hint is the same for all)
    assert "psum" not in said and "sum over the devices" not in said, line


@needs_8
def test_failed_verdicts_are_the_same_every_run(capsys):
    def lessons_axis(x, axis_name, axis_size):
        return parallel.ring_all_reduce(x, "data", axis_size)

    lines = {expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", lessons_axis)
             .split(" Hint:")[0] for _ in range(3)}
    assert len(lines) == 1, lines


# --- shard_bytes -----------------------------------------------------------------------------


@needs_8
def test_bytes_of_the_whole_array_fail(capsys):
    expect_failed(capsys, check.shard_bytes, "shard_bytes",
                  lambda shape, dtype, s: int(np.prod(shape)) * np.dtype(dtype).itemsize,
                  "whole array")


@needs_8
def test_bytes_divided_by_all_devices_fail(capsys):
    def divided(shape, dtype, sharding):
        return int(np.prod(shape)) * np.dtype(dtype).itemsize // sharding.mesh.size

    expect_failed(capsys, check.shard_bytes, "shard_bytes", divided, "PartitionSpec()")


@needs_8
def test_elements_not_bytes_fail(capsys):
    expect_failed(capsys, check.shard_bytes, "shard_bytes",
                  lambda shape, dtype, s: int(np.prod(s.shard_shape(tuple(shape)))))


@needs_8
def test_bytes_as_text_fail(capsys):
    expect_failed(capsys, check.shard_bytes, "shard_bytes",
                  lambda shape, dtype, s: str(parallel.shard_bytes(shape, dtype, s)), "str")


@needs_8
def test_shard_bytes_student_version_passes(capsys):
    def by_spec(shape, dtype, sharding):
        pieces = 1
        for axes in tuple(sharding.spec):
            for axis in (axes,) if isinstance(axes, str) else (axes or ()):
                pieces *= sharding.mesh.shape[axis]
        return int(np.prod(shape)) * np.dtype(dtype).itemsize // pieces

    line, _ = run_checker(capsys, check.shard_bytes, by_spec)
    assert line.startswith("PASSED shard_bytes:"), line


@needs_8
def test_batch_sharding_helper_splits_the_first_axis_over_data():
    mesh = parallel.data_mesh((4, 2))
    placed = jax.device_put(np.zeros((8, 3), np.float32), parallel.batch_sharding(mesh))
    assert placed.sharding.spec == P("data")
    assert {s.data.shape for s in placed.addressable_shards} == {(2, 3)}
    assert isinstance(placed.sharding, NamedSharding)
