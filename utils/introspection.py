"""Look inside JAX programs: compilations, jaxpr sizes, traceability (introduced in lesson 02_jit).

Exercise checkers use these to test *properties* of a student's function beyond its values:

- :class:`CompileCounter` / :func:`count_compilations`: how many times a jitted function was
  traced and compiled (XLA) during a block. A well-written function compiles once per input
  shape and dtype, however many times it is called with new data.
- :func:`jaxpr_size`: the number of equations in ``jax.make_jaxpr(fn)(*args)``, counted
  through sub-jaxprs (``lax.scan`` bodies, ``lax.cond`` branches, nested ``jit``). A function
  whose jaxpr grows with the batch size or the number of steps has a Python loop inside.
- :func:`is_traceable`: whether ``fn`` can be traced at all, or uses a traced value as a
  Python ``bool``/``int``/``float`` (``if x > 0:``, ``float(x)``), which fails under ``jit``.

Counting uses :mod:`jax.monitoring`, JAX's public instrumentation API: JAX records an event
named ``/jax/core/compile/jaxpr_trace_duration`` each time it traces a function for ``jit``
and ``/jax/core/compile/backend_compile_duration`` each time XLA compiles one (verified on
JAX 0.10.2). Nothing here imports JAX at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "BACKEND_COMPILE_EVENT",
    "CompileCounter",
    "JAXPR_TRACE_EVENT",
    "count_compilations",
    "is_traceable",
    "jaxpr_size",
]

#: Recorded by JAX each time it traces a Python function to a jaxpr for ``jit``.
JAXPR_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
#: Recorded by JAX each time XLA compiles a program (a cache hit of the persistent
#: compilation cache is recorded too: it stands for a compilation that was needed).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _function_name(fn: Callable[..., Any] | str) -> str:
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        name = getattr(fn.func, "__name__", None)
    if name is None:
        raise ValueError(f"cannot tell the name of {fn!r}; pass the name as a string.")
    return name


class CompileCounter:
    """Count traces and XLA compilations while a ``with`` block runs.

    Example::

        f = jax.jit(lambda x: 2 * x)
        with CompileCounter(f) as counter:
            f(jnp.ones(3)); f(jnp.ones(3)); f(jnp.ones(4))
        counter.compiles   # 2: one per new input shape
        counter.traces     # 2

    Args:
      fn: count only the events of this function (a jitted function, a plain function, or
        its ``__name__``); functions are told apart by name, so give the function a name
        of its own. ``None`` counts every function, including the small programs JAX
        compiles for operations run outside ``jit`` (``jnp.ones(5)`` is one).

    Attributes:
      compiles: XLA compilations seen (the expensive step).
      traces: Python traces seen (each runs the Python function once on tracers).
      compile_seconds: total XLA compilation time seen, in seconds.
      names: the function name of every compilation, in order.
    """

    def __init__(self, fn: Callable[..., Any] | str | None = None) -> None:
        self._name = None if fn is None else _function_name(fn)
        self.compiles = 0
        self.traces = 0
        self.compile_seconds = 0.0
        self.names: list[str] = []
        self._active = False

    def _matches(self, fun_name: str | None) -> bool:
        if self._name is None or fun_name is None:
            return True
        return fun_name in (self._name, f"jit({self._name})")

    def _listener(self, event: str, duration: float, **kwargs: Any) -> None:
        fun_name = kwargs.get("fun_name")
        if not self._active or not self._matches(fun_name):
            return
        if event == BACKEND_COMPILE_EVENT:
            self.compiles += 1
            self.compile_seconds += float(duration)
            self.names.append(str(fun_name))
        elif event == JAXPR_TRACE_EVENT:
            self.traces += 1

    def __enter__(self) -> CompileCounter:
        import jax.monitoring

        self.compiles, self.traces, self.compile_seconds, self.names = 0, 0, 0.0, []
        self._active = True
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc_info: object) -> None:
        import jax.monitoring

        self._active = False
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:
            unregister(self._listener)
        else:  # pragma: no cover - JAX versions without the public unregister function
            from jax._src import monitoring

            monitoring._event_duration_secs_listeners.remove(self._listener)

    def __repr__(self) -> str:
        who = "all functions" if self._name is None else self._name
        return f"CompileCounter({who}: {self.compiles} compiles, {self.traces} traces)"


def count_compilations(fn: Callable[..., Any], calls: Iterable[Sequence[Any]]) -> int:
    """Call the jitted ``fn(*args)`` for each ``args`` in ``calls``; return how many XLA
    compilations of ``fn`` that took.

    ``calls`` is an iterable of argument tuples, e.g. ``[(x1,), (x2,)]``. Outputs are
    waited for. A function that compiles once per input shape gives 1 for several calls of
    one shape. Raises ``TypeError`` if ``fn`` is not a ``jax.jit``-wrapped function
    (a plain function is never compiled as a whole, so the count would say nothing).
    """
    import jax

    if not callable(getattr(fn, "lower", None)):
        raise TypeError(
            f"count_compilations needs a jax.jit-wrapped function, got {type(fn).__name__}; "
            "wrap it first: jax.jit(fn)."
        )
    with CompileCounter(fn) as counter:
        for args in calls:
            jax.block_until_ready(fn(*args))
    return counter.compiles


def _sub_jaxprs(value: Any) -> Iterable[Any]:
    """Jaxprs found in an equation parameter (a jaxpr, a closed jaxpr, or lists of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):  # ClosedJaxpr
        yield value.jaxpr
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _sub_jaxprs(item)


