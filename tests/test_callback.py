"""``host_call``: the lean host callback that steps host envs inside compiled programs."""

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.envs import callback
from fleetrl.envs.callback import host_call


def test_fast_path_is_active_for_this_jax():
    # If a JAX release moves the internals, host_call silently falls back to io_callback (about
    # 10x slower per call); this test makes the fallback loud instead.
    assert callback._FAST, "fleetrl.envs.callback fell back to io_callback"


def test_calls_run_once_each_in_order_inside_scan():
    seen = []
    shape = (jax.ShapeDtypeStruct((3,), jnp.float32),)

    def fn(x):
        seen.append(np.array(x))  # copy: the argument's buffer belongs to XLA
        return (np.asarray(x, np.float32) + 1.0,)

    @jax.jit
    def run(x):
        def body(x, _):
            (y,) = host_call(fn, shape, x)
            return y * 2.0, y

        return jax.lax.scan(body, x, None, length=4)

    final, ys = run(jnp.zeros(3, jnp.float32))
    # x -> (x + 1) * 2 : 0 -> 2 -> 6 -> 14 -> 30
    np.testing.assert_allclose(final, np.full(3, 30.0))
    np.testing.assert_allclose(ys[:, 0], [1.0, 3.0, 7.0, 15.0])
    np.testing.assert_allclose([s[0] for s in seen], [0.0, 2.0, 6.0, 14.0])


def test_a_call_whose_results_are_unused_still_runs():
    count = []

    def fn(x):
        count.append(1)
        return (np.zeros((), np.int32),)

    @jax.jit
    def run(x):
        host_call(fn, (jax.ShapeDtypeStruct((), jnp.int32),), x)
        return x + 1

    run(jnp.int32(0)).block_until_ready()
    assert count == [1]


def test_several_results_and_dtypes():
    shapes = (
        jax.ShapeDtypeStruct((2, 2), jnp.uint8),
        jax.ShapeDtypeStruct((2,), jnp.float32),
    )

    def fn(seed):
        return np.full((2, 2), int(seed), np.uint8), np.array([0.5, 1.5], np.float32)

    a, b = jax.jit(lambda s: host_call(fn, shapes, s))(jnp.int32(7))
    assert a.dtype == jnp.uint8 and int(a[1, 1]) == 7
    np.testing.assert_allclose(b, [0.5, 1.5])
