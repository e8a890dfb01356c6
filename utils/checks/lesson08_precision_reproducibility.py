"""Exercise checkers of lesson 08_precision_reproducibility, with their reference solutions.

Each checker takes the student's function, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's function if it passed, else the reference from :mod:`utils.precision`). What a
checker says beyond the verdict comes from :data:`HINTS` (never a line of the solution).

- :func:`round_to_bfloat16`: float32 -> nearest bfloat16 value (ties to even) on the bits;
  checked bit for bit against ``ml_dtypes`` on random values of every magnitude, exact ties
  of both parities, values one bit either side of a tie, subnormals, +-0, +-inf, NaNs with
  payload bits and float32's largest values; under ``jax.jit`` and eagerly; no bfloat16
  inside (the exercise is the bits, not a cast). A FAILED line names a cause only when
  every wrong value fits it (all NaN inputs, all exact ties, all subnormals, or results that
  equal truncation or rounding half up throughout).
- :func:`relative_error`: ``||approx - exact|| / ||exact||`` in float64, on mixed dtypes
  (float16, bfloat16, float32, float64), relative differences down to 1e-12, values whose
  squares overflow float32 and float16, a scalar and a batch of one. A FAILED line names a
  cause only when the answer equals a known wrong formula on that input (the same formula in
  a narrow dtype, a mean of per-entry errors, a max norm, the wrong denominator).
- :func:`update_loss_scale`: one step of a dynamic loss scale, compared step by step with
  the rule over random and hand-made sequences of finite and non-finite steps (growth after
  ``period`` finite steps, periods from 1 to 2000, halving with a floor at 1, the count reset
  after growth and after an overflow), with Python bools eagerly and traced values under
  ``jax.jit``; new_scale float32, new_good_steps an integer scalar.
- :func:`worker_key`: the key of (epoch, step, worker), over a grid of 280 triples with
  indices from 0 to 2**31 - 1 (so every packing of the three numbers into one integer
  collides somewhere): typed keys of shape (), no key shared by two triples nor equal to the
  key given, the same key for the same arguments (eagerly, under ``jax.vmap`` over the
  grid and under ``jax.jit``), other keys for another key given.
- :func:`first_difference`: the first leaf where two pytrees differ bit for bit and its
  distance, with the NaN rules the lesson states: ``-0.0`` against ``0.0`` (distance 0), NaN
  against the same NaN (identical), NaNs in the same places beside a one-ulp change (the
  ulp), NaN against a number (NaN), NaN payloads (distance 0), inf against inf, shapes and
  dtypes that differ, bfloat16, integer and scalar leaves, ``nnx.State`` trees, and a
  ``ValueError`` for different structures.

Every random input comes from a fixed seed, so a verdict never changes between runs, and
no PASSED line holds a measured value.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from utils import precision
from utils.exercises import CheckFailed, Hints, expect_array, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = [
    "HINTS",
    "first_difference",
    "reference_first_difference",
    "reference_relative_error",
    "reference_round_to_bfloat16",
    "reference_update_loss_scale",
    "reference_worker_key",
    "relative_error",
    "round_to_bfloat16",
    "update_loss_scale",
    "worker_key",
]

reference_round_to_bfloat16 = precision.round_to_bfloat16
reference_relative_error = precision.relative_error
reference_update_loss_scale = precision.update_loss_scale
reference_worker_key = precision.worker_key
reference_first_difference = precision.first_difference

#: What each checker says beyond its verdict: NOT ATTEMPTED shows ``about``, a first FAILED
#: ``think``, later ones ``closer``. None of it is code from the solution.
HINTS: dict[str, Hints] = {
    "round_to_bfloat16": Hints(
        about=("This exercise rounds a float32 to the nearest bfloat16 with integer "
               "operations on its bits, as hardware does; section 1, 'Rounding to bfloat16, "
               "on the bits', walks through the recipe (ties to even, the carry into the "
               "exponent, NaNs kept apart)"),
        think=("Look at the failing value's two bfloat16 neighbours: which one is nearer, and "
               "on an exact tie, which one has a last kept bit of 0? What you add before the "
               "low half is dropped decides the direction"),
        closer=("Print the failing input with precision.bit_fields(value, jnp.float32): a "
                "result that never moves up truncates, one that moves up on every tie rounds "
                "half up, and a NaN whose low bits are set must not turn into an infinity"),
    ),
    "relative_error": Hints(
        about=("This exercise measures an error against a float64 reference without letting "
               "a narrow format spoil the measurement; section 1, 'How large are the "
               "rounding errors?', says why the difference and the norms must be float64"),
        think=("Where could a narrow dtype still take part: in the subtraction, in the "
               "squares inside the norm, or in the division? Each of them must happen after "
               "both inputs have become float64 NumPy arrays"),
        closer=("One number for the whole array: the Frobenius norm of the difference over "
                "the Frobenius norm of the exact array, over all entries whatever the shape"),
    ),
    "update_loss_scale": Hints(
        about=("This exercise writes the rule that adapts the loss scale during float16 "
               "training; section 3, 'Dynamic loss scaling', states it: skip and halve on "
               "overflow (never below 1), grow after period finite steps in a row"),
        think=("Replay the failing step by hand: was it finite, does it complete a run of "
               "period finite steps, and what happens to the count whenever the scale "
               "changes? Under jax.jit finite is a traced boolean: compute both outcomes and "
               "select one"),
        closer=("Write the three cases (an overflow; a finite step that completes the period; "
                "any other finite step) as a small table of new scale and new count, then turn "
                "each column into one selection"),
    ),
    "worker_key": Hints(
        about=("This exercise derives one key for every epoch, step and worker from a single "
               "key, so no key is ever used twice and the run can be repeated; section 4, "
               "'Random keys: one per purpose, none reused', introduces jax.random.fold_in"),
        think=("The FAILED line names two triples that got the same key: what did your "
               "derivation lose about them? Each of the three numbers must reach the key in a "
               "way that no other triple can reproduce, for any values up to 2**31 - 1"),
        closer=("Folding a number into a key gives a new key, and folding another number into "
                "that one gives another: a path down a tree, one level per index, cannot "
                "collide the way one packed integer can"),
    ),
    "first_difference": Hints(
        about=("This exercise compares two parameter trees bit for bit and reports where they "
               "first differ, which is how section 4 checks that two runs are identical; the "
               "text above the exercise states how shapes, dtypes, -0.0 and NaNs count"),
        think=("Equal values are not equal bits: 0.0 == -0.0 although the bits differ, and "
               "NaN != NaN although the bits may be the same. Decide 'identical' on shape, "
               "dtype and raw bytes; measure the distance with the NaN rules of the text"),
        closer=("Walk both trees in jax.tree_util order with their paths and compare the "
                "structures first. For the distance, equal numbers and NaN against NaN count "
                "0, and a NaN facing a number makes the whole distance NaN"),
    ),
}

_TRACER_ERRORS = (jax.errors.TracerBoolConversionError, jax.errors.ConcretizationTypeError,
                  jax.errors.TracerIntegerConversionError, jax.errors.TracerArrayConversionError)


# --------------------------------------------------------------------------------------
# round_to_bfloat16
# --------------------------------------------------------------------------------------

_SPECIAL_BITS = (
    0x00000000, 0x80000000,  # +0, -0
    0x7F800000, 0xFF800000,  # +-inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FC08001,  # NaNs
    0x7F7FFFFF, 0xFF7FFFFF,  # float32's largest: beyond bfloat16's, rounds to +-inf
    0x7F7F8000, 0x7F7F7FFF, 0x7F7E8000,  # a tie at the top (rounds to inf), just below, even
    0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000,  # ties next to +-1: to even (down, up)
    0x00008000, 0x00018000, 0x80008000, 0x00000001, 0x007FFFFF, 0x0000FFFF,  # subnormals
    0x007F8000, 0x007FFFFF,  # subnormal rounding up into the smallest normal
)


def _bf16_pool(rng: np.random.Generator) -> np.ndarray:
    """float32 bit patterns: every kind of value round_to_bfloat16 must get right."""
    n = 160
    magnitudes = rng.normal(size=n) * np.exp2(rng.uniform(-140, 127, size=n))
    random_bits = magnitudes.astype(np.float32).view(np.uint32)
    upper = rng.integers(0, 1 << 16, size=n, dtype=np.uint32)
    upper = np.where((upper & 0x7F80) == 0x7F80, upper & ~np.uint32(0x80), upper)  # finite
    upper = np.concatenate([upper & ~np.uint32(1), upper | np.uint32(1)])  # both parities
    ties = (upper << 16) | np.uint32(0x8000)
    near = np.concatenate([(upper << 16) | np.uint32(0x7FFF), (upper << 16) | np.uint32(0x8001)])
    sub = rng.integers(1, 1 << 23, size=40, dtype=np.uint32)
    sub |= rng.integers(0, 2, size=40, dtype=np.uint32) << 31
    sub_ties = (rng.integers(0, 1 << 7, size=20, dtype=np.uint32) << 16) | np.uint32(0x8000)
    pool = np.concatenate([random_bits, ties, near, sub, sub_ties,
                           np.array(_SPECIAL_BITS, np.uint32)]).astype(np.uint32)
    return pool[rng.permutation(pool.size)]


def _bf16_expected(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def _describe_bits(value: np.float32) -> str:
    bits = int(np.asarray(value, np.float32).view(np.uint32))
    low = bits & 0xFFFF
    if np.isnan(value):
        kind = "a NaN"
    elif np.isinf(value):
        kind = "infinity"
    elif (bits & 0x7F800000) == 0:
        kind = "a subnormal" if bits & 0x7FFFFFFF else "a zero"
    elif low == 0x8000:
        kind = "an exact tie between two bfloat16 values"
    else:
        kind = "a normal number"
    return f"{float(value)!r} (bits 0x{bits:08X}, {kind})"


def _bf16_cause(bits: np.ndarray, got_bits: np.ndarray, bad: np.ndarray,
                nan_in: np.ndarray) -> str:
    """A cause, named only when every wrong value (or every result) fits it."""
    finite_in = (bits & 0x7F800000) != 0x7F800000
    checkable = ~nan_in
    truncated = bits & np.uint32(0xFFFF0000)
    if np.all(nan_in[bad]):
        return (" Every wrong value is a NaN input that did not come back as a NaN: the "
                "bits of a NaN must not go through the rounding arithmetic.")
    if np.array_equal(got_bits[checkable], truncated[checkable]):
        return (" Every result has the input's upper 16 bits unchanged: that is truncation, "
                "which never rounds up to the nearer neighbour.")
    with np.errstate(over="ignore"):
        half_up = (bits + np.uint32(0x8000)) & np.uint32(0xFFFF0000)
    if np.array_equal(got_bits[checkable & finite_in], half_up[checkable & finite_in]):
        return (" Every result equals rounding half up: exact ties all went up, but a tie "
                "goes to the neighbour whose last kept bit is 0 (ties to even).")
    tie = ((bits & 0xFFFF) == 0x8000) & finite_in
    if np.all(tie[bad]):
        return (" Only exact ties are wrong: a tie goes to the neighbour whose last kept bit "
                "is 0 (ties to even).")
    subnormal = ((bits & 0x7F800000) == 0) & ((bits & 0x7FFFFFFF) != 0)
    if np.all(subnormal[bad]):
        return (" Only subnormal inputs are wrong: they round on the same bits as every other "
                "number, with no special case.")
    return ""


def _bf16_mismatch(x: np.ndarray, got: np.ndarray, expected: np.ndarray, how: str) -> None:
    x, got, expected = (np.ascontiguousarray(a).reshape(-1) for a in (x, got, expected))
    nan_in = np.isnan(x)
    bad = np.where(nan_in, ~np.isnan(got), got.view(np.uint32) != expected.view(np.uint32))
    if not bad.any():
        return
    i = int(np.argmax(bad))
    what = (f"{int(bad.sum())} of {bad.size} values are wrong{how}; e.g. for "
            f"{_describe_bits(x[i])} you returned {float(got[i])!r}, expected "
            f"{float(expected[i])!r}.")
    raise CheckFailed(what + _bf16_cause(x.view(np.uint32), got.view(np.uint32), bad, nan_in))


def _check_round_to_bfloat16(fn: Fn) -> str:
    rng = np.random.default_rng(20260801)
    pool = _bf16_pool(rng).view(np.float32)
    shapes = [(), (1,), (7,), (pool.size - 1 - 1 - 7 - 7 * 16,), (7, 16)]
    pieces, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        pieces.append(pool[start:start + size].reshape(shape))
        start += size
    pieces[3] = np.concatenate([pieces[3], np.array(_SPECIAL_BITS, np.uint32).view(np.float32)])
    everything = np.concatenate([p.reshape(-1) for p in pieces])
    jitted = jax.jit(fn)
    # All values in one call first, so a FAILED line sees every wrong value at once; then
    # the smallest shapes under jax.jit, and everything eagerly.
    ways = [(everything, " under jax.jit", jitted)]
    ways += [(p, " under jax.jit", jitted) for p in pieces if p.ndim == 0 or p.size == 1]
    ways += [(pieces[4], " under jax.jit", jitted), (everything, "", fn)]
    for x, how, f in ways:
        got = expect_array(f(jnp.asarray(x)), x.shape, np.float32,
                           f"the output for input shape {x.shape}{how}")
        _bf16_mismatch(x, got, _bf16_expected(x), how)
    jaxpr = str(jax.make_jaxpr(fn)(jnp.asarray(pieces[2])))
    if "bf16" in jaxpr:
        raise CheckFailed("the values are right, but your function converts to bfloat16: the "
                          "exercise is to round with integer operations on the bits (that "
                          "cast is what it is checked against).")
    return (f"bit for bit equal to ml_dtypes' rounding on {everything.size} values: ties of "
            "both parities, subnormals, +-0, +-inf, NaNs, float32's largest (to inf); shapes "
            "() to (7, 16), under jax.jit, and eagerly")


def round_to_bfloat16(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``round_to_bfloat16(x float32) -> float32 on the bfloat16 grid``."""
    return run_check("round_to_bfloat16", student_fn, reference_round_to_bfloat16,
                     _check_round_to_bfloat16, HINTS["round_to_bfloat16"], quiet=quiet)


