"""Exercise checkers of lesson 06_multi_device, with their reference solutions.

The checkers run the student's code on meshes of 1, 2, 4 and 8 CPU devices (as many of
those as exist: the lesson gives JAX 8 simulated CPU devices, even beside a GPU), because a
multi-device bug hides on one device. Every random input comes from a fixed seed, so a
verdict never changes between runs.

- :func:`ring_all_reduce`: equals ``lax.psum`` on every mesh size; its jaxpr has
  ``ppermute`` and no other collective.
- :func:`data_parallel_step`: one and two ``pmap`` steps (SGD, so a gradient of the wrong
  size shows) give every device the parameters of the single-device step on the whole
  batch, and the loss of the whole batch.
- :func:`device_grads`: inside ``shard_map`` the loss and gradients equal the single-device
  ones (the N-times-gradient trap is named when it is the cause).
- :func:`batch_sharding`: arrays of rank 1 to 3 put with it are split along their first
  axis over the mesh axis ``'data'`` only, on 1-D and 2-D meshes (``'data'`` not always
  first).
- :func:`shard_bytes`: bytes per device for replicated, 1-D and 2-D shardings and several
  dtypes, including shapes too large to allocate.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from utils import parallel
from utils.exercises import CheckFailed, expect_array, run_check

Fn = Callable[..., Any]

__all__ = ["batch_sharding", "data_parallel_step", "device_grads", "ring_all_reduce",
           "shard_bytes"]

_OTHER_COLLECTIVES = ("psum", "pmax", "pmin", "all_gather", "all_to_all", "reduce_scatter",
                      "psum_scatter", "all_reduce")


def _devices() -> list[Any]:
    import jax

    return jax.devices("cpu")


def _counts(tried: tuple[int, ...] = (2, 8, 4, 1)) -> list[int]:
    """The mesh sizes to try, as many as exist; 2 first, so a wrong answer fails quickly."""
    n = len(_devices())
    return [k for k in tried if k <= n]


def _counts_text(counts: list[int]) -> str:
    counts = sorted(counts)
    if len(counts) == 1:
        return f"a mesh of {counts[0]} device"
    return "meshes of " + ", ".join(str(k) for k in counts[:-1]) + f" and {counts[-1]} devices"


# --- Exercise 1: a ring all-reduce from ppermute ------------------------------------------


def _check_ring(fn: Fn) -> str:
    import jax
    from jax.sharding import PartitionSpec as P

    counts = _counts()
    rng = np.random.default_rng(601)
    for k in counts:
        mesh = parallel.data_mesh(k, _devices())
        for shape, dtype in (((3,), np.float32), ((2, 5), np.float32), ((1,), np.int32)):
            glob = (k * shape[0],) + shape[1:]
            if dtype == np.int32:
                x_np = rng.integers(-50, 50, size=glob).astype(dtype)
            else:
                x_np = rng.normal(size=glob).astype(dtype)
            f = jax.shard_map(lambda v, k=k: fn(v, parallel.DATA, k), mesh=mesh,
                              in_specs=P(parallel.DATA), out_specs=P(parallel.DATA))
            where = f"on {k} device{'s' if k > 1 else ''} for a per-device shape {shape}"
            jaxpr = str(jax.make_jaxpr(f)(x_np))
            used = [c for c in _OTHER_COLLECTIVES if c in jaxpr]
            if used:
                raise CheckFailed(f"{where}, the jaxpr uses {used[0]}: build the sum from "
                                  "lax.ppermute and additions only.")
            if k > 1 and "ppermute" not in jaxpr:
                raise CheckFailed(f"{where}, the jaxpr has no ppermute: the values of the "
                                  "other devices must travel with lax.ppermute.")
            blocks = x_np.reshape((k,) + shape)
            expected = np.concatenate([blocks.sum(axis=0)] * k, axis=0)
            got = expect_array(jax.jit(f)(x_np), glob, dtype, f"the result {where}")
            if not np.allclose(got, expected, rtol=1e-5, atol=1e-5):
                if np.allclose(got, expected + x_np, rtol=1e-5, atol=1e-5):
                    raise CheckFailed(f"{where}, each device counts its own value twice: "
                                      f"{k - 1} ring steps are enough.")
                raise CheckFailed(f"{where}, the result differs from lax.psum (the sum of "
                                  "every device's value, on every device).")
    return (f"equals lax.psum on {_counts_text(counts)} (float32 and int32); the jaxpr has "
            "ppermute and no other collective")


def ring_all_reduce(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``ring_all_reduce(x, axis_name, axis_size)`` (inside shard_map) against psum."""
    return run_check(
        "ring_all_reduce", student_fn, parallel.ring_all_reduce, _check_ring,
        "start with total = passed = x; axis_size - 1 times: passed = lax.ppermute(passed, "
        "axis_name, perm=[(i, (i + 1) % axis_size) for i in range(axis_size)]), "
        "total = total + passed.",
        quiet=quiet,
    )


