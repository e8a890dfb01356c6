"""Writing your own kernels with Pallas: blocks, tiles, memory traffic (lesson 10_pallas_kernels).

A Pallas kernel is a function of ``Ref``s: each program of a ``grid`` sees the *blocks* of
its inputs and outputs that the ``BlockSpec``s pick for it, copied into fast memory. This
module holds the lesson's kernels, a wrapper (the ``pl.pallas_call``) for each, and two
tools:

- :func:`check_blocks`: the grid that tiles an array in blocks, with a clear error when a
  dimension is not a multiple of its block;
- :func:`count_traffic`: reads the grid and the ``BlockSpec``s of the ``pallas_call`` a
  function makes (as JAX traced them) and counts the bytes copied between main memory and
  fast memory, the way Pallas's pipeline copies them (a block is copied in when a grid step
  needs another block than the step before, and written back when the grid moves on);
- :func:`choose_path`: how this machine can run a kernel (Mosaic GPU, Triton, or interpret
  mode), and why.

Every wrapper runs in interpret mode unless told otherwise (``options``): the kernel then
becomes ordinary XLA operations in a loop over the grid, on any device, one program after
the other. Interpret mode fills outputs and scratch buffers with NaN before the kernel
writes them, and reads outside a block return NaN, which makes a forgotten reset or a read
out of bounds visible. The kernels that accumulate over a grid axis (:func:`matmul`,
:func:`row_sum`, :func:`logsumexp`, :func:`attention`) rely on the grid running in order,
as it does in interpret mode and on TPUs; on GPUs the programs of a grid run in parallel
(Pallas quickstart, "Grid semantics"), and a GPU kernel loops over the reduction inside one
program instead (:func:`matmul_looped`).

Shapes: 2-D arrays are ``(rows, columns)``; blocks are given as tuples of the same rank.
All kernels compute in float32.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "KernelPath",
    "NotOneKernel",
    "OperandTraffic",
    "Traffic",
    "attention",
    "attention_kernel",
    "bias_relu",
    "bias_relu_kernel",
    "check_blocks",
    "choose_path",
    "count_traffic",
    "launch_source",
    "logsumexp",
    "logsumexp_kernel",
    "matmul",
    "matmul_kernel",
    "matmul_looped",
    "matmul_looped_kernel",
    "pallas_call_gpu_default",
    "reference_attention",
    "row_sum",
    "row_sum_kernel",
    "softmax",
    "softmax_kernel",
    "tile_read_bytes",
    "traffic_of_jaxpr",
    "warnings_as_lines",
]

Options = Mapping[str, Any] | None


# ---------------------------------------------------------------------------- blocks


def check_blocks(shape: Sequence[int], block: Sequence[int], name: str = "x") -> tuple[int, ...]:
    """The grid that tiles an array of ``shape`` in blocks of ``block``: ``shape // block``.

    Raises ValueError, naming the axis, when the ranks differ, a block size is not a
    positive whole number, or a dimension is not a positive multiple of its block size
    (the lesson's kernels do not handle a partial last block).
    """
    shape, block = tuple(shape), tuple(block)
    if len(shape) != len(block):
        raise ValueError(f"{name} has {len(shape)} dimensions {shape}, but the block has "
                         f"{len(block)} {block}: give one block size per dimension.")
    for axis, (size, b) in enumerate(zip(shape, block, strict=True)):
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
            raise ValueError(f"block size {b!r} along axis {axis} of {name} is not a positive "
                             "whole number.")
        if size < 1 or size % b:
            multiple = max(b, -(-size // b) * b)
            raise ValueError(
                f"axis {axis} of {name} has size {size}, not a multiple of its block size {b} "
                f"(shape {shape}, block {block}). Pad {name} to {multiple} along that axis, or "
                f"choose a block size that divides {size}.")
    return tuple(size // b for size, b in zip(shape, block, strict=True))


def launch_source(fn: Callable[..., Any]) -> str:
    """The body of one of this module's wrappers without its docstring, imports and input
    checks: the lines that compute the grid and call ``pl.pallas_call`` (a lesson shows
    the launch it uses with it)."""
    import ast
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(fn))
    lines = source.splitlines()
    definition = ast.parse(source).body[0]
    if not isinstance(definition, ast.FunctionDef):
        raise ValueError(f"{fn!r} is not a function defined with def.")
    kept = []
    for statement in definition.body:
        if isinstance(statement, ast.Import | ast.ImportFrom | ast.If | ast.For):
            continue  # imports and input checks
        if isinstance(statement, ast.Expr):
            continue  # the docstring, and calls made only to check inputs
        kept.extend(lines[statement.lineno - 1:statement.end_lineno])
    return textwrap.dedent("\n".join(kept))


def _options(options: Options) -> dict[str, Any]:
    """``pallas_call`` keyword arguments: interpret mode unless ``options`` says otherwise."""
    return {"interpret": True} if options is None else dict(options)


def _matrix(x: Any, name: str) -> None:
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, columns), got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}.")


# ---------------------------------------------------------------------------- section 1


def bias_relu_kernel(x_ref: Any, b_ref: Any, o_ref: Any) -> None:
    """One block: ``o = max(x + b, 0)``; x_ref, o_ref (bm, bn), b_ref (bn,)."""
    import jax.numpy as jnp

    o_ref[...] = jnp.maximum(x_ref[...] + b_ref[...], 0.0)


def bias_relu(x: Any, b: Any, *, block: tuple[int, int] = (16, 32),
              options: Options = None) -> Any:
    """``relu(x + b)`` for x (M, N), b (N,), one program per (bm, bn) block of the output.

    Reference answer of lesson 10's exercise 1: program (i, j) reads block (i, j) of x and
    block j of b, and writes block (i, j) of the output.
    """
    import jax
    from jax.experimental import pallas as pl

    _matrix(x, "x")
    bm, bn = block
    grid = check_blocks(x.shape, block, "x")
    if b.shape != (x.shape[1],):
        raise ValueError(f"b must have shape ({x.shape[1]},) (one value per column of x), "
                         f"got {b.shape}.")
    return pl.pallas_call(
        bias_relu_kernel,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=grid,
        in_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
                  pl.BlockSpec((bn,), lambda i, j: (j,))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        **_options(options),
    )(x, b)


# ---------------------------------------------------------------------------- section 2


def matmul_kernel(x_ref: Any, y_ref: Any, o_ref: Any) -> None:
    """One step of the tiled matmul: ``o += x @ y`` on blocks, reset at the first k step.

    x_ref (bm, bk), y_ref (bk, bn), o_ref (bm, bn); grid axis 2 is the contraction.
    """
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    @pl.when(pl.program_id(2) == 0)
    def _reset():
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)

    o_ref[...] += jnp.dot(x_ref[...], y_ref[...], preferred_element_type=jnp.float32)


def matmul(x: Any, y: Any, *, block: tuple[int, int, int] = (32, 32, 32),
           kernel: Callable[..., None] = matmul_kernel, options: Options = None) -> Any:
    """``x @ y`` for x (M, K), y (K, N) in (bm, bn) output tiles, summing over bk-wide steps.

    ``block = (bm, bn, bk)``. The grid is ``(M // bm, N // bn, K // bk)``: program (i, j, k)
    reads block (i, k) of x and (k, j) of y and adds their product to output block (i, j),
    which stays the same for all k (the contraction is the last grid axis, so the output
    block stays in fast memory while it accumulates). ``kernel`` defaults to
    :func:`matmul_kernel`.
    """
    import jax
    from jax.experimental import pallas as pl

    _matrix(x, "x")
    _matrix(y, "y")
    bm, bn, bk = block
    if x.shape[1] != y.shape[0]:
        raise ValueError(f"x @ y needs x's columns to match y's rows: got x {x.shape}, "
                         f"y {y.shape}.")
    ni, nk = check_blocks(x.shape, (bm, bk), "x")
    _, nj = check_blocks(y.shape, (bk, bn), "y")
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((x.shape[0], y.shape[1]), x.dtype),
        grid=(ni, nj, nk),
        in_specs=[pl.BlockSpec((bm, bk), lambda i, j, k: (i, k)),
                  pl.BlockSpec((bk, bn), lambda i, j, k: (k, j))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j, k: (i, j)),
        **_options(options),
    )(x, y)


def tile_read_bytes(block: tuple[int, int, int], k: int, itemsize: int = 4) -> int:
    """Bytes one (bm, bn) output tile of :func:`matmul` reads from main memory: ``k / bk``
    steps, each one (bm, bk) block of x and one (bk, bn) block of y."""
    bm, bn, bk = block
    return (k // bk) * (bm * bk + bk * bn) * itemsize


def matmul_looped_kernel(x_ref: Any, y_ref: Any, o_ref: Any, *, bk: int) -> None:
    """One output tile of :func:`matmul_looped`: a loop over the contraction in bk-wide
    slices, inside the program. x_ref (bm, K), y_ref (K, bn), o_ref (bm, bn)."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    def step(k: Any, acc: Any) -> Any:
        x = x_ref[:, pl.ds(k * bk, bk)]
        y = y_ref[pl.ds(k * bk, bk), :]
        return acc + jnp.dot(x, y, preferred_element_type=jnp.float32)

    steps = x_ref.shape[1] // bk
    acc = jax.lax.fori_loop(0, steps, step, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def matmul_looped(x: Any, y: Any, *, block: tuple[int, int, int] = (64, 64, 32),
                  kernel: Callable[..., None] = matmul_looped_kernel,
                  options: Options = None) -> Any:
    """``x @ y`` shaped for a GPU: one program per (bm, bn) output tile, no grid reduction.

    The grid is ``(M // bm, N // bn)``; each program gets a (bm, K) row panel of x and a
    (K, bn) column panel of y and loops over K in bk-wide slices inside the kernel, keeping
    its sum in registers. Programs write disjoint tiles, so they may run in parallel, as
    they do on GPUs. ``kernel(x_ref, y_ref, o_ref, *, bk)`` defaults to
    :func:`matmul_looped_kernel`.
    """
    import jax
    from jax.experimental import pallas as pl

    _matrix(x, "x")
    _matrix(y, "y")
    bm, bn, bk = block
    if x.shape[1] != y.shape[0]:
        raise ValueError(f"x @ y needs x's columns to match y's rows: got x {x.shape}, "
                         f"y {y.shape}.")
    ni, _ = check_blocks(x.shape, (bm, bk), "x")
    _, nj = check_blocks(y.shape, (bk, bn), "y")
    k = x.shape[1]
    return pl.pallas_call(
        functools.partial(kernel, bk=bk),
        out_shape=jax.ShapeDtypeStruct((x.shape[0], y.shape[1]), x.dtype),
        grid=(ni, nj),
        in_specs=[pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
                  pl.BlockSpec((k, bn), lambda i, j: (0, j))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        **_options(options),
    )(x, y)


# ---------------------------------------------------------------------------- section 3


def row_sum_kernel(x_ref: Any, o_ref: Any) -> None:
    """One step of :func:`row_sum`: add the block's row sums to the output block.

    x_ref (bm, bn), o_ref (bm,); grid axis 1 walks along the columns (the reduction).
    """
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    @pl.when(pl.program_id(1) == 0)
    def _reset():
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)

    o_ref[...] += jnp.sum(x_ref[...], axis=1)


def row_sum(x: Any, *, block: tuple[int, int] = (8, 16), options: Options = None) -> Any:
    """The sum of each row of x (M, N) -> (M,), in (bm, bn) blocks (lesson 10's exercise 3).

    Grid ``(M // bm, N // bn)``: the reduction over column blocks is the last grid axis, so
    output block i stays in fast memory while program (i, j) adds block (i, j)'s row sums.
    """
    import jax
    from jax.experimental import pallas as pl

    _matrix(x, "x")
    bm, bn = block
    grid = check_blocks(x.shape, block, "x")
    return pl.pallas_call(
        row_sum_kernel,
        out_shape=jax.ShapeDtypeStruct((x.shape[0],), x.dtype),
        grid=grid,
        in_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j))],
        out_specs=pl.BlockSpec((bm,), lambda i, j: (i,)),
        **_options(options),
    )(x)


