"""The exercise checker framework (introduced in lesson 00_setup).

A checker runs a student's function against a reference on fresh random inputs and prints
exactly one line that starts with one of three verdicts::

    PASSED relu: matches the reference on 6 random inputs (shapes (1,) to (31, 7)); also under ...
    FAILED relu: output has shape (3,) but expected (3, 4). Hint: ... The lesson continues ...
    NOT ATTEMPTED relu: not written yet. ... The lesson continues with the reference ...

It returns the function the rest of the lesson should use: the student's when it passed,
the reference otherwise, so a notebook runs top to bottom with every exercise blank.

What a checker says beyond the verdict comes in tiers (:class:`Hints`), and none of it is a
line of the solution (``tests/test_hints.py`` enforces that for every checker and stub):
NOT ATTEMPTED says what the exercise is for and where the lesson explains the idea; the
first FAILED says what is wrong (from the check) and what to think about; a later FAILED
of the same exercise takes a closer look, still without code.

Lesson checkers (``utils/checks/lessonNN_*.py``) are built from :func:`run_check` and the
comparison helpers below. Everything the student's code raises is caught and summarised in
one line; a student never sees a traceback from inside ``utils``.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CheckFailed",
    "Hints",
    "Result",
    "Verdict",
    "RECORD_VARIABLE",
    "call_student",
    "compare_with_reference",
    "expect_array",
    "expect_close",
    "recheck_all",
    "run_check",
    "summarize_error",
]

#: Matches a verdict line; the grading tool and the tests read lines with it.
VERDICT_LINE = re.compile(r"^(PASSED|FAILED|NOT ATTEMPTED) (\S+?):")

#: Names a file to which every check appends its verdict as a JSON line. ``course-grade``
#: sets it for the kernel it grades, so verdicts reach it through a channel that printed
#: text cannot forge; unset in ordinary use (nothing is written then).
RECORD_VARIABLE = "COURSE_GRADE_RECORD"

#: The last answer checked per exercise: (student_fn, reference_fn, check, hints), for
#: :func:`recheck_all`.
_CHECKED: dict[str, tuple[Callable[..., Any], Callable[..., Any],
                          Callable[[Callable[..., Any]], str], Hints | str]] = {}
#: Exercises that have FAILED at least once in this kernel: their next FAILED takes a closer
#: look (:attr:`Hints.closer`).
_FAILED_BEFORE: set[str] = set()

_CONTINUES = "The lesson continues with the reference implementation."
_UNDER_JIT = (" (it works without jax.jit, so it needs a concrete value where jax.jit has only "
              "a tracer: a Python if, float() or np.asarray on an array argument)")


class Verdict(enum.Enum):
    PASSED = "PASSED"
    FAILED = "FAILED"
    NOT_ATTEMPTED = "NOT ATTEMPTED"


@dataclass(frozen=True)
class Hints:
    """What a checker tells a student beyond the verdict, in tiers. Never a line of the solution.

    - ``about`` (with NOT ATTEMPTED): what the exercise is for and where in the lesson the
      idea is explained ("Section 3 shows why ...").
    - ``think`` (with the first FAILED, after what is wrong): what to think about.
    - ``closer`` (with every later FAILED of the same exercise in this kernel): a closer look,
      such as a property the right answer has or the page of the docs to read; still no code.
      Empty means ``think`` again.

    Each is one or two sentences. Name functions and ideas; never write the call the student
    must write (``tests/test_hints.py`` rejects a run of code tokens shared with the solution).
    """

    about: str
    think: str
    closer: str = ""

    def __post_init__(self) -> None:
        for field in ("about", "think"):
            if not _one_line(getattr(self, field)):
                raise ValueError(f"Hints.{field} must say something; it is empty.")


class CheckFailed(Exception):
    """Raised inside a checker when the student's answer is wrong; the message is shown."""


@dataclass(frozen=True)
class Result:
    """The outcome of one check. ``line`` is what gets printed."""

    exercise: str
    verdict: Verdict
    message: str

    @property
    def line(self) -> str:
        return f"{self.verdict.value} {self.exercise}: {self.message}"


#: Lines of library error messages that explain nothing about the student's code.
_BOILERPLATE = re.compile(
    r"^(-{5,}|={5,}|For simplicity, JAX has removed its internal frames.*"
    r"|The stack trace below excludes JAX-internal frames.*"
    r"|The preceding is the original exception.*|See https?://\S+ for more information.*)$")


