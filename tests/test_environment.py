"""Tests of utils/environment.py: Colab detection, device set-up before JAX starts, reports.

Whether JAX has started is a property of the whole process, so everything that needs a
fresh interpreter (simulated devices, "importing utils imports no JAX") runs in a
subprocess; the rest runs here, where other tests may already have started JAX.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from utils import environment

GPU_VARS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_CLIENT_MEM_FRACTION",
            "XLA_PYTHON_CLIENT_MEM_FRACTION")


def run_fresh(code: str, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter on CPU; it prints one JSON object as its last line."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", *GPU_VARS)}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def no_gpu_vars(monkeypatch):
    """Unset the GPU variables, and restore the environment as it was after the test.

    (setenv first so that monkeypatch records the original state even when a variable was
    absent: otherwise what the code under test sets would leak into later tests, and into
    the notebook kernels that inherit this process's environment.)
    """
    for name in GPU_VARS:
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)


@pytest.fixture
def jax_is_running():
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    assert environment.jax_started()


# ---------------------------------------------------------------------------- in_colab

def test_in_colab_is_false_here(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert environment.in_colab() is False


def test_in_colab_is_true_with_colab_module_or_variable(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert environment.in_colab() is True
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101-060000_RC00")
    assert environment.in_colab() is True


# ---------------------------------------------------------------------------- fresh processes

def test_importing_utils_imports_no_jax_and_jax_started_follows_the_backend():
    result = run_fresh("""
        import json, sys
        import utils
        from utils import environment, exercises, timing, data
        loaded = sorted(m for m in sys.modules if m == "jax" or m.startswith(("jax.", "jaxlib")))
        before = environment.jax_started()
        import jax
        after_import = environment.jax_started()
        jax.numpy.ones(3).block_until_ready()
        print(json.dumps({"loaded": loaded, "before": before, "after_import": after_import,
                          "after_array": environment.jax_started()}))
    """)
    assert result == {"loaded": [], "before": False, "after_import": False, "after_array": True}


def test_simulate_cpu_devices_before_jax_starts_gives_n_devices():
    result = run_fresh("""
        import json
        from utils import environment
        devices = environment.simulate_cpu_devices(4)
        import jax
        same = environment.simulate_cpu_devices(4)  # asking again for the same is harmless
        try:
            environment.simulate_cpu_devices(2)
            error = None
        except environment.RestartKernelError as e:
            error = str(e)
        print(json.dumps({"returned": [str(d.platform) for d in devices],
                          "ids": sorted(d.id for d in devices), "count": jax.device_count(),
                          "same": len(same), "error": error}))
    """)
    assert result["returned"] == ["cpu"] * 4
    assert result["ids"] == [0, 1, 2, 3]
    assert result["count"] == 4 and result["same"] == 4
    assert result["error"] is not None and "Restart the kernel" in result["error"]
    assert "(this kernel has 4)" in result["error"]


def test_simulate_cpu_devices_after_jax_started_raises_restart_kernel_error():
    result = run_fresh("""
        import json
        import jax.numpy as jnp
        from utils import environment
        jnp.ones(2).block_until_ready()
        one = environment.simulate_cpu_devices(1)   # what the kernel already has: fine
        try:
            environment.simulate_cpu_devices(8)
            error = None
        except environment.RestartKernelError as e:
            error = [type(e).__mro__[1].__name__, str(e)]
        import jax
        print(json.dumps({"one": len(one), "error": error, "count": jax.device_count()}))
    """)
    assert result["one"] == 1
    assert result["error"] is not None
    base, message = result["error"]
    assert base == "RuntimeError"
    assert "Restart the kernel" in message and "8 simulated CPU devices" in message
    assert result["count"] == 1


@pytest.mark.parametrize("n", [0, -2, 2.0, True, "8", None])
def test_simulate_cpu_devices_rejects_a_bad_count(n):
    with pytest.raises(ValueError, match="positive whole number"):
        environment.simulate_cpu_devices(n)


# ---------------------------------------------------------------------------- GPU memory

def test_configure_gpu_memory_sets_the_variables_before_jax_starts(monkeypatch, no_gpu_vars):
    monkeypatch.setattr(environment, "jax_started", lambda: False)

    assert environment.configure_gpu_memory() == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_CLIENT_MEM_FRACTION" not in os.environ

    # The current name of the fraction variable, not the deprecated XLA_PYTHON_CLIENT_...
    wanted = environment.configure_gpu_memory(preallocate=True, fraction=0.5)
    assert wanted == {"XLA_PYTHON_CLIENT_PREALLOCATE": "true", "XLA_CLIENT_MEM_FRACTION": "0.50"}
    assert {k: os.environ[k] for k in GPU_VARS if k in os.environ} == wanted

    environment.configure_gpu_memory(fraction=1)
    assert os.environ["XLA_CLIENT_MEM_FRACTION"] == "1.00"


def test_configure_gpu_memory_removes_the_deprecated_name(monkeypatch, no_gpu_vars):
    """JAX refuses to start (ValueError) when both fraction variables are set."""
    monkeypatch.setattr(environment, "jax_started", lambda: False)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
    environment.configure_gpu_memory()  # no fraction asked for: the user's own setting stays
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == ".9"
    environment.configure_gpu_memory(fraction=0.25)
    assert os.environ["XLA_CLIENT_MEM_FRACTION"] == "0.25"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ


def test_jaxlib_reads_the_current_fraction_variable():
    """The installed jaxlib reads XLA_CLIENT_MEM_FRACTION (the variable the helper sets)."""
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("jaxlib")
    source = (pathlib.Path(spec.origin).parent / "xla_client.py").read_text()
    assert "XLA_CLIENT_MEM_FRACTION" in source


@pytest.mark.parametrize("fraction", [0, 0.0, -0.5, 1.01, 75, float("nan"), "0.5", True])
def test_configure_gpu_memory_rejects_a_bad_fraction(monkeypatch, no_gpu_vars, fraction):
    monkeypatch.setattr(environment, "jax_started", lambda: False)
    with pytest.raises(ValueError, match="fraction"):
        environment.configure_gpu_memory(fraction=fraction)
    assert not any(name in os.environ for name in GPU_VARS)  # nothing half-set


def test_configure_gpu_memory_after_jax_started(monkeypatch, no_gpu_vars, jax_is_running):
    # Nothing was set before JAX started, so any explicit setting is a change.
    with pytest.raises(environment.RestartKernelError, match="Restart the kernel"):
        environment.configure_gpu_memory()
    assert not any(name in os.environ for name in GPU_VARS)  # too late: nothing changed

    # The settings the process started with: calling again is harmless.
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    assert environment.configure_gpu_memory() == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    with pytest.raises(environment.RestartKernelError):
        environment.configure_gpu_memory(preallocate=True)
    with pytest.raises(environment.RestartKernelError):
        environment.configure_gpu_memory(fraction=0.3)
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_CLIENT_MEM_FRACTION" not in os.environ


# ---------------------------------------------------------------------------- reports

def test_versions_names_python_and_the_course_packages(monkeypatch):
    monkeypatch.setattr(environment, "REPORTED_PACKAGES", ("jax", "no-such-package-xyz"))
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)  # no nvidia-smi
    found = environment.versions()
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    assert found["jax"] == importlib.metadata.version("jax")
    assert found["no-such-package-xyz"] == "-"
    assert "nvidia driver, gpu" not in found


def test_report_lists_versions_and_devices(monkeypatch, jax_is_running):
    import jax

    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    text = environment.report()
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()
            if len(line.split()) >= 2 and not line.startswith(" ")}
    assert rows["python"] == ".".join(map(str, sys.version_info[:3]))
    for package in ("jax", "jaxlib", "flax", "optax", "numpy"):
        assert rows[package] == importlib.metadata.version(package), package
    assert rows["colab"] == "no"
    assert rows["backend"] == jax.default_backend()
    device_lines = text.split("devices:\n", 1)[1].splitlines()
    assert len(device_lines) == len(jax.devices())
    for line, device in zip(device_lines, jax.devices(), strict=True):
        assert line.startswith(f"  {device.platform}:{device.id}  {device.device_kind}")


def test_device_summary_and_accelerator_match_jax(jax_is_running):
    import jax

    lines = environment.device_summary().splitlines()
    assert [line.split()[0] for line in lines] == [f"{d.platform}:{d.id}" for d in jax.devices()]
    assert environment.accelerator() == jax.default_backend()
    assert environment.accelerator() in ("cpu", "gpu", "tpu")


def test_report_looks_for_both_cuda_plugins():
    """JAX's install page leads with jax[cuda13]; the course's extra installs jax[cuda12]."""
    assert {"jax-cuda12-plugin", "jax-cuda13-plugin"} <= set(environment.REPORTED_PACKAGES)
    found = environment.versions()
    assert "jax-cuda12-plugin" in found and "jax-cuda13-plugin" in found


# ----------------------------------------------------------------------- compute_capability

def test_compute_capability_of_the_cpu_is_none():
    assert environment.compute_capability() is None


@pytest.mark.parametrize(("platform", "value", "expected"), [
    ("gpu", "7.5", (7, 5)), ("gpu", "9.0", (9, 0)), ("gpu", "gfx90a", None),
    ("gpu", "", None), ("cpu", "8.0", None), ("tpu", None, None)])
def test_compute_capability_reads_the_device(platform, value, expected):
    device = types.SimpleNamespace(platform=platform, compute_capability=value)
    assert environment.compute_capability(device) == expected