def softmax_kernel(x_ref: Any, o_ref: Any) -> None:
    """Softmax of each row of one (br, N) block, whole rows, computed stably.

    Subtracting each row's maximum first changes nothing mathematically and keeps every
    ``exp`` at most 1, so large values cannot overflow.
    """
    import jax.numpy as jnp

    x = x_ref[...]
    e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))
    o_ref[...] = e / jnp.sum(e, axis=1, keepdims=True)


def softmax(x: Any, *, block_rows: int = 8, kernel: Callable[..., None] = softmax_kernel,
            options: Options = None) -> Any:
    """Softmax over the rows of x (M, N): one program per block of ``block_rows`` whole rows.

    Each row is read from main memory once and written once: the max, the exponentials, the
    sum and the division all happen on the block in fast memory.
    """
    import jax
    from jax.experimental import pallas as pl

    _matrix(x, "x")
    (grid, _) = check_blocks(x.shape, (block_rows, x.shape[1]), "x")
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=(grid,),
        in_specs=[pl.BlockSpec((block_rows, x.shape[1]), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((block_rows, x.shape[1]), lambda i: (i, 0)),
        **_options(options),
    )(x)


def logsumexp_kernel(x_ref: Any, lse_ref: Any, m_ref: Any, s_ref: Any) -> None:
    """One step of the online log-sum-exp over the column blocks of a row block.

    x_ref (br, bc); lse_ref, m_ref, s_ref (br,). ``m`` is the running maximum of the row,
    ``s`` the running sum of ``exp(x - m)``: when a new block raises the maximum, the sum so
    far is rescaled by ``exp(m_old - m_new)``. At the last column block,
    ``lse = m + log(s)``.
    """
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    j = pl.program_id(1)

    @pl.when(j == 0)
    def _start():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, m_ref.dtype)
        s_ref[...] = jnp.zeros(s_ref.shape, s_ref.dtype)

    x = x_ref[...]
    m_old = m_ref[...]
    m_new = jnp.maximum(m_old, jnp.max(x, axis=1))
    s_ref[...] = (s_ref[...] * jnp.exp(m_old - m_new)
                  + jnp.sum(jnp.exp(x - m_new[:, None]), axis=1))
    m_ref[...] = m_new

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        lse_ref[...] = m_ref[...] + jnp.log(s_ref[...])


