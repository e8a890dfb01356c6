"""Exercise checkers of lesson 06_multi_device, with the hints they give.

The checkers run the student's code on CPU devices (the lesson gives JAX 8 simulated CPU
devices in every mode, beside any GPU), on meshes of as many sizes as exist, because a
multi-device bug hides on one device. Every random input comes from a fixed seed, so a
verdict never changes between runs. What each checks:

- :func:`ring_all_reduce` (``x, axis_name, axis_size``): on 1-D meshes of 1, 2, 3, 5, 6, 7
  and 8 devices (so a ring that only works for powers of two fails), with axes named
  ``'data'`` and otherwise (so one that ignores ``axis_name`` fails, and a probe on the same
  mesh named ``'data'`` says so), and on a 2 x 3 mesh where it must sum over one axis only;
  float32 and int32, per-device shapes ``(1,)`` to ``(2, 5)``: equal to the sum over the axis
  on every device, with ``ppermute`` in the jaxpr and no other collective.
- :func:`allreduce_traffic` (``nbytes, n_devices``): both byte counts exactly, as whole
  numbers, for 1 to 9 and 16 devices and sizes from one byte per device to beyond 2**53
  (where float arithmetic loses the last digits).
- :func:`device_grads`: inside ``shard_map`` on meshes of 2, 3 and 8 devices (one batch of
  24: 12, 8 and 3 examples per device), loss and gradients equal the single-device ones
  (computed in float64 NumPy). The N-times gradient is named as the cause only when the
  gradients are exactly N times too large and the loss is right; a sum over the devices
  only when both are N times too large.
- :func:`data_parallel_step`: two ``pmap`` steps with SGD on 2 devices (a gradient of the
  wrong size shows in the parameters) and two with Adam, the lesson's optimizer, on 3 devices
  (averaging the updated parameters instead of the gradients is the same under SGD, not under
  Adam; its ``eps`` is large enough that Adam also sees a gradient 1.5 times too large), one
  batch of 24 examples: every device holds the single-device state and the whole batch's
  loss. A cause is named only when a probe reproduced the answer (a step the device count
  times too long, averaged parameters, per-device losses).
- :func:`shard_bytes`: bytes per device for replicated, 1-D and 2-D shardings, four dtypes,
  and shapes too large to allocate.

Hints (:data:`HINTS`) say what each exercise is for and what to think about, never the code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from utils import parallel
from utils.exercises import CheckFailed, Hints, expect_array, run_check, summarize_error

Fn = Callable[..., Any]

__all__ = ["HINTS", "allreduce_traffic", "data_parallel_step", "device_grads",
           "ring_all_reduce", "shard_bytes"]

HINTS: dict[str, Hints] = {
    "ring_all_reduce": Hints(
        about="Exercise 1 builds lax.psum out of point-to-point moves, the way a ring "
              "all-reduce works; section 2 shows what lax.ppermute does with its (source, "
              "destination) pairs",
        think="Follow the values on paper for a ring of 3 devices: in each round, what does "
              "a device send on, and after how many rounds has every device added every "
              "value exactly once? Use the axis name and size the function receives: they "
              "change from call to call",
        closer="Each device passes on what it received in the previous round, not its own "
               "value again, and the ring closes (the last device sends to the first) for "
               "any number of devices, not only powers of two"),
    "allreduce_traffic": Hints(
        about="Exercise 2 asks you to derive what an all-reduce costs in bytes sent per "
              "device; section 2 describes the naive ring of exercise 1 and the "
              "reduce-scatter + all-gather ring, then measures both in compiled programs",
        think="Count the rounds and what one device sends in each: the naive ring sends the "
              "whole array every round; the other ring sends one chunk of 1/N of it per "
              "round, first while reducing, then while gathering. Keep to whole numbers: "
              "nbytes is a multiple of the device count",
        closer="On one device nothing travels. On two, the naive ring sends the array once "
               "and the chunked ring sends two halves; check your formulas there first"),
    "device_grads": Hints(
        about="Exercise 3 is data-parallel gradients in shard_map; section 3 shows why the "
              "pmap recipe (gradient, then average) gives N times the gradient there",
        think="Inside shard_map the gradient with respect to replicated parameters is "
              "already summed over the devices. Which function of the parameters should you "
              "differentiate so that this sum is the gradient of the whole batch's mean loss?",
        closer="Compare on 2 devices: if the loss and the gradients are both twice the "
               "single-device ones, you summed where a mean was needed; if only the "
               "gradients are, the averaging happens after the gradient instead of before"),
    "data_parallel_step": Hints(
        about="Exercise 4 is the data-parallel step of the legacy pmap API; section 4 "
              "explains why, under pmap, each device must average its gradients with the "
              "other devices' before the update",
        think="Every device must make the same update, the one a single device makes on the "
              "whole batch. Which quantity must be averaged over the devices, and at which "
              "point of the step? The loss returned is the whole batch's, on every device",
        closer="Averaging the updated parameters equals averaging the gradients only for "
               "plain SGD: Adam divides by a running size of the gradient. A sum over the "
               "devices is N times the mean"),
    "shard_bytes": Hints(
        about="Exercise 5 computes how much memory one device holds under a sharding, "
              "before anything is allocated; section 5 introduces the sharding's "
              "shard_shape method",
        think="A sharding can tell you the shape of one device's piece of an array of a "
              "given shape; the bytes follow from that shape and the size of one element",
        closer="Replicated dimensions stay whole; a dimension split over several mesh axes "
               "is cut by the product of their sizes; numpy's dtype objects know the size "
               "of one element"),
}

_OTHER_COLLECTIVES = ("psum", "pmax", "pmin", "all_gather", "all_to_all", "reduce_scatter",
                      "psum_scatter", "all_reduce")


def _devices() -> list[Any]:
    import jax

    return jax.devices("cpu")


def _available(tried: tuple[int, ...]) -> list[int]:
    """The mesh sizes of ``tried`` that this process has devices for, in that order."""
    n = len(_devices())
    return [k for k in tried if k <= n]


def _sizes_text(counts: list[int]) -> str:
    counts = sorted(set(counts))
    if len(counts) == 1:
        return f"a mesh of {counts[0]} device{'s' if counts[0] > 1 else ''}"
    return "meshes of " + ", ".join(str(k) for k in counts[:-1]) + f" and {counts[-1]} devices"


def _short(values: Any) -> str:
    """A few values of an array, rounded, for a FAILED line."""
    flat = np.asarray(values).ravel()
    shown = ", ".join(f"{v:.4g}" if np.issubdtype(flat.dtype, np.floating) else str(v)
                      for v in flat[:4])
    return f"[{shown}{', ...' if flat.size > 4 else ''}]"


def _mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> Any:
    import jax

    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.make_mesh(shape, names, axis_types=auto,
                         devices=_devices()[: int(np.prod(shape))])


# --- Exercise 1: a ring all-reduce from ppermute ------------------------------------------

#: (mesh shape, axis names, the axis to sum over). Two devices first, so a plain mistake
#: fails at once; then 3 (not a power of two) under another name, and so on.
_RING_CASES = (((2,), ("data",), "data"), ((3,), ("ring",), "ring"), ((8,), ("data",), "data"),
               ((5,), ("workers",), "workers"), ((1,), ("data",), "data"),
               ((6,), ("ring",), "ring"), ((7,), ("devices",), "devices"),
               ((2, 3), ("rows", "ring"), "ring"))
_RING_INPUTS = (((3,), np.float32), ((1,), np.int32), ((2, 5), np.float32))


def _ring_case(fn: Fn, shape: tuple[int, ...], names: tuple[str, ...], axis: str,
               x_shape: tuple[int, ...], dtype: Any, rng: np.random.Generator) -> None:
    import jax
    from jax.sharding import PartitionSpec as P

    mesh = _mesh(shape, names)
    n_all, size = int(np.prod(shape)), mesh.shape[axis]
    glob = (n_all * x_shape[0],) + x_shape[1:]
    x = (rng.integers(-1000, 1000, size=glob) if dtype == np.int32
         else rng.normal(size=glob)).astype(dtype)
    spec = P(names if len(names) > 1 else names[0])
    f = jax.shard_map(lambda v: fn(v, axis, size), mesh=mesh, in_specs=spec, out_specs=spec)
    where = (f"{_ring_where(shape, names, axis)}, {np.dtype(dtype).name} x of shape {x_shape} "
             "per device")
    jaxpr = str(jax.make_jaxpr(f)(x))
    used = [c for c in _OTHER_COLLECTIVES if c in jaxpr]
    if used:
        raise CheckFailed(f"{where}: the jaxpr uses {used[0]}; the exercise builds the sum "
                          "from lax.ppermute and additions only.")
    if size > 1 and "ppermute" not in jaxpr:
        raise CheckFailed(f"{where}: the jaxpr has no ppermute, so no value travelled between "
                          "devices.")
    blocks = x.reshape(shape + x_shape)
    total = blocks.sum(axis=names.index(axis), keepdims=True)
    expected = np.broadcast_to(total, blocks.shape).reshape(glob)
    got = expect_array(jax.jit(f)(x), glob, dtype, f"the result {where}")
    if np.allclose(got, expected, rtol=1e-5, atol=1e-4):
        return
    mine = x_shape[0]
    if size > 1 and np.allclose(got, expected + x, rtol=1e-5, atol=1e-4):
        raise CheckFailed(f"{where}: every device counted its own x twice (the result is the "
                          f"sum plus x); the sum over {size} devices adds each value once.")
    bad = int(np.argmax(np.any(~np.isclose(got, expected, rtol=1e-5, atol=1e-4).reshape(
        n_all, -1), axis=1)))
    raise CheckFailed(f"{where}: device {bad} got {_short(got[bad * mine:(bad + 1) * mine])}, "
                      f"expected the sum {_short(expected[bad * mine:(bad + 1) * mine])}.")


def _ring_where(shape: tuple[int, ...], names: tuple[str, ...], axis: str) -> str:
    if len(shape) == 1:
        return f"on {shape[0]} device{'s' if shape[0] > 1 else ''} (axis '{axis}')"
    axes = ", ".join(f"'{a}'" for a in names)
    return (f"on a {' x '.join(map(str, shape))} mesh (axes {axes}), summing over '{axis}' "
            "only")


def _ring_renamed(fn: Fn, shape: tuple[int, ...]) -> bool:
    """Does the answer work on this mesh when its axis is called 'data' instead? (A probe.)"""
    try:
        _ring_case(fn, shape, ("data",), "data", (3,), np.float32, np.random.default_rng(0))
    except Exception:
        return False
    return True


def _check_ring(fn: Fn) -> str:
    cases = [c for c in _RING_CASES if int(np.prod(c[0])) <= len(_devices())]
    rng = np.random.default_rng(601)
    for i, (shape, names, axis) in enumerate(cases):
        x_shape, dtype = _RING_INPUTS[i % len(_RING_INPUTS)]
        try:
            _ring_case(fn, shape, names, axis, x_shape, dtype, rng)
        except (CheckFailed, NotImplementedError):
            raise
        except Exception as error:
            message = summarize_error(error).rstrip(".")
            where = _ring_where(shape, names, axis)
            if axis != "data" and len(shape) == 1 and _ring_renamed(fn, shape):
                raise CheckFailed(f"{where}, your function raised {message}. The same mesh "
                                  f"with its axis named 'data' works: the axis to use is the "
                                  "axis_name the function receives.") from None
            raise CheckFailed(f"{where}, your function raised {message}.") from None
    sizes = [int(np.prod(s)) for s, _, _ in cases if len(s) == 1]
    named = ", ".join(f"'{a}'" for a in sorted({axis for _, _, axis in cases}))
    two_d = any(len(s) > 1 for s, _, _ in cases)
    return (f"equals the sum over the axis on {_sizes_text(sizes)} (axes named {named})"
            + (" and over one axis of a 2 x 3 mesh" if two_d else "")
            + ", float32 and int32; the jaxpr has ppermute and no other collective")


def ring_all_reduce(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``ring_all_reduce(x, axis_name, axis_size)`` (inside shard_map) against psum."""
    return run_check("ring_all_reduce", student_fn, parallel.ring_all_reduce, _check_ring,
                     HINTS["ring_all_reduce"], quiet=quiet)


