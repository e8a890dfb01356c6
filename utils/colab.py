"""The Colab set-up that every notebook's first cell runs on Google Colab (lesson 00_setup).

Colab's runtime ships its own JAX, and it is often *older* than this course needs (its GPU
runtime of 2026-08-19 has JAX 0.7.2; the course needs the floor in ``pyproject.toml``). The
first cell of every notebook installs the course package without its dependencies and calls
:func:`set_up`, which then, in **one** pip call with the course's requirements:

- **keeps** Colab's JAX, jaxlib and CUDA packages exactly as they are when its JAX meets the
  course's floor (they are pinned as constraints), and installs what else the course needs;
- **upgrades** to the course's tested stack (:data:`TESTED_STACK`: ``jax[cuda12]`` on a GPU
  runtime, the CPU build without one, with the tested Flax, Optax and Orbax) when it does not,
  touching Colab's other packages only where that stack requires it.

It prints one line saying what it did, why and how long it took, and one about the GPU (how
to choose one when the runtime has none: the lessons also run on the CPU). If this Python
process had already imported an older JAX, the new one can only load in a fresh process:
:func:`set_up` then raises :class:`RestartNeeded`, saying to restart the session.

Nothing here imports JAX. Outside Colab the first cell does nothing at all.

Two environment variables exist for the course's own tests, never for students:
``COURSE_INSTALL_SOURCE`` (what pip installs as the course: a local checkout instead of the
repository URL; read by the cell) and ``COURSE_COLAB_LOG`` (a file that receives the pip
command as JSON, so a test can see what was asked for).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "COURSE_PACKAGE",
    "TESTED_STACK",
    "Plan",
    "RestartNeeded",
    "colab_owns",
    "gpu_name",
    "normal_name",
    "plan",
    "set_up",
]

#: The course's distribution name (what the first cell installs).
COURSE_PACKAGE = "jax-gpu-course"

#: The stack CI tests (``requirements/constraints.txt``; a test keeps the two in step). The
#: upgrade installs exactly these; ``jax`` becomes ``jax[cuda12]`` on a GPU runtime (Colab's
#: NVIDIA driver is a CUDA 12 one; JAX's CUDA 13 wheels need driver 580 or newer).
TESTED_STACK: dict[str, str] = {
    "jax": "0.10.2",
    "jaxlib": "0.10.2",
    "flax": "0.12.8",
    "optax": "0.2.8",
    "orbax-checkpoint": "0.12.8",
}

#: Where the course's GPU build of JAX comes from: the CUDA 12 extra (plugin + pjrt wheels).
CUDA_EXTRA = "cuda12"

LOG_VARIABLE = "COURSE_COLAB_LOG"


class RestartNeeded(RuntimeError):
    """JAX was upgraded, but this Python process had already imported the old one."""


@dataclass(frozen=True)
class Plan:
    """What :func:`set_up` will do: ``action`` is ``"keep"`` or ``"upgrade"``."""

    action: str
    colab_jax: str | None  # Colab's installed JAX version (None: not installed)
    floor: str  # the lowest JAX the course supports
    requirements: tuple[str, ...]  # what the one pip call installs
    constraints: tuple[str, ...]  # pinned so pip cannot change them (the keep branch)

    def pip_arguments(self, constraints_file: str | None = None) -> list[str]:
        """The arguments after ``pip install``."""
        args = ["-q"]
        if self.constraints and constraints_file:
            args += ["-c", constraints_file]
        return args + list(self.requirements)


def normal_name(name: str) -> str:
    """A distribution name as pip compares it: ``"JAX_cuda12.Plugin"`` -> ``jax-cuda12-plugin``."""
    return re.sub(r"[-_.]+", "-", (name or "").lower())


def colab_owns(name: str) -> bool:
    """JAX, jaxlib, their CUDA plugins and the NVIDIA libraries: what the keep branch pins."""
    name = normal_name(name)
    return name in ("jax", "jaxlib") or name.startswith(("jax-cuda", "nvidia-"))


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> ``(0, 10, 2)``; ``"0.7.2.dev1+cu12"`` -> ``(0, 7, 2)``."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def _course_requirements() -> list[str]:
    """The installed course's own requirements (no extras), e.g. ``["jax>=0.10.2", ...]``."""
    try:
        requires = importlib.metadata.requires(COURSE_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [r.split(";")[0].strip() for r in requires if "extra ==" not in r]


def _requirement_name(requirement: str) -> str:
    return normal_name(re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0])


def _floor(requirements: Sequence[str], name: str, default: str) -> str:
    for requirement in requirements:
        if _requirement_name(requirement) == name:
            found = re.search(r">=\s*([\w.]+)", requirement)
            if found:
                return found.group(1)
    return default


