"""Exercise checkers of lesson 03_vmap_grad, with their reference solutions.

Each checker takes the student's function, prints one ``PASSED`` / ``FAILED`` /
``NOT ATTEMPTED`` line (see :mod:`utils.exercises`) and returns the function to go on with.

- :func:`pairwise_distances`: nested ``vmap``; values (also for empty batches, one
  feature, coinciding points and points far from the origin), under ``jit``, and no Python
  loop over either batch (its jaxpr must not grow with the batch sizes).
- :func:`global_norm`: ``jax.tree`` utilities; values on pytrees of several structures
  (also empty leaves, ``None`` subtrees, and an empty tree, whose norm is 0.0 as the
  notebook's spec states), under ``jit``, and its gradient (``tree / norm``).
- :func:`mse_with_aux`: the ``has_aux`` contract of ``jax.value_and_grad``: returns
  ``(scalar loss, aux dict)``; loss, aux and gradients checked.
- :func:`per_example_grads`: ``vmap(grad(...))``; values against a Python loop of
  ``jax.grad``, the shape ``(batch, *param_shape)`` of every leaf, under ``jit``, and no
  Python loop over the batch.
- :func:`hvp`: a Hessian-vector product, forward-over-reverse (``jvp`` of ``grad``); values
  against the full Hessian on several functions, shapes and directions ``v``.
- :func:`numerical_grad`: central finite differences in float32; values within a stated
  tolerance, the step ``eps`` it is given really used, and ``f`` only evaluated, never
  differentiated by JAX.

Every checker draws its random inputs from a fixed seed, so its verdict is the same on
every run. A FAILED line names a cause only when a probe established it (for
``numerical_grad``: exact difference quotients of a linear and a quadratic function);
otherwise it shows the input, the expected value and what came back.

The notebook defines ``distance`` and ``example_loss`` with the same formulas as here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from utils.exercises import (
    CheckFailed,
    Hints,
    call_student,
    compare_with_reference,
    expect_array,
    run_check,
)
from utils.introspection import jaxpr_size

__all__ = [
    "HINTS",
    "distance",
    "example_loss",
    "global_norm",
    "hvp",
    "mse_with_aux",
    "numerical_grad",
    "pairwise_distances",
    "per_example_grads",
    "reference_global_norm",
    "reference_hvp",
    "reference_mse_with_aux",
    "reference_numerical_grad",
    "reference_pairwise_distances",
    "reference_per_example_grads",
]


#: What each checker says beyond its verdict (see :class:`utils.exercises.Hints`).
HINTS: dict[str, Hints] = {
    "pairwise_distances": Hints(
        about="vmap of a vmap maps over two axes at once (section 2): every row of xs "
              "against every row of ys, from a function of two points.",
        think="Start from distance(a, b) for two points: which argument does the inner vmap "
              "map over and which does it share, and what is left for the outer one to map?",
        closer="Write the shapes down: xs (n, d), ys (m, d). The inner function takes one row "
               "of xs and all of ys and returns (m,); the outer one returns (n, m).",
    ),
    "global_norm": Hints(
        about="Parameters and gradients are pytrees; section 4's jax.tree functions work on "
              "any structure, which a global norm (for watching and clipping gradients) needs.",
        think="What does each leaf contribute (every one of its entries, squared), how do the "
              "contributions add up over a tree of any structure, and what is the norm of a "
              "tree with no leaves at all?",
    ),
    "mse_with_aux": Hints(
        about="has_aux=True lets a loss return extra values that are passed through, not "
              "differentiated (section 5).",
        think="Which element of the pair does value_and_grad differentiate, and what shape "
              "must it have? Both numbers come from the same prediction errors of the "
              "linear model.",
    ),
    "per_example_grads": Hints(
        about="Composing grad and vmap gives one gradient per example in one program "
              "(section 6), as differentially private training needs.",
        think="One transformation gives the gradient of one example's loss; another repeats "
              "it over the batch. Which arguments are shared by all examples, and which are "
              "split along their first axis?",
    ),
    "hvp": Hints(
        about="A Hessian-vector product without the Hessian is forward mode over reverse "
              "mode (section 7).",
        think="H v is how the gradient of f changes when x moves along v: which "
              "transformation gives a function's derivative along one direction, and of "
              "which function, at which point, do you take it?",
    ),
    "numerical_grad": Hints(
        about="Finite differences check a gradient from values of f alone (section 9), "
              "within the tolerance that float32 allows.",
        think="Entry i of the gradient is the central difference along the i-th basis "
              "vector: how many basis vectors does x have, what shape is each one, how far "
              "apart are the two points, and is your step the eps you were given?",
    ),
}


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


def reference_hvp(f: Callable[[Any], Any], x: Any, v: Any) -> Any:
    """Hessian of a scalar ``f`` at ``x`` times ``v`` (same shape as ``x``): ``jvp`` of ``grad``."""
    import jax

    return jax.jvp(jax.grad(f), (x,), (v,))[1]


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
            f"{what} and {large} for {sizes[1]} {what}: the program grows with the batch, as "
            "a Python loop (a for-loop or a list comprehension) over the examples makes it."
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
    rng = np.random.default_rng(3001)
    # (n, m, d, kind): empty batches, one feature, one point each, coinciding points (some
    # rows of ys are rows of xs: distance exactly 0), points far from the origin (where
    # |a|^2 + |b|^2 - 2 a.b loses every digit to cancellation).
    sizes = [(1, 1, 2, "normal"), (3, 5, 4, "normal"), (7, 2, 8, "normal"), (4, 9, 1, "normal"),
             (0, 3, 2, "normal"), (3, 0, 2, "normal"), (5, 4, 3, "coinciding"),
             (4, 6, 3, "far")]

    def make_args(rng: np.random.Generator, trial: int) -> tuple[Any, ...]:
        import jax.numpy as jnp

        n, m, d, kind = sizes[trial]
        xs, ys = _normal(rng, n, d), _normal(rng, m, d)
        if kind == "coinciding":
            ys = ys.at[:3].set(xs[jnp.array([1, 3, 1])])
        if kind == "far":
            ys = ys.at[:2].set(xs[:2])
            xs, ys = xs + 1000.0, ys + 1000.0
        return xs, ys

    xs, ys = make_args(rng, 1)  # n != m: one vmap over both arguments fails here
    expect_array(fn(xs, ys), (3, 5), np.float32, "pairwise_distances(xs (3, 4), ys (5, 4))")
    _expect_no_batch_loop("pairwise_distances", fn,
                          lambda n: (_normal(rng, n, 3), _normal(rng, 4, 3)), (3, 9), "rows of xs")
    _expect_no_batch_loop("pairwise_distances", fn,
                          lambda m: (_normal(rng, 4, 3), _normal(rng, m, 3)), (3, 9), "rows of ys")
    what = compare_with_reference(fn, reference_pairwise_distances, make_args,
                                  trials=len(sizes), rtol=1e-4, atol=1e-4, rng=rng)
    return (f"pairwise_distances {what}, including empty batches, coinciding points and "
            "points far from the origin; its jaxpr does not grow with the batch sizes "
            "(no Python loop)")


def pairwise_distances(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``pairwise_distances(xs, ys) -> (n, m)`` built from ``distance`` with ``vmap``."""
    return run_check(
        "pairwise_distances", student_fn, reference_pairwise_distances, _check_pairwise,
        HINTS["pairwise_distances"],
    )


