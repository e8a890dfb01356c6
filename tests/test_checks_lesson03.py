"""Checkers of lesson 03_vmap_grad: the reference passes, a stub is NOT ATTEMPTED, and typical
wrong answers FAIL with a message that says what is wrong."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checker_helpers import expect_failed, run_checker

from utils.checks import lesson03_vmap_grad as check

# ---- the lesson's building blocks ------------------------------------------------------

def test_distance_and_example_loss_match_numpy():
    a, b = np.array([1.0, 2.0, 2.0], np.float32), np.zeros(3, np.float32)
    assert float(check.distance(a, b)) == pytest.approx(3.0)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    x, y = jnp.array([3.0, 1.0]), jnp.array(2.0)
    assert float(check.example_loss(params, x, y)) == pytest.approx((3 - 2 + 0.5 - 2) ** 2)


# ---- pairwise_distances -------------------------------------------------------------------

def test_reference_pairwise_distances_matches_numpy():
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((4, 3)), rng.standard_normal((6, 3))
    expected = np.linalg.norm(xs[:, None, :] - ys[None, :, :], axis=-1)
    got = check.reference_pairwise_distances(jnp.asarray(xs, jnp.float32),
                                             jnp.asarray(ys, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_pairwise_by_broadcasting_passes(capsys):
    def broadcast(xs, ys):  # manual batching is vectorised too: no loop in the jaxpr
        return jnp.sqrt(jnp.sum((xs[:, None, :] - ys[None, :, :]) ** 2, axis=-1))

    line, use = run_checker(capsys, check.pairwise_distances, broadcast)
    assert line.startswith("PASSED pairwise_distances:"), line
    assert "does not grow" in line
    assert use is broadcast


def _pairwise_list_comprehension(xs, ys):
    return jnp.stack([jax.vmap(check.distance, in_axes=(None, 0))(x, ys) for x in xs])


def _pairwise_loop_over_ys(xs, ys):
    return jnp.stack([jax.vmap(check.distance, in_axes=(0, None))(xs, y) for y in ys], axis=1)


def _pairwise_for_loop(xs, ys):
    out = jnp.zeros((xs.shape[0], ys.shape[0]))
    for i in range(xs.shape[0]):
        for j in range(ys.shape[0]):
            out = out.at[i, j].set(check.distance(xs[i], ys[j]))
    return out


@jax.jit
def _pairwise_loop_inside_jit(xs, ys):
    return jnp.stack([jnp.stack([check.distance(x, y) for y in ys]) for x in xs])


def _pairwise_single_vmap(xs, ys):
    return jax.vmap(check.distance)(xs, ys)


def _pairwise_squared(xs, ys):
    return jax.vmap(jax.vmap(lambda a, b: jnp.sum((a - b) ** 2), (None, 0)), (0, None))(xs, ys)


def _pairwise_transposed(xs, ys):
    return jax.vmap(jax.vmap(check.distance, (0, None)), (None, 0))(xs, ys)


def _pairwise_expanded_square(xs, ys):  # |a|^2 + |b|^2 - 2 a.b: cancellation far from 0
    squared = (jnp.sum(xs**2, axis=1)[:, None] + jnp.sum(ys**2, axis=1)[None, :]
               - 2 * xs @ ys.T)
    return jnp.sqrt(jnp.maximum(squared, 0.0))


def _pairwise_numpy(xs, ys):
    return jnp.asarray(np.linalg.norm(np.asarray(xs)[:, None] - np.asarray(ys)[None], axis=-1))


def _pairwise_fails_on_empty(xs, ys):  # reads a first row, which an empty batch lacks
    scale = jnp.ones_like(xs[0, 0])
    return scale * jax.vmap(jax.vmap(check.distance, (None, 0)), (0, None))(xs, ys)


@pytest.mark.parametrize(("wrong", "says"), [
    (_pairwise_expanded_square, "for inputs of shape (4, 3)x(6, 3)"),
    (_pairwise_numpy, "TracerArrayConversionError"),
    (_pairwise_fails_on_empty, "for inputs of shape (0, 2)x(3, 2)"),
    (_pairwise_list_comprehension, "9 rows of xs: the program grows with the batch"),
    (_pairwise_loop_over_ys, "9 rows of ys: the program grows with the batch"),
    (_pairwise_for_loop, "the program grows with the batch"),
    (_pairwise_loop_inside_jit, "the program grows with the batch"),
    (_pairwise_single_vmap, "your function raised ValueError"),
    (_pairwise_squared, "differs from the reference"),
    (_pairwise_transposed, "has shape (5, 3) but expected (3, 5)"),
])
def test_pairwise_wrong_answers_fail(capsys, wrong, says):
    expect_failed(capsys, check.pairwise_distances, "pairwise_distances", wrong, says)


# ---- global_norm ---------------------------------------------------------------------------

def test_reference_global_norm_matches_numpy():
    tree = {"a": jnp.array([3.0, 0.0]), "b": [jnp.array([[4.0]]), jnp.array(12.0)]}
    assert float(check.reference_global_norm(tree)) == pytest.approx(13.0)


def _norm_first_leaf(tree):
    return jnp.linalg.norm(jax.tree.leaves(tree)[0])


def _norm_sum_of_norms(tree):
    return sum(jnp.linalg.norm(leaf) for leaf in jax.tree.leaves(tree))


def _norm_no_sqrt(tree):
    return sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree))


def _norm_per_leaf(tree):
    return jax.tree.map(lambda leaf: jnp.sqrt(jnp.sum(leaf**2)), tree)


def _norm_python_float(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(leaf) ** 2) for leaf in jax.tree.leaves(tree))))


def _norm_concatenate(tree):  # fails on a tree without leaves
    return jnp.linalg.norm(jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)]))


def _norm_reduce_without_initial(tree):
    squares = jax.tree.map(lambda leaf: jnp.sum(leaf**2), tree)
    return jnp.sqrt(jax.tree.reduce(lambda a, b: a + b, squares))


def _norm_dict_values_only(tree):
    values = tree.values() if isinstance(tree, dict) else jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.asarray(v) ** 2) for v in values if v is not None))


def _norm_without_gradient(tree):
    return jax.lax.stop_gradient(check.reference_global_norm(tree))


@pytest.mark.parametrize(("wrong", "says"), [
    (_norm_concatenate, "for an empty dict (leaf shapes {}), your function raised"),
    (_norm_reduce_without_initial, "for an empty dict (leaf shapes {}), your function raised"),
    (_norm_dict_values_only, "for nested dicts (leaf shapes"),
    (_norm_without_gradient, "the gradient of global_norm"),
    (_norm_first_leaf, "but the expected value is"),
    (_norm_sum_of_norms, "but the expected value is"),
    (_norm_no_sqrt, "but the expected value is"),
    (_norm_per_leaf, "it should return one number"),
    (_norm_python_float, "it should return one number"),
])
def test_global_norm_wrong_answers_fail(capsys, wrong, says):
    expect_failed(capsys, check.global_norm, "global_norm", wrong, says)


# ---- mse_with_aux --------------------------------------------------------------------------

def _errors(params, xs, ys):
    return xs @ params["w"] + params["b"] - ys


def _aux_swapped(params, xs, ys):
    e = _errors(params, xs, ys)
    return {"mae": jnp.mean(jnp.abs(e))}, jnp.mean(e**2)


def _aux_missing(params, xs, ys):
    return jnp.mean(_errors(params, xs, ys) ** 2)


def _aux_per_example_loss(params, xs, ys):
    e = _errors(params, xs, ys)
    return e**2, {"mae": jnp.mean(jnp.abs(e))}


def _aux_sum_not_mean(params, xs, ys):
    e = _errors(params, xs, ys)
    return jnp.sum(e**2), {"mae": jnp.mean(jnp.abs(e))}


def _aux_not_a_dict(params, xs, ys):
    e = _errors(params, xs, ys)
    return jnp.mean(e**2), jnp.mean(jnp.abs(e))


def _aux_wrong_mae(params, xs, ys):
    e = _errors(params, xs, ys)
    return jnp.mean(e**2), {"mae": jnp.sqrt(jnp.mean(e**2))}


def _aux_abs_of_mean(params, xs, ys):
    e = _errors(params, xs, ys)
    return jnp.mean(e**2), {"mae": jnp.abs(jnp.mean(e))}


def _aux_labels_as_column(params, xs, ys):  # (n,) - (n, 1) broadcasts to (n, n)
    e = xs @ params["w"] + params["b"] - ys[:, None]
    return jnp.mean(e**2), {"mae": jnp.mean(jnp.abs(e))}


def _aux_bias_not_learned(params, xs, ys):
    e = xs @ params["w"] + jax.lax.stop_gradient(params["b"]) - ys
    return jnp.mean(e**2), {"mae": jnp.mean(jnp.abs(e))}


@pytest.mark.parametrize(("wrong", "says"), [
    (_aux_abs_of_mean, "aux['mae'] differs"),
    (_aux_labels_as_column, "the loss differs"),
    (_aux_bias_not_learned, "the gradient for 'b' differs"),
    (_aux_swapped, "the first element of the pair is a dict"),
    (_aux_missing, "returned an array of shape (); with has_aux=True it must return a pair"),
    (_aux_per_example_loss, "the loss has shape (8,)"),
    (_aux_sum_not_mean, "the loss differs from the reference"),
    (_aux_not_a_dict, "it should be a dict with the key 'mae'"),
    (_aux_wrong_mae, "aux['mae'] differs from the reference"),
])
def test_mse_with_aux_wrong_answers_fail(capsys, wrong, says):
    expect_failed(capsys, check.mse_with_aux, "mse_with_aux", wrong, says)


# ---- per_example_grads ---------------------------------------------------------------------

def _grads_mean_broadcast(params, xs, ys):
    def mean_loss(p):
        return jnp.mean(jax.vmap(check.example_loss, (None, 0, 0))(p, xs, ys))

    g = jax.grad(mean_loss)(params)
    return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (xs.shape[0], *leaf.shape)), g)


def _grads_of_summed_loss(params, xs, ys):
    def total_loss(p):
        return jnp.sum(jax.vmap(check.example_loss, (None, 0, 0))(p, xs, ys))

    return jax.grad(total_loss)(params)


def _grads_python_loop(params, xs, ys):
    grads = [jax.grad(check.example_loss)(params, x, y) for x, y in zip(xs, ys, strict=True)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *grads)


def _grads_wrt_x(params, xs, ys):
    return jax.vmap(jax.grad(check.example_loss, argnums=1), (None, 0, 0))(params, xs, ys)


def _grads_params_mapped(params, xs, ys):
    return jax.vmap(jax.grad(check.example_loss), in_axes=(0, 0, 0))(params, xs, ys)


def _grads_labels_shared(params, xs, ys):
    return jax.vmap(jax.grad(check.example_loss), in_axes=(None, 0, None))(params, xs, ys)


def _grads_first_example_only(params, xs, ys):
    g = jax.grad(check.example_loss)(params, xs[0], ys[0])
    return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (xs.shape[0], *leaf.shape)), g)


@pytest.mark.parametrize(("wrong", "says"), [
    (_grads_labels_shared, "your function raised"),
    (_grads_first_example_only, "of example 1 differs"),
    (_grads_mean_broadcast, "of example 0 differs from jax.grad(example_loss)"),
    (_grads_of_summed_loss, "has shape (3,) but expected (5, 3)"),
    (_grads_python_loop, "the program grows with the batch"),
    (_grads_wrt_x, "expected a dict with the same keys as params"),
    (_grads_params_mapped, "your function raised ValueError"),
])
def test_per_example_grads_wrong_answers_fail(capsys, wrong, says):
    expect_failed(capsys, check.per_example_grads, "per_example_grads", wrong, says)


# ---- hvp -----------------------------------------------------------------------------------

def test_reference_hvp_matches_hessian_of_a_quadratic():
    a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    f = lambda x: x @ a @ x / 2
    v = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(np.asarray(check.reference_hvp(f, jnp.ones(2), v)),
                               np.asarray(a @ v), rtol=1e-6)


def test_hvp_reverse_over_reverse_passes(capsys):
    def reverse_over_reverse(f, x, v):  # the Hessian is symmetric: a vjp of grad works too
        return jax.vjp(jax.grad(f), x)[1](v)[0]

    line, _ = run_checker(capsys, check.hvp, reverse_over_reverse)
    assert line.startswith("PASSED hvp:"), line


def _hvp_grad_times_v(f, x, v):
    return jax.grad(f)(x) * v


def _hvp_directional_derivative(f, x, v):  # jvp of f, not of grad f: one number
    return jax.jvp(f, (x,), (v,))[1]


def _hvp_diagonal_only(f, x, v):
    flat = x.reshape(-1)
    h = jax.hessian(lambda u: f(u.reshape(x.shape)))(flat)
    return (jnp.diag(h) * v.reshape(-1)).reshape(x.shape)


def _hvp_matmul_hessian(f, x, v):  # right for a vector x only
    return jax.hessian(f)(x) @ v


def _hvp_ignores_v(f, x, v):
    return jax.jvp(jax.grad(f), (x,), (jnp.ones_like(x),))[1]


def _hvp_tangent_wrong_slot(f, x, v):  # jvp at v in the direction x
    return jax.jvp(jax.grad(f), (v,), (x,))[1]


@pytest.mark.parametrize(("wrong", "says"), [
    (_hvp_grad_times_v, "differs from the Hessian of f at x times v"),
    (_hvp_directional_derivative, "has shape ()"),
    (_hvp_diagonal_only, "differs from the Hessian of f at x times v"),
    (_hvp_matmul_hessian, "at x of shape (2, 3) and a random v, your function raised"),
    (_hvp_ignores_v, "differs from the Hessian of f at x times v"),
    (_hvp_tangent_wrong_slot, "differs from the Hessian of f at x times v"),
])
def test_hvp_wrong_answers_fail(capsys, wrong, says):
    expect_failed(capsys, check.hvp, "hvp", wrong, says)


# ---- numerical_grad ------------------------------------------------------------------------

def test_reference_numerical_grad_close_to_exact_in_float32():
    f = lambda x: jnp.sum(jnp.exp(x)) + x[0] * x[1]
    x = jnp.array([0.3, -0.5, 1.0], jnp.float32)
    got = check.reference_numerical_grad(f, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.grad(f)(x)), atol=5e-4)


def _basis(x):
    return jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))


def _fd_forward(f, x, eps=1e-2):
    return jax.vmap(lambda e: (f(x + eps * e) - f(x)) / eps)(_basis(x)).reshape(x.shape)


def _fd_one_eps(f, x, eps=1e-2):
    return jax.vmap(lambda e: (f(x + eps * e) - f(x - eps * e)) / eps)(_basis(x)).reshape(x.shape)


def _fd_four_eps(f, x, eps=1e-2):  # 4 * eps in the denominator
    return jax.vmap(lambda e: (f(x + eps * e) - f(x - eps * e)) / (4 * eps))(_basis(x)).reshape(
        x.shape)


def _fd_flat_only(f, x, eps=1e-2):  # forgets to reshape: shape (n,) for a 2-D x
    return jax.vmap(lambda e: (f(x + eps * e) - f(x - eps * e)) / (2 * eps))(_basis(x))


def _fd_uses_autodiff(f, x, eps=1e-2):
    return jax.grad(f)(x)


def _fd_python_loop_forward(f, x, eps=1e-2):
    flat = x.reshape(-1)
    unflat = lambda v: v.reshape(x.shape)
    slopes = [(f(unflat(flat.at[i].add(eps))) - f(x)) / eps for i in range(flat.size)]
    return jnp.stack(slopes).reshape(x.shape)


def _fd_fixed_eps(f, x, eps=1e-2):  # ignores the step it is given
    return check.reference_numerical_grad(f, x, 1e-2)


def _fd_first_axis_only(f, x, eps=1e-2):  # assumes a 1-D x
    basis = jnp.eye(x.shape[0], dtype=x.dtype)
    return jax.vmap(lambda e: (f(x + eps * e) - f(x - eps * e)) / (2 * eps))(basis)


@pytest.mark.parametrize(("wrong", "says"), [
    (_fd_fixed_eps, "use the eps you are given"),
    (_fd_first_axis_only, "raised"),
    (_fd_forward, "it returned x + eps / 2, the one-sided (forward) difference"),
    (_fd_python_loop_forward, "above the float32 tolerance"),
    (_fd_one_eps, "it returned 2 * c: the denominator is off by a factor 2"),
    (_fd_four_eps, "it returned 0.5 * c"),
    (_fd_flat_only, "has shape (6,) but expected (2, 3)"),
    (_fd_uses_autodiff, "finite differences must only evaluate f"),
])
def test_numerical_grad_wrong_answers_fail(capsys, wrong, says):
    expect_failed(capsys, check.numerical_grad, "numerical_grad", wrong, says)


def test_numerical_grad_python_loop_central_passes(capsys):
    def loop_central(f, x, eps=1e-2):
        flat = x.reshape(-1)
        unflat = lambda v: v.reshape(x.shape)
        slopes = [(f(unflat(flat.at[i].add(eps))) - f(unflat(flat.at[i].add(-eps)))) / (2 * eps)
                  for i in range(flat.size)]
        return jnp.stack(slopes).reshape(x.shape)

    line, _ = run_checker(capsys, check.numerical_grad, loop_central)
    assert line.startswith("PASSED numerical_grad:"), line
