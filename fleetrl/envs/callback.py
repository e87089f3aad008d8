"""A host call from inside a compiled program, without JAX's per-call conversions.

``jax.experimental.io_callback`` wraps the Python function so that every call first turns its
NumPy arguments into JAX arrays (``device_put``) under a ``default_device`` context and then
converts the results back: ~100 us per call on CPU, measured in a 1000-step scan of a no-op
callback (112 us/step, against 9.6 us for the same callback lowered directly). A host env pays it
once per batched step, which was more than stepping 8 CartPoles (see docs/BENCHMARKS.md, "Host
envs"). `host_call` is a one-primitive replacement: the function gets the NumPy arrays XLA hands
the callback (valid only during the call) and returns NumPy arrays of the declared shapes.

It carries an effect of its own (unordered), so it is never dropped and may sit inside ``scan``;
order between calls comes from data dependence (each env step takes the action computed from the
previous step's observation). It has no batching rule: host envs serve one seed. The lowering
uses JAX's internal ``emit_python_callback``; if a JAX release moves it, `host_call` falls back
to ``io_callback`` (correct, only slower).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def _register():
    """The ``fleetrl_host_call`` primitive, or None if this JAX lacks the internals it uses."""
    try:  # internal API: see the module docstring
        from jax._src import core, dispatch, effects
        from jax._src.callback import emit_python_callback
        from jax.extend.core import Primitive
        from jax.interpreters import mlir

        class HostEffect(effects.Effect):
            """Marks a host call as a side effect: JAX keeps it, even inside scan/while."""

        host_effect = HostEffect()
        effects.lowerable_effects.add_type(HostEffect)
        effects.control_flow_allowed_effects.add_type(HostEffect)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX release
        return None

    # One primitive for every host function: the function and result shapes are static params.
    primitive = Primitive("fleetrl_host_call")
    primitive.multiple_results = True

    def abstract_eval(*args, fn, result_shapes):
        del args, fn
        return [core.ShapedArray(s.shape, s.dtype) for s in result_shapes], {host_effect}

    def lowering(ctx, *args, fn, result_shapes):
        del result_shapes
        results, _, _ = emit_python_callback(
            ctx,
            fn,
            None,
            list(args),
            ctx.avals_in,
            ctx.avals_out,
            has_side_effect=True,
            returns_token=False,
        )
        return results

    primitive.def_effectful_abstract_eval(abstract_eval)
    mlir.register_lowering(primitive, lowering, platform="cpu")
    # outside jit, the primitive runs as a tiny compiled program of its own
    primitive.def_impl(lambda *args, **params: dispatch.apply_primitive(primitive, *args, **params))
    return primitive


_host_call_p = _register()
_FAST = _host_call_p is not None


def host_call(
    fn: Callable[..., Sequence[np.ndarray]],
    result_shapes: Sequence[jax.ShapeDtypeStruct],
    *args: Any,
) -> tuple[jax.Array, ...]:
    """Call ``fn(*numpy_args) -> tuple of arrays`` on the host from jitted code (CPU backend).

    ``fn`` must return exactly ``result_shapes`` (shape and dtype) and must not keep references
    to its arguments after returning.
    """
    result_shapes = tuple(result_shapes)
    if not _FAST or jax.default_backend() != "cpu":
        from jax.experimental import io_callback

        return tuple(io_callback(fn, result_shapes, *args, ordered=True))
    flat = [jax.numpy.asarray(a) for a in args]
    return tuple(_host_call_p.bind(*flat, fn=fn, result_shapes=result_shapes))
