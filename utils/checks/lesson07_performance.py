"""Exercise checkers of lesson 07_performance, with their reference solutions.

Each checker takes the student's function, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's function if it passed, else the reference). Random inputs come from fixed seeds
and memory figures from the compiler or from JAX's own trace, so a verdict never changes
between runs, and a PASSED line prints nothing measured.

- :func:`roofline_time`: the roofline's lower bound on a program's run time from its
  ``cost_analysis()`` dict and a device's two roofs, and which roof binds. Checked on 14
  dicts (FLOPs and bytes from 0 to 1e15, per-operand byte keys and XLA's own
  ``optimal_seconds`` as distractors) against devices whose ridge lies below, at and above
  the program's intensity; exactly at the ridge the answer is ``"compute"``, as the spec says.
- :func:`prefetch_to_device`: a generator that puts batches on the device ``size`` ahead;
  checked by properties: every batch once and in order, exactly ``size`` read ahead (never
  more, never fewer), leaves are ``jax.Array`` on the device, any pytree, empty input.
- :func:`remat_forward`: an MLP forward pass with ``jax.checkpoint`` on each block. Checked
  by behaviour, not by how it is written (a Python loop or a ``lax.scan`` over stacked
  blocks): outputs and gradients equal the plain MLP's (1 block and batch 1 eagerly; 3
  blocks ``2 -> 128 -> 2`` and batch 128 under ``jax.jit``); on the
  latter the forward pass keeps no ``(B, h)`` activation for the backward pass
  (:func:`utils.profiling.saved_residuals`), and the gradient's peak memory as JAX plans it
  (:func:`utils.profiling.planned_peak_bytes`) stays nearer one block's activations at a
  time than all of them (below the midpoint between the reference's and the plain MLP's).
  XLA's CPU compiler merges the recomputation back, so the compiled program's memory could
  not tell them apart there.
- :func:`accumulated_grads`: the mean of micro-batch gradients equals the gradient of the
  large batch (random parameters; 64 examples in 8 micro-batches, and a batch of 1; under
  ``jax.jit``), and memory is bounded: compiled for 64 examples in 8
  micro-batches, its temporary memory (``memory_analysis()``) must stay below the midpoint
  between the reference's (a ``lax.scan`` with a running total) and the whole batch's
  gradient in one go; all micro-batches at once (``vmap``), every micro-batch's gradient
  kept, or an unrolled Python loop that the compiler reorders (as XLA's CPU compiler does)
  land above it.
- :func:`train_epoch`: a loop of steps with no host sync inside; checked for the same
  parameters and mean loss as the reference (1, 3 and 6 batches), a loss that stays a
  ``jax.Array``, each step called once per batch in order; eagerly, with every host read of
  a value the steps computed counted on any backend (``float()``, ``bool()``, printing,
  formatting, ``jax.device_get``, ``block_until_ready``: none may happen before the loop
  returns), and under ``jax.jit`` (6 batches), where ``np.asarray`` or ``.item()`` on a loss
  cannot work.
  A device-to-host transfer guard would stay silent on a CPU, where nothing is copied.

The memory fixtures (the reference's and the plain program's figures) are computed once per
process.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from utils import pipeline, profiling
from utils.exercises import CheckFailed, Hints, call_student, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = [
    "HINTS",
    "accumulated_grads",
    "mlp_block",
    "plain_forward",
    "prefetch_to_device",
    "reference_accumulated_grads",
    "reference_remat_forward",
    "reference_roofline_time",
    "reference_train_epoch",
    "remat_forward",
    "roofline_time",
    "train_epoch",
]

HINTS: dict[str, Hints] = {
    "roofline_time": Hints(
        about="The exercise asks what the roofline predicts for a program: the least time it "
              "can take on a device with a given compute roof and memory roof, and which of "
              "the two limits it. Section 3 explains the two roofs and the ridge between them.",
        think="A device can compute and move data at the same time. How long would the "
              "program take if only its FLOPs counted? If only its bytes counted? Which of "
              "the two times can the real run not beat?",
        closer="Compare your answer on a program that does no arithmetic at all, and on one "
               "whose intensity equals the ridge point (peak FLOP/s divided by bandwidth): "
               "the spec says what to name there.",
    ),
    "prefetch_to_device": Hints(
        about="The exercise builds the iterator of section 4 that starts copying the next "
              "batches to the device while the current one is being computed.",
        think="Picture the queue of batches in flight: how many should be on their way "
              "before the first one is handed out, and when exactly does the next one start "
              "its copy?",
        closer="A generator runs up to its yield and stops there: a copy started after the "
               "yield only begins when the caller asks for the following batch.",
    ),
    "remat_forward": Hints(
        about="The exercise trades compute for memory with jax.checkpoint (section 5): the "
              "backward pass recomputes each block's inside instead of keeping it.",
        think="Ask what the backward pass receives from the forward pass: only the inputs "
              "of the blocks should survive, and only one block should be recomputed at a "
              "time. Which function do you wrap, and how many times is it applied?",
        closer="jax.ad_checkpoint.print_saved_residuals lists what your forward pass keeps; "
               "the default policy of jax.checkpoint saves nothing inside the wrapped "
               "function.",
    ),
    "accumulated_grads": Hints(
        about="The exercise computes a large batch's gradient with the memory of a small "
              "one (section 5, gradient accumulation).",
        think="The mean loss over the batch is the mean of the micro-batch means when they "
              "are of equal size. Which values must be alive at the same time: one "
              "micro-batch's activations and a running total, or more?",
        closer="A loop the compiler can see as a loop (lax.scan or lax.fori_loop) reuses the "
               "same memory for every micro-batch; a vmap over micro-batches computes them "
               "all at once.",
    ),
    "train_epoch": Hints(
        about="The exercise keeps the device busy through a whole epoch: asynchronous "
              "dispatch (lesson 01) only helps if the loop never waits for a step's result "
              "(section 7).",
        think="Which of your lines needs the value of a loss on the host (a Python float, a "
              "NumPy array, a printed number) before the next step is dispatched? Keep the "
              "losses as device arrays and reduce them once, after the loop.",
        closer="Printing or logging a loss inside the loop is a host read too; so is waiting "
               "for it with block_until_ready.",
    ),
}


# --------------------------------------------------------------------------------------
# Reference solutions
# --------------------------------------------------------------------------------------

def reference_roofline_time(cost: dict[str, float], peak_flops: float,
                            peak_bandwidth: float) -> tuple[float, str]:
    """The roofline's lower bound on a program's run time, and the roof that sets it.

    ``cost`` is what ``compiled.cost_analysis()`` returns (``utils.profiling.cost_of``): its
    ``"flops"`` and total ``"bytes accessed"`` (keys with an operand suffix such as
    ``"bytes accessed0{}"`` are parts of it). ``peak_flops`` in FLOP/s, ``peak_bandwidth``
    in bytes/s. Compute and memory traffic overlap, so the program takes at least the longer
    of ``flops / peak_flops`` and ``bytes / peak_bandwidth``. Returns ``(seconds, bound)``
    with ``bound`` ``"memory"`` when moving the bytes takes longer, else ``"compute"`` (also
    at the ridge, where both take as long).
    """
    if "flops" not in cost or "bytes accessed" not in cost:
        raise ValueError("cost must have the keys 'flops' and 'bytes accessed' (the dict "
                         f"compiled.cost_analysis() returns); got keys {sorted(cost)}.")
    if peak_flops <= 0 or peak_bandwidth <= 0:
        raise ValueError(f"the roofs must be positive, got peak_flops={peak_flops} and "
                         f"peak_bandwidth={peak_bandwidth}.")
    compute_s = float(cost["flops"]) / peak_flops
    memory_s = float(cost["bytes accessed"]) / peak_bandwidth
    return max(compute_s, memory_s), ("memory" if memory_s > compute_s else "compute")


def reference_accumulated_grads(loss_fn: Fn, params: Any, images: Any, labels: Any,
                                num_micro_batches: int) -> Any:
    """The gradient of ``loss_fn(params, images, labels)`` over the whole batch, computed
    ``num_micro_batches`` micro-batches at a time with ``lax.scan`` and averaged.

    ``loss_fn`` is a mean over the examples, so with equal micro-batches the mean of their
    gradients is the large batch's gradient, with the memory of one micro-batch.
    images ``(B, ...)``, labels ``(B,)``; ``B`` divisible by ``num_micro_batches``.
    """
    import jax

    batch = images.shape[0]
    if num_micro_batches < 1 or batch % num_micro_batches:
        raise ValueError(f"the batch of {batch} cannot be cut into {num_micro_batches} equal "
                         "micro-batches: choose a divisor of the batch size.")
    micro = batch // num_micro_batches
    xs = images.reshape(num_micro_batches, micro, *images.shape[1:])
    ys = labels.reshape(num_micro_batches, micro, *labels.shape[1:])
    grad_fn = jax.grad(loss_fn)

    def add_micro_batch(total, xy):
        g = grad_fn(params, *xy)
        return jax.tree.map(lambda t, gi: t + gi, total, g), None

    zeros = jax.tree.map(jax.numpy.zeros_like, params)
    total, _ = jax.lax.scan(add_micro_batch, zeros, (xs, ys))
    return jax.tree.map(lambda t: t / num_micro_batches, total)


def mlp_block(block: tuple[Any, Any, Any, Any], x: Any) -> Any:
    """One block of :func:`reference_remat_forward`: two layers, ``d -> h -> d``.

    ``block = (w1 (d, h), b1 (h,), w2 (h, d), b2 (d,))``; returns
    ``relu(relu(x @ w1 + b1) @ w2 + b2)``, x ``(B, d)`` -> ``(B, d)``.
    """
    import jax

    w1, b1, w2, b2 = block
    return jax.nn.relu(jax.nn.relu(x @ w1 + b1) @ w2 + b2)


def plain_forward(params: list[tuple[Any, Any, Any, Any]], x: Any) -> Any:
    """The MLP of :func:`reference_remat_forward` without remat: :func:`mlp_block` in turn."""
    for block in params:
        x = mlp_block(block, x)
    return x


def reference_remat_forward(params: list[tuple[Any, Any, Any, Any]], x: Any) -> Any:
    """An MLP of blocks, ``x = mlp_block(block, x)`` for each block in ``params``, with every
    block wrapped in ``jax.checkpoint``: the activations inside a block are not kept for the
    backward pass but recomputed there from the block's input. x ``(B, d)`` -> ``(B, d)``."""
    import jax

    block_fn = jax.checkpoint(mlp_block)
    for block in params:
        x = block_fn(block, x)
    return x


