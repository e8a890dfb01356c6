"""utils.parallel: device choice, meshes, byte counts, collectives in compiled programs, and
running several processes.

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
import time
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
    assert parallel.count_collectives(HLO_2D)["collective-permute"] == 1  # -start, not -done


def test_count_collectives_of_a_compiled_single_device_sum_is_zero():
    text = jax.jit(lambda x: x.sum()).lower(np.ones(4, np.float32)).compile().as_text()
    assert parallel.count_collectives(text)["all-reduce"] == 0


# A 2-D step's collectives as XLA prints them: listed groups and iota groups (with a transpose).
HLO_2D = "\n".join([
    "%ar.1 = f32[512]{0} all-reduce(f32[512]{0} %a), channel_id=1, "
    "replica_groups={{0,1},{2,3},{4,5},{6,7}}, use_global_device_ids=true, to_apply=%add",
    "%ar.2 = f32[784,256]{1,0} all-reduce(%b), channel_id=2, "
    "replica_groups=[2,4]<=[4,2]T(1,0), use_global_device_ids=true, to_apply=%add",
    "%b = f32[784,256]{1,0} dot(f32[784,64]{1,0} %p, f32[64,256]{1,0} %q)",  # %ar.2's operand
    "%ar.3 = (f32[10]{0}, bf16[3,4]{1,0}) all-reduce(f32[10]{0} %c, bf16[3,4]{1,0} %d), "
    "channel_id=3, replica_groups=[1,8]<=[8], to_apply=%add",
    "%ar.4 = f32[64,512]{1,0} all-reduce(f32[64,512]{1,0} %e), channel_id=4, "
    "replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_1'}, to_apply=%add",
    "%ag = f32[8]{0} all-gather(f32[4]{0} %e), channel_id=5, "
    "replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}",
    "%cp-start = (f32[2]{0}, f32[2]{0}, u32[], u32[]) collective-permute-start(f32[2]{0} %f), "
    "channel_id=6, source_target_pairs={{0,2},{2,4},{4,6},{6,0}}",
    "%cp-done = f32[2]{0} collective-permute-done((f32[2]{0}, f32[2]{0}, u32[], u32[]) "
    "%cp-start)",
])



class _Mesh:  # what collectives_by_axis reads of a mesh
    def __init__(self, shape, names):
        self.devices = np.arange(int(np.prod(shape))).reshape(shape)
        self.axis_names = names


def test_collective_bytes_adds_the_operands_of_each_kind():
    found = parallel.collective_bytes(HLO_2D)
    # Operand types written inline, or (for %ar.2) read from the instruction that makes them.
    assert found["all-reduce"] == 512 * 4 + 784 * 256 * 4 + 10 * 4 + 3 * 4 * 2 + 64 * 512 * 4
    assert found["all-gather"] == 4 * 4  # the operand: what one device contributes
    assert found["collective-permute"] == 2 * 4  # the -start half, once
    assert found["reduce-scatter"] == 0
    assert parallel.collective_bytes(HLO)["collective-permute"] == 2 * 4


def test_collectives_by_axis_reads_listed_and_iota_groups():
    by_axis = parallel.collectives_by_axis(HLO_2D, _Mesh((4, 2), ("data", "model")))
    # {0,1}: same data row, model 0 and 1 -> 'model'; iota [2,4]<=[4,2]T(1,0) gives
    # {0,2,4,6},{1,3,5,7} -> 'data'; [1,8]<=[8] is every device; the named mesh's axis_1 is
    # 'model'; 0->2->4->6 runs along 'data'.
    assert by_axis == {"model": {"all-reduce": 2, "all-gather": 1},
                       "data": {"all-reduce": 1, "collective-permute": 1},
                       "data+model": {"all-reduce": 1}}


def test_collectives_by_axis_of_a_compiled_single_device_program_is_empty():
    text = jax.jit(lambda x: x.sum()).lower(np.ones(4, np.float32)).compile().as_text()
    assert parallel.collectives_by_axis(text, parallel.data_mesh(1)) == {}


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8])
def test_allreduce_traffic_is_exact(n):
    nbytes = n * (2**53 + 1)  # beyond float64's whole numbers
    naive, chunked = parallel.allreduce_traffic(nbytes, n)
    assert naive == (n - 1) * nbytes and chunked == 2 * (n - 1) * (2**53 + 1)
    assert isinstance(naive, int) and isinstance(chunked, int)


@pytest.mark.parametrize("args", [(10, 3), (-4, 2), (8, 0), (8.0, 2), (True, 1)])
def test_allreduce_traffic_bad_input_is_a_clear_error(args):
    with pytest.raises(ValueError, match="nbytes|n_devices"):
        parallel.allreduce_traffic(*args)


def test_ring_reduce_scatter_all_gather_on_one_device_and_bad_sizes():
    from jax import lax

    mesh = parallel.data_mesh(1)
    x = np.arange(6, dtype=np.float32)
    f = jax.shard_map(lambda v: parallel.ring_reduce_scatter_all_gather(v, "data", 1),
                      mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    assert np.array_equal(np.asarray(f(x)), x)
    bad = jax.shard_map(lambda v: parallel.ring_reduce_scatter_all_gather(v, "data", 4),
                        mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    with pytest.raises(ValueError, match="not a multiple of the 4 devices"):
        bad(x)
    del lax


def test_accelerator_plugins_finds_none_on_a_cpu_install():
    assert parallel.accelerator_plugins() == []  # the pinned CPU stack of this repository


def test_count_accelerators_on_cpu_is_zero_without_a_child_process(monkeypatch):
    def no_child(*args, **kwargs):
        raise AssertionError("no child process is needed without an accelerator plugin")

    monkeypatch.setattr(parallel.subprocess, "run", no_child)
    assert parallel.count_accelerators() == ("cpu", 0)


def test_choose_devices_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="'auto', 'real', 'simulated'"):
        parallel.choose_devices("gpu")
    with pytest.raises(ValueError, match="at least 2"):
        parallel.choose_devices("auto", simulated=1)


CHOOSE = textwrap.dedent("""\
    import sys, time
    from utils import parallel
    if sys.argv[2] == "gpu":  # pretend a GPU plugin reports one GPU (no GPU here)
        parallel.accelerator_plugins = lambda: ["xla_cuda12"]
        class Done:
            stdout = "DEVICES gpu 1\\n"
        parallel.subprocess.run = lambda *a, **k: Done()
    start = time.perf_counter()
    line = parallel.choose_devices(sys.argv[1])
    import jax
    print(line)
    print("devices:", jax.default_backend(), len(jax.devices()), len(jax.devices("cpu")))
