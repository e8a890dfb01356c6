"""Several devices, several processes (introduced in lesson 06_multi_device).

Reference implementations of the lesson's exercises, and the helpers its notebook, its
checkers and ``tools/distributed_train.py`` share:

- :func:`data_mesh`: a 1-D mesh ``('data',)`` (or 2-D ``('data', 'model')``) with the
  classic *Auto* axis types, over the first ``n`` devices.
- :func:`ring_all_reduce`: a sum over a named axis built from ``lax.ppermute`` only.
- :func:`data_parallel_step`: the ``pmap`` body of a data-parallel train step.
- :func:`device_grads`: the ``shard_map`` body that returns single-device gradients.
- :func:`batch_sharding`: the ``NamedSharding`` that splits a batch's first axis along
  ``'data'``.
- :func:`shard_bytes`: bytes one device holds of an array of a shape, dtype and sharding.
- :func:`count_collectives`: how many all-reduce (etc.) operations a compiled HLO text has.
- :func:`run_processes`: start several Python processes, wait with a timeout, and kill them
  all (process groups included) when one fails or the time is up.
- :func:`distributed_main`: the program ``tools/distributed_train.py`` runs in every process
  (data-parallel training with ``jax.distributed``); :func:`distributed_command` is the
  command line that starts it, with or without a checkout of the repository.

Nothing here starts JAX at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ProcessResult",
    "ProcessesFailed",
    "batch_sharding",
    "count_collectives",
    "data_mesh",
    "data_parallel_step",
    "device_grads",
    "distributed_command",
    "distributed_main",
    "free_port",
    "ring_all_reduce",
    "run_processes",
    "shard_bytes",
]

#: The mesh axis the lesson's data is split along (also the ``pmap`` axis name).
DATA = "data"
#: The second mesh axis of the lesson's 2-D mesh (the big kernels are split along it).
MODEL = "model"


def data_mesh(shape: int | Sequence[int], devices: Sequence[Any] | None = None) -> Any:
    """A ``jax.sharding.Mesh`` over the first ``prod(shape)`` devices, axis types *Auto*.

    ``shape`` ``n`` gives a 1-D mesh ``('data',)``; ``(n, m)`` a 2-D mesh
    ``('data', 'model')``. ``jax.make_mesh`` alone makes *Explicit* axes in recent JAX (every
    array must then carry its sharding in its type); *Auto* leaves the placement of
    intermediate values to the compiler, which is what the lesson shows first.
    """
    import jax
    import numpy as np

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not 1 <= len(shape) <= 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be n or (n, m) with positive whole numbers, got {shape!r}.")
    devices = list(jax.devices() if devices is None else devices)
    needed = int(np.prod(shape))
    if needed > len(devices):
        raise ValueError(f"a mesh of shape {shape} needs {needed} devices, but only "
                         f"{len(devices)} are available; use a smaller mesh.")
    names = (DATA, MODEL)[: len(shape)]
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.make_mesh(shape, names, axis_types=auto, devices=devices[:needed])


def ring_all_reduce(x: Any, axis_name: str, axis_size: int) -> Any:
    """The sum of ``x`` over all devices of ``axis_name``, from ``lax.ppermute`` only.

    Call inside ``shard_map`` or ``pmap``. Each of ``axis_size - 1`` rounds passes the
    value received last round one place along the ring and adds it: after the last round
    every device has added every other device's ``x`` once. Same shape and dtype as ``x``;
    equal to ``lax.psum(x, axis_name)``.
    """
    from jax import lax

    ring = [(i, (i + 1) % axis_size) for i in range(axis_size)]
    total = passed = x
    for _ in range(axis_size - 1):
        passed = lax.ppermute(passed, axis_name, perm=ring)
        total = total + passed
    return total


def data_parallel_step(graphdef: Any, state: Any, images: Any, labels: Any) -> tuple[Any, Any]:
    """One data-parallel train step: the body to ``jax.pmap(..., axis_name='data')``.

    ``state`` is ``nnx.state((model, optimizer))`` (replicated: every device has a copy),
    ``images (B_local, ...)``, ``labels (B_local,)`` this device's share of the batch.
    Gradients are averaged over devices with ``lax.pmean``, so every device applies the
    same update: the one a single device would make on the whole batch. Returns
    ``(new_state, loss)`` with the loss averaged over devices too.
    """
    from flax import nnx
    from jax import lax

    from utils.training import cross_entropy_loss

    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model: Any) -> Any:
        return cross_entropy_loss(model(images), labels)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    grads = lax.pmean(grads, DATA)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), lax.pmean(loss, DATA)


def device_grads(loss_fn: Callable[..., Any], params: Any, images: Any,
                 labels: Any) -> tuple[Any, Any]:
    """``(loss, grads)`` of the *global* mean loss: the body to ``jax.shard_map``.

    ``params`` replicated (``P()``), ``images``/``labels`` this device's share of the batch
    (``P('data')``); ``loss_fn(params, images, labels)`` is the mean loss over the examples
    it is given. Inside ``shard_map`` the gradient with respect to a replicated value already
    sums over the devices, so differentiate the mean over devices (``lax.pmean`` of the
    local loss) and do *not* average the gradients again: that would be N times too large.
    """
    import jax
    from jax import lax

    def global_loss(params: Any) -> Any:
        return lax.pmean(loss_fn(params, images, labels), DATA)

    return jax.value_and_grad(global_loss)(params)


def batch_sharding(mesh: Any) -> Any:
    """The ``NamedSharding`` that splits a batch's first axis along the mesh axis ``'data'``.

    ``PartitionSpec('data')`` names the first dimension only, so it fits arrays of any rank
    (images ``(B, 28, 28)`` and labels ``(B,)`` alike); every other dimension, and any other
    mesh axis, is replicated.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(mesh, P(DATA))