def logsumexp(x: Any, *, block: tuple[int, int] = (8, 16),
              kernel: Callable[..., None] = logsumexp_kernel, options: Options = None) -> Any:
    """``log(sum(exp(x), axis=1))`` of x (M, N) in one pass over (br, bc) blocks -> (M,).

    Grid ``(M // br, N // bc)``, the column blocks last. The running maximum and sum are
    two extra outputs whose block stays the same along the row, so they stay in fast memory
    from one column block to the next; only the result is returned.
    """
    import jax
    from jax.experimental import pallas as pl

    _matrix(x, "x")
    br, bc = block
    grid = check_blocks(x.shape, block, "x")
    row = jax.ShapeDtypeStruct((x.shape[0],), x.dtype)
    spec = pl.BlockSpec((br,), lambda i, j: (i,))
    lse, _, _ = pl.pallas_call(
        kernel,
        out_shape=(row, row, row),
        grid=grid,
        in_specs=[pl.BlockSpec((br, bc), lambda i, j: (i, j))],
        out_specs=(spec, spec, spec),
        **_options(options),
    )(x)
    return lse


def attention_kernel(q_ref: Any, k_ref: Any, v_ref: Any, o_ref: Any, m_ref: Any,
                     l_ref: Any) -> None:
    """One step of attention with an online softmax (the idea of flash attention).

    q_ref (bq, d), k_ref (bk, d), v_ref (bk, dv); o_ref (bq, dv), m_ref and l_ref (bq,).
    Grid axis 1 walks over key blocks. ``m`` is each query's running maximum score, ``l``
    its running sum of ``exp(score - m)``, ``o`` the running sum of those weights times the
    values; when the maximum grows, ``l`` and ``o`` are rescaled by ``exp(m_old - m_new)``.
    At the last key block ``o`` is divided by ``l``.
    """
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    j = pl.program_id(1)

    @pl.when(j == 0)
    def _start():
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, m_ref.dtype)
        l_ref[...] = jnp.zeros(l_ref.shape, l_ref.dtype)

    q = q_ref[...]
    scores = jnp.dot(q, k_ref[...].T, preferred_element_type=jnp.float32) / math.sqrt(
        q.shape[-1])
    m_old = m_ref[...]
    m_new = jnp.maximum(m_old, jnp.max(scores, axis=1))
    weights = jnp.exp(scores - m_new[:, None])
    rescale = jnp.exp(m_old - m_new)
    l_ref[...] = l_ref[...] * rescale + jnp.sum(weights, axis=1)
    o_ref[...] = o_ref[...] * rescale[:, None] + jnp.dot(
        weights, v_ref[...], preferred_element_type=jnp.float32)
    m_ref[...] = m_new

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        o_ref[...] = o_ref[...] / l_ref[...][:, None]


