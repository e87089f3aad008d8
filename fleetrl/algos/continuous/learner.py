"""The continuous family's learner (DDPG, TD3, SAC): state, acting and learning as pure
functions built by `make`, for every member's flags (`config.Family`).

Actions live in ``[-1, 1]^A`` inside the learner (actors end in tanh); acting maps them onto
the env's bounds and the replay stores them mapped back. ``learn`` inserts the rollout into the
device replay buffer (`fleetrl.replay`, shared with the value family), then, once
``learning_starts`` env steps are stored, takes ``utd`` gradient steps per env step in blocks:
``policy_delay`` critic updates, then one actor update (and SAC's temperature) and the Polyak
update of the targets, the schedule of Stable-Baselines3's TD3 and SAC. Until
``learning_starts`` the actor acts uniformly at random, as there.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from fleetrl import distributions as D
from fleetrl import replay, seeds
from fleetrl.algos.continuous import losses
from fleetrl.algos.continuous.config import Family, gradient_steps
from fleetrl.algos.continuous.networks import DeterministicActor, SquashedGaussianActor
from fleetrl.algos.guard import clip_or_skip
from fleetrl.nets import QEnsemble
from fleetrl.returns import n_step_bootstrap
from fleetrl.types import Algorithm, Array, EnvSpec, Health, Metrics, Rollout


@struct.dataclass
class ContinuousState:
    actor: Any
    critic: Any
    """The ``n`` critics' parameters, stacked on a leading axis (`fleetrl.nets.QEnsemble`)."""
    target_actor: Any
    """DDPG and TD3's target actor; ``()`` for SAC, which bootstraps with its current actor."""
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    log_alpha: Array
    """SAC's log temperature (a float32 scalar; 0 for DDPG and TD3)."""
    alpha_opt: Any
    buffer: replay.ReplayBuffer
    env_steps: Array
    gradient_steps: Array


class Parts(NamedTuple):
    """What `make` builds once and the pure functions below close over."""

    cfg: Any
    family: Family
    spec: EnvSpec
    actor: Any
    critic: Any
    actor_optimizer: Any
    critic_optimizer: Any
    alpha_optimizer: Any
    gradient_steps: int
    """Per iteration: utd x its env steps."""
    low: np.ndarray
    """``[A]`` the env's lower action bounds, flattened."""
    high: np.ndarray
    target_entropy: float


def make(run, spec: EnvSpec) -> Algorithm:
    """Build the continuous-family `Algorithm` for ``run`` (a RunConfig) and ``spec``."""
    cfg = run.algo
    family = Family.of(cfg)
    size = math.prod(spec.action_shape)
    if family.stochastic:
        args = (cfg.hidden_sizes, size, cfg.activation, cfg.log_std_min, cfg.log_std_max)
        actor = SquashedGaussianActor(*args)
    else:
        actor = DeterministicActor(cfg.hidden_sizes, size, cfg.activation)
    # one flat vector per network for Adam: fewer XLA:CPU kernels per gradient step (see
    # actor_critic/learner.py); a NaN or Inf gradient skips its update (guard.py)
    max_norm = cfg.max_grad_norm or math.inf
    adam = lambda: optax.flatten(clip_or_skip(optax.adam(cfg.learning_rate), max_norm))
    target_entropy = getattr(cfg, "target_entropy", None)
    parts = Parts(
        cfg,
        family,
        spec,
        actor,
        QEnsemble(cfg.hidden_sizes, family.n_critics, cfg.activation),
        adam(),
        adam(),
        clip_or_skip(optax.adam(cfg.learning_rate), math.inf),  # a NaN log pi: skipped
        gradient_steps(run),
        np.asarray(spec.action_low, np.float32),
        np.asarray(spec.action_high, np.float32),
        float(-size if target_entropy is None else target_entropy),
    )
    return Algorithm(
        init=functools.partial(init, parts),
        actor_params=functools.partial(actor_params, parts),
        init_actor=lambda key, num_envs: (),
        act=functools.partial(act, parts),
        learn=functools.partial(learn, parts),
        health=health,
    )


