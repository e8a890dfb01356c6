"""Exercise checkers of lesson 07_performance, with their reference solutions.

Each checker takes the student's function, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns what to go on with (the
student's function if it passed, else the reference). Random inputs come from fixed seeds,
so a verdict never changes between runs, and a PASSED line prints nothing measured.

- :func:`arithmetic_intensity`: FLOPs per byte from a ``cost_analysis()`` dict; checked on
  many dicts with per-operand byte keys as distractors, values from 0 to 1e15.
- :func:`prefetch_to_device`: a generator that puts batches on the device ``size`` ahead;
  checked by properties: every batch once and in order, exactly ``size`` read ahead (never
  more, never fewer), leaves are ``jax.Array`` on the device, any pytree, empty input.
- :func:`accumulated_grads`: the mean of micro-batch gradients equals the gradient of the
  large batch; compared on random parameters, micro-batch counts from 1 to the batch size,
  eagerly and under ``jax.jit``.
- :func:`remat_forward`: an MLP forward pass with ``jax.checkpoint`` on each block; checked
  for equal outputs and gradients, one checkpoint per block, and a backward program (as
  JAX lowers it) that really recomputes: more matmuls than without remat.
- :func:`train_epoch`: a loop of steps with no host sync inside; checked for the same
  parameters and mean loss as the reference, a loss that stays a ``jax.Array``, each step
  called once per batch in order, under ``jax.jit`` (where ``float()`` cannot work) and
  under ``jax.transfer_guard_device_to_host("disallow")``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from utils import pipeline
from utils.exercises import CheckFailed, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = [
    "accumulated_grads",
    "arithmetic_intensity",
    "count_primitives",
    "mlp_block",
    "plain_forward",
    "prefetch_to_device",
    "reference_accumulated_grads",
    "reference_arithmetic_intensity",
    "reference_remat_forward",
    "reference_train_epoch",
    "remat_forward",
    "train_epoch",
]

#: The names of jax.checkpoint's primitive in a jaxpr (it was renamed between versions).
REMAT_PRIMITIVES = frozenset({"remat2", "checkpoint", "remat"})


# --------------------------------------------------------------------------------------
# Reference solutions
# --------------------------------------------------------------------------------------

def reference_arithmetic_intensity(cost: dict[str, float]) -> float:
    """FLOPs per byte moved: ``cost["flops"] / cost["bytes accessed"]``.

    ``cost`` is what ``compiled.cost_analysis()`` returns (see ``utils.profiling.cost_of``);
    ``"bytes accessed"`` is the whole program's total (the keys with an operand suffix,
    ``"bytes accessed0{}"``, are parts of it).
    """
    if "flops" not in cost or "bytes accessed" not in cost:
        raise ValueError("cost must have the keys 'flops' and 'bytes accessed' (the dict "
                         f"compiled.cost_analysis() returns); got keys {sorted(cost)}.")
    moved = float(cost["bytes accessed"])
    if moved <= 0:
        raise ValueError(f"'bytes accessed' is {moved}: the intensity needs a positive byte "
                         "count (the backend may not report costs for this program).")
    return float(cost["flops"]) / moved


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

def count_primitives(jaxpr: Any, names: Iterable[str]) -> int:
    """How many equations of ``jaxpr`` (a Jaxpr or ClosedJaxpr, sub-jaxprs included) use a
    primitive named in ``names``."""
    names = frozenset(names)
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name in names
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += count_primitives(inner, names)
    return total


def _tree_close(got: Any, expected: Any, what: str, rtol: float = 2e-5,
                atol: float = 1e-6) -> None:
    import jax

    try:
        got_leaves, got_def = jax.tree.flatten(got)
    except Exception:  # pragma: no cover - flatten accepts anything
        raise CheckFailed(f"{what} is not a pytree of arrays.") from None
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
# 1. arithmetic_intensity
# --------------------------------------------------------------------------------------

def _cost_cases() -> list[dict[str, float]]:
    rng = np.random.default_rng(7)
    cases = []
    for i in range(12):
        flops = 0.0 if i == 5 else float(rng.integers(1, 10**6)) * 10.0 ** int(rng.integers(0, 10))
        moved = float(rng.integers(1, 10**6)) * 10.0 ** int(rng.integers(0, 7))
        parts = rng.dirichlet(np.ones(3)) * moved
        cost = {"flops": flops, "bytes accessed": moved, "transcendentals": float(i),
                "bytes accessed0{}": float(parts[0]), "bytes accessed1{}": float(parts[1]),
                "bytes accessedout{}": float(parts[2]), "utilization0{}": 3.0,
                "optimal_seconds": 0.0}
        if i % 4 == 3:
            cost = {k: np.float64(v) for k, v in cost.items()}
        cases.append(cost)
    return cases


def _check_intensity(fn: Fn) -> str:
    cases = _cost_cases()
    for cost in cases:
        before = dict(cost)
        got = fn(cost)
        if cost != before:
            raise CheckFailed("the function changed the dict it was given: only read it.")
        if isinstance(got, bool) or not isinstance(got, int | float | np.floating | np.integer):
            raise CheckFailed(f"returned a {type(got).__name__}, but a single number "
                              "(FLOP per byte) was expected.")
        expected = reference_arithmetic_intensity(cost)
        if not np.isclose(float(got), expected, rtol=1e-9, atol=0.0):
            if expected and np.isclose(float(got), 1 / expected, rtol=1e-9):
                raise CheckFailed("the result is bytes per FLOP: divide the FLOPs by the "
                                  "bytes, not the other way round.")
            raise CheckFailed(f"for flops={cost['flops']:.6g} and bytes accessed="
                              f"{cost['bytes accessed']:.6g}, returned {float(got):.6g}, "
                              f"expected {expected:.6g}. Use the total 'bytes accessed' (the "
                              "keys with a suffix such as '0{}' are parts of it).")
    return (f"matches flops / 'bytes accessed' on {len(cases)} cost dicts (values from 0 to "
            "1e15, with per-operand byte keys present), and leaves the dict unchanged")


def arithmetic_intensity(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``arithmetic_intensity(cost: dict) -> float`` (FLOP per byte)."""
    return run_check(
        "arithmetic_intensity", student_fn, reference_arithmetic_intensity, _check_intensity,
        "return cost['flops'] / cost['bytes accessed'] as a float.",
        quiet=quiet,
    )


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
    return run_check(
        "prefetch_to_device", student_fn, pipeline.prefetch_to_device, _check_prefetch,
        "keep a collections.deque; append jax.device_put(item) for the first `size` items of "
        "iter(batches); then loop: popleft one, append the next item (if any), yield the one "
        "popped.",
        quiet=quiet,
    )


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


