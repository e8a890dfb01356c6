"""The course's one benchmark helper (introduced in lesson 01_gpu_basics).

Timing JAX code honestly takes four things, and :func:`benchmark` does all of them:

1. **Warm-up.** The first call of a jitted function traces and compiles it. That time is
   reported apart (``first_call_s``, ``compile_s``), never mixed into the run time.
2. **Waiting for the device.** JAX dispatches work asynchronously: a call returns before the
   device has finished. Every output leaf is passed to ``jax.block_until_ready``.
3. **Repeats.** One measurement is noise. Each of ``repeats`` samples times ``number`` calls
   (chosen so a sample lasts at least ``min_sample_s``); the median and the spread
   (interquartile range) of the per-call times are reported.
4. **The device named.** A number without its device means little.

Example::

    t = benchmark(jnp.dot, a, b, name="matmul 1024")
    print(t)                  # one readable line
    t.median_s, t.per_second(2 * 1024**3)   # numbers to tabulate or plot

:func:`benchmark` waits after every call: right for one operation, wrong for a training
step, where a real loop queues step after step and waits once (on a GPU, waiting after each
step measures dispatch plus synchronisation, not throughput). For loops, and for comparing
variants fairly, :func:`interleaved` times whole runs (each waits once, at its end) of
several variants in alternating rounds, so a machine that slows down mid-way slows all of
them alike::

    loops = interleaved({"reshape pool": lambda: run(step_a, 50),
                         "reduce_window pool": lambda: run(step_b, 50)}, rounds=5)
    loops["reshape pool"].per_second(50 * batch_size)   # examples/s, median of 5 runs
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Timing", "benchmark", "format_seconds", "interleaved", "table"]


def format_seconds(seconds: float) -> str:
    """Seconds in the unit that reads best, to 3 significant digits.

    ``"812 ns"``, ``"3.41 µs"``, ``"12.3 ms"``, ``"2.05 s"``; never ``"1e+03 ms"``:
    0.9996 s reads ``"1 s"``.
    """
    if not math.isfinite(seconds):
        return str(seconds)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        value = seconds / scale
        if abs(float(f"{value:.3g}")) >= 1 or unit == "ns":
            return f"{value:.3g} {unit}" if abs(value) < 999.5 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Timing:
    """What :func:`benchmark` measured. Prints as one line; ``as_dict()`` for tables.

    ``times_s`` holds one per-call time per repeat (each the mean over ``number`` calls).
    """

    name: str
    device: str
    first_call_s: float
    times_s: tuple[float, ...]
    number: int

    @property
    def median_s(self) -> float:
        """Median per-call time in seconds (the steady-state figure to use)."""
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    @property
    def iqr_s(self) -> float:
        """Interquartile range of the per-call times: the spread, robust to outliers."""
        if len(self.times_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return q3 - q1

    @property
    def compile_s(self) -> float:
        """First-call time minus a steady-state call: tracing + compilation (+ caching)."""
        return max(self.first_call_s - self.median_s, 0.0)

    def per_second(self, amount: float) -> float:
        """``amount`` of work per call (FLOPs, bytes, examples) divided by the median time."""
        return amount / self.median_s

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(median_s=self.median_s, iqr_s=self.iqr_s, compile_s=self.compile_s)
        return row

    def __str__(self) -> str:
        return (
            f"{self.name}: {format_seconds(self.median_s)} per call "
            f"(median of {len(self.times_s)} x {self.number}, IQR {format_seconds(self.iqr_s)}); "
            f"first call {format_seconds(self.first_call_s)}; on {self.device}"
        )


def _leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree.leaves(tree)


def _device_name(outputs: Any) -> str:
    import jax

    for leaf in _leaves(outputs):
        devices = getattr(leaf, "devices", None)
        if callable(devices):
            found = sorted(devices(), key=lambda d: d.id)
            if found:
                d = found[0]
                more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
                return f"{d.platform}:{d.id} {d.device_kind}{more}"
    d = jax.devices()[0]
    return f"{d.platform}:{d.id} {d.device_kind}"


def benchmark(
    fn: Callable[..., Any],
    *args: Any,
    name: str | None = None,
    repeats: int = 7,
    number: int | None = None,
    min_sample_s: float = 0.02,
    max_number: int = 10_000,
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: warm-up, compile apart, device sync, repeats, device.

    Args:
      fn: any callable; typically a jitted function returning arrays (any pytree).
      repeats: how many samples to take (the median and IQR are over these).
      number: calls per sample; by default chosen so one sample lasts >= ``min_sample_s``.

    Returns:
      A :class:`Timing`. ``print(t)`` gives one line; ``t.median_s`` the per-call seconds.
    """
    import jax

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    if number is not None and number < 1:
        raise ValueError(f"number must be at least 1 (or None to choose it), got {number}.")

    def call() -> Any:
        return jax.block_until_ready(fn(*args, **kwargs))

    start = time.perf_counter()
    out = call()  # warm-up: traces and compiles a jitted fn
    first_call_s = time.perf_counter() - start

    if number is None:
        start = time.perf_counter()
        call()
        one = max(time.perf_counter() - start, 1e-9)
        number = max(1, min(max_number, math.ceil(min_sample_s / one)))

    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            call()
        samples.append((time.perf_counter() - start) / number)

    label = name if name is not None else getattr(fn, "__name__", type(fn).__name__)
    return Timing(label, _device_name(out), first_call_s, tuple(samples), number)


def interleaved(
    variants: Mapping[str, Callable[[], Any]], *, rounds: int = 5
) -> dict[str, Timing]:
    """Time whole runs of several variants back to back, in ``rounds`` alternating rounds.

    Each variant is a callable doing one run (say, a loop of 50 training steps) and
    returning its result; the clock stops after one ``jax.block_until_ready`` on that result,
    so the steps inside queue up as they would in real training. Every variant is warmed up
    once first (compilation; its time is ``first_call_s``), then round after round each
    variant runs once in turn: A B C, A B C, ... Returns one :class:`Timing` per variant whose
    ``times_s`` are its per-run times (``number`` is 1): divide the work of one run by
    ``median_s`` (``per_second``) for a rate.
    """
    import jax

    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    if not variants:
        raise ValueError("variants is empty: give at least one {name: callable} to time.")
    first: dict[str, float] = {}
    devices: dict[str, str] = {}
    for label, run in variants.items():
        start = time.perf_counter()
        out = jax.block_until_ready(run())
        first[label] = time.perf_counter() - start
        devices[label] = _device_name(out)
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, run in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            samples[label].append(time.perf_counter() - start)
    return {label: Timing(label, devices[label], first[label], tuple(samples[label]), 1)
            for label in variants}


def table(results: Iterable[Timing]) -> str:
    """A plain-text table of several results: name, median, IQR, first call, device.

    For per-second figures build rows from ``Timing.as_dict()`` or ``Timing.per_second``.
    """
    rows = [("name", "median", "IQR", "first call", "device")]
    for r in results:
        rows.append(
            (r.name, format_seconds(r.median_s), format_seconds(r.iqr_s),
             format_seconds(r.first_call_s), r.device)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