def init(parts: Parts, key: Array) -> ContinuousState:
    spec, cfg = parts.spec, parts.cfg
    actor_key, critic_key = jax.random.split(key)
    obs = jnp.zeros((1,) + spec.observation_shape, jnp.float32)
    action = jnp.zeros((1, parts.low.size), jnp.float32)
    actor = parts.actor.init(actor_key, obs)
    critic = parts.critic.init(critic_key, obs, action)
    buffer = replay.create(
        spec.observation_shape,
        spec.observation_dtype,
        spec.num_envs,
        cfg.buffer_size // spec.num_envs,
        action_shape=(parts.low.size,),
        action_dtype=jnp.float32,
    )
    log_alpha = jnp.log(jnp.float32(getattr(cfg, "ent_coef", 1.0)))
    return ContinuousState(
        actor=actor,
        critic=critic,
        target_actor=() if parts.family.stochastic else actor,
        target_critic=critic,
        actor_opt=parts.actor_optimizer.init(actor),
        critic_opt=parts.critic_optimizer.init(critic),
        log_alpha=log_alpha if parts.family.stochastic else jnp.float32(0.0),
        alpha_opt=parts.alpha_optimizer.init(log_alpha),
        buffer=buffer,
        env_steps=jnp.int32(0),
        gradient_steps=jnp.int32(0),
    )


def health(state: ContinuousState) -> Health:
    """The networks' parameters and the temperature; updates skipped by the optimizers
    (`guard.clip_or_skip`). The streak adds the optimizers' streaks, as the skipped count
    adds their counts, so that a diverged run stops after as many iterations as any other's
    (`fleetrl.loop`)."""
    opts = (state.actor_opt, state.critic_opt, state.alpha_opt)
    params = {"actor": state.actor, "critic": state.critic, "log_alpha": state.log_alpha}
    return Health(params, sum(o.skipped for o in opts), sum(o.streak for o in opts))


def actor_params(parts: Parts, state: ContinuousState) -> dict[str, Any]:
    """The actor's parameters, and whether to act uniformly at random (before
    ``learning_starts``)."""
    return {"actor": state.actor, "random": state.env_steps < parts.cfg.learning_starts}


def policy(parts: Parts, params, obs: Array, key: Array, explore: bool) -> Array:
    """``[B, A]`` actions in ``[-1, 1]``: SAC samples its squashed Gaussian (its mode without
    ``explore``); DDPG and TD3 add clipped Gaussian noise to mu(s) (none without ``explore``)."""
    if parts.family.stochastic:
        mean, log_std = parts.actor.apply(params, obs)
        if not explore:
            return D.squashed_normal_mode(mean)
        return D.squashed_normal_sample(mean, log_std, key)[0]
    action = parts.actor.apply(params, obs)
    if not explore or parts.family.exploration_noise == 0:
        return action
    noise = parts.family.exploration_noise * jax.random.normal(key, action.shape)
    return jnp.clip(action + noise, -1.0, 1.0)


def to_env(parts: Parts, action: Array) -> Array:
    """``[B, A]`` in ``[-1, 1]`` onto the env's bounds, shaped ``[B, *action_shape]``."""
    scaled = parts.low + (action + 1.0) * 0.5 * (parts.high - parts.low)
    return scaled.reshape((action.shape[0],) + parts.spec.action_shape)


def from_env(parts: Parts, action: Array) -> Array:
    """`to_env`'s inverse on ``[..., *action_shape]`` actions: ``[..., A]`` in ``[-1, 1]``."""
    flat = action.reshape(action.shape[: action.ndim - len(parts.spec.action_shape)] + (-1,))
    unit = 2.0 * (flat - parts.low) / (parts.high - parts.low) - 1.0
    return jnp.clip(unit, -1.0, 1.0)


def act(parts: Parts, ap, actor_state, obs: Array, key: Array, explore: bool = True, mask=None):
    """The policy's action on the env's scale; uniform in the bounds while ``ap["random"]``
    (exploring only). Continuous actions have no mask."""
    policy_key, random_key = jax.random.split(key)
    action = policy(parts, ap["actor"], obs, policy_key, explore)
    if explore:
        uniform = jax.random.uniform(random_key, action.shape, minval=-1.0, maxval=1.0)
        action = jnp.where(ap["random"], uniform, action)
    return to_env(parts, action), actor_state, {}


