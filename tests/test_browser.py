"""JupyterLab end to end: every student notebook run from the Run menu in a real Chromium.

For each notebook in course/ (exercises blank), a temporary copy is opened in JupyterLab
started as ``make lab`` starts it, Run > Run All Cells is clicked, and once the kernel is idle
the page must show: every cell run, no error except the expected ones (cells tagged
``raises-exception``, and a blank exercise's NotImplementedError), and one checker line per
exercise, all ``NOT ATTEMPTED``. The exercises expected are the checker lines stored in the
solved notebook. This is the blank run of every lesson: the server runs with
``COURSE_WORK=smoke`` (``utils.sizing``), as it proves only that the student's notebook runs
top to bottom; strict nbval of ``solutions/`` proves the real work and every ``PASSED``.

Solutions run in the browser too on request (``COURSE_BROWSER_SOLUTIONS=1``): all ``PASSED``.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` package
(never ``playwright install``); skipped with the reason otherwise. Options (environment):

* ``COURSE_SCREENSHOTS=1``: keep a screenshot of every notebook after its run in
  test-output/browser/ (on failure one is always saved, in the test's tmp folder).
* ``COURSE_BROWSER_CELL_TIMEOUT`` (default 300 s): give up when no cell finishes for this long.
* ``COURSE_BROWSER_TIMEOUT`` (default 900 s): give up on a notebook after this long.
* ``COURSE_BROWSER_SOLUTIONS=1``: also run every solutions/ notebook (full work, all PASSED).

The unit tests at the end check the verdict logic without a browser.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from pathlib import Path

import browser_helpers as bh
import nbformat
import pytest
from browser_helpers import CellView

ROOT = bh.ROOT
SCREENSHOT_DIR = ROOT / "test-output" / "browser"
CELL_TIMEOUT = float(os.environ.get("COURSE_BROWSER_CELL_TIMEOUT", "300"))
NOTEBOOK_TIMEOUT = float(os.environ.get("COURSE_BROWSER_TIMEOUT", "900"))
KEEP_SCREENSHOTS = os.environ.get("COURSE_SCREENSHOTS", "") not in ("", "0")
RUN_SOLUTIONS = os.environ.get("COURSE_BROWSER_SOLUTIONS", "") not in ("", "0")
#: What the server's kernels get per kind: blank runs do the smallest work (utils.sizing).
KERNEL_ENV = {"course": {"COURSE_WORK": "smoke"}}
_workspaces = itertools.count()


def _lessons(folder: str) -> list:
    found = sorted(p.name for p in (ROOT / folder).glob("[0-9][0-9]_*.ipynb"))
    skip = pytest.mark.skip(reason=f"no notebooks in {folder}/")
    return found or [pytest.param(None, marks=skip)]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def chromium():
    """Playwright's Chromium driver and Debian's Chromium; skip cleanly when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        pytest.skip(f"the playwright package is not installed ({error}); "
                    "pip install playwright (no 'playwright install' needed)")
    executable = bh.chromium_path()
    if executable is None:
        pytest.skip("Chromium not found (apt-get install chromium, or set COURSE_CHROMIUM)")
    with sync_playwright() as playwright:
        yield playwright, executable


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``lab(kind)``: a JupyterLab server per kind ("course", "solutions", "synthetic"), each
    rooted at a temporary copy, started on first use and always stopped at the end."""
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install jupyterlab)")
    servers: dict[str, bh.LabServer] = {}
    with contextlib.ExitStack() as stack:
        def get(kind: str) -> bh.LabServer:
            if kind not in servers:
                base = tmp_path_factory.mktemp(f"lab-{kind}")
                notebooks = base / "notebooks"
                if kind in ("course", "solutions"):
                    bh.copy_for_lab(sorted((ROOT / kind).glob("[0-9][0-9]_*.ipynb")), notebooks)
                notebooks.mkdir(exist_ok=True)
                servers[kind] = stack.enter_context(
                    bh.lab_server(notebooks, base / "state", extra_env=KERNEL_ENV.get(kind)))
            return servers[kind]

        yield get


@pytest.fixture
def page(chromium, tmp_path):
    """A fresh browser (new user-data folder) and page for one notebook."""
    playwright, executable = chromium
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=executable, headless=True,
        args=bh.CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
    try:
        yield context.pages[0] if context.pages else context.new_page()
    finally:
        context.close()


def expected_from_solution(name: str) -> list[str]:
    """The exercise names in solutions/NAME's stored checker lines."""
    solution = json.loads((ROOT / "solutions" / name).read_text())
    executed = any(cell.get("outputs") for cell in solution.get("cells", []))
    assert executed, (f"solutions/{name} has no stored outputs, so the exercises it checks "
                      "are unknown: run tools/execute_solutions.py on it")
    return bh.expected_verdicts(solution)