def reference_train_epoch(step: Fn, params: Any, batches: list[Any]) -> tuple[Any, Any]:
    """Run ``params, loss = step(params, batch)`` for each batch; return ``(params, mean
    loss)`` with the mean a ``jax.Array`` computed on the device: nothing inside the loop
    waits for the device or copies a value to the host."""
    import jax.numpy as jnp

    losses = []
    for batch in batches:
        params, loss = step(params, batch)
        losses.append(loss)
    return params, jnp.mean(jnp.stack(losses))


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------

def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:.1f} KiB"


def _tree_close(got: Any, expected: Any, what: str, rtol: float = 2e-5,
                atol: float = 1e-6) -> None:
    import jax

    got_leaves, got_def = jax.tree.flatten(got)
    exp_leaves, exp_def = jax.tree.flatten(expected)
    if got_def != exp_def:
        raise CheckFailed(f"{what} has the structure {got_def}, expected {exp_def} (the same "
                          "structure as the parameters).")
    for g, e in zip(got_leaves, exp_leaves, strict=True):
        e = np.asarray(e)
        if not hasattr(g, "shape") or tuple(g.shape) != e.shape:
            raise CheckFailed(f"{what} has a leaf of shape {getattr(g, 'shape', None)}, "
                              f"expected {e.shape}.")
        g = np.asarray(g)
        if not np.allclose(g, e, rtol=rtol, atol=atol):
            scale = float(np.max(np.abs(e))) or 1.0
            ratio = float(np.max(np.abs(g))) / scale
            raise CheckFailed(f"{what} differs from the reference (largest size {ratio:.3g} "
                              "times the expected one).")


