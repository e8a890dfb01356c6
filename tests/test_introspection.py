"""Tests for utils.introspection (lesson 02_jit)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from utils.introspection import (
    CompileCounter,
    count_compilations,
    is_traceable,
    jaxpr_size,
)


def _fresh(name: str):
    """A new jitted function with a name of its own (JAX caches compilations per function)."""

    def fn(x):
        return jnp.sin(x) * 2.0 + 1.0

    fn.__name__ = fn.__qualname__ = name
    return jax.jit(fn)


# --- CompileCounter -----------------------------------------------------------------------


def test_counter_counts_one_compile_per_shape_and_dtype():
    f = _fresh("intro_shapes")
    with CompileCounter(f) as c:
        f(jnp.ones(3))
        f(jnp.ones(3) + 1.0)  # new data, same shape: cached
        f(jnp.ones(4))  # new shape
        f(jnp.ones(4, jnp.int32))  # new dtype
        f(jnp.ones(4, jnp.int32))
    assert c.compiles == 3
    assert c.traces == 3
    assert c.names == ["jit(intro_shapes)"] * 3
    assert c.compile_seconds > 0


def test_counter_ignores_other_functions_and_eager_ops():
    f = _fresh("intro_filter")
    g = _fresh("intro_other")
    with CompileCounter(f) as c:
        g(jnp.ones(7))
        jnp.cos(jnp.arange(11.0))  # eager ops compile small programs of their own
        f(jnp.ones(7))
    assert c.compiles == 1


def test_counter_without_filter_sees_everything():
    f = _fresh("intro_all")
    with CompileCounter() as c:
        f(jnp.ones(13))
    # jnp.ones(13) itself compiles a tiny program outside jit, plus f
    assert c.compiles >= 1
    assert "jit(intro_all)" in c.names


def test_counter_counts_static_argument_changes():
    @functools.partial(jax.jit, static_argnames="n")
    def intro_power(x, n):
        return x**n

    with CompileCounter(intro_power) as c:
        for n in (2, 3, 3, 2, 4):
            intro_power(jnp.ones(3), n=n)
    assert c.compiles == 3


def test_counter_stops_counting_after_the_block():
    f = _fresh("intro_after")
    with CompileCounter(f) as c:
        f(jnp.ones(2))
    f(jnp.ones(5))
    assert c.compiles == 1
    assert "1 compiles" in repr(c)


def test_counter_by_name_string():
    f = _fresh("intro_by_name")
    with CompileCounter("intro_by_name") as c:
        f(jnp.ones(2))
    assert c.compiles == 1


def test_count_compilations_detects_python_float_closure():
    f = _fresh("intro_count")
    x = jnp.ones((2, 3))
    assert count_compilations(f, [(x,), (x * 2,), (x - 1,)]) == 1
    assert count_compilations(f, [(x,)]) == 0  # already compiled above
    assert count_compilations(f, [(jnp.ones(9),), (jnp.ones(10),)]) == 2


def test_count_compilations_static_array_argument_recompiles_on_new_values():
    # A typical mistake: a scalar passed as a static argument recompiles for every value.
    def intro_scale(x, s):
        return x * s

    jitted = jax.jit(intro_scale, static_argnums=1)
    x = jnp.ones(3)
    assert count_compilations(jitted, [(x, 1.0), (x, 2.0), (x, 3.0)]) == 3
    traced = jax.jit(intro_scale)
    assert count_compilations(traced, [(x, 1.0), (x, 2.0), (x, 3.0)]) == 1


def test_count_compilations_rejects_a_plain_function():
    with pytest.raises(TypeError, match="jax.jit"):
        count_compilations(lambda x: x, [(jnp.ones(2),)])


# --- jaxpr_size ---------------------------------------------------------------------------


def test_jaxpr_size_of_a_scalar_function():
    assert jaxpr_size(lambda x: jnp.sin(x) + 1.0, 1.0) == 2


def test_jaxpr_size_python_loop_grows_with_steps_but_scan_does_not():
    def python_loop(x, n):
        for _ in range(n):
            x = jnp.sin(x) + 1.0
        return x

    def scanned(x, n):
        return lax.scan(lambda c, _: (jnp.sin(c) + 1.0, None), x, None, length=n)[0]

    x = jnp.ones(4)
    def size(fn, n, **kw):
        return jaxpr_size(fn, x, n, static_argnums=1, **kw)

    assert size(python_loop, 10) == 10 * size(python_loop, 1) == 20
    assert size(scanned, 10) == size(scanned, 1000)
    # recursion counts the body: scan (1) + sin + add
    assert size(scanned, 10) == 3
    assert size(scanned, 10, recursive=False) == 1


def test_jaxpr_size_batched_python_loop_grows_with_batch():
    def per_row_loop(x):
        return jnp.stack([jnp.sum(row) for row in x])

    def vectorised(x):
        return jnp.sum(x, axis=1)

    small, big = jnp.ones((2, 5)), jnp.ones((8, 5))
    assert jaxpr_size(per_row_loop, big) > jaxpr_size(per_row_loop, small)
    assert jaxpr_size(vectorised, big) == jaxpr_size(vectorised, small)


def test_jaxpr_size_counts_cond_branches_and_nested_jit():
    def f(x):
        return lax.cond(x > 0, jnp.sin, jnp.cos, x)

    # gt, convert_element_type, cond, and one equation in each branch
    assert jaxpr_size(f, 1.0) == 5
    assert jaxpr_size(f, 1.0, recursive=False) == 3
    inner = jax.jit(lambda x: x * 2.0 + 1.0)
    assert jaxpr_size(lambda x: inner(x), jnp.ones(3)) == 3  # pjit + mul + add


def test_jaxpr_size_accepts_shape_dtype_struct():
    spec = jax.ShapeDtypeStruct((1024, 3), jnp.float32)
    assert jaxpr_size(lambda x: x.sum(axis=0), spec) == 1


def test_jaxpr_size_raises_the_functions_error():
    def bad(x):
        if x > 0:
            return x
        return -x

    with pytest.raises(jax.errors.TracerBoolConversionError):
        jaxpr_size(bad, jnp.float32(2.0))


# --- is_traceable -------------------------------------------------------------------------


def test_is_traceable_accepts_jnp_where():
    ok, why = is_traceable(lambda x: jnp.where(x > 0, x, 0.0), jnp.ones(3))
    assert ok and why == ""


def test_is_traceable_rejects_python_if_on_traced_value():
    def relu(x):
        return x if x > 0 else 0.0

    ok, why = is_traceable(relu, 1.5)
    assert not ok
    assert why.startswith("TracerBoolConversionError:")
    # the same function with its threshold static is fine
    ok, _ = is_traceable(lambda x, t: x * 2 if t > 0 else x, jnp.ones(3), 1.0, static_argnums=1)
    assert ok


def test_is_traceable_rejects_float_conversion():
    ok, why = is_traceable(lambda x: float(x) * 2.0, jnp.float32(1.0))
    assert not ok
    assert why.startswith("ConcretizationTypeError:")


def test_is_traceable_rejects_range_on_traced_int_and_numpy_conversion():
    ok, why = is_traceable(lambda n: sum(range(n)), jnp.int32(3))
    assert not ok and why.startswith("TracerIntegerConversionError:")
    ok, why = is_traceable(lambda x: np.asarray(x) + 1, jnp.ones(3))
    assert not ok and why.startswith("TracerArrayConversionError:")


def test_is_traceable_rejects_value_dependent_shapes():
    ok, why = is_traceable(lambda x: x[x > 0], jnp.ones(3))
    assert not ok and why.startswith("NonConcreteBooleanIndexError:")


def test_is_traceable_reraises_ordinary_errors():
    # `if x > 0` on a vector fails with or without jit: not a tracing problem
    with pytest.raises(ValueError, match="ambiguous"):
        is_traceable(lambda x: x if x > 0 else -x, jnp.ones(3))
    with pytest.raises(TypeError, match="unsupported operand"):
        is_traceable(lambda x: x + "a", jnp.ones(3))
    with pytest.raises(NotImplementedError):
        is_traceable(lambda x: (_ for _ in ()).throw(NotImplementedError()), jnp.ones(3))