# --- Exercise 2: the pmap train step ------------------------------------------------------


def _tree_max_diff(a: Any, b: Any) -> float:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        raise CheckFailed(f"the returned state has {len(la)} arrays, expected {len(lb)}: "
                          "return nnx.state((model, optimizer)).")
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)),
                               initial=0.0)) for x, y in zip(la, lb, strict=True))


def _check_pmap_step(fn: Fn) -> str:
    import jax
    import optax
    from flax import nnx

    from utils import training

    counts = _counts((2, 8, 1))  # pmap compiles slowly: three mesh sizes
    rng = np.random.default_rng(602)
    din, dh, dout, batch = 6, 8, 3, 8  # one global batch of 8: 8 // k examples per device
    lr = 0.17

    @nnx.jit
    def build():
        model = training.MLP(din, dh, dout, rngs=nnx.Rngs(0))
        return model, training.create_optimizer(model, optax.sgd(lr))

    graphdef, initial = nnx.split(build())
    ref_step = nnx.jit(training.train_batch)
    for k in counts:
        local = batch // k
        # Fresh random parameters for every mesh (the optimizer's step counter stays 0).
        state = jax.tree.map(lambda a: (np.asarray(a) + rng.normal(size=a.shape).astype(a.dtype)
                                        if np.issubdtype(a.dtype, np.floating)
                                        else np.asarray(a)), initial)
        ref_model, ref_opt = nnx.merge(graphdef, state)
        devs = _devices()[:k]
        replicated = jax.tree.map(lambda a, k=k: np.broadcast_to(np.asarray(a),
                                                                 (k,) + np.shape(a)), state)
        step = jax.pmap(partial(fn, graphdef), axis_name=parallel.DATA, devices=devs)
        for i in range(2):
            x = rng.normal(size=(batch, din)).astype(np.float32)
            y = rng.integers(0, dout, size=batch).astype(np.int32)
            where = (f"on {k} device{'s' if k > 1 else ''}, {local} example"
                     f"{'s' if local > 1 else ''} each, step {i + 1}")
            out = step(replicated, x.reshape(k, local, din), y.reshape(k, local))
            if not isinstance(out, tuple | list) or len(out) != 2:
                raise CheckFailed(f"{where}: returned {type(out).__name__}; expected "
                                  "(new_state, loss).")
            replicated, loss = out
            ref_loss, _ = ref_step(ref_model, ref_opt, x, y)
            loss = expect_array(loss, (k,), "float32", f"the loss {where} (one per device)")
            wanted = nnx.state((ref_model, ref_opt))
            first = jax.tree.map(lambda a: np.asarray(a)[0], replicated)
            for d in range(1, k):
                other = jax.tree.map(lambda a, d=d: np.asarray(a)[d], replicated)
                if _tree_max_diff(other, first) > 1e-6:
                    raise CheckFailed(f"{where}: the devices' parameters differ from each "
                                      "other: average the gradients over devices with "
                                      "lax.pmean(grads, 'data') before the update.")
            diff = _tree_max_diff(first, wanted)
            if diff > 1e-4:
                raise CheckFailed(f"{where}: the updated parameters differ from the "
                                  "single-device step on the whole batch (by up to "
                                  f"{diff:.3g}); the update must use the mean gradient "
                                  "(lax.pmean, not lax.psum).")
            if not np.allclose(loss, float(ref_loss), rtol=1e-4, atol=1e-5):
                raise CheckFailed(f"{where}: the loss is {loss.tolist()} but the whole batch's "
                                  f"loss is {float(ref_loss):.5g} on every device: return "
                                  "lax.pmean(loss, 'data').")
    return (f"on {_counts_text(counts)}, 2 SGD steps give every device the single-device "
            "parameters and the whole batch's loss (per-device batches of 8 down to 1)")


