"""utils.sizing: the one helper that sizes a lesson's work to the run."""

from __future__ import annotations

import pytest

from utils import sizing


def test_full_on_cpu_returns_the_cpu_value(monkeypatch):
    monkeypatch.delenv(sizing.WORK_VARIABLE, raising=False)
    assert sizing.work_mode() == "cpu"  # the test machines have no accelerator
    assert sizing.sized(3, gpu=10, smoke=1) == 3
    assert sizing.sized((64, 128), gpu=(4096,)) == (64, 128)


def test_smoke_returns_the_smoke_value_or_the_cpu_one(monkeypatch):
    monkeypatch.setenv(sizing.WORK_VARIABLE, "smoke")
    assert sizing.work_mode() == "smoke"
    assert sizing.sized(3, gpu=10, smoke=1) == 1
    assert sizing.sized(3, gpu=10) == 3  # no smoke value: the CPU one


@pytest.mark.parametrize("value", ["full", "FULL", " full ", ""])
def test_full_spellings(monkeypatch, value):
    monkeypatch.setenv(sizing.WORK_VARIABLE, value)
    assert sizing.sized(3, smoke=1) == 3


def test_gpu_value_on_an_accelerator(monkeypatch):
    import jax

    monkeypatch.delenv(sizing.WORK_VARIABLE, raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert sizing.work_mode() == "gpu"
    assert sizing.sized(3, gpu=10, smoke=1) == 10
    assert sizing.sized(3, smoke=1) == 3  # no gpu value: the CPU one
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert sizing.sized(3, gpu=10) == 10


def test_unknown_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(sizing.WORK_VARIABLE, "tiny")
    with pytest.raises(ValueError, match=r"COURSE_WORK='tiny' is not a work mode.*smoke"):
        sizing.sized(3, smoke=1)