# --------------------------------------------------------------------------------------
# 1. roofline_time
# --------------------------------------------------------------------------------------

def _roofline_cases() -> list[tuple[dict[str, float], float, float]]:
    rng = np.random.default_rng(7)
    cases = []
    for i in range(14):
        flops = 0.0 if i == 5 else float(rng.integers(1, 10**6)) * 10.0 ** int(rng.integers(0, 10))
        moved = 0.0 if i == 9 else float(rng.integers(1, 10**6)) * 10.0 ** int(rng.integers(0, 7))
        bandwidth = float(rng.choice([3e9, 3.2e11, 3.35e12]))
        if i in (6, 12):  # exactly at the ridge, in numbers whose arithmetic is exact
            moved, bandwidth = 3.0 * 2.0 ** (20 + i), 2.0 ** 30
            flops, peak = moved * 16.0, bandwidth * 16.0
        elif moved:  # the device's ridge well below or above the program's intensity
            peak = flops / moved * bandwidth * float(rng.choice([0.1, 0.6, 1.7, 20.0]))
        else:
            peak = 1e12
        peak = peak or 1e12
        parts = rng.dirichlet(np.ones(3)) * moved
        cost = {"flops": flops, "bytes accessed": moved, "transcendentals": float(i),
                "bytes accessed0{}": float(parts[0]), "bytes accessed1{}": float(parts[1]),
                "bytes accessedout{}": float(parts[2]), "utilization0{}": 3.0,
                "optimal_seconds": float(rng.uniform(1e-9, 1e-3))}
        if i % 4 == 3:
            cost = {k: np.float64(v) for k, v in cost.items()}
        cases.append((cost, peak, bandwidth))
    return cases