def attention(q: Any, k: Any, v: Any, *, block: tuple[int, int] = (16, 16),
              kernel: Callable[..., None] = attention_kernel, options: Options = None) -> Any:
    """``softmax(q @ k.T / sqrt(d)) @ v`` for q (Lq, d), k (Lk, d), v (Lk, dv) -> (Lq, dv).

    ``block = (bq, bk)``: grid ``(Lq // bq, Lk // bk)``, the key blocks last. The (Lq, Lk)
    matrix of scores is never stored: each program sees a (bq, bk) piece of it. The running
    maximum and sum are extra outputs (one value per query), dropped at the end.
    """
    import jax
    from jax.experimental import pallas as pl

    for name, a in (("q", q), ("k", k), ("v", v)):
        _matrix(a, name)
    if k.shape[1] != q.shape[1] or v.shape[0] != k.shape[0]:
        raise ValueError(f"need q (Lq, d), k (Lk, d), v (Lk, dv); got q {q.shape}, "
                         f"k {k.shape}, v {v.shape}.")
    bq, bk = block
    (nq, _) = check_blocks(q.shape, (bq, q.shape[1]), "q")
    (nk, _) = check_blocks(k.shape, (bk, k.shape[1]), "k")
    d, dv = q.shape[1], v.shape[1]
    per_query = pl.BlockSpec((bq,), lambda i, j: (i,))
    out, _, _ = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((q.shape[0], dv), q.dtype),
                   jax.ShapeDtypeStruct((q.shape[0],), q.dtype),
                   jax.ShapeDtypeStruct((q.shape[0],), q.dtype)),
        grid=(nq, nk),
        in_specs=[pl.BlockSpec((bq, d), lambda i, j: (i, 0)),
                  pl.BlockSpec((bk, d), lambda i, j: (j, 0)),
                  pl.BlockSpec((bk, dv), lambda i, j: (j, 0))],
        out_specs=(pl.BlockSpec((bq, dv), lambda i, j: (i, 0)), per_query, per_query),
        **_options(options),
    )(q, k, v)
    return out


