"""Tests of utils/timing.py: unit formatting, the benchmark protocol, result tables.

Most protocol tests use a fake clock (exact, immune to the load of a shared CPU); a few
time real jitted JAX code, asserting only what holds on any machine.
"""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from utils import timing
from utils.timing import Timing, benchmark, format_seconds, table

# ---------------------------------------------------------------------------- format_seconds

@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (812e-9, "812 ns"), (3.41e-6, "3.41 µs"), (0.0123, "12.3 ms"), (2.05, "2.05 s"),
        (1.0, "1 s"), (1e-3, "1 ms"), (1e-6, "1 µs"), (0.0, "0 ns"), (4e-10, "0.4 ns"),
        (123.456, "123 s"), (5000.0, "5000 s"), (0.5, "500 ms"), (2.5e-5, "25 µs"),
        # values that round up to the next unit
        (0.9996, "1 s"), (0.00099995, "1 ms"), (999.7, "1000 s"), (0.0009994, "999 µs"),
        (-0.5, "-500 ms"),
    ],
)
def test_format_seconds_picks_the_readable_unit(seconds, text):
    assert format_seconds(seconds) == text


@pytest.mark.parametrize("seconds", np.geomspace(1e-10, 1e4, 57))
def test_format_seconds_round_trips_within_rounding(seconds):
    value, unit = format_seconds(float(seconds)).split(" ")
    scale = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}[unit]
    assert "e" not in value  # never scientific notation
    assert float(value) * scale == pytest.approx(seconds, rel=6e-3)
    if unit != "ns":
        assert 1 <= float(value) < 1000 or (unit == "s" and float(value) >= 1)


@pytest.mark.parametrize("seconds", [math.inf, -math.inf, math.nan])
def test_format_seconds_non_finite(seconds):
    assert format_seconds(seconds) == str(seconds)


# ---------------------------------------------------------------------------- fake clock

class FakeClock:
    """Replaces ``time`` inside utils.timing; ``advance`` is what a call "costs"."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class Pending:
    """An output leaf that is not ready: waiting for it costs ``seconds`` of the clock."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.seconds, self.waited = clock, seconds, 0

    def block_until_ready(self):
        self.clock.advance(self.seconds)
        self.waited += 1
        return self


def make_step(clock: FakeClock, compile_s: float, call_s: float):
    calls = []

    def step(x, *, scale=1):
        clock.advance(compile_s if not calls else call_s)
        calls.append((x, scale))
        return x * scale

    return step, calls


def test_benchmark_protocol_on_a_fake_clock(clock):
    step, calls = make_step(clock, compile_s=0.5, call_s=1e-3)
    t = benchmark(step, 3, scale=2, repeats=5, min_sample_s=0.02)

    assert calls[0] == (3, 2)  # args and kwargs passed through
    assert t.number == 20  # ceil(0.02 s / 1 ms): a sample lasts min_sample_s
    assert len(calls) == 1 + 1 + 5 * 20  # warm-up, calibration, samples
    assert len(t.times_s) == 5
    assert t.median_s == pytest.approx(1e-3) and t.iqr_s == pytest.approx(0, abs=1e-12)
    assert t.first_call_s == pytest.approx(0.5)
    assert t.compile_s == pytest.approx(0.499)
    assert t.per_second(2e6) == pytest.approx(2e9)
    assert t.name == "step"


def test_benchmark_with_a_given_number_skips_calibration(clock):
    step, calls = make_step(clock, compile_s=0.2, call_s=0.01)
    t = benchmark(step, 1, repeats=3, number=4, name="given")
    assert t.number == 4 and len(calls) == 1 + 3 * 4
    assert t.times_s == pytest.approx((0.01, 0.01, 0.01))
    assert t.name == "given"


def test_benchmark_caps_the_number_of_calls_for_instant_functions(clock):
    step, calls = make_step(clock, compile_s=0.0, call_s=0.0)
    t = benchmark(step, 1, repeats=2, max_number=50)
    assert t.number == 50 and len(calls) == 2 + 2 * 50


def test_benchmark_slow_function_uses_one_call_per_sample(clock):
    step, _ = make_step(clock, compile_s=1.0, call_s=0.3)
    assert benchmark(step, 1, repeats=3).number == 1


