"""Repository-wide pytest set-up: nbval options, the data folder, what each notebook run
proves, and a timing table (per notebook, and per part of the suite).

Runs for the unit tests in tests/ and for the notebooks in solutions/ and course/ alike.

Each lesson is run once per proof:

- ``solutions/``: strict nbval with the lesson's real work (every compared output, every
  ``PASSED`` line);
- ``course/`` (blank exercises): run top to bottom in JupyterLab in Chromium
  (``tests/test_browser.py``) with ``COURSE_WORK=smoke`` (``utils.sizing``). Where that browser
  test cannot run (no Chromium or Playwright), or when a course notebook is named on the
  command line, nbval runs it instead, also with ``COURSE_WORK=smoke``;
- the newest JAX: ``tools/test_newest.sh`` (``make test`` runs it after pytest).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"

collect_ignore_glob = ["**/.ipynb_checkpoints/*", ".venv/*"]

_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_cells: dict[str, int] = defaultdict(int)
_notebook_failed: dict[str, int] = defaultdict(int)
_part_seconds: dict[str, float] = defaultdict(float)
_part_tests: dict[str, int] = defaultdict(int)
_start = time.monotonic()
_USER_WORK = os.environ.get("COURSE_WORK")  # as the user set it (usually unset)
BROWSER_COURSE_TEST = "tests/test_browser.py::test_course_notebook_runs_in_jupyterlab"


def _browser_available() -> bool:
    """Can tests/test_browser.py run here (Chromium, Playwright, JupyterLab)?"""
    chromium = os.environ.get("COURSE_CHROMIUM") or "/usr/bin/chromium"
    return (Path(chromium).exists() or shutil.which("chromium") is not None) and all(
        importlib.util.find_spec(m) is not None for m in ("playwright", "jupyterlab"))


def _part(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    if path.startswith("solutions/") and path.endswith(".ipynb"):
        return "solutions: strict nbval"
    if path.startswith("course/") and path.endswith(".ipynb"):
        return "course: blank run (nbval)"
    if path == "tests/test_browser.py":
        return "course: blank run (browser) + browser tests"
    if path == "tests/test_site.py":
        return "site: build + checks in the browser"
    return "unit tests"


def pytest_configure(config):
    # Sanitize timings, addresses and device names (file resolved from here, not the cwd).
    if getattr(config.option, "nbval_sanitize_with", None) is None and hasattr(
        config.option, "nbval_sanitize_with"
    ):
        config.option.nbval_sanitize_with = str(ROOT / "tests" / "nbval_sanitize.cfg")
    # Tests never download: use the verified copies beside the repository when present.
    if not os.environ.get("COURSE_DATA_DIR") and SHARED_DATA.is_dir():
        os.environ["COURSE_DATA_DIR"] = str(SHARED_DATA)


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_itemcollected(item):
    """A blank course/ notebook is the browser's work (where the browser cannot run, nbval
    does it in its place): it carries the ``browser`` marker, so ``-m browser`` selects it
    and ``-m "not browser"`` leaves it out."""
    path = Path(str(item.path)).resolve()
    if path.suffix == ".ipynb" and path.parent == ROOT / "course":
        item.add_marker(pytest.mark.browser)


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected what they will
def pytest_collection_modifyitems(config, items):
    """Blank course/ notebooks run in the browser when it can run; nbval runs them otherwise
    (or when a course notebook file is named on the command line; naming the course/ folder
    beside the browser test leaves them to the browser)."""
    if not any(item.nodeid.startswith(BROWSER_COURSE_TEST) for item in items):
        return
    if not _browser_available():
        return
    named = [Path(a.split("::")[0]).resolve() for a in config.invocation_params.args]
    course = ROOT / "course"

    def run_by_nbval(item) -> bool:
        path = Path(str(item.path)).resolve()
        if path.suffix != ".ipynb" or path.parent != course:
            return True  # not a course notebook
        return any(path == n for n in named)

    keep = [item for item in items if run_by_nbval(item)]
    dropped = [item for item in items if not run_by_nbval(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _restore_work() -> None:
    if _USER_WORK is None:
        os.environ.pop("COURSE_WORK", None)
    else:
        os.environ["COURSE_WORK"] = _USER_WORK


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Blank course/ notebooks do the smallest work: a notebook's kernel starts (and takes
    this process's environment) when its first cell is set up."""
    if item.nodeid.startswith("course/") and item.nodeid.split("::", 1)[0].endswith(".ipynb"):
        os.environ["COURSE_WORK"] = "smoke"
    else:
        _restore_work()


def pytest_runtest_teardown(item):
    _restore_work()


def pytest_runtest_logreport(report):
    _part_seconds[_part(report.nodeid)] += report.duration
    if report.when == "call":
        _part_tests[_part(report.nodeid)] += 1
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    _notebook_seconds[path] += report.duration
    if report.when == "call":
        _notebook_cells[path] += 1
    if report.failed:
        _notebook_failed[path] += 1


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if _part_seconds:
        tr.section("time per part")
        for part in sorted(_part_seconds):
            tr.write_line(f"{part:<45}  {_part_tests[part]:>5} tests  "
                          f"{_part_seconds[part]:>8.1f} s")
    if not _notebook_seconds:
        return
    tr.section("notebook run times")
    width = max(len(p) for p in _notebook_seconds)
    tr.write_line(f"{'notebook':<{width}}  {'cells':>5}  {'failed':>6}  {'seconds':>8}")
    for path in sorted(_notebook_seconds):
        tr.write_line(f"{path:<{width}}  {_notebook_cells[path]:>5}  "
                      f"{_notebook_failed[path]:>6}  {_notebook_seconds[path]:>8.1f}")
    total = sum(_notebook_seconds.values())
    tr.write_line(f"{'all notebooks':<{width}}  {sum(_notebook_cells.values()):>5}  "
                  f"{sum(_notebook_failed.values()):>6}  {total:>8.1f}")
    tr.write_line(f"whole session: {time.monotonic() - _start:.1f} s")