def reference_attention(q: Any, k: Any, v: Any) -> Any:
    """``softmax(q @ k.T / sqrt(d)) @ v`` in plain jax.numpy (the whole score matrix)."""
    import jax

    scores = q @ k.T / math.sqrt(q.shape[-1])
    return jax.nn.softmax(scores, axis=-1) @ v


# ---------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class OperandTraffic:
    """Copies of one operand's blocks between main memory and fast memory."""

    name: str                  # "x" (an input's position or name) or "output 0"
    kind: str                  # "input" or "output"
    shape: tuple[int, ...]     # the whole array
    block: tuple[int, ...]     # one block (squeezed dimensions count as 1)
    itemsize: int              # bytes per element
    copies: int                # blocks copied (in for inputs, out for outputs)

    @property
    def block_bytes(self) -> int:
        return math.prod(self.block) * self.itemsize

    @property
    def bytes(self) -> int:
        return self.copies * self.block_bytes


@dataclass(frozen=True)
class Traffic:
    """What :func:`count_traffic` found for one ``pallas_call``.

    ``outside`` lists grid steps whose block of some operand lies wholly outside that
    array; ``revisited`` lists output blocks that a later grid step comes back to after
    the grid had moved to other blocks (on hardware, the block was written back when the
    grid moved on, and the later steps start from a fresh buffer).
    """

    grid: tuple[int, ...]
    operands: tuple[OperandTraffic, ...]
    outside: tuple[str, ...] = field(default=())
    revisited: tuple[str, ...] = field(default=())

    @property
    def programs(self) -> int:
        return math.prod(self.grid)

    @property
    def bytes_read(self) -> int:
        return sum(o.bytes for o in self.operands if o.kind == "input")

    @property
    def bytes_written(self) -> int:
        return sum(o.bytes for o in self.operands if o.kind == "output")

    def __str__(self) -> str:
        lines = [f"grid {self.grid}: {self.programs} programs"]
        for o in self.operands:
            verb = "read" if o.kind == "input" else "written"
            lines.append(f"  {o.name:10s} {str(o.shape):14s} blocks {str(o.block):10s} "
                         f"{o.copies:5d} copies, {o.bytes:,} bytes {verb}")
        return "\n".join(lines)