class Learner(NamedTuple):
    """What the gradient steps carry: the state's fields but the buffer (closed over, so the
    scan never copies it) and the env step count."""

    actor: Any
    critic: Any
    target_actor: Any
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    log_alpha: Array
    alpha_opt: Any
    gradient_steps: Array

    @classmethod
    def of(cls, state: ContinuousState) -> Learner:
        return cls(**{name: getattr(state, name) for name in cls._fields})


def next_action(parts: Parts, learner: Learner, next_obs: Array, key: Array):
    """The bootstrap action ``[B, A]`` and its log-probability ``[B]`` (0 but for SAC): SAC
    samples its current actor; TD3 smooths the target actor's; DDPG takes the target actor's."""
    if parts.family.stochastic:
        mean, log_std = parts.actor.apply(learner.actor, next_obs)
        return D.squashed_normal_sample(mean, log_std, key)
    action = parts.actor.apply(learner.target_actor, next_obs)
    fam = parts.family
    smoothed = losses.smoothed_target_action(
        action, key, fam.target_policy_noise, fam.target_noise_clip
    )
    return smoothed, jnp.zeros(next_obs.shape[0], jnp.float32)


def critic_loss_fn(parts: Parts, critic, learner: Learner, window: replay.Window, key: Array):
    action, log_prob = next_action(parts, learner, window.next_obs, key)
    next_q = parts.critic.apply(learner.target_critic, window.next_obs, action)
    partial_return, discount = n_step_bootstrap(
        window.reward, window.terminated, window.truncated, parts.cfg.gamma
    )
    alpha = jnp.exp(learner.log_alpha) if parts.family.stochastic else 0.0
    target = losses.soft_min_target(next_q, log_prob, alpha, partial_return, discount)
    q = parts.critic.apply(critic, window.obs, window.action)
    loss = losses.critic_loss(q, target, window.valid)
    return loss, losses.masked_mean(q[0], window.valid)


def actor_loss_fn(parts: Parts, actor, critic, alpha: Array, obs: Array, valid, key: Array):
    """The member's actor loss with the critics fixed; aux: ``log pi [B]`` (SAC; else 0)."""
    if parts.family.stochastic:
        mean, log_std = parts.actor.apply(actor, obs)
        action, log_prob = D.squashed_normal_sample(mean, log_std, key)
        q = parts.critic.apply(critic, obs, action)
        return losses.sac_actor_loss(q, log_prob, alpha, valid), log_prob
    # the first critic alone (TD3's paper): slicing its parameters out of the ensemble spares
    # the other critics' forward and backward passes, whose gradient would be 0
    first = jax.tree.map(lambda p: p[:1], critic)
    q = parts.critic.clone(n=1).apply(first, obs, parts.actor.apply(actor, obs))
    return losses.deterministic_actor_loss(q[0], valid), jnp.zeros(obs.shape[0])


def critic_step(parts: Parts, buffer, learner: Learner, key: Array):
    """One Adam step of the critics on a sampled batch; returns the batch for the actor."""
    cfg = parts.cfg
    sample_key, loss_key = jax.random.split(key)
    rows, envs = replay.sample_uniform(buffer, sample_key, cfg.batch_size, cfg.n_step)
    window = replay.read_windows(buffer, rows, envs, cfg.n_step)
    grad_fn = jax.value_and_grad(functools.partial(critic_loss_fn, parts), has_aux=True)
    (loss, q_mean), grads = grad_fn(learner.critic, learner, window, loss_key)
    updates, critic_opt = parts.critic_optimizer.update(grads, learner.critic_opt, learner.critic)
    critic = optax.apply_updates(learner.critic, updates)
    metrics = {"losses/critic_loss": loss, "losses/q_values": q_mean}
    metrics["train/lost_windows"] = jnp.sum(~window.valid).astype(jnp.float32)
    steps = learner.gradient_steps + 1
    return learner._replace(critic=critic, critic_opt=critic_opt, gradient_steps=steps), (
        window,
        metrics,
    )


