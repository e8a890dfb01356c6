"""Reading what JAX's profiler and compiler report (introduced in lesson 07_performance).

- :func:`find_trace` / :func:`load_trace`: the trace that ``jax.profiler.trace(log_dir)``
  writes (``<log_dir>/plugins/profile/<run>/<host>.trace.json.gz``, gzipped JSON in the
  Chrome trace-event format that Perfetto and TensorBoard open) as a list of event dicts.
- :func:`top_operations`: the compiled (XLA) operations that took the most time in a trace,
  summed by name; :func:`format_operations` prints them as a table.
- :func:`annotation_durations`: how long each region named with
  ``jax.profiler.TraceAnnotation`` / ``StepTraceAnnotation`` took.
- :func:`cost_of` and :func:`memory_of`: ``compiled.cost_analysis()`` and
  ``compiled.memory_analysis()`` as plain dicts, whatever the JAX version returns.
- :func:`measure_compile` / ``python -m utils.profiling CACHE_DIR``: compile lesson 04's MLP
  train step in a fresh process with a persistent compilation cache in ``CACHE_DIR``, timed
  (lesson 07 runs it twice as a subprocess: empty cache, then warm).

No extra package is needed: the trace is read with ``gzip`` and ``json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HloOp", "OpStat", "annotation_durations", "cost_of", "find_trace",
           "format_operations", "hlo_ops", "load_trace", "measure_compile", "memory_of",
           "operation_kind", "planned_peak_bytes", "saved_residuals", "top_operations"]

#: An XLA instruction name: ``dot``, ``dot.2``, ``multiply_add_fusion.14``, ``copy-start.1``.
_HLO_NAME = re.compile(r"^[A-Za-z_][\w\-]*(\.\d+)?$")

#: Trace lines (threads) of a device that summarise other lines: counting their events
#: beside the kernels' would count the same time twice.
_SUMMARY_LINES = frozenset({"XLA Modules", "Steps", "Framework Ops", "Framework Name Scope",
                            "Source code", "XLA TraceMe", "Launch Stats", "Async XLA Ops",
                            "TensorFlow Ops", "TensorFlow Name Scope"})

#: What an operation is, from its name or its kernels' names (first match wins). On a GPU a
#: matmul runs as a library call (cuBLAS: ``cublas-gemm.3``, kernels ``sm90_xmma_gemm_...``,
#: ``nvjet_...``, ``cutlass_..._gemm``; hipBLASLt on ROCm: ``Cijk_...``) or as a generated
#: kernel (``gemm_fusion_dot.2``, ``triton_gemm``), rarely under the name ``dot``.
_KINDS = (
    ("collective", re.compile(r"all[-_]?reduce|all[-_]?gather|reduce[-_]?scatter|all[-_]?to[-_]?all"
                              r"|collective[-_]permute|nccl|rccl", re.I)),
    ("convolution", re.compile(r"conv(?!ert)|cudnn|winograd|[dw]grad", re.I)),
    ("matmul", re.compile(r"gemm|matmul|cublas|nvjet|xmma|cijk|(^|[^a-z])dot([^a-z]|$)", re.I)),
    ("copy", re.compile(r"copy|memcpy|memset|transfer|send|recv", re.I)),
    ("fusion", re.compile(r"fusion|fused", re.I)),
)


@dataclass(frozen=True)
class OpStat:
    """One operation's total in a trace: ``name``, how many times it ran, time in µs.

    ``kind`` says what it is (``"matmul"``, ``"convolution"``, ``"collective"``, ``"copy"``,
    ``"fusion"`` or ``"other"``); ``scope`` is the ``jax.named_scope`` path of the operation
    when the compiled program was given to :func:`top_operations` (else ``""``).
    """

    name: str
    count: int
    total_us: float
    kind: str = "other"
    scope: str = ""


@dataclass(frozen=True)
class HloOp:
    """An instruction of a compiled program: what it is (``kind``, as in :class:`OpStat`),
    its opcode, and the ``jax.named_scope`` path JAX recorded for it (``scope``)."""

    name: str
    opcode: str
    kind: str
    scope: str


def find_trace(log_dir: str | Path) -> Path:
    """The newest ``*.trace.json.gz`` under ``log_dir`` (what ``jax.profiler.trace`` wrote)."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"{log_dir} is not a folder: pass the folder given to "
                                "jax.profiler.trace(...).")
    found = sorted(log_dir.glob("plugins/profile/*/*.trace.json.gz"),
                   key=lambda p: (p.stat().st_mtime, str(p)))
    if not found:
        raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}/plugins/profile/: run "
                                "code inside `with jax.profiler.trace(log_dir):` first.")
    return found[-1]