""")


@pytest.mark.parametrize(("mode", "gpu", "says", "devices"), [
    ("auto", "none", "No accelerator found: this lesson runs on 8 simulated CPU devices.",
     "cpu 8 8"),
    ("auto", "gpu", 'Found 1 gpu device: fewer than the 2 this lesson needs, so it runs on 8 '
     'simulated CPU devices instead. To run it on the gpu alone, set DEVICES = "real"',
     "cpu 8 8"),
    ("simulated", "none", 'DEVICES = "simulated": this lesson runs on 8 simulated CPU devices',
     "cpu 8 8"),
])
def test_choose_devices_before_jax_starts(mode, gpu, says, devices):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", CHOOSE, mode, gpu], capture_output=True,
                            text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    line, found = result.stdout.strip().splitlines()
    assert line.startswith(says), line
    assert found == f"devices: {devices}"
    assert result.stderr.strip() == ""


def test_choose_devices_after_jax_started_says_so():
    jax.devices()  # started
    if len(jax.devices("cpu")) != 8:
        with pytest.raises(Exception, match="restart|Restart"):
            parallel.choose_devices("auto")
    else:  # pragma: no cover - a session that already has 8 CPU devices
        assert "already started" in parallel.choose_devices("auto")


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
    sleeper = (f"import os, subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
               f"'import time; time.sleep(300)']); open({str(pids_file)!r} + '.tmp', 'w')"
               f".write(str(c.pid)); os.rename({str(pids_file)!r} + '.tmp', {str(pids_file)!r}); "
               f"time.sleep(300)")
    started: list[int] = []
    # The second fails once the first has started its child (not after a fixed time: on a
    # loaded machine Python may take longer than that to start).
    fails = (f"import os, sys, time\nwhile not os.path.exists({str(pids_file)!r}): "
             f"time.sleep(0.05)\nsys.exit(3)")
    commands = [[sys.executable, "-c", sleeper], [sys.executable, "-c", fails]]
    with pytest.raises(parallel.ProcessesFailed, match="process 1 exited with code 3"):
        parallel.run_processes(commands, timeout=60, on_start=started.extend)
    child = int(pids_file.read_text())

    def alive(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    # A killed process is gone once the kernel has scheduled it to die: on a loaded machine
    # that takes a moment, so wait for it (a process that was never killed sleeps 300 s).
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in [*started, child]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in [*started, child]:
        assert not alive(pid), f"process {pid} survived"


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
