"""Exercise checkers of lesson 08_precision_reproducibility, with their reference solutions.

Each checker takes the student's function, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's function if it passed, else the reference from :mod:`utils.precision`).

- :func:`round_to_bfloat16`: float32 -> nearest bfloat16 value (ties to even) on the bits;
  checked bit for bit against ``ml_dtypes`` on random values of every magnitude, exact ties
  of both parities, values one bit either side of a tie, subnormals, +-0, +-inf, NaNs with
  payload bits and float32's largest values; under ``jax.jit`` and eagerly; no bfloat16
  inside (the exercise is the bits, not a cast).
- :func:`relative_error`: ``||approx - exact|| / ||exact||`` in float64, on mixed dtypes
  (float16, bfloat16, float32, float64), relative differences down to 1e-12 and values
  whose squares overflow float32 and float16.
- :func:`update_loss_scale`: one step of a dynamic loss scale, compared step by step with
  the reference over random and hand-made sequences of finite and non-finite steps
  (growth after ``period`` finite steps, halving with a floor at 1, the count reset),
  with Python bools eagerly and traced values under ``jax.jit``.
- :func:`split_for_workers`: keys for K workers: typed keys, none reused (within a round,
  across rounds, or the key given), deterministic, depending on the key, under ``jax.jit``.
- :func:`first_difference`: the first leaf where two pytrees differ bit for bit and its
  largest absolute difference: ``-0.0`` against ``0.0``, equal NaNs, one-ulp changes,
  bfloat16, integer and scalar leaves, ``nnx.State`` trees, a clear ``ValueError`` for
  different structures.

Every random input comes from a fixed seed, so a verdict never changes between runs, and
no PASSED line holds a measured value.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from utils import precision
from utils.exercises import CheckFailed, expect_array, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = [
    "first_difference",
    "reference_first_difference",
    "reference_relative_error",
    "reference_round_to_bfloat16",
    "reference_split_for_workers",
    "reference_update_loss_scale",
    "relative_error",
    "round_to_bfloat16",
    "split_for_workers",
    "update_loss_scale",
]

reference_round_to_bfloat16 = precision.round_to_bfloat16
reference_relative_error = precision.relative_error
reference_update_loss_scale = precision.update_loss_scale
reference_split_for_workers = precision.split_for_workers
reference_first_difference = precision.first_difference

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


def _bf16_mismatch(x: np.ndarray, got: np.ndarray, expected: np.ndarray, how: str) -> None:
    x, got, expected = (a.reshape(-1) for a in (x, got, expected))
    nan_in = np.isnan(x)
    bad = np.where(nan_in, ~np.isnan(got),
                   got.view(np.uint32) != expected.view(np.uint32))
    if not bad.any():
        return
    i = int(np.argmax(bad))
    what = (f"{int(bad.sum())} of {bad.size} values are wrong{how}; e.g. for "
            f"{_describe_bits(x[i])} you returned {float(got[i])!r}, expected "
            f"{float(expected[i])!r}.")
    xi = int(x[i:i + 1].view(np.uint32)[0])
    if nan_in[i]:
        what += (" A NaN must stay a NaN: adding to the bits of a NaN whose low bits are set "
                 "can carry into the exponent; handle NaNs apart with jnp.where.")
    elif (xi & 0xFFFF) == 0x8000 and (xi & 0x7F800000) != 0x7F800000:
        what += (" An exact tie rounds to the neighbour whose last kept bit is 0 (ties to "
                 "even): add 0x7FFF plus that bit, not 0x8000.")
    elif (xi & 0xFFFF) and got[i:i + 1].view(np.uint32)[0] == xi & 0xFFFF0000:
        what += " That is truncation: round to the nearest value instead."
    raise CheckFailed(what)


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
    jitted = jax.jit(fn)
    for i, x in enumerate(pieces):
        expected = _bf16_expected(x)
        ways = [(" under jax.jit", jitted)] + ([("", fn)] if i == 3 else [])
        for how, f in ways:
            got = expect_array(f(jnp.asarray(x)), x.shape, np.float32,
                               f"the output for input shape {x.shape}{how}")
            _bf16_mismatch(x, got, expected, how)
    jaxpr = str(jax.make_jaxpr(fn)(jnp.asarray(pieces[2])))
    if "bf16" in jaxpr:
        raise CheckFailed("the values are right, but your function converts to bfloat16: the "
                          "exercise is to round with integer operations on the bits (that "
                          "cast is what it is checked against).")
    return (f"bit for bit equal to ml_dtypes' rounding on {pool.size + len(_SPECIAL_BITS)} "
            "values: ties of both parities, subnormals, +-0, +-inf, NaNs, float32's largest "
            "(to inf); shapes () to (7, 16), under jax.jit, and eagerly")


def round_to_bfloat16(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``round_to_bfloat16(x float32) -> float32 on the bfloat16 grid``."""
    return run_check(
        "round_to_bfloat16", student_fn, reference_round_to_bfloat16, _check_round_to_bfloat16,
        "bits = jax.lax.bitcast_convert_type(x, jnp.uint32); add 0x7FFF plus bit 16 of bits "
        "(ties to even), clear the low 16 bits with & jnp.uint32(0xFFFF0000), convert back, "
        "and keep NaNs with jnp.where(jnp.isnan(x), x, rounded).",
        quiet=quiet,
    )


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
        if not np.isclose(value, expected, rtol=1e-6, atol=0.0):
            hint = ""
            if value == 0.0 or not np.isfinite(value):
                hint = (" Convert both arrays to float64 NumPy arrays before subtracting and "
                        "squaring: in a narrow format the difference rounds to 0 or the "
                        "squares overflow.")
            raise CheckFailed(f"for {what} it returned {value:.6g}, expected {expected:.6g} "
                              f"(||approx - exact|| / ||exact||, Frobenius norm).{hint}")
    return (f"matches ||approx - exact|| / ||exact|| in float64 on {len(cases)} cases: "
            "float16, bfloat16, float32 and float64 inputs, shapes () to (3, 4, 2), relative "
            "differences of 1e-12, values whose squares overflow float32 and float16")


