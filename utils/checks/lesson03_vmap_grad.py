"""Exercise checkers of lesson 03_vmap_grad, with their reference solutions.

Each checker takes the student's function, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns the function to go on with.

- :func:`pairwise_distances`: nested ``vmap``; values, under ``jit``, and no Python loop
  over either batch (its jaxpr must not grow with the batch sizes).
- :func:`global_norm`: ``jax.tree`` utilities; values on pytrees of several structures.
- :func:`mse_with_aux`: the ``has_aux`` contract of ``jax.value_and_grad``: returns
  ``(scalar loss, aux dict)``; loss, aux and gradients checked.
- :func:`per_example_grads`: ``vmap(grad(...))``; values against a Python loop of
  ``jax.grad``, the shape ``(batch, *param_shape)`` of every leaf, under ``jit``, and no
  Python loop over the batch.
- :func:`numerical_grad`: central finite differences in float32; values within a stated
  tolerance, and ``f`` only evaluated, never differentiated by JAX.

The notebook defines ``distance`` and ``example_loss`` with the same formulas as here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from utils.exercises import CheckFailed, compare_with_reference, expect_array, run_check
from utils.introspection import jaxpr_size

__all__ = [
    "distance",
    "example_loss",
    "global_norm",
    "mse_with_aux",
    "numerical_grad",
    "pairwise_distances",
    "per_example_grads",
    "reference_global_norm",
    "reference_mse_with_aux",
    "reference_numerical_grad",
    "reference_pairwise_distances",
    "reference_per_example_grads",
]


# ---------------------------------------------------------------------------------------
# The lesson's building blocks (same formulas as in the notebook)
# ---------------------------------------------------------------------------------------


def distance(a: Any, b: Any) -> Any:
    """Euclidean distance between two vectors ``a`` and ``b`` of shape ``(d,)``; a scalar."""
    import jax.numpy as jnp

    return jnp.sqrt(jnp.sum((a - b) ** 2))


def predict(params: dict[str, Any], x: Any) -> Any:
    """Linear model for one example ``x`` of shape ``(d,)``: ``x @ w + b``, a scalar."""
    return x @ params["w"] + params["b"]


def example_loss(params: dict[str, Any], x: Any, y: Any) -> Any:
    """Squared error of one example: ``(predict(params, x) - y) ** 2``, a scalar."""
    return (predict(params, x) - y) ** 2


# ---------------------------------------------------------------------------------------
# Reference solutions
# ---------------------------------------------------------------------------------------


def reference_pairwise_distances(xs: Any, ys: Any) -> Any:
    """Distances between every row of ``xs`` ``(n, d)`` and of ``ys`` ``(m, d)``: ``(n, m)``."""
    import jax

    return jax.vmap(jax.vmap(distance, in_axes=(None, 0)), in_axes=(0, None))(xs, ys)


def reference_global_norm(tree: Any) -> Any:
    """sqrt of the sum of squares of every entry of every leaf of ``tree``; a scalar."""
    import jax
    import jax.numpy as jnp

    squares = jax.tree.map(lambda leaf: jnp.sum(leaf**2), tree)
    return jnp.sqrt(jax.tree.reduce(lambda a, b: a + b, squares, 0.0))


def reference_mse_with_aux(params: dict[str, Any], xs: Any, ys: Any) -> tuple[Any, dict[str, Any]]:
    """Mean squared error over the batch, and ``{"mae": mean absolute error}`` as aux."""
    import jax.numpy as jnp

    errors = xs @ params["w"] + params["b"] - ys
    return jnp.mean(errors**2), {"mae": jnp.mean(jnp.abs(errors))}


def reference_per_example_grads(params: dict[str, Any], xs: Any, ys: Any) -> dict[str, Any]:
    """Gradient of ``example_loss`` for every example: leaves of shape ``(n, *param_shape)``."""
    import jax

    return jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, xs, ys)


def reference_numerical_grad(f: Callable[[Any], Any], x: Any, eps: float = 1e-2) -> Any:
    """Central-difference gradient of a scalar ``f`` at ``x`` (any shape); same shape as ``x``."""
    import jax
    import jax.numpy as jnp

    basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))
    slopes = jax.vmap(lambda e: (f(x + eps * e) - f(x - eps * e)) / (2 * eps))(basis)
    return slopes.reshape(x.shape)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _normal(rng: np.random.Generator, *shape: int) -> Any:
    import jax.numpy as jnp

    return jnp.asarray(rng.standard_normal(shape), dtype=jnp.float32)


def _random_params(rng: np.random.Generator, d: int) -> dict[str, Any]:
    return {"w": _normal(rng, d), "b": _normal(rng)}


def _expect_no_batch_loop(
    name: str, fn: Callable[..., Any], make_args: Callable[[int], tuple[Any, ...]],
    sizes: tuple[int, int], what: str,
) -> None:
    """Raise CheckFailed if the jaxpr of ``fn`` grows from batch ``sizes[0]`` to ``sizes[1]``."""
    small, large = (jaxpr_size(fn, *make_args(n)) for n in sizes)
    if small != large:
        raise CheckFailed(
            f"{name} is right in value, but its jaxpr has {small} operations for {sizes[0]} "
            f"{what} and {large} for {sizes[1]} {what}: it grows with the batch, so the function "
            "runs a Python loop (a for-loop or a list comprehension) over the examples."
        )


def _kind(value: Any) -> str:
    """``"an array of shape (3,)"``, ``"a dict"``, ``"a float"``: what a value is, for messages."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)}"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _tree_shapes(tree: Any) -> str:
    import jax

    return str(jax.tree.map(lambda leaf: tuple(np.shape(leaf)), tree))