def _pallas_calls(jaxpr: Any) -> Iterator[Any]:
    """Every ``pallas_call`` equation in a jaxpr, also inside jit, cond, scan, ..."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _pallas_calls(inner)


def _block_size(dim: Any) -> int:
    """The size of one dimension of a block, whatever Pallas's type for it (None -> 1)."""
    if dim is None:
        return 1
    if isinstance(dim, int | np.integer):
        return int(dim)
    size = getattr(dim, "block_size", None)
    return 1 if size is None else int(size)


class NotOneKernel(ValueError):
    """The function given to :func:`count_traffic` makes no ``pallas_call``, or several."""


def count_traffic(fn: Callable[..., Any], *args: Any, names: Sequence[str] = (),
                  **kwargs: Any) -> Traffic:
    """Count the memory traffic of the one ``pallas_call`` that ``fn(*args, **kwargs)`` makes.

    Nothing is run or compiled: ``fn`` is traced (``jax.make_jaxpr``), and the grid and
    the block index maps are read from the ``pallas_call`` as JAX recorded it. The grid is
    walked in order (last axis fastest). An input block is copied in at a step whose block
    index differs from the step before (and at the first step); an output block is written
    back when the next step's block index differs (and after the last step). That is how
    Pallas's pipeline moves blocks (JAX docs, "Software Pipelining": a copy is skipped
    when two consecutive iterations use the same block).

    ``names`` optionally names the inputs (``("x", "y")``); outputs are ``"output N"``.
    Raises :class:`NotOneKernel` (a ValueError) when ``fn`` makes no ``pallas_call`` or more
    than one, ValueError for features this counter does not model (dynamic grids, scalar
    prefetch); what ``fn`` itself raises propagates.
    """
    import jax

    closed = jax.make_jaxpr(functools.partial(fn, **kwargs))(*args)
    return traffic_of_jaxpr(closed, names=names)


