"""Tests of utils/exercises.py: one verdict line, the function to go on with, strict checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from utils import exercises
from utils.exercises import (
    VERDICT_LINE,
    CheckFailed,
    Hints,
    Verdict,
    call_student,
    compare_with_reference,
    evaluate,
    expect_array,
    expect_close,
    run_check,
    summarize_error,
)

HINT = "use jnp.maximum(x, 0)"


def reference_relu(x):
    return jnp.maximum(x, 0)


def relu_args(rng: np.random.Generator, trial: int):
    """Shapes (1,), (2, 3), (3,), (4, 3), ...: odd and even sizes, 1-D and 2-D."""
    shape = (trial + 1,) if trial % 2 == 0 else (trial + 1, 3)
    return (jnp.asarray(rng.standard_normal(shape), jnp.float32),)


def check_relu(fn):
    return compare_with_reference(fn, reference_relu, relu_args, trials=6)


def verdict(capsys, student, check=check_relu, reference=reference_relu):
    """Run a check; return (the one printed line, the function returned)."""
    use = run_check("relu", student, reference, check, HINT)
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1, out  # exactly one line, whatever happened
    assert out.endswith("\n")
    return lines[0], use


# ---------------------------------------------------------------------------- verdicts

def test_correct_answer_passes_and_is_returned(capsys):
    def student(x):
        return jnp.where(x > 0, x, 0.0)

    line, use = verdict(capsys, student)
    # smallest to largest input, the same text on every run (strict nbval compares it)
    assert line == ("PASSED relu: matches the reference on 6 random inputs "
                    "(shapes (1,) to (6, 3)); also under jax.jit")
    assert "Hint" not in line
    assert use is student


def test_stub_is_not_attempted_and_the_reference_is_returned(capsys):
    def student(x):
        # YOUR CODE HERE (about 1 line): use jnp.maximum
        raise NotImplementedError("use jnp.maximum")

    line, use = verdict(capsys, student)
    assert line == ("NOT ATTEMPTED relu: not written yet. Hint: use jnp.maximum(x, 0). "
                    "The lesson continues with the reference implementation.")
    assert use is reference_relu


@pytest.mark.parametrize(("error", "summary"), [
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    (TypeError("bad operand\nsecond line\nthird line"),
     "TypeError: bad operand second line third line"),
    (KeyError("w"), "KeyError: 'w'"),
    (RuntimeError(), "RuntimeError"),
])
def test_other_exception_is_failed_in_one_line_without_traceback(capsys, error, summary):
    def student(x):
        raise error

    line, use = verdict(capsys, student)
    assert line.startswith("FAILED relu: for inputs of shape (1,), your function raised "
                           + summary)
    assert "\n" not in line and "Traceback" not in line and 'File "' not in line
    assert line.endswith(f"Hint: {HINT}. The lesson continues with the reference implementation.")
    assert use is reference_relu


def test_exception_inside_a_checker_is_failed_too(capsys):
    def check(fn):
        return fn(jnp.ones(3)).sum().item()  # the student returns None

    line, use = verdict(capsys, lambda x: None, check=check)
    assert line.startswith("FAILED relu: your function raised AttributeError:")
    assert use is reference_relu


def test_check_failed_message_is_shown_on_one_line(capsys):
    def check(fn):
        raise CheckFailed("output is\n  wrong   in two\nlines.")

    line, _ = verdict(capsys, reference_relu, check=check)
    assert line.startswith("FAILED relu: output is wrong in two lines. Hint: ")


def test_quiet_prints_nothing_and_evaluate_returns_the_result(capsys):
    assert run_check("relu", reference_relu, reference_relu, check_relu, HINT,
                     quiet=True) is reference_relu
    assert capsys.readouterr().out == ""
    result, use = evaluate("relu", lambda x: -x, reference_relu, check_relu, HINT)
    assert result.verdict is Verdict.FAILED and use is reference_relu
    assert result.line.startswith("FAILED relu: ")


@pytest.mark.parametrize("student", [
    reference_relu,
    lambda x: (_ for _ in ()).throw(NotImplementedError()),
    lambda x: x,
    lambda x: 1 / 0,
])
def test_verdict_line_regex_matches_every_line(capsys, student):
    line, _ = verdict(capsys, student)
    match = VERDICT_LINE.match(line)
    assert match is not None, line
    assert match.group(1) in {v.value for v in Verdict} and match.group(2) == "relu"


@pytest.mark.parametrize("text", ["Passed relu: ok", "PASSED: ok", "FAILED relu ok",
                                  " PASSED relu: ok", "NOT_ATTEMPTED relu: x"])
def test_verdict_line_regex_rejects_other_lines(text):
    assert VERDICT_LINE.match(text) is None


def test_summarize_error_shortens_long_messages():
    text = summarize_error(ValueError("x" * 500 + "\nmore"), limit=40)
    assert text == "ValueError: " + "x" * 37 + "..."


def test_summarize_error_keeps_the_explanation_after_the_first_line():
    # Library errors say what is wrong after their first line (shapes, specs): keep it, drop
    # separators and the pointer to the docs.
    error = ValueError("shard_map applied to the function 'f' was given out_specs which\n"
                       "--------------------\n"
                       "require replication which can't be statically inferred given the "
                       "mesh: the axis 'data' of an output of shape (8, 3)\n"
                       "See https://docs.jax.dev/en/latest/errors.html for more information.")
    text = summarize_error(error)
    assert text.startswith("ValueError: shard_map applied to the function 'f'")
    assert "axis 'data' of an output of shape (8, 3)" in text
    assert "-----" not in text and "https://" not in text and "\n" not in text


# ----------------------------------------------------------------------------- hints

TIERED = Hints(about="It practises ReLU; section 2 explains it.",
               think="which values should stay as they are?",
               closer="look at the sign of each entry")


def _tiered_line(capsys, student, exercise="relu_tiered"):
    run_check(exercise, student, reference_relu, check_relu, TIERED)
    return capsys.readouterr().out.strip()


def test_hints_come_in_tiers(capsys):
    def blank(x):
        raise NotImplementedError

    def wrong(x):
        return jnp.abs(x)

    exercises._FAILED_BEFORE.discard("relu_tiered")
    assert _tiered_line(capsys, blank) == (
        "NOT ATTEMPTED relu_tiered: not written yet. It practises ReLU; section 2 explains it. "
        "The lesson continues with the reference implementation.")
    first = _tiered_line(capsys, wrong)
    assert first.startswith("FAILED relu_tiered: output for inputs of shape")
    assert "Hint: which values should stay as they are? The lesson continues" in first
    second = _tiered_line(capsys, wrong)  # a later FAILED takes a closer look
    assert "Hint: look at the sign of each entry. The lesson continues" in second
    assert "which values" not in second
    assert _tiered_line(capsys, reference_relu).startswith("PASSED relu_tiered:")


def test_hints_must_say_something():
    with pytest.raises(ValueError, match="Hints.about must say something"):
        Hints(about=" ", think="x")
    assert Hints(about="a", think="b").closer == ""  # then think is shown again


# ---------------------------------------------------------------------------- comparisons

def test_wrong_shape_is_reported_before_dtype_and_values(capsys):
    def student(x):  # wrong shape, dtype and values all at once
        return jnp.zeros(x.shape + (1,), jnp.int32)

    line, _ = verdict(capsys, student)
    assert "has shape (1, 1) but expected (1,)" in line
    assert "dtype" not in line and "differs" not in line


def test_wrong_dtype_is_reported_before_values(capsys):
    def student(x):
        return jnp.maximum(x, 0).astype(jnp.float16) + 1

    line, _ = verdict(capsys, student)
    assert line.startswith("FAILED relu: output for inputs of shape (1,) has dtype float16 "
                           "but expected float32.")


def test_wrong_values_name_how_many_and_one_example(capsys):
    def student(x):
        return jnp.abs(x)  # right wherever x >= 0

    line, use = verdict(capsys, student)
    assert line.startswith("FAILED relu: output for inputs of shape (")
    assert "differs from the reference in" in line and "; e.g. at index (" in line
    assert "got " in line and "expected " in line
    assert use is reference_relu


def test_a_function_wrong_only_for_some_inputs_is_caught(capsys):
    def wrong_for_even_sizes(x):
        return jnp.maximum(x, 0) if x.size % 2 else jnp.minimum(x, 0)

    line, _ = verdict(capsys, wrong_for_even_sizes)  # (1,) passes, (2, 3) does not
    assert line.startswith("FAILED relu: output for inputs of shape (2, 3) differs")

    line, _ = verdict(capsys, lambda x: jnp.maximum(x, 0) if x.shape[0] < 5 else x)
    assert line.startswith("FAILED relu: output for inputs of shape (5,) differs")

    def wrong_for_a_negative_last_entry(x):  # only random inputs find this
        return jnp.maximum(x, 0).at[..., -1].set(x[..., -1])

    line, _ = verdict(capsys, wrong_for_a_negative_last_entry)
    assert line.startswith("FAILED relu: output for inputs of shape")


def test_a_function_that_breaks_under_jit_is_caught(capsys):
    def student(x):
        if x.sum() > 1e9:  # Python `if` on a traced value: fine eagerly, fails under jit
            return x
        return jnp.maximum(x, 0)

    line, use = verdict(capsys, student)
    assert line.startswith("FAILED relu: for inputs of shape (1,) under jax.jit, your "
                           "function raised TracerBoolConversionError")
    assert "it works without jax.jit" in line and "Traceback" not in line
    assert use is reference_relu


def test_jit_can_be_turned_off():
    def student(x):
        return x if float(x.sum()) > 1e9 else jnp.maximum(x, 0)

    what = compare_with_reference(student, reference_relu, relu_args, trials=3, jit=False)
    assert what.startswith("matches the reference on 3 random inputs") and "jit" not in what
    with pytest.raises(CheckFailed, match="under jax.jit"):
        compare_with_reference(student, reference_relu, relu_args, trials=3)


def test_static_argnums_are_passed_to_jit():
    def reference(x, k):
        return jnp.tile(x, k)

    def args(rng, trial):
        return jnp.asarray(rng.standard_normal(trial + 2), jnp.float32), trial + 1

    what = compare_with_reference(reference, reference, args, trials=3, static_argnums=(1,))
    assert "also under jax.jit" in what
    with pytest.raises(CheckFailed, match="your function raised"):
        compare_with_reference(reference, reference, args, trials=3)  # k traced: fails


def test_cases_are_random_but_the_same_in_every_run():
    seen = []

    def spy(x):
        seen.append(np.asarray(x).copy())
        return jnp.maximum(x, 0)

    compare_with_reference(spy, reference_relu, relu_args, trials=4, jit=False)
    compare_with_reference(spy, reference_relu, relu_args, trials=4, jit=False)
    assert len(seen) == 8
    assert [s.shape for s in seen[:4]] == [(1,), (2, 3), (3,), (4, 3)]
    assert len({s.tobytes() for s in seen[:4]}) == 4  # each case its own draw
    # A second run sees the same inputs, so a verdict never changes between runs ...
    assert all(np.array_equal(a, b) for a, b in zip(seen[:4], seen[4:], strict=True))
    # ... and a checker that passes its own generator gets its own inputs.
    compare_with_reference(spy, reference_relu, relu_args, trials=4, jit=False,
                           rng=np.random.default_rng(1))
    assert not np.array_equal(seen[0], seen[8])


def test_call_student_says_where_and_what_was_raised():
    assert call_student("for x", lambda a, b: a + b, 1, 2) == 3
    with pytest.raises(CheckFailed) as failed:
        call_student(" for inputs of shape (2, 3)", lambda x: x @ x, jnp.ones((2, 3)))
    message = str(failed.value)
    assert message.startswith("for inputs of shape (2, 3), your function raised TypeError: ")
    assert message.endswith(".") and "\n" not in message
    # A blank exercise and a checker's own verdict pass through untouched.
    with pytest.raises(NotImplementedError):
        call_student("x", lambda: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(CheckFailed, match="^its own words$"):
        call_student("x", lambda: (_ for _ in ()).throw(CheckFailed("its own words")))


def test_tuple_outputs_are_compared_element_by_element():
    def reference(x):
        return x.sum(), jnp.maximum(x, 0)

    assert "matches" in compare_with_reference(reference, reference, relu_args, trials=2)
    with pytest.raises(CheckFailed, match=r"output \[1\]"):
        compare_with_reference(lambda x: (x.sum(), x), reference, relu_args, trials=2)
    with pytest.raises(CheckFailed, match="expected a tuple of 2 values"):
        compare_with_reference(lambda x: x.sum(), reference, relu_args, trials=2)


# ---------------------------------------------------------------------------- expect_*

def test_expect_array_checks_shape_then_dtype_and_returns_numpy():
    got = expect_array(jnp.ones((2, 3), jnp.float32), (2, 3), jnp.float32)
    assert isinstance(got, np.ndarray) and got.shape == (2, 3)
    with pytest.raises(CheckFailed, match=r"has shape \(3, 2\) but expected \(2, 3\)"):
        expect_array(jnp.ones((3, 2), jnp.int32), (2, 3), jnp.float32)
    with pytest.raises(CheckFailed, match="has dtype int32 but expected float32"):
        expect_array(jnp.ones((2, 3), jnp.int32), (2, 3), np.float32)
    with pytest.raises(CheckFailed, match="is a list, but an array of shape"):
        expect_array([[1.0]], (1, 1), np.float32, what="logits")


def test_expect_close_scalar_batched_and_exact_integers():
    expect_close(jnp.float32(2.0), 2.0)
    expect_close(3, 3.0000001)
    with pytest.raises(CheckFailed, match="is 2.5, but expected 2"):
        expect_close(2.5, 2.0)
    with pytest.raises(CheckFailed, match="single number"):
        expect_close(jnp.ones(1), 1.0)
    with pytest.raises(CheckFailed, match="single number"):
        expect_close(True, 1.0)

    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    expect_close(jnp.asarray(x) * (1 + 1e-7), x)
    bad = x.copy()
    bad[2, 1] += 0.1
    with pytest.raises(CheckFailed, match=r"in 1 of 12 entries; e.g. at index \(2, 1\)"):
        expect_close(bad, x)
    with pytest.raises(CheckFailed, match="differs"):
        expect_close(np.array([1, 2, 4], np.int32), np.array([1, 2, 3], np.int32), atol=5)
    expect_close(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))  # NaN where expected


def test_module_exports_what_lessons_use():
    for name in ("CheckFailed", "Hints", "compare_with_reference", "expect_array",
                 "expect_close", "run_check", "summarize_error", "Verdict", "Result"):
        assert name in exercises.__all__ and hasattr(exercises, name)
    assert jax.config.jax_enable_x64 is False  # the dtypes above assume 32-bit defaults