# ---------------------------------------------------------------------------------------
# Exercise 1: pairwise distances with a nested vmap
# ---------------------------------------------------------------------------------------


def _check_pairwise(fn: Callable[..., Any]) -> str:
    rng = np.random.default_rng()
    sizes = [(1, 1, 2), (3, 5, 4), (7, 2, 8), (4, 9, 1)]

    def make_args(rng: np.random.Generator, trial: int) -> tuple[Any, ...]:
        n, m, d = sizes[trial]
        return _normal(rng, n, d), _normal(rng, m, d)

    xs, ys = make_args(rng, 1)  # n != m: one vmap over both arguments fails here
    expect_array(fn(xs, ys), (3, 5), np.float32, "pairwise_distances(xs (3, 4), ys (5, 4))")
    what = compare_with_reference(fn, reference_pairwise_distances, make_args,
                                  trials=len(sizes), rtol=1e-4, atol=1e-5, rng=rng)
    _expect_no_batch_loop("pairwise_distances", fn,
                          lambda n: (_normal(rng, n, 3), _normal(rng, 4, 3)), (3, 9), "rows of xs")
    _expect_no_batch_loop("pairwise_distances", fn,
                          lambda m: (_normal(rng, 4, 3), _normal(rng, m, 3)), (3, 9), "rows of ys")
    return (f"pairwise_distances {what}; its jaxpr does not grow with the batch sizes "
            "(no Python loop)")