def _check_roofline(fn: Fn) -> str:
    cases = _roofline_cases()
    bounds = set()
    for cost, peak, bandwidth in cases:
        before = dict(cost)
        got = fn(cost, peak, bandwidth)
        if cost != before:
            raise CheckFailed("the function changed the dict it was given: only read it.")
        where = (f"for flops={cost['flops']:.4g}, bytes accessed={cost['bytes accessed']:.4g}, "
                 f"peak_flops={peak:.4g} and peak_bandwidth={bandwidth:.4g}")
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise CheckFailed(f"returned {type(got).__name__} {where}; expected a tuple "
                              "(seconds, bound) with bound 'compute' or 'memory'.")
        seconds, bound = got
        if isinstance(seconds, bool) or not isinstance(seconds, int | float | np.floating |
                                                          np.integer):
            raise CheckFailed(f"the time is a {type(seconds).__name__} {where}; expected a "
                              "number of seconds.")
        expected_s, expected_bound = reference_roofline_time(cost, peak, bandwidth)
        compute_s, memory_s = cost["flops"] / peak, cost["bytes accessed"] / bandwidth
        if not np.isclose(float(seconds), expected_s, rtol=1e-9, atol=0.0):
            raise CheckFailed(f"{where}, returned {float(seconds):.6g} s, expected "
                              f"{expected_s:.6g} s (the FLOPs alone take {compute_s:.6g} s, the "
                              f"bytes alone {memory_s:.6g} s).")
        if bound != expected_bound:
            raise CheckFailed(f"{where}, named the {bound!r} roof, expected {expected_bound!r} "
                              f"(the FLOPs alone take {compute_s:.6g} s, the bytes alone "
                              f"{memory_s:.6g} s).")
        bounds.add(bound)
    return (f"equals the roofline's bound and names its roof on {len(cases)} cost dicts "
            "(0 to 1e15 FLOPs and bytes, per-operand keys present; compute- and memory-bound, "
            "at the ridge too), and leaves the dict unchanged")


