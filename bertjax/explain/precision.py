"""Run a traced float32 function in float64, for exact checks of attributions.

The models keep LayerNorm statistics, softmax, matmul accumulators and logits in float32 whatever
their compute dtype (`bertjax/models/layers.py`), so switching on `jax_enable_x64` alone leaves
them in float32. `in_float64(fn)` traces `fn` once to a jaxpr and evaluates it with every
floating value, literal, constant (the closed-over params) and float dtype parameter
(`convert_element_type`'s new_dtype, `dot_general`'s preferred_element_type) promoted to
float64; `reduce_precision` becomes the identity. Nested calls (jit, custom_jvp/vjp, remat) are
evaluated through their primal jaxprs, so the result can be differentiated with `jax.grad`
like any jax function. Needs `jax.config.update("jax_enable_x64", True)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

# Primitives that wrap a jaxpr to run as is: evaluated through it (their float32 internals too).
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}
_DTYPE_PARAMS = ("new_dtype", "preferred_element_type", "dtype")


def _is_float(dtype: Any) -> bool:
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _up(x: Any) -> Any:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return x
    return x.astype(jnp.float64) if _is_float(dtype) else x


def _eval(jaxpr: Any, consts: list[Any], args: list[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(var: Any) -> Any:
        if isinstance(var, jcore.Literal):
            value = var.val
            if _is_float(getattr(value, "dtype", None)) or isinstance(value, float):
                return jnp.asarray(value, jnp.float64)
            return value
        return env[var]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = _up(jnp.asarray(value))
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = _up(value)
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _CALLS:
            inner = eqn.params[_CALLS[name]]
            if isinstance(inner, jcore.ClosedJaxpr):
                outs = _eval(inner.jaxpr, list(inner.consts), invals)
            else:
                outs = _eval(inner, [], invals)
        elif name == "reduce_precision":
            outs = invals
        else:
            params = dict(eqn.params)
            for key in _DTYPE_PARAMS:
                if key in params and _is_float(params[key]):
                    params[key] = np.dtype(np.float64)
            if any(isinstance(v, (jcore.ClosedJaxpr, jcore.Jaxpr)) for v in params.values()):
                raise NotImplementedError(
                    f"in_float64: primitive {name!r} holds a sub-jaxpr (control flow) and is "
                    "not supported; run the model without scan/remat"
                )
            outs = eqn.primitive.bind(*invals, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for var, value in zip(eqn.outvars, outs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def in_float64(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (array arguments and results, any pytree) evaluated entirely in float64."""

    def wrapped(*args: Any) -> Any:
        if not jax.config.jax_enable_x64:
            raise RuntimeError("in_float64 needs jax.config.update('jax_enable_x64', True)")
        flat, tree = jax.tree_util.tree_flatten(args)
        specs = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in flat]
        closed, out_shape = jax.make_jaxpr(
            lambda *xs: fn(*jax.tree_util.tree_unflatten(tree, xs)), return_shape=True
        )(*specs)
        outs = _eval(closed.jaxpr, list(closed.consts), list(flat))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return wrapped
