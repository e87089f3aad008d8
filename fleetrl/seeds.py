"""The seed axis: several seeds of one run are ``vmap``-ed over an axis named `AXIS`
(`fleetrl.programs.over_seeds`), and a learner may ask what the seeds have in common.

Why: under ``vmap`` a ``lax.cond`` on a per-seed value becomes a select that runs both branches
for every seed. A learner that skips its gradient steps until its replay holds
``learning_starts`` steps would then run them all anyway during warm-up and throw them away
(half of td3-pendulum's gradient work: 10k of its 20k steps are warm-up). Branching on
whether any seed's predicate holds, a value shared by the seeds, keeps the ``cond`` a real
branch (`cond`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fleetrl.types import Array

AXIS = "seeds"


def cond(predicate: Array, true_fn, false_fn, operand):
    """``lax.cond(predicate, true_fn, false_fn, operand)`` per seed, as a real branch.

    Outside a vmap over `AXIS`, exactly ``lax.cond``. Inside, the branch is taken on whether
    any seed's ``predicate`` holds, and each seed then keeps its own branch's result:
    ``false_fn`` must be cheap (it runs a second time, outside the branch, for the seeds
    whose predicate is False)."""
    try:
        shared = jax.lax.pmax(predicate, AXIS)
    except NameError:  # no seed axis bound: one seed
        return jax.lax.cond(predicate, true_fn, false_fn, operand)
    taken = jax.lax.cond(shared, true_fn, false_fn, operand)
    return jax.tree.map(lambda t, f: jnp.where(predicate, t, f), taken, false_fn(operand))
