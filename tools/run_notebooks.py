"""Run lesson notebooks top to bottom and fail on any error, any stderr output or a wrong verdict.

Used by the newest-JAX leg of the tests (``tools/test_newest.sh``), and by hand::

    python tools/run_notebooks.py solutions/*.ipynb               # every checker must PASS
    python tools/run_notebooks.py --expect "NOT ATTEMPTED" course/*.ipynb
    COURSE_WORK=smoke python tools/run_notebooks.py solutions/*.ipynb   # the smallest work

Each notebook runs in a fresh kernel through ``course-grade``'s runner (``utils.grading``), so
verdicts come from the checks themselves (re-checked after the last cell), not from printed
text. A notebook fails when a cell raises (other than an expected error shown with
``expect_error``), when any cell writes to stderr (a warning, say), when the kernel process
itself logs a warning, when a verdict is not the expected one or a printed verdict disagrees
with the checks, or when the exercises differ from those in the stored outputs of
``solutions/`` (the reference list). Prints one line per notebook and a total; exit status 1
if any notebook failed. The notebooks themselves are never modified.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import grading  # noqa: E402

#: Kernel-process log lines that are a warning (XLA/absl "W1201 ...", Python "...Warning:").
_KERNEL_WARNING = re.compile(r"(^W\d{4} |Warning:|WARNING)")
#: The kernel's own notes about how this runner talks to it, not about the lesson (newer
#: ipykernel warns that a local kernel's ZMQ sockets are unencrypted).
_RUNNER_NOTES = re.compile(r"^\[IPKernelApp\] WARNING \| Kernel is running over TCP without")


def kernel_warnings(log: Path) -> list[str]:
    """Warning lines the kernel process wrote outside any cell (XLA, absl, Python)."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines()
            if _KERNEL_WARNING.search(line) and not _RUNNER_NOTES.search(line.strip())]


def problems_of(result: grading.NotebookResult, expected: list[str], verdict: str,
                warnings: list[str]) -> list[str]:
    """What is wrong with one notebook's run (empty when it passed)."""
    problems = []
    if not result.completed or result.status != "ok":
        problems.append(result.status)
    problems += [f"stderr in {line}" for line in result.stderr]
    problems += [f"kernel log: {line[:160]}" for line in warnings]
    problems += [f"mismatch: {m}" for m in result.mismatches]
    for exercise in expected:
        got = result.verdicts.get(exercise)
        if got != verdict:
            problems.append(f"{exercise}: {got or 'not checked'}, expected {verdict}")
    extra = [e for e in result.verdicts if e not in expected]
    if extra:
        problems.append(f"checked but not in the reference outputs: {', '.join(extra)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--expect", default="PASSED", choices=["PASSED", "NOT ATTEMPTED"],
                        help="the verdict every exercise must get (default PASSED)")
    parser.add_argument("--cell-timeout", type=float, default=600)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    # Like the test suite: the verified dataset copies beside the repository, when present.
    shared_data = ROOT.parent / "shared" / "data"
    if not os.environ.get("COURSE_DATA_DIR") and shared_data.is_dir():
        os.environ["COURSE_DATA_DIR"] = str(shared_data)
    failed, total_start = 0, time.monotonic()
    width = max(len(str(p)) for p in args.notebooks)
    with tempfile.TemporaryDirectory(prefix="run-notebooks-") as tmp:
        for path in args.notebooks:
            reference = ROOT / "solutions" / path.name
            if not reference.exists():
                print(f"{str(path):<{width}}  FAILED: no solutions/{path.name} to take the "
                      "exercises from", flush=True)
                failed += 1
                continue
            expected = grading.expected_exercises([reference]).get(
                grading.lesson_of(reference), [])
            log = Path(tmp) / f"{path.stem}.kernel.log"
            result = grading.grade_notebook(path, cell_timeout=args.cell_timeout,
                                            timeout=args.timeout, kernel_log=log)
            problems = problems_of(result, expected, args.expect, kernel_warnings(log))
            verdict = "ok" if not problems else "FAILED"
            print(f"{str(path):<{width}}  {result.seconds:7.1f} s  {len(expected)} exercises  "
                  f"{verdict}", flush=True)
            for problem in problems:
                print(f"    - {problem}", flush=True)
            failed += bool(problems)
    count = len(args.notebooks)
    print(f"{count} notebooks in {time.monotonic() - total_start:.1f} s")
    print(f"notebooks: {count - failed} passed, {failed} failed")  # a runner's closing line
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