def relative_error(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``relative_error(approx, exact) -> float``."""
    return run_check(
        "relative_error", student_fn, reference_relative_error, _check_relative_error,
        "a = np.asarray(approx).astype(np.float64), likewise exact; return "
        "float(np.linalg.norm(a - e) / np.linalg.norm(e)) (ravel first for more than 2 dims).",
        quiet=quiet,
    )


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
    ]
    for period, p_finite in ((5, 0.9), (2, 0.6), (3, 0.8), (50, 0.98)):
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
                f"good_steps are traced ({summarize_error(error, 80)}): choose with "
                "jnp.where(finite, ..., ...) instead of a Python if.") from None
        steps += len(case[3])
    return (f"same scale and count as the rule at each of {steps} steps of "
            f"{len(cases)} sequences (periods 1 to 50, growth, halving to the floor of 1, "
            "resets); with Python bools eagerly and traced under jax.jit")


def update_loss_scale(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``update_loss_scale(scale, good_steps, finite, period) -> (scale, good_steps)``."""
    return run_check(
        "update_loss_scale", student_fn, reference_update_loss_scale, _check_update_loss_scale,
        "grow = good_steps + 1 >= period; new scale jnp.where(finite, jnp.where(grow, scale * 2, "
        "scale), jnp.maximum(scale / 2, 1.0)); new count jnp.where(finite & ~grow, "
        "good_steps + 1, 0).",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------
# split_for_workers
# --------------------------------------------------------------------------------------


def _key_rows(keys: Any, shape: tuple[int, ...], what: str) -> list[bytes]:
    if not isinstance(keys, jax.Array) or not jax.dtypes.issubdtype(keys.dtype,
                                                                       jax.dtypes.prng_key):
        raise CheckFailed(f"{what} is a {type(keys).__name__} "
                          f"{getattr(keys, 'dtype', '')}; expected typed keys (what "
                          "jax.random.split returns for a jax.random.key).")
    if tuple(keys.shape) != shape:
        raise CheckFailed(f"{what} has shape {tuple(keys.shape)}, expected {shape}.")
    data = np.asarray(jax.random.key_data(keys)).reshape(int(np.prod(shape)), -1)
    return [row.tobytes() for row in data]


def _split_round(fn: Fn, key: Any, k: int, how: str) -> tuple[Any, list[bytes]]:
    out = fn(key, k)
    where = f"for num_workers={k}{how}"
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise CheckFailed(f"{where} it returned {type(out).__name__}; expected a tuple "
                          "(next_key, worker_keys).")
    next_key, workers = out
    rows = _key_rows(next_key, (), f"next_key {where}") + _key_rows(
        workers, (k,), f"worker_keys {where}")
    given = _key_rows(key, (), "the key")[0]
    if given in rows:
        which = "next_key" if rows[0] == given else "a worker key"
        raise CheckFailed(f"{where}, {which} is the key you were given: a key that has been "
                          "split must not be used again. Split it into num_workers + 1 new keys.")
    if len(set(rows)) != len(rows):
        raise CheckFailed(f"{where}, two of the keys returned are the same: every worker (and "
                          "next_key) needs its own key. Split once, into num_workers + 1 keys.")
    return next_key, rows


def _check_split_for_workers(fn: Fn) -> str:
    seeds = np.random.default_rng(20260804).integers(0, 2**31, size=4)
    rounds = 3
    for seed, k in zip(seeds, (1, 2, 5, 64), strict=True):
        jitted = jax.jit(fn, static_argnums=1)
        ways = [("", fn)] + ([(" under jax.jit", jitted)] if k in (2, 64) else [])
        for how, f in ways:
            key, seen = jax.random.key(int(seed)), []
            for _ in range(rounds):
                key, rows = _split_round(f, key, k, how)
                seen += rows
            if len(set(seen)) != len(seen):
                raise CheckFailed(f"for num_workers={k}{how}, a key came back again in a later "
                                  "round (next_key fed back in): next_key must be a new key, "
                                  "not the one you were given.")
            again = _split_round(f, jax.random.key(int(seed)), k, how)[1]
            if again != seen[: k + 1]:
                raise CheckFailed(f"for num_workers={k}{how}, the same key gave different keys: "
                                  "derive them from the key only (no other randomness).")
        other = _split_round(fn, jax.random.key(int(seed) + 1), k, "")[1]
        if set(other) & set(seen):
            raise CheckFailed(f"for num_workers={k}, two different keys gave the same worker "
                              "keys: derive them from the key you are given.")
    return (f"typed keys, all distinct over {rounds} rounds for 1, 2, 5 and 64 workers, never "
            "the key given, the same for the same key, different for another key; eagerly, "
            "and under jax.jit")


def split_for_workers(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``split_for_workers(key, num_workers) -> (next_key, worker_keys)``."""
    return run_check(
        "split_for_workers", student_fn, reference_split_for_workers, _check_split_for_workers,
        "keys = jax.random.split(key, num_workers + 1); return keys[0], keys[1:].",
        quiet=quiet,
    )


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
    later = copy(base)
    later["steps"][1] = np.nextafter(later["steps"][1], np.float32(np.inf))
    later["layer"]["w"][0, 0] += np.float32(0.5)
    cases.append(("two leaves changed (one by a single ulp)", base, later))
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
    state_a = nnx.state(training.MLP(6, 5, 3, rngs=nnx.Rngs(1)), nnx.Param)
    state_b = nnx.state(training.MLP(6, 5, 3, rngs=nnx.Rngs(2)), nnx.Param)
    cases.append(("nnx.State of two MLPs with different seeds (equal zero biases first)",
                  state_a, state_b))
    same_b = nnx.state(training.MLP(6, 5, 3, rngs=nnx.Rngs(1)), nnx.Param)
    cases.append(("nnx.State of two MLPs with the same seed", state_a, same_b))
    return cases


def _check_first_difference(fn: Fn) -> str:
    cases = _first_difference_cases(np.random.default_rng(20260805))
    for what, a, b in cases:
        expected = reference_first_difference(a, b)
        got = fn(a, b)
        if expected is None:
            if got is not None:
                raise CheckFailed(f"for {what} it returned {got!r}, expected None (identical "
                                  "bit for bit: compare the bytes, so that a NaN equals itself).")
            continue
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise CheckFailed(f"for {what} it returned {got!r}; expected a tuple (path, "
                              f"max_abs_diff) such as {expected!r}.")
        path, diff = got
        if path != expected[0]:
            raise CheckFailed(f"for {what} it returned the path {path!r}, expected "
                              f"{expected[0]!r}: the first differing leaf in jax.tree_util "
                              "order, named with jax.tree_util.keystr(path, simple=True, "
                              "separator='/').")
        try:
            diff = float(diff)
        except (TypeError, ValueError):
            raise CheckFailed(f"for {what} max_abs_diff is {diff!r}, not a number.") from None
        if not np.isclose(diff, expected[1], rtol=1e-9, atol=0.0, equal_nan=True):
            raise CheckFailed(f"for {what} max_abs_diff is {diff!r}, expected {expected[1]!r} "
                              "(the largest |a - b| over that leaf, in float64).")
    a, b = cases[0][1], {"other": cases[0][1]["layer"]}
    try:
        got = fn(a, b)
    except ValueError:
        pass
    else:
        raise CheckFailed(f"for two trees of different structures it returned {got!r}; raise a "
                          "ValueError that says the structures differ.")
    return (f"right on {len(cases)} pairs of trees (-0.0 against 0.0, equal NaNs, one-ulp and "
            "later changes, bfloat16, integer, scalar and nnx.State leaves) and a ValueError "
            "for different structures")


def first_difference(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``first_difference(tree_a, tree_b) -> None | (path, max_abs_diff)``."""
    return run_check(
        "first_difference", student_fn, reference_first_difference, _check_first_difference,
        "flatten both with jax.tree_util.tree_flatten_with_path, raise ValueError if the "
        "structures differ; for each pair of leaves (as np.asarray) compare shape, dtype and "
        "tobytes(); at the first difference return (keystr(path, simple=True, separator='/'), "
        "max |a - b| in float64).",
        quiet=quiet,
    )
