"""Ape-X's pieces that need no Ray (Horgan et al. 2018, "Distributed Prioritized Experience
Replay"): what an actor, the replay and the learner each run, as pure functions of the value
family (`learner`), so every member (double, dueling, n-step, C51/QR/IQN, Munchausen, noisy)
is an Ape-X member without a copy of its loss.

- actor ``i`` of ``K`` acts with the learner's online parameters and its own epsilon
  (`epsilon_ladder`, `with_epsilon`), cuts its segment ``[T, N]`` into n-step windows on the
  host (`segment_windows`) and gives each its initial priority (`make_priority_fn`: the
  member's priority signal with the online parameters as the target too, as in the paper,
  sec. 3: actors have no target network);
- the replay (`HostReplay`, `fleetrl.algos.dqn.host_replay`) stores windows with those
  priorities, samples proportionally and takes the learner's new priorities back, ignoring
  those of windows overwritten meanwhile;
- the learner steps on sampled windows (`make_learner_step`: `learner.loss_fn`, the family's
  optimizer with its clip-or-skip of non-finite gradients, the new priorities as
  `learner.gradient_step` computes them) and refreshes its target in env steps
  (`target_update`, `learner.refresh_target`).

Priorities are exponentiated by ``priority_alpha`` where they are computed (actor, learner):
the replay samples in proportion to what it is given.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl import prioritized
from fleetrl.algos import guard
from fleetrl.algos.dqn import learner
from fleetrl.algos.dqn.host_replay import HostReplay, ReplaySample, SumTree
from fleetrl.replay import Window
from fleetrl.types import Array, Rollout

__all__ = [
    "HostReplay",
    "LearnerState",
    "ReplaySample",
    "SumTree",
    "epsilon_ladder",
    "init_learner",
    "make_learner_step",
    "make_priority_fn",
    "segment_windows",
    "target_update",
    "with_epsilon",
]


# ---- actors -------------------------------------------------------------------------------------


def epsilon_ladder(num_actors: int, base: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """``[K]`` exploration rates of ``K = num_actors`` actors: ``base ** (1 + alpha * i / (K -
    1))`` for actor ``i`` (Horgan et al. 2018, sec. 4.1: 0.4 and 7), from ``base`` down to
    ``base ** (1 + alpha)``; ``[base]`` for one actor. With noisy nets (which explore by their
    noise, `losses.epsilon_schedule`) pass 0 to `with_epsilon` instead."""
    if num_actors < 1:
        raise ValueError(f"num_actors: need at least one actor, got {num_actors}")
    exponent = 1.0 + alpha * np.arange(num_actors) / max(num_actors - 1, 1)
    return base**exponent


def with_epsilon(actor_params: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """The value family's actor parameters (`learner.actor_params`: ``{"params",
    "epsilon"}``) with this actor's own ``epsilon`` (a float32 scalar) for `learner.act`."""
    return {**actor_params, "epsilon": jnp.float32(epsilon)}


def segment_windows(
    rollout: Rollout,
    n: int,
    clip_rewards: bool = False,
    final_action_mask: np.ndarray | None = None,
) -> Window:
    """All ``B = T * N`` n-step windows of one actor's segment, on the host (NumPy).

    ``rollout``: a `fleetrl.types.Rollout` of NumPy arrays ``[T, N, ...]`` (obs, action,
    reward, terminated, truncated, next_obs, action_mask or None). Window ``b = t * N + env``
    starts at step ``t`` of ``env``, with the fields `fleetrl.replay.Window` documents:
    ``reward, terminated, truncated [n, B]``; ``obs, next_obs [B, ...]``, ``next_obs`` the
    observation reached by step k* (the first step that ended an episode, else the last);
    ``valid`` all True. Steps after k* count for nothing in `losses.n_step_bootstrap`; they are
    written as reward 0 and no episode end, so nothing else reads another episode's rewards.

    A window that runs past the segment's end is cut there: its last in-segment step is marked
    ``truncated`` (in the window only; unless it terminated) and the steps after it are padded
    as above, so it bootstraps from that step's ``next_obs``: a shorter but exact return.

    ``clip_rewards``: the sign of each reward (`Config.clip_rewards`, as the device replay
    stores them). Masks (rollouts with ``action_mask``): ``action_mask`` at ``obs``;
    ``next_action_mask`` at ``next_obs``: the next step's mask where the episode goes on,
    ``final_action_mask [N, A]`` (the mask of the observation after the segment, the env's
    current one) at the segment's last step, all True where none is known (an episode's end, a
    cut window, no ``final_action_mask``), as at a truncation in `fleetrl.replay`.
    """
    reward = np.asarray(rollout.reward, np.float32)
    num_steps, num_envs = reward.shape
    if clip_rewards:
        reward = np.sign(reward)
    start, offset = np.arange(num_steps), np.arange(n)[:, None]
    steps = start + offset  # [n, T]
    inside = (steps < num_steps)[..., None]  # [n, T, 1]
    index = np.minimum(steps, num_steps - 1)
    terminated = np.asarray(rollout.terminated, bool)[index] & inside
    cut = ((steps == num_steps - 1) & (start + n > num_steps))[..., None]
    truncated = (np.asarray(rollout.truncated, bool)[index] | (cut & ~terminated)) & inside
    done = terminated | truncated
    # steps after the first episode end (and past the segment: after the cut) count for nothing
    alive = (np.cumsum(done, axis=0) - done) == 0
    last = np.where(done.any(axis=0), np.argmax(done, axis=0), n - 1)  # k*, [T, N]
    bootstrap = start[:, None] + last  # the step that reached next_obs, [T, N]
    envs = np.arange(num_envs)
    flat = lambda x: x.reshape(n, num_steps * num_envs)
    batch = lambda x: np.asarray(x).reshape((num_steps * num_envs,) + np.shape(x)[2:])
    next_mask = _next_action_mask(rollout, final_action_mask, bootstrap, done.any(axis=0))
    return Window(
        obs=batch(rollout.obs),
        action=batch(np.asarray(rollout.action, np.int32)),
        reward=flat(np.where(alive & inside, reward[index], 0.0).astype(np.float32)),
        terminated=flat(terminated & alive),
        truncated=flat(truncated & alive),
        next_obs=batch(np.asarray(rollout.next_obs)[bootstrap, envs]),
        valid=np.ones(num_steps * num_envs, bool),
        next_action_mask=None if next_mask is None else batch(next_mask),
        action_mask=None if rollout.action_mask is None else batch(rollout.action_mask),
    )