# --- Exercise 2: what an all-reduce sends -------------------------------------------------


def _traffic_cases() -> list[tuple[int, int]]:
    cases = [(n * m, n) for n in (2, 1, 3, 4, 5, 6, 7, 8, 9, 16) for m in (1, 12, 4096)]
    cases += [(3 * (2**53 + 1), 3), (7 * (2**55 + 3), 7), (6 * 2**40, 6)]
    return cases


def _as_whole(value: Any) -> int | float | None:
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if hasattr(value, "shape") and np.shape(value) == ():
        return _as_whole(np.asarray(value).item())
    return None


def _check_traffic(fn: Fn) -> str:
    names = ("the naive ring", "reduce-scatter + all-gather")
    for nbytes, n in _traffic_cases():
        expected = parallel.allreduce_traffic(nbytes, n)
        where = f"for nbytes = {nbytes} and n_devices = {n}"
        got = fn(nbytes, n)
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise CheckFailed(f"{where}: returned {type(got).__name__} {got!r}; expected a "
                              "pair (naive ring bytes, reduce-scatter + all-gather bytes).")
        values = [_as_whole(v) for v in got]
        for name, v, raw in zip(names, values, got, strict=True):
            if v is None:
                raise CheckFailed(f"{where}: the bytes for {name} are a "
                                  f"{type(raw).__name__} ({raw!r}); expected a number.")
        if values == [expected[1], expected[0]] and expected[0] != expected[1]:
            raise CheckFailed(f"{where}: returned {tuple(values)}, which is the expected "
                              f"{tuple(expected)} in the other order: the naive ring first.")
        for name, v, want in zip(names, values, expected, strict=True):
            if v == want:
                continue
            if isinstance(v, float) and abs(v - want) <= 1e-9 * want:
                raise CheckFailed(f"{where}: the bytes for {name} came back as the float "
                                  f"{v!r}, which has lost the last digits of {want}: "
                                  "floats hold whole numbers exactly only up to 2**53; "
                                  "keep to whole-number arithmetic.")
            raise CheckFailed(f"{where}: the bytes one device sends for {name} came back "
                              f"as {v!r}, expected {want}.")
    return ("both byte counts exact for 1 to 9 and 16 devices, from one byte per device to "
            "sizes beyond 2**53")


