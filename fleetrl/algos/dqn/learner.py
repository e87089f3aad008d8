"""The value-based family's learner: state, acting and learning as pure functions built by
`make`, for every combination of the config's flags.

``learn`` inserts the rollout into the device replay buffer (`fleetrl.replay`: observations
stored once, in their own dtype), then takes ``gradient_steps`` gradient steps once the buffer
holds ``learning_starts`` env steps. Each step samples n-step windows (uniformly, or by
priority from `fleetrl.prioritized`), builds the member's target (`losses`) and minimises the
member's per-sample loss, weighted by the importance weights. With an env that masks actions,
acting, evaluation and the bootstrap action pick among the legal actions.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fleetrl import distributions as D
from fleetrl import prioritized, replay, seeds
from fleetrl.algos import guard
from fleetrl.algos.dqn import losses
from fleetrl.algos.dqn.networks import make_network, q_values, quantile_midpoints, support
from fleetrl.algos.guard import clip_or_skip
from fleetrl.types import Algorithm, Array, EnvSpec, Health, Metrics, Rollout


@struct.dataclass
class DQNState:
    params: Any
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayBuffer
    priorities: prioritized.Priorities
    """The sum tree over the buffer's window starts (one leaf when replay is uniform)."""
    env_steps: Array
    gradient_steps: Array


class Parts(NamedTuple):
    """What `make` builds once and the pure functions below close over."""

    cfg: Any
    spec: EnvSpec
    network: Any
    optimizer: Any
    capacity_rows: int
    total_steps: int