# ---------------------------------------------------------------------------------------
# Exercise 2: the global norm of a pytree
# ---------------------------------------------------------------------------------------


def _random_trees(rng: np.random.Generator) -> list[tuple[str, Any]]:
    import jax.numpy as jnp

    return [
        ("an array", _normal(rng, 5)),
        ("a dict", {"w": _normal(rng, 3, 4), "b": _normal(rng, 4)}),
        ("nested dicts", {"layer1": {"w": _normal(rng, 2, 3), "b": _normal(rng, 3)},
                          "layer2": {"w": _normal(rng, 3, 1), "b": _normal(rng, 1)}}),
        ("a list with a tuple", [_normal(rng, 2), (_normal(rng, 3, 3), _normal(rng))]),
        ("a dict of scalars", {"scale": _normal(rng), "shift": _normal(rng)}),
        ("a dict with an empty leaf and a None", {"w": _normal(rng, 2, 2),
                                                  "unused": jnp.zeros((0, 3), jnp.float32),
                                                  "frozen": None, "b": _normal(rng, 2)}),
        ("an empty dict", {}),
    ]


def _check_global_norm(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng(3002)
    trees = _random_trees(rng)
    for kind, tree in trees:
        expected = float(reference_global_norm(tree))
        for suffix, f in (("", fn), (" under jax.jit", jax.jit(fn))):
            where = f"for {kind} (leaf shapes {_tree_shapes(tree)}){suffix}"
            got = call_student(where, f, tree)
            if not hasattr(got, "shape") or tuple(np.shape(got)) != ():
                raise CheckFailed(
                    f"global_norm returned {_kind(got)} {where}; it should return one "
                    "number (an array of shape ())."
                )
            if not np.isclose(float(got), expected, rtol=1e-5, atol=1e-6):
                raise CheckFailed(f"global_norm is {float(got):.6g} {where}, "
                                  f"but the expected value is {expected:.6g}.")
    # Clipping differentiates through the norm: its gradient is tree / norm.
    kind, tree = trees[2]
    norm = reference_global_norm(tree)
    got = call_student(f"differentiating global_norm for {kind}", jax.grad(fn), tree)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(tree), strict=True):
        if not np.allclose(np.asarray(a), np.asarray(b) / float(norm), rtol=1e-4, atol=1e-6):
            raise CheckFailed(
                f"the value is right, but the gradient of global_norm for {kind} is not "
                "tree / global_norm(tree): keep every step a JAX operation on the leaves "
                "(no NumPy, no stop_gradient, no rounding)."
            )
    return (f"global_norm matches the reference on {len(trees)} random pytrees (an array, "
            "dicts, nested dicts, a list with a tuple, an empty leaf, a None, an empty dict); "
            "also under jax.jit; its gradient is tree / norm")


