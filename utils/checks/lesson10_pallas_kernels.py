"""Exercise checkers of lesson 10_pallas_kernels, with their reference solutions.

Each checker takes the student's answer, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's answer if it passed, else the reference from :mod:`utils.kernels`).

Every kernel runs in Pallas's interpret mode on small arrays whose shapes are drawn from a
fixed seed as whole multiples of the block sizes the checker chooses (several block sizes,
so a correct kernel passes with any of them; each message names the shape, the blocks and
the grid). Interpret mode starts every output block as NaN, so a forgotten reset shows.
On a mismatch the line gives the number of wrong entries and the worst one: its index, its
block, what came back and what was expected; a cause follows only when a further run (or
a comparison with what the mistake would give) established it. Matrix products run at full
float32 precision (``jax.default_matmul_precision``), so the tolerances hold on GPUs with
TF32 too.

- :func:`bias_relu` (the launch: grid and ``BlockSpec``s): ``relu(x + b)`` within 1e-6 for
  4 shapes with grids of 1 to 4 blocks per axis and unequal sides, blocks 8x8 to 16x32.
  Also: the function launches one ``pallas_call`` whose every grid step maps to blocks
  inside the arrays (interpret mode hides a grid one step too long: the extra program's
  blocks are clamped back onto the last one), and unwritten output blocks are named.
- :func:`matmul_kernel` (the body of the tiled matmul): against ``x @ y`` exactly, on
  integer-valued inputs, for 4 shapes, grids up to 4 blocks per axis, blocks 4 to 16; names
  a missing reset, a reset on the wrong grid axis, and a product assigned instead of added.
- :func:`row_sum` (launch and kernel of a reduction over column blocks): exact row sums for
  4 shapes; the column blocks must be the last grid axis (an output block visited again
  after the grid moved on is rejected: on hardware its first sum was already written back),
  no grid step outside the arrays; causes named as for the matmul.
- :func:`softmax_kernel` (whole rows per block): against ``jax.nn.softmax`` within 1e-5
  relative, 1e-7 absolute, on rows of ordinary values and of extreme ones (values in the
  thousands, rows all +10000 or all -10000), 1 to 6 row blocks; names an unstable softmax
  (right on ordinary rows, not on extreme ones) and rows that do not sum to 1.
- :func:`logsumexp_kernel` (online, over column blocks): against ``jax.nn.logsumexp``
  within 1e-5 relative and absolute on the same kinds of rows, 1 to 4 column blocks; names
  a missing rescale of the running sum (right with one column block, wrong with several),
  a missing start, a start on the wrong grid axis, and overflow.
- :func:`attention_kernel` (online softmax over key blocks: flash attention's idea):
  against ``softmax(q k^T / sqrt(d)) v`` within 1e-4 relative, 1e-5 absolute, for 4 shapes
  (1 to 4 key blocks, Lq != Lk, d != dv), also with scores in the hundreds; causes named as
  for ``logsumexp_kernel``.
- :func:`matmul_looped_kernel` (the GPU-shaped matmul: a loop over the contraction inside
  the program): against ``x @ y`` exactly for 4 shapes (1 to 4 slices); names a loop that
  reads past the end of its block (interpret mode clamps such a read back onto the last
  slice, so it adds that slice twice; on a GPU it reads whatever lies beyond), a loop one
  slice short, and overlapping slices.

Interpret mode also clamps a read of a whole block's size at an offset (a Ref indexed with
a position in the whole array) back onto the block, so that mistake gives right values
there and no checker can see it; the lesson warns about it in prose.

Every checker draws its random inputs from a fixed seed: the verdict is the same each run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from utils import kernels
from utils.exercises import CheckFailed, Hints, expect_array, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = ["HINTS", "TOLERANCES", "attention_kernel", "bias_relu", "logsumexp_kernel",
           "matmul_kernel", "matmul_looped_kernel", "row_sum", "softmax_kernel"]

HINTS: dict[str, Hints] = {
    "bias_relu": Hints(
        about="exercise 1 is the launch of a kernel: how many programs the grid has and which "
              "block of each array a program sees (section 1, the vector add and the picture "
              "of program ids)",
        think="count the blocks along each axis of the output; then, for program (i, j), ask "
              "which block of x and which block of b hold the numbers its output block needs",
        closer="b has one dimension: its block has one size and its index map returns one "
               "block index, the one that follows the output's columns",
    ),
    "matmul_kernel": Hints(
        about="exercise 2 is the body of the tiled matmul: the output block is an accumulator "
              "that lives across the steps of the contraction (section 2)",
        think="the output block is shared by all the steps along the contraction axis: what "
              "must happen to it at the first of those steps, and what at every step?",
        closer="pl.when takes a condition on pl.program_id of the contraction's grid axis (the "
               "third one); the product of the two blocks is added, never assigned",
    ),
    "row_sum": Hints(
        about="exercise 3 is a reduction over a grid axis, launch and kernel: the rule that a "
              "reduction runs over the last grid axis, with a reset at its first step "
              "(section 3)",
        think="one output block per block of rows; the column blocks are the steps that add "
              "into it, so they must be the innermost loop of the grid, and the first of them "
              "starts the sum",
        closer="write the grid as (row blocks, column blocks); x's index map follows both, the "
               "output's only the row block; reset when the column-block program id is 0",
    ),
    "softmax_kernel": Hints(
        about="exercise 4 is a softmax of whole rows held in one block, computed so that large "
              "values cannot overflow (section 3, one pass over each row)",
        think="exp overflows float32 beyond about 88: what can be subtracted from a row without "
              "changing its softmax, so that every exponent is at most 0?",
        closer="every reduction here runs along each row (the last axis), keeping that axis so "
               "the result broadcasts back over the row",
    ),
    "logsumexp_kernel": Hints(
        about="exercise 5 is the online log-sum-exp: a row seen one column block at a time, "
              "with a running maximum and a running sum (section 3)",
        think="the running sum was accumulated relative to the old maximum: when a block "
              "brings a larger one, by what factor must the old sum be scaled?",
        closer="start (first column block): maximum minus infinity, sum 0; every block: new "
               "maximum, rescaled old sum plus this block's exponentials; last block: maximum "
               "plus the log of the sum",
    ),
    "attention_kernel": Hints(
        about="exercise 6 is attention with an online softmax, the idea of flash attention: "
              "the scores of one block of keys at a time (section 3)",
        think="this is the online log-sum-exp again, with one more running quantity: the "
              "weighted sum of values, which needs the same rescaling when the maximum grows",
        closer="scale the scores by one over the square root of the head dimension; divide by "
               "the running sum once, at the last key block, not at every step",
    ),
    "matmul_looped_kernel": Hints(
        about="exercise 7 is the matmul as GPUs run it: one program per output tile, looping "
              "over the contraction inside the kernel in slices of its blocks (section 4)",
        think="the program's blocks span the whole contraction: how many slices of width bk "
              "fit in it, and where does slice k start?",
        closer="a loop with a carried sum (jax.lax.fori_loop) over the slices; pl.ds takes a "
               "start and a size, and the start is in elements, not in slices",
    ),
}

#: The tolerances the lesson states, per exercise: (relative, absolute).
TOLERANCES = {"bias_relu": (1e-6, 0.0), "softmax_kernel": (1e-5, 1e-7),
              "logsumexp_kernel": (1e-5, 1e-5), "attention_kernel": (1e-4, 1e-5)}


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """float32 matmuls at full precision (GPUs would use TF32 by default)."""
    import jax

    with jax.default_matmul_precision("float32"):
        yield


def _grid_text(shape: Sequence[int], block: Sequence[int]) -> str:
    grid = " x ".join(str(s // b) for s, b in zip(shape, block, strict=True))
    return f"shape {tuple(shape)} in blocks of {tuple(block)} (grid {grid})"


def _raised(error: BaseException, where: str) -> CheckFailed:
    summary = " ".join(summarize_error(error).split()).rstrip(".")
    return CheckFailed(f"{where}, your code raised {summary}.")


def _call(fn: Fn, *args: Any, where: str, **kwargs: Any) -> np.ndarray:
    """Run a student's function (or a wrapper around the student's kernel)."""
    try:
        with _full_precision():
            return np.asarray(fn(*args, **kwargs))
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        raise _raised(error, where) from None


class _Mismatch(CheckFailed):
    """A wrong result; keeps the output so that a checker can look for the cause."""

    def __init__(self, message: str, got: np.ndarray):
        super().__init__(message)
        self.got = got

    def because(self, cause: str | None) -> CheckFailed:
        """This mismatch, with an established cause appended (or as it is)."""
        return CheckFailed(f"{self} {cause}") if cause else self


def _compare(got: Any, expected: Any, *, rtol: float, atol: float, where: str,
             block: Sequence[int] | None = None) -> None:
    """Check shape, dtype, values; on a mismatch name the worst entry and its block."""
    expected = np.asarray(expected)
    got = expect_array(got, expected.shape, expected.dtype, f"the output {where}")
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        allowed = atol + rtol * np.abs(expected.astype(np.float64))
        excess = np.where(error <= allowed, 0.0, error / np.maximum(allowed, 1e-300))
    excess = np.where(np.isfinite(got), excess, np.inf)
    bad = excess > 0
    if not np.any(bad):
        return
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
    in_block = ""
    if block is not None:
        in_block = f" (block {tuple(i // b for i, b in zip(index, block, strict=True))})"
    raise _Mismatch(
        f"{where}: {int(bad.sum())} of {bad.size} entries differ from the reference "
        f"(tolerance {rtol:g} relative, {atol:g} absolute); the worst is at index "
        f"{index}{in_block}: got {got[index]:.6g}, expected {expected[index]:.6g}.", got)


def _matches(got: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-5) -> bool:
    got, expected = np.asarray(got), np.asarray(expected)
    return got.shape == expected.shape and bool(
        np.all(np.isclose(got, expected, rtol=rtol, atol=atol)))


def _traffic(fn: Fn, *args: Any, where: str, **kwargs: Any) -> kernels.Traffic | None:
    """The launch's traffic; None if this JAX's internals could not be read."""
    import jax

    try:  # tracing runs the student's Python code: its errors are the student's
        with _full_precision():
            closed = jax.make_jaxpr(functools.partial(fn, **kwargs))(*args)
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        raise _raised(error, where) from None
    try:
        return kernels.traffic_of_jaxpr(closed)
    except kernels.NotOneKernel as error:
        raise CheckFailed(f"{where}, {error} The exercise is to launch one Pallas kernel "
                          "(pl.pallas_call), not to compute the result another way.") from None
    except Exception:  # pragma: no cover - a JAX whose pallas_call this counter cannot read
        return None


def _check_launch(fn: Fn, args: tuple[Any, ...], where: str, **kwargs: Any) -> None:
    """The launch of a student's wrapper: every block inside its array, outputs not
    revisited after the grid moved on (both of which interpret mode would forgive)."""
    traffic = _traffic(fn, *args, where=where, **kwargs)
    if traffic is None:
        return
    if traffic.outside:
        raise CheckFailed(
            f"{where}, {traffic.outside[0]}: the grid has more steps than the array has "
            "blocks, or an index map points past the end. Interpret mode clamps such a "
            "block back into the array and hides it; on a GPU it reads and writes memory "
            "outside the array.")
    if traffic.revisited:
        raise CheckFailed(
            f"{where}, {traffic.revisited[0]}. On a GPU or TPU an output block is written "
            "back to main memory when the grid moves to another block, and a later visit "
            "starts from a fresh buffer (interpret mode keeps the whole output and hides "
            "this): the axis you reduce over must be the last axis of the grid.")


def _unwritten(got: np.ndarray, block: Sequence[int]) -> str | None:
    """Name the output blocks that are NaN in every entry: never written."""
    grid = tuple(s // b for s, b in zip(got.shape, block, strict=True))
    found = [tuple(int(i) for i in index) for index in np.ndindex(*grid)
             if np.all(np.isnan(got[tuple(slice(i * b, (i + 1) * b)
                                        for i, b in zip(index, block, strict=True))]))]
    if not found:
        return None
    shown = ", ".join(str(b) for b in found[:4]) + (", ..." if len(found) > 4 else "")
    return (f"{len(found)} of the {int(np.prod(grid))} output blocks were never written (still "
            f"NaN, as interpret mode fills an output before the kernel runs): {shown}. The "
            "grid or the output's index map misses them.")


def _accumulation_cause(got: np.ndarray, expected: np.ndarray, last_only: np.ndarray,
                        single_ok: bool) -> str | None:
    """The cause of a wrong accumulation over a grid axis, when the runs establish it.

    ``last_only``: what the last reduction step alone gives; ``single_ok``: whether the
    kernel is right when the whole reduction is one block and one step.
    """
    if np.all(np.isnan(got)) and not single_ok:
        return ("Every entry is NaN, even when the whole product is a single block: in "
                "interpret mode an output block starts as NaN (on a GPU: whatever was in that "
                "memory), and adding to it keeps it so. The first step of the reduction must "
                "set it before anything is added.")
    if _matches(got, last_only) and not _matches(got, expected):
        return ("Your result equals the last reduction step's product alone: each step "
                "replaced the block instead of adding to it, or the block was reset at every "
                "step. Only the first step along the reduction axis may reset it.")
    if np.any(np.isnan(got)) and single_ok:
        return ("Some output blocks are NaN although a single block comes out right: those "
                "blocks were never reset (interpret mode starts them as NaN). The reset must "
                "look at the program id of the reduction's grid axis, whichever block of the "
                "other axes this program works on.")
    return None


def _integers(rng: np.random.Generator, shape: tuple[int, ...]) -> Any:
    """Small whole numbers as float32: every sum of their products is exact."""
    import jax.numpy as jnp

    return jnp.asarray(rng.integers(-3, 4, size=shape), jnp.float32)


# ---------------------------------------------------------------------------- exercise 1


def _bias_relu_cases(rng: np.random.Generator) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(shape, block): grids with unequal sides, so swapped index maps show."""
    blocks = [(8, 16), (16, 8), (8, 8), (16, 32)]
    counts = [(int(rng.integers(2, 4)), 1), (1, int(rng.integers(2, 4))),
              (3, int(rng.choice([2, 4]))), (2, 3)]
    return [((gm * bm, gn * bn), (bm, bn)) for (gm, gn), (bm, bn) in
            zip(counts, blocks, strict=True)]


