"""Prioritized replay's sum tree: the sampling law (chi-square), no zero-priority draw at the
float edge, hand-computed weights, duplicates, no drift after many updates, and priorities that
follow the replay buffer's valid windows through adds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fleetrl import prioritized, replay


def tree_of(values):
    return _tree_of(jnp.asarray(values, jnp.float32))


@jax.jit  # one compile instead of one per op
def _tree_of(values):
    return prioritized.update(prioritized.create(len(values)), jnp.arange(len(values)), values)


def rebuilt(leaves, capacity):
    """The sum tree recomputed from ``leaves`` by float32 pairwise sums, level by level."""
    tree = np.zeros(2 * capacity, np.float32)
    tree[capacity : capacity + len(leaves)] = leaves
    for node in range(capacity - 1, 0, -1):
        tree[node] = tree[2 * node] + tree[2 * node + 1]
    return tree


def test_samples_follow_priorities_chi_square():
    values = np.array([0.5, 0.0, 2.0, 1.0, 0.0, 3.5, 0.25, 1.75, 0.0, 4.0], np.float32)
    p = tree_of(values)
    assert p.capacity == 16 and float(p.total) == values.sum()
    draws = 200_000
    leaves, probabilities = jax.jit(prioritized.sample, static_argnums=2)(
        p, jax.random.PRNGKey(0), draws
    )
    np.testing.assert_allclose(probabilities, values[leaves] / values.sum(), rtol=1e-6)
    counts = np.bincount(np.asarray(leaves), minlength=len(values))
    assert len(counts) == len(values) and not counts[values == 0].any()
    positive = values > 0
    expected = draws * values[positive].astype(np.float64) / values.sum(dtype=np.float64)
    result = stats.chisquare(counts[positive], expected)
    assert result.pvalue > 1e-3, result  # fixed key: deterministic; fails only if the law is off


@pytest.mark.parametrize(
    "values, last",
    [([1.0, 2.0, 3.0, 0, 0, 0, 0, 0], 2), ([0, 1.0, 0, 0, 2.0, 0, 0, 0], 4), ([0, 0, 0, 5.0], 3)],
)
def test_the_float_edge_never_reaches_a_zero_priority_leaf(values, last):
    p = tree_of(values)
    total = p.total
    edges = jnp.stack([total, jnp.nextafter(total, jnp.inf), 2 * total, jnp.float32(0)])
    leaves = np.asarray(jax.jit(prioritized.descend)(p, edges))
    np.testing.assert_array_equal(leaves[:3], last)  # at or beyond the total: the last positive
    assert values[leaves[3]] > 0  # at 0: the first positive


def test_random_masses_never_reach_zero_leaves():
    rng = np.random.default_rng(1)
    values = rng.exponential(size=1000).astype(np.float32) * (rng.random(1000) < 0.3)
    values[0] = 1e-30  # tiny next to the total: rounding in every subtraction
    p = tree_of(values)
    # masses at every leaf's boundaries (the prefix sums), a hair either side
    bounds = jnp.asarray(np.cumsum(values, dtype=np.float32))
    masses = jnp.concatenate([bounds, jnp.nextafter(bounds, 0), jnp.nextafter(bounds, jnp.inf)])
    leaves = np.asarray(jax.jit(prioritized.descend)(p, masses))
    assert (values[leaves] > 0).all()


def test_weights_and_priorities_hand_computed():
    probabilities = jnp.array([0.1, 0.2, 0.4])
    # (10 * p) ** -beta: 1, 2 ** -beta, 4 ** -beta, over the batch's largest (1)
    np.testing.assert_allclose(
        prioritized.importance_weights(probabilities, 10, 0.5), [1.0, 2**-0.5, 0.5], rtol=1e-6
    )
    np.testing.assert_allclose(
        prioritized.importance_weights(probabilities, 10, 1.0), [1.0, 0.5, 0.25], rtol=1e-6
    )
    np.testing.assert_allclose(  # (|-2| + .25) ** .5, (0 + .25) ** .5, (1 + .25) ** .5
        prioritized.priority(jnp.array([-2.0, 0.0, 1.0]), 0.5, 0.25), [1.5, 0.5, 1.25**0.5]
    )


def test_update_with_duplicates_stays_consistent():
    p = tree_of([1.0] * 6)
    p = jax.jit(prioritized.update)(p, jnp.array([3, 3, 5, 3]), jnp.array([7.0, 2.0, 4.0, 2.0]))
    tree = np.asarray(p.tree)
    leaves = tree[p.capacity :]
    assert leaves[3] in (7.0, 2.0) and leaves[5] == 4.0
    np.testing.assert_array_equal(tree[1:], rebuilt(leaves, p.capacity)[1:])
    assert float(p.max_priority) == 7.0  # raised by every value given


def test_tree_equals_a_fresh_recomputation_after_many_updates():
    num_leaves, batch, num_updates = 1000, 64, 300
    keys = jax.random.split(jax.random.PRNGKey(2), num_updates)

    def step(p, key):
        leaf_key, value_key = jax.random.split(key)
        leaves = jax.random.randint(leaf_key, (batch,), 0, num_leaves)
        values = jax.random.exponential(value_key, (batch,)) * 1e3 ** jax.random.uniform(key)
        return prioritized.update(p, leaves, values), None

    p = jax.jit(lambda p: jax.lax.scan(step, p, keys)[0])(prioritized.create(num_leaves))
    tree = np.asarray(p.tree)
    assert p.capacity == 1024 and tree[p.capacity + num_leaves :].sum() == 0
    np.testing.assert_array_equal(tree[1:], rebuilt(tree[p.capacity :], p.capacity)[1:])


# ---- priorities that follow the buffer -----------------------------------------------------


@functools.partial(jax.jit, static_argnums=3)
def add_and_refresh(buffer, p, steps, n):
    """`replay.add` then `prioritized.refresh`; also the leaves' priorities, the envs of the
    leaves, and which leaves are valid window starts now."""
    buffer = replay.add(buffer, *steps)
    p = prioritized.refresh(p, buffer, steps[0].shape[0], n)
    rows, envs = replay.unleaf(buffer, jnp.arange(buffer.num_leaves))
    leaves = p.tree[p.capacity :][: buffer.num_leaves]
    return buffer, p, (leaves, envs, replay.valid_start(buffer, rows, n))


@functools.partial(jax.jit, static_argnums=2)
def own_priorities(buffer, p, n):
    """Env 0's valid windows get a priority of their own (0.5), which refreshes must keep."""
    rows = jnp.arange(buffer.capacity)
    valid = replay.valid_start(buffer, rows, n)
    return prioritized.update(p, replay.leaf(buffer, rows, 0), jnp.where(valid, 0.5, 0.0))


