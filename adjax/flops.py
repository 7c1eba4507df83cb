"""Analytic FLOP counts from a function's jaxpr.

XLA's `compiled.cost_analysis()["flops"]` leaves out convolutions that run as cuDNN custom calls
on GPU (5.9 GFLOP reported where the analytic count is about 700 GFLOP for a conv net), so the
benchmark counts FLOPs itself, from the traced program rather than from a layer table.

What is counted, per primitive in the jaxpr (and in every jaxpr nested in it):

- `conv_general_dilated`: 2 FLOPs per multiply-accumulate, i.e.
  2 x (output elements) x (input features per group) x (kernel spatial size). Grouped and
  depthwise convolutions (`feature_group_count`) count only the features each group sees.
  Padding and dilation are not discounted: taps that land on padded or inserted zeros count,
  as they do in the dense kernels that run them.
- `dot_general`: 2 x (batch) x (free lhs) x (free rhs) x (contracted) elements.
- with `elementwise=True`, also 1 FLOP per output element of elementwise arithmetic
  (add, mul, exp, max, ... see `ELEMENTWISE`), 1 per input element of reductions
  (`reduce_sum`, `reduce_max`, ...) and 1 per window tap of windowed reductions (pooling).
  Comparisons, selects, casts, gathers and other data movement count nothing.

Control flow: a `scan` counts its body `length` times; a `cond` counts its most expensive
branch; a `while` loop counts its condition and body **once** (the trip count is not known when
tracing); calls (`jit`/`pjit`, `custom_jvp_call`, `custom_vjp_call`, `remat`, ...) count the
jaxprs they hold once. Only the function as traced is counted: a `custom_vjp`'s backward rule
is not, unless `fn` itself takes the gradient.
"""

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.extend import core as jcore

ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "rem", "pow", "integer_pow", "max", "min", "neg", "abs",
    "sign", "exp", "exp2", "log", "log1p", "expm1", "sqrt", "rsqrt", "cbrt", "square",
    "tanh", "logistic", "sin", "cos", "tan", "atan2", "erf", "erfc", "erf_inv", "floor", "ceil",
    "round", "add_any",
})
REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
                        "argmin", "cumsum", "cummax", "cummin", "cumprod"})
WINDOWED = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min",
                      "reduce_window"})


def count_flops(fn: Callable, *args: Any, elementwise: bool = False, **kwargs: Any) -> int:
    """FLOPs of one call `fn(*args, **kwargs)`, counted from its jaxpr (see the module docstring).

    `args` may be arrays or `jax.ShapeDtypeStruct`s: `fn` is only traced, never run. By default
    only convolutions and matrix products count (2 per multiply-accumulate); `elementwise=True`
    adds elementwise arithmetic and reductions.
    """
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    return _jaxpr_flops(closed.jaxpr, elementwise)


def _jaxpr_flops(jaxpr: jcore.Jaxpr, elementwise: bool) -> int:
    return sum(_eqn_flops(eqn, elementwise) for eqn in jaxpr.eqns)


def _eqn_flops(eqn: jcore.JaxprEqn, elementwise: bool) -> int:
    name, params = eqn.primitive.name, eqn.params
    if name == "conv_general_dilated":
        return _conv_flops(eqn)
    if name == "dot_general":
        return _dot_flops(eqn)
    if name == "scan":
        return params["length"] * _jaxpr_flops(params["jaxpr"].jaxpr, elementwise)
    if name == "cond":
        return max(_jaxpr_flops(branch.jaxpr, elementwise) for branch in params["branches"])
    # `while` (condition and body once), calls and remat: every nested jaxpr once.
    nested = sum(_jaxpr_flops(sub, elementwise) for sub in _nested_jaxprs(params))
    if not elementwise:
        return nested
    if name in ELEMENTWISE:
        return nested + sum(_size(v.aval.shape) for v in eqn.outvars)
    if name in REDUCTIONS:
        return nested + _size(eqn.invars[0].aval.shape)
    if name in WINDOWED:
        return nested + _size(eqn.outvars[0].aval.shape) * _size(params["window_dimensions"])
    return nested


def _nested_jaxprs(params: dict[str, Any]) -> Iterator[jcore.Jaxpr]:
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, jcore.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jcore.Jaxpr):
                yield item


def _conv_flops(eqn: jcore.JaxprEqn) -> int:
    # The kernel's input-feature dimension already holds C_in / feature_group_count.
    rhs_shape = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
    in_features = rhs_shape[rhs_spec[1]]
    kernel = _size(rhs_shape[d] for d in rhs_spec[2:])
    return 2 * _size(eqn.outvars[0].aval.shape) * in_features * kernel


def _dot_flops(eqn: jcore.JaxprEqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = _size(d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch))
    # lhs holds batch x free x contracted; rhs adds its free dimensions.
    return 2 * _size(lhs) * rhs_free


def _size(shape) -> int:
    return math.prod(int(d) for d in shape)
