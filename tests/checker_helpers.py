"""Shared helpers for the tests of lesson checkers (tests/test_checks_lessonNN.py).

Every checker test feeds a checker an answer, captures what it printed, and asserts the one
verdict line; these helpers do the common part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from utils.exercises import VERDICT_LINE


def stub(*args: Any, **kwargs: Any) -> Any:
    """A blank exercise, as the generated student notebook has it."""
    raise NotImplementedError("not written yet")


def run_checker(capsys: Any, checker: Callable[[Any], Any], answer: Any) -> tuple[str, Any]:
    """Run one checker on ``answer``; return (its single printed line, what it returned).

    Fails unless exactly one line was printed, it is a verdict line, and no traceback shows.
    """
    use = checker(answer)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one verdict line, got:\n{out}"
    assert VERDICT_LINE.match(lines[0]), lines[0]
    assert "Traceback" not in out
    return lines[0], use


def expect_failed(capsys: Any, checker: Callable[[Any], Any], name: str, answer: Any,
                  *fragments: str) -> str:
    """Assert ``checker`` says FAILED for ``answer``, with each fragment and a hint, and
    hands back the reference rather than the wrong answer. Returns the line."""
    line, use = run_checker(capsys, checker, answer)
    assert line.startswith(f"FAILED {name}:"), line
    for fragment in fragments:
        assert fragment in line, line
    assert "Hint:" in line and "continues with the reference" in line, line
    assert use is not answer
    return line
