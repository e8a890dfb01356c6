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
    assert [(s.name, s.count, s.total_us, s.kind) for s in stats] == [
        ("dot.2", 2, 50.0, "matmul"), ("multiply_add_fusion.14", 1, 10.0, "fusion"),
        ("broadcast", 1, 5.0, "other"), ("copy-start.1", 1, 5.0, "copy")]
    assert [s.name for s in profiling.top_operations(CPU_EVENTS, 1)] == ["dot.2"]


def _process(pid, name):
    return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}


#: A GPU trace's shape (what jax.profiler.trace writes on an NVIDIA GPU): a device process
#: whose stream lines hold the kernels, each with the instruction it runs in args["hlo_op"];
#: a summary line ("XLA Modules") over them; and a host process whose threads hold the Python
#: frames, the launches and XLA's host-side events, some of them named after the same
#: instructions. Only the kernels may count, and each once.
GPU_EVENTS = [
    _process(1, "/device:GPU:0"), _process(701, "/host:CPU"),
    _meta(10, "Stream #20(Compute)", pid=1), _meta(11, "XLA Modules", pid=1),
    _meta(12, "Stream #21(MemcpyH2D)", pid=1),
    _meta(1, "python", pid=701), _meta(2, "tf_pjrt_thread", pid=701),
    _op(11, "jit_train_step(7)", 400.0, pid=1, hlo_module="jit_train_step"),
    _op(10, "sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32", 70.0, pid=1,
        hlo_op="cublas-gemm.1", hlo_module="jit_train_step"),
    _op(10, "sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32", 50.0, pid=1,
        hlo_op="cublas-gemm.1", hlo_module="jit_train_step"),
    _op(10, "gemm_fusion_dot_3", 40.0, pid=1, hlo_op="gemm_fusion_dot.3"),
    _op(10, "loop_add_fusion", 20.0, pid=1, hlo_op="loop_add_fusion.2"),
    # A kernel run from a CUDA graph (command buffer) may carry no hlo_op: its own name.
    _op(10, "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x256_16x3_nn_align4>()",
        30.0, pid=1),
    _op(12, "MemcpyH2D", 10.0, pid=1),
    # The host's view of the same work: never counted on a trace with a device.
    _op(1, "$train.py:12 train_step", 900.0, pid=701),
    _op(2, "cuLaunchKernel", 5.0, pid=701, correlation_id=3),
    _op(2, "cublas-gemm.1", 80.0, pid=701, hlo_op="cublas-gemm.1"),
    _op(2, "loop_add_fusion.2", 9.0, pid=701),
]


def test_top_operations_on_a_gpu_trace_counts_device_kernels_once_and_names_matmuls():
    stats = profiling.top_operations(GPU_EVENTS, 10)
    assert [(s.name, s.count, s.total_us, s.kind) for s in stats] == [
        ("cublas-gemm.1", 2, 120.0, "matmul"),
        ("gemm_fusion_dot.3", 1, 40.0, "matmul"),
        ("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x256_16x3_nn_align4>()", 1,
         30.0, "matmul"),
        ("loop_add_fusion.2", 1, 20.0, "fusion"),
        ("MemcpyH2D", 1, 10.0, "copy")]
    # Every device microsecond once: the kernels' 220 µs, not the module's 400 µs on top,
    # nor the host's 80 + 9 µs about the same instructions.
    assert sum(s.total_us for s in stats) == 220.0


def test_top_operations_on_a_tpu_trace_uses_its_xla_ops_line_alone():
    events = [_process(3, "/device:TPU:0"), _process(9, "/host:CPU"),
              _meta(1, "XLA Ops", pid=3), _meta(2, "XLA Modules", pid=3), _meta(5, "Steps", pid=3),
              _meta(4, "TensorCore sync flags", pid=3),
              _op(1, "fusion.3", 30.0, pid=3), _op(1, "convolution.1", 60.0, pid=3),
              _op(1, "all-reduce.2", 10.0, pid=3), _op(2, "jit_step(1)", 100.0, pid=3),
              _op(5, "0", 100.0, pid=3), _op(4, "sync", 99.0, pid=3),
              _op(7, "fusion.3", 45.0, pid=9)]
    stats = profiling.top_operations(events)
    assert [(s.name, s.total_us, s.kind) for s in stats] == [
        ("convolution.1", 60.0, "convolution"), ("fusion.3", 30.0, "fusion"),
        ("all-reduce.2", 10.0, "collective")]


