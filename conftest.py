"""Repository-wide pytest set-up: nbval options, the data folder, a per-notebook timing table.

Runs for the unit tests in tests/ and for the notebooks in solutions/ and course/ alike.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"

collect_ignore_glob = ["**/.ipynb_checkpoints/*", ".venv/*"]

_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_cells: dict[str, int] = defaultdict(int)
_notebook_failed: dict[str, int] = defaultdict(int)
_start = time.monotonic()


def pytest_configure(config):
    # Sanitize timings, addresses and device names (file resolved from here, not the cwd).
    if getattr(config.option, "nbval_sanitize_with", None) is None and hasattr(
        config.option, "nbval_sanitize_with"
    ):
        config.option.nbval_sanitize_with = str(ROOT / "tests" / "nbval_sanitize.cfg")
    # Tests never download: use the verified copies beside the repository when present.
    if not os.environ.get("COURSE_DATA_DIR") and SHARED_DATA.is_dir():
        os.environ["COURSE_DATA_DIR"] = str(SHARED_DATA)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    _notebook_seconds[path] += report.duration
    if report.when == "call":
        _notebook_cells[path] += 1
    if report.failed:
        _notebook_failed[path] += 1


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    tr = terminalreporter
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