def global_norm(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``global_norm(tree) -> scalar``: sqrt of the sum of squares of all entries."""
    return run_check(
        "global_norm", student_fn, reference_global_norm, _check_global_norm,
        HINTS["global_norm"],
    )


# ---------------------------------------------------------------------------------------
# Exercise 3: a loss with auxiliary output for value_and_grad(has_aux=True)
# ---------------------------------------------------------------------------------------


def _check_mse_with_aux(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng(3003)
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
    trials = [(8, 3), (1, 1), (33, 5), (2, 4)]
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
        HINTS["mse_with_aux"],
    )


# ---------------------------------------------------------------------------------------
# Exercise 4: per-example gradients
# ---------------------------------------------------------------------------------------


def _check_per_example_grads(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng(3004)
    trials = [(5, 3), (1, 1), (16, 4), (4, 7)]
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
        HINTS["per_example_grads"],
    )


# ---------------------------------------------------------------------------------------
# Exercise 5: a Hessian-vector product, forward over reverse
# ---------------------------------------------------------------------------------------


def _hvp_cases(rng: np.random.Generator) -> list[tuple[str, Callable[[Any], Any], Any, Any]]:
    import jax.numpy as jnp

    a = _normal(rng, 4, 4)

    def coupled(x: Any) -> Any:  # cross terms: the Hessian is not diagonal
        return jnp.sum(jnp.tanh(a @ x) ** 2) + jnp.sum(x**4) / 4

    def on_a_matrix(x: Any) -> Any:  # x of shape (2, 3): the Hessian has shape (2, 3, 2, 3)
        return jnp.sum(jnp.sin(x) * x[::-1]) + jnp.prod(x[0])

    return [
        ("sum(tanh(A @ x) ** 2) + sum(x ** 4) / 4", coupled, _normal(rng, 4), _normal(rng, 4)),
        ("sum(sin(x) * x[::-1]) + prod(x[0])", on_a_matrix, _normal(rng, 2, 3),
         _normal(rng, 2, 3)),
        ("sum(exp(x) * x)", lambda x: jnp.sum(jnp.exp(x) * x), _normal(rng, 1), _normal(rng, 1)),
        ("x ** 3 + sin(x) for a scalar x", lambda x: x**3 + jnp.sin(x), _normal(rng),
         _normal(rng) * 3.0),
    ]


def _hessian_times(f: Callable[[Any], Any], x: Any, v: Any) -> np.ndarray:
    """The full Hessian (shape x.shape + x.shape) contracted with v: the slow, sure way."""
    import jax

    hessian = np.asarray(jax.hessian(f)(x), np.float64)
    return np.tensordot(hessian, np.asarray(v, np.float64), axes=np.ndim(x))


def _check_hvp(fn: Callable[..., Any]) -> str:
    import jax

    rng = np.random.default_rng(3006)
    cases = _hvp_cases(rng)
    for name, f, x, v in cases:
        expected = _hessian_times(f, x, v)
        for suffix, g in (("", fn), (" under jax.jit", jax.jit(fn, static_argnums=0))):
            where = (f" for f(x) = {name} at x of shape {tuple(x.shape)} and a random "
                     f"v{suffix}")
            got = expect_array(call_student(where, g, f, x, v), x.shape, np.float32,
                               f"hvp(f, x, v){where}")
            if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                raise CheckFailed(
                    f"hvp(f, x, v) differs from the Hessian of f at x times v{where}: got "
                    f"{np.round(got, 4)}, expected {np.round(expected, 4)}."
                )
    name, f, x, v = cases[0]  # linear in v: twice the direction, twice the product
    if not np.allclose(np.asarray(fn(f, x, 2 * v)), 2 * _hessian_times(f, x, v),
                       rtol=1e-4, atol=1e-4):
        raise CheckFailed(f"hvp(f, x, 2 * v) is not twice hvp(f, x, v) for f(x) = {name}: "
                          "the product must be linear in v.")
    return (f"hvp matches the full Hessian times v on {len(cases)} functions (x of shapes "
            "(4,), (2, 3), (1,), ()), for random directions v; also under jax.jit")


def hvp(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``hvp(f, x, v) -> array like x``: the Hessian of ``f`` at ``x`` times ``v``."""
    return run_check(
        "hvp", student_fn, reference_hvp, _check_hvp,
        HINTS["hvp"],
    )


# ---------------------------------------------------------------------------------------
# Exercise 6: central finite differences
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

    return [  # x of shape (2, 3) and (): the answer must keep the shape of x
        ("sum(exp(x))", lambda x: jnp.sum(jnp.exp(x)), _normal(rng, 2, 3) * 0.5),
        ("v @ A @ v / 2 + sum(sin(v)), v = x.ravel()", quadratic, _normal(rng, 2, 3)),
        ("sum(x ** 3) / 3 + x[0, 0] * x[1, 1]",
         lambda x: jnp.sum(x**3) / 3 + x[0, 0] * x[1, 1], _normal(rng, 2, 3) + 1.5),
        ("x * sin(x) for a scalar x", lambda x: x * jnp.sin(x), _normal(rng) + 1.0),
    ]


def _call_numerical_grad(fn: Callable[..., Any], f: Callable[[Any], Any], x: Any,
                         eps: float) -> Any:
    try:
        return fn(_evaluate_only(f), x, eps)
    except _DifferentiatedF:
        raise CheckFailed(
            "numerical_grad asked JAX for the derivative of f (jax.grad, jax.jvp or "
            "similar); finite differences must only evaluate f."
        ) from None


def _finite_difference_probe(fn: Callable[..., Any]) -> str:
    """Name the mistake when two exact probes establish it, else "".

    On f(x) = sum(c * x) every difference quotient is exactly c, whatever the step, so a
    result of 2c or c/2 can only come from the denominator. On f(x) = sum(x ** 2) / 2 the
    central difference is exactly x and the forward one x + eps / 2.
    """
    import jax.numpy as jnp

    x = jnp.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], jnp.float32)
    c = jnp.array([[1.0, 2.0, -3.0], [0.5, -1.5, 4.0]], jnp.float32)
    try:
        linear = np.asarray(fn(_evaluate_only(lambda v: jnp.sum(c * v)), x, 0.25), np.float64)
        square = np.asarray(fn(_evaluate_only(lambda v: jnp.sum(v**2) / 2), x, 0.25),
                            np.float64)
    except Exception:  # the probe itself fails: name nothing
        return ""
    for factor in (2.0, 0.5):
        if linear.shape == c.shape and np.allclose(linear, factor * np.asarray(c), rtol=1e-4):
            return (f" On f(x) = sum(c * x), whose difference quotients are exactly c for any "
                    f"step, it returned {factor:g} * c: the denominator is off by a factor "
                    f"{factor:g} (f(x + eps * e) and f(x - eps * e) are 2 * eps apart).")
    if square.shape == x.shape and np.allclose(square, np.asarray(x) + 0.125, rtol=1e-4):
        return (" On f(x) = sum(x ** 2) / 2 with eps = 0.25 it returned x + eps / 2, the "
                "one-sided (forward) difference, whose error is proportional to eps; the "
                "central difference gives x exactly.")
    return ""


