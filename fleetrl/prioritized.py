"""Proportional prioritized replay (Schaul et al. 2016, "Prioritized Experience Replay", sec.
3.3): a sum tree over the window starts of a `fleetrl.replay` buffer, on device.

The tree is one flat ``[2P]`` float32 array, P the next power of two >= the leaves: node 1 is
the root, node i has children 2i and 2i + 1, leaf j is node P + j (node 0 is unused). Sampling
and updating B leaves touch B nodes per level, O(B log P), never the whole tree: inside a jitted
scan (or with the state donated) XLA updates it in place. Parents are recomputed from their
children at every update, never adjusted by differences, so the sums cannot drift.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from fleetrl import replay
from fleetrl.types import Array


@struct.dataclass
class Priorities:
    tree: Array
    """``[2P]`` float32 sum tree; leaves at ``[P, 2P)``."""
    max_priority: Array
    """The largest priority set so far (float32 scalar, starts at 1): new windows get it, so
    each is sampled at least once soon after it is stored (Schaul et al., Algorithm 1)."""

    @property
    def capacity(self) -> int:
        """P: leaves the tree holds (a power of two)."""
        return self.tree.shape[0] // 2

    @property
    def depth(self) -> int:
        return self.capacity.bit_length() - 1

    @property
    def total(self) -> Array:
        """Sum of all priorities (the root)."""
        return self.tree[1]


def create(num_leaves: int) -> Priorities:
    """An all-zero tree for ``num_leaves`` leaves (`fleetrl.replay.ReplayBuffer.num_leaves`)."""
    capacity = 1 << max(num_leaves - 1, 0).bit_length()
    return Priorities(jnp.zeros((2 * capacity,), jnp.float32), jnp.float32(1.0))


def update(p: Priorities, leaves: Array, priorities: Array) -> Priorities:
    """Set ``leaves [B]`` to ``priorities [B]`` (>= 0) and recompute their ancestors; raises
    ``max_priority``. A leaf repeated in the batch takes one of its values, and the tree stays
    consistent with whichever it took (parents are read back from the children)."""
    nodes = p.capacity + leaves

    def level(i, tree):  # the parents of level depth - i, B nodes
        parents = nodes >> (i + 1)
        return tree.at[parents].set(tree[2 * parents] + tree[2 * parents + 1])

    tree = p.tree.at[nodes].set(priorities.astype(jnp.float32))
    tree = jax.lax.fori_loop(0, p.depth, level, tree)
    return Priorities(tree, jnp.maximum(p.max_priority, priorities.max(initial=0.0)))


def descend(p: Priorities, mass: Array) -> Array:
    """``[B]`` leaves holding the cumulative priority ``mass [B]`` (in ``[0, total]``): left
    where ``mass`` < the left child's sum, else right with the left sum taken off.

    Never a zero-priority leaf while the total is positive: a float ``mass`` can reach a right
    subtree's sum (``mass`` = total, or rounding in the subtractions), and the descent then goes
    right only into a subtree with a positive sum; every node it visits has a positive sum
    (a parent is exactly its left child's sum when its right one is 0).
    """

    def level(_, carry):
        node, mass = carry
        left, right = p.tree[2 * node], p.tree[2 * node + 1]
        go_right = (mass >= left) & (right > 0)
        return 2 * node + go_right, jnp.where(go_right, mass - left, mass)

    # a loop, not unrolled: XLA fused the unrolled levels into whatever used the leaves, so an
    # `update` of the sampled leaves read the tree after writing it, and XLA copied the whole
    # tree twice per update (sample + update of 32 at 1M leaves: 3.8 ms instead of 0.15 on our
    # CPU, benchmarks/replay_memory.py)
    node = jax.lax.fori_loop(0, p.depth, level, (jnp.ones(mass.shape, jnp.int32), mass))[0]
    return node - p.capacity


def sample(p: Priorities, key: Array, batch_size: int) -> tuple[Array, Array]:
    """``(leaves [B] int32, probabilities [B])``: B i.i.d. draws with probability
    ``priority / total``. Needs a positive total (`refresh` after a first valid window)."""
    mass = jax.random.uniform(key, (batch_size,), jnp.float32) * p.total
    leaves = descend(p, mass)
    return leaves, p.tree[p.capacity + leaves] / p.total


def importance_weights(probabilities: Array, num_valid: Array, beta: float | Array) -> Array:
    """``[B]`` weights ``(num_valid * probability) ** -beta`` (Schaul et al., sec. 3.4),
    divided by the batch's largest, as Dopamine and most implementations do, rather than by the
    buffer-wide largest of the paper (which needs the smallest priority in the tree)."""
    weights = (num_valid * probabilities) ** -beta
    return weights / weights.max()


def priority(td_error: Array, alpha: float | Array, epsilon: float | Array) -> Array:
    """``(|td_error| + epsilon) ** alpha``: proportional priorities (Schaul et al., sec. 3.3);
    epsilon keeps a window with zero error sampleable."""
    return (jnp.abs(td_error) + epsilon) ** alpha


def refresh(p: Priorities, buffer: replay.ReplayBuffer, num_rows: int, n: int) -> Priorities:
    """After `fleetrl.replay.add` of ``num_rows`` rows (``buffer``: after it): the window
    starts that became valid get ``max_priority``, those that became invalid (overwritten rows,
    the newest rows, the oldest ``S - 1``) get 0; the others keep theirs. O(num_rows + n + S)
    leaves per env (`fleetrl.replay.changed_leaves`). Sampling then never draws an invalid
    start, except one whose final observation the side ring lost (``Window.valid`` False): give
    those priority 0 in the update after the gradient step."""
    leaves, valid = replay.changed_leaves(buffer, num_rows, n)
    return update(p, leaves, jnp.where(valid, p.max_priority, 0.0))