def build_parts(run, spec: EnvSpec) -> Parts:
    """What `make` closes over, for ``run`` (a RunConfig) and ``spec``: the config, the network
    and the optimizer (also what a distributed learner builds its steps from, `apex`)."""
    cfg = run.algo
    learning_rate = cfg.learning_rate
    if cfg.anneal_lr:  # in gradient steps: iterations x gradient_steps
        iterations = max(1, run.train.total_steps // (spec.num_envs * run.train.num_steps))
        learning_rate = optax.linear_schedule(
            cfg.learning_rate, 0.0, iterations * cfg.gradient_steps
        )
    # one flat vector for Adam: fewer XLA:CPU kernels per gradient step (see
    # actor_critic/learner.py); a NaN or Inf gradient skips its update (guard.py)
    adam = optax.adam(learning_rate, eps=cfg.adam_epsilon)
    optimizer = optax.flatten(clip_or_skip(adam, cfg.max_grad_norm))
    return Parts(
        cfg,
        spec,
        make_network(cfg, spec.num_actions),
        optimizer,
        cfg.buffer_size // spec.num_envs,
        run.train.total_steps,
    )


def make(run, spec: EnvSpec) -> Algorithm:
    """Build the value-based `Algorithm` for ``run`` (a RunConfig) and ``spec``."""
    parts = build_parts(run, spec)
    return Algorithm(
        init=functools.partial(init, parts),
        actor_params=functools.partial(actor_params, parts),
        init_actor=lambda key, num_envs: (),
        act=functools.partial(act, parts),
        learn=functools.partial(learn, parts),
        health=health,
    )


def init_params(parts: Parts, key: Array):
    """The network's initial parameters."""
    spec, cfg = parts.spec, parts.cfg
    dummy = jnp.zeros((1,) + spec.observation_shape, spec.observation_dtype)
    taus = jnp.full((1, 1), 0.5) if cfg.distributional == "iqn" else None
    return parts.network.init({"params": key, "noise": key}, dummy, taus)


def init(parts: Parts, key: Array) -> DQNState:
    spec, cfg = parts.spec, parts.cfg
    params = init_params(parts, key)
    buffer = replay.create(
        spec.observation_shape,
        spec.observation_dtype,
        spec.num_envs,
        parts.capacity_rows,
        num_actions=spec.num_actions if spec.action_mask else 0,
        frame_stack=spec.frame_stack,
    )
    leaves = parts.capacity_rows * spec.num_envs if cfg.prioritized else 1
    return DQNState(
        params,
        params,
        parts.optimizer.init(params),
        buffer,
        prioritized.create(leaves),
        jnp.int32(0),
        jnp.int32(0),
    )


def health(state: DQNState) -> Health:
    return guard.health(state.params, state.opt_state)


def actor_params(parts: Parts, state: DQNState) -> dict[str, Any]:
    """The online network's parameters and the exploration rate now."""
    epsilon = losses.epsilon_schedule(state.env_steps, parts.cfg, parts.total_steps)
    return {"params": state.params, "epsilon": epsilon}


def forward(parts: Parts, params, obs: Array, key: Array, num_fractions: int, sample: bool):
    """The network's ``[B, A, K]`` outputs and their fractions ``[B, K]`` (QR and IQN; else
    None). ``sample``: draw layer noise and IQN's fractions; else mean weights and fixed,
    evenly spaced fractions (deterministic)."""
    cfg = parts.cfg
    noise_key, tau_key = jax.random.split(key)
    batch = obs.shape[0]
    taus = None
    if cfg.distributional == "qr":
        taus = jnp.broadcast_to(quantile_midpoints(cfg.num_quantiles), (batch, cfg.num_quantiles))
    elif cfg.distributional == "iqn" and sample:
        taus = jax.random.uniform(tau_key, (batch, num_fractions))
    elif cfg.distributional == "iqn":
        taus = jnp.broadcast_to(quantile_midpoints(num_fractions), (batch, num_fractions))
    network_taus = taus if cfg.distributional == "iqn" else None
    outputs = parts.network.apply(params, obs, network_taus, sample, rngs={"noise": noise_key})
    return outputs, taus


def expected_q(parts: Parts, outputs: Array) -> Array:
    atoms = support(parts.cfg) if parts.cfg.distributional == "c51" else None
    return q_values(outputs, parts.cfg.distributional, atoms)


def act(parts: Parts, ap, actor_state, obs: Array, key: Array, explore: bool = True, mask=None):
    """Epsilon-greedy (or noisy-greedy) over the legal actions (``mask``); greedy with mean
    weights and fixed fractions without ``explore``."""
    net_key, explore_key, action_key = jax.random.split(key, 3)
    outputs, _ = forward(parts, ap["params"], obs, net_key, parts.cfg.num_quantile_samples, explore)
    q = D.mask_logits(expected_q(parts, outputs), mask)
    if not explore:
        return jnp.argmax(q, axis=-1).astype(jnp.int32), actor_state, {}
    action = losses.epsilon_greedy(q, ap["epsilon"], explore_key, action_key, mask)
    return action, actor_state, {}


def _take(outputs: Array, action: Array) -> Array:
    """``outputs [B, A, K]`` at ``action [B]``: ``[B, K]``."""
    return jnp.take_along_axis(outputs, action[:, None, None], axis=1)[:, 0]


def member_loss(parts: Parts, params, target_params, window: replay.Window, key: Array):
    """Per-sample loss ``[B]`` of the member the config names, the expected Q ``[B, A]`` at
    obs, and the priority signal ``[B]``: |TD error| for scalar Q (Schaul et al. 2016), the
    loss itself for distributional members (Rainbow's cross-entropy; the quantile loss)."""
    cfg = parts.cfg
    online_key, target_key, next_key, obs_key = jax.random.split(key, 4)
    outputs, taus = forward(parts, params, window.obs, online_key, cfg.num_tau_samples, True)
    predicted = _take(outputs, window.action)
    next_target, _ = forward(
        parts, target_params, window.next_obs, target_key, cfg.num_tau_prime_samples, True
    )
    partial_return, discount = losses.n_step_bootstrap(
        window.reward, window.terminated, window.truncated, cfg.gamma
    )
    next_q_target = D.mask_logits(expected_q(parts, next_target), window.next_action_mask)
    if cfg.munchausen:
        at_obs, _ = forward(parts, target_params, window.obs, obs_key, cfg.num_tau_samples, True)
        target = losses.munchausen_target(
            D.mask_logits(expected_q(parts, at_obs), window.action_mask), window.action,
            next_q_target, next_target,
            partial_return, discount, cfg,
        )  # fmt: skip
    else:
        chooser = next_q_target
        if cfg.double_q:
            next_online, _ = forward(
                parts, params, window.next_obs, next_key, cfg.num_quantile_samples, True
            )
            chooser = D.mask_logits(expected_q(parts, next_online), window.next_action_mask)
        next_outputs = _take(next_target, jnp.argmax(chooser, axis=-1))  # [B, K']
        if cfg.distributional == "c51":
            target = losses.categorical_projection(
                support(cfg), jax.nn.softmax(next_outputs, -1), partial_return, discount
            )
            loss = losses.categorical_loss(predicted, target)
            return loss, expected_q(parts, outputs), loss
        target = partial_return[:, None] + discount[:, None] * next_outputs
    if cfg.distributional in ("qr", "iqn"):
        loss = losses.quantile_huber_loss(predicted, taus, target, cfg.kappa)
        return loss, expected_q(parts, outputs), loss
    loss = losses.scalar_loss(predicted[:, 0], target[:, 0], cfg.loss)
    return loss, expected_q(parts, outputs), jnp.abs(predicted[:, 0] - target[:, 0])


def loss_fn(parts: Parts, params, target_params, window, weights: Array, key: Array):
    per_sample, q, signal = member_loss(parts, params, target_params, window, key)
    # windows whose truncated final observation was overwritten (replay.Window.valid) count 0
    weights = weights * window.valid
    loss = jnp.sum(weights * per_sample) / jnp.maximum(jnp.sum(window.valid), 1)
    taken = jnp.take_along_axis(q, window.action[:, None], axis=-1)[:, 0]
    metrics = {"losses/td_loss": loss, "losses/q_values": taken.mean()}
    return loss, (metrics, jax.lax.stop_gradient(signal))


class Learner(NamedTuple):
    """What the gradient steps carry (the buffer is closed over, so the scan never copies it)."""

    params: Any
    target_params: Any
    opt_state: Any
    priorities: prioritized.Priorities
    count: Array


def sample_batch(parts: Parts, buffer, priorities, key: Array, beta: Array):
    """Window starts ``(rows, envs)``, their leaves and importance weights ``[B]``."""
    cfg = parts.cfg
    if not cfg.prioritized:
        rows, envs = replay.sample_uniform(buffer, key, cfg.batch_size, cfg.n_step)
        return rows, envs, None, jnp.ones((cfg.batch_size,), jnp.float32)
    leaves, probabilities = prioritized.sample(priorities, key, cfg.batch_size)
    rows, envs = leaves // buffer.num_envs, leaves % buffer.num_envs
    weights = prioritized.importance_weights(
        probabilities, replay.num_valid(buffer, cfg.n_step), beta
    )
    return rows, envs, leaves, weights


def update_on(parts: Parts, params, target_params, opt_state, window, weights, key: Array):
    """One Adam step on ``window`` (``B`` windows) weighted by ``weights [B]``: ``(params,
    opt_state, priorities [B], metrics)``. The priorities are the windows' new ones (Schaul et
    al. 2016; for distributional members the loss itself, as Rainbow does), exponentiated by
    ``priority_alpha``; a window that is not ``valid`` gets the smallest."""
    cfg = parts.cfg
    grad_fn = jax.grad(functools.partial(loss_fn, parts), has_aux=True)
    grads, (metrics, signal) = grad_fn(params, target_params, window, weights, key)
    updates, opt_state = parts.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # a window that lost its final observation keeps the smallest priority, not its loss
    signal = jnp.where(window.valid, signal, 0.0)
    priorities = prioritized.priority(signal, cfg.priority_alpha, cfg.priority_epsilon)
    metrics["train/lost_windows"] = jnp.sum(~window.valid).astype(jnp.float32)
    return params, opt_state, priorities, metrics


def gradient_step(parts: Parts, buffer, beta: Array, learner: Learner, key: Array):
    """One Adam step on a sampled batch (`update_on`); with prioritized replay, the batch's
    priorities are set from its losses."""
    cfg = parts.cfg
    sample_key, loss_key = jax.random.split(key)
    rows, envs, leaves, weights = sample_batch(parts, buffer, learner.priorities, sample_key, beta)
    window = replay.read_windows(buffer, rows, envs, cfg.n_step)
    params, opt_state, new, metrics = update_on(
        parts, learner.params, learner.target_params, learner.opt_state, window, weights, loss_key
    )
    priorities = learner.priorities
    if cfg.prioritized:
        priorities = prioritized.update(priorities, leaves, new)
    learner = Learner(params, learner.target_params, opt_state, priorities, learner.count + 1)
    return learner, metrics


def refresh_target(cfg, params, target_params, steps_before: Array, steps_after: Array):
    """Stable-Baselines3's target updates in env steps: one Polyak update per multiple of
    ``target_update_interval`` crossed, all with the same online parameters (the online network
    does not change while envs step): target <- online + (1 - tau)^k (target - online)."""
    interval = cfg.target_update_interval
    crossings = steps_after // interval - steps_before // interval
    keep = (1.0 - cfg.tau) ** crossings.astype(jnp.float32)
    polyak = lambda on, tg: jnp.where(crossings > 0, on + keep * (tg - on), tg)
    return jax.tree.map(polyak, params, target_params)


def priority_beta(cfg, env_steps: Array, total_steps: int) -> Array:
    """The importance-sampling exponent after ``env_steps``: linear from
    ``priority_beta_start`` to ``priority_beta_end`` at ``total_steps`` (Schaul et al., sec.
    3.4), then constant."""
    progress = jnp.minimum(env_steps / total_steps, 1.0)
    return cfg.priority_beta_start + progress * (cfg.priority_beta_end - cfg.priority_beta_start)


def insert(parts: Parts, state: DQNState, rollout: Rollout) -> DQNState:
    """The rollout into the buffer; with prioritized replay, newly valid window starts at the
    highest priority so far and newly invalid ones at 0."""
    reward = rollout.reward
    if parts.cfg.clip_rewards:  # stored clipped, as Dopamine's agents do; logs keep raw returns
        reward = jnp.sign(reward)
    buffer = replay.add(
        state.buffer,
        rollout.obs,
        rollout.next_obs,
        rollout.action.astype(jnp.int32),
        reward,
        rollout.terminated,
        rollout.truncated,
        action_mask=rollout.action_mask,
    )
    priorities = state.priorities
    if parts.cfg.prioritized:
        priorities = prioritized.refresh(
            priorities, buffer, rollout.reward.shape[0], parts.cfg.n_step
        )
    return state.replace(buffer=buffer, priorities=priorities)


def learn(parts: Parts, state: DQNState, rollout: Rollout, key: Array) -> tuple[DQNState, Metrics]:
    """Insert the ``[T, N]`` rollout, update the target, then ``gradient_steps`` updates once
    ``learning_starts`` env steps are stored."""
    cfg = parts.cfg
    steps_before = state.env_steps
    state = insert(parts, state, rollout)
    state = state.replace(env_steps=state.env_steps + rollout.reward.size)
    target_params = refresh_target(
        cfg, state.params, state.target_params, steps_before, state.env_steps
    )
    beta = priority_beta(cfg, state.env_steps, parts.total_steps)

    def train(learner):
        step = lambda carry, k: gradient_step(parts, state.buffer, beta, carry, k)
        learner, metrics = jax.lax.scan(step, learner, jax.random.split(key, cfg.gradient_steps))
        return learner, jax.tree.map(jnp.mean, metrics)

    def skip(learner):
        zero = jnp.float32(0.0)
        return learner, {
            "losses/td_loss": zero,
            "losses/q_values": zero,
            "train/lost_windows": zero,
        }

    learner = Learner(
        state.params, target_params, state.opt_state, state.priorities, state.gradient_steps
    )
    warm = (state.env_steps >= cfg.learning_starts) & (
        replay.num_valid(state.buffer, cfg.n_step) > 0
    )
    # a real branch while every seed warms up, not a select running both (`fleetrl.seeds`)
    learner, metrics = seeds.cond(warm, train, skip, learner)
    state = state.replace(
        params=learner.params,
        target_params=learner.target_params,
        opt_state=learner.opt_state,
        priorities=learner.priorities,
        gradient_steps=learner.count,
    )
    metrics["train/epsilon"] = losses.epsilon_schedule(state.env_steps, cfg, parts.total_steps)
    metrics["train/replay_size"] = state.buffer.size * parts.spec.num_envs
    if cfg.prioritized:
        metrics["train/priority_beta"] = beta
    return state, metrics