def run_and_judge(page, server: bh.LabServer, name: str, mode: str, expected: list[str],
                  tmp_path: Path, capsys, label: str) -> tuple[bh.LabRun, list[str]]:
    """Run one notebook in the page, judge it, report the time, save screenshots."""
    notebook = json.loads((server.root_dir / name).read_text())
    try:
        run = bh.run_in_lab(page, server, name, workspace=f"w{next(_workspaces)}",
                            cell_timeout=CELL_TIMEOUT, notebook_timeout=NOTEBOOK_TIMEOUT)
    except Exception:
        shot = bh.screenshot(page, tmp_path / f"{label.replace('/', '-')}.png")
        with capsys.disabled():
            print(f"\n[browser] {label}: failed before the run finished; screenshot {shot}")
        raise
    finally:
        with contextlib.suppress(Exception):
            server.shutdown_kernels()
    problems = bh.problems_in_run(run.cells, notebook, mode, expected)
    if run.timed_out:
        problems.insert(0, run.timed_out)
    lines = bh.verdict_lines(run.cells)
    shots = []
    stem = label.replace("/", "-").removesuffix(".ipynb")
    if problems:
        where = bh.first_problem_cell(run.cells, notebook)
        shots.append(bh.screenshot(page, tmp_path / f"{stem}.png", where))
    if KEEP_SCREENSHOTS:
        shots.append(bh.screenshot(page, SCREENSHOT_DIR / f"{stem}.png"))
    with capsys.disabled():
        print(f"\n[browser] {label}: Run All took {run.seconds:.1f} s, "
              f"{len(lines)} checker line(s), {len(problems)} problem(s)"
              + "".join(f"; screenshot {s}" for s in shots))
    return run, problems


# --------------------------------------------------------------------------- the lessons

@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("name", _lessons("course"))
def test_course_notebook_runs_in_jupyterlab(name, lab, page, tmp_path, capsys):
    assert (ROOT / "solutions" / name).exists(), f"course/{name} has no solutions/{name}"
    expected = expected_from_solution(name)
    _, problems = run_and_judge(page, lab("course"), name, "course", expected, tmp_path,
                                capsys, f"course/{name}")
    assert not problems, f"course/{name} in JupyterLab:\n- " + "\n- ".join(problems)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not RUN_SOLUTIONS, reason="strict nbval proves the solutions; set "
                    "COURSE_BROWSER_SOLUTIONS=1 to run them in the browser too")
@pytest.mark.parametrize("name", _lessons("solutions"))
def test_solution_notebook_runs_in_jupyterlab(name, lab, page, tmp_path, capsys):
    expected = expected_from_solution(name)
    _, problems = run_and_judge(page, lab("solutions"), name, "solutions", expected, tmp_path,
                                capsys, f"solutions/{name}")
    assert not problems, f"solutions/{name} in JupyterLab:\n- " + "\n- ".join(problems)


# --------------------------------------------------------------------------- the check itself

