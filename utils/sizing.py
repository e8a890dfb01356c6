"""How much work a lesson does here: the course's one sizing helper (introduced in lesson 01).

A lesson that trains or measures for long sizes its work with :func:`sized`::

    epochs = sized(cpu=3, gpu=10, smoke=1)

- on a CPU (a laptop, CI) it returns ``cpu``: the stored outputs of ``solutions/`` come from
  this run, and the prose must be true of it;
- on a GPU or TPU it returns ``gpu`` (default: ``cpu``): more epochs, bigger sizes;
- when the environment variable ``COURSE_WORK=smoke`` is set it returns ``smoke`` (default:
  ``cpu``), whatever the device. Runs that only prove a notebook works top to bottom with no
  error and no warning (a blank student notebook, the newest-JAX CI leg) set it; strict nbval
  of the pinned solutions never does.

Every number a lesson prints is still measured in the run; ``sized`` only chooses how much
work there is to measure.
"""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["WORK_VARIABLE", "sized", "work_mode"]

#: The environment variable read by :func:`work_mode`.
WORK_VARIABLE = "COURSE_WORK"
_MODES = ("full", "smoke")

T = TypeVar("T")


def work_mode() -> str:
    """``"smoke"`` when ``COURSE_WORK=smoke``, else the backend's kind: ``"gpu"`` or ``"cpu"``.

    A TPU counts as ``"gpu"`` (an accelerator). Starts JAX unless the mode is ``"smoke"``.
    """
    value = os.environ.get(WORK_VARIABLE, "").strip().lower() or "full"
    if value not in _MODES:
        raise ValueError(
            f"{WORK_VARIABLE}={os.environ[WORK_VARIABLE]!r} is not a work mode: expected one of "
            f"{', '.join(_MODES)}. Unset it for a lesson's real work, or set "
            f"{WORK_VARIABLE}=smoke for the smallest run that still executes every cell."
        )
    if value == "smoke":
        return "smoke"
    import jax

    return "cpu" if jax.default_backend() == "cpu" else "gpu"


def sized(cpu: T, *, gpu: T | None = None, smoke: T | None = None) -> T:
    """The value for this run: ``cpu`` on a CPU, ``gpu`` on an accelerator, ``smoke`` when asked.

    ``gpu`` and ``smoke`` default to ``cpu``. The values can be anything (an epoch count, a
    tuple of sizes); they are returned unchanged.
    """
    mode = work_mode()
    if mode == "smoke" and smoke is not None:
        return smoke
    if mode == "gpu" and gpu is not None:
        return gpu
    return cpu