def _count_eqns(jaxpr: Any, recursive: bool) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        if recursive:
            for param in eqn.params.values():
                for sub in _sub_jaxprs(param):
                    total += _count_eqns(sub, recursive)
    return total


def jaxpr_size(
    fn: Callable[..., Any],
    *args: Any,
    recursive: bool = True,
    static_argnums: int | Sequence[int] = (),
    **kwargs: Any,
) -> int:
    """Number of equations in ``jax.make_jaxpr(fn)(*args, **kwargs)``.

    With ``recursive=True`` (the default) equations inside sub-jaxprs count too: a
    ``lax.scan`` or ``lax.fori_loop`` body counts once, however many steps it runs, while a
    Python ``for`` loop adds its body once per step. So compare ``jaxpr_size`` at two batch
    sizes or step counts: equal means no Python loop over them. Arguments are only traced
    (shapes and dtypes matter, values do not); ``jax.ShapeDtypeStruct`` works as an argument.
    Errors of ``fn`` (for example a tracer used as a Python bool) are raised as they are.
    """
    import jax

    closed = jax.make_jaxpr(fn, static_argnums=static_argnums)(*args, **kwargs)
    return _count_eqns(closed.jaxpr, recursive)


def _tracer_errors() -> tuple[type[BaseException], ...]:
    import jax.errors

    names = ("ConcretizationTypeError", "TracerBoolConversionError",
             "TracerIntegerConversionError", "TracerArrayConversionError",
             "NonConcreteBooleanIndexError")
    return tuple(getattr(jax.errors, n) for n in names if hasattr(jax.errors, n))


def is_traceable(
    fn: Callable[..., Any],
    *args: Any,
    static_argnums: int | Sequence[int] = (),
    **kwargs: Any,
) -> tuple[bool, str]:
    """Can ``fn(*args, **kwargs)`` be traced by ``jax.make_jaxpr`` (and so run under ``jit``)?

    Returns ``(True, "")``, or ``(False, summary)`` when ``fn`` turns a traced value into a
    concrete Python value: ``if x > 0:`` (``TracerBoolConversionError``), ``float(x)``
    (``ConcretizationTypeError``), ``range(n)`` on a traced ``n``
    (``TracerIntegerConversionError``), ``np.asarray(x)`` (``TracerArrayConversionError``),
    or a boolean mask that makes the output shape depend on values
    (``NonConcreteBooleanIndexError``). ``summary`` is the error's type and first line.
    ``static_argnums`` marks positional arguments that stay Python values.
    Any other error of ``fn`` is not a tracing problem and is raised as it is. Note that
    ``if x > 0:`` on an array of more than one element raises ``ValueError`` (ambiguous
    truth value) with or without ``jit``: test with a scalar to see the tracing error.
    """
    import jax

    try:
        jax.make_jaxpr(fn, static_argnums=static_argnums)(*args, **kwargs)
    except _tracer_errors() as error:
        lines = str(error).strip().splitlines()
        first = lines[0].strip() if lines else ""
        if len(first) > 160:
            first = first[:157] + "..."
        return False, f"{type(error).__name__}: {first}" if first else type(error).__name__
    return True, ""
