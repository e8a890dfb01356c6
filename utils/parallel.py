"""Several devices, several processes (introduced in lesson 06_multi_device).

Reference implementations of the lesson's exercises, and the helpers its notebook, its
checkers and ``tools/distributed_train.py`` share:

- :func:`choose_devices`: the lesson's devices, chosen before JAX starts: the real ones when
  there are two or more, else simulated CPU devices (:func:`count_accelerators` counts
  them without starting JAX in this process).
- :func:`data_mesh`: a 1-D mesh ``('data',)`` (or 2-D ``('data', 'model')``) with the
  classic *Auto* axis types, over the first ``n`` devices.
- :func:`ring_all_reduce`: a sum over a named axis built from ``lax.ppermute`` only (each
  device sends the whole array ``N - 1`` times); :func:`ring_reduce_scatter_all_gather`:
  the same sum as a reduce-scatter then an all-gather, in chunks of ``1/N`` of the array;
  :func:`allreduce_traffic`: the bytes one device sends in each.
- :func:`device_grads`: the ``shard_map`` body that returns single-device gradients.
- :func:`data_parallel_step`: the ``pmap`` body of a data-parallel train step.
- :func:`batch_sharding`: the ``NamedSharding`` that splits a batch's first axis along
  ``'data'``.
- :func:`shard_bytes`: bytes one device holds of an array of a shape, dtype and sharding.
- :func:`count_collectives`, :func:`collective_bytes` and :func:`collectives_by_axis`: the
  collective operations of a compiled HLO text, their bytes, and the mesh axes they run along.
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
    "accelerator_plugins",
    "allreduce_traffic",
    "batch_sharding",
    "choose_devices",
    "collective_bytes",
    "collectives_by_axis",
    "count_accelerators",
    "count_collectives",
    "data_mesh",
    "data_parallel_step",
    "device_grads",
    "distributed_command",
    "distributed_main",
    "free_port",
    "ring_all_reduce",
    "ring_reduce_scatter_all_gather",
    "run_processes",
    "shard_bytes",
]

#: The mesh axis the lesson's data is split along (also the ``pmap`` axis name).
DATA = "data"
#: The second mesh axis of the lesson's 2-D mesh (the big kernels are split along it).
MODEL = "model"

#: How many simulated CPU devices the lesson uses where it has fewer than two real ones.
SIMULATED_DEVICES = 8
#: The choices of :func:`choose_devices` (the lesson's ``DEVICES`` switch).
DEVICE_MODES = ("auto", "real", "simulated")
#: The child process :func:`count_accelerators` starts: what JAX's default backend finds.
_COUNT_DEVICES = "import jax; d = jax.devices(); print('DEVICES', d[0].platform, len(d))"


def accelerator_plugins() -> list[str]:
    """The installed JAX plugins that can bring an accelerator (CUDA, ROCm, TPU, ...).

    Found the way JAX finds them (modules of the ``jax_plugins`` namespace package, entry
    points of the group ``jax_plugins``, the ``libtpu`` package), without importing any of
    them and without starting JAX. Empty on a CPU-only install: then JAX can only find CPUs.
    """
    import importlib.metadata
    import importlib.util
    import pkgutil

    found = set()
    try:
        import jax_plugins  # a namespace package: importing it loads no plugin

        found.update(name for _, name, _ in pkgutil.iter_modules(jax_plugins.__path__))
    except ImportError:
        pass
    found.update(ep.name for ep in importlib.metadata.entry_points(group="jax_plugins"))
    if importlib.util.find_spec("libtpu") is not None:
        found.add("libtpu")
    return sorted(found)


def count_accelerators(timeout: float = 180.0) -> tuple[str, int]:
    """``(platform, count)`` of the accelerators JAX would use here, e.g. ``("gpu", 1)``.

    ``("cpu", 0)`` when there is none. Does not start JAX in this process, so simulated CPU
    devices can still be set afterwards: once JAX has started, its devices are those of
    ``jax.devices()``; before, with no accelerator plugin installed (or ``jax_platforms``
    set to ``"cpu"``) the answer is ``("cpu", 0)`` at once, and otherwise a short child
    process asks JAX (GPU memory preallocation off, so it takes no memory it keeps), which
    costs one JAX start-up. A child that fails or times out counts as no accelerator.
    """
    import jax

    from utils import environment

    if environment.jax_started():
        devices = jax.devices()
        platform = devices[0].platform
        return (platform, len(devices)) if platform != "cpu" else ("cpu", 0)
    if (jax.config.jax_platforms or "").strip().lower() == "cpu" or not accelerator_plugins():
        return "cpu", 0
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    try:
        result = subprocess.run([sys.executable, "-c", _COUNT_DEVICES], capture_output=True,
                                text=True, timeout=timeout, env=env)
    except (OSError, subprocess.SubprocessError):
        return "cpu", 0
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "DEVICES" and parts[2].isdigit():
            return (parts[1], int(parts[2])) if parts[1] != "cpu" else ("cpu", 0)
    return "cpu", 0


def choose_devices(mode: str = "auto", simulated: int = SIMULATED_DEVICES) -> str:
    """Choose the devices of lesson 06 before JAX starts; return one line saying which.

    ``mode``: ``"auto"`` uses the accelerators when there are two or more, and otherwise
    (no GPU, or Colab's single GPU) ``simulated`` CPU devices, so every demonstration has
    several devices to show; ``"real"`` uses whatever JAX finds (a single GPU included);
    ``"simulated"`` ignores any accelerator. In every mode JAX also gets ``simulated`` CPU
    devices (the checkers run on them). Simulated devices share this machine's CPU: they
    show how multi-device programs behave, not how fast they are.

    Once JAX has started nothing can change: the line then says what this kernel has, and
    :class:`utils.environment.RestartKernelError` is raised if it lacks the CPU devices.
    """
    import jax

    from utils import environment

    if mode not in DEVICE_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, DEVICE_MODES))}, got "
                         f"{mode!r}.")
    if not isinstance(simulated, int) or isinstance(simulated, bool) or simulated < 2:
        raise ValueError(f"simulated must be a whole number of devices, at least 2; got "
                         f"{simulated!r}.")
    if environment.jax_started():
        environment.simulate_cpu_devices(simulated)  # raises unless the kernel has them
        devices = jax.devices()
        return (f"JAX had already started in this kernel: it runs on {len(devices)} "
                f"{devices[0].platform} device(s). Restart the kernel to choose again.")
    platform, count = count_accelerators() if mode == "auto" else ("", 0)
    simulate = mode == "simulated" or (mode == "auto" and count < 2)
    if simulate:
        jax.config.update("jax_platforms", "cpu")  # before JAX starts: ignore accelerators
    environment.simulate_cpu_devices(simulated)
    sims = f"{simulated} simulated CPU devices"
    restart = "in the setup cell and restart the kernel"
    if mode == "simulated":
        return f'DEVICES = "simulated": this lesson runs on {sims}; any accelerator is ignored.'
    if mode == "real":
        devices = jax.devices()
        kind = devices[0].platform
        what = sims if kind == "cpu" else f"{len(devices)} {kind} device(s)"
        return f'DEVICES = "real": this lesson runs on {what}, the devices JAX found.'
    if count == 0:
        return f"No accelerator found: this lesson runs on {sims}."
    if count == 1:
        return (f"Found 1 {platform} device: fewer than the 2 this lesson needs, so it runs on "
                f'{sims} instead. To run it on the {platform} alone, set DEVICES = "real" '
                f"{restart}.")
    return (f"Found {count} {platform} devices: this lesson runs on them. To use {sims} "
            f'instead, set DEVICES = "simulated" {restart}.')


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


def ring_reduce_scatter_all_gather(x: Any, axis_name: str, axis_size: int) -> Any:
    """``lax.psum(x, axis_name)`` as a ring reduce-scatter then a ring all-gather.

    Call inside ``shard_map`` or ``pmap``; ``x.size`` must be a multiple of ``axis_size``.
    ``x`` is cut into ``axis_size`` chunks. Reduce-scatter: in each of ``axis_size - 1``
    rounds every device adds its own copy of one chunk to the partial sum it received and
    passes it on, so that at the end device ``i`` holds the full sum of chunk
    ``(i + 1) % axis_size``. All-gather: ``axis_size - 1`` more rounds pass the summed chunks
    round the ring until every device has all of them. Each round moves one chunk, so a
    device sends ``2 (N - 1) / N`` times the array's bytes in all, against ``N - 1`` times
    for :func:`ring_all_reduce` (NCCL's ring all-reduce works this way).
    """
    import jax.numpy as jnp
    from jax import lax

    n = axis_size
    if x.size % n:
        raise ValueError(f"x has {x.size} elements, not a multiple of the {n} devices: it "
                         "cannot be cut into one chunk per device.")
    ring = [(i, (i + 1) % n) for i in range(n)]
    me = lax.axis_index(axis_name)
    chunks = x.reshape(n, -1)

    def chunk(i: Any) -> Any:
        return lax.dynamic_index_in_dim(chunks, i % n, keepdims=False)

    partial_sum = chunk(me)
    for step in range(1, n):  # reduce-scatter
        partial_sum = lax.ppermute(partial_sum, axis_name, perm=ring) + chunk(me - step)
    gathered = jnp.zeros_like(chunks)
    gathered = lax.dynamic_update_index_in_dim(gathered, partial_sum, (me + 1) % n, 0)
    for step in range(1, n):  # all-gather
        partial_sum = lax.ppermute(partial_sum, axis_name, perm=ring)
        gathered = lax.dynamic_update_index_in_dim(gathered, partial_sum, (me + 1 - step) % n, 0)
    return gathered.reshape(x.shape)


def allreduce_traffic(nbytes: int, n_devices: int) -> tuple[int, int]:
    """Bytes *one* device sends to all-reduce an array of ``nbytes`` over ``n_devices``.

    Returns ``(ring, reduce_scatter_all_gather)``: :func:`ring_all_reduce` passes the whole
    array on in each of its ``N - 1`` rounds, ``(N - 1) * nbytes``;
    :func:`ring_reduce_scatter_all_gather` passes one ``nbytes / N`` chunk in each of its
    ``2 (N - 1)`` rounds, ``2 (N - 1) / N * nbytes``: less than twice the array, whatever
    ``N``. ``nbytes`` must be a multiple of ``n_devices``. Whole numbers, exactly.
    """
    for name, value, least in (("nbytes", nbytes, 0), ("n_devices", n_devices, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number, at least {least}; got {value!r}.")
    if nbytes % n_devices:
        raise ValueError(f"nbytes ({nbytes}) must be a multiple of n_devices ({n_devices}).")
    chunk = nbytes // n_devices
    return (n_devices - 1) * nbytes, 2 * (n_devices - 1) * chunk


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
#: One collective instruction of an HLO text: its operation and what follows its name.
_INSTRUCTION = re.compile(
    r"=\s*\S.*?\s(?P<op>" + "|".join(_COLLECTIVES) + r")(?:-start)?\((?P<rest>.*)$")
#: Any instruction's name and type: ``%dot.3 = f32[784,512]{1,0} dot(...``.
_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<type>\([^=]*?\)|\S+)\s")
#: An array type inside an HLO text: ``f32[784,512]``, ``bf16[]``, ``pred[8]``.
_ARRAY_TYPE = re.compile(r"\b(?P<dtype>pred|[subf]\d+|bf16|f8e\w+|c64|c128)\[(?P<dims>[\d,]*)\]")
_HLO_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}


def _collective_lines(hlo_text: str) -> list[tuple[str, str]]:
    """``(operation, rest of the line after its name)`` for each collective instruction."""
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.search(line)
        if match:
            found.append((match["op"], match["rest"]))
    return found


def count_collectives(hlo_text: str) -> dict[str, int]:
    """How many of each collective operation a compiled HLO text (``.as_text()``) contains.

    Counts instructions (``= f32[...] all-reduce(`` ...), including the ``-start`` halves of
    asynchronous ones, so each operation is counted once.
    """
    counts = dict.fromkeys(_COLLECTIVES, 0)
    for op, _ in _collective_lines(hlo_text):
        counts[op] += 1
    return counts


def _type_bytes(text: str) -> int:
    """Bytes of every array type written in ``text`` (``f32[2,3]`` is 24)."""
    total = 0
    for match in _ARRAY_TYPE.finditer(text):
        dtype = match["dtype"]
        bits = _HLO_BITS.get(dtype) or (8 if dtype.startswith("f8") else int(dtype[1:]))
        size = 1
        for d in filter(None, match["dims"].split(",")):
            size *= int(d)
        total += size * bits // 8
    return total


def _operand_bytes(rest: str, types: dict[str, str]) -> int:
    """Bytes of the operands listed at the start of ``rest`` (up to the closing bracket):
    from their types where the text writes them (``f32[4]{0} %x``), else from the types of
    the instructions they name (``%x``)."""
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    operands = rest[:end]
    if _ARRAY_TYPE.search(operands):
        return _type_bytes(operands)
    return sum(_type_bytes(types.get(name, "")) for name in re.findall(r"%([\w.\-]+)", operands))


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes of the operands of each kind of collective in a compiled HLO text, summed.

    The text of a multi-device program compiled by ``jit`` (or ``shard_map``) is the program
    of *one* device, so for ``collective-permute`` this is what one device sends; for an
    all-reduce it is the size of what is reduced (how many bytes travel depends on the
    algorithm the runtime picks: see :func:`allreduce_traffic`).
    """
    types = {m["name"]: m["type"] for line in hlo_text.splitlines()
             if (m := _DEFINITION.match(line))}
    totals = dict.fromkeys(_COLLECTIVES, 0)
    for op, rest in _collective_lines(hlo_text):
        totals[op] += _operand_bytes(rest, types)
    return totals


def _device_groups(rest: str) -> list[list[int]] | None:
    """The device groups of one collective: ``replica_groups`` (listed ``{{0,1},{2,3}}``, as
    an iota ``[2,4]<=[4,2]T(1,0)``, or over a named mesh ``mesh['axis_0'=4,'axis_1'=2]
    {'axis_0'}``) or a permute's ``source_target_pairs``; ``[]`` for ``{}`` (every device),
    None where the text has none of these."""
    import numpy as np

    listed = re.search(r"(?:replica_groups|source_target_pairs)=\{(?P<groups>[\d,{}]*)\}", rest)
    if listed:
        return [[int(v) for v in g.split(",") if v]
                for g in re.findall(r"\{([\d,]*)\}", listed["groups"])]
    named = re.search(r"replica_groups=mesh\[(?P<dims>[^\]]*)\]\s*\{(?P<axes>[^}]*)\}", rest)
    if named:  # mesh['axis_0'=4,'axis_1'=2] {'axis_0'}: groups vary along the axes named
        dims = re.findall(r"'([^']+)'=(\d+)", named["dims"])
        sizes = [int(size) for _, size in dims]
        chosen = [[n for n, _ in dims].index(a) for a in re.findall(r"'([^']+)'", named["axes"])]
        others = [d for d in range(len(sizes)) if d not in chosen]
        group_size = int(np.prod([sizes[d] for d in chosen]))
        ids = np.arange(int(np.prod(sizes))).reshape(sizes).transpose(others + chosen)
        return ids.reshape(-1, group_size).tolist()
    iota = re.search(r"replica_groups=\[(?P<shape>[\d,]+)\]<=\[(?P<dims>[\d,]+)\]"
                     r"(?:T\((?P<perm>[\d,]+)\))?", rest)
    if iota:
        shape = [int(v) for v in iota["shape"].split(",")]
        dims = [int(v) for v in iota["dims"].split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if iota["perm"]:
            ids = ids.transpose([int(v) for v in iota["perm"].split(",")])
        return ids.reshape(shape).tolist()
    return None


def collectives_by_axis(hlo_text: str, mesh: Any) -> dict[str, dict[str, int]]:
    """Count a compiled program's collectives by the mesh axes they communicate along.

    ``hlo_text`` is ``jitted.lower(...).compile().as_text()`` of a program whose arrays live on
    ``mesh`` (device ``i`` of the program is ``mesh.devices.flat[i]``). Each collective's
    device groups are read from the text; the axes along which the devices of a group differ
    are the axes it runs along. Returns ``{"data": {"all-reduce": 1}, "model": {...},
    "data+model": {...}}`` (axes joined in mesh order; only the operations found).
    """
    import numpy as np

    shape = mesh.devices.shape
    names = tuple(mesh.axis_names)
    counts: dict[str, dict[str, int]] = {}
    for op, rest in _collective_lines(hlo_text):
        groups = _device_groups(rest)
        if groups is None:
            continue
        if groups == [] or groups == [[]]:
            axes = set(names)
        else:
            axes = set()
            for group in groups:
                coords = np.array([np.unravel_index(i, shape) for i in group])
                axes.update(n for d, n in enumerate(names) if len(set(coords[:, d])) > 1)
        key = "+".join(n for n in names if n in axes) or "none"
        counts.setdefault(key, {}).setdefault(op, 0)
        counts[key][op] += 1
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


def _device_ids(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (the value of ``--local-device-ids``)."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected device numbers separated by commas, such as 0,1,2,3; got {text!r}")
    return [int(p) for p in parts]


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
    parser.add_argument("--local-device-ids", type=_device_ids, default=None,
                        help="the GPUs this process uses, e.g. 0,1,2,3,4,5,6,7 (default: all "
                             "of the host's, or under Slurm the one of SLURM_LOCALID: JAX "
                             "then expects one task per GPU)")
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
    ``--coordinator`` given, or from Slurm/Open MPI variables when none is; under Slurm JAX
    gives each process one GPU, the one numbered ``SLURM_LOCALID``, so start one task per
    GPU, or one per node with ``--local-device-ids 0,1,...``); then a
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
        local = {} if args.local_device_ids is None else {"local_device_ids": args.local_device_ids}
        if args.coordinator:
            jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                       process_id=args.process_id, **local)
        else:  # Slurm, Open MPI, ...: read from the environment. Under Slurm JAX gives each
            # process only the GPU numbered SLURM_LOCALID (one task per GPU) unless
            # local_device_ids says otherwise.
            jax.distributed.initialize(**local)

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
