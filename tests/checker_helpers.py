"""Shared helpers for the tests of lesson checkers (tests/test_checks_lessonNN.py).

Every checker test feeds a checker an answer, captures what it printed, and asserts the one
verdict line; these helpers do the common part.
"""

from __future__ import annotations

import io
import re
import textwrap
import tokenize
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


# ----------------------------------------------------------------- hints never give code

#: A hint may name a function (``jax.random.split`` is 5 tokens) but never write the call the
#: student must write: it fails once it shares this many code tokens in a row with a solution.
MAX_SHARED_TOKENS = 6

_PROSE_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d+)?|==|!=|<=|>=|\*\*|//|->|[^\s\w]")


def code_tokens(source: str) -> list[str]:
    """The tokens of Python ``source`` without comments, strings and docstrings (names,
    numbers, operators); prose that does not parse is split like code."""
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type in (tokenize.NAME, tokenize.NUMBER, tokenize.OP)]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return prose_tokens(source)


def prose_tokens(text: str) -> list[str]:
    """``text`` split like code: names, numbers and operator characters."""
    return _PROSE_TOKEN.findall(text)


def longest_shared_run(a: list[str], b: list[str]) -> list[str]:
    """The longest run of consecutive tokens found in both ``a`` and ``b``."""
    best, end = 0, 0
    previous = [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        current = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                current[j] = previous[j - 1] + 1
                if current[j] > best:
                    best, end = current[j], i
        previous = current
    return a[end - best:end]


def shared_code(text: str, solutions: list[str]) -> str:
    """The longest code run ``text`` (a hint) shares with any of ``solutions``, if it is
    :data:`MAX_SHARED_TOKENS` tokens or longer; else ``""``."""
    words = prose_tokens(text)
    worst: list[str] = []
    for solution in solutions:
        run = longest_shared_run(words, code_tokens(textwrap.dedent(solution)))
        if len(run) > len(worst):
            worst = run
    return " ".join(worst) if len(worst) >= MAX_SHARED_TOKENS else ""
