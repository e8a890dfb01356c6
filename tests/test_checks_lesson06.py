"""Checkers of lesson 06_multi_device: typical wrong answers FAIL with a message that says what
is wrong, on meshes of several devices.

A multi-device bug hides on one device, so these tests need 8 CPU devices. JAX fixes its
device count when it starts, and the test session's process may already have started it
with one: then the multi-device tests run in a fresh pytest process of this file with 8
simulated devices (``test_in_a_process_with_8_devices``), and are skipped here.
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
def test_ring_student_version_passes(capsys):
    def ring(x, axis_name, axis_size):  # the other direction: also right
        total = x
        for shift in range(1, axis_size):
            total = total + lax.ppermute(
                x, axis_name, [(i, (i - shift) % axis_size) for i in range(axis_size)])
        return total

    line, use = run_checker(capsys, check.ring_all_reduce, ring)
    assert line.startswith("PASSED ring_all_reduce:") and "1, 2, 4 and 8 devices" in line
    assert use is ring


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

    expect_failed(capsys, check.ring_all_reduce, "ring_all_reduce", always_own,
                  "differs from lax.psum")


# --- data_parallel_step ----------------------------------------------------------------------


def _step(reduce_grads, reduce_loss=True):
    def step(graphdef, state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(
            lambda m: training.cross_entropy_loss(m(images), labels))(model)
        grads = reduce_grads(grads)
        optimizer.update(model, grads)
        loss = lax.pmean(loss, "data") if reduce_loss else loss
        return nnx.state((model, optimizer)), loss

    return step


@needs_8
def test_pmap_step_without_pmean_fails(capsys):
    expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                  _step(lambda g: g), "differ from each other")


@needs_8
def test_pmap_step_with_psum_fails(capsys):
    expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                  _step(lambda g: lax.psum(g, "data")), "not lax.psum")


@needs_8
def test_pmap_step_with_local_loss_fails(capsys):
    expect_failed(capsys, check.data_parallel_step, "data_parallel_step",
                  _step(lambda g: lax.pmean(g, "data"), reduce_loss=False),
                  "lax.pmean(loss")


# --- device_grads ----------------------------------------------------------------------------


@needs_8
def test_grads_then_pmean_fails_naming_the_trap(capsys):
    def pmap_style(loss_fn, params, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        return lax.pmean(loss, "data"), lax.pmean(grads, "data")

    expect_failed(capsys, check.device_grads, "device_grads", pmap_style,
                  "2 times the single-device", "already sums")


@needs_8
def test_grads_of_summed_loss_fail(capsys):
    def summed(loss_fn, params, images, labels):
        return jax.value_and_grad(lambda p: lax.psum(loss_fn(p, images, labels), "data"))(params)

    expect_failed(capsys, check.device_grads, "device_grads", summed, "times the single-device")


@needs_8
def test_grads_returning_local_loss_fail(capsys):
    def local_loss(loss_fn, params, images, labels):
        _, grads = parallel.device_grads(loss_fn, params, images, labels)
        return loss_fn(params, images, labels), grads

    expect_failed(capsys, check.device_grads, "device_grads", local_loss)


@needs_8
def test_grads_divided_by_axis_size_pass(capsys):
    def divided(loss_fn, params, images, labels):  # the other correct form
        n = lax.axis_size("data")
        loss, grads = jax.value_and_grad(
            lambda p: loss_fn(p, images, labels) / n)(params)
        return lax.psum(loss, "data"), grads

    line, _ = run_checker(capsys, check.device_grads, divided)
    assert line.startswith("PASSED device_grads:"), line


# --- batch_sharding --------------------------------------------------------------------------


@needs_8
def test_replicated_batch_fails(capsys):
    expect_failed(capsys, check.batch_sharding, "batch_sharding",
                  lambda mesh: NamedSharding(mesh, P()), "not split")


@needs_8
def test_sharding_the_second_axis_fails(capsys):
    expect_failed(capsys, check.batch_sharding, "batch_sharding",
                  lambda mesh: NamedSharding(mesh, P(None, "data")))


@needs_8
def test_sharding_over_every_mesh_axis_fails(capsys):
    expect_failed(capsys, check.batch_sharding, "batch_sharding",
                  lambda mesh: NamedSharding(mesh, P(mesh.axis_names)), "rows")


@needs_8
def test_sharding_over_the_first_mesh_axis_fails(capsys):
    expect_failed(capsys, check.batch_sharding, "batch_sharding",
                  lambda mesh: NamedSharding(mesh, P(mesh.axis_names[0])), "'data'")


@needs_8
def test_single_device_sharding_fails(capsys):
    expect_failed(capsys, check.batch_sharding, "batch_sharding",
                  lambda mesh: jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0]),
                  "not spread")


@needs_8
def test_a_spec_for_2d_arrays_only_fails(capsys):
    expect_failed(capsys, check.batch_sharding, "batch_sharding",
                  lambda mesh: NamedSharding(mesh, P("data", None)), "raised")


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