def _next_action_mask(rollout: Rollout, final_mask, bootstrap: np.ndarray, ended: np.ndarray):
    """``[T, N, A]``: the legal actions at each window's ``next_obs`` (`segment_windows`)."""
    if rollout.action_mask is None:
        return None
    mask = np.asarray(rollout.action_mask, bool)
    after = np.ones_like(mask[:1]) if final_mask is None else np.asarray(final_mask, bool)[None]
    following = np.concatenate([mask[1:], after])  # the mask of obs[t + 1], [T, N, A]
    known = following[bootstrap, np.arange(mask.shape[1])]
    return np.where(ended[..., None], True, known)


def make_priority_fn(parts: learner.Parts):
    """A jitted ``(params, window, key) -> priorities [B]``: the initial priorities of an
    actor's windows (`segment_windows`), ``(signal + priority_epsilon) ** priority_alpha`` of
    the member's priority signal (`learner.member_loss`: |TD error|, or the distributional
    loss) with the online ``params`` (``actor_params["params"]``) as the target too (Horgan et
    al. 2018, sec. 3). A window that is not ``valid`` gets the smallest, as in the learner."""
    cfg = parts.cfg

    def priorities(params, window: Window, key: Array) -> Array:
        _, _, signal = learner.member_loss(parts, params, params, window, key)
        signal = jnp.where(window.valid, signal, 0.0)
        return prioritized.priority(signal, cfg.priority_alpha, cfg.priority_epsilon)

    return jax.jit(priorities)


# ---- learner ------------------------------------------------------------------------------------


class LearnerState(NamedTuple):
    """What the Ape-X learner carries between steps (its replay lives in another process)."""

    params: Any
    target_params: Any
    opt_state: Any
    count: Array
    """Gradient steps taken (int32 scalar)."""


def init_learner(parts: learner.Parts, key: Array) -> LearnerState:
    """Fresh parameters, the target a copy of them, and the family's optimizer state."""
    params = learner.init_params(parts, key)
    return LearnerState(params, params, parts.optimizer.init(params), jnp.int32(0))


def make_learner_step(parts: learner.Parts):
    """A jitted ``(state, window, weights, key) -> (state, priorities [B], metrics)``: one
    gradient step of the member on ``B`` sampled windows weighted by the importance ``weights
    [B]`` (`learner.update_on`: `learner.loss_fn`, ``parts.optimizer`` with its clip or skip
    of non-finite gradients), the windows' new priorities (exponentiated, for
    `HostReplay.update`), and flat metrics (``losses/td_loss``, ``losses/q_values``,
    ``train/lost_windows``, ``train/skipped_updates``, ``train/nonfinite_streak``)."""

    def step(state: LearnerState, window: Window, weights: Array, key: Array):
        params, opt_state, priorities, metrics = learner.update_on(
            parts, state.params, state.target_params, state.opt_state, window, weights, key
        )
        metrics |= guard.skip_metrics(state.opt_state, opt_state)
        state = LearnerState(params, state.target_params, opt_state, state.count + 1)
        return state, priorities, metrics

    return jax.jit(step)


@functools.partial(jax.jit, static_argnums=0)
def _refresh(cfg, state: LearnerState, steps_before: Array, steps_after: Array) -> LearnerState:
    target_params = learner.refresh_target(
        cfg, state.params, state.target_params, steps_before, steps_after
    )
    return state._replace(target_params=target_params)


def target_update(
    cfg, state: LearnerState, env_steps_before: int, env_steps_after: int
) -> LearnerState:
    """``state`` with its target refreshed as the value family does (`learner.refresh_target`:
    one update with weight ``tau`` per multiple of ``target_update_interval`` env steps crossed
    between ``env_steps_before`` and ``env_steps_after``, all actors' steps together). On the
    host: unchanged when none was crossed, and exact past 2**31 env steps."""
    interval = cfg.target_update_interval
    before, after = int(env_steps_before), int(env_steps_after)
    if after // interval == before // interval:
        return state
    # the same crossings within int32: shifting both counts by a multiple of the interval
    shift = before - before % interval
    return _refresh(cfg, state, jnp.int32(before - shift), jnp.int32(after - shift))