_ACCUM_CASES = ((6, 2), (6, 1), (6, 3), (6, 6), (1, 1))  # (batch, micro-batches)


def _check_accumulated(fn: Fn) -> str:
    import jax

    rng = np.random.default_rng(5)
    jitted = jax.jit(fn, static_argnums=(0, 4))
    large_batch_grad = jax.jit(jax.grad(_mlp_loss))
    for batch, micro in _ACCUM_CASES:
        params, images, labels = _accum_case(rng, batch, 5, 4, 3)
        expected = large_batch_grad(params, images, labels)
        for how, f in ((" under jax.jit", jitted),):
            where = f"for a batch of {batch} in {micro} micro-batches{how}"
            try:
                got = f(_mlp_loss, params, images, labels, micro)
            except (NotImplementedError, CheckFailed):
                raise
            except Exception as error:
                raise CheckFailed(f"{where}, your function raised "
                                  f"{summarize_error(error).rstrip('.')}.") from None
            got_w2 = got.get("w2") if isinstance(got, dict) else None
            if micro > 1 and getattr(got_w2, "shape", None) == expected["w2"].shape and \
                    np.allclose(np.asarray(got_w2), micro * np.asarray(expected["w2"]),
                                rtol=1e-4, atol=1e-5):
                raise CheckFailed(f"{where}, the gradient is {micro} times too large: divide "
                                  "the sum of the micro-batch gradients by their number.")
            _tree_close(got, expected, f"the gradient {where}", rtol=1e-4, atol=1e-5)
    return (f"equals the large-batch gradient on {len(_ACCUM_CASES)} random cases (batch 1 and "
            "6, 1 micro-batch up to one example each), under jax.jit")


