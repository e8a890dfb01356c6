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

__all__ = ["OpStat", "annotation_durations", "cost_of", "find_trace", "format_operations",
           "load_trace", "measure_compile", "memory_of", "top_operations"]

#: An XLA instruction name: ``dot``, ``dot.2``, ``multiply_add_fusion.14``, ``copy-start.1``.
_HLO_NAME = re.compile(r"^[A-Za-z_][\w\-]*(\.\d+)?$")


@dataclass(frozen=True)
class OpStat:
    """One operation's total in a trace: ``name``, how many times it ran, time in µs."""

    name: str
    count: int
    total_us: float


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


def _thread_names(events: Iterable[Mapping[str, Any]]) -> dict[tuple[Any, Any], str]:
    return {(e.get("pid"), e.get("tid")): str(e.get("args", {}).get("name", ""))
            for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}


def top_operations(events: Iterable[Mapping[str, Any]], n: int = 10) -> list[OpStat]:
    """The ``n`` compiled operations with the largest total time, largest first.

    An operation is a complete event (``"ph": "X"``) that names an XLA instruction: on GPUs
    and TPUs the kernels carry it in ``args["hlo_op"]``; on CPUs the instructions appear
    under their own names (``dot.2``, ``..._fusion.3``) on XLA's threads. Python frames
    (Python-thread events, names starting with ``$``) and runtime bookkeeping (names with
    ``::``) are left out. Ties are ordered by name, so the order is stable.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}.")
    events = list(events)
    threads = _thread_names(events)
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device_ops = [e for e in complete if isinstance(e.get("args"), dict)
                  and "hlo_op" in e["args"]]
    totals: dict[str, list[float]] = {}
    if device_ops:
        chosen = [(str(e["args"]["hlo_op"]), float(e["dur"])) for e in device_ops]
    else:
        chosen = [(str(e.get("name", "")), float(e["dur"])) for e in complete
                  if threads.get((e.get("pid"), e.get("tid")), "") != "python"
                  and _HLO_NAME.match(str(e.get("name", "")))]
    for name, dur in chosen:
        count_total = totals.setdefault(name, [0, 0.0])
        count_total[0] += 1
        count_total[1] += dur
    stats = [OpStat(name, int(c), t) for name, (c, t) in totals.items()]
    stats.sort(key=lambda s: (-s.total_us, s.name))
    return stats[:n]


def format_operations(stats: Iterable[OpStat]) -> str:
    """A table of :func:`top_operations`: name, calls, total time, share of the listed time."""
    from utils.timing import format_seconds

    stats = list(stats)
    total = sum(s.total_us for s in stats) or 1.0
    width = max([len(s.name) for s in stats] + [9])
    lines = [f"{'operation':<{width}}  {'calls':>5}  {'total':>9}  {'share':>5}"]
    for s in stats:
        lines.append(f"{s.name:<{width}}  {s.count:>5}  {format_seconds(s.total_us * 1e-6):>9}"
                     f"  {100 * s.total_us / total:>4.0f}%")
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


def measure_compile(cache_dir: str | Path, batch_size: int = 128) -> dict[str, float]:
    """Time compiling the MLP train step of lesson 04 with a persistent cache in ``cache_dir``.

    Must run in a process where JAX has compiled nothing yet (the cache is configured
    first): ``python -m utils.profiling CACHE_DIR`` does that. Returns ``{"lower_s": tracing
    and lowering, "compile_s": lowered.compile() (XLA, or a read from the cache),
    "cache_files": files in cache_dir afterwards}``.
    """
    import jax

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    # Cache every program, however small or quick to compile (the defaults skip those).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    import jax.numpy as jnp
    import optax
    from flax import nnx

    from utils import training

    model = training.MLP(rngs=nnx.Rngs(0))
    optimizer = training.create_optimizer(model, optax.adam(1e-3))
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)
        loss, _ = training.train_batch(model, optimizer, images, labels)
        return nnx.state((model, optimizer)), loss

    images = jnp.zeros((batch_size, 28, 28), jnp.float32)
    labels = jnp.zeros((batch_size,), jnp.int32)
    start = time.perf_counter()
    lowered = train_step.lower(state, images, labels)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    jax.block_until_ready(compiled(state, images, labels))
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