def _check_numerical_grad(fn: Callable[..., Any]) -> str:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3005)
    functions = _test_functions(rng)
    for name, f, x in functions:
        got = _call_numerical_grad(fn, f, x, FD_EPS)
        where = f" for f(x) = {name} at x of shape {tuple(x.shape)} with eps={FD_EPS}"
        got = expect_array(got, x.shape, np.float32, f"the gradient{where}")
        exact = np.asarray(jax.jit(jax.grad(f))(x))
        if np.allclose(got, exact, rtol=FD_RTOL, atol=FD_ATOL):
            continue
        error = float(np.max(np.abs(got - exact)))
        raise CheckFailed(
            f"the largest error against jax.grad is {error:.2g}{where}, above the float32 "
            f"tolerance (about {FD_ATOL:g} + {FD_RTOL:g} * |gradient|): got "
            f"{np.round(got, 4).tolist()}, expected {np.round(exact, 4).tolist()}."
            + _finite_difference_probe(fn)
        )
    # The step it is given must be the step it uses: for sum(x ** 3) / 3 the central
    # difference is x ** 2 + eps ** 2 / 3, so steps of 0.3 and 0.15 give visibly different
    # results, and the reference at the same step is the answer.
    cube = lambda x: jnp.sum(x**3) / 3  # noqa: E731
    x = _normal(rng, 4)
    for eps in (0.3, 0.15):
        got = _call_numerical_grad(fn, cube, x, eps)
        got = expect_array(got, x.shape, np.float32,
                           f"the gradient for f(x) = sum(x ** 3) / 3 with eps={eps}")
        expected = np.asarray(reference_numerical_grad(cube, x, eps))
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-3):
            raise CheckFailed(
                f"for f(x) = sum(x ** 3) / 3 with eps={eps}, the central difference is "
                f"x ** 2 + eps ** 2 / 3 = {np.round(expected, 4)}, but got {np.round(got, 4)}: "
                "use the eps you are given, not a fixed step."
            )
    return (f"numerical_grad agrees with jax.grad within the float32 tolerance on "
            f"{len(functions)} functions (eps={FD_EPS}), uses the eps it is given, and only "
            "evaluates f")


def numerical_grad(student_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``numerical_grad(f, x, eps) -> array like x`` by central differences."""
    return run_check(
        "numerical_grad", student_fn, reference_numerical_grad, _check_numerical_grad,
        HINTS["numerical_grad"],
    )
