"""tools/run_notebooks.py, and the launchers of the newest-JAX and Colab legs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from utils.grading import NotebookResult

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)


def _result(**kw) -> NotebookResult:
    base = dict(name="05_x.ipynb", lesson="05_x", verdicts={"a": "PASSED", "b": "PASSED"},
                order=["a", "b"], completed=True)
    return NotebookResult(**{**base, **kw})


def test_a_clean_run_has_no_problems():
    assert run_notebooks.problems_of(_result(), ["a", "b"], "PASSED", []) == []


@pytest.mark.parametrize(("change", "problem"), [
    (dict(completed=False, status="error in cell 3: ValueError: x"), "error in cell 3"),
    (dict(stderr=["cell 2: DeprecationWarning: old"]), "stderr in cell 2: Deprecation"),
    (dict(verdicts={"a": "PASSED", "b": "FAILED"}), "b: FAILED, expected PASSED"),
    (dict(verdicts={"a": "PASSED"}), "b: not checked, expected PASSED"),
    (dict(verdicts={"a": "PASSED", "b": "PASSED", "c": "PASSED"}),
     "checked but not in the reference"),
    (dict(mismatches=["a: printed PASSED, checked FAILED"]), "mismatch: a: printed"),
])
def test_each_kind_of_problem_is_reported(change, problem):
    problems = run_notebooks.problems_of(_result(**change), ["a", "b"], "PASSED", [])
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_kernel_warnings_but_not_the_runners_own_note(tmp_path):
    log = tmp_path / "k.log"
    log.write_text(
        "[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All ...\n"
        "W1201 12:00:00.000 xla_bridge.py:900] An NVIDIA GPU may be present but ...\n"
        "/x/y.py:3: DeprecationWarning: jax.foo is deprecated\n"
        "an ordinary line\n")
    assert run_notebooks.kernel_warnings(log) == [
        "W1201 12:00:00.000 xla_bridge.py:900] An NVIDIA GPU may be present but ...",
        "/x/y.py:3: DeprecationWarning: jax.foo is deprecated"]
    assert run_notebooks.kernel_warnings(tmp_path / "absent.log") == []


@pytest.mark.slow
def test_runner_fails_a_notebook_that_warns_and_passes_a_clean_one(tmp_path):
    code = nbformat.v4.new_code_cell
    clean = nbformat.v4.new_notebook(cells=[code("x = 1 + 1")])
    warns = nbformat.v4.new_notebook(cells=[code(
        "import warnings\nwarnings.warn('something is deprecated', DeprecationWarning)")])
    for name, nb in (("clean", clean), ("warns", warns)):
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    # Notebooks without a solutions/ twin have no reference list: that alone fails them,
    # so point the runner at stand-ins named like a lesson with no exercises.
    ref = ROOT / "solutions"
    lesson = sorted(ref.glob("[0-9][0-9]_*.ipynb"))[0].name
    run = [sys.executable, str(ROOT / "tools" / "run_notebooks.py")]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "clean.ipynb").rename(tmp_path / "a" / lesson)
    (tmp_path / "warns.ipynb").rename(tmp_path / "b" / lesson)
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    warned = subprocess.run([*run, str(tmp_path / "b" / lesson)], capture_output=True,
                            text=True, timeout=180, env=env)
    assert warned.returncode == 1
    assert "stderr in cell 1" in warned.stdout and "notebooks: 0 passed, 1 failed" in warned.stdout
    clean_run = subprocess.run([*run, "--expect", "NOT ATTEMPTED", str(tmp_path / "a" / lesson)],
                               capture_output=True, text=True, timeout=180, env=env)
    # The stand-in checks nothing, so every exercise of the real lesson is "not checked".
    assert clean_run.returncode == 1 and "not checked, expected NOT ATTEMPTED" in clean_run.stdout
    assert "stderr" not in clean_run.stdout


def test_newest_leg_is_skipped_in_one_line_without_python_312(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NEWEST_PYTHON": "/nonexistent"}
    done = subprocess.run(["bash", str(ROOT / "tools" / "test_newest.sh")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "newest-JAX leg skipped: no Python >= 3.12 here (set NEWEST_PYTHON=/path/to/python3.12)"]


def test_colab_leg_is_skipped_in_one_line_without_python_313_or_312(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLAB_PYTHON": "/nonexistent",
           "COLAB_VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", str(ROOT / "tools" / "test_colab.sh")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "colab leg skipped: no Python 3.13 or 3.12 here (set COLAB_PYTHON=/path/to/python3.13)"]


def test_colab_leg_run_without_its_venv_says_how_to_make_it(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLAB_VENV": str(tmp_path / "none")}
    done = subprocess.run(["bash", str(ROOT / "tools" / "test_colab.sh"), "run"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"colab leg skipped: no replica venv ({tmp_path / 'none'}); "
        "run: bash tools/test_colab.sh install"]