def load_trace(path: str | Path) -> list[dict[str, Any]]:
    """The trace events of a ``.json.gz`` (or ``.json``) trace file, as a list of dicts.

    Accepts a trace file or a ``log_dir`` (then :func:`find_trace` picks the file).
    """
    path = Path(path)
    if path.is_dir():
        path = find_trace(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"{path} is not a trace-event file (no 'traceEvents' list).")
    return [e for e in events if isinstance(e, dict)]


def _metadata_names(events: list[Mapping[str, Any]], what: str) -> dict[Any, str]:
    """``{pid: process name}`` (what="process_name") or ``{(pid, tid): thread name}``."""
    found = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == what:
            name = str((e.get("args") or {}).get("name", ""))
            found[e.get("pid") if what == "process_name" else (e.get("pid"), e.get("tid"))] = name
    return found


def operation_kind(name: str, kernels: Iterable[str] = ()) -> str:
    """What an operation of a trace or a program is, from its name and its kernels' names.

    ``"collective"``, ``"convolution"``, ``"matmul"``, ``"copy"``, ``"fusion"`` or
    ``"other"``. Matmuls are recognised under their CPU names (``dot.2``) and their GPU
    library names (``cublas-gemm.1``, ``gemm_fusion_dot.3``, kernels ``..._gemm_...``,
    ``nvjet_...``). A fusion that *contains* a matmul (``ynn_fusion.2`` on a CPU) looks like
    any fusion by name: :func:`hlo_ops` reads what it contains from the compiled program.
    """
    for kind, pattern in _KINDS:
        if pattern.search(name) or any(pattern.search(k) for k in kernels):
            return kind
    return "other"


def _scope_of(op_name: str) -> str:
    """``"jit(step)/transpose(jvp(forward))/dot_general"`` -> ``"transpose(jvp(forward))"``:
    the ``jax.named_scope`` path between the jitted function's name and the primitive."""
    parts = [p for p in re.split(r"/(?![^()]*\))", op_name) if p]
    if parts and parts[0].startswith(("jit(", "pjit(")):
        parts = parts[1:]
    return "/".join(parts[:-1])


