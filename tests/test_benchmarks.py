"""benchmarks/mlp_throughput.py runs end to end with tiny settings, with and without PyTorch."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "mlp_throughput.py"
TINY = ["--steps", "3", "--rounds", "2", "--batch-size", "8", "--pause", "0"]
RATE = r"\d+ examples/s \(median of 2 rounds; warm-up incl\. compile \d+\.\d+ s\)"
HAS_TORCH = importlib.util.find_spec("torch") is not None

# Runs the script with `import torch` failing, as on a machine without PyTorch.
WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; "
    f"sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]; "
    f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
)


def _run(*args: str, code: str | None = None) -> list[str]:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, str(SCRIPT), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def _line(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line starting with {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


def _ratio(line: str) -> float:
    match = re.fullmatch(r"ratio .+ / .+: (\d+\.\d+)x", line)
    assert match, line
    return float(match.group(1))


def _check_jax_lines(lines: list[str]) -> None:
    assert re.match(r"device: \w+:\d+ .+; \d+ usable CPU cores; JAX ", _line(lines, "device:"))
    config = _line(lines, "config:")
    assert "MLP 784-512-512-10" in config and "batch 8" in config and "3 steps" in config
    for name in ("jax step loop", "jax lax.scan"):
        assert re.fullmatch(rf"{name}: {RATE}", _line(lines, f"{name}:")), lines
    assert _ratio(_line(lines, "ratio jax lax.scan / jax step loop:")) > 0


def test_without_torch_compares_jax_only():
    lines = _run(*TINY, code=WITHOUT_TORCH)
    _check_jax_lines(lines)
    assert "not installed" in _line(lines, "pytorch:")
    assert not [line for line in lines if line.startswith("pytorch eager")]
    assert len([line for line in lines if line.startswith("ratio")]) == 1


def test_no_torch_flag_skips_it():
    lines = _run(*TINY, "--no-torch")
    _check_jax_lines(lines)
    assert "skipped" in _line(lines, "pytorch:")


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (optional: torch==2.13.0)")
def test_with_torch_compares_all_three():
    lines = _run(*TINY, "--threads", "1")
    _check_jax_lines(lines)
    assert "torch.set_num_threads(1)" in _line(lines, "pytorch:")
    assert re.fullmatch(rf"pytorch eager: {RATE}", _line(lines, "pytorch eager:"))
    assert _ratio(_line(lines, "ratio jax step loop / pytorch eager:")) > 0
    assert _ratio(_line(lines, "ratio jax lax.scan / pytorch eager:")) > 0


def test_bad_arguments_are_refused():
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "0"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "--steps must be at least 1" in done.stderr


# --- benchmarks/cnn_throughput.py ------------------------------------------------------------

CNN_SCRIPT = SCRIPT.parent / "cnn_throughput.py"
CNN_TINY = ["--steps", "2", "--rounds", "2", "--batch-size", "4", "--pause", "0",
            "--channels", "2", "3", "--hidden", "4"]
CNN_WITHOUT_TORCH = WITHOUT_TORCH.replace(str(SCRIPT), str(CNN_SCRIPT))


def _run_cnn(*args: str, code: str | None = None) -> list[str]:
    command = ([sys.executable, "-c", code, *args] if code
               else [sys.executable, str(CNN_SCRIPT), *args])
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "", done.stderr[-2000:]
    return done.stdout.splitlines()


def _check_cnn_jax_lines(lines: list[str]) -> None:
    assert re.match(r"device: \w+:\d+ .+; \d+ usable CPU cores; JAX ", _line(lines, "device:"))
    config = _line(lines, "config:")
    assert "CNN conv2-pool-conv3-pool-4-10" in config and "batch 4" in config
    assert "2 steps per round" in config
    assert re.fullmatch(rf"jax step loop: {RATE}", _line(lines, "jax step loop:")), lines


def test_cnn_benchmark_without_torch_runs_jax_only():
    lines = _run_cnn(*CNN_TINY, code=CNN_WITHOUT_TORCH)
    _check_cnn_jax_lines(lines)
    assert "not installed" in _line(lines, "pytorch:")
    assert not [line for line in lines if line.startswith(("pytorch eager", "ratio"))]


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (optional: torch==2.13.0)")
def test_cnn_benchmark_with_torch_compares_both():
    lines = _run_cnn(*CNN_TINY, "--threads", "1")
    _check_cnn_jax_lines(lines)
    assert re.fullmatch(rf"pytorch eager: {RATE}", _line(lines, "pytorch eager:"))
    assert _ratio(_line(lines, "ratio jax step loop / pytorch eager:")) > 0


def test_cnn_benchmark_bad_arguments_are_refused():
    for args, message in ((["--steps", "0"], "--steps must be at least 1"),
                          (["--channels", "0", "4"], "--channels must be two positive"),
                          (["--dropout", "1.5"], "--dropout must be in")):
        done = subprocess.run([sys.executable, str(CNN_SCRIPT), *args], capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 2
        assert message in done.stderr