def roofline_time(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``roofline_time(cost, peak_flops, peak_bandwidth) -> (seconds, bound)``."""
    return run_check("roofline_time", student_fn, reference_roofline_time, _check_roofline,
                     HINTS["roofline_time"], quiet=quiet)


# --------------------------------------------------------------------------------------
# 2. prefetch_to_device
# --------------------------------------------------------------------------------------

class _CountingSource:
    """An iterator over host batches that records how many items were read from it."""

    def __init__(self, items: list[Any]):
        self.items = items
        self.read = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.read += 1
            yield item


def _host_items(rng: np.random.Generator, n: int, kind: str) -> list[Any]:
    items = []
    for i in range(n):
        x = rng.normal(size=(3, 2 + i % 2)).astype(np.float32)
        y = rng.integers(0, 10, size=(3,)).astype(np.int32)
        items.append({"tuple": (x, y), "array": x, "dict": {"images": x, "labels": y}}[kind])
    return items


def _check_prefetch(fn: Fn) -> str:
    import jax

    device = jax.devices()[0]
    rng = np.random.default_rng(3)
    cases = [(5, 2, "tuple"), (4, 1, "array"), (3, 5, "dict"), (1, 1, "tuple"),
             (6, 3, "tuple"), (0, 2, "array")]
    for n, size, kind in cases:
        items = _host_items(rng, n, kind)
        source = _CountingSource(items)
        where = f"with {n} batches and size={size}"
        iterator = fn(iter(source), size)
        if not hasattr(iterator, "__next__"):
            iterator = iter(iterator)
        got = []
        for k in itertools.count(1):
            try:
                item = next(iterator)
            except StopIteration:
                break
            if k > n:
                raise CheckFailed(f"it yielded more than the {n} batches it was given {where}.")
            wanted = min(n, k + size)
            if source.read > wanted:
                raise CheckFailed(f"when batch {k} was handed out, {source.read} batches had "
                                  f"been read from the source {where}; at most {wanted} "
                                  f"(k + size) may be: read lazily, keep only size ahead.")
            if source.read < wanted:
                raise CheckFailed(f"when batch {k} was handed out, only {source.read} batches "
                                  f"had been read from the source {where}; expected {wanted} "
                                  f"(k + size): start the next {size} transfers before "
                                  "handing out a batch.")
            got.append(item)
        if len(got) != n:
            raise CheckFailed(f"it yielded {len(got)} batches {where}; expected all {n}.")
        for k, (item, host) in enumerate(zip(got, items, strict=True), start=1):
            leaves, tree = jax.tree.flatten(item)
            host_leaves, host_tree = jax.tree.flatten(host)
            if tree != host_tree:
                raise CheckFailed(f"batch {k} has the structure {tree}, expected {host_tree} "
                                  f"{where}: put the whole batch (any pytree) on the device.")
            for leaf, host_leaf in zip(leaves, host_leaves, strict=True):
                if not isinstance(leaf, jax.Array):
                    raise CheckFailed(f"batch {k} has a leaf of type {type(leaf).__name__} "
                                      f"{where}: it must be a jax.Array (use jax.device_put).")
                if leaf.devices() != {device}:
                    raise CheckFailed(f"batch {k} is on {leaf.devices()}, not on {device} "
                                      f"{where}.")
                if leaf.dtype != host_leaf.dtype or not np.array_equal(np.asarray(leaf),
                                                                        host_leaf):
                    raise CheckFailed(f"batch {k} differs from the source's batch {k} {where}: "
                                      "yield every batch once, in order, unchanged.")
    return (f"{len(cases)} sources (0 to 6 batches, size 1 to 5, arrays, tuples, dicts): every "
            "batch once, in order, unchanged, as a jax.Array on the device, read exactly size "
            "batches ahead")


def prefetch_to_device(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``prefetch_to_device(batches, size) -> iterator of batches on the device``."""
    return run_check("prefetch_to_device", student_fn, pipeline.prefetch_to_device,
                     _check_prefetch, HINTS["prefetch_to_device"], quiet=quiet)


# --------------------------------------------------------------------------------------
# 3. accumulated_grads
# --------------------------------------------------------------------------------------

def _mlp_loss(params: dict[str, Any], images: Any, labels: Any) -> Any:
    import jax
    import jax.numpy as jnp

    h = jnp.tanh(images @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _accum_case(rng: np.random.Generator, batch: int, din: int, dh: int, k: int):
    import jax.numpy as jnp

    params = {"w1": jnp.asarray(rng.normal(size=(din, dh)), jnp.float32),
              "b1": jnp.asarray(rng.normal(size=(dh,)), jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(dh, k)), jnp.float32),
              "b2": jnp.asarray(rng.normal(size=(k,)), jnp.float32)}
    images = jnp.asarray(rng.normal(size=(batch, din)), jnp.float32)
    # Different labels per micro-batch (never all the same), so the last or first micro-batch
    # alone gives a different gradient.
    labels = jnp.asarray(rng.integers(0, k, size=(batch,)), jnp.int32)
    return params, images, labels


_ACCUM_CASES = ((1, 1),)  # (batch, micro-batches): the edge of one example
#: The memory case: (batch, micro-batches, inputs, hidden units, classes). The activations of
#: the whole batch dwarf the parameters, and 8 copies of the gradient dwarf one micro-batch's
#: activations, so both ways of not bounding memory stand out.
_MEMORY_CASE = (64, 8, 16, 256, 4)


def _temp_bytes(compiled: Any) -> int:
    return int(profiling.memory_of(compiled).get("temp", 0))


@functools.cache
def _accum_fixtures() -> tuple[list[tuple[Any, ...]], tuple[Any, ...], int, int]:
    """The checker's inputs, their large-batch gradients, and the memory case's two bounds:
    ``(value cases, memory case, temp of one micro-batch at a time, temp of the whole batch
    in one go)``. Built once per process (fixed seeds: always the same)."""
    import jax

    rng = np.random.default_rng(5)
    grad = jax.jit(jax.grad(_mlp_loss))
    cases = []
    for batch, micro in _ACCUM_CASES:
        params, images, labels = _accum_case(rng, batch, 5, 4, 3)
        cases.append((batch, micro, params, images, labels, grad(params, images, labels)))
    batch, micro, din, dh, k = _MEMORY_CASE
    params, images, labels = _accum_case(rng, batch, din, dh, k)
    whole = grad.lower(params, images, labels).compile()
    bounded = jax.jit(reference_accumulated_grads, static_argnums=(0, 4)).lower(
        _mlp_loss, params, images, labels, micro).compile()
    memory_case = (batch, micro, params, images, labels, whole(params, images, labels))
    return cases, memory_case, _temp_bytes(bounded), _temp_bytes(whole)


def _check_accumulated(fn: Fn) -> str:
    import jax

    cases, memory_case, bounded, whole = _accum_fixtures()
    jitted = jax.jit(fn, static_argnums=(0, 4))
    for batch, micro, params, images, labels, expected in (memory_case, *cases):
        where = f"for a batch of {batch} in {micro} micro-batches under jax.jit"
        compiled = call_student(where, lambda *a: jitted.lower(*a).compile(), _mlp_loss, params,
                         images, labels, micro)
        got = call_student(where, compiled, params, images, labels)
        got_w2 = got.get("w2") if isinstance(got, dict) else None
        if micro > 1 and getattr(got_w2, "shape", None) == expected["w2"].shape and \
                np.allclose(np.asarray(got_w2), micro * np.asarray(expected["w2"]),
                            rtol=1e-4, atol=1e-5):
            raise CheckFailed(f"{where}, the gradient is {micro} times too large: the sum of "
                              "the micro-batch gradients, not their mean.")
        _tree_close(got, expected, f"the gradient {where}", rtol=1e-4, atol=1e-5)
        temp = _temp_bytes(compiled)
        if batch == memory_case[0] and temp > bounded + 0.5 * (whole - bounded):
            same = " (as much as the whole batch in one go)" if temp >= 0.9 * whole else ""
            raise CheckFailed(f"compiled for a batch of {batch} in {micro} micro-batches, it "
                              f"needs {_kib(temp)} of temporary memory (the compiler's "
                              f"memory_analysis){same}; the gradient of the whole batch in one "
                              f"go needs {_kib(whole)}, one micro-batch at a time with a running "
                              f"total {_kib(bounded)}. Accumulation is for memory: it must stay "
                              "near the latter.")
    return (f"equals the large-batch gradient under jax.jit on {len(cases) + 1} random cases "
            "(64 examples in 8 micro-batches; a batch of 1), and compiled for 64 examples in 8 "
            "micro-batches needs about one micro-batch's temporary memory, far less than the "
            "whole batch at once")


def accumulated_grads(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``accumulated_grads(loss_fn, params, images, labels, num_micro_batches)``."""
    return run_check("accumulated_grads", student_fn, reference_accumulated_grads,
                     _check_accumulated, HINTS["accumulated_grads"], quiet=quiet)


# --------------------------------------------------------------------------------------
# 4. remat_forward
# --------------------------------------------------------------------------------------

#: (blocks, d, h, batch) for values and gradients; the last is also the memory case: the
#: blocks' (B, h) activations dwarf their parameters (h >> d, a large batch), so keeping
#: them, or recomputing every block at once, stands out from one block at a time.
_REMAT_CASES = ((1, 5, 7, 1), (3, 2, 128, 128))


def _remat_case(rng: np.random.Generator, blocks: int, d: int, h: int, batch: int):
    import jax.numpy as jnp

    def normal(*shape: int, scale: float = 1.0) -> Any:
        return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)

    params = [(normal(d, h, scale=d ** -0.5), normal(h), normal(h, d, scale=h ** -0.5),
               normal(d)) for _ in range(blocks)]
    return params, normal(batch, d)


def _remat_loss(forward: Fn) -> Fn:
    import jax.numpy as jnp

    return lambda params, x: jnp.sum(jnp.sin(forward(params, x)))


@functools.cache
def _remat_fixtures() -> tuple[list[tuple[Any, ...]], int, int]:
    """``(cases with their plain outputs and gradients, peak bytes of the gradient with one
    block recomputed at a time, without remat)``, the peaks on the last case. Built once per
    process (fixed seeds: always the same)."""
    import jax

    rng = np.random.default_rng(11)
    plain, plain_grad = jax.jit(plain_forward), jax.jit(jax.grad(_remat_loss(plain_forward)))
    cases = []
    for blocks, d, h, batch in _REMAT_CASES:
        params, x = _remat_case(rng, blocks, d, h, batch)
        cases.append((blocks, d, h, batch, params, x, plain(params, x), plain_grad(params, x)))
    params, x = cases[-1][4:6]
    bounded = profiling.planned_peak_bytes(jax.grad(_remat_loss(reference_remat_forward)),
                                           params, x)
    unbounded = profiling.planned_peak_bytes(jax.grad(_remat_loss(plain_forward)), params, x)
    return cases, bounded, unbounded


def _check_remat(fn: Fn) -> str:
    import jax

    (small, large), bounded, unbounded = _remat_fixtures()
    # The memory case first, under jax.jit: its values, then what it keeps and its peak.
    blocks, d, h, batch, params, x, expected, expected_grad = large
    where = f"for {blocks} blocks {d} -> {h} -> {d} and a batch of {batch}"
    both = jax.jit(lambda params, x: (fn(params, x), jax.grad(_remat_loss(fn))(params, x)))
    got, got_grad = call_student(f"{where} under jax.jit", both, params, x)
    _tree_close(got, expected, f"the output {where} under jax.jit", rtol=1e-5, atol=1e-5)
    _tree_close(got_grad, expected_grad, f"the gradient {where} under jax.jit", rtol=1e-4,
                atol=1e-5)
    # Memory as JAX plans it: XLA's CPU compiler merges the recomputation back, so the
    # compiled program could not show it there.
    kept = [shape for shape, _ in profiling.saved_residuals(fn, params, x)
            if tuple(shape[-2:]) == (batch, h)]
    if kept:
        raise CheckFailed(f"{where}, the forward pass keeps {len(kept)} array(s) of shape "
                          f"{kept[0]} for the backward pass (jax.ad_checkpoint."
                          "print_saved_residuals lists them): activations inside the blocks are "
                          "kept, not recomputed.")
    student = profiling.planned_peak_bytes(jax.grad(_remat_loss(fn)), params, x)
    if student > bounded + 0.5 * (unbounded - bounded):
        raise CheckFailed(f"{where}, the gradient needs {_kib(student)} at its peak (memory as "
                          f"JAX plans it, utils.profiling.planned_peak_bytes), like the "
                          f"{_kib(unbounded)} of the MLP without remat; recomputing one block at "
                          f"a time needs {_kib(bounded)}. Its backward pass has the activations "
                          "of several blocks alive at once.")
    # The small case eagerly, op by op.
    blocks, d, h, batch, params, x, expected, expected_grad = small
    where = f"for {blocks} block {d} -> {h} -> {d} and a batch of {batch}"
    got = call_student(where, fn, params, x)
    _tree_close(got, expected, f"the output {where}", rtol=1e-5, atol=1e-5)
    got_grad = call_student(f"{where}, differentiated", jax.grad(_remat_loss(fn)), params, x)
    _tree_close(got_grad, expected_grad, f"the gradient {where}", rtol=1e-4, atol=1e-5)
    return ("outputs and gradients equal the plain MLP's (3 blocks and a batch of 128 under "
            "jax.jit, 1 block and a batch of 1 eagerly); the forward pass keeps no (B, h) "
            "activation, and the gradient's peak memory (as JAX plans it) stays near one "
            "block's activations at a time")


def remat_forward(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``remat_forward(params, x)``: the MLP with ``jax.checkpoint`` on each block."""
    return run_check("remat_forward", student_fn, reference_remat_forward, _check_remat,
                     HINTS["remat_forward"], quiet=quiet)


# --------------------------------------------------------------------------------------
# 5. train_epoch
# --------------------------------------------------------------------------------------

@functools.cache
def _sgd_problems() -> list[tuple[Any, ...]]:
    """``[(params, batches, step, expected params, expected mean loss), ...]`` for 3, 1 and 6
    batches: a jitted SGD step on a linear model. Built once per process (fixed seed)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def step(params, batch):
        x, y = batch

        def loss_fn(p):
            return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), loss

    rng = np.random.default_rng(13)
    problems = []
    for num_batches, din in ((3, 5), (1, 2), (6, 3)):
        params = {"w": jnp.asarray(rng.normal(size=(din,)), jnp.float32),
                  "b": jnp.asarray(rng.normal(), jnp.float32)}
        batches = [(jnp.asarray(rng.normal(size=(4, din)), jnp.float32),
                    jnp.asarray(rng.normal(size=(4,)), jnp.float32))
                   for _ in range(num_batches)]
        problems.append((params, batches, step,
                         *reference_train_epoch(step, params, batches)))
    return problems


@contextlib.contextmanager
def _host_reads(inputs: Any) -> Iterator[list[str]]:
    """Record every read on the host of a ``jax.Array`` other than ``inputs``' while inside.

    JAX brings an array's value to the host for ``float()``, ``int()``, ``bool()``,
    ``.tolist()``, ``jax.device_get``, printing and formatting through ``ArrayImpl._value``,
    and waits for it in ``block_until_ready``: both are wrapped for the duration, so a read is
    seen on every backend (a transfer guard fires only where the device has memory of its
    own, never on a CPU). ``np.asarray`` and ``.item()`` can take a CPU array's buffer
    directly; the run under ``jax.jit`` catches those.
    """
    import jax
    from jax._src import array as jax_array

    given = {id(leaf): leaf for leaf in jax.tree.leaves(inputs)}
    cls = jax_array.ArrayImpl
    value = cls.__dict__.get("_value")
    method = cls.__dict__.get("block_until_ready")
    api_wait = jax.block_until_ready
    reads: list[str] = []

    def seen(x: Any, how: str) -> None:
        if isinstance(x, jax.Array) and given.get(id(x)) is not x:
            reads.append(how)

    def read(self: Any) -> Any:
        seen(self, "read")
        return value.fget(self)

    def wait(self: Any) -> Any:
        seen(self, "waited for")
        return method(self)

    def wait_tree(tree: Any) -> Any:
        for leaf in jax.tree.leaves(tree):
            seen(leaf, "waited for")
        return api_wait(tree)

    if isinstance(value, property):
        cls._value = property(read)
    if method is not None:
        cls.block_until_ready = wait
    jax.block_until_ready = wait_tree
    try:
        yield reads
    finally:
        if isinstance(value, property):
            cls._value = value
        if method is not None:
            cls.block_until_ready = method
        jax.block_until_ready = api_wait


def _host_sync_message(error: BaseException, how: str) -> str:
    name = type(error).__name__
    if "Concretization" in name or "TracerArrayConversion" in name or \
            "TracerIntegerConversion" in name:
        return (f"{how}, it converts a loss to a Python or NumPy number ({name}): that is a "
                "host sync, which waits for the device at every step.")
    return f"{how}, your function raised {summarize_error(error).rstrip('.')}."


def _check_train_epoch(fn: Fn) -> str:
    import jax

    for params, batches, step, expected_params, expected_loss in _sgd_problems():  # 3, 1, 6
        num_batches = len(batches)
        where = f"with {num_batches} batch(es)"
        seen: list[int] = []

        def counting_step(p, batch, seen=seen, step=step, batches=batches):
            seen.append(next(i for i, b in enumerate(batches) if b is batch))
            return step(p, batch)

        with _host_reads((params, batches)) as reads, \
                contextlib.redirect_stdout(io.StringIO()):  # what it prints is not the verdict
            out = call_student(where, fn, counting_step, params, batches)
        if reads:
            raise CheckFailed(f"{where}, the loop {reads[0]} a value computed by the steps on "
                              f"the host ({len(reads)} time(s) before it returned: a Python "
                              "conversion, a print or a wait): each such read waits for the "
                              "step, and the device idles while Python catches up.")
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"returned a {type(out).__name__} {where}; expected a tuple "
                              "(params, mean_loss).")
        if seen != list(range(num_batches)):
            raise CheckFailed(f"step was called on batches {seen} {where}; expected each batch "
                              f"once, in order: {list(range(num_batches))}.")
        new_params, mean_loss = out
        if not isinstance(mean_loss, jax.Array):
            raise CheckFailed(f"the mean loss is a {type(mean_loss).__name__} {where}, not a "
                              "jax.Array: turning it into a Python or NumPy number waits for "
                              "the device (a host sync).")
        _tree_close(new_params, expected_params, f"the parameters after the epoch {where}")
        _tree_close(mean_loss, expected_loss, f"the mean loss {where}", rtol=1e-5, atol=1e-6)
    # Under jax.jit a loss is a tracer: np.asarray, .item() or float() on it cannot work.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            got = jax.jit(lambda p, bs, step=step: fn(step, p, bs))(params, batches)
    except (NotImplementedError, CheckFailed):
        raise
    except Exception as error:
        raise CheckFailed(_host_sync_message(error, f"{where}, under jax.jit")) from None
    _tree_close(got[1], expected_loss, f"the mean loss {where} under jax.jit",
                rtol=1e-5, atol=1e-6)
    return ("same parameters and mean loss as the reference for 1, 3 and 6 batches; each "
            "step once, in order; the loss stays a jax.Array; no value computed by the steps "
            "read on the host or waited for inside the loop (counted on any backend), and it "
            "runs under jax.jit (6 batches)")


def train_epoch(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``train_epoch(step, params, batches) -> (params, mean_loss)`` with no host sync."""
    return run_check("train_epoch", student_fn, reference_train_epoch, _check_train_epoch,
                     HINTS["train_epoch"], quiet=quiet)