def _check_bias_relu(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rtol, atol = TOLERANCES["bias_relu"]
    rng = np.random.default_rng(10)
    for shape, block in _bias_relu_cases(rng):
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        b = jnp.asarray(rng.normal(size=shape[1]), jnp.float32)
        where = f"for x of {_grid_text(shape, block)} and b of shape {b.shape}"
        _check_launch(fn, (x, b), where, block=block)
        got = _call(jax.jit(functools.partial(fn, block=block)), x, b, where=where)
        try:
            _compare(got, jnp.maximum(x + b, 0), rtol=rtol, atol=atol, where=where,
                     block=block)
        except _Mismatch as wrong:
            raise wrong.because(_unwritten(wrong.got, block)) from None
    return ("relu(x + b) right for 4 random shapes, each a whole number of blocks (blocks "
            "8x8 to 16x32, grids of 1 to 4 blocks per axis); one pallas_call whose every grid "
            "step maps to blocks inside the arrays; under jax.jit")


def bias_relu(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``bias_relu(x, b, *, block=(bm, bn))`` (a ``pallas_call`` launch)."""
    return run_check("bias_relu", student_fn, kernels.bias_relu, _check_bias_relu,
                     HINTS["bias_relu"], quiet=quiet)


# ---------------------------------------------------------------------------- exercise 2


def _matmul_cases(rng: np.random.Generator) -> list[tuple[tuple[int, int, int],
                                                          tuple[int, int, int]]]:
    """((M, N, K), (bm, bn, bk)): several blocks along every axis, then along k only."""
    blocks = [(8, 8, 8), (16, 8, 4), (8, 16, 16), (8, 8, 4)]
    counts = [(2, 3, int(rng.integers(2, 4))), (int(rng.integers(2, 4)), 2, 3),
              (1, 1, 1), (1, 1, int(rng.integers(3, 5)))]
    return [(tuple(c * b for c, b in zip(n, blk, strict=True)), blk)
            for n, blk in zip(counts, blocks, strict=True)]


def _check_matmul_kernel(kernel: Fn) -> str:
    rng = np.random.default_rng(20)
    for (m, n, k), block in _matmul_cases(rng):
        x, y = _integers(rng, (m, k)), _integers(rng, (k, n))
        bm, bn, bk = block
        where = (f"for x {x.shape} @ y {y.shape} in blocks (bm, bn, bk) = {block} (grid "
                 f"{m // bm} x {n // bn} x {k // bk})")
        got = _call(kernels.matmul, x, y, block=block, kernel=kernel, where=where)
        expected = np.asarray(x) @ np.asarray(y)
        try:
            _compare(got, expected, rtol=0.0, atol=0.0, where=where, block=(bm, bn))
        except _Mismatch as wrong:
            xs, ys = x[:bm], y[:, :bn]
            single = _call(kernels.matmul, xs, ys, block=(bm, bn, k), kernel=kernel,
                           where=where)
            single_ok = _matches(single, np.asarray(xs) @ np.asarray(ys), rtol=0, atol=0)
            last = np.asarray(x)[:, k - bk:] @ np.asarray(y)[k - bk:, :]
            raise wrong.because(_accumulation_cause(wrong.got, expected, last,
                                                    single_ok)) from None
    return ("x @ y exact for 4 random shapes of integer-valued float32, each a whole number "
            "of blocks (blocks 4 to 16 wide, grids of 1 to 4 blocks per axis, one output "
            "block with several reduction steps too)")


def matmul_kernel(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check the body ``matmul_kernel(x_ref, y_ref, o_ref)`` of :func:`utils.kernels.matmul`."""
    return run_check("matmul_kernel", student_fn, kernels.matmul_kernel, _check_matmul_kernel,
                     HINTS["matmul_kernel"], quiet=quiet)


# ---------------------------------------------------------------------------- exercise 3


def _row_sum_cases(rng: np.random.Generator) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    blocks = [(8, 16), (8, 8), (16, 8), (8, 4)]
    counts = [(2, int(rng.integers(2, 4))), (int(rng.integers(2, 4)), 3), (1, 1), (1, 4)]
    return [((gm * bm, gn * bn), (bm, bn)) for (gm, gn), (bm, bn) in
            zip(counts, blocks, strict=True)]


def _check_row_sum(fn: Fn) -> str:
    import jax

    rng = np.random.default_rng(30)
    for shape, block in _row_sum_cases(rng):
        x = _integers(rng, shape)
        where = f"for x of {_grid_text(shape, block)}"
        _check_launch(fn, (x,), where, block=block)
        got = _call(jax.jit(functools.partial(fn, block=block)), x, where=where)
        expected = np.asarray(x).sum(axis=1)
        try:
            _compare(got, expected, rtol=0.0, atol=0.0, where=where, block=(block[0],))
        except _Mismatch as wrong:
            xs = x[: block[0]]
            single = _call(fn, xs, block=(block[0], shape[1]), where=where)
            single_ok = _matches(single, np.asarray(xs).sum(axis=1), rtol=0, atol=0)
            last = np.asarray(x)[:, shape[1] - block[1]:].sum(axis=1)
            raise wrong.because(_accumulation_cause(wrong.got, expected, last,
                                                    single_ok)) from None
    return ("row sums exact for 4 random shapes of integer-valued float32, each a whole "
            "number of blocks (1 to 4 blocks per axis); the column blocks are the grid's last "
            "axis, every grid step maps inside the arrays; under jax.jit")


def row_sum(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``row_sum(x, *, block=(bm, bn))`` (launch and kernel)."""
    return run_check("row_sum", student_fn, kernels.row_sum, _check_row_sum,
                     HINTS["row_sum"], quiet=quiet)


# ---------------------------------------------------------------------------- exercise 4


def _rows(rng: np.random.Generator, m: int, n: int, *, extreme: bool) -> Any:
    """Rows of ordinary values (normal, scale 3); with ``extreme`` every third row scaled by
    1000, and one row all +10000 and one all -10000 (they must give a uniform softmax)."""
    import jax.numpy as jnp

    x = rng.normal(size=(m, n)) * 3.0
    if extreme:
        x[::3] *= 1000.0
        x[1] = 1e4
        x[min(2, m - 1)] = -1e4
    return jnp.asarray(x, jnp.float32)


_OVERFLOW = ("Right on ordinary values but not on these extreme ones (same shape, same "
             "blocks): exp overflows float32 beyond about 88, and of large negative numbers "
             "it underflows to 0.")


def _check_softmax_kernel(kernel: Fn) -> str:
    import jax

    rtol, atol = TOLERANCES["softmax_kernel"]
    rng = np.random.default_rng(40)
    for m, n, br, extreme in ((16, 32, 8, False), (32, 16, 8, True), (8, 64, 8, True),
                              (24, 8, 4, True)):
        x = _rows(rng, m, n, extreme=extreme)
        where = f"for x of {_grid_text((m, n), (br, n))}" + (
            ", with rows of extreme values" if extreme else "")
        run = functools.partial(_call, kernels.softmax, block_rows=br, kernel=kernel,
                                where=where)
        try:
            _compare(run(x), jax.nn.softmax(x, axis=1), rtol=rtol, atol=atol, where=where,
                     block=(br, n))
        except _Mismatch as wrong:
            cause = None
            if extreme and not np.all(np.isfinite(wrong.got)):
                plain = _rows(rng, m, n, extreme=False)
                if _matches(run(plain), jax.nn.softmax(plain, axis=1), rtol=1e-4, atol=1e-6):
                    cause = _OVERFLOW
            sums = np.sum(wrong.got, axis=1)
            row = int(np.nanargmax(np.abs(sums - 1))) if np.any(np.isfinite(sums)) else 0
            if cause is None and np.isfinite(sums[row]) and abs(sums[row] - 1) > 1e-3:
                cause = f"Row {row} sums to {sums[row]:.4g}, not 1: normalise along each row."
            raise wrong.because(cause) from None
    return ("matches jax.nn.softmax within 1e-5 relative, 1e-7 absolute for 4 random shapes "
            "(1 to 6 blocks of whole rows), also on rows with values in the thousands and rows "
            "all +-10000")


def softmax_kernel(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check the body ``softmax_kernel(x_ref, o_ref)`` of :func:`utils.kernels.softmax`."""
    return run_check("softmax_kernel", student_fn, kernels.softmax_kernel,
                     _check_softmax_kernel, HINTS["softmax_kernel"], quiet=quiet)


# ---------------------------------------------------------------------------- exercise 5


def _online_cause(got: np.ndarray, *, one_block: Callable[[], bool],
                  split: Callable[[], bool] | None, splits: int, row_blocks: int,
                  ordinary: Callable[[], bool] | None) -> str | None:
    """The cause of a wrong online reduction over column (or key) blocks, established by
    runs: ``ordinary()`` runs the case's shape and blocks on ordinary values (given for
    cases with extreme values only, after the kernel passed an ordinary case),
    ``one_block()`` the first row block with a whole row in one block, ``split()`` the same
    rows cut into ``splits`` blocks; each returns whether the result was right."""
    if ordinary is not None and not np.all(np.isfinite(got)) and ordinary():
        return _OVERFLOW
    if not one_block():
        if np.all(np.isnan(got)):
            return ("NaN even when a row is a single block: the running maximum and sum start "
                    "as NaN in interpret mode (on a GPU: whatever was in that memory); set "
                    "them at the first block of the reduction.")
    else:
        if row_blocks > 1 and np.any(np.isnan(got)):
            return ("NaN only for row blocks after the first: they were never initialised. "
                    "The start must look at the program id of the reduction's grid axis (the "
                    "second), whichever row block this program works on.")
        if split is not None and not split():
            return (f"Right when a row fits in one block but wrong when it is cut into "
                    f"{splits} blocks: what was accumulated before a block that raises the "
                    "maximum was computed against the old maximum and must be rescaled (and "
                    "the final division or log happens once, after the last block).")
    return None


def _check_logsumexp_kernel(kernel: Fn) -> str:
    import jax

    rtol, atol = TOLERANCES["logsumexp_kernel"]
    rng = np.random.default_rng(50)
    for m, n, br, bc, extreme in ((16, 32, 8, 8, False), (8, 48, 8, 16, True),
                                  (24, 16, 8, 4, True), (8, 8, 8, 8, True)):
        x = _rows(rng, m, n, extreme=extreme)
        where = f"for x of {_grid_text((m, n), (br, bc))}" + (
            ", with rows of extreme values" if extreme else "")

        def right(a: Any, blk: tuple[int, int], where: str = where) -> bool:
            got = _call(kernels.logsumexp, a, block=blk, kernel=kernel, where=where)
            return _matches(got, jax.nn.logsumexp(a, axis=1), rtol=1e-4, atol=1e-4)

        got = _call(kernels.logsumexp, x, block=(br, bc), kernel=kernel, where=where)
        try:
            _compare(got, jax.nn.logsumexp(x, axis=1), rtol=rtol, atol=atol, where=where,
                     block=(br,))
        except _Mismatch as wrong:
            first, plain = x[:br], _rows(rng, m, n, extreme=False)
            raise wrong.because(_online_cause(
                wrong.got, one_block=functools.partial(right, first, (br, n)),
                split=None if n == bc else functools.partial(right, first, (br, bc)),
                splits=n // bc, row_blocks=m // br,
                ordinary=functools.partial(right, plain, (br, bc)) if extreme else None,
            )) from None
    return ("matches jax.nn.logsumexp within 1e-5 relative and absolute for 4 random shapes "
            "(1 to 4 column blocks, 1 to 3 row blocks), also on rows with values in the "
            "thousands and rows all +-10000")


def logsumexp_kernel(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check the body ``logsumexp_kernel(x_ref, lse_ref, m_ref, s_ref)`` of
    :func:`utils.kernels.logsumexp`."""
    return run_check("logsumexp_kernel", student_fn, kernels.logsumexp_kernel,
                     _check_logsumexp_kernel, HINTS["logsumexp_kernel"], quiet=quiet)


# ---------------------------------------------------------------------------- exercise 6


def _check_attention_kernel(kernel: Fn) -> str:
    import jax.numpy as jnp

    rtol, atol = TOLERANCES["attention_kernel"]
    rng = np.random.default_rng(60)
    for lq, lk, d, dv, bq, bk, scale in ((16, 32, 8, 8, 8, 8, 1.0), (8, 48, 16, 8, 8, 16, 100.0),
                                         (24, 16, 8, 16, 8, 4, 1.0), (8, 8, 4, 4, 8, 8, 100.0)):
        q = jnp.asarray(rng.normal(size=(lq, d)) * scale, jnp.float32)
        k = jnp.asarray(rng.normal(size=(lk, d)), jnp.float32)
        v = jnp.asarray(rng.normal(size=(lk, dv)), jnp.float32)
        where = (f"for q {q.shape}, k {k.shape}, v {v.shape} in blocks (bq, bk) = "
                 f"{(bq, bk)} (grid {lq // bq} x {lk // bk})"
                 + (", with scores in the hundreds" if scale > 1 else ""))

        def reference(a: Any, k: Any = k, v: Any = v) -> np.ndarray:
            with _full_precision():
                return np.asarray(kernels.reference_attention(a, k, v))

        def right(a: Any, blk: tuple[int, int], k: Any = k, v: Any = v,
                  where: str = where, reference: Callable[..., Any] = reference) -> bool:
            got = _call(kernels.attention, a, k, v, block=blk, kernel=kernel, where=where)
            return _matches(got, reference(a), rtol=1e-3, atol=1e-4)

        got = _call(kernels.attention, q, k, v, block=(bq, bk), kernel=kernel, where=where)
        try:
            _compare(got, reference(q), rtol=rtol, atol=atol, where=where, block=(bq, dv))
        except _Mismatch as wrong:
            first = q[:bq]
            plain = jnp.asarray(rng.normal(size=(lq, d)), jnp.float32)
            raise wrong.because(_online_cause(
                wrong.got, one_block=functools.partial(right, first, (bq, lk)),
                split=None if lk == bk else functools.partial(right, first, (bq, bk)),
                splits=lk // bk, row_blocks=lq // bq,
                ordinary=functools.partial(right, plain, (bq, bk)) if scale > 1 else None,
            )) from None
    return ("matches softmax(q k^T / sqrt(d)) v within 1e-4 relative, 1e-5 absolute for 4 "
            "random shapes (1 to 4 key blocks, Lq != Lk, d != dv), also with scores in the "
            "hundreds")


def attention_kernel(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check the body ``attention_kernel(q_ref, k_ref, v_ref, o_ref, m_ref, l_ref)`` of
    :func:`utils.kernels.attention`."""
    return run_check("attention_kernel", student_fn, kernels.attention_kernel,
                     _check_attention_kernel, HINTS["attention_kernel"], quiet=quiet)


# ---------------------------------------------------------------------------- exercise 7


def _looped_cause(got: np.ndarray, x: np.ndarray, y: np.ndarray, bk: int) -> str | None:
    """Compare with what the usual loop mistakes give."""
    k = x.shape[1]
    steps = k // bk
    expected = x @ y
    last = x[:, k - bk:] @ y[k - bk:, :]
    if _matches(got, expected + last, rtol=0, atol=0):
        return ("Your result has the last slice twice: the loop runs one step past the end of "
                "the block. Interpret mode clamps that read back onto the last slice; on a GPU "
                "it reads whatever lies beyond the block.")
    if steps > 1 and _matches(got, expected - last, rtol=0, atol=0):
        return "Your result misses the last slice: the loop stops one step short."
    overlapping = sum(x[:, s:s + bk] @ y[s:s + bk, :] for s in range(steps))
    if steps > 1 and _matches(got, overlapping, rtol=0, atol=0):
        return ("Your slices overlap: slice s must start at element s * bk of the block, not "
                "at element s.")
    return None


def _check_matmul_looped_kernel(kernel: Fn) -> str:
    rng = np.random.default_rng(70)
    for (m, n, k), block in (((16, 24, 32), (8, 8, 8)), ((8, 16, 48), (8, 16, 16)),
                             ((24, 8, 16), (8, 8, 4)), ((8, 8, 8), (8, 8, 8))):
        x, y = _integers(rng, (m, k)), _integers(rng, (k, n))
        bm, bn, bk = block
        where = (f"for x {x.shape} @ y {y.shape} in blocks (bm, bn, bk) = {block} (grid "
                 f"{m // bm} x {n // bn}, {k // bk} slices in the loop)")
        got = _call(kernels.matmul_looped, x, y, block=block, kernel=kernel, where=where)
        try:
            _compare(got, np.asarray(x) @ np.asarray(y), rtol=0.0, atol=0.0, where=where,
                     block=(bm, bn))
        except _Mismatch as wrong:
            raise wrong.because(_looped_cause(wrong.got, np.asarray(x), np.asarray(y),
                                              bk)) from None
    return ("x @ y exact for 4 random shapes of integer-valued float32 (1 to 4 slices of the "
            "contraction per program, blocks 4 to 16 wide)")


def matmul_looped_kernel(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check the body ``matmul_looped_kernel(x_ref, y_ref, o_ref, *, bk)`` of
    :func:`utils.kernels.matmul_looped`."""
    return run_check("matmul_looped_kernel", student_fn, kernels.matmul_looped_kernel,
                     _check_matmul_looped_kernel, HINTS["matmul_looped_kernel"], quiet=quiet)