@pytest.mark.parametrize("name,kernels,kind", [
    ("dot.3", (), "matmul"), ("dot", (), "matmul"), ("cublas-gemm.2", (), "matmul"),
    ("custom-call.4", ("nvjet_tst_128x64_64x4_1x2_h_bz_NNT",), "matmul"),
    ("fusion.9", ("Cijk_Alik_Bljk_SB_MT128x128x16",), "matmul"),
    ("gemm_fusion_dot.1", (), "matmul"), ("__cublas$lt$matmul", (), "matmul"),
    ("convolution.2", (), "convolution"), ("cudnn-conv.1", (), "convolution"),
    ("convert_fusion.3", (), "fusion"), ("loop_convert_fusion", (), "fusion"),
    ("all-reduce.1", ("ncclDevKernel_AllReduce_Sum_f32_RING_LL",), "collective"),
    ("copy.4", (), "copy"), ("MemcpyD2H", (), "copy"), ("broadcast.7", (), "other"),
    ("dotted_line", (), "other"),
])
def test_operation_kind(name, kernels, kind):
    assert profiling.operation_kind(name, kernels) == kind


#: A compiled program's text as XLA prints it: a CPU's YNNPACK fusion that contains a dot, a
#: GPU's cuBLAS call, a loop fusion; metadata with the named scopes.
HLO_TEXT = "\n".join([
    "HloModule jit_step, entry_computation_layout={(f32[8,4]{1,0}, f32[4,2]{1,0})"
    "->f32[8,2]{1,0}}",
    "",
    "%fused_computation (param_0: f32[8,4], param_1: f32[4,2]) -> f32[8,2] {",
    "  %param_0 = f32[8,4]{1,0} parameter(0)",
    "  %param_1 = f32[4,2]{1,0} parameter(1)",
    "  ROOT %dot.1 = f32[8,2]{1,0} dot(f32[8,4]{1,0} %param_0, f32[4,2]{1,0} %param_1), "
    "lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="
    '"jit(step)/jvp(forward)/dot_general" source_file="x.py" source_line=3}',
    "}",
    "",
    "%add_computation (param_0.1: f32[8,2]) -> f32[8,2] {",
    "  %param_0.1 = f32[8,2]{1,0} parameter(0)",
    "  ROOT %add.2 = f32[8,2]{1,0} add(f32[8,2]{1,0} %param_0.1, f32[8,2]{1,0} %param_0.1), "
    'metadata={op_name="jit(step)/adam/add"}',
    "}",
    "",
    "ENTRY %main.5 (Arg_0.1: f32[8,4], Arg_1.2: f32[4,2]) -> f32[8,2] {",
    "  %Arg_0.1 = f32[8,4]{1,0} parameter(0)",
    "  %Arg_1.2 = f32[4,2]{1,0} parameter(1)",
    "  %ynn_fusion.2 = f32[8,2]{1,0} fusion(f32[8,4]{1,0} %Arg_0.1, f32[4,2]{1,0} %Arg_1.2), "
    'kind=kCustom, calls=%fused_computation, metadata={op_name="jit(step)/jvp(forward)/'
    'dot_general"}',
    "  %cublas-gemm.1 = (f32[8,2]{1,0}, s8[0]{0}) custom-call(f32[8,4]{1,0} %Arg_0.1, "
    'f32[4,2]{1,0} %Arg_1.2), custom_call_target="__cublas$gemm", metadata={op_name='
    '"jit(step)/transpose(jvp(forward))/dot_general"}',
    "  ROOT %loop_add_fusion = f32[8,2]{1,0} fusion(f32[8,2]{1,0} %ynn_fusion.2), kind=kLoop, "
    'calls=%add_computation, metadata={op_name="jit(step)/adam/add"}',
    "}",
])


def test_hlo_ops_names_what_each_instruction_is_and_its_named_scope():
    ops = profiling.hlo_ops(HLO_TEXT)
    assert (ops["ynn_fusion.2"].kind, ops["ynn_fusion.2"].scope) == ("matmul", "jvp(forward)")
    assert (ops["cublas-gemm.1"].kind, ops["cublas-gemm.1"].scope) == (
        "matmul", "transpose(jvp(forward))")
    assert (ops["loop_add_fusion"].kind, ops["loop_add_fusion"].scope) == ("fusion", "adam")
    assert ops["dot.1"].opcode == "dot" and ops["Arg_0.1"].scope == ""
    with pytest.raises(TypeError, match="compiled program"):
        profiling.hlo_ops(42)