def test_benchmark_waits_for_every_output_leaf(clock):
    leaves = []

    def step():
        clock.advance(1e-4)  # dispatch is quick...
        out = {"loss": Pending(clock, 1e-3),  # ...waiting for each result is not
               "metrics": (Pending(clock, 2e-3), [Pending(clock, 4e-3)])}
        leaves.extend(jax.tree.leaves(out))
        return out

    t = benchmark(step, repeats=3, number=2)
    assert all(leaf.waited == 1 for leaf in leaves)
    assert len(leaves) == 3 * (1 + 3 * 2)
    assert t.median_s == pytest.approx(1e-4 + 7e-3)


def test_benchmark_time_per_sample_is_its_calls_mean(clock):
    costs = iter([0.5] + [0.01, 0.03] * 3)  # warm-up, then alternating costs

    def step():
        clock.advance(next(costs))

    t = benchmark(step, repeats=3, number=2)
    assert t.times_s == pytest.approx((0.02, 0.02, 0.02))


# ---------------------------------------------------------------------------- real JAX

@jax.jit
def _matmul_chain(a):
    for _ in range(3):
        a = jnp.tanh(a @ a)
    return a


def test_benchmark_on_a_jitted_function_reports_compile_apart():
    x = jnp.ones((128, 128), jnp.float32) * 0.01

    @jax.jit
    def fresh(a):  # a new function object: its first call compiles
        return jnp.tanh(a @ a).sum(), a.mean(axis=0)

    t = benchmark(fresh, x, repeats=5)
    assert t.first_call_s > t.median_s
    assert t.compile_s == pytest.approx(t.first_call_s - t.median_s)
    assert len(t.times_s) == 5 and all(s > 0 for s in t.times_s)
    assert t.number >= 1  # (how it is chosen is checked exactly on the fake clock)
    assert t.name == "fresh"
    device = x.devices().pop()
    assert t.device == f"{device.platform}:{device.id} {device.device_kind}"  # e.g. "cpu:0 cpu"
    line = str(t)
    assert "\n" not in line
    assert line.startswith("fresh: ") and line.endswith(f"on {t.device}")
    assert format_seconds(t.median_s) in line and f"median of 5 x {t.number}" in line
    assert t.per_second(1000.0) == pytest.approx(1000.0 / t.median_s)


def test_benchmark_measures_the_computation_not_just_the_dispatch():
    fast = jax.jit(lambda a: a[0, 0] + 1)
    x = jax.random.normal(jax.random.key(0), (768, 768), jnp.float32) / 30
    fast(x).block_until_ready()
    _matmul_chain(x).block_until_ready()

    def two_results(a):  # two dispatches; the slow one second
        return fast(a), _matmul_chain(a)

    ratios = []
    for _ in range(3):  # interleaved, so a burst of load elsewhere cannot fake a difference
        start = timing.time.perf_counter()
        jax.block_until_ready(two_results(x))
        blocked = timing.time.perf_counter() - start
        t = benchmark(two_results, x, repeats=1, number=1)
        ratios.append(t.median_s / blocked)
    # Without waiting for the outputs every round would measure the dispatch time only
    # (~100x less than the blocked call). One round close to 1 is enough to show it waits.
    # (That *every* leaf is waited for is checked exactly on the fake clock above.)
    assert max(ratios) > 0.1, ratios