# --------------------------------------------------------------------------------------
# relative_error
# --------------------------------------------------------------------------------------


def _relative_error_cases(rng: np.random.Generator) -> list[tuple[str, Any, Any]]:
    def normal(shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
        return rng.normal(size=shape) * scale

    a = normal((64,), 3.0)
    b = normal((5, 7))
    c = normal((3, 4, 2), 1e20)
    d = np.asarray(rng.normal() + 2.0)
    e = normal((1,))
    f = rng.uniform(2e4, 6e4, size=16) * rng.choice([-1.0, 1.0], size=16)
    g = normal((40,))
    return [
        ("float16 against float64", jnp.asarray(a, jnp.float16), a),
        ("bfloat16 against float32", jnp.asarray(b, jnp.bfloat16), b.astype(np.float32)),
        ("values of 1e20 differing by 1e-12 (float64)",
         c * (1 + 1e-12 * rng.normal(size=c.shape)), c),
        ("a scalar, float32 against float64", jnp.asarray(d, jnp.float32), d),
        ("batch of one, bfloat16 against float64", jnp.asarray(e, jnp.bfloat16), e),
        ("float16 values near 5e4 (their squares overflow float16)",
         jnp.asarray(f, jnp.float16), f * (1 + 1e-3 * rng.normal(size=16))),
        ("float32 against float64 (error ~1e-8)", np.asarray(g, np.float32), g),
    ]


def _known_wrong_formulas(approx: Any, exact: Any) -> list[tuple[str, float]]:
    """What common wrong answers return on one input, each with what it does wrong."""
    a = np.asarray(approx).astype(np.float64).ravel()
    e = np.asarray(exact).astype(np.float64).ravel()
    out = []
    with np.errstate(all="ignore"):
        out.append(("the mean of the entries' relative errors |a - e| / |e|, not the ratio of "
                    "two norms", float(np.mean(np.abs(a - e) / np.abs(e)))))
        out.append(("a max norm (largest |a - e| over largest |e|), not the Frobenius norm",
                    float(np.max(np.abs(a - e)) / np.max(np.abs(e)))))
        out.append(("divided by the norm of approx, not of exact",
                    float(np.linalg.norm(a - e) / np.linalg.norm(a))))
        for dtype in {np.asarray(approx).dtype, np.dtype(np.float32)}:
            if dtype == np.float64:
                continue
            an, en = np.asarray(approx).astype(dtype).ravel(), np.asarray(exact).astype(dtype)
            en = en.ravel()
            value = float(np.sqrt(np.sum((an - en) * (an - en), dtype=dtype))
                          / np.sqrt(np.sum(en * en, dtype=dtype)))
            out.append((f"the same formula computed in {np.dtype(dtype).name}, where the "
                        "difference rounds and the squares can overflow", value))
    return out


def _relative_distance(value: float, target: float) -> float:
    """|value - target| / |target|; 0 when both are the same non-finite value or both 0."""
    if not (np.isfinite(value) and np.isfinite(target)):
        same = (np.isnan(value) and np.isnan(target)) or value == target
        return 0.0 if same else float("inf")
    if target == 0:
        return 0.0 if value == 0 else float("inf")
    return abs(value - target) / abs(target)


def _check_relative_error(fn: Fn) -> str:
    rng = np.random.default_rng(20260802)
    cases = _relative_error_cases(rng)
    for what, approx, exact in cases:
        expected = reference_relative_error(approx, exact)
        got = fn(approx, exact)
        if isinstance(got, bool) or np.ndim(got) != 0 or not np.isrealobj(got):
            raise CheckFailed(f"for {what} it returned {type(got).__name__} "
                              f"{np.shape(got)}, but one number (a float) was expected.")
        value = float(np.asarray(got))
        if np.isclose(value, expected, rtol=1e-6, atol=0.0):
            continue
        cause = ""
        off = _relative_distance(value, expected)
        candidates = sorted((_relative_distance(value, wrong), description)
                            for description, wrong in _known_wrong_formulas(approx, exact))
        if candidates and candidates[0][0] <= min(1e-3, 0.1 * off):
            cause = f" That is what {candidates[0][1]} gives on this input."
        raise CheckFailed(f"for {what} it returned {value:.6g}, expected {expected:.6g} "
                          f"(||approx - exact|| / ||exact||, Frobenius norm).{cause}")
    return (f"matches ||approx - exact|| / ||exact|| in float64 on {len(cases)} cases: "
            "float16, bfloat16, float32 and float64 inputs, shapes () to (3, 4, 2), relative "
            "differences of 1e-12, values whose squares overflow float32 and float16")


def relative_error(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``relative_error(approx, exact) -> float``."""
    return run_check("relative_error", student_fn, reference_relative_error,
                     _check_relative_error, HINTS["relative_error"], quiet=quiet)


# --------------------------------------------------------------------------------------
# update_loss_scale
# --------------------------------------------------------------------------------------


def _loss_scale_cases(rng: np.random.Generator) -> list[tuple[int, float, int, list[bool]]]:
    """(period, initial scale, initial good_steps, finite flags) per case."""
    cases = [
        # exactly `period` finite steps: grows once; then a non-finite step: halves, resets
        (3, 2.0**15, 0, [True, True, True, True, False, True, True, True]),
        # a non-finite step just before the growth would have happened: the count restarts
        (5, 1024.0, 4, [False, True, True, True, True, True, True]),
        # at the floor: halving never goes below 1
        (2, 1.0, 0, [False, False, True, True, False, True]),
        (1, 96.0, 0, [True, True, False, True, False, False, True]),  # grows every step
        (2, 3.0, 1, [False, False, False, True, True, True]),  # 3 -> 1.5 -> 1 (floor) -> ...
        # NVIDIA's usual period, one step before growth; a large scale (2**100 -> 2**101)
        (2000, 2.0**100, 1998, [True, True, True, False, True]),
    ]
    for period, p_finite in ((5, 0.9), (2, 0.6), (3, 0.8)):
        flags = list(rng.random(60) < p_finite)
        start = float(2.0 ** int(rng.integers(0, 17)))
        cases.append((period, start, int(rng.integers(0, period)), flags))
    return cases


def _as_scalars(out: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise CheckFailed(f"{where} it returned {type(out).__name__}; expected a tuple "
                          "(new_scale, new_good_steps).")
    scale = expect_array(out[0], (), np.float32, f"new_scale {where}")
    steps = out[1]
    if not hasattr(steps, "dtype") or tuple(np.shape(steps)) != () or not np.issubdtype(
            steps.dtype, np.integer):
        raise CheckFailed(f"new_good_steps {where} should be an integer scalar array (int32), "
                          f"got {type(steps).__name__} {getattr(steps, 'dtype', '')}.")
    return scale, np.asarray(steps)


def _loss_scale_rule(period: int, scale: float, good: int, finite: bool) -> str:
    if not finite:
        return (f"a non-finite step divides the scale by 2 (never below 1: "
                f"{scale:g} -> {max(scale / 2, 1.0):g}) and restarts the count at 0")
    if good + 1 >= period:
        return (f"this is the {period}-th finite step in a row (period {period}): the scale "
                "doubles and the count restarts at 0")
    return "a finite step before the period is reached adds 1 to the count and keeps the scale"


def _python_loss_scale(scale: float, good: int, finite: bool, period: int) -> tuple[float, int]:
    """The rule in plain Python: the checker's own reference, independent of JAX."""
    if not finite:
        return max(scale / 2, 1.0), 0
    if good + 1 >= period:
        return scale * 2, 0
    return scale, good + 1


def _run_loss_scale(fn: Fn, case: tuple[int, float, int, list[bool]], how: str) -> None:
    period, scale, good, flags = case
    for step, finite in enumerate(flags):
        finite = bool(finite)
        where = (f"at step {step + 1} (period {period}, scale {scale:g}, good_steps {good}, "
                 f"finite={finite}){how}")
        if how:
            out = fn(jnp.float32(scale), jnp.int32(good), jnp.asarray(finite), period)
        else:
            out = fn(jnp.float32(scale), jnp.int32(good), finite, period)
        got_scale, got_good = _as_scalars(out, where)
        want_scale, want_good = _python_loss_scale(scale, good, finite, period)
        if float(got_scale) != want_scale or int(got_good) != want_good:
            raise CheckFailed(
                f"{where}: returned (scale {float(got_scale):g}, good_steps {int(got_good)}), "
                f"expected ({want_scale:g}, {want_good}): "
                f"{_loss_scale_rule(period, scale, good, finite)}.")
        scale, good = want_scale, want_good  # go on from the right state


def _check_update_loss_scale(fn: Fn) -> str:
    cases = _loss_scale_cases(np.random.default_rng(20260803))
    _run_loss_scale(fn, cases[0], "")  # eagerly, with Python bools
    steps = len(cases[0][3])
    jitted = jax.jit(fn, static_argnums=3)  # period is a Python int, as in the train step
    for case in cases:
        try:
            _run_loss_scale(jitted, case, " under jax.jit")
        except _TRACER_ERRORS as error:
            raise CheckFailed(
                "it works with Python bools but not under jax.jit, where finite, scale and "
                f"good_steps are traced ({summarize_error(error, 120)}).") from None
        steps += len(case[3])
    return (f"same scale and count as the rule at each of {steps} steps of "
            f"{len(cases)} sequences (periods 1 to 2000, growth, halving to the floor of 1, "
            "resets); with Python bools eagerly and traced under jax.jit")


def update_loss_scale(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``update_loss_scale(scale, good_steps, finite, period) -> (scale, good_steps)``."""
    return run_check("update_loss_scale", student_fn, reference_update_loss_scale,
                     _check_update_loss_scale, HINTS["update_loss_scale"], quiet=quiet)


# --------------------------------------------------------------------------------------
# worker_key
# --------------------------------------------------------------------------------------

#: Index values of the grid: small ones, and values where packings of several indices into
#: one integer (products, shifts, sums) collide or overflow int32.
_EPOCHS = (0, 1, 2, 1000, 2**31 - 1)
_STEPS = (0, 1, 2, 256, 1000, 65536, 2**31 - 1)
_WORKERS = (0, 1, 2, 10, 256, 1000, 4096, 2**31 - 1)


def _key_rows(keys: Any, shape: tuple[int, ...], what: str) -> list[bytes]:
    if not isinstance(keys, jax.Array) or not jax.dtypes.issubdtype(keys.dtype,
                                                                       jax.dtypes.prng_key):
        raise CheckFailed(f"{what} is a {type(keys).__name__} "
                          f"{getattr(keys, 'dtype', '')}; expected a typed key (what "
                          "jax.random.fold_in returns for a jax.random.key).")
    if tuple(keys.shape) != shape:
        raise CheckFailed(f"{what} has shape {tuple(keys.shape)}, expected {shape}.")
    data = np.asarray(jax.random.key_data(keys)).reshape(int(np.prod(shape)), -1)
    return [row.tobytes() for row in data]


def _grid_keys(batched: Fn, key: Any, triples: np.ndarray, how: str) -> list[bytes]:
    """Keys for every triple, through ``batched`` = jax.vmap(fn): traced int32 indices."""
    columns = [jnp.asarray(triples[:, i], jnp.int32) for i in range(3)]
    try:
        keys = batched(key, *columns)
    except _TRACER_ERRORS as error:
        raise CheckFailed(
            f"{how}, where epoch, step and worker are traced int32 values, your function "
            f"raised {summarize_error(error, 200)}") from None
    return _key_rows(keys, (len(triples),), f"the keys returned {how}")


def _check_worker_key(fn: Fn) -> str:
    triples = np.array(list(itertools.product(_EPOCHS, _STEPS, _WORKERS)), np.int64)
    listed = list(map(tuple, triples.tolist()))
    key = jax.random.key(20260804)
    given = _key_rows(key, (), "the key")[0]
    eager = {}
    for t in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (2, 65536, 4096)]:
        eager[t] = _key_rows(fn(key, *t), (), f"the key for (epoch, step, worker) = {t}")[0]
        if eager[t] == given:
            raise CheckFailed(f"for (epoch, step, worker) = {t} it returned the key it was "
                              "given: a key that has been used to derive others must not be "
                              "used again.")
    how = "under jax.vmap"
    batched = jax.vmap(fn, in_axes=(None, 0, 0, 0))
    rows = _grid_keys(batched, key, triples, how)
    seen: dict[bytes, tuple[int, ...]] = {}
    for t, row in zip(listed, rows, strict=True):
        if row == given:
            raise CheckFailed(f"{how}, (epoch, step, worker) = {t} got the key it was given: "
                              "a key that has been used to derive others must not be used "
                              "again.")
        if row in seen:
            raise CheckFailed(f"{how}, (epoch, step, worker) = {seen[row]} and {t} got the same "
                              f"key, so two of {len(triples)} triples would draw the same "
                              "random numbers.")
        seen[row] = t
    index = {t: i for i, t in enumerate(listed)}
    jitted = jax.jit(fn)
    for t, row in eager.items():
        where = f"for (epoch, step, worker) = {t}"
        if rows[index[t]] != row:
            raise CheckFailed(f"{where} it gave one key eagerly and another {how}: derive the "
                              "key from the arguments alone.")
        try:
            traced = jitted(key, *(jnp.int32(i) for i in t))
        except _TRACER_ERRORS as error:
            raise CheckFailed(f"under jax.jit, where epoch, step and worker are traced int32 "
                              f"values, your function raised {summarize_error(error, 200)}"
                              ) from None
        if _key_rows(traced, (), f"the key returned under jax.jit {where}")[0] != row:
            raise CheckFailed(f"{where} it gave one key eagerly and another under jax.jit: "
                              "derive the key from the arguments alone.")
    if _grid_keys(batched, key, triples, how) != rows:
        raise CheckFailed("called twice with the same key and the same triples, it gave "
                          "different keys: derive the key from the arguments alone (no other "
                          "randomness, no counter).")
    other = _grid_keys(batched, jax.random.key(20260805), triples, how)
    shared = [t for t, a, b in zip(listed, rows, other, strict=True) if a == b]
    if shared:
        raise CheckFailed(f"two different keys gave the same key for (epoch, step, worker) = "
                          f"{shared[0]} ({len(shared)} of {len(triples)} triples): derive it "
                          "from the key you are given.")
    return (f"typed keys, all {len(triples)} different over a grid of epochs, steps and workers "
            "from 0 to 2**31 - 1, never the key given, the same for the same arguments "
            "(eagerly, under jax.vmap and under jax.jit), different for another key")


def worker_key(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``worker_key(key, epoch, step, worker) -> key``."""
    return run_check("worker_key", student_fn, reference_worker_key, _check_worker_key,
                     HINTS["worker_key"], quiet=quiet)


# --------------------------------------------------------------------------------------
# first_difference
# --------------------------------------------------------------------------------------


def _first_difference_cases(rng: np.random.Generator) -> list[tuple[str, Any, Any]]:
    from flax import nnx

    from utils import training

    def tree() -> dict[str, Any]:
        w = rng.normal(size=(4, 3)).astype(np.float32)
        w[1, 2] = np.nan
        return {"layer": {"w": w, "b": np.zeros(3, np.float32)},
                "scale": np.float32(rng.normal()),
                "steps": [np.int32(rng.integers(0, 100)), rng.normal(size=(1,)).astype(
                    np.float32)],
                "half": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16)}

    def copy(t: Any) -> Any:
        return jax.tree.map(lambda x: np.array(x, copy=True), t)

    base = tree()
    cases: list[tuple[str, Any, Any]] = [("identical trees with NaNs in the same places",
                                          base, copy(base))]
    signed = copy(base)
    signed["layer"]["b"][1] = -0.0
    cases.append(("0.0 against -0.0 (equal as numbers, not bit for bit)", base, signed))
    ulp = copy(base)
    ulp["layer"]["w"][0, 0] = np.nextafter(ulp["layer"]["w"][0, 0], np.float32(np.inf))
    cases.append(("a one-ulp change in a leaf that also holds a NaN in the same place in both",
                  base, ulp))
    nan_vs_number = copy(base)
    nan_vs_number["layer"]["w"][1, 2] = 1.0
    cases.append(("a NaN in one tree where the other has a number", base, nan_vs_number))
    payload = copy(base)
    payload["layer"]["w"][1:2, 2:3].view(np.uint32)[...] = 0x7FC00001
    cases.append(("two NaNs with different bits in the same place", base, payload))
    later = copy(base)
    later["steps"][1] = np.nextafter(later["steps"][1], np.float32(np.inf))
    later["half"][0] = ml_dtypes.bfloat16(float(later["half"][0]) * 2 + 1)
    cases.append(("two leaves changed (the first by a single ulp)", base, later))
    half = copy(base)
    half["half"][3] = ml_dtypes.bfloat16(float(half["half"][3]) + 1.0)
    cases.append(("a bfloat16 leaf changed", base, half))
    ints = copy(base)
    ints["steps"][0] = np.int32(ints["steps"][0] + 3)
    cases.append(("an integer leaf changed", base, ints))
    scalar = copy(base)
    scalar["scale"] = np.float32(-scalar["scale"])
    cases.append(("a scalar leaf changed", base, scalar))
    dtype = copy(base)
    dtype["layer"]["b"] = dtype["layer"]["b"].astype(np.float16)
    cases.append(("a leaf of another dtype, same values", base, dtype))
    shape = copy(base)
    shape["steps"][1] = np.zeros((2,), np.float32)
    cases.append(("a leaf of another shape", base, shape))
    infs = {"x": np.array([np.inf, -np.inf, 1.0], np.float32)}
    inf_changed = {"x": np.array([np.inf, np.inf, 1.0], np.float32)}
    cases.append(("inf against inf, and -inf against inf", infs, inf_changed))
    state_a = nnx.state(training.MLP(6, 5, 3, rngs=nnx.Rngs(1)), nnx.Param)
    state_b = nnx.state(training.MLP(6, 5, 3, rngs=nnx.Rngs(2)), nnx.Param)
    cases.append(("nnx.State of two MLPs with different seeds (equal zero biases first)",
                  state_a, state_b))
    same_b = nnx.state(training.MLP(6, 5, 3, rngs=nnx.Rngs(1)), nnx.Param)
    cases.append(("nnx.State of two MLPs with the same seed", state_a, same_b))
    return cases


def _same_distance(got: float, expected: float) -> bool:
    if np.isnan(expected) or np.isnan(got):
        return bool(np.isnan(expected) and np.isnan(got))
    return bool(np.isclose(got, expected, rtol=1e-9, atol=0.0))


def _check_first_difference(fn: Fn) -> str:
    cases = _first_difference_cases(np.random.default_rng(20260805))
    for what, a, b in cases:
        expected = reference_first_difference(a, b)
        got = fn(a, b)
        if expected is None:
            if got is not None:
                raise CheckFailed(f"for {what} it returned {got!r}, expected None (the trees are "
                                  "identical bit for bit).")
            continue
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise CheckFailed(f"for {what} it returned {got!r}; expected a tuple (path, "
                              f"distance) such as {expected!r}.")
        path, diff = got
        if path != expected[0]:
            raise CheckFailed(f"for {what} it returned the path {path!r}, expected "
                              f"{expected[0]!r}: the first differing leaf in jax.tree_util "
                              "order, named with jax.tree_util.keystr(path, simple=True, "
                              "separator='/').")
        try:
            diff = float(diff)
        except (TypeError, ValueError):
            raise CheckFailed(f"for {what} the distance is {diff!r}, not a number.") from None
        if not _same_distance(diff, expected[1]):
            raise CheckFailed(f"for {what} the distance is {diff!r}, expected {expected[1]!r} "
                              "(the largest |a - b| over that leaf in float64, with the NaN "
                              "rules stated above the exercise).")
    a, b = cases[0][1], {"other": cases[0][1]["layer"]}
    try:
        got = fn(a, b)
    except ValueError:
        pass
    else:
        raise CheckFailed(f"for two trees of different structures it returned {got!r}; raise a "
                          "ValueError that says the structures differ.")
    return (f"right on {len(cases)} pairs of trees (-0.0 against 0.0, NaNs in the same places, "
            "NaN against a number, NaN payloads, inf, one-ulp changes, other shapes and dtypes, "
            "bfloat16, integer, scalar and nnx.State leaves) and a ValueError for different "
            "structures")


def first_difference(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``first_difference(tree_a, tree_b) -> None | (path, distance)``."""
    return run_check("first_difference", student_fn, reference_first_difference,
                     _check_first_difference, HINTS["first_difference"], quiet=quiet)