def allreduce_traffic(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``allreduce_traffic(nbytes, n_devices) -> (ring, reduce_scatter_all_gather)``."""
    return run_check("allreduce_traffic", student_fn, parallel.allreduce_traffic,
                     _check_traffic, HINTS["allreduce_traffic"], quiet=quiet)


# --- Exercise 3: gradients inside shard_map -----------------------------------------------


def _linear_loss(params: Any, x: Any, y: Any) -> Any:
    import optax

    logits = x @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _linear_reference(params: dict[str, np.ndarray], x: np.ndarray,
                      y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """The mean loss of :func:`_linear_loss` and its gradients, in float64 NumPy."""
    logits = x.astype(np.float64) @ params["w"] + params["b"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y]).mean())
    d_logits = p
    d_logits[np.arange(n), y] -= 1.0
    d_logits /= n
    return loss, {"w": x.astype(np.float64).T @ d_logits, "b": d_logits.sum(axis=0)}


def _on_cpu(check: Callable[[Fn], str]) -> Callable[[Fn], str]:
    """Run ``check`` with the CPU as default device and full float32 matmuls, so the
    reference and the student's code compute alike beside a GPU (TF32) too."""

    def run(fn: Fn) -> str:
        import jax

        with jax.default_device(_devices()[0]), jax.default_matmul_precision("highest"):
            return check(fn)

    return run


def _first_difference(got: np.ndarray, want: np.ndarray) -> str:
    bad = ~np.isclose(got, want, rtol=1e-4, atol=1e-6)
    index = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else ()
    return f"at index {index} got {got[index]:.5g}, expected {want[index]:.5g}"


def _check_device_grads(fn: Fn) -> str:
    import jax
    from jax.sharding import PartitionSpec as P

    counts = _available((2, 3, 8)) or [1]  # a batch of 24: 12, 8 and 3 examples per device
    rng = np.random.default_rng(603)
    data = parallel.DATA
    din, dout, batch = 5, 3, 24
    for k in counts:
        local = batch // k
        params = {"w": rng.normal(size=(din, dout)).astype(np.float32),
                  "b": rng.normal(size=dout).astype(np.float32)}
        x = rng.normal(size=(batch, din)).astype(np.float32)
        y = rng.integers(0, dout, size=batch).astype(np.int32)
        mesh = parallel.data_mesh(k, _devices())
        f = jax.jit(jax.shard_map(partial(fn, _linear_loss), mesh=mesh,
                                  in_specs=(P(), P(data), P(data)), out_specs=(P(), P())))
        where = f"on {k} device{'s' if k > 1 else ''} ({local} examples each)"
        out = f(params, x, y)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{where}: returned {type(out).__name__}; expected (loss, grads).")
        loss, grads = out
        ref_loss, ref_grads = _linear_reference(params, x, y)
        if not isinstance(grads, dict) or set(grads) != {"w", "b"}:
            raise CheckFailed(f"{where}: the gradients should have the structure of the "
                              "parameters (a dict with 'w' and 'b').")
        got = {n: expect_array(grads[n], ref_grads[n].shape, "float32",
                               f"the gradient of '{n}' {where}") for n in ("w", "b")}
        want = {n: np.asarray(ref_grads[n]) for n in ("w", "b")}
        loss = float(expect_array(loss, (), "float32", f"the loss {where}"))
        loss_right = np.isclose(loss, float(ref_loss), rtol=1e-4, atol=1e-6)
        grads_right = all(np.allclose(got[n], want[n], rtol=1e-4, atol=1e-6) for n in got)
        if grads_right and loss_right:
            continue
        k_times = k > 1 and all(np.allclose(got[n], k * want[n], rtol=1e-4, atol=1e-6)
                                for n in got)
        if k_times and np.isclose(loss, k * float(ref_loss), rtol=1e-4):
            raise CheckFailed(f"{where}: the loss and the gradients are both {k} times the "
                              "single-device ones (the whole batch's mean loss): they are "
                              "sums over the devices, not means.")
        if k_times and loss_right:
            raise CheckFailed(f"{where}: the loss is right but the gradients are {k} times "
                              "the single-device ones: inside shard_map the gradient of a "
                              "replicated parameter already sums over the devices, so "
                              "averaging the gradients afterwards averages identical sums.")
        if not grads_right:
            name = next(n for n in ("w", "b") if not np.allclose(got[n], want[n], rtol=1e-4,
                                                                    atol=1e-6))
            raise CheckFailed(f"{where}: the gradient of '{name}' differs from the "
                              "single-device gradient of the whole batch's mean loss: "
                              f"{_first_difference(got[name], want[name])}.")
        raise CheckFailed(f"{where}: the loss is {loss:.5g}, but the whole batch's mean loss "
                          f"is {float(ref_loss):.5g}.")
    locals_ = [str(n) for n in sorted({batch // k for k in counts}, reverse=True)]
    each = " and ".join([", ".join(locals_[:-1]), locals_[-1]] if len(locals_) > 1 else locals_)
    return (f"loss and gradients equal the single-device ones on {_sizes_text(counts)} "
            f"(a batch of {batch}: {each} examples per device)")


def device_grads(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``device_grads(loss_fn, params, images, labels)`` run inside ``shard_map``."""
    return run_check("device_grads", student_fn, parallel.device_grads,
                     _on_cpu(_check_device_grads), HINTS["device_grads"], quiet=quiet)


# --- Exercise 4: the pmap train step ------------------------------------------------------


def _tree_max_diff(a: Any, b: Any) -> float:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        raise CheckFailed(f"the returned state has {len(la)} arrays, expected {len(lb)}: the "
                          "state of the model and the optimizer, as the step received it.")
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)),
                               initial=0.0)) for x, y in zip(la, lb, strict=True))


def _worst_leaf(a: Any, b: Any) -> str:
    """The path of the leaf where two states differ most, e.g. ``hidden1/kernel``."""
    import jax

    worst, name = -1.0, ""
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        d = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)),
                         initial=0.0))
        if d > worst:
            worst = d
            name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return name


#: (optimizer, devices), one batch of 24 examples (12 and 8 per device). SGD shows a gradient
#: of the wrong size in the parameters; Adam, the lesson's optimizer, shows averaged
#: parameters (the same as averaged gradients under SGD). Its eps is large enough (against
#: these gradients) that Adam also sees the gradient's scale, so a sum, or a mean taken with
#: a fixed device count, fails there too.
_STEP_PLAN = (("sgd", 2), ("adam", 3))
_STEP_BATCH = 24
_ADAM_EPS = 0.1
_RATES = {"sgd": 0.17, "adam": 0.05}
_SIZES = (6, 3)  # the model's inputs and classes


_CACHE: dict[Any, Any] = {}


def _ref_step() -> Any:
    """Lesson 04's ``train_batch`` under ``nnx.jit``, one wrapper for the whole process (its
    compiled steps are kept per model and batch shape, so checking twice compiles once)."""
    if "ref_step" not in _CACHE:
        from flax import nnx

        from utils import training

        _CACHE["ref_step"] = nnx.jit(training.train_batch)
    return _CACHE["ref_step"]


def _loss_of() -> Any:
    """The mean loss of a model on some examples, under ``nnx.jit`` (one wrapper)."""
    if "loss_of" not in _CACHE:
        from flax import nnx

        from utils import training

        _CACHE["loss_of"] = nnx.jit(lambda m, x, y: training.cross_entropy_loss(m(x), y))
    return _CACHE["loss_of"]


def _split(opt: str, lr: float) -> tuple[Any, Any]:
    """``(graphdef, abstract state)`` of the MLP and its optimizer, built without compiling."""
    import optax
    from flax import nnx

    from utils import training

    tx = optax.adam(lr, eps=_ADAM_EPS) if opt == "adam" else optax.sgd(lr)

    def build() -> Any:  # a linear classifier: the step's logic, at a small compile cost
        model = nnx.Linear(_SIZES[0], _SIZES[1], rngs=nnx.Rngs(0))
        return model, training.create_optimizer(model, tx)

    key = ("split", opt, lr)
    if key not in _CACHE:
        _CACHE[key] = nnx.split(nnx.eval_shape(build))
    return _CACHE[key]


def _fresh_state(abstract: Any, rng: np.random.Generator) -> Any:
    """Random parameters (part 0), a freshly initialised optimizer (zeros, part 1)."""
    import jax

    def fill(path: Any, a: Any) -> np.ndarray:
        is_param = getattr(path[0], "key", None) == 0
        if is_param and np.issubdtype(a.dtype, np.floating):
            return rng.normal(size=a.shape).astype(a.dtype)
        return np.zeros(a.shape, a.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _merge(graphdef: Any, state: Any) -> Any:
    """``nnx.merge`` on a copy: the merged objects share their Variables with the State
    they came from, so a step on them would change ``state`` too."""
    import jax
    from flax import nnx

    return nnx.merge(graphdef, jax.tree.map(lambda a: a, state))


def _check_pmap_step(fn: Fn) -> str:
    import jax
    from flax import jax_utils, nnx

    plan = [(opt, k) for opt, k in _STEP_PLAN if k <= len(_devices())] or [("sgd", 1)]
    rng = np.random.default_rng(602)
    din = _SIZES[0]
    ref_step = _ref_step()
    for opt, k in plan:
        local = _STEP_BATCH // k
        graphdef, abstract = _split(opt, _RATES[opt])
        wanted = _fresh_state(abstract, rng)
        # Placed as pmap places its outputs, so that the second step does not compile again.
        replicated = jax_utils.replicate(wanted, devices=_devices()[:k])
        step = jax.pmap(partial(fn, graphdef), axis_name=parallel.DATA, devices=_devices()[:k])
        for i in range(2):
            x = rng.normal(size=(k * local, din)).astype(np.float32)
            y = rng.integers(0, _SIZES[1], size=k * local).astype(np.int32)
            where = (f"with {'Adam' if opt == 'adam' else 'SGD'} on {k} "
                     f"device{'s' if k > 1 else ''} ({local} example{'s' if local > 1 else ''} "
                     f"each), step {i + 1}")
            before = wanted
            out = step(replicated, x.reshape(k, local, din), y.reshape(k, local))
            if not isinstance(out, tuple | list) or len(out) != 2:
                raise CheckFailed(f"{where}: returned {type(out).__name__}; expected "
                                  "(new_state, loss).")
            new_state, loss = out
            ref_model, ref_opt = _merge(graphdef, before)
            ref_loss, _ = ref_step(ref_model, ref_opt, x, y)
            wanted = jax.tree.map(np.asarray, nnx.state((ref_model, ref_opt)))
            loss = expect_array(loss, (k,), "float32", f"the loss {where} (one per device)")
            first = jax.tree.map(lambda a: np.asarray(a)[0], new_state)
            for d in range(1, k):
                other = jax.tree.map(lambda a, d=d: np.asarray(a)[d], new_state)
                diff = _tree_max_diff(other, first)
                if diff > 1e-6:
                    raise CheckFailed(f"{where}: device {d}'s state differs from device 0's "
                                      f"(by up to {diff:.3g}, most in "
                                      f"{_worst_leaf(other, first)}); every device must make "
                                      "the same update.")
            diff = _tree_max_diff(first, wanted)
            if diff > 1e-4:
                raise CheckFailed(_step_cause(where, opt, k, graphdef, before, first, wanted,
                                              x, y,
                                              f"by up to {diff:.3g}, most in "
                                              f"{_worst_leaf(first, wanted)}"))
            if not np.allclose(loss, float(ref_loss), rtol=1e-4, atol=1e-5):
                model = _merge(graphdef, before)[0]
                own = [float(_loss_of()(model, xs, ys)) for xs, ys in
                       zip(x.reshape(k, local, din), y.reshape(k, local), strict=True)]
                why = (" Those are the mean losses of each device's own examples."
                       if np.allclose(loss, own, rtol=1e-4, atol=1e-5) else "")
                raise CheckFailed(f"{where}: the devices returned the losses {_short(loss)}; "
                                  f"the whole batch's loss is {float(ref_loss):.5g}, expected "
                                  f"on every device.{why}")
            # The next step starts from the state just checked equal to the reference's, put
            # on the devices as the first one was, so that pmap does not compile again.
            replicated = jax_utils.replicate(wanted, devices=_devices()[:k])
    sgd = sorted({k for o, k in plan if o == "sgd"})
    adam = sorted({k for o, k in plan if o == "adam"})
    text = f"2 steps with SGD on {_sizes_text(sgd)}"
    if adam:
        text += f" and with Adam on {_sizes_text(adam)}"
    return (text + f" (a batch of {_STEP_BATCH}): every device holds the single-device state "
            "and the whole batch's loss")


def _step_cause(where: str, opt: str, k: int, graphdef: Any, before: Any, got: Any,
                wanted: Any, x: np.ndarray, y: np.ndarray, how_much: str) -> str:
    """The FAILED line for a state that differs from the single-device step: it names a
    cause only when re-running the single-device step that way reproduces the answer."""
    try:
        cause = _probe_step(where, opt, k, graphdef, before, got, wanted, x, y)
    except Exception:  # an answer whose state the probes cannot read: no cause to name
        cause = None
    return cause or (f"{where}: the updated state differs from the single-device step on the "
                     f"whole batch ({how_much}).")


def _probe_step(where: str, opt: str, k: int, graphdef: Any, before: Any, got: Any,
                wanted: Any, x: np.ndarray, y: np.ndarray) -> str | None:
    import jax
    from flax import nnx

    ref_step = _ref_step()
    if opt == "sgd" and k > 1:  # the sum over devices: SGD's step k times the right one
        moved = [np.asarray(b, np.float64) - np.asarray(g, np.float64) for b, g in
                 zip(jax.tree.leaves(before[0]), jax.tree.leaves(got[0]), strict=True)]
        right = [np.asarray(b, np.float64) - np.asarray(w, np.float64) for b, w in
                 zip(jax.tree.leaves(before[0]), jax.tree.leaves(wanted[0]), strict=True)]
        if all(np.allclose(m, k * r, rtol=1e-3, atol=1e-5) for m, r in
               zip(moved, right, strict=True)):
            return (f"{where}: the parameters moved {k} times as far as in the single-device "
                    f"step: the update used {k} times the mean gradient (as the sum over the "
                    f"{k} devices would give).")
    if opt == "adam" and k > 1:  # each device updates alone, then the results are averaged
        local = x.shape[0] // k
        params = []
        for xs, ys in zip(x.reshape(k, local, -1), y.reshape(k, local), strict=True):
            model, optimizer = _merge(graphdef, before)
            ref_step(model, optimizer, xs, ys)
            params.append(jax.tree.map(np.asarray, nnx.state(model)))
        averaged = jax.tree.map(lambda *a: np.mean(a, axis=0), *params)
        if _tree_max_diff(got[0], averaged) <= 1e-4:
            return (f"{where}: the parameters are the average of {k} updates, each made by "
                    "one device from its own examples' gradient; that equals the update from "
                    "the averaged gradient under SGD, not under Adam.")
    return None


def data_parallel_step(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check the ``pmap`` body ``data_parallel_step(graphdef, state, images, labels)``."""
    return run_check("data_parallel_step", student_fn, parallel.data_parallel_step,
                     _on_cpu(_check_pmap_step), HINTS["data_parallel_step"], quiet=quiet)


# --- Exercise 5: bytes per device ---------------------------------------------------------


def _check_shard_bytes(fn: Fn) -> str:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    data, model = parallel.DATA, parallel.MODEL
    devs = _devices()
    cases = []
    meshes = [parallel.data_mesh(k, devs) for k in sorted(_available((2, 8, 4))) if k > 1][-1:]
    if len(devs) >= 8:
        meshes.append(parallel.data_mesh((4, 2), devs))
    elif len(devs) >= 4:
        meshes.append(parallel.data_mesh((2, 2), devs))
    if not meshes:
        meshes.append(parallel.data_mesh(1, devs))
    for mesh in meshes:
        specs = [P(), P(data), P(None, data)]
        if model in mesh.axis_names:
            specs += [P(None, model), P(data, model), P((data, model)), P(model, None)]
        for spec in specs:
            for shape, dtype in (((64, 128), "float32"), ((8192, 50304), "bfloat16"),
                                 ((16, 8), "int8"), ((32, 24), "float64")):
                cases.append((shape, dtype, NamedSharding(mesh, spec)))
    for shape, dtype, sharding in cases:
        got = fn(shape, dtype, sharding)
        expected = parallel.shard_bytes(shape, dtype, sharding)
        where = (f"for shape {shape}, {dtype}, PartitionSpec{tuple(sharding.spec)} on the mesh "
                 + "{" + ", ".join(f"'{a}': {s}" for a, s in sharding.mesh.shape.items()) + "}")
        if isinstance(got, bool) or not isinstance(got, int | np.integer | float | np.floating):
            raise CheckFailed(f"returned a {type(got).__name__} {where}; expected a number of "
                              "bytes.")
        if got != expected:
            total = int(np.prod(shape)) * np.dtype(dtype).itemsize
            why = (" (that is the size of the whole array, not of one device's piece)"
                   if got == total and total != expected else "")
            raise CheckFailed(f"got {got} {where}, expected {expected}{why}.")
    return (f"bytes per device right for {len(cases)} cases: replicated, 1-D and 2-D "
            "shardings, 4 dtypes, shapes too large to allocate")


def shard_bytes(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``shard_bytes(shape, dtype, sharding) -> int`` (bytes one device holds)."""
    return run_check("shard_bytes", student_fn, parallel.shard_bytes, _check_shard_bytes,
                     HINTS["shard_bytes"], quiet=quiet)
