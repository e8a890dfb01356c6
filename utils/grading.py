"""Grade submitted student notebooks: run each one, collect every exercise verdict, write a report.

For instructors (see the README's "Grading" section)::

    course-grade submissions/ --out report/
    course-grade alice.ipynb bob.ipynb --out report/ --cell-timeout 120 --timeout 1800
    python -m utils.grading submissions/ --out report/

Each notebook is copied to a work folder of its own and run there, top to bottom, in a fresh
kernel (``nbclient``); the submitted file is never modified. A cell that runs longer than the
cell timeout, or a notebook that runs longer than the overall timeout, is stopped.

The command grades each notebook in a sandbox (:mod:`utils.sandbox`, ``--sandbox``):
bubblewrap where it works (no view of your files or the other submissions, no network,
limits on memory, processes, CPU time and output), else resource limits only; the report
says which. :func:`grade_notebook` called from Python runs the kernel as before, with this
process's environment and privileges, unless its ``sandbox`` argument asks otherwise.

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

The sandbox protects the machine and the other students, not the grade: code that sets out
to cheat inside its own kernel (rewriting the checker module, say) is not stopped; printed
text is.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils import sandbox as sandboxes
from utils.exercises import RECORD_VARIABLE, VERDICT_LINE
from utils.sandbox import Limits, MiB

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
    ``stderr`` lists what cells wrote to stderr (``"cell N: first line"``); ``sandbox``
    the kind of sandbox that ran it (:data:`utils.sandbox.KINDS`).
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
    sandbox: str = "off"  # the kind that ran it: "bwrap", "limits" or "off"


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
    sandbox: str = "off",
    limits: Limits | None = None,
    hide: Sequence[Path] = (),
    pass_env: Sequence[str] = (),
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

    ``sandbox`` (:data:`utils.sandbox.MODES`): ``"off"`` (the default here; ``course-grade``
    uses ``"auto"``) runs the kernel with this process's environment and privileges;
    ``"auto"``, ``"require"`` and ``"limits"`` run it in a sandbox (:mod:`utils.sandbox`)
    with ``limits`` (default :class:`utils.sandbox.Limits`), hiding the folders in ``hide``
    and passing on only allow-listed environment variables and those named in
    ``pass_env``. ``result.sandbox`` says which kind ran it. ``"require"`` raises
    :class:`utils.sandbox.SandboxUnavailable` where bubblewrap cannot run.
    """
    import nbformat

    path = Path(path)
    name = name or path.name
    kind = sandboxes.choose(sandbox)
    limits = limits or Limits()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # not JSON, not a notebook, unreadable
        return NotebookResult(name, lesson_of(path), completed=False,
                              status=f"unreadable notebook: {_one_line(error)}", sandbox=kind)
    result = NotebookResult(name, lesson_of(path, nb), sandbox=kind)
    for cell in nb.cells:  # a cell never reached must not show the student's old outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.monotonic()
    # A notebook may leave files its grader cannot delete (or, without bubblewrap, a process
    # still writing them): that must not stop the grading.
    with tempfile.TemporaryDirectory(prefix="course-grade-", ignore_cleanup_errors=True) as workdir:
        copy = Path(workdir) / path.name
        shutil.copyfile(path, copy)  # the kernel works beside a copy, never the original
        record = Path(workdir) / f".verdicts-{secrets.token_hex(8)}.jsonl"
        box = None
        if kind != "off":
            box = sandboxes.Sandbox(kind, Path(workdir), limits, hide=hide, pass_env=pass_env,
                                    cpu_seconds=limits.cpu_for(startup_timeout + timeout
                                                               + cell_timeout))
            box.prepare()
        base_env = box.environment(os.environ) if box else dict(os.environ)
        env = {**base_env, RECORD_VARIABLE: str(record),
               "PYDEVD_DISABLE_FILE_VALIDATION": "1"}  # no debugger note on stderr
        client = _client_class()(
            nb, timeout=max(1, math.ceil(cell_timeout)), kernel_name=kernel_name,
            startup_timeout=max(1, math.ceil(startup_timeout)), record_timing=False,
            allow_errors=False, interrupt_on_timeout=False,
            resources={"metadata": {"path": workdir}},
            **({"kernel_manager_class": box.kernel_manager_class()} if box else {}),
        )
        client.output_limit = limits.output if box else None
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
            if box is not None:
                box.cleanup()
        _read_record(record, result)
    if box is not None and kernel_log is not None:
        _cap_file(kernel_log, KERNEL_LOG_LIMIT)
    _compare_printed(result)
    result.seconds = time.monotonic() - start
    if executed_copy is not None:
        executed_copy.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed_copy)
    return result


#: The most of a sandboxed kernel's own log that is kept (the start, then a note).
KERNEL_LOG_LIMIT = 1 << 20


def _cap_file(path: Path, limit: int) -> None:
    """Cut the file at ``path`` to ``limit`` bytes, saying so at its end."""
    try:
        if path.stat().st_size <= limit:
            return
        with open(path, "r+b") as handle:
            handle.truncate(limit)
            handle.seek(limit)
            handle.write(f"\n[course-grade: log cut at {limit} bytes]\n".encode())
    except OSError:
        pass