_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*.*?\s(?P<opcode>[a-z][\w\-]*)\((?P<rest>.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")


def hlo_ops(program: Any) -> dict[str, HloOp]:
    """The instructions of a compiled program, by name: ``{name: HloOp}``.

    ``program`` is what ``jax.jit(f).lower(...).compile()`` returns (or its ``as_text()``).
    These names are the ones a trace shows: on a CPU as the events' names, on a GPU as their
    ``hlo_op``. A fusion's ``kind`` is that of what it contains (a fusion with a ``dot``
    inside is a ``"matmul"``); ``scope`` is the ``jax.named_scope`` path JAX recorded in the
    instruction's metadata (``""`` without one).
    """
    text = program if isinstance(program, str) else getattr(program, "as_text", lambda: None)()
    if not isinstance(text, str):
        raise TypeError(f"expected a compiled program (jitted.lower(...).compile()) or its HLO "
                        f"text, got {type(program).__name__}.")
    computations: dict[str, list[tuple[str, str, str]]] = {}
    current = None
    for line in text.splitlines():
        heading = _COMPUTATION.match(line)
        if heading and "=" not in line.split("{", 1)[0]:
            current = computations.setdefault(heading["name"], [])
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            current.append((match["name"], match["opcode"], match["rest"]))

    def kind_of(opcode: str, rest: str, depth: int = 0) -> str:
        if opcode in ("dot", "convolution"):
            return "matmul" if opcode == "dot" else "convolution"
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        if target:
            return operation_kind(target[1])
        called = re.findall(r"(?:calls|to_apply|body)=%?([\w.\-]+)", rest)
        inner = [kind_of(op, r, depth + 1) for c in called if depth < 4
                 for _, op, r in computations.get(c, [])]
        for kind in ("collective", "convolution", "matmul"):
            if kind in inner:
                return kind
        return operation_kind(opcode) if opcode != "fusion" else "fusion"

    ops = {}
    for instructions in computations.values():
        for name, opcode, rest in instructions:
            op_name = re.search(r'op_name="([^"]*)"', rest)
            ops[name] = HloOp(name, opcode, kind_of(opcode, rest),
                              _scope_of(op_name[1]) if op_name else "")
    return ops


def top_operations(events: Iterable[Mapping[str, Any]], n: int = 10,
                   program: Any = None) -> list[OpStat]:
    """The ``n`` compiled operations with the largest total time, largest first.

    Which events count depends on the trace:

    - **GPU / TPU traces** have device processes (``/device:GPU:0``, ...). Only their events
      count: the host's events about the same operations (launches, thunks) are left out, and
      so are the device lines that summarise others (``XLA Modules``, ``Steps``, ...), so no
      time is counted twice. A kernel is named by the instruction it runs (``args["hlo_op"]``,
      e.g. ``cublas-gemm.1``), else by its own name (kernels run from a CUDA graph may lack
      ``hlo_op``); where a device has an ``XLA Ops`` line (TPUs), that line alone counts.
    - **CPU traces** have no device process: the compiled instructions appear under their own
      names (``dot.2``, ``..._fusion.3``) on XLA's threads. Python frames (Python-thread
      events, names starting with ``$``) and runtime bookkeeping (names with ``::``) are
      left out.

    Each :class:`OpStat` says what the operation is (``kind``, see :func:`operation_kind`).
    Pass the compiled ``program`` that ran (``jitted.lower(...).compile()``) to read kinds
    from it instead (a CPU's ``ynn_fusion.2`` is then a ``"matmul"``) and to get each
    operation's ``jax.named_scope`` path. Ties are ordered by name, so the order is stable.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}.")
    events = list(events)
    processes = _metadata_names(events, "process_name")
    threads = _metadata_names(events, "thread_name")
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    devices = {pid for pid, name in processes.items() if "/device:" in name}
    chosen: list[tuple[str, str, float]] = []  # (operation, kernel name, µs)
    if devices:
        on_device = [e for e in complete if e.get("pid") in devices
                     and threads.get((e.get("pid"), e.get("tid")), "") not in _SUMMARY_LINES]
        ops_line = [e for e in on_device
                    if threads.get((e.get("pid"), e.get("tid")), "") == "XLA Ops"]
        for e in ops_line or on_device:
            args = e.get("args") if isinstance(e.get("args"), dict) else {}
            kernel = str(e.get("name", ""))
            chosen.append((str(args.get("hlo_op") or kernel), kernel, float(e["dur"])))
    else:
        for e in complete:
            name = str(e.get("name", ""))
            if threads.get((e.get("pid"), e.get("tid")), "") != "python" and \
                    _HLO_NAME.match(name):
                chosen.append((name, name, float(e["dur"])))
    hlo = hlo_ops(program) if program is not None else {}
    totals: dict[str, list[Any]] = {}
    for name, kernel, dur in chosen:
        entry = totals.setdefault(name, [0, 0.0, set()])
        entry[0] += 1
        entry[1] += dur
        entry[2].add(kernel)
    stats = []
    for name, (count, total, kernels) in totals.items():
        op = hlo.get(name)
        kind = op.kind if op else operation_kind(name, sorted(kernels))
        stats.append(OpStat(name, int(count), total, kind, op.scope if op else ""))
    stats.sort(key=lambda s: (-s.total_us, s.name))
    return stats[:n]


def format_operations(stats: Iterable[OpStat]) -> str:
    """A table of :func:`top_operations`: name, kind, calls, total time, share of the listed
    time, and the named scope (a column only when some operation has one)."""
    from utils.timing import format_seconds

    stats = list(stats)
    total = sum(s.total_us for s in stats) or 1.0
    width = max([len(s.name) for s in stats] + [9])
    kinds = max([len(s.kind) for s in stats] + [4])
    scoped = any(s.scope for s in stats)
    header = (f"{'operation':<{width}}  {'kind':<{kinds}}  {'calls':>5}  {'total':>9}  "
              f"{'share':>5}" + ("  scope" if scoped else ""))
    lines = [header]
    for s in stats:
        lines.append(f"{s.name:<{width}}  {s.kind:<{kinds}}  {s.count:>5}  "
                     f"{format_seconds(s.total_us * 1e-6):>9}  {100 * s.total_us / total:>4.0f}%"
                     + (f"  {s.scope}" if scoped else ""))
    return "\n".join(lines)


def annotation_durations(events: Iterable[Mapping[str, Any]], name: str) -> list[float]:
    """Durations in µs of every region named ``name`` (``TraceAnnotation(name)`` or
    ``StepTraceAnnotation(name, step_num=...)``), in the order they started."""
    found = [e for e in events if e.get("ph") == "X" and e.get("name") == name and "dur" in e]
    found.sort(key=lambda e: float(e.get("ts", 0.0)))
    return [float(e["dur"]) for e in found]


def cost_of(compiled: Any) -> dict[str, float]:
    """``compiled.cost_analysis()`` as one dict (older JAX returned a list of one dict).

    Keys include ``"flops"`` and ``"bytes accessed"`` (the whole program's estimate); an
    empty dict when the backend reports nothing.
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return {str(k): float(v) for k, v in dict(cost or {}).items()}


_MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                  "temp_size_in_bytes", "generated_code_size_in_bytes",
                  "peak_memory_in_bytes")


def memory_of(compiled: Any) -> dict[str, int]:
    """``compiled.memory_analysis()`` as a dict ``{"argument": bytes, "output": ..., "alias":
    ..., "temp": ..., "generated_code": ..., "peak": ...}``; fields this JAX does not report
    are left out (``peak`` appeared in newer versions)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    out = {}
    for field in _MEMORY_FIELDS:
        value = getattr(stats, field, None)
        if isinstance(value, int | float):
            out[field.removesuffix("_in_bytes").removesuffix("_size")
                .removesuffix("_memory")] = int(value)
    return out


def _nbytes(aval: Any) -> int:
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        itemsize = dtype.itemsize
    except AttributeError:  # pragma: no cover - every JAX dtype has an itemsize
        return 0
    size = 1
    for dim in shape:
        size *= int(dim)
    return size * int(itemsize)


def _sub_jaxprs(eqn: Any) -> list[Any]:
    """The jaxprs an equation runs (a jit's, a checkpoint's, a scan's body, cond branches)."""
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, list | tuple) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns") and hasattr(inner, "outvars"):
                found.append(inner)
    return found


def _variables(atoms: Iterable[Any]) -> list[Any]:
    """The variables among a jaxpr equation's operands (literals such as ``2.0`` left out)."""
    return [a for a in atoms if hasattr(a, "aval") and not hasattr(a, "val")]


def _peak_inside(jaxpr: Any) -> int:
    """Peak bytes of the values a jaxpr creates (its inputs are the caller's), run in order."""
    last_use: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for var in _variables(eqn.invars):
            last_use[var] = i
    for var in _variables(jaxpr.outvars):
        last_use[var] = len(jaxpr.eqns)
    live, peak = 0, 0
    alive: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((_peak_inside(sub) for sub in _sub_jaxprs(eqn)), default=0)
        outputs = _variables(eqn.outvars)
        peak = max(peak, live + inner + sum(_nbytes(var.aval) for var in outputs))
        for var in outputs:
            if var in last_use:  # a value nobody reads is dropped at once
                alive[var] = _nbytes(var.aval)
                live += alive[var]
        for var in _variables(eqn.invars):
            if last_use[var] == i and var in alive:
                live -= alive.pop(var)
    return peak


def planned_peak_bytes(fn: Any, *args: Any) -> int:
    """The most bytes of intermediate values alive at once when ``fn(*args)`` runs as JAX
    traces it (``jax.make_jaxpr``), one equation after another, arguments not counted.

    This is memory as *JAX plans it*, before XLA reorders, fuses or merges anything: a value
    is alive from the equation that makes it to its last use. Inner programs (a ``jax.jit``
    inside, a ``jax.checkpoint``, a ``lax.scan``'s body, ``cond`` branches) add their own
    peak while they run; a loop's body counts once, as it reuses its memory per iteration.
    For ``fn = jax.grad(loss)`` it shows what ``jax.checkpoint`` saves (lesson 07), also on a
    CPU, whose compiler merges the recomputation back (its ``memory_analysis`` then shows
    no change). An estimate for comparing programs, not a prediction of a device's
    allocator.
    """
    import jax

    return _peak_inside(jax.make_jaxpr(fn)(*args).jaxpr)


def saved_residuals(fn: Any, *args: Any) -> list[tuple[tuple[int, ...], str]]:
    """The arrays the forward pass of ``fn(*args)`` keeps for its backward pass (its
    *residuals*), each once, arguments and constants of ``fn`` left out:
    ``[(shape, dtype name), ...]``, largest first.

    What ``jax.ad_checkpoint.print_saved_residuals`` lists, as data (that function prints
    source locations too): the values the function returned by ``jax.vjp`` holds, read from
    JAX's trace without running anything.
    """
    import jax

    def residuals(*a: Any) -> list[Any]:
        return jax.tree.leaves(jax.vjp(fn, *a)[1])

    closed = jax.make_jaxpr(residuals)(*args)
    given = set(closed.jaxpr.invars) | set(closed.jaxpr.constvars)
    kept = list(dict.fromkeys(v for v in _variables(closed.jaxpr.outvars) if v not in given))
    found = [(tuple(int(d) for d in v.aval.shape), str(v.aval.dtype)) for v in kept]
    return sorted(found, key=lambda r: (-_nbytes(jax.ShapeDtypeStruct(r[0], r[1])), r))


def measure_compile(cache_dir: str | Path, batch_size: int = 128) -> dict[str, float]:
    """Time compiling the MLP train step of lesson 04 with a persistent cache in ``cache_dir``.

    Must run in a process where JAX has compiled nothing yet (the cache is configured
    first): ``python -m utils.profiling CACHE_DIR`` does that. The model and optimizer are
    built as shapes only (``nnx.eval_shape``), so the step is the only program compiled.
    Returns ``{"lower_s": tracing and lowering, "compile_s": lowered.compile() (XLA, or a
    read from the cache), "cache_files": files in cache_dir afterwards}``.
    """
    import jax

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    # Cache every program, however small or quick to compile (the defaults skip those).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    import optax
    from flax import nnx

    from utils import training

    # Shapes only (nnx.eval_shape): no initialiser runs, so the step is the one program this
    # process compiles, and nothing needs to be computed to lower and compile it.
    model, optimizer = nnx.eval_shape(lambda: (
        model := training.MLP(rngs=nnx.Rngs(0)),
        training.create_optimizer(model, optax.adam(1e-3))))
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)
        loss, _ = training.train_batch(model, optimizer, images, labels)
        return nnx.state((model, optimizer)), loss

    images = jax.ShapeDtypeStruct((batch_size, 28, 28), np.float32)
    labels = jax.ShapeDtypeStruct((batch_size,), np.int32)
    start = time.perf_counter()
    lowered = train_step.lower(state, images, labels)
    lowered_at = time.perf_counter()
    lowered.compile()
    compiled_at = time.perf_counter()
    files = sum(1 for p in cache_dir.rglob("*") if p.is_file())
    return {"lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at,
            "cache_files": files}


def main(argv: list[str] | None = None) -> int:
    """``python -m utils.profiling CACHE_DIR [--batch-size N]``: one JSON line on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m utils.profiling",
        description="Time compiling the lesson 04 MLP train step with a persistent "
                    "compilation cache in CACHE_DIR (run it in a fresh process).")
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    print(json.dumps(measure_compile(args.cache_dir, args.batch_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
