"""DQN's learner: state, acting and learning as pure functions built by `make`.

``learn`` inserts the rollout into the device replay buffer, then takes ``gradient_steps``
gradient steps once the buffer holds ``learning_starts`` transitions. With an env that masks
actions, acting and evaluation pick among the legal actions; the TD target still maxes over
all next actions (the replay keeps no mask yet).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fleetrl import distributions as D
from fleetrl import replay
from fleetrl.algos import guard
from fleetrl.algos.dqn.losses import epsilon_schedule, td_loss, td_target
from fleetrl.algos.guard import clip_or_skip
from fleetrl.nets import MLP
from fleetrl.types import Algorithm, Array, EnvSpec, Health, Metrics, Rollout


@struct.dataclass
class DQNState:
    params: Any
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayBuffer
    env_steps: Array
    gradient_steps: Array


class Parts(NamedTuple):
    """What `make` builds once and the pure functions below close over."""

    cfg: Any
    spec: EnvSpec
    network: Any
    optimizer: Any
    capacity_rows: int
    start_rows: int
    total_steps: int


def make(run, spec: EnvSpec) -> Algorithm:
    """Build DQN's `Algorithm` for ``run`` (a RunConfig) and ``spec``."""
    cfg = run.algo
    network = MLP(cfg.hidden_sizes, spec.num_actions, cfg.activation, out_gain=1.0)
    # one flat vector for Adam: fewer XLA:CPU kernels per gradient step (see
    # actor_critic/learner.py); a NaN or Inf gradient skips its update (guard.py)
    optimizer = optax.flatten(clip_or_skip(optax.adam(cfg.learning_rate), cfg.max_grad_norm))
    capacity_rows = cfg.buffer_size // spec.num_envs
    # learning_starts in buffer rows, and at least one n-step window
    start_rows = max(-(-cfg.learning_starts // spec.num_envs), cfg.n_step)
    parts = Parts(cfg, spec, network, optimizer, capacity_rows, start_rows, run.train.total_steps)
    return Algorithm(
        init=functools.partial(init, parts),
        actor_params=functools.partial(actor_params, parts),
        init_actor=lambda key, num_envs: (),
        act=functools.partial(act, parts),
        learn=functools.partial(learn, parts),
        health=health,
    )


def init(parts: Parts, key: Array) -> DQNState:
    spec = parts.spec
    dummy = jnp.zeros((1,) + spec.observation_shape, jnp.float32)
    params = parts.network.init(key, dummy)
    n = spec.num_envs
    example = {
        "obs": jnp.zeros((n,) + spec.observation_shape, jnp.float32),
        "action": jnp.zeros((n,), jnp.int32),
        "reward": jnp.zeros((n,), jnp.float32),
        "terminated": jnp.zeros((n,), bool),
        "truncated": jnp.zeros((n,), bool),
        "next_obs": jnp.zeros((n,) + spec.observation_shape, jnp.float32),
    }
    return DQNState(
        params,
        params,
        parts.optimizer.init(params),
        replay.create(example, parts.capacity_rows),
        jnp.int32(0),
        jnp.int32(0),
    )


def health(state: DQNState) -> Health:
    return guard.health(state.params, state.opt_state)


def actor_params(parts: Parts, state: DQNState) -> dict[str, Any]:
    """The online network's parameters and the exploration rate now."""
    epsilon = epsilon_schedule(state.env_steps, parts.cfg, parts.total_steps)
    return {"params": state.params, "epsilon": epsilon}


def act(parts: Parts, ap, actor_state, obs: Array, key: Array, explore: bool = True, mask=None):
    """Epsilon-greedy over the legal actions (``mask``); greedy without ``explore``."""
    q = D.mask_logits(parts.network.apply(ap["params"], obs), mask)
    greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
    if not explore:
        return greedy, actor_state, {}
    explore_key, action_key = jax.random.split(key)
    if mask is None:
        random_action = jax.random.randint(action_key, greedy.shape, 0, parts.spec.num_actions)
    else:  # uniform over the legal actions
        random_action = D.categorical_sample(D.mask_logits(jnp.zeros_like(q), mask), action_key)
    take_random = jax.random.uniform(explore_key, greedy.shape) < ap["epsilon"]
    return jnp.where(take_random, random_action, greedy), actor_state, {}


def loss_fn(parts: Parts, params, target_params, batch: dict[str, Array]):
    cfg, network, spec = parts.cfg, parts.network, parts.spec
    n, b = batch["reward"].shape
    q = network.apply(params, batch["obs"][0])
    q_taken = jnp.take_along_axis(q, batch["action"][0][:, None], axis=-1)[:, 0]
    next_obs = batch["next_obs"].reshape((n * b,) + spec.observation_shape)
    next_q_target = network.apply(target_params, next_obs).reshape(n, b, -1)
    # plain DQN never reads the online network's next-state values: skip that forward pass
    next_q_online = (
        network.apply(params, next_obs).reshape(n, b, -1) if cfg.double_q else next_q_target
    )
    target = td_target(
        next_q_online,
        next_q_target,
        batch["reward"],
        batch["terminated"],
        batch["truncated"],
        cfg.gamma,
        cfg.double_q,
    )
    loss = td_loss(q_taken - target, cfg.loss)
    return loss, {"losses/td_loss": loss, "losses/q_values": q_taken.mean()}


def gradient_step(parts: Parts, buffer: replay.ReplayBuffer, learner: tuple, key: Array):
    """One Adam step on a sampled batch; ``learner`` = (params, target, opt_state, count).

    The buffer is closed over, not carried, so the scan never copies it.
    """
    cfg = parts.cfg
    params, target_params, opt_state, count = learner
    batch = replay.sample_sequences(buffer, key, cfg.batch_size, cfg.n_step)
    grad_fn = jax.grad(functools.partial(loss_fn, parts), has_aux=True)
    grads, metrics = grad_fn(params, target_params, batch)
    updates, opt_state = parts.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    count = count + 1
    refresh = count % cfg.target_update_interval == 0
    target_params = jax.tree.map(
        lambda online, target: jnp.where(
            refresh, cfg.tau * online + (1 - cfg.tau) * target, target
        ),
        params,
        target_params,
    )
    return (params, target_params, opt_state, count), metrics


def learn(parts: Parts, state: DQNState, rollout: Rollout, key: Array) -> tuple[DQNState, Metrics]:
    """Insert the ``[T, N]`` rollout, then ``gradient_steps`` updates once warm."""
    cfg = parts.cfg
    steps = {
        "obs": rollout.obs,
        "action": rollout.action.astype(jnp.int32),
        "reward": rollout.reward,
        "terminated": rollout.terminated,
        "truncated": rollout.truncated,
        "next_obs": rollout.next_obs,
    }
    state = state.replace(
        buffer=replay.add(state.buffer, steps), env_steps=state.env_steps + rollout.reward.size
    )

    def train(learner):
        step = lambda carry, k: gradient_step(parts, state.buffer, carry, k)
        learner, metrics = jax.lax.scan(step, learner, jax.random.split(key, cfg.gradient_steps))
        return learner, jax.tree.map(jnp.mean, metrics)

    def skip(learner):
        zero = jnp.float32(0.0)
        return learner, {"losses/td_loss": zero, "losses/q_values": zero}

    learner = (state.params, state.target_params, state.opt_state, state.gradient_steps)
    learner, metrics = jax.lax.cond(state.buffer.size >= parts.start_rows, train, skip, learner)
    params, target_params, opt_state, count = learner
    state = state.replace(
        params=params, target_params=target_params, opt_state=opt_state, gradient_steps=count
    )
    metrics["train/epsilon"] = epsilon_schedule(state.env_steps, cfg, parts.total_steps)
    metrics["train/replay_size"] = state.buffer.size * parts.spec.num_envs
    return state, metrics
