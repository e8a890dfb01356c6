"""Tests of utils/profiling.py: reading traces, cost and memory analyses, compile timing."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from utils import profiling
from utils.profiling import OpStat


def _meta(tid, name, pid=1):
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def _op(tid, name, dur, ts=0.0, pid=1, **args):
    event = {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
    if args:
        event["args"] = args
    return event


CPU_EVENTS = [
    _meta(1, "python"), _meta(2, "tf_XLAEigen/123"), _meta(3, "tf_XLAPjRtCpuClient/9"),
    _op(1, "$profiler.py:151 start_trace", 900.0),
    _op(1, "dot.2", 800.0),  # on the Python thread: not an XLA operation
    _op(1, "train", 50.0, ts=10.0, step_num="1"),
    _op(1, "train", 40.0, ts=5.0, step_num="0"),
    _op(2, "dot.2", 30.0), _op(3, "dot.2", 20.0), _op(2, "multiply_add_fusion.14", 10.0),
    _op(2, "ThunkExecutor::Execute", 500.0), _op(3, "copy-start.1", 5.0),
    _op(3, "broadcast", 5.0),
]


def test_top_operations_on_cpu_style_events_sum_by_name_and_skip_python_and_runtime():
    stats = profiling.top_operations(CPU_EVENTS, 10)
    assert stats == [OpStat("dot.2", 2, 50.0), OpStat("multiply_add_fusion.14", 1, 10.0),
                     OpStat("broadcast", 1, 5.0), OpStat("copy-start.1", 1, 5.0)]
    assert profiling.top_operations(CPU_EVENTS, 1) == [OpStat("dot.2", 2, 50.0)]


def test_top_operations_on_gpu_style_events_use_hlo_op():
    events = [_meta(7, "Stream #13"),
              _op(7, "void cutlass::Kernel<...>(...)", 70.0, hlo_op="dot.3", hlo_module="jit_f"),
              _op(7, "loop_add_fusion", 20.0, hlo_op="add_fusion"),
              _op(7, "void cutlass::Kernel<...>(...)", 30.0, hlo_op="dot.3"),
              _op(8, "dot.9", 999.0)]  # a host event without hlo_op: ignored on a GPU trace
    assert profiling.top_operations(events) == [OpStat("dot.3", 2, 100.0),
                                                OpStat("add_fusion", 1, 20.0)]


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_top_operations_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be"):
        profiling.top_operations(CPU_EVENTS, n)


def test_format_operations_table():
    table = profiling.format_operations([OpStat("dot.2", 2, 75.0), OpStat("add", 1, 25.0)])
    lines = table.splitlines()
    assert lines[0].split() == ["operation", "calls", "total", "share"]
    assert lines[1].split() == ["dot.2", "2", "75", "µs", "75%"]
    assert lines[2].split() == ["add", "1", "25", "µs", "25%"]


def test_annotation_durations_in_start_order():
    assert profiling.annotation_durations(CPU_EVENTS, "train") == [40.0, 50.0]
    assert profiling.annotation_durations(CPU_EVENTS, "missing") == []


def _write_trace(folder, events, name="host.trace.json.gz"):
    run = folder / "plugins" / "profile" / "2026_01_01_00_00_00"
    run.mkdir(parents=True, exist_ok=True)
    with gzip.open(run / name, "wt", encoding="utf-8") as f:
        json.dump({"displayTimeUnit": "ns", "traceEvents": events + [{}]}, f)
    return run / name


def test_find_and_load_a_trace_folder(tmp_path):
    path = _write_trace(tmp_path, CPU_EVENTS)
    assert profiling.find_trace(tmp_path) == path
    events = profiling.load_trace(tmp_path)
    assert events[: len(CPU_EVENTS)] == CPU_EVENTS
    assert profiling.load_trace(path)[: len(CPU_EVENTS)] == CPU_EVENTS


def test_find_trace_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        profiling.find_trace(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no \\*.trace.json.gz"):
        profiling.find_trace(tmp_path)


def test_load_trace_rejects_a_file_without_trace_events(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="traceEvents"):
        profiling.load_trace(path)


def test_a_real_trace_names_compiled_operations_and_annotations(tmp_path):
    f = jax.jit(lambda a: jnp.tanh(a @ a) + 1.0)
    a = jnp.ones((64, 64))
    jax.block_until_ready(f(a))
    with jax.profiler.trace(tmp_path, create_perfetto_trace=True):
        for i in range(2):
            with jax.profiler.StepTraceAnnotation("step", step_num=i):
                out = f(a)
        jax.block_until_ready(out)
    assert list(tmp_path.glob("plugins/profile/*/perfetto_trace.json.gz"))
    events = profiling.load_trace(tmp_path)
    assert len(profiling.annotation_durations(events, "step")) == 2
    names = [s.name for s in profiling.top_operations(events, 50)]
    assert names and not any(n.startswith("$") or "::" in n for n in names)


def test_cost_of_a_matmul_counts_its_flops():
    a, b = jnp.ones((32, 48)), jnp.ones((48, 16))
    cost = profiling.cost_of(jax.jit(jnp.dot).lower(a, b).compile())
    assert cost["flops"] == 2 * 32 * 48 * 16
    assert cost["bytes accessed"] >= 4 * (32 * 48 + 48 * 16 + 32 * 16)


def test_cost_of_accepts_the_older_list_form_and_nothing():
    as_list = SimpleNamespace(cost_analysis=lambda: [{"flops": 3, "bytes accessed": 4}])
    assert profiling.cost_of(as_list) == {"flops": 3.0, "bytes accessed": 4.0}
    assert profiling.cost_of(SimpleNamespace(cost_analysis=lambda: [])) == {}
    assert profiling.cost_of(SimpleNamespace(cost_analysis=lambda: None)) == {}


def test_memory_of_a_donating_program_reports_the_alias():
    x = jnp.ones((256,))
    compiled = jax.jit(lambda x: x * 2, donate_argnums=0).lower(x).compile()
    memory = profiling.memory_of(compiled)
    assert memory["argument"] == memory["output"] == memory["alias"] == 1024
    plain = profiling.memory_of(jax.jit(lambda x: x * 2).lower(x).compile())
    assert plain["alias"] == 0


def test_memory_of_leaves_out_what_is_not_reported():
    stats = SimpleNamespace(argument_size_in_bytes=8, temp_size_in_bytes=4)
    assert profiling.memory_of(SimpleNamespace(memory_analysis=lambda: stats)) == {
        "argument": 8, "temp": 4}
    assert profiling.memory_of(SimpleNamespace(memory_analysis=lambda: None)) == {}


def test_measure_compile_in_a_fresh_process_fills_the_cache(tmp_path):
    result = subprocess.run([sys.executable, "-m", "utils.profiling", str(tmp_path / "c"),
                             "--batch-size", "8"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert set(report) == {"lower_s", "compile_s", "cache_files"}
    assert report["compile_s"] > 0 and report["lower_s"] > 0
    assert report["cache_files"] > 0