def _on_cpu(check: Callable[[Fn], str]) -> Callable[[Fn], str]:
    """Run ``check`` with the CPU as default device and full float32 matmuls, so the
    reference and the student's code compute alike beside a GPU (TF32) too."""

    def run(fn: Fn) -> str:
        import jax

        with jax.default_device(_devices()[0]), jax.default_matmul_precision("highest"):
            return check(fn)

    return run


def data_parallel_step(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check the ``pmap`` body ``data_parallel_step(graphdef, state, images, labels)``."""
    return run_check(
        "data_parallel_step", student_fn, parallel.data_parallel_step, _on_cpu(_check_pmap_step),
        "model, optimizer = nnx.merge(graphdef, state); loss, grads = nnx.value_and_grad(...); "
        "grads = lax.pmean(grads, 'data'); optimizer.update(model, grads); return "
        "nnx.state((model, optimizer)), lax.pmean(loss, 'data').",
        quiet=quiet,
    )


# --- Exercise 3: gradients inside shard_map -----------------------------------------------


def _linear_loss(params: Any, x: Any, y: Any) -> Any:
    import optax

    logits = x @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _check_device_grads(fn: Fn) -> str:
    import jax
    from jax.sharding import PartitionSpec as P

    counts = _counts()
    rng = np.random.default_rng(603)
    reference = jax.jit(jax.value_and_grad(_linear_loss))
    data = parallel.DATA
    din, dout, batch = 5, 3, 8  # one global batch of 8: 8 // k examples per device
    for k in counts:
        params = {"w": rng.normal(size=(din, dout)).astype(np.float32),
                  "b": rng.normal(size=dout).astype(np.float32)}
        x = rng.normal(size=(batch, din)).astype(np.float32)
        y = rng.integers(0, dout, size=batch).astype(np.int32)
        mesh = parallel.data_mesh(k, _devices())
        f = jax.jit(jax.shard_map(partial(fn, _linear_loss), mesh=mesh,
                                  in_specs=(P(), P(data), P(data)), out_specs=(P(), P())))
        where = f"on {k} device{'s' if k > 1 else ''}"
        out = f(params, x, y)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise CheckFailed(f"{where}: returned {type(out).__name__}; expected (loss, grads).")
        loss, grads = out
        ref_loss, ref_grads = reference(params, x, y)
        if not isinstance(grads, dict) or set(grads) != {"w", "b"}:
            raise CheckFailed(f"{where}: the gradients should have the structure of the "
                              "parameters (a dict with 'w' and 'b').")
        for name in ("w", "b"):
            g = expect_array(grads[name], ref_grads[name].shape, "float32",
                             f"the gradient of '{name}' {where}")
            want = np.asarray(ref_grads[name])
            if not np.allclose(g, want, rtol=1e-4, atol=1e-6):
                ratio = float(np.sum(g * want) / max(np.sum(want * want), 1e-30))
                if k > 1 and abs(ratio - k) < 1e-3 * k:
                    raise CheckFailed(f"{where}: the gradients are {k} times the single-device "
                                      "ones: inside shard_map the gradient of a replicated "
                                      "parameter already sums over devices.")
                raise CheckFailed(f"{where}: the gradient of '{name}' differs from the "
                                  "single-device gradient of the mean loss over the whole "
                                  "batch.")
        loss = expect_array(loss, (), "float32", f"the loss {where}")
        if not np.isclose(loss, float(ref_loss), rtol=1e-4, atol=1e-6):
            raise CheckFailed(f"{where}: the loss is {float(loss):.5g}, but the whole batch's "
                              f"mean loss is {float(ref_loss):.5g}.")
    return (f"loss and gradients equal the single-device ones on {_counts_text(counts)} "
            "(per-device batches of 8 down to 1)")


def device_grads(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``device_grads(loss_fn, params, images, labels)`` run inside ``shard_map``."""
    return run_check(
        "device_grads", student_fn, parallel.device_grads, _on_cpu(_check_device_grads),
        "differentiate the mean over devices, lambda p: lax.pmean(loss_fn(p, images, labels), "
        "'data'), with jax.value_and_grad, and do not pmean the gradients afterwards.",
        quiet=quiet,
    )


# --- Exercise 4: the batch sharding -------------------------------------------------------


def _check_batch_sharding(fn: Fn) -> str:
    import jax

    devs = _devices()
    meshes = [parallel.data_mesh(k, devs) for k in sorted(_counts())]
    if len(devs) >= 4:
        auto = (jax.sharding.AxisType.Auto,) * 2
        meshes.append(parallel.data_mesh((2, 2), devs))
        meshes.append(jax.make_mesh((2, 2), (parallel.MODEL, parallel.DATA), axis_types=auto,
                                    devices=devs[:4]))
    if len(devs) >= 8:
        meshes.append(parallel.data_mesh((4, 2), devs))
    rng = np.random.default_rng(604)
    for mesh in meshes:
        n_data = mesh.shape[parallel.DATA]
        sharding = fn(mesh)
        layout = ", ".join(f"'{a}': {s}" for a, s in mesh.shape.items())
        if not isinstance(sharding, jax.sharding.Sharding):
            raise CheckFailed(f"returned a {type(sharding).__name__} for the mesh {{{layout}}}; "
                              "expected a jax.sharding.NamedSharding.")
        for shape in ((2 * n_data,), (2 * n_data, 3), (4 * n_data, 3, 2)):
            x = rng.normal(size=shape).astype(np.float32)
            where = f"an array of shape {shape} on the mesh {{{layout}}}"
            placed = jax.device_put(x, sharding)
            if set(placed.sharding.device_set) != set(mesh.devices.flat):
                raise CheckFailed(f"{where} is not spread over the mesh's "
                                  f"{mesh.devices.size} devices.")
            rows = shape[0] // n_data
            starts = set()
            data_dim = mesh.axis_names.index(parallel.DATA)
            where_is = {d: pos for pos, d in np.ndenumerate(mesh.devices)}
            start_of: dict[int, int] = {}
            for shard in placed.addressable_shards:
                index = shard.index
                got_rows = len(range(*index[0].indices(shape[0])))
                if got_rows != rows:
                    kind = ("it is not split (every device has all rows)"
                            if got_rows == shape[0] else f"each device has {got_rows} rows")
                    raise CheckFailed(f"{where}: {kind}; expected {rows} rows per device "
                                      f"(split over 'data' only).")
                if any(len(range(*s.indices(n))) != n for s, n in zip(index[1:], shape[1:],
                                                                      strict=True)):
                    raise CheckFailed(f"{where}: a dimension after the first is split; only "
                                      "the batch (first) dimension should be.")
                start = index[0].indices(shape[0])[0]
                coordinate = where_is[shard.device][data_dim]
                if start_of.setdefault(coordinate, start) != start:
                    raise CheckFailed(f"{where}: devices at the same 'data' position hold "
                                      "different rows: the batch is split over another mesh "
                                      "axis, not 'data'.")
                starts.add(start)
            if len(starts) != n_data:
                raise CheckFailed(f"{where}: the rows are not spread over the 'data' axis.")
            if not np.array_equal(np.asarray(placed), x):
                raise CheckFailed(f"{where}: the values changed.")
    return (f"arrays of rank 1 to 3 are split along their first axis over 'data' only, on "
            f"{len(meshes)} meshes (1-D, and 2-D with 'data' first or second)")


def batch_sharding(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``batch_sharding(mesh) -> NamedSharding`` by placing arrays and reading shards."""
    return run_check(
        "batch_sharding", student_fn, parallel.batch_sharding, _check_batch_sharding,
        "return NamedSharding(mesh, P('data')): it names only the first dimension, so it fits "
        "images and labels alike.",
        quiet=quiet,
    )


# --- Exercise 5: bytes per device ---------------------------------------------------------


def _check_shard_bytes(fn: Fn) -> str:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    data, model = parallel.DATA, parallel.MODEL
    devs = _devices()
    cases = []
    meshes = [parallel.data_mesh(k, devs) for k in sorted(_counts()) if k > 1][-1:]
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
            why = (" (that is the whole array: divide by the number of pieces each sharded "
                   "dimension is cut into)" if got == total else "")
            raise CheckFailed(f"got {got} {where}, expected {expected}{why}.")
    return (f"bytes per device right for {len(cases)} cases: replicated, 1-D and 2-D "
            "shardings, 4 dtypes, shapes too large to allocate")


def shard_bytes(student_fn: Fn, *, quiet: bool = False) -> Fn:
    """Check ``shard_bytes(shape, dtype, sharding) -> int`` (bytes one device holds)."""
    return run_check(
        "shard_bytes", student_fn, parallel.shard_bytes, _check_shard_bytes,
        "sharding.shard_shape(shape) is one device's piece: multiply its sizes and "
        "np.dtype(dtype).itemsize.",
        quiet=quiet,
    )