def pairwise_distances(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``pairwise_distances(xs, ys) -> (n, m)`` built from ``distance`` with ``vmap``."""
    return run_check(
        "pairwise_distances", student_fn, reference_pairwise_distances, _check_pairwise,
        hint="vmap `distance` over the rows of ys (in_axes=(None, 0)), then vmap that over "
             "the rows of xs (in_axes=(0, None)).",
    )


# ---------------------------------------------------------------------------------------
# Exercise 2: the global norm of a pytree
# ---------------------------------------------------------------------------------------


def _random_trees(rng: np.random.Generator) -> list[Any]:
    return [
        _normal(rng, 5),
        {"w": _normal(rng, 3, 4), "b": _normal(rng, 4)},
        {"layer1": {"w": _normal(rng, 2, 3), "b": _normal(rng, 3)},
         "layer2": {"w": _normal(rng, 3, 1), "b": _normal(rng, 1)}},
        [_normal(rng, 2), (_normal(rng, 3, 3), _normal(rng))],
        {"scale": _normal(rng), "shift": _normal(rng)},
    ]


def _check_global_norm(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng()
    trees = _random_trees(rng)
    for tree in trees:
        expected = float(reference_global_norm(tree))
        for suffix, f in (("", fn), (" under jax.jit", jax.jit(fn))):
            got = f(tree)
            where = f"for a pytree of leaf shapes {_tree_shapes(tree)}{suffix}"
            if not hasattr(got, "shape") or tuple(np.shape(got)) != ():
                raise CheckFailed(
                    f"global_norm returned {_kind(got)} {where}; it should return one "
                    "number (an array of shape ())."
                )
            if not np.isclose(float(got), expected, rtol=1e-5, atol=1e-6):
                raise CheckFailed(f"global_norm is {float(got):.6g} {where}, "
                                  f"but the expected value is {expected:.6g}.")
    return (f"global_norm matches the reference on {len(trees)} random pytrees (an array, "
            "dicts, nested dicts, a list with a tuple); also under jax.jit")


def global_norm(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``global_norm(tree) -> scalar``: sqrt of the sum of squares of all entries."""
    return run_check(
        "global_norm", student_fn, reference_global_norm, _check_global_norm,
        hint="sum the squares inside every leaf (jax.tree.map or jax.tree.leaves), add "
             "those sums over all leaves, then take one square root of the total.",
    )


# ---------------------------------------------------------------------------------------
# Exercise 3: a loss with auxiliary output for value_and_grad(has_aux=True)
# ---------------------------------------------------------------------------------------


def _check_mse_with_aux(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng()
    params, xs, ys = _random_params(rng, 3), _normal(rng, 8, 3), _normal(rng, 8)
    out = fn(params, xs, ys)
    if not isinstance(out, tuple | list) or len(out) != 2:
        kind = (f"a {type(out).__name__} of {len(out)} values" if isinstance(out, tuple | list)
                else _kind(out))
        raise CheckFailed(
            f"mse_with_aux returned {kind}; with has_aux=True it must return a pair "
            "(loss, aux)."
        )
    loss, aux = out
    if isinstance(loss, dict) or not hasattr(loss, "shape"):
        raise CheckFailed(
            f"the first element of the pair is {_kind(loss)}; value_and_grad "
            "differentiates the first element, so it must be the loss (one number), "
            "and the dict of extras comes second."
        )
    if tuple(loss.shape) != ():
        raise CheckFailed(
            f"the loss has shape {tuple(loss.shape)}; it must be a single number (shape ()) "
            "so that it can be differentiated: average the squared errors over the batch."
        )
    if not isinstance(aux, dict) or "mae" not in aux:
        raise CheckFailed(
            f"the second element is {_kind(aux)}; it should be a dict with the "
            "key 'mae' (the mean absolute error)."
        )
    trials = [(8, 3), (1, 1), (33, 5)]
    reference_vg = jax.jit(jax.value_and_grad(reference_mse_with_aux, has_aux=True))
    for suffix, wrap in (("", lambda f: f), (" under jax.jit", jax.jit)):
        student_vg = wrap(jax.value_and_grad(fn, has_aux=True))
        for n, d in trials:
            params, xs, ys = _random_params(rng, d), _normal(rng, n, d), _normal(rng, n)
            (loss, aux), grads = student_vg(params, xs, ys)
            (ref_loss, ref_aux), ref_grads = reference_vg(params, xs, ys)
            where = f" for a batch of {n} examples of {d} features{suffix}"
            checks = [("the loss", loss, ref_loss), ("aux['mae']", aux["mae"], ref_aux["mae"]),
                      ("the gradient for 'w'", grads["w"], ref_grads["w"]),
                      ("the gradient for 'b'", grads["b"], ref_grads["b"])]
            for what, got, expected in checks:
                expected = np.asarray(expected)
                got = expect_array(got, expected.shape, expected.dtype, what + where)
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    raise CheckFailed(f"{what} differs from the reference{where}: got "
                                      f"{np.round(got, 5)}, expected {np.round(expected, 5)}.")
    return ("mse_with_aux returns (scalar loss, {'mae': ...}); with "
            "jax.value_and_grad(has_aux=True) its loss, aux and gradients match the "
            f"reference on {len(trials)} random batches; also under jax.jit")


def mse_with_aux(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``mse_with_aux(params, xs, ys) -> (loss, {"mae": ...})`` for has_aux=True."""
    return run_check(
        "mse_with_aux", student_fn, reference_mse_with_aux, _check_mse_with_aux,
        hint="compute errors = xs @ w + b - ys once; return a pair: the mean of the squared "
             "errors first (one number), then the dict {'mae': mean of the absolute errors}.",
    )


# ---------------------------------------------------------------------------------------
# Exercise 4: per-example gradients
# ---------------------------------------------------------------------------------------


def _check_per_example_grads(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng()
    trials = [(5, 3), (1, 1), (16, 4)]
    grad_one = jax.jit(jax.grad(example_loss))
    for suffix, f in (("", fn), (" under jax.jit", jax.jit(fn))):
        for n, d in trials:
            params, xs, ys = _random_params(rng, d), _normal(rng, n, d), _normal(rng, n)
            got = f(params, xs, ys)
            where = f" for a batch of {n} examples of {d} features{suffix}"
            if not isinstance(got, dict) or set(got) != set(params):
                raise CheckFailed(
                    f"per_example_grads returned {_kind(got)}"
                    f"{' with keys ' + str(sorted(got)) if isinstance(got, dict) else ''}"
                    f"{where}; expected a dict "
                    "with the same keys as params ('b', 'w')."
                )
            loop = [grad_one(params, xs[i], ys[i]) for i in range(n)]
            for key in ("w", "b"):
                shape = (n, *np.shape(params[key]))
                leaf = expect_array(got[key], shape, np.float32, f"the gradient for {key!r}{where}")
                expected = np.stack([np.asarray(g[key]) for g in loop])
                bad = ~np.isclose(leaf, expected, rtol=1e-4, atol=1e-5)
                if bad.any():
                    i = int(np.argwhere(bad)[0][0])
                    raise CheckFailed(
                        f"the gradient for {key!r} of example {i} differs from "
                        f"jax.grad(example_loss)(params, xs[{i}], ys[{i}]){where}: got "
                        f"{np.round(leaf[i], 5)}, expected {np.round(expected[i], 5)}."
                    )
    _expect_no_batch_loop(
        "per_example_grads", fn,
        lambda n: (_random_params(rng, 3), _normal(rng, n, 3), _normal(rng, n)), (3, 9),
        "examples")
    return (f"per_example_grads matches a Python loop of jax.grad on {len(trials)} random "
            "batches, every leaf of shape (batch, *param_shape); also under jax.jit; its "
            "jaxpr does not grow with the batch (no Python loop)")


def per_example_grads(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``per_example_grads(params, xs, ys)``: one gradient per example."""
    return run_check(
        "per_example_grads", student_fn, reference_per_example_grads, _check_per_example_grads,
        hint="take jax.grad of example_loss, then jax.vmap it with in_axes None for params "
             "(shared by all examples) and 0 for xs and ys (one row, one entry each).",
    )


# ---------------------------------------------------------------------------------------
# Exercise 5: central finite differences
# ---------------------------------------------------------------------------------------

#: The float32 tolerance of the finite-difference check (see the notebook for why).
FD_RTOL = 1e-3
FD_ATOL = 1e-3
FD_EPS = 1e-2


class _DifferentiatedF(Exception):
    """Raised when a test function of the finite-difference check is differentiated."""


def _evaluate_only(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``f`` that can be evaluated (also under vmap and jit) but raises if differentiated."""
    import jax

    wrapped = jax.custom_jvp(f)

    @wrapped.defjvp
    def _no_derivative(primals: Any, tangents: Any) -> Any:
        raise _DifferentiatedF

    return wrapped


def _test_functions(rng: np.random.Generator) -> list[tuple[str, Callable[[Any], Any], Any]]:
    import jax.numpy as jnp

    a = _normal(rng, 6, 6)
    quad = a @ a.T + jnp.eye(6)  # curvature of at least 1: a forward difference is off

    def quadratic(x: Any) -> Any:
        v = x.reshape(-1)
        return v @ quad @ v / 2 + jnp.sum(jnp.sin(v))

    return [  # x of shape (2, 3): the answer must keep the shape of x
        ("sum(exp(x))", lambda x: jnp.sum(jnp.exp(x)), _normal(rng, 2, 3) * 0.5),
        ("v @ A @ v / 2 + sum(sin(v)), v = x.ravel()", quadratic, _normal(rng, 2, 3)),
        ("sum(x ** 3) / 3 + x[0, 0] * x[1, 1]",
         lambda x: jnp.sum(x**3) / 3 + x[0, 0] * x[1, 1], _normal(rng, 2, 3) + 1.5),
    ]


def _check_numerical_grad(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng()
    functions = _test_functions(rng)
    for name, f, x in functions:
        try:
            got = fn(_evaluate_only(f), x, FD_EPS)
        except _DifferentiatedF:
            raise CheckFailed(
                "numerical_grad asked JAX for the derivative of f (jax.grad, jax.jvp or "
                "similar); finite differences must only evaluate f."
            ) from None
        where = f" for f(x) = {name} at x of shape {tuple(x.shape)} with eps={FD_EPS}"
        got = expect_array(got, x.shape, np.float32, f"the gradient{where}")
        exact = np.asarray(jax.jit(jax.grad(f))(x))
        if np.allclose(got, exact, rtol=FD_RTOL, atol=FD_ATOL):
            continue
        ratio = np.median(got / np.where(exact == 0, np.nan, exact))
        if np.isclose(ratio, 2.0, rtol=0.05) or np.isclose(ratio, 0.5, rtol=0.05):
            raise CheckFailed(
                f"the gradient is {ratio:.2g} times the exact one{where}: check the "
                "denominator; f(x + eps) and f(x - eps) are 2 * eps apart."
            )
        error = float(np.max(np.abs(got - exact)))
        raise CheckFailed(
            f"the largest error against jax.grad is {error:.2g}{where}, above the float32 "
            f"tolerance (about {FD_ATOL:g} + {FD_RTOL:g} * |gradient|). A one-sided "
            "(forward) difference has an error proportional to eps; a central one, to "
            "eps ** 2."
        )
    return (f"numerical_grad agrees with jax.grad within the float32 tolerance on "
            f"{len(functions)} functions (eps={FD_EPS}), and only evaluates f")


def numerical_grad(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``numerical_grad(f, x, eps) -> array like x`` by central differences."""
    return run_check(
        "numerical_grad", student_fn, reference_numerical_grad, _check_numerical_grad,
        hint="for each basis vector e (rows of jnp.eye(x.size), reshaped like x): "
             "(f(x + eps * e) - f(x - eps * e)) / (2 * eps).",
    )
