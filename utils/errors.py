"""Showing an expected error in a lesson (introduced in lesson 00_setup).

Lessons show on purpose what fails: a Python ``if`` on a traced value, a device setting
asked for too late. Instead of letting the cell die with a traceback, a lesson wraps the
code in :func:`expect_error`::

    with expect_error(jax.errors.TracerBoolConversionError):
        jax.jit(f)(x)

which prints the error's type and message (the part worth reading) and lets the notebook
go on. It also *checks* the lesson: if the code runs without raising, or raises something
else, the cell fails, so a change in JAX that makes a demonstration wrong is caught.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ExpectedErrorMissing", "expect_error"]


class ExpectedErrorMissing(AssertionError):
    """The code inside :func:`expect_error` did not raise the error the lesson shows."""


@contextmanager
def expect_error(
    *errors: type[BaseException], max_lines: int = 4, match: str | None = None
) -> Iterator[None]:
    """Run the ``with`` block, expecting one of ``errors``; print it in a few lines.

    Prints ``"Expected error, <Type>: <message>"``, the message cut to ``max_lines``
    lines. ``match``, if given, must occur in the message. Raises
    :class:`ExpectedErrorMissing` when the block raises nothing (or a message without
    ``match``); any other exception propagates unchanged.
    """
    if not errors:
        raise ValueError("expect_error needs at least one exception type, e.g. ValueError.")
    if max_lines < 1:
        raise ValueError(f"max_lines must be at least 1, got {max_lines}.")
    try:
        yield
    except errors as error:
        message = str(error).strip()
        if match is not None and match not in message:
            raise ExpectedErrorMissing(
                f"{type(error).__name__} was raised, but its message does not contain "
                f"{match!r}: {message[:200]!r}"
            ) from error
        lines = [line.rstrip() for line in message.splitlines() if line.strip()]
        shown = lines[:max_lines] + (["..."] if len(lines) > max_lines else [])
        print(f"Expected error, {type(error).__name__}: " + "\n".join(shown))
        return
    names = " or ".join(e.__name__ for e in errors)
    raise ExpectedErrorMissing(f"expected {names}, but the code ran without error.")