#: The note that replaces a cell's output beyond the limit (``{limit}`` in MiB).
OUTPUT_CUT = "[course-grade: output cut: this cell printed more than {limit:g} MiB; stopped]\n"


def _output_size(msg: dict) -> int:
    """Characters of output a kernel message carries (text, data, traceback)."""
    content = msg.get("content") or {}
    size = len(content.get("text") or "")
    for value in (content.get("data") or {}).values():
        size += len(value) if isinstance(value, str) else len(json.dumps(value))
    size += sum(len(line) for line in content.get("traceback") or [])
    return size


@functools.cache
def _client_class() -> type:
    """``nbclient.NotebookClient`` that keeps at most ``output_limit`` characters of output
    per cell (None: no limit): what comes beyond is dropped, a note says so, and the cell is
    interrupted (``cut_cells`` lists the cells cut, by index)."""
    import asyncio

    import nbformat
    from nbclient import NotebookClient

    class CappedClient(NotebookClient):
        output_limit: int | None = None

        def output(self, outs: list, msg: dict, display_id: Any, cell_index: int) -> Any:
            if self.output_limit is None:
                return super().output(outs, msg, display_id, cell_index)
            used = self.__dict__.setdefault("_output_used", {})
            cut = self.__dict__.setdefault("cut_cells", set())
            if cell_index in cut:
                return None
            size = _output_size(msg)
            room = self.output_limit - used.get(cell_index, 0)
            if size <= room:
                used[cell_index] = used.get(cell_index, 0) + size
                return super().output(outs, msg, display_id, cell_index)
            cut.add(cell_index)
            if msg.get("msg_type") == "stream" and room > 0:
                msg = {**msg, "content": {**msg["content"],
                                          "text": msg["content"]["text"][:room]}}
                super().output(outs, msg, display_id, cell_index)
            outs.append(nbformat.v4.new_output(
                "stream", name="stderr", text=OUTPUT_CUT.format(limit=self.output_limit / MiB)))
            if self.km is not None:
                asyncio.ensure_future(self.km.interrupt_kernel())
            return None

    return CappedClient


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
            if _was_cut(client, index):
                result.status = _cut_status(client, code_number) + "; " + result.status
            return False  # still busy: nothing more can run in it
        except CellExecutionError as error:
            detail = f"{error.ename}: {error.evalue}" if error.evalue else error.ename
            result.status = (_cut_status(client, code_number) if _was_cut(client, index) else
                             f"error in cell {code_number}: {_one_line(detail)}")
            return True
        except DeadKernelError:
            result.status = f"kernel died in cell {code_number}"
            if _was_cut(client, index):
                result.status = _cut_status(client, code_number) + "; " + result.status
            return False
        finally:
            _collect(result, cell.get("outputs", []), code_number)
        if _was_cut(client, index):  # the cell ended before the interrupt reached it
            result.status = _cut_status(client, code_number)
            return True
    result.completed = True
    return True


def _was_cut(client: Any, index: int) -> bool:
    return index in getattr(client, "cut_cells", ())


def _cut_status(client: Any, code_number: int) -> str:
    return (f"output cut in cell {code_number}: more than "
            f"{client.output_limit / MiB:g} MiB printed; stopped")


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


#: The most of a verdict record that is read (a kernel could write without end).
RECORD_LIMIT = 16 << 20