def shard_bytes(shape: Sequence[int], dtype: Any, sharding: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` that *one* device holds under ``sharding``.

    A dimension split over mesh axes of sizes ``a, b, ...`` is cut into ``a * b * ...``
    pieces; a replicated dimension is kept whole. No array is created, so this works for
    sizes that would not fit.
    """
    import numpy as np

    return int(np.prod(sharding.shard_shape(tuple(shape)), dtype=np.int64)
               * np.dtype(dtype).itemsize)


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def count_collectives(hlo_text: str) -> dict[str, int]:
    """How many of each collective operation a compiled HLO text (``.as_text()``) contains.

    Counts instructions (``= f32[...] all-reduce(`` ...), including the ``-start`` halves of
    asynchronous ones, so each operation is counted once.
    """
    counts = {}
    for op in _COLLECTIVES:
        pattern = re.compile(rf"=\s*\S.*?\s{op}(-start)?\(")
        counts[op] = sum(1 for line in hlo_text.splitlines() if pattern.search(line))
    return counts


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a local coordinator)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ProcessResult:
    """What one process printed, and how it ended."""

    returncode: int
    stdout: str
    stderr: str


class ProcessesFailed(RuntimeError):
    """A process failed or ran out of time; every process was killed. ``results`` per process."""

    def __init__(self, message: str, results: list[ProcessResult]):
        super().__init__(message)
        self.results = results


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_processes(
    commands: Sequence[Sequence[str]],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    on_start: Callable[[list[int]], None] | None = None,
) -> list[ProcessResult]:
    """Run several commands at once; return their results once all have exited with 0.

    Each process starts in its own session (process group). If any exits with an error, or
    ``timeout`` seconds pass, every process group still running is killed (SIGKILL) and
    :class:`ProcessesFailed` is raised with what each printed: nothing is left behind.
    ``on_start`` receives the process ids (tests use it to check that none survive).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}.")
    if not commands:
        raise ValueError("no commands to run.")
    procs: list[subprocess.Popen[str]] = []
    out_files = []
    import tempfile

    try:
        for command in commands:
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            out_files.append((out, err))
            procs.append(subprocess.Popen(list(command), stdout=out, stderr=err, text=True,
                                          env=env, cwd=cwd, start_new_session=True))
        if on_start is not None:
            on_start([p.pid for p in procs])
        deadline = time.monotonic() + timeout
        failure = None
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                bad = next(i for i, c in enumerate(codes) if c not in (None, 0))
                failure = f"process {bad} exited with code {codes[bad]}"
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                failure = f"the processes did not finish within {timeout:g} s"
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
            else:  # the leader exited, but children it started may still run
                _kill_group(p)
        for p in procs:
            p.wait()
    results = []
    for p, (out, err) in zip(procs, out_files, strict=True):
        out.seek(0)
        err.seek(0)
        results.append(ProcessResult(p.returncode, out.read(), err.read()))
        out.close()
        err.close()
    if failure is not None:
        raise ProcessesFailed(f"{failure}; all {len(procs)} processes were stopped.", results)
    return results


_SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "distributed_train.py"


def distributed_command(*args: str) -> list[str]:
    """The command that runs ``tools/distributed_train.py`` with ``args`` in this Python.

    In a checkout of the repository it is that script; where only the ``utils`` package is
    installed (Colab), the same program is started from :func:`distributed_main`.
    """
    if _SCRIPT.is_file():
        return [sys.executable, str(_SCRIPT), *args]
    code = "import sys; from utils.parallel import distributed_main; sys.exit(distributed_main())"
    return [sys.executable, "-c", code, *args]


def parse_distributed_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``tools/distributed_train.py`` (see :func:`distributed_main`)."""
    parser = argparse.ArgumentParser(
        prog="distributed_train.py",
        description="Data-parallel training of lesson 04's MLP across processes.")
    parser.add_argument("--coordinator", help="host:port of process 0 (omit under Slurm/MPI)")
    parser.add_argument("--num-processes", type=int, help="how many processes in all")
    parser.add_argument("--process-id", type=int, help="this process's number, 0 to n-1")
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="run on this many simulated CPU devices per process (0: the "
                             "default devices, e.g. this host's GPUs)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--sync-every", type=int, default=5,
                        help="wait for a result at least this often (long unsynchronised "
                             "loops of collectives stall on simulated CPU devices)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or not 1 <= args.sync_every <= 10:
        parser.error("--steps and --batch-size must be positive, --sync-every 1 to 10")
    if args.num_processes is not None and args.num_processes > 1:
        if args.process_id is None or not 0 <= args.process_id < args.num_processes:
            parser.error(f"--process-id must be 0 to {args.num_processes - 1}")
    return args


def distributed_main(argv: Sequence[str] | None = None) -> int:
    """Train lesson 04's MLP on MNIST, data parallel over the devices of all processes.

    Every process runs this. ``jax.distributed.initialize`` connects them (with the
    ``--coordinator`` given, or from Slurm/Open MPI variables when none is); then a
    ``'data'`` mesh spans every process's devices, the state is replicated and each global
    batch is split along ``'data'``, each process supplying only its own rows of it
    (``jax.make_array_from_process_local_data``). Step ``i`` uses training examples
    ``i * batch_size`` onwards, so the losses do not depend on how many processes there
    are. Prints ``RESULT {json}`` (losses, process and device counts); returns 0.
    """
    args = parse_distributed_args(argv)
    import jax

    if args.cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.num_processes != 1:  # several processes (or a cluster that says how many)
        if args.coordinator:
            jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                       process_id=args.process_id)
        else:
            jax.distributed.initialize()  # Slurm, Open MPI, ...: read from the environment

    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from utils import data, training

    n_proc, me = jax.process_count(), jax.process_index()
    n_dev = len(jax.devices())
    if args.batch_size % n_dev:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the "
                         f"{n_dev} devices.")
    mesh = data_mesh(n_dev)
    images, labels = data.load_mnist("train", dtype="float32")
    if args.steps * args.batch_size > len(images):
        raise SystemExit(f"--steps x --batch-size must be at most {len(images)} examples.")
    images = (images - 0.1307) / 0.3081

    model = training.MLP(784, args.hidden, 10, rngs=nnx.Rngs(0))
    optimizer = training.create_optimizer(model, optax.adam(1e-3))
    graphdef, state = nnx.split((model, optimizer))
    replicated = NamedSharding(mesh, P())
    # Every process built the same state (same seed): each gives its full copy.
    state = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), state)
    batch = batch_sharding(mesh)

    @jax.jit
    def step(state: Any, x: Any, y: Any) -> tuple[Any, Any]:
        model, optimizer = nnx.merge(graphdef, state)
        loss, _ = training.train_batch(model, optimizer, x, y)
        return nnx.state((model, optimizer)), loss

    local = args.batch_size // n_proc  # this process's rows of every global batch
    losses = []
    for i in range(args.steps):
        start = i * args.batch_size + me * local
        x = jax.make_array_from_process_local_data(batch, images[start:start + local],
                                                   (args.batch_size, 28, 28))
        y = jax.make_array_from_process_local_data(
            batch, labels[start:start + local].astype(np.int32), (args.batch_size,))
        state, loss = step(state, x, y)
        losses.append(loss)
        if (i + 1) % args.sync_every == 0:
            jax.block_until_ready(loss)  # never too far ahead (see the field notes)
    report = {"process": me, "processes": n_proc, "devices": n_dev,
              "local_devices": len(jax.local_devices()),
              "losses": [float(v) for v in losses]}
    print("RESULT " + json.dumps(report), flush=True)
    if n_proc > 1:
        jax.distributed.shutdown()
    return 0
