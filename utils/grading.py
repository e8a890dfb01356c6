"""Grade submitted student notebooks: run each one, collect every exercise verdict, write a report.

For instructors (see the README's "Grading" section)::

    course-grade submissions/ --out report/
    course-grade alice.ipynb bob.ipynb --out report/ --cell-timeout 120 --timeout 1800
    python -m utils.grading submissions/ --out report/

Each notebook is copied to a temporary folder and run there, top to bottom, in a fresh
kernel (``nbclient``) that inherits this process's environment (``COURSE_DATA_DIR``
included); the submitted file is never modified. A cell that runs longer than the cell
timeout, or a notebook that runs longer than the overall timeout, is stopped.

Verdicts never come from printed text, which a student could type. Every exercise checker
(:func:`utils.exercises.run_check`) also writes its verdict to a file that only the graded
kernel is told about (:data:`utils.exercises.RECORD_VARIABLE`), so verdicts reached before a
crash are kept; after the last cell, while the kernel is still alive, every checked answer is
checked again in that kernel (:func:`utils.exercises.recheck_all`), and that verdict is the
one graded. The verdict lines the notebook printed (``PASSED name: ...``, see
:data:`utils.exercises.VERDICT_LINE`) are compared with the checked ones, and any difference
(a printed ``PASSED`` no check confirms, say) is listed in the report's ``mismatches``
column. ``REPORT_DIR/report.csv`` and ``REPORT_DIR/report.md`` get one row per notebook and
one column per exercise. The executed copies (and each kernel's own log) are kept in
``REPORT_DIR/executed/`` so you can see what a student saw.

Grading runs the students' code. It gets a fresh kernel, a temporary copy and timeouts,
but no sandbox: no limits on the file system, the network or memory. Code that sets out to
cheat (rewriting the checker module inside the kernel, say) is not stopped; printed text
is. Run it in a throwaway environment (a container, a VM, a Colab runtime).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.exercises import RECORD_VARIABLE, VERDICT_LINE

__all__ = [
    "NotebookResult",
    "find_notebooks",
    "grade_notebook",
    "lesson_of",
    "main",
    "render_csv",
    "render_markdown",
    "verdicts_in_outputs",
    "write_report",
]

#: What a cell of the report says for an exercise the notebook has no verdict for.
NOT_REACHED = "not reached"  # the notebook stopped (error or timeout) before its checker
MISSING = "missing"  # the notebook ran to the end but never called that checker

_LESSON_IN_NAME = re.compile(r"(\d\d_[A-Za-z0-9_]*[A-Za-z0-9])")
_TITLE = re.compile(r"^#\s+(\d\d)\s*[·:.\-–—]\s*(.+?)\s*$", re.MULTILINE)


@dataclass
class NotebookResult:
    """The outcome of grading one notebook.

    ``verdicts`` maps exercise name to ``"PASSED"``, ``"FAILED"`` or ``"NOT ATTEMPTED"``
    as the checks established them (the re-check where it ran, else the last check of that
    name); ``completed`` is True when every cell ran; ``status`` is ``"ok"`` or says where
    and why the run stopped. ``printed`` holds the verdict lines the notebook printed and
    ``mismatches`` every exercise whose printed verdict the checks do not confirm.
    ``stderr`` lists what cells wrote to stderr (``"cell N: first line"``).
    """

    name: str
    lesson: str
    verdicts: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # exercise names in the order checked
    completed: bool = False
    status: str = "ok"
    seconds: float = 0.0
    printed: dict[str, str] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    rechecked: bool = False


def find_notebooks(paths: Iterable[str | os.PathLike[str]],
                   exclude: Path | None = None) -> list[tuple[Path, str]]:
    """``(path, display name)`` of every notebook in ``paths`` (files, or folders searched
    recursively, skipping ``.ipynb_checkpoints`` and anything under ``exclude``). Display
    names are relative to the given folder (or to the common folder of everything given),
    so ``alice/01_gpu_basics.ipynb`` and ``bob/01_gpu_basics.ipynb`` stay apart."""
    found: list[Path] = []
    bases: list[Path] = []
    exclude = exclude.resolve() if exclude is not None else None
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_dir():
            bases.append(path)
            found += sorted(p for p in path.rglob("*.ipynb")
                            if ".ipynb_checkpoints" not in p.parts and p.is_file())
        elif path.is_file():
            bases.append(path.parent)
            found.append(path)
        else:
            raise FileNotFoundError(f"no such notebook or folder: {raw}")
    if exclude is not None:
        found = [p for p in found if exclude not in p.parents]
    unique = list(dict.fromkeys(found))
    if not unique:
        return []
    common = Path(os.path.commonpath(bases))
    return [(p, p.relative_to(common).as_posix()) for p in unique]


def lesson_of(path: Path, nb: dict | None = None) -> str:
    """The lesson a notebook belongs to: ``NN_name`` found in its file name
    (``Copy of 01_gpu_basics.ipynb`` -> ``01_gpu_basics``), else made from its title
    (``# 01 · GPU basics`` -> ``01_gpu_basics``), else the file name without ``.ipynb``."""
    match = _LESSON_IN_NAME.search(path.stem)
    if match:
        return match.group(1)
    for cell in (nb or {}).get("cells", []):
        if cell.get("cell_type") == "markdown":
            title = _TITLE.search(_text(cell.get("source", "")))
            if title:
                slug = re.sub(r"[^a-z0-9]+", "_", title.group(2).lower()).strip("_")
                return f"{title.group(1)}_{slug}" if slug else title.group(1)
            break
    return path.stem


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def verdicts_in_outputs(outputs: Sequence[dict]) -> list[tuple[str, str]]:
    """``(exercise, verdict)`` for every checker line in a cell's outputs, in order.

    Checker lines are printed, so they are read from ``stdout`` streams (joined first, as
    a line may arrive in pieces) and from the plain text of displayed outputs."""
    texts: list[str] = []
    stdout = ""
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            if output.get("name") == "stdout":
                stdout += _text(output.get("text", ""))
            continue
        if stdout:
            texts.append(stdout)
            stdout = ""
        if kind == "display_data":
            texts.append(_text(output.get("data", {}).get("text/plain", "")))
    texts.append(stdout)
    found = []
    for text in texts:
        for line in text.splitlines():
            match = VERDICT_LINE.match(line)
            if match:
                found.append((match.group(2), match.group(1)))
    return found


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def grade_notebook(
    path: Path,
    name: str | None = None,
    *,
    cell_timeout: float = 300,
    timeout: float = 1800,
    kernel_name: str = "python3",
    executed_copy: Path | None = None,
    kernel_log: Path | None = None,
    startup_timeout: float = 120,
) -> NotebookResult:
    """Run a copy of the notebook at ``path`` in a fresh kernel and collect its verdicts.

    ``cell_timeout`` limits one cell; ``timeout`` the time from the kernel being ready to
    the last cell (start-up has its own ``startup_timeout``). Never raises for a bad
    notebook: one that cannot be read, crashes, times out or kills its kernel gets a
    ``status`` saying so, with the verdicts printed before it stopped. ``cell N`` in a
    status counts code cells from the top (1 = the first code cell).

    ``executed_copy``: where to save the notebook with the outputs of this run;
    ``kernel_log``: where to save what the kernel process itself wrote to stdout/stderr
    (low-level warnings, a crash's last words); discarded when None.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    name = name or path.name
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # not JSON, not a notebook, unreadable
        return NotebookResult(name, lesson_of(path), completed=False,
                              status=f"unreadable notebook: {_one_line(error)}")
    result = NotebookResult(name, lesson_of(path, nb))
    for cell in nb.cells:  # a cell never reached must not show the student's old outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="course-grade-") as workdir:
        copy = Path(workdir) / path.name
        shutil.copyfile(path, copy)  # the kernel works beside a copy, never the original
        record = Path(workdir) / f".verdicts-{secrets.token_hex(8)}.jsonl"
        env = {**os.environ, RECORD_VARIABLE: str(record),
               "PYDEVD_DISABLE_FILE_VALIDATION": "1"}  # no debugger note on stderr
        client = NotebookClient(
            nb, timeout=max(1, math.ceil(cell_timeout)), kernel_name=kernel_name,
            startup_timeout=max(1, math.ceil(startup_timeout)), record_timing=False,
            allow_errors=False, interrupt_on_timeout=False,
            resources={"metadata": {"path": workdir}},
        )
        if kernel_log is not None:
            kernel_log.parent.mkdir(parents=True, exist_ok=True)
        log = open(kernel_log, "wb") if kernel_log is not None else None
        try:
            with client.setup_kernel(env=env, stdout=log or subprocess.DEVNULL,
                                     stderr=log or subprocess.DEVNULL):
                kernel_idle = _run_cells(client, nb, result, cell_timeout, timeout)
                if kernel_idle:
                    _recheck(client, nb, result, cell_timeout)
        except Exception as error:  # the kernel would not start, or died between cells
            if result.status == "ok":
                result.status = f"could not run: {_one_line(f'{type(error).__name__}: {error}')}"
            result.completed = False
        finally:
            if log is not None:
                log.close()
        _read_record(record, result)
    _compare_printed(result)
    result.seconds = time.monotonic() - start
    if executed_copy is not None:
        executed_copy.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed_copy)
    return result


def _run_cells(client: Any, nb: Any, result: NotebookResult, cell_timeout: float,
               timeout: float) -> bool:
    """Run every code cell; fill ``result``; True if the kernel is idle afterwards."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    deadline = time.monotonic() + timeout  # kernel start-up not counted
    code_number = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code_number += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result.status = f"timed out before cell {code_number} (notebook limit {timeout:g} s)"
            return True
        per_cell = min(cell_timeout, remaining)
        client.timeout = max(1, math.ceil(per_cell))
        try:
            client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
        except CellTimeoutError:
            limit = "cell limit" if per_cell >= cell_timeout else "notebook limit"
            budget = cell_timeout if per_cell >= cell_timeout else timeout
            result.status = f"timed out in cell {code_number} ({limit} {budget:g} s)"
            return False  # still busy: nothing more can run in it
        except CellExecutionError as error:
            result.status = (f"error in cell {code_number}: "
                             f"{_one_line(f'{error.ename}: {error.evalue}')}")
            return True
        except DeadKernelError:
            result.status = f"kernel died in cell {code_number}"
            return False
        finally:
            _collect(result, cell.get("outputs", []), code_number)
    result.completed = True
    return True


#: Run in the graded kernel after the notebook: every checked answer is checked again.
RECHECK_CODE = "import utils.exercises as _course_exercises\n_ = _course_exercises.recheck_all()"


def _recheck(client: Any, nb: Any, result: NotebookResult, cell_timeout: float) -> None:
    import nbformat

    cell = nbformat.v4.new_code_cell(RECHECK_CODE)
    nb.cells.append(cell)  # nbclient writes the executed cell back at its index
    try:
        client.timeout = max(1, math.ceil(cell_timeout))
        client.execute_cell(cell, len(nb.cells) - 1)
        result.rechecked = True
    except Exception as error:  # the re-check itself failed: the first checks stand
        result.mismatches.append(f"re-check did not finish ({_one_line(error, 80)})")
    finally:
        nb.cells.pop()


def _read_record(record: Path, result: NotebookResult) -> None:
    """Verdicts from the record file: the re-check's where it ran, else the check's."""
    checked: dict[str, str] = {}
    rechecked: dict[str, str] = {}
    try:
        lines = record.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
            phase, exercise, verdict = entry["phase"], entry["exercise"], entry["verdict"]
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line of a kernel that died while writing
        if verdict not in ("PASSED", "FAILED", "NOT ATTEMPTED"):
            continue
        target = rechecked if phase == "recheck" else checked
        if phase != "recheck" and exercise not in result.order:
            result.order.append(exercise)
        target[exercise] = verdict
    for exercise in result.order:
        if result.rechecked and exercise in rechecked:
            if rechecked[exercise] != checked[exercise]:
                result.mismatches.append(f"{exercise}: checked {checked[exercise]}, "
                                         f"re-checked {rechecked[exercise]}")
            result.verdicts[exercise] = rechecked[exercise]
        else:
            if result.rechecked:
                result.mismatches.append(f"{exercise}: recorded but not re-checked")
            result.verdicts[exercise] = checked[exercise]


def _compare_printed(result: NotebookResult) -> None:
    for exercise, printed in result.printed.items():
        checked = result.verdicts.get(exercise)
        if checked is None:
            result.mismatches.append(f"{exercise}: printed {printed}, never checked")
        elif checked != printed:
            result.mismatches.append(f"{exercise}: printed {printed}, checked {checked}")


def _collect(result: NotebookResult, outputs: Sequence[dict], code_number: int) -> None:
    for exercise, verdict in verdicts_in_outputs(outputs):
        result.printed[exercise] = verdict
    for output in outputs:
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            text = _text(output.get("text", "")).strip()
            if text:
                result.stderr.append(f"cell {code_number}: {_one_line(text.splitlines()[0])}")


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]