def test_top_operations_reads_kinds_and_scopes_from_the_program():
    events = [_meta(2, "tf_XLAEigen/1"), _op(2, "ynn_fusion.2", 30.0),
              _op(2, "loop_add_fusion", 10.0)]
    stats = profiling.top_operations(events, program=HLO_TEXT)
    assert [(s.name, s.kind, s.scope) for s in stats] == [
        ("ynn_fusion.2", "matmul", "jvp(forward)"), ("loop_add_fusion", "fusion", "adam")]
    table = profiling.format_operations(stats).splitlines()
    assert table[0].split() == ["operation", "kind", "calls", "total", "share", "scope"]
    assert table[1].split() == ["ynn_fusion.2", "matmul", "1", "30", "µs", "75%",
                                "jvp(forward)"]


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_top_operations_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be"):
        profiling.top_operations(CPU_EVENTS, n)


def test_format_operations_table():
    table = profiling.format_operations([OpStat("dot.2", 2, 75.0, "matmul"),
                                         OpStat("add", 1, 25.0)])
    lines = table.splitlines()
    assert lines[0].split() == ["operation", "kind", "calls", "total", "share"]
    assert lines[1].split() == ["dot.2", "matmul", "2", "75", "µs", "75%"]
    assert lines[2].split() == ["add", "other", "1", "25", "µs", "25%"]


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


def test_a_real_trace_with_the_program_names_matmuls_and_named_scopes(tmp_path):
    def f(a):
        with jax.named_scope("first"):
            b = a @ a
        with jax.named_scope("second"):
            return jnp.tanh(b) + 1.0

    jitted, a = jax.jit(f), jnp.ones((64, 64))
    compiled = jitted.lower(a).compile()
    jax.block_until_ready(jitted(a))
    with jax.profiler.trace(tmp_path):
        jax.block_until_ready(jitted(a))
    stats = profiling.top_operations(profiling.load_trace(tmp_path), 50, program=compiled)
    assert {s.scope for s in stats if s.kind == "matmul"} == {"first"}
    assert "second" in {s.scope for s in stats}
    ops = profiling.hlo_ops(compiled)
    assert {op.scope for op in ops.values()} >= {"first", "second"}


# --------------------------------------------------------- memory as JAX plans it (jaxprs)


def test_planned_peak_bytes_of_a_chain_keeps_two_values_alive():
    x = jnp.ones(1000)  # 4000 bytes; arguments are not counted
    assert profiling.planned_peak_bytes(lambda x: ((x * 2) + 1) * 3, x) == 8000
    # Two values made from x and both needed at the end: three at once at the peak.
    assert profiling.planned_peak_bytes(lambda x: (x * 2) * (x + 1), x) == 12000


def test_planned_peak_bytes_counts_a_scan_body_once_and_a_jit_inside():
    x = jnp.ones(1000)

    def looped(x):
        return jax.lax.scan(lambda c, _: (c * 2 + 1, None), x, None, length=50)[0]

    # The body makes two values of 4000 bytes (c * 2, then + 1), whatever the length.
    assert profiling.planned_peak_bytes(looped, x) <= 3 * 4000
    assert profiling.planned_peak_bytes(jax.jit(lambda x: (x * 2) + 1), x) >= 8000


def test_planned_peak_bytes_shows_what_remat_saves():
    def block(w, x):
        return jnp.sin(jnp.sin(x @ w) @ w.T)

    def stack(block_fn):
        def forward(w, x):
            for _ in range(4):
                x = block_fn(w, x)
            return jnp.sum(x)
        return forward

    w, x = jnp.ones((4, 256)) / 16, jnp.ones((512, 4))
    plain = profiling.planned_peak_bytes(jax.grad(stack(block)), w, x)
    remat = profiling.planned_peak_bytes(jax.grad(stack(jax.checkpoint(block))), w, x)
    assert remat < 0.7 * plain


def test_saved_residuals_lists_what_the_forward_pass_keeps():
    w, x = jnp.ones((3, 5)), jnp.ones((2, 3))

    def f(w, x):
        return jnp.sin(x @ w)

    assert profiling.saved_residuals(f, w, x) == [((2, 5), "float32")]  # cos(x @ w)
    assert profiling.saved_residuals(jax.checkpoint(f), w, x) == []  # only the arguments
    with pytest.raises(TypeError):
        profiling.saved_residuals(f, w, "not an array")