def summarize_error(error: BaseException, limit: int = 480) -> str:
    """``"TypeError: unsupported operand ..."``: the error's type and message on one line.

    The whole message is kept up to ``limit`` characters (library errors often explain the
    bug after their first line: shapes, specs, the axis at fault); separator lines and
    boilerplate about stack traces are dropped, and whitespace is collapsed.
    """
    lines = [line.strip() for line in str(error).strip().splitlines()]
    text = " ".join(line for line in lines if line and not _BOILERPLATE.match(line))
    text = _one_line(text)
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def call_student(where: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, where ``fn`` is (or calls) the student's code: an error it raises
    becomes a :class:`CheckFailed` that says for which input (``where``, e.g. "for inputs of
    shape (3, 4)") and what was raised. ``NotImplementedError`` (a blank exercise) and
    ``CheckFailed`` pass through unchanged."""
    try:
        return fn(*args)
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        raise CheckFailed(f"{where.strip()}, your function raised "
                          f"{summarize_error(error).rstrip('.')}.") from None


def run_check(
    exercise: str,
    student_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    check: Callable[[Callable[..., Any]], str],
    hint: Hints | str,
    *,
    quiet: bool = False,
) -> Callable[..., Any]:
    """Run ``check(student_fn)``, print one verdict line, return the function to go on with.

    ``check`` returns a short description of what it verified (used after ``PASSED``), or
    raises :class:`CheckFailed` with what is wrong. ``NotImplementedError`` from the
    student's code means NOT ATTEMPTED; any other exception means FAILED with a one-line
    summary of the error. ``hint`` is a :class:`Hints` (the tiers shown with NOT ATTEMPTED,
    a first FAILED and later ones); a plain string is shown in every tier.
    """
    result, use = evaluate(exercise, student_fn, reference_fn, check, hint)
    if not quiet:
        print(result.line)
    return use


def evaluate(
    exercise: str,
    student_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    check: Callable[[Callable[..., Any]], str],
    hint: Hints | str,
) -> tuple[Result, Callable[..., Any]]:
    """Like :func:`run_check` but returns ``(Result, function to use)`` and prints nothing.

    The verdict is also recorded (see :data:`RECORD_VARIABLE` and :func:`recheck_all`).
    """
    _CHECKED[exercise] = (student_fn, reference_fn, check, hint)
    result, use = _evaluate(exercise, student_fn, reference_fn, check, hint,
                            failed_before=exercise in _FAILED_BEFORE)
    if result.verdict is Verdict.FAILED:
        _FAILED_BEFORE.add(exercise)
    _record(result, "check")
    return result, use


def _record(result: Result, phase: str) -> None:
    path = os.environ.get(RECORD_VARIABLE)
    if not path:
        return
    line = json.dumps({"phase": phase, "exercise": result.exercise,
                       "verdict": result.verdict.value})
    with open(path, "a", encoding="utf-8") as record:
        record.write(line + "\n")


def recheck_all() -> dict[str, str]:
    """Check every exercise's last checked answer again; return ``{exercise: verdict}``.

    ``course-grade`` calls this in the graded kernel after the notebook ran, so each verdict
    is established again on the student's function itself (and recorded with phase
    ``"recheck"``). Prints nothing: what the checks or the student's code print is dropped.
    """
    verdicts = {}
    for exercise, (student_fn, reference_fn, check, hint) in list(_CHECKED.items()):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result, _ = _evaluate(exercise, student_fn, reference_fn, check, hint,
                                  failed_before=False)
        _record(result, "recheck")
        verdicts[exercise] = result.verdict.value
    return verdicts


def _evaluate(
    exercise: str,
    student_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    check: Callable[[Callable[..., Any]], str],
    hint: Hints | str,
    *,
    failed_before: bool,
) -> tuple[Result, Callable[..., Any]]:
    hints = hint if isinstance(hint, Hints) else Hints(about=hint, think=hint)
    try:
        what = check(student_fn)
    except NotImplementedError:
        about = _sentence(hints.about)
        if isinstance(hint, str):
            about = f"Hint: {about}"
        return Result(exercise, Verdict.NOT_ATTEMPTED,
                      f"not written yet. {about} {_CONTINUES}"), reference_fn
    except CheckFailed as wrong:
        wrong_text = _one_line(str(wrong))
    except Exception as error:  # the student's code raised: summarise, never a traceback
        wrong_text = f"your function raised {_sentence(summarize_error(error))}"
    else:
        return Result(exercise, Verdict.PASSED, _one_line(what)), student_fn
    think = _sentence(hints.closer if failed_before and hints.closer else hints.think)
    return Result(exercise, Verdict.FAILED,
                  f"{wrong_text} Hint: {think} {_CONTINUES}"), reference_fn


def _sentence(text: str) -> str:
    """``text`` on one line, ending with a full stop (or ! or ?)."""
    text = _one_line(text)
    return text + "." if text and text[-1] not in ".!?" else text


def expect_array(value: Any, shape: Sequence[int], dtype: Any, what: str = "output") -> np.ndarray:
    """Check ``value`` is an array of ``shape`` and ``dtype`` (shape first); return it as NumPy.

    Raises :class:`CheckFailed` naming what differs.
    """
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise CheckFailed(
            f"{what} is a {type(value).__name__}, but an array of shape {tuple(shape)} "
            "was expected."
        )
    if tuple(value.shape) != tuple(shape):
        raise CheckFailed(f"{what} has shape {tuple(value.shape)} but expected {tuple(shape)}.")
    if np.dtype(value.dtype) != np.dtype(dtype):
        raise CheckFailed(
            f"{what} has dtype {np.dtype(value.dtype)} but expected {np.dtype(dtype)}."
        )
    return np.asarray(value)


def expect_close(
    value: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-6, what: str = "output"
) -> None:
    """Check ``value`` matches ``expected`` (same shape and dtype, then values)."""
    if np.ndim(expected) == 0 and not hasattr(expected, "shape"):
        _expect_scalar(value, expected, rtol=rtol, atol=atol, what=what)
        return
    expected = np.asarray(expected)
    got = expect_array(value, expected.shape, expected.dtype, what)
    if got.dtype == bool or np.issubdtype(got.dtype, np.integer):
        bad = got != expected
    else:
        bad = ~np.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CheckFailed(
            f"{what} differs from the reference in {int(bad.sum())} of {bad.size} entries; "
            f"e.g. at index {index}: got {got[index]!r}, expected {expected[index]!r}."
        )


def _expect_scalar(value: Any, expected: Any, *, rtol: float, atol: float, what: str) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float | np.number)
        or (hasattr(value, "shape") and value.shape == ())
    ):
        raise CheckFailed(f"{what} is a {type(value).__name__}, but a single number was expected.")
    got = float(value)
    if not np.isclose(got, float(expected), rtol=rtol, atol=atol):
        raise CheckFailed(f"{what} is {got:.6g}, but expected {float(expected):.6g}.")


def _describe_shape(args: tuple[Any, ...]) -> str:
    shapes = [tuple(a.shape) for a in args if hasattr(a, "shape")]
    return str(shapes[0]) if len(shapes) == 1 else "x".join(str(s) for s in shapes)


def compare_with_reference(
    student_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    make_args: Callable[[np.random.Generator, int], tuple[Any, ...]],
    *,
    trials: int = 6,
    jit: bool = True,
    static_argnums: Sequence[int] = (),
    rtol: float = 1e-5,
    atol: float = 1e-6,
    rng: np.random.Generator | None = None,
) -> str:
    """Compare on ``trials`` random inputs, then again under ``jax.jit``.

    ``make_args(rng, trial)`` builds one tuple of arguments; vary shapes with ``trial``.
    Without ``rng`` the inputs come from a fixed seed, so a verdict never changes between runs.
    Outputs may be arrays, numbers, or tuples/lists of them. Returns a description of
    what was checked; raises :class:`CheckFailed` on the first difference.
    """
    import jax

    rng = np.random.default_rng(0) if rng is None else rng
    cases = [make_args(rng, t) for t in range(trials)]
    variants: list[tuple[str, Callable[..., Any]]] = [("", student_fn)]
    if jit:
        jitted = jax.jit(student_fn, static_argnums=tuple(static_argnums))
        variants.append((" under jax.jit", jitted))
    for suffix, fn in variants:
        for args in cases:
            expected = reference_fn(*args)
            where = f" for inputs of shape {_describe_shape(args)}{suffix}"
            try:
                got = fn(*args)
            except (NotImplementedError, CheckFailed):
                raise
            except Exception as error:  # say which inputs, and whether only jit broke it
                why = _UNDER_JIT if suffix else ""
                summary = _one_line(summarize_error(error)).rstrip(".")
                raise CheckFailed(
                    f"{where.strip()}, your function raised {summary}{why}."
                ) from None
            _compare_outputs(got, expected, rtol=rtol, atol=atol, where=where)
    # Smallest to largest input (total elements), ties by text: the same line on every run.
    sizes = {_describe_shape(a): sum(int(np.prod(x.shape)) for x in a if hasattr(x, "shape"))
             for a in cases}
    shapes = sorted(sizes, key=lambda described: (sizes[described], described))
    span = f"shapes {shapes[0]} to {shapes[-1]}" if len(shapes) > 1 else f"shape {shapes[0]}"
    return (f"matches the reference on {trials} random inputs ({span})"
            + ("; also under jax.jit" if jit else ""))


def _compare_outputs(got: Any, expected: Any, *, rtol: float, atol: float, where: str) -> None:
    if isinstance(expected, tuple | list):
        if not isinstance(got, tuple | list) or len(got) != len(expected):
            raise CheckFailed(
                f"returned {type(got).__name__}{where}, expected a tuple of {len(expected)} values."
            )
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            expect_close(g, e, rtol=rtol, atol=atol, what=f"output [{i}]{where}")
        return
    expect_close(got, expected, rtol=rtol, atol=atol, what=f"output{where}")