def installed_versions() -> dict[str, str]:
    """``{normalised name: version}`` of every installed distribution."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[normal_name(name)] = dist.version
    return found


def plan(installed: Mapping[str, str], course_source: str, *, gpu: bool,
         course_requirements: Sequence[str] | None = None) -> Plan:
    """Decide between keeping Colab's JAX and upgrading to :data:`TESTED_STACK`.

    ``installed``: ``{name: version}`` of what the runtime has; ``course_source``: the pip
    requirement that installs the course (``"jax-gpu-course @ git+https://..."`` or a path);
    ``gpu``: whether the runtime has an NVIDIA GPU (then JAX's CUDA 12 build is installed);
    ``course_requirements``: the course's own requirements (default: read from the installed
    course, which the first cell has just installed without them).

    The one pip call asks for the course's requirements (the tested stack's exact versions in
    their place when upgrading), so pip resolves everything the course needs at once without
    building the course a second time; only when the course's requirements are unknown does it
    ask for the course itself.
    """
    installed = {normal_name(k): v for k, v in installed.items()}
    requirements = list(course_requirements if course_requirements is not None
                        else _course_requirements())
    floor = _floor(requirements, "jax", TESTED_STACK["jax"])
    colab_jax = installed.get("jax")
    if colab_jax is not None and version_tuple(colab_jax) >= version_tuple(floor):
        pins = tuple(sorted(f"{name}=={version}" for name, version in installed.items()
                            if colab_owns(name)))
        return Plan("keep", colab_jax, floor, tuple(requirements) or (course_source,), pins)
    stack = [f"jax[{CUDA_EXTRA}]=={TESTED_STACK['jax']}" if gpu else f"jax=={TESTED_STACK['jax']}"]
    stack += [f"{name}=={version}" for name, version in TESTED_STACK.items() if name != "jax"]
    others = [r for r in requirements if _requirement_name(r) not in TESTED_STACK]
    return Plan("upgrade", colab_jax, floor,
                (*stack, *others) if requirements else (*stack, course_source), ())


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name from ``nvidia-smi`` (None when there is none)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[0] if names else None


def _log(command: list[str], chosen: Plan, seconds: float) -> None:
    path = os.environ.get(LOG_VARIABLE)
    if path:
        entry = {"action": chosen.action, "command": command, "seconds": round(seconds, 1)}
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")


def set_up(course_source: str) -> Plan:
    """Install what the course needs on this Colab runtime; see the module docstring.

    ``course_source`` is the pip requirement of the course (the first cell passes it).
    Raises :class:`RestartNeeded` after an upgrade if JAX was already imported.
    """
    start = time.monotonic()
    jax_was_imported = "jax" in sys.modules
    gpu = gpu_name()
    chosen = plan(installed_versions(), course_source, gpu=gpu is not None)
    with tempfile.TemporaryDirectory(prefix="course-colab-") as tmp:
        pins = os.path.join(tmp, "colab_pins.txt")
        with open(pins, "w", encoding="utf-8") as f:
            f.write("\n".join(chosen.constraints) + "\n")
        command = [sys.executable, "-m", "pip", "install", "--root-user-action=ignore",
                   *chosen.pip_arguments(pins)]
        subprocess.run(command, check=True)
    seconds = time.monotonic() - start
    _log(command, chosen, seconds)
    if chosen.action == "keep":
        print(f"Colab set-up: kept Colab's JAX {chosen.colab_jax} and its CUDA packages (the "
              f"course needs JAX >= {chosen.floor}); installed the course and what else it needs "
              f"in {seconds:.0f} s.")
    else:
        had = f"Colab's JAX {chosen.colab_jax}" if chosen.colab_jax else "This runtime's Python"
        build = f"jax[{CUDA_EXTRA}]" if gpu else "jax (CPU build)"
        stack = ", ".join(f"{n} {v}" for n, v in TESTED_STACK.items() if n != "jaxlib")
        print(f"Colab set-up: {had} is older than the course needs (JAX >= {chosen.floor}), "
              f"so installed the course and its tested stack ({build}; {stack}) in "
              f"{seconds:.0f} s.")
    if gpu:
        print(f"GPU: {gpu}.")
    else:
        print("No GPU in this runtime: choose one with Runtime > Change runtime type > T4 GPU "
              "(then run this cell again). Every lesson also runs on the CPU, more slowly.")
    if chosen.action == "upgrade" and jax_was_imported:
        raise RestartNeeded(
            "This session had already imported the older JAX, which Python cannot replace "
            "while it runs. Restart the session (Runtime > Restart session), then run this "
            "notebook from the top: this cell will then find the new JAX and finish in seconds.")
    return chosen
