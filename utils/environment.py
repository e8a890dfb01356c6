"""Where is this notebook running, and on which devices? (introduced in lesson 00_setup)

Nothing here imports JAX at import time: ``configure_gpu_memory`` and
``simulate_cpu_devices`` must run *before* JAX starts its backend, so a lesson calls them
first and imports JAX after. Functions that need JAX import it when called.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

__all__ = [
    "RestartKernelError",
    "accelerator",
    "compute_capability",
    "configure_gpu_memory",
    "device_summary",
    "in_colab",
    "jax_started",
    "report",
    "simulate_cpu_devices",
    "versions",
]

#: Packages whose versions go into :func:`report`.
REPORTED_PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
                     "numpy")

#: The variable that caps (or, with preallocation on, sets) the share of GPU memory JAX uses.
MEM_FRACTION_VARIABLE = "XLA_CLIENT_MEM_FRACTION"
#: Its deprecated old name; JAX refuses to start when both are set.
DEPRECATED_MEM_FRACTION_VARIABLE = "XLA_PYTHON_CLIENT_MEM_FRACTION"


class RestartKernelError(RuntimeError):
    """A setting that only takes effect before JAX starts was asked for too late."""


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def jax_started() -> bool:
    """True once JAX has initialised its backends (after the first array or device query).

    Importing ``jax`` alone does not start it; creating an array or calling
    ``jax.devices()`` does, and from then on device settings can no longer change.
    """
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - layout of a future JAX
        return True
    started = getattr(xla_bridge, "backends_are_initialized", None)
    if started is not None:
        return bool(started())
    return bool(getattr(xla_bridge, "_backends", {}))  # pragma: no cover - older JAX


def _restart_message(what: str) -> str:
    return (
        f"{what} must be set before JAX starts, but JAX has already started in this "
        "kernel. Restart the kernel (Kernel > Restart Kernel, or Runtime > Restart session "
        "on Colab) and run this cell before any cell that uses JAX."
    )


def configure_gpu_memory(
    preallocate: bool = False, fraction: float | None = None
) -> dict[str, str]:
    """Set how JAX claims GPU memory; call before JAX starts. CPU runs ignore these settings.

    By default JAX preallocates 75% of a GPU's total memory when it starts (the newest
    versions let that pool grow beyond 75% when needed), so a second notebook on the same
    GPU finds little left and fails with out-of-memory. ``preallocate=False`` sets
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: JAX allocates what it needs as it goes, so
    several JupyterLab kernels can share one GPU (at a small cost in allocation speed); one
    process is still limited to 75% of the GPU's memory. ``fraction`` (0 < fraction <= 1)
    sets ``XLA_CLIENT_MEM_FRACTION``: the share one process may use (with preallocation
    off), or the share preallocated (with it on). The old name of that variable,
    ``XLA_PYTHON_CLIENT_MEM_FRACTION``, is deprecated, and JAX refuses to start when both
    are set, so setting ``fraction`` removes the old one from the environment.

    Returns the environment variables it set. Calling it again with the same settings
    is harmless; asking for different settings after JAX started raises
    :class:`RestartKernelError`.
    """
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float)
        or not 0.0 < fraction <= 1.0
    ):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}; for example 0.5.")
    wanted = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true" if preallocate else "false"}
    if fraction is not None:
        wanted[MEM_FRACTION_VARIABLE] = f"{fraction:.2f}"
    if jax_started():
        if any(os.environ.get(k) != v for k, v in wanted.items()):
            raise RestartKernelError(_restart_message("GPU memory settings"))
        return wanted
    if fraction is not None:
        os.environ.pop(DEPRECATED_MEM_FRACTION_VARIABLE, None)
    os.environ.update(wanted)
    return wanted


def simulate_cpu_devices(n: int) -> list[Any]:
    """Give JAX ``n`` simulated CPU devices and return them (introduced in 00, used in 06).

    Multi-device code can then be written and tested on a laptop. Must run before JAX
    starts; if it already has with a different count, raises :class:`RestartKernelError`.
    Returns ``jax.devices("cpu")``, a list of ``n`` devices.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive whole number of devices, got {n!r}; e.g. 8.")
    import jax

    if jax_started():
        have = len(jax.devices("cpu"))
        if have != n:
            raise RestartKernelError(
                _restart_message(f"{n} simulated CPU devices (this kernel has {have})")
            )
        return jax.devices("cpu")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except AttributeError:  # pragma: no cover - JAX older than the option
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return jax.devices("cpu")


def accelerator() -> str:
    """The default JAX backend: ``"gpu"``, ``"tpu"`` or ``"cpu"`` (starts JAX)."""
    import jax

    return jax.default_backend()


def compute_capability(device: Any = None) -> tuple[int, int] | None:
    """An NVIDIA GPU's compute capability, e.g. ``(7, 5)`` for a T4; None on other devices.

    What a GPU can do follows from it (NVIDIA's CUDA programming guide, "Compute
    Capabilities"): 7.5 (T4) has float16 tensor cores but none for bfloat16 or TF32; 8.0
    (A100) and 8.9 (L4) add bfloat16 and TF32; 9.0 (H100) adds float8. A cell that needs a
    newer GPU checks this and says why it skips. ``device`` defaults to ``jax.devices()[0]``
    (starts JAX).
    """
    import jax

    device = jax.devices()[0] if device is None else device
    if getattr(device, "platform", None) != "gpu":
        return None
    value = str(getattr(device, "compute_capability", "") or "")
    parts = value.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None  # a GPU that is not NVIDIA's (ROCm reports e.g. "gfx90a")
    return int(parts[0]), int(parts[1])


def device_summary() -> str:
    """One line per device JAX sees, e.g. ``"gpu:0  NVIDIA H100 80GB HBM3"`` (starts JAX)."""
    import jax

    lines = []
    for d in jax.devices():
        line = f"{d.platform}:{d.id}  {d.device_kind}"
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "bytes_limit" in stats:
            line += f"  ({stats['bytes_limit'] / 2**30:.1f} GiB usable)"
        lines.append(line)
    return "\n".join(lines)


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the course's key packages (``"-"`` if absent)."""
    found = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for name in REPORTED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    driver = _nvidia_driver()
    if driver:
        found["nvidia driver, gpu"] = driver
    return found


def report() -> str:
    """A block of text to paste into a bug report: versions, Colab or not, devices.

    Starts JAX (it lists the devices).
    """
    rows = versions()
    rows["colab"] = "yes" if in_colab() else "no"
    width = max(len(k) for k in rows)
    text = [f"{k:<{width}}  {v}" for k, v in rows.items()]
    text.append(f"{'backend':<{width}}  {accelerator()}")
    text.append("devices:")
    text.extend("  " + line for line in device_summary().splitlines())
    return "\n".join(text)
