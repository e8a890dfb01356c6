"""utils.parallel: meshes, byte counts, collective counts, and running several processes.

The exercises' reference functions are tested against wrong answers through their checkers
(tests/test_checks_lesson06.py); here: the helpers' own behaviour, bad input, and that a
loop as long as lesson 06's longest, with collectives on 8 simulated CPU devices, runs to
the end when it waits for a result every few steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from utils import parallel

ROOT = Path(__file__).resolve().parent.parent


def test_data_mesh_1d_and_2d_have_auto_axes():
    mesh = parallel.data_mesh(1)
    assert mesh.axis_names == ("data",) and mesh.devices.size == 1
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    mesh2 = parallel.data_mesh((1, 1))
    assert mesh2.axis_names == ("data", "model")


@pytest.mark.parametrize("shape", [0, (1, 2, 3), (2, -1), "8"])
def test_data_mesh_bad_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="shape must be"):
        parallel.data_mesh(shape)


def test_data_mesh_with_too_few_devices_says_how_many():
    with pytest.raises(ValueError, match=r"needs 64 devices, but only \d+"):
        parallel.data_mesh(64)


def test_shard_bytes_replicated_and_sharded():
    mesh = parallel.data_mesh(1)
    assert parallel.shard_bytes((), "float32", NamedSharding(mesh, P())) == 4  # a scalar
    assert parallel.shard_bytes((3, 5), "bfloat16", NamedSharding(mesh, P())) == 30
    assert parallel.shard_bytes((8, 2), np.int8, NamedSharding(mesh, P("data"))) == 16
    big = parallel.shard_bytes((2**20, 2**16), "float32", NamedSharding(mesh, P()))
    assert big == 2**38  # no overflow, nothing allocated


def test_batch_sharding_names_the_first_axis_only():
    sharding = parallel.batch_sharding(parallel.data_mesh(1))
    assert sharding.spec == P("data")
    placed = jax.device_put(np.zeros((4, 3), np.float32), sharding)
    assert placed.shape == (4, 3)


HLO = textwrap.dedent("""\
    %all-reduce-start = f32[10]{0} all-reduce-start(f32[10]{0} %p), replica_groups={}
    %all-reduce-done = f32[10]{0} all-reduce-done(f32[10]{0} %all-reduce-start)
    %ar.2 = (f32[3]{0}, f32[4]{0}) all-reduce(f32[3]{0} %a, f32[4]{0} %b), to_apply=%add
    %cp = f32[2]{0} collective-permute(f32[2]{0} %x), source_target_pairs={{0,1}}
    %add.1 = f32[2]{0} add(f32[2]{0} %x, f32[2]{0} %y)
""")


def test_count_collectives_counts_each_operation_once():
    counts = parallel.count_collectives(HLO)
    assert counts["all-reduce"] == 2  # the async start/done pair counts once
    assert counts["collective-permute"] == 1
    assert counts["all-gather"] == 0
    assert parallel.count_collectives("") == dict.fromkeys(counts, 0)


def test_count_collectives_of_a_compiled_single_device_sum_is_zero():
    text = jax.jit(lambda x: x.sum()).lower(np.ones(4, np.float32)).compile().as_text()
    assert parallel.count_collectives(text)["all-reduce"] == 0


def test_free_port_is_a_port_number():
    assert 0 < parallel.free_port() < 65536


def test_run_processes_returns_what_each_printed():
    results = parallel.run_processes(
        [[sys.executable, "-c", f"print({i}); import sys; print('e', file=sys.stderr)"]
         for i in range(2)], timeout=60)
    assert [r.stdout.strip() for r in results] == ["0", "1"]
    assert all(r.returncode == 0 and r.stderr.strip() == "e" for r in results)


def test_run_processes_kills_the_others_and_their_children_on_failure(tmp_path):
    pids_file = tmp_path / "child.pid"
    sleeper = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
               f"'import time; time.sleep(300)']); open({str(pids_file)!r}, 'w').write("
               f"str(c.pid)); time.sleep(300)")
    started: list[int] = []
    commands = [[sys.executable, "-c", sleeper],
                [sys.executable, "-c", "import time, sys; time.sleep(1.5); sys.exit(3)"]]
    with pytest.raises(parallel.ProcessesFailed, match="process 1 exited with code 3"):
        parallel.run_processes(commands, timeout=60, on_start=started.extend)
    child = int(pids_file.read_text())
    for pid in [*started, child]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text(), f"process {pid} survived"


def test_run_processes_bad_input():
    with pytest.raises(ValueError, match="timeout"):
        parallel.run_processes([["true"]], timeout=0)
    with pytest.raises(ValueError, match="no commands"):
        parallel.run_processes([], timeout=1)


LONG_LOOP = textwrap.dedent("""\
    from utils import environment
    environment.simulate_cpu_devices(8)
    import jax, numpy as np, optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from utils import parallel, training
    mesh = parallel.data_mesh(8)
    model = training.MLP(784, 32, 10, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split((model, training.create_optimizer(model, optax.adam(1e-3))))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(64, 28, 28)).astype(np.float32),
                       parallel.batch_sharding(mesh))
    y = jax.device_put(rng.integers(0, 10, 64).astype(np.int32), parallel.batch_sharding(mesh))

    @jax.jit
    def step(state, x, y):
        m, o = nnx.merge(graphdef, state)
        loss, _ = training.train_batch(m, o, x, y)
        return nnx.state((m, o)), loss

    for i in range(STEPS):
        state, loss = step(state, x, y)
        if (i + 1) % 5 == 0:
            jax.block_until_ready(loss)
    print("finished", STEPS, float(loss) < 2.3)
""")


def test_a_loop_longer_than_the_lessons_longest_runs_to_the_end():
    steps = 30  # lesson 06's longest loop has 20 steps (CPU sizes)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", LONG_LOOP.replace("STEPS", str(steps))],
                            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"finished {steps} True"
    assert result.stderr.strip() == ""