def traffic_of_jaxpr(closed: Any, names: Sequence[str] = ()) -> Traffic:
    """:func:`count_traffic` of an already traced function (a ``ClosedJaxpr``)."""
    import jax
    from jax.extend.core import jaxpr_as_fun

    calls = list(_pallas_calls(closed.jaxpr))
    if len(calls) != 1:
        raise NotOneKernel(f"count_traffic needs a function that makes exactly one "
                           f"pallas_call; this one makes {len(calls)}.")
    mapping = calls[0].params["grid_mapping"]
    grid = tuple(mapping.grid)
    if not all(isinstance(g, int | np.integer) for g in grid):
        raise ValueError(f"the grid {grid} has a dynamic size: count_traffic needs static ones.")
    if getattr(mapping, "num_index_operands", 0):
        raise ValueError("count_traffic does not model scalar prefetch (index operands).")
    steps = np.array(list(np.ndindex(*grid)) if grid else [()], dtype=np.int32)
    steps = steps.reshape(max(math.prod(grid), 1), len(grid))
    n_in = mapping.num_inputs
    operands, outside, revisited = [], [], []
    for position, bm in enumerate(mapping.block_mappings):
        kind = "input" if position < n_in else "output"
        name = (names[position] if kind == "input" and position < len(names)
                else f"input {position}" if kind == "input" else f"output {position - n_in}")
        shape = tuple(int(s) for s in bm.array_aval.shape)
        block = tuple(_block_size(b) for b in bm.block_shape)
        index_map = jaxpr_as_fun(bm.index_map_jaxpr)
        columns = [jax.numpy.asarray(steps[:, a]) for a in range(len(grid))]
        if columns:
            found = jax.vmap(lambda *ids, f=index_map: tuple(f(*ids)))(*columns)
        else:
            found = tuple(index_map())
        indices = (np.stack([np.broadcast_to(np.asarray(a), (len(steps),)) for a in found],
                            axis=1) if len(found) else np.zeros((len(steps), 0), np.int32))
        changes = np.ones(len(steps), bool)
        changes[1:] = np.any(indices[1:] != indices[:-1], axis=1)
        starts = indices * np.array(block, dtype=np.int64)
        bad = np.any((starts >= np.array(shape)) | (indices < 0), axis=1)
        for s in np.flatnonzero(bad)[:3]:
            outside.append(f"grid step {tuple(int(v) for v in steps[s])} maps {name} to block "
                           f"{tuple(int(v) for v in indices[s])}, outside {name} (shape "
                           f"{shape}, blocks of {block})")
        if kind == "output":
            seen: dict[tuple[int, ...], int] = {}
            for s in np.flatnonzero(changes):
                key = tuple(int(v) for v in indices[s])
                if key in seen and len(revisited) < 3:
                    revisited.append(
                        f"{name} block {key} is visited at grid step "
                        f"{tuple(int(v) for v in steps[seen[key]])} and again at "
                        f"{tuple(int(v) for v in steps[s])}, with other blocks in between")
                seen.setdefault(key, int(s))
        itemsize = np.dtype(bm.array_aval.dtype).itemsize
        operands.append(OperandTraffic(name, kind, shape, block, itemsize,
                                       int(changes.sum())))
    return Traffic(grid, tuple(operands), tuple(outside), tuple(revisited))


# ---------------------------------------------------------------------------- section 4