def test_benchmark_names_partials_and_callables():
    from functools import partial

    t = benchmark(partial(jnp.add, 1.0), jnp.ones(4), repeats=1, number=1)
    assert t.name == "partial"
    assert t.device.startswith(f"{jax.devices()[0].platform}:0 ")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"repeats": 0}, "repeats"), ({"repeats": -3}, "repeats"),
    ({"number": 0}, "number"), ({"number": -1}, "number"),
])
def test_benchmark_rejects_bad_counts_before_calling(kwargs, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        benchmark(lambda: calls.append(1), **kwargs)
    assert calls == []


# ---------------------------------------------------------------------------- Timing, table

def test_timing_statistics_match_numpy():
    times = (5.0, 1.0, 4.0, 2.0, 3.0, 10.0)
    t = Timing("x", "cpu:0 cpu", first_call_s=2.0, times_s=times, number=3)
    assert t.median_s == np.median(times)
    assert t.min_s == 1.0 and t.max_s == 10.0
    q1, q3 = np.percentile(times, [25, 75])
    assert t.iqr_s == pytest.approx(q3 - q1)
    assert t.compile_s == 0.0  # first call faster than the median: never negative
    row = t.as_dict()
    assert row["median_s"] == t.median_s and row["iqr_s"] == t.iqr_s
    assert row["times_s"] == times and row["device"] == "cpu:0 cpu" and row["number"] == 3


def test_timing_with_one_sample_has_zero_spread():
    t = Timing("x", "d", first_call_s=1.0, times_s=(0.25,), number=1)
    assert t.iqr_s == 0.0 and t.median_s == 0.25 and t.compile_s == 0.75


def test_table_aligns_one_row_per_result():
    results = [Timing("matmul 1024", "gpu:0 NVIDIA H100", 0.8, (0.001, 0.002, 0.003), 10),
               Timing("relu", "cpu:0 cpu", 0.05, (2e-6,), 1000)]
    lines = table(results).splitlines()
    assert len(lines) == 2 + len(results)
    assert lines[0].split() == ["name", "median", "IQR", "first", "call", "device"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("matmul 1024") and lines[2].endswith("gpu:0 NVIDIA H100")
    assert "2 ms" in lines[2] and "800 ms" in lines[2] and "1 ms" in lines[2]
    assert lines[3].startswith("relu") and "2 µs" in lines[3] and "0 ns" in lines[3]
    # every column starts at the same offset in every row
    for header in ("median", "IQR", "first call", "device"):
        column = lines[0].index(header)
        assert lines[1][column - 2 : column] == "  " and lines[1][column] == "-"
    assert lines[2].index("gpu:0") == lines[0].index("device")


def test_table_of_nothing_is_just_the_header():
    assert table([]).splitlines()[0].split() == ["name", "median", "IQR", "first", "call",
                                                 "device"]
    assert len(table([]).splitlines()) == 2


# ----------------------------------------------------------------------------- interleaved

def test_interleaved_times_whole_runs_in_alternating_rounds(monkeypatch):
    order = []

    def variant(label):
        def run():
            order.append(label)
            return jnp.ones(3) * len(order)
        return run

    result = timing.interleaved({"a": variant("a"), "b": variant("b")}, rounds=3)
    # one warm-up each, then a b, a b, a b: a slowing machine slows both alike
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert set(result) == {"a", "b"}
    for label, t in result.items():
        assert t.name == label and t.number == 1 and len(t.times_s) == 3
        assert t.first_call_s > 0 and all(x > 0 for x in t.times_s)
        assert t.device.startswith("cpu:0")


def test_interleaved_waits_once_on_each_run_s_result_inside_the_clock(monkeypatch):
    waited, clock = [], []
    real_wait = jax.block_until_ready
    real_clock = timing.time.perf_counter

    def wait(tree):
        waited.append(tree)
        clock.append("wait")
        return real_wait(tree)

    def tick():
        clock.append("tick")
        return real_clock()

    monkeypatch.setattr(jax, "block_until_ready", wait)
    monkeypatch.setattr(timing.time, "perf_counter", tick)
    results = iter(range(100))
    timing.interleaved({"loop": lambda: {"state": jnp.ones(2) * next(results)}}, rounds=2)
    # warm-up + 2 rounds: one wait per run, on the very tree the run returned
    assert [float(w["state"][0]) for w in waited] == [0.0, 1.0, 2.0]
    # each wait falls between the two clock readings of its run
    assert clock[:3] == ["tick", "wait", "tick"] and clock[-3:] == ["tick", "wait", "tick"]


@pytest.mark.parametrize(("variants", "rounds", "message"), [
    ({}, 3, "variants is empty"), ({"a": lambda: 1}, 0, "rounds must be at least 1")])
def test_interleaved_rejects_bad_input(variants, rounds, message):
    with pytest.raises(ValueError, match=message):
        timing.interleaved(variants, rounds=rounds)