def _exercise_columns(results: Sequence[NotebookResult],
                      expected: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    """``(lesson, exercise)`` pairs: the expected ones first, then any others seen."""
    columns: dict[tuple[str, str], None] = {}
    graded = {r.lesson for r in results}
    for lesson, names in sorted((expected or {}).items()):
        if lesson not in graded:
            continue
        for exercise in names:
            columns[(lesson, exercise)] = None
    for result in sorted(results, key=lambda r: r.lesson):
        for exercise in result.order:
            columns.setdefault((result.lesson, exercise), None)
    return sorted(columns, key=lambda c: c[0])  # stable: keeps first-seen order per lesson


def _table(results: Sequence[NotebookResult],
           expected: dict[str, list[str]] | None = None) -> _Table:
    columns = _exercise_columns(results, expected)
    several = len({r.lesson for r in results}) > 1
    header = ["notebook", "lesson"]
    header += [f"{lesson}:{ex}" if several else ex for lesson, ex in columns]
    header += ["passed", "total", "status", "mismatches"]
    rows = []
    for result in results:
        mine = [(lesson, ex) for lesson, ex in columns if lesson == result.lesson]
        cells = []
        for lesson, exercise in columns:
            if lesson != result.lesson:
                cells.append("")
            elif exercise in result.verdicts:
                cells.append(result.verdicts[exercise])
            else:
                cells.append(MISSING if result.completed else NOT_REACHED)
        passed = sum(result.verdicts.get(ex) == "PASSED" for _, ex in mine)
        rows.append([result.name, result.lesson, *cells, str(passed), str(len(mine)),
                     result.status, "; ".join(result.mismatches)])
    return _Table(header, rows)


def render_csv(results: Sequence[NotebookResult],
               expected: dict[str, list[str]] | None = None) -> str:
    """The report as CSV: one row per notebook, one column per exercise."""
    table = _table(results, expected)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.header)
    writer.writerows(table.rows)
    return out.getvalue()


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def render_markdown(results: Sequence[NotebookResult],
                    expected: dict[str, list[str]] | None = None, *,
                    cell_timeout: float | None = None, timeout: float | None = None) -> str:
    """The report as a Markdown table, with a line per exercise on how many passed."""
    table = _table(results, expected)
    header = [h for h in table.header if h != "total"]
    lines = ["# Grading report", ""]
    ran = sum(r.completed for r in results)
    lines.append(f"{len(results)} notebook{'s' if len(results) != 1 else ''} graded, "
                 f"{ran} ran to the end.")
    forged = sum(bool(r.mismatches) for r in results)
    if forged:
        lines.append(f"{forged} notebook{'s' if forged != 1 else ''} printed verdicts that the "
                     "checks do not confirm: see `mismatches` (graded by the checks).")
    if cell_timeout is not None and timeout is not None:
        lines.append(f"Limits: {cell_timeout:g} s per cell, {timeout:g} s per notebook.")
    lines += ["", "| " + " | ".join(_md(h) for h in header) + " |",
              "|" + "|".join("---" for _ in header) + "|"]
    passed_at, total_at = table.header.index("passed"), table.header.index("total")
    for row in table.rows:
        cells = [c for i, c in enumerate(row) if i != total_at]
        cells[header.index("passed")] = f"{row[passed_at]}/{row[total_at]}"
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    exercises = table.header[2:passed_at]
    if exercises:
        lines += ["", "Passed, per exercise:", ""]
        for i, exercise in enumerate(exercises, start=2):
            graded = [row[i] for row in table.rows if row[i]]
            count = sum(v == "PASSED" for v in graded)
            lines.append(f"- `{exercise}`: {count} of {len(graded)}")
    lines += ["", "`not reached`: the notebook stopped before that checker ran; `missing`: it "
              "ran to the end without calling it. `cell N` counts code cells from the top. "
              "Verdicts come from the checks themselves, re-run after the last cell; "
              "`mismatches` lists printed verdict lines they do not confirm."]
    return "\n".join(lines) + "\n"


