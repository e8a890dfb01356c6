"""No hint hands out the solution (every lesson's checkers, and every stub).

- Each lesson's checker module declares ``HINTS``: a :class:`utils.exercises.Hints` for every
  exercise the lesson checks (the exercises named in the stored outputs of ``solutions/``).
- No tier of a hint (``about``, ``think``, ``closer``) shares a run of
  ``checker_helpers.MAX_SHARED_TOKENS`` code tokens with the lesson's solution blocks
  (``### BEGIN SOLUTION`` ... ``### END SOLUTION`` in ``solutions/``) or with the reference
  implementations the checkers compare against.
- No stub hint (the text after ``### BEGIN SOLUTION``, which the student notebook shows)
  shares such a run with the lesson's solution blocks.

A hint may name a function or an idea; it may not write the line the student must write.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import nbformat
import pytest
from checker_helpers import MAX_SHARED_TOKENS, shared_code
from test_checks_common import CHECKERS

from utils import grading
from utils.exercises import Hints

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
_BEGIN = re.compile(r"^[ \t]*### BEGIN SOLUTION\b[ :\-]*(?P<hint>.*)$")
_END = re.compile(r"^[ \t]*### END SOLUTION\b")


def solution_blocks(path: Path) -> list[tuple[str, str]]:
    """``(stub hint, solution body)`` for every BEGIN/END SOLUTION block of a notebook."""
    blocks = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        hint, body = None, []
        for line in cell.source.split("\n"):
            begin = _BEGIN.match(line)
            if begin:
                hint, body = begin["hint"].strip(), []
            elif _END.match(line) and hint is not None:
                blocks.append((hint, "\n".join(body)))
                hint = None
            elif hint is not None:
                body.append(line)
    return blocks


def checker_module(path: Path):
    lesson = path.stem  # e.g. 05_cnn -> utils.checks.lesson05_cnn
    return importlib.import_module(f"utils.checks.lesson{lesson}")


def reference_sources(number: str) -> list[str]:
    """Source code of the references the lesson's checkers compare against."""
    sources = []
    for key, (_checker, reference) in CHECKERS.items():
        if key.split(" ", 1)[0] != number:
            continue
        try:
            sources.append(inspect.getsource(reference))
        except (OSError, TypeError):  # a builtin or a partial: nothing to leak
            pass
    return sources


def _hint_texts(hints: Hints) -> dict[str, str]:
    return {"about": hints.about, "think": hints.think, "closer": hints.closer}


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_exercise_has_tiered_hints(path):
    module = checker_module(path)
    exercises = grading.expected_exercises([path]).get(path.stem, [])
    hints = getattr(module, "HINTS", None)
    assert isinstance(hints, dict), f"{module.__name__} declares no HINTS dict"
    missing = [e for e in exercises if e not in hints]
    assert not missing, f"{module.__name__}.HINTS lacks {missing}"
    for name, value in hints.items():
        assert isinstance(value, Hints), f"{module.__name__}.HINTS[{name!r}] is not a Hints"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_no_checker_hint_shares_code_with_the_solution(path):
    module = checker_module(path)
    solutions = [body for _, body in solution_blocks(path)]
    solutions += reference_sources(path.stem[:2])
    leaks = []
    for name, hints in getattr(module, "HINTS", {}).items():
        for tier, text in _hint_texts(hints).items():
            run = shared_code(text, solutions)
            if run:
                leaks.append(f"{name}.{tier}: '{run}'")
    assert not leaks, (f"hints of {module.__name__} share {MAX_SHARED_TOKENS}+ code tokens "
                       f"with the solution: {leaks}")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_no_stub_hint_shares_code_with_the_solution(path):
    blocks = solution_blocks(path)
    bodies = [body for _, body in blocks]
    leaks = [f"'{hint}' shares '{run}'" for hint, _ in blocks
             if (run := shared_code(hint, bodies))]
    assert not leaks, f"stub hints of {path.name} give solution code: {leaks}"


def test_the_leak_detector_catches_a_hint_that_is_the_solution():
    solution = "keys = jax.random.split(key, num_workers + 1)\nreturn keys[0], keys[1:]"
    assert shared_code("keys = jax.random.split(key, num_workers + 1); return keys[0], "
                       "keys[1:]", [solution])
    assert shared_code("use jnp.argmax(logits, axis=-1)", ["jnp.argmax(logits, axis=-1)"])
    # Naming a function, or describing the idea in words, is allowed.
    assert not shared_code("which function of jax.random makes several keys from one?",
                           [solution])
    assert not shared_code("one key for each worker, and one more to carry on with",
                           [solution])