@pytest.mark.parametrize(
    "capacity, frame_stack, n, num_rows",
    [(16, 4, 3, 5), (16, 0, 1, 3), (6, 4, 1, 6)],  # the last: more changed leaves than rows
)
def test_refresh_keeps_priorities_positive_exactly_on_valid_windows(
    capacity, frame_stack, n, num_rows
):
    num_envs = 2
    obs_shape = (4, 1) if frame_stack else (1,)
    buffer = replay.create(obs_shape, jnp.float32, num_envs, capacity, frame_stack=frame_stack)
    p = prioritized.create(buffer.num_leaves)
    rng = np.random.default_rng(3)
    leaves = np.zeros(buffer.num_leaves, np.float32)
    for i in range(12):
        obs = jnp.zeros((num_rows, num_envs, *obs_shape))
        action = jnp.zeros((num_rows, num_envs), jnp.int32)
        terminated = jnp.asarray(rng.random((num_rows, num_envs)) < 0.2)
        steps = (obs, obs, action, jnp.ones((num_rows, num_envs)), terminated, ~terminated)
        before = leaves
        written = (int(buffer.steps) + np.arange(num_rows)) % capacity
        buffer, p, (leaves, envs, valid) = jax.device_get(add_and_refresh(buffer, p, steps, n))
        rows = np.arange(buffer.num_leaves) // num_envs
        np.testing.assert_array_equal(leaves > 0, valid)
        assert valid.sum() == max(int(buffer.size) - n - max(frame_stack, 1) + 1, 0) * num_envs
        # a start valid before and now, not rewritten, keeps its priority (env 0's 0.5 after i = 5)
        kept = valid & (before > 0) & ~np.isin(rows, written)
        np.testing.assert_array_equal(leaves[kept], before[kept])
        assert set(leaves[valid & ~kept]) <= {float(p.max_priority)}  # new or newly valid
        if i == 6 and capacity > num_rows:
            assert (leaves[kept & (envs == 0)] == 0.5).any()
        if i == 5:
            p = own_priorities(buffer, p, n)
            leaves = np.asarray(p.tree[p.capacity :])[: buffer.num_leaves]