def expected_exercises(references: Iterable[Path]) -> dict[str, list[str]]:
    """Exercise names per lesson from reference notebooks' stored outputs (for example the
    course's ``solutions/``), so an exercise nobody reached still gets its column."""
    import nbformat

    expected: dict[str, list[str]] = {}
    for path, _ in find_notebooks(references):
        nb = nbformat.read(path, as_version=4)
        names = expected.setdefault(lesson_of(path, nb), [])
        for cell in nb.cells:
            for exercise, _verdict in verdicts_in_outputs(cell.get("outputs", [])):
                if exercise not in names:
                    names.append(exercise)
    return expected


def write_report(results: Sequence[NotebookResult], out: Path,
                 expected: dict[str, list[str]] | None = None, *,
                 cell_timeout: float | None = None, timeout: float | None = None) -> None:
    """Write ``out/report.csv`` and ``out/report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.csv").write_text(render_csv(results, expected), encoding="utf-8")
    (out / "report.md").write_text(
        render_markdown(results, expected, cell_timeout=cell_timeout, timeout=timeout),
        encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="course-grade",
        description="Run submitted notebooks and write a report of every exercise verdict. "
                    "This runs the students' code: use a throwaway environment.")
    parser.add_argument("submissions", nargs="+",
                        help="notebooks, or folders searched for *.ipynb")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for report.csv, report.md and executed/")
    parser.add_argument("--cell-timeout", type=float, default=300,
                        help="seconds one cell may run (default 300)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one notebook may run (default 1800)")
    parser.add_argument("--reference", action="append", default=[], type=Path,
                        help="solved notebooks (e.g. solutions/) whose stored verdicts "
                             "list every exercise; may be repeated")
    parser.add_argument("--kernel", default="python3", help="kernel name (default python3)")
    args = parser.parse_args(argv)
    if args.cell_timeout <= 0 or args.timeout <= 0:
        parser.error("timeouts must be positive numbers of seconds")
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError as error:
        parser.error(f"{error.name} is needed to run notebooks: pip install nbclient ipykernel")
    out = args.out.resolve()
    try:  # an earlier run's executed copies (under --out) are not submissions
        notebooks = find_notebooks(args.submissions, exclude=out)
        expected = expected_exercises(args.reference) if args.reference else None
    except FileNotFoundError as error:
        parser.error(str(error))
    if not notebooks:
        parser.error("no notebooks found in " + " ".join(args.submissions))
    results = []
    for path, name in notebooks:
        print(f"grading {name} ...", flush=True)
        result = grade_notebook(path, name, cell_timeout=args.cell_timeout,
                                timeout=args.timeout, kernel_name=args.kernel,
                                executed_copy=out / "executed" / name,
                                kernel_log=out / "executed" / f"{name}.kernel.log")
        passed = sum(v == "PASSED" for v in result.verdicts.values())
        print(f"  {result.status}; {passed} passed; {result.seconds:.1f} s", flush=True)
        if result.mismatches:
            print("  printed verdicts not confirmed by the checks: "
                  + "; ".join(result.mismatches), flush=True)
        results.append(result)
    write_report(results, out, expected, cell_timeout=args.cell_timeout, timeout=args.timeout)
    print(f"wrote {out / 'report.csv'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