def _read_untrusted(path: Path, limit: int) -> str:
    """At most ``limit`` bytes of a file the graded kernel could have written or replaced
    (never following a link to another file); empty when it is missing or not a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return ""
        return handle.read(limit).decode("utf-8", errors="replace")


def _read_record(record: Path, result: NotebookResult) -> None:
    """Verdicts from the record file: the re-check's where it ran, else the check's."""
    checked: dict[str, str] = {}
    rechecked: dict[str, str] = {}
    lines = _read_untrusted(record, RECORD_LIMIT).splitlines()
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
    header += ["passed", "total", "status", "sandbox", "mismatches"]
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
                     result.status, result.sandbox, "; ".join(result.mismatches)])
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


#: What the report's ``sandbox`` column means, per kind.
SANDBOX_KINDS = {
    "bwrap": "ran in bubblewrap: no view of the grader's files or the other submissions, "
             "no network, limits on memory, processes, CPU time and output",
    "limits": "ran with the limits, an environment allow-list and a work folder of its own, "
              "without file-system or network isolation",
    "off": "ran without a sandbox, with the grader's environment and privileges",
}


def _size(count: int) -> str:
    """``8 GiB``, ``2 MiB``, ``1.5 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:g} {unit}"
    return f"{count} bytes"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def render_markdown(results: Sequence[NotebookResult],
                    expected: dict[str, list[str]] | None = None, *,
                    cell_timeout: float | None = None, timeout: float | None = None,
                    limits: Limits | None = None) -> str:
    """The report as a Markdown table, with a line per exercise on how many passed.
    ``limits``: the sandbox's limits, stated when a notebook was graded in a sandbox."""
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
    kinds = {r.sandbox for r in results}
    if limits is not None and kinds - {"off"}:
        lines.append(f"Sandbox limits: {_size(limits.memory)} of memory per process, "
                     f"{limits.processes} processes and threads, {_size(limits.output)} of "
                     "output per cell.")
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
    used = [kind for kind in sandboxes.KINDS if kind in kinds]
    if used:
        lines += ["", "`sandbox`: " + "; ".join(f"`{kind}` {SANDBOX_KINDS[kind]}"
                                                for kind in used) + "."]
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
                 cell_timeout: float | None = None, timeout: float | None = None,
                 limits: Limits | None = None) -> None:
    """Write ``out/report.csv`` and ``out/report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.csv").write_text(render_csv(results, expected), encoding="utf-8")
    (out / "report.md").write_text(
        render_markdown(results, expected, cell_timeout=cell_timeout, timeout=timeout,
                        limits=limits),
        encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="course-grade",
        description="Run submitted notebooks and write a report of every exercise verdict. "
                    "This runs the students' code: each notebook in a sandbox (bubblewrap "
                    "where it works, else resource limits only; see --sandbox).")
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
    defaults = Limits()
    parser.add_argument("--sandbox", choices=sandboxes.MODES, default="auto",
                        help="auto (default): bubblewrap where it works, else resource limits "
                             "only (weaker, said in the report); require: bubblewrap or an "
                             "error; limits: the weaker mode; off: no sandbox (trusted "
                             "notebooks only)")
    parser.add_argument("--memory", type=float, default=defaults.memory / (1 << 30),
                        help="GiB of memory one process of a notebook may use "
                             f"(default {defaults.memory / (1 << 30):g})")
    parser.add_argument("--processes", type=int, default=defaults.processes,
                        help="processes and threads a notebook may run "
                             f"(default {defaults.processes})")
    parser.add_argument("--output-limit", type=float, default=defaults.output / MiB,
                        help="MiB of output kept per cell; a cell printing more is stopped "
                             f"(default {defaults.output / MiB:g})")
    parser.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                        help="an environment variable to pass to the sandboxed kernels "
                             "besides the allow-listed ones; may be repeated")
    args = parser.parse_args(argv)
    if args.cell_timeout <= 0 or args.timeout <= 0:
        parser.error("timeouts must be positive numbers of seconds")
    try:
        limits = Limits(memory=round(args.memory * (1 << 30)), processes=args.processes,
                        output=round(args.output_limit * MiB))
    except ValueError:
        parser.error("--memory, --processes and --output-limit must be positive numbers")
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
    try:
        kind = sandboxes.choose(args.sandbox)
    except sandboxes.SandboxUnavailable as error:
        parser.error(str(error))
    print(_sandbox_line(kind), flush=True)
    # The kernels must not see the submissions or the report, even where these lie inside
    # a folder they need (the course's repository, say).
    hide = [out, *{Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent
                   for p in args.submissions}]
    results = []
    for path, name in notebooks:
        print(f"grading {name} ...", flush=True)
        result = grade_notebook(path, name, cell_timeout=args.cell_timeout,
                                timeout=args.timeout, kernel_name=args.kernel,
                                executed_copy=out / "executed" / name,
                                kernel_log=out / "executed" / f"{name}.kernel.log",
                                sandbox=_MODE_OF_KIND[kind], limits=limits, hide=hide,
                                pass_env=args.pass_env)
        passed = sum(v == "PASSED" for v in result.verdicts.values())
        print(f"  {result.status}; {passed} passed; {result.seconds:.1f} s", flush=True)
        if result.mismatches:
            print("  printed verdicts not confirmed by the checks: "
                  + "; ".join(result.mismatches), flush=True)
        results.append(result)
    write_report(results, out, expected, cell_timeout=args.cell_timeout, timeout=args.timeout,
                 limits=limits)
    print(f"wrote {out / 'report.csv'} and {out / 'report.md'}")
    return 0


#: The mode that gives each kind, once ``choose`` has picked it for this run.
_MODE_OF_KIND = {"bwrap": "require", "limits": "limits", "off": "off"}


def _sandbox_line(kind: str) -> str:
    """What the command prints about the sandbox before grading."""
    if kind == "bwrap":
        return ("sandbox: bubblewrap (each notebook sees the system read-only, its own copy "
                "and COURSE_DATA_DIR; no network; limits on memory, processes, CPU and output)")
    if kind == "off":
        return ("sandbox: off (--sandbox=off): the notebooks run with your environment and "
                "privileges; use this for trusted notebooks only")
    why = sandboxes.bwrap_problem() or "--sandbox=limits"
    line = (f"sandbox: resource limits only ({why}): the notebooks can read your files "
            "(all of them where they run as your user) and use the network; "
            "--sandbox=require makes this an error")
    if not sandboxes.process_limit_binds():
        line += ("; running as root and no unprivileged user can run this Python, so the "
                 "number of processes is not limited")
    return line


if __name__ == "__main__":
    sys.exit(main())