@dataclass(frozen=True)
class KernelPath:
    """How kernels run on this machine: ``name`` ("Mosaic GPU", "Triton" or "interpret
    mode"), whether they are compiled for the device, why, and the ``pallas_call`` keyword
    arguments that select the path (pass them as a wrapper's ``options``)."""

    name: str
    compiled: bool
    reason: str
    options: Mapping[str, Any]


def pallas_call_gpu_default() -> str:
    """The path ``pl.pallas_call`` takes on an NVIDIA GPU when given no compiler params.

    ``"Mosaic GPU"`` in JAX versions that have the ``jax_pallas_use_mosaic_gpu`` option
    switched on (0.10, the course's pinned version); ``"Triton"`` in newer ones, where that
    option is gone and ``pallas_call`` compiles for GPUs through Triton only (Mosaic GPU
    kernels are written with ``jax.experimental.pallas.mosaic_gpu.kernel`` there).
    """
    import jax

    return "Mosaic GPU" if getattr(jax.config, "jax_pallas_use_mosaic_gpu", False) else "Triton"


def choose_path(capability: tuple[int, int] | None) -> KernelPath:
    """The way to run a Pallas kernel on a device of this compute capability (None: no
    NVIDIA GPU; ``utils.environment.compute_capability()`` gives it).

    - >= 9.0 (Hopper and newer): ``pallas_call``'s default GPU path. In JAX 0.10 that is
      Mosaic GPU, which supports Hopper and newer only (JAX warns that writing Mosaic GPU
      kernels with ``pallas_call`` is deprecated); in newer JAX it is Triton.
    - 8.x (Ampere, Ada): the Triton path, deprecated since JAX 0.11 (newer versions warn
      when they compile through it), while the installed JAX still has it.
    - older GPUs (a T4 is 7.5) and CPUs: interpret mode, which runs anywhere.

    Importing the Triton module happens only here, for a GPU that needs it, so nothing is
    imported or warned about on other machines.
    """
    if capability is None:
        return KernelPath("interpret mode", False,
                          "no NVIDIA GPU here: Pallas compiles kernels for GPUs and TPUs only, "
                          "so the kernel runs as ordinary XLA operations in a loop over the grid",
                          {"interpret": True})
    major, minor = capability
    where = f"compute capability {major}.{minor}"
    if major < 8:
        return KernelPath("interpret mode", False,
                          f"{where}: Pallas compiles for 8.0 (Triton) and 9.0 (Mosaic GPU) and "
                          "newer, so the kernel runs in interpret mode", {"interpret": True})
    if major >= 9 and pallas_call_gpu_default() == "Mosaic GPU":
        return KernelPath("Mosaic GPU", True,
                          f"{where}: pallas_call's default GPU path in this JAX is Mosaic GPU "
                          "(Hopper and newer); JAX deprecates writing Mosaic GPU kernels with "
                          "pallas_call (its own API is plgpu.kernel) and says so", {})
    params = _triton_params()
    if params is None:
        return KernelPath("interpret mode", False,
                          f"{where}: this JAX compiles pallas_call for GPUs through Triton "
                          "only, and has no Triton path any more", {"interpret": True})
    why = ("pallas_call compiles for GPUs through Triton in this JAX" if major >= 9
           else "Mosaic GPU needs 9.0, so the Triton path (Ampere and newer)")
    return KernelPath("Triton", True, f"{where}: {why}; the Triton path is deprecated since "
                      "JAX 0.11", {"compiler_params": params})


def _triton_params() -> Any:
    """``CompilerParams()`` of Pallas's Triton path, or None when this JAX has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from jax.experimental.pallas import triton as pltriton
        except ImportError:
            return None
        return pltriton.CompilerParams()


@contextlib.contextmanager
def warnings_as_lines(into: list[str]) -> Iterator[None]:
    """Collect the warnings raised inside the block as one-line strings in ``into``
    instead of printing them (a lesson prints what JAX said, in its own words)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = " ".join(str(w.message).split())
        line = f"{w.category.__name__}: {text}"
        if line not in into:
            into.append(line)