def accumulated_grads(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``accumulated_grads(loss_fn, params, images, labels, num_micro_batches)``."""
    return run_check(
        "accumulated_grads", student_fn, reference_accumulated_grads, _check_accumulated,
        "reshape images and labels to (num_micro_batches, B // num_micro_batches, ...), "
        "lax.scan over them adding jax.grad(loss_fn)(params, x, y) into a tree of zeros, then "
        "divide the sum by num_micro_batches.",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------
# 4. remat_forward
# --------------------------------------------------------------------------------------

_REMAT_CASES = ((1, 5, 7, 4), (3, 4, 9, 1))  # (blocks, d, h, batch)


def _remat_case(rng: np.random.Generator, blocks: int, d: int, h: int, batch: int):
    import jax.numpy as jnp

    def normal(*shape: int, scale: float = 1.0) -> Any:
        return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)

    params = [(normal(d, h, scale=d ** -0.5), normal(h), normal(h, d, scale=h ** -0.5),
               normal(d)) for _ in range(blocks)]
    return params, normal(batch, d)


def _check_remat(fn: Fn) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(11)

    def loss(forward: Fn) -> Fn:
        return lambda params, x: jnp.sum(jnp.sin(forward(params, x)))

    jitted, plain = jax.jit(fn), jax.jit(plain_forward)
    grad_fn, plain_grad = jax.jit(jax.grad(loss(fn))), jax.jit(jax.grad(loss(plain_forward)))
    for case, (blocks, d, h, batch) in enumerate(_REMAT_CASES):
        params, x = _remat_case(rng, blocks, d, h, batch)
        where = f"for {blocks} block(s) {d} -> {h} -> {d} and a batch of {batch}"
        expected = plain(params, x)
        ways = [(" under jax.jit", jitted)] + ([("", fn)] if case == 0 else [])
        for how, f in ways:
            _tree_close(f(params, x), expected, f"the output {where}{how}", rtol=1e-5, atol=1e-5)
        _tree_close(grad_fn(params, x), plain_grad(params, x), f"the gradient {where}",
                    rtol=1e-4, atol=1e-5)
        checkpoints = count_primitives(jax.make_jaxpr(fn)(params, x), REMAT_PRIMITIVES)
        if checkpoints != blocks:
            raise CheckFailed(f"the forward pass {where} has {checkpoints} jax.checkpoint "
                              f"region(s), expected {blocks}: wrap each block, once.")
        dots = count_primitives(jax.make_jaxpr(jax.grad(loss(fn)))(params, x), {"dot_general"})
        without = count_primitives(jax.make_jaxpr(jax.grad(loss(plain_forward)))(params, x),
                                   {"dot_general"})
        if dots <= without:
            raise CheckFailed(f"the backward pass {where} recomputes nothing ({dots} matmuls, as "
                              "without remat): is a policy saving every activation? Use "
                              "jax.checkpoint(block) with its default policy.")
    return (f"outputs and gradients equal the plain MLP for {len(_REMAT_CASES)} depths (1 and "
            "3 blocks; batch 1 and 4), under jax.jit, and eagerly; one jax.checkpoint per block; "
            "the backward pass recomputes the blocks' matmuls")


def remat_forward(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``remat_forward(params, x)``: the MLP with ``jax.checkpoint`` on each block."""
    return run_check(
        "remat_forward", student_fn, reference_remat_forward, _check_remat,
        "wrap mlp_block once with jax.checkpoint (default policy) and apply the wrapped "
        "function to each block of params in turn: x = remat_block(block, x).",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------
# 5. train_epoch
# --------------------------------------------------------------------------------------

def _sgd_problem(rng: np.random.Generator, num_batches: int, din: int):
    import jax
    import jax.numpy as jnp

    params = {"w": jnp.asarray(rng.normal(size=(din,)), jnp.float32),
              "b": jnp.asarray(rng.normal(), jnp.float32)}
    batches = [(jnp.asarray(rng.normal(size=(4, din)), jnp.float32),
                jnp.asarray(rng.normal(size=(4,)), jnp.float32)) for _ in range(num_batches)]

    @jax.jit
    def step(params, batch):
        x, y = batch

        def loss_fn(p):
            return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), loss

    return params, batches, step


def _host_sync_message(error: BaseException, how: str) -> str:
    name = type(error).__name__
    if "Concretization" in name or "TracerArrayConversion" in name or \
            "TracerIntegerConversion" in name:
        return (f"{how}, it converts a loss to a Python or NumPy number ({name}): that is a "
                "host sync, which waits for the device at every step. Keep the losses as "
                "jax.Array values and average them once, after the loop.")
    if "transfer" in str(error).lower():
        return (f"{how}, a value was copied from the device to the host inside the loop "
                f"({summarize_error(error)}). Keep the losses on the device.")
    return f"{how}, your function raised {summarize_error(error).rstrip('.')}."


def _check_train_epoch(fn: Fn) -> str:
    import jax

    rng = np.random.default_rng(13)
    for num_batches, din in ((3, 5), (1, 2), (6, 3)):
        params, batches, step = _sgd_problem(rng, num_batches, din)
        where = f"with {num_batches} batch(es)"
        expected_params, expected_loss = reference_train_epoch(step, params, batches)
        seen: list[int] = []

        def counting_step(p, batch, seen=seen, step=step, batches=batches):
            seen.append(next(i for i, b in enumerate(batches) if b is batch))
            return step(p, batch)

        out = fn(counting_step, params, batches)
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
                              "the device (a host sync). Return jnp.mean(...) of the losses.")
        _tree_close(new_params, expected_params, f"the parameters after the epoch {where}")
        _tree_close(mean_loss, expected_loss, f"the mean loss {where}", rtol=1e-5, atol=1e-6)
        try:
            with jax.transfer_guard_device_to_host("disallow"):
                jax.block_until_ready(fn(step, params, batches))
        except (NotImplementedError, CheckFailed):
            raise
        except Exception as error:
            raise CheckFailed(_host_sync_message(
                error, f"{where}, under jax.transfer_guard_device_to_host('disallow')")) from None
        try:
            jitted = jax.jit(lambda p, bs, step=step: fn(step, p, bs))
            got = jitted(params, batches)
        except (NotImplementedError, CheckFailed):
            raise
        except Exception as error:
            raise CheckFailed(_host_sync_message(error, f"{where}, under jax.jit")) from None
        _tree_close(got[1], expected_loss, f"the mean loss {where} under jax.jit",
                    rtol=1e-5, atol=1e-6)
    return ("same parameters and mean loss as the reference for 1, 3 and 6 batches; each "
            "step once, in order; the loss stays a jax.Array; no host sync (runs under "
            "jax.jit and under a device-to-host transfer guard)")


def train_epoch(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``train_epoch(step, params, batches) -> (params, mean_loss)`` with no host sync."""
    return run_check(
        "train_epoch", student_fn, reference_train_epoch, _check_train_epoch,
        "collect each step's loss in a list (no float(), .item() or np.asarray inside the "
        "loop) and return params, jnp.mean(jnp.stack(losses)).",
        quiet=quiet,
    )