def actor_step(parts: Parts, learner: Learner, window: replay.Window, key: Array):
    """One Adam step of the actor on ``window``'s observations (the critics just updated),
    SAC's temperature step, then the Polyak update of the targets."""
    cfg, fam = parts.cfg, parts.family
    alpha = jnp.exp(learner.log_alpha)
    grad_fn = jax.value_and_grad(functools.partial(actor_loss_fn, parts), has_aux=True)
    (loss, log_prob), grads = grad_fn(
        learner.actor, learner.critic, alpha, window.obs, window.valid, key
    )
    updates, actor_opt = parts.actor_optimizer.update(grads, learner.actor_opt, learner.actor)
    actor = optax.apply_updates(learner.actor, updates)
    learner = learner._replace(actor=actor, actor_opt=actor_opt)
    metrics = {"losses/actor_loss": loss}
    if fam.stochastic:
        metrics["train/entropy"] = -losses.masked_mean(log_prob, window.valid)
    if fam.stochastic and cfg.autotune:
        temperature = functools.partial(
            losses.temperature_loss,
            log_prob=log_prob,
            target_entropy=parts.target_entropy,
            valid=window.valid,
        )
        alpha_loss, grad = jax.value_and_grad(temperature)(learner.log_alpha)
        update, alpha_opt = parts.alpha_optimizer.update(grad, learner.alpha_opt)
        learner = learner._replace(log_alpha=learner.log_alpha + update, alpha_opt=alpha_opt)
        metrics["losses/alpha_loss"] = alpha_loss
    target_actor = learner.target_actor
    if not fam.stochastic:
        target_actor = losses.polyak(learner.actor, target_actor, cfg.tau)
    target_critic = losses.polyak(learner.critic, learner.target_critic, cfg.tau)
    return learner._replace(target_actor=target_actor, target_critic=target_critic), metrics


def block(parts: Parts, buffer, learner: Learner, key: Array):
    """``policy_delay`` critic steps (unrolled: 1 or 2 in every member), then the actor step
    on the last one's batch: Stable-Baselines3's TD3 updates the actor after every
    ``policy_delay``-th critic update."""
    keys = jax.random.split(key, parts.family.policy_delay + 1)
    critic_metrics = []
    for k in keys[:-1]:
        learner, (window, metrics) = critic_step(parts, buffer, learner, k)
        critic_metrics.append(metrics)
    learner, metrics = actor_step(parts, learner, window, keys[-1])
    metrics.update(jax.tree.map(lambda *x: jnp.mean(jnp.stack(x)), *critic_metrics))
    return learner, metrics


def insert(parts: Parts, state: ContinuousState, rollout: Rollout) -> ContinuousState:
    buffer = replay.add(
        state.buffer,
        rollout.obs,
        rollout.next_obs,
        from_env(parts, rollout.action),
        rollout.reward,
        rollout.terminated,
        rollout.truncated,
    )
    return state.replace(buffer=buffer, env_steps=state.env_steps + rollout.reward.size)


def learn(
    parts: Parts, state: ContinuousState, rollout: Rollout, key: Array
) -> tuple[ContinuousState, Metrics]:
    """Insert the ``[T, N]`` rollout, then ``utd x T x N`` gradient steps once
    ``learning_starts`` env steps are stored."""
    cfg = parts.cfg
    state = insert(parts, state, rollout)
    blocks = parts.gradient_steps // parts.family.policy_delay

    def train(learner):
        step = lambda carry, k: block(parts, state.buffer, carry, k)
        learner, metrics = jax.lax.scan(step, learner, jax.random.split(key, blocks))
        return learner, jax.tree.map(jnp.mean, metrics)

    learner = Learner.of(state)
    skip = lambda learner: (learner, {name: jnp.float32(0.0) for name in metric_names(parts)})
    warm = (state.env_steps >= cfg.learning_starts) & (
        replay.num_valid(state.buffer, cfg.n_step) > 0
    )
    # a real branch while every seed warms up, not a select running both (`fleetrl.seeds`)
    learner, metrics = seeds.cond(warm, train, skip, learner)
    state = state.replace(**learner._asdict())
    metrics["train/replay_size"] = state.buffer.size * parts.spec.num_envs
    if parts.family.stochastic:
        metrics["train/alpha"] = jnp.exp(state.log_alpha)
    return state, metrics


def metric_names(parts: Parts) -> list[str]:
    """What the gradient steps of ``parts``' member report (zeros before learning starts)."""
    names = ["losses/critic_loss", "losses/q_values", "train/lost_windows", "losses/actor_loss"]
    if parts.family.stochastic:
        names.append("train/entropy")
    if parts.family.stochastic and parts.cfg.autotune:
        names.append("losses/alpha_loss")
    return names
