"""Tests of utils/colab.py: keep Colab's JAX when it meets the floor, else upgrade in one call.

The same code runs for real on a replica of Colab's package set in ``tools/test_colab.sh``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils import colab

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "jax-gpu-course @ git+https://example.invalid/course@main"
REQUIRES = ["jax>=0.10.2", "flax>=0.12.8", "optax>=0.2.8", "numpy>=2.0"]
#: Colab's GPU runtime of 2026-08-19 (requirements/colab-gpu.txt), the parts that matter here.
COLAB_2026_08 = {"jax": "0.7.2", "jaxlib": "0.7.2", "jax-cuda12-plugin": "0.7.2",
                 "jax_cuda12_pjrt": "0.7.2", "nvidia-cublas-cu12": "12.8.4.1",
                 "flax": "0.11.2", "numpy": "2.1.3", "torch": "2.11.0+cu128"}


def test_tested_stack_is_the_pinned_one_ci_tests():
    pins = dict(line.strip().split("==", 1)
                for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
                if "==" in line)
    assert {name: pins[name] for name in colab.TESTED_STACK} == colab.TESTED_STACK


@pytest.mark.parametrize(("version", "expected"), [
    ("0.10.2", (0, 10, 2)), ("0.7.2", (0, 7, 2)), ("0.12.0.1", (0, 12, 0, 1)),
    ("0.8.0rc1", (0, 8, 0)), ("0.7.2+cuda12", (0, 7, 2)), ("1", (1,))])
def test_version_tuple(version, expected):
    assert colab.version_tuple(version) == expected


def test_old_colab_jax_is_upgraded_to_the_tested_gpu_stack_with_the_course():
    chosen = colab.plan(COLAB_2026_08, SOURCE, gpu=True, course_requirements=REQUIRES)
    assert chosen.action == "upgrade" and chosen.colab_jax == "0.7.2" and chosen.floor == "0.10.2"
    # the tested stack in place of the course's floors, with the course's other requirements
    assert chosen.requirements == ("jax[cuda12]==0.10.2", "jaxlib==0.10.2", "flax==0.12.8",
                                   "optax==0.2.8", "orbax-checkpoint==0.12.8", "numpy>=2.0")
    assert chosen.constraints == ()  # nothing pinned: pip may move what the stack requires
    args = chosen.pip_arguments("pins.txt")
    assert args[0] == "-q" and "-c" not in args and "--upgrade" not in args and "-U" not in args


def test_without_a_gpu_the_upgrade_takes_the_cpu_build():
    chosen = colab.plan(COLAB_2026_08, SOURCE, gpu=False, course_requirements=REQUIRES)
    assert chosen.requirements[0] == "jax==0.10.2"
    assert not any("cuda" in r for r in chosen.requirements)


@pytest.mark.parametrize("jax_version", ["0.10.2", "0.12.0.1"])
def test_colab_jax_at_or_above_the_floor_is_kept_with_its_cuda_packages(jax_version):
    installed = dict(COLAB_2026_08, jax=jax_version, jaxlib=jax_version)
    chosen = colab.plan(installed, SOURCE, gpu=True, course_requirements=REQUIRES)
    assert chosen.action == "keep"
    assert chosen.requirements == tuple(REQUIRES)  # what the course needs, JAX pinned below
    assert chosen.constraints == tuple(sorted([
        f"jax=={jax_version}", f"jaxlib=={jax_version}", "jax-cuda12-plugin==0.7.2",
        "jax-cuda12-pjrt==0.7.2", "nvidia-cublas-cu12==12.8.4.1"]))
    assert chosen.pip_arguments("pins.txt") == ["-q", "-c", "pins.txt", *REQUIRES]


def test_without_the_course_s_requirements_pip_is_asked_for_the_course_itself():
    kept = colab.plan({"jax": "0.10.2"}, SOURCE, gpu=False, course_requirements=[])
    upgraded = colab.plan({"jax": "0.7.2"}, SOURCE, gpu=False, course_requirements=[])
    assert kept.requirements == (SOURCE,) and upgraded.requirements[-1] == SOURCE


def test_the_floor_comes_from_the_course_requirements():
    chosen = colab.plan({"jax": "0.11.0"}, SOURCE, gpu=False,
                        course_requirements=["jax>=0.12", "flax>=0.12.8"])
    assert chosen.action == "upgrade" and chosen.floor == "0.12"
    assert colab.plan({}, SOURCE, gpu=False, course_requirements=[]).floor == "0.10.2"


def test_a_runtime_without_jax_gets_the_tested_stack():
    chosen = colab.plan({"numpy": "2.1.3"}, SOURCE, gpu=False, course_requirements=REQUIRES)
    assert chosen.action == "upgrade" and chosen.colab_jax is None


@pytest.mark.parametrize(("name", "owned"), [
    ("jax", True), ("JAX", True), ("jaxlib", True), ("jax_cuda12_plugin", True),
    ("jax-cuda13-pjrt", True), ("nvidia-cudnn-cu12", True), ("flax", False),
    ("jaxtyping", False), ("numpy", False), ("", False)])
def test_colab_owns(name, owned):
    assert colab.colab_owns(name) is owned


@pytest.fixture
def fake_runtime(monkeypatch, tmp_path):
    """set_up with a chosen installed set, GPU and imported-JAX state; pip only recorded."""
    calls = []

    def configure(installed, gpu=None, jax_imported=False):
        monkeypatch.setattr(colab, "installed_versions", lambda: dict(installed))
        monkeypatch.setattr(colab, "gpu_name", lambda: gpu)
        monkeypatch.setattr(colab, "_course_requirements", lambda: list(REQUIRES))
        if jax_imported:
            monkeypatch.setitem(sys.modules, "jax", sys.modules.get("jax", object()))
        else:
            monkeypatch.delitem(sys.modules, "jax", raising=False)
        log = tmp_path / "colab.log"
        monkeypatch.setenv(colab.LOG_VARIABLE, str(log))

        def fake_run(command, check):
            assert check is True
            if "-c" in command:
                calls.append(Path(command[command.index("-c") + 1]).read_text())
            calls.append(command)

        monkeypatch.setattr(subprocess, "run", fake_run)
        return calls, log

    return configure


def test_set_up_upgrades_in_one_pip_call_and_says_why(fake_runtime, capsys):
    calls, log = fake_runtime(COLAB_2026_08, gpu="Tesla T4")
    chosen = colab.set_up(SOURCE)
    assert chosen.action == "upgrade"
    assert len(calls) == 1 and calls[0][:4] == [sys.executable, "-m", "pip", "install"]
    assert "--root-user-action=ignore" in calls[0]  # Colab runs pip as root: no warning
    assert calls[0][-5:] == ["jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8",
                             "orbax-checkpoint==0.12.8", "numpy>=2.0"]
    assert "jax[cuda12]==0.10.2" in calls[0]
    logged = json.loads(log.read_text())
    assert logged["command"] == calls[0] and logged["action"] == "upgrade"
    assert logged["seconds"] >= 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Colab set-up: Colab's JAX 0.7.2 is older than the course needs "
                             "(JAX >= 0.10.2), so installed the course and its tested stack "
                             "(jax[cuda12]; jax 0.10.2, flax 0.12.8, optax 0.2.8")
    assert out[0].endswith(" s.") and out[1] == "GPU: Tesla T4."


def test_set_up_keeps_colab_jax_pinned(fake_runtime, capsys):
    calls, _ = fake_runtime(dict(COLAB_2026_08, jax="0.10.2", jaxlib="0.10.2"), gpu="Tesla T4",
                            jax_imported=True)  # keeping an imported JAX is fine
    assert colab.set_up(SOURCE).action == "keep"
    pins, command = calls
    assert "jax==0.10.2" in pins.splitlines() and command[-len(REQUIRES):] == REQUIRES
    assert capsys.readouterr().out.startswith(
        "Colab set-up: kept Colab's JAX 0.10.2 and its CUDA packages")


def test_set_up_without_a_gpu_says_how_to_choose_one(fake_runtime, capsys):
    fake_runtime(COLAB_2026_08, gpu=None)
    colab.set_up(SOURCE)
    out = capsys.readouterr().out
    assert "jax (CPU build)" in out
    assert "Runtime > Change runtime type" in out and "runs on the CPU" in out


def test_upgrade_after_jax_was_imported_asks_for_a_restart(fake_runtime, capsys):
    calls, _ = fake_runtime(COLAB_2026_08, gpu="Tesla T4", jax_imported=True)
    with pytest.raises(colab.RestartNeeded, match=r"Runtime > Restart session"):
        colab.set_up(SOURCE)
    assert len(calls) == 1  # installed first, so the restart finds the new JAX


def test_colab_module_imports_no_jax():
    code = "import sys; import utils.colab; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(("name", "expected"), [
    ("JAX_cuda12.Plugin", "jax-cuda12-plugin"), ("orbax_checkpoint", "orbax-checkpoint"),
    ("jax", "jax"), ("", "")])
def test_normal_name(name, expected):
    assert colab.normal_name(name) == expected


# ---------------------------------------------------------------- tools/colab_leg.py (the CI leg)

def _colab_leg():
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_leg", ROOT / "tools" / "colab_leg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_colab_leg_counts_what_pip_downloaded():
    log = "\n".join([
        "2026-12-02T06:46:03,337   Downloading jaxlib-0.10.2-cp313-cp313-manylinux_2_27_x86_64"
        ".whl (85.5 MB)",
        "2026-12-02T06:46:03,400   Downloading jax-0.10.2-py3-none-any.whl.metadata (12.3 kB)",
        "2026-12-02T06:46:03,500   Downloading tiny-1.0-py3-none-any.whl (900 bytes)",
        "2026-12-02T06:46:03,600 Collecting jax==0.10.2"])
    metadata, whole, megabytes = _colab_leg().downloads(log)
    assert (metadata, whole) == (1, 2)
    assert megabytes == pytest.approx(85.5 + 0.0123 + 0.0009)


def test_colab_leg_replica_pins_colab_s_published_versions():
    """The replica's versions are the ones the issue and README quote (2026-08-19 list)."""
    pins = dict(line.split("==", 1) for line in
                (ROOT / "requirements" / "colab-gpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert {name: pins[name] for name in ("jax", "jaxlib", "flax", "optax", "numpy",
                                          "ipykernel", "pip")} == {
        "jax": "0.7.2", "jaxlib": "0.7.2", "flax": "0.11.2", "optax": "0.2.8",
        "numpy": "2.1.3", "ipykernel": "6.17.1", "pip": "24.1.2"}
    leg = _colab_leg()
    assert set(leg.REPLICA_PACKAGES) <= set(pins), "every replica package has Colab's pin"