def synthetic_notebook(unexpected_error: bool) -> nbformat.NotebookNode:
    """A lesson-like notebook: a real checker (PASSED), an expected error (tagged), and,
    if asked, an unexpected ValueError before the last cell. ``%xmode minimal`` is on, as in
    the lessons, so the errors carry no "Traceback" line."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    expected_error = code('int("seven")  # expected: ValueError')
    expected_error.metadata["tags"] = ["raises-exception"]
    cells = [
        md("# 99 · Synthetic lesson"),
        code("%xmode minimal\nfrom utils.exercises import run_check"),
        code('double = run_check("double", lambda x: 2 * x, lambda x: 2 * x,\n'
             '                   lambda f: "ok" if f(2) == 4 else None, "Multiply by 2.")'),
        expected_error,
        code('print("after the expected error")'),
    ]
    if unexpected_error:
        cells.append(code('raise ValueError("an unexpected error")'))
    cells.append(code('print("last cell")'))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    return nb


@pytest.mark.browser
def test_check_passes_a_good_notebook_and_run_all_goes_past_tagged_errors(
        lab, page, tmp_path, capsys):
    server = lab("synthetic")
    nbformat.write(synthetic_notebook(unexpected_error=False), server.root_dir / "99_good.ipynb")
    run, problems = run_and_judge(page, server, "99_good.ipynb", "solutions", ["double"],
                                  tmp_path, capsys, "synthetic/99_good.ipynb")
    assert problems == []
    assert bh.verdict_lines(run.cells) == [("double", "PASSED")]
    shown = [text for cell in run.cells for _, text in cell.outputs]
    assert "last cell\n" in shown  # Run All went past the tagged error
    tagged_error = run.cells[3].outputs
    assert [bh.error_in(o) for o in tagged_error] == ["ValueError: invalid literal for int() "
                                                     "with base 10: 'seven'"]


@pytest.mark.browser
def test_check_fails_a_notebook_with_an_unexpected_error(lab, page, tmp_path, capsys):
    server = lab("synthetic")
    nbformat.write(synthetic_notebook(unexpected_error=True), server.root_dir / "99_bad.ipynb")
    run, problems = run_and_judge(page, server, "99_bad.ipynb", "solutions", ["double"],
                                  tmp_path, capsys, "synthetic/99_bad.ipynb")
    assert problems == [
        "code cell 5: unexpected error ValueError: an unexpected error",
        "code cell 6 did not run (prompt [ ]:)",  # JupyterLab's Run All stops at the error
    ]
    # The same run judged as a blank course notebook fails too (PASSED is not expected there).
    course_problems = bh.problems_in_run(run.cells, json.loads(
        (server.root_dir / "99_bad.ipynb").read_text()), "course", ["double"])
    assert "exercise double: PASSED, expected NOT ATTEMPTED" in course_problems


@pytest.mark.browser
def test_a_hung_cell_is_given_up_on(lab, page):
    server = lab("synthetic")
    cells = [nbformat.v4.new_code_cell('print("first")'),
             nbformat.v4.new_code_cell("import time\ntime.sleep(300)"),
             nbformat.v4.new_code_cell('print("never")')]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, server.root_dir / "99_hung.ipynb")
    try:
        run = bh.run_in_lab(page, server, "99_hung.ipynb", workspace="hung", cell_timeout=5,
                            notebook_timeout=120)
    finally:
        server.shutdown_kernels()
    assert run.timed_out == "code cell 2 still running after 5 s with no cell finishing"
    assert [c.prompt for c in run.cells] == ["[1]:", "[*]:", "[*]:"]
    assert run.seconds < 90
    assert bh.problems_in_run(run.cells, nb, "solutions", [])[:1] == [
        "code cell 2 is still running"]


@pytest.mark.browser
def test_lab_server_is_stopped_when_the_test_fails(tmp_path):
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed")
    (tmp_path / "root").mkdir()
    with pytest.raises(RuntimeError, match="a failing test"), \
            bh.lab_server(tmp_path / "root", tmp_path / "state") as server:
        assert server.api("GET", "/api/status")["kernels"] == 0
        raise RuntimeError("a failing test")
    assert server.process.poll() is not None
    assert _alive_in_group(server.process.pid) == []  # no server, no kernel left


# --------------------------------------------------------------------------- no browser needed

STDERR, STDOUT = bh.STDERR_MIME, bh.STDOUT_MIME


def _nb(*cells: tuple[str, str, list[str]]) -> dict:
    """Notebook JSON from ``(cell_type, source, tags)``."""
    return {"cells": [{"cell_type": kind, "source": source, "metadata": {"tags": tags}}
                      for kind, source, tags in cells]}


def test_error_detection_matches_what_jupyterlab_renders():
    assert bh.error_in((STDERR, "ValueError: boom\n")) == "ValueError: boom"  # %xmode minimal
    full = ("---------\nKeyError          Traceback (most recent call last)\n"
            "Cell In[3], line 1\n----> 1 {}['x']\n\nKeyError: 'x'")
    assert bh.error_in((STDERR, full)) == "KeyError: 'x'"
    assert bh.error_in((STDERR, "jax.errors.TracerBoolConversionError: Attempted boolean"))
    assert bh.error_in((STDERR, "KeyboardInterrupt")) == "KeyboardInterrupt"
    assert bh.error_in((STDERR, "/x/y.py:3: UserWarning: careful\n  warn()\n")) is None
    assert bh.error_in((STDERR, "Matplotlib is building the font cache; this may take a moment."))\
        is None
    assert bh.error_in((STDOUT, "ValueError: printed, not raised")) is None


def test_problems_in_run_course_and_solutions_modes():
    nb = _nb(("markdown", "# 01 · X", []), ("code", "import x", []),
             ("code", "f = check.f(f)", []), ("code", "1/0", ["raises-exception"]),
             ("code", "g()", []), ("code", "", []))
    blank = [CellView("markdown"), CellView("code", "[1]:"),
             CellView("code", "[2]:", [(STDOUT, "NOT ATTEMPTED f: not written yet.\n")]),
             CellView("code", "[3]:", [(STDERR, "ZeroDivisionError: division by zero")]),
             CellView("code", "[4]:", [(STDERR, "NotImplementedError: write it")]),
             CellView("code", "[ ]:")]
    # Blank course notebook: tagged error and a blank exercise's NotImplementedError are fine.
    assert bh.problems_in_run(blank, nb, "course", ["f"]) == []
    # The same page is wrong for a solved notebook.
    assert bh.problems_in_run(blank, nb, "solutions", ["f"]) == [
        "code cell 4: unexpected error NotImplementedError: write it",
        "exercise f: NOT ATTEMPTED, expected PASSED"]
    # A missing checker line, a cell still running, one never run.
    stuck = [*blank[:2], CellView("code", "[2]:"), blank[3], CellView("code", "[*]:"),
             CellView("code", "[ ]:")]
    assert bh.problems_in_run(stuck, nb, "course", ["f"]) == [
        "code cell 4 is still running",
        "0 checker lines shown, 1 expected; missing: ['f']"]
    unrun = [*blank[:4], CellView("code", "[ ]:"), blank[5]]
    assert bh.problems_in_run(unrun, nb, "course", ["f"]) == [
        "code cell 4 did not run (prompt [ ]:)"]
    assert bh.first_problem_cell(unrun, nb) == 4
    # A checker line too many, and a page that does not match the notebook.
    doubled = [*blank[:2], CellView("code", "[2]:", [(STDOUT, "NOT ATTEMPTED f: a\n"
                                                               "NOT ATTEMPTED f: b\n")]),
               *blank[3:]]
    assert bh.problems_in_run(doubled, nb, "course", ["f"]) == [
        "2 checker lines shown, 1 expected; unexpected: ['f']"]
    assert bh.problems_in_run(blank[:-1], nb, "course", ["f"])[0] == (
        "the page shows 5 cells but the notebook has 6")
    with pytest.raises(ValueError, match="mode"):
        bh.problems_in_run(blank, nb, "student", ["f"])


def test_expected_verdicts_come_from_stored_outputs():
    solution = {"cells": [
        {"cell_type": "code", "outputs": [
            {"output_type": "stream", "name": "stdout",
             "text": ["PASSED relu: matches\n", "PASSED gelu: matches\n"]},
            {"output_type": "stream", "name": "stderr", "text": "FAILED fake: no\n"}]},
        {"cell_type": "markdown", "source": "PASSED prose: not an output"},
        {"cell_type": "code", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "x\nPASSED softmax: ok\n"}]}]}
    assert bh.expected_verdicts(solution) == ["relu", "gelu", "softmax"]


def test_copies_for_lab_are_cleared_and_originals_untouched(tmp_path):
    original = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "print(1)", execution_count=3, outputs=[nbformat.v4.new_output(
            "stream", name="stdout", text="1\n")])])
    source = tmp_path / "src" / "01_x.ipynb"
    source.parent.mkdir()
    nbformat.write(original, source)
    before = source.read_bytes()
    (copy,) = bh.copy_for_lab([source], tmp_path / "dest")
    cell = nbformat.read(copy, as_version=4).cells[0]
    assert (cell.outputs, cell.execution_count, cell.source) == ([], None, "print(1)")
    assert source.read_bytes() == before


def test_stop_kills_the_whole_process_group(tmp_path):
    import subprocess
    import sys

    child = tmp_path / "child.pid"
    script = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *args: None)\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(child)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 20
    while not child.exists() or not child.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    start = time.monotonic()
    bh._stop(process, grace=1)  # ignores SIGTERM: killed after the grace period, child included
    assert process.poll() is not None
    assert _alive_in_group(process.pid) == []
    assert time.monotonic() - start < 15


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies do not count)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc")
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(stat.parent.name))
    return alive
