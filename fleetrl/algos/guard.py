"""Gradient clipping that also skips updates whose gradients are not finite, and counts them.

A diverging loss (too high a learning rate, an exploding value target) first shows as a NaN or
Inf in the gradients; applied, it makes every parameter NaN, and the run goes on logging nulls
and checkpointing garbage. `clip_or_skip` clips by global norm, as ``optax.clip_by_global_norm``
does, and when that norm is NaN or Inf it feeds the inner optimizer a zero gradient and zeroes
its update: the parameters do not move (Adam's moments decay one step, as for a zero
gradient). The driver reads the counts and stops a run whose updates are all skipped
(`fleetrl.loop`).

Written here rather than with ``optax.apply_if_finite``: that one branches with ``lax.cond``,
which XLA:CPU runs as a sub-program inside every minibatch loop, keeps a second copy of the
optimizer state alive, and gives up and applies the bad update after
``max_consecutive_errors``. Here the clipping norm is also the finiteness test and the choices
are ``where``s that fuse into the clipping and Adam kernels: measured on PPO at CleanRL's
CartPole settings, a selected copy of Adam's state cost two extra kernels per minibatch and
1-5% of the speed; this form costs about nothing (docs/BENCHMARKS.md, section 1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fleetrl.types import Array, Health


class SkipState(NamedTuple):
    inner: Any
    streak: Array  # consecutive skipped updates (int32)
    skipped: Array  # all skipped updates so far (int32)


def clip_or_skip(
    inner: optax.GradientTransformation, max_norm: float
) -> optax.GradientTransformation:
    """Clip gradients to global norm ``max_norm``, then ``inner``; skip a non-finite update."""

    def init(params) -> SkipState:
        zero = jnp.zeros((), jnp.int32)
        return SkipState(inner.init(params), zero, zero)

    def update(grads, state: SkipState, params=None):
        norm = optax.tree.norm(grads)
        finite = jnp.isfinite(norm)
        clip = norm < max_norm

        def clipped(g):  # as optax.clip_by_global_norm, and 0 where the norm is not finite
            return jnp.where(finite, jnp.where(clip, g, (g / norm.astype(g.dtype)) * max_norm), 0)

        updates, inner_state = inner.update(jax.tree.map(clipped, grads), state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        bad = 1 - finite.astype(jnp.int32)
        return updates, SkipState(inner_state, (state.streak + bad) * bad, state.skipped + bad)

    return optax.GradientTransformation(init, update)


def health(params, opt_state) -> Health:
    """The `Health` of a learner whose optimizer went through `clip_or_skip` (also wrapped in
    ``optax.flatten``, whose state is the inner one): its parameters and skip counters."""
    return Health(params, opt_state.skipped, opt_state.streak)


def skip_metrics(before: SkipState, after: SkipState) -> dict[str, Array]:
    """``train/skipped_updates``: skipped in this learn call; ``train/nonfinite_streak``:
    consecutive skipped updates at its end (the driver stops the run on a long streak)."""
    return {
        "train/skipped_updates": after.skipped - before.skipped,
        "train/nonfinite_streak": after.streak,
    }


def upgrade_checkpoint(saved: Any, expected: Any) -> Any:
    """A checkpoint's state dict from an older layout in today's (for `checkpoint.load`):

    - from before `clip_or_skip`, the optimizer state was ``(clip_by_global_norm's empty state,
      adam's state)``; it becomes a `SkipState` with no skipped updates;
    - fields added since that hold nothing for the checkpoint's run (algorithm contract v2: the
      carry's ``actor_state`` of a feed-forward actor and ``action_mask`` of an env without
      masks; the actor-critic state's ``pending`` outside REINFORCE) are added empty.

    - from before issue 13, a value-based state had no ``priorities`` (uniform replay: an
      unused one-leaf tree is added) and its replay stored ``{data: {obs, next_obs, ...},
      position, size}``; the rows carry over, and the truncation side ring starts empty (a
      window that ends in a truncation stored before the upgrade reads back invalid, weight 0,
      until the ring refills).

    Anything else is returned as it is."""
    if not isinstance(saved, dict) or not isinstance(expected, dict):
        return saved
    if set(saved) == {"data", "position", "size"} and "final_step" in expected:
        return _upgrade_replay(saved, expected)
    if "priorities" in expected and "priorities" not in saved and "buffer" in saved:
        like = expected["priorities"]
        tree, top = like["tree"], like["max_priority"]
        saved = saved | {
            "priorities": {
                "tree": np.zeros(np.shape(tree), tree.dtype),
                "max_priority": np.ones(np.shape(top), top.dtype),
            }
        }
    empty = {
        k: v
        for k, v in expected.items()
        if k not in saved and (v is None or (isinstance(v, dict) and not v))
    }
    saved = saved | empty if empty else saved
    if set(expected) == {"inner", "streak", "skipped"} and set(saved) == {"0", "1"}:
        if saved["0"] in ({}, None):
            like = expected["streak"]  # an array or a ShapeDtypeStruct: [seeds] or a scalar
            zeros = np.zeros(np.shape(like), getattr(like, "dtype", np.int32))
            inner = upgrade_checkpoint(saved["1"], expected["inner"])
            return {"inner": inner, "streak": zeros, "skipped": zeros.copy()}
    return {k: upgrade_checkpoint(v, expected[k]) if k in expected else v for k, v in saved.items()}


def _upgrade_replay(saved: dict, expected: dict) -> dict:
    """The replay of issue 12's DQN (fields ``[seeds?, C, N, ...]``) in today's layout."""
    data = saved["data"]
    like = lambda name, fill=0: np.full(np.shape(expected[name]), fill, expected[name].dtype)
    upgraded = {name: None if like_ is None else like(name) for name, like_ in expected.items()}
    for name in ("obs", "action", "reward", "terminated", "truncated"):
        upgraded[name] = np.asarray(data[name]).astype(expected[name].dtype)
    upgraded["final_step"] = like("final_step", -1)  # the side ring starts empty
    capacity = np.shape(data["reward"])[-2]
    size, position = np.asarray(saved["size"]), np.asarray(saved["position"])
    # rows written so far, modulo what the ring forgot: what locates the oldest row
    steps = np.where(size < capacity, size, capacity + position)
    upgraded["steps"] = steps.astype(expected["steps"].dtype)
    return upgraded
