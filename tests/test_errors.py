"""Tests of utils.errors.expect_error."""

import pytest

from utils.errors import ExpectedErrorMissing, expect_error


def test_prints_type_and_message_and_continues(capsys):
    with expect_error(ValueError):
        raise ValueError("bad shape (3,)\nexpected (4,)")
    out = capsys.readouterr().out
    assert out == "Expected error, ValueError: bad shape (3,)\nexpected (4,)\n"


def test_accepts_any_of_several_types(capsys):
    with expect_error(KeyError, TypeError):
        raise TypeError("nope")
    assert capsys.readouterr().out.startswith("Expected error, TypeError: nope")


def test_long_messages_are_cut(capsys):
    with expect_error(RuntimeError, max_lines=2):
        raise RuntimeError("\n".join(f"line {i}" for i in range(10)))
    assert capsys.readouterr().out == "Expected error, RuntimeError: line 0\nline 1\n...\n"


def test_no_error_fails_the_cell():
    with pytest.raises(ExpectedErrorMissing, match="expected ValueError, but the code ran"):
        with expect_error(ValueError):
            pass


def test_other_errors_propagate_unchanged():
    with pytest.raises(ZeroDivisionError):
        with expect_error(ValueError):
            1 / 0  # noqa: B018


def test_match_must_occur_in_the_message(capsys):
    with expect_error(ValueError, match="shape"):
        raise ValueError("wrong shape")
    with pytest.raises(ExpectedErrorMissing, match="does not contain 'dtype'"):
        with expect_error(ValueError, match="dtype"):
            raise ValueError("wrong shape")


def test_jax_tracer_error_is_shown(capsys):
    import jax
    import jax.numpy as jnp

    def f(x):
        return x if x > 0 else -x

    with expect_error(jax.errors.TracerBoolConversionError):
        jax.jit(f)(jnp.float32(1.0))
    assert capsys.readouterr().out.startswith("Expected error, TracerBoolConversionError: ")


@pytest.mark.parametrize("kwargs", [{}, {"max_lines": 0}])
def test_bad_arguments(kwargs):
    types = () if not kwargs else (ValueError,)
    with pytest.raises(ValueError):
        with expect_error(*types, **kwargs):
            pass
