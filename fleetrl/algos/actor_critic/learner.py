"""The actor-critic family's learner: REINFORCE, A2C, PPO and IMPALA as one set of pure functions.

`make(run, spec)` builds the `Algorithm`; the members differ only by the flags of
`config.Family`: the advantage estimator (GAE, V-trace, or Monte-Carlo returns of whole
episodes; `targets`), the policy objective (clipped surrogate, KL penalty, plain policy
gradient) and the number of epochs and minibatches. A recurrent core (`networks`) learns whole
sequences.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fleetrl.algos import guard
from fleetrl.algos.actor_critic import losses, networks, targets
from fleetrl.algos.actor_critic.config import Family
from fleetrl.algos.guard import clip_or_skip
from fleetrl.config import ConfigError
from fleetrl.normalize import RunningStats
from fleetrl.returns import monte_carlo_returns
from fleetrl.types import Algorithm, Array, EnvSpec, Health, Metrics, Rollout


@struct.dataclass
class ActorCriticState:
    params: dict[str, Any]
    """{"actor": ..., "critic": ...}: separate networks, one optimizer; with
    ``algo.shared_torso`` also "torso"; with a core "encoder" and "core" (actor and critic are
    then only the output layers)."""
    opt_state: Any
    obs_stats: RunningStats
    return_stats: RunningStats
    discounted_return: Array
    """[N] running discounted return per env, for reward scaling."""
    kl_penalty: Array
    """Adaptive KL penalty coefficient (objective=kl_penalty)."""
    iteration: Array
    pending: Any = ()
    """REINFORCE: the last rollout's steps (``steps``) and which of them still wait for their
    episode to end (``open``, ``[T, N]``); ``()`` for the others."""


PPOState = ActorCriticState  # the name checkpoints and older code know


class Parts(NamedTuple):
    """What `make` builds once and the pure functions below close over."""

    cfg: Any
    family: Family
    spec: EnvSpec
    net: networks.Network
    dist: networks.Distribution
    optimizer: Any
    learning_rate: Any
    num_steps: int
    unroll: bool


def make(run, spec: EnvSpec) -> Algorithm:
    """Build the `Algorithm` of ``run.algo`` (a PPO, A2C, IMPALA or REINFORCE config) for
    ``spec``."""
    parts = build_parts(run, spec)
    return Algorithm(
        init=functools.partial(init, parts),
        actor_params=functools.partial(actor_params, parts),
        init_actor=lambda key, num_envs: parts.net.initial_core(num_envs),
        act=functools.partial(act, parts),
        learn=functools.partial(learn, parts),
        health=health,
    )


def build_parts(run, spec: EnvSpec) -> Parts:
    """What `make`'s functions close over, checked against ``spec``."""
    cfg, family = run.algo, Family.of(run.algo)
    if family.estimator == "monte_carlo" and run.train.num_steps < spec.max_episode_steps:
        raise ConfigError(
            f"train.num_steps: REINFORCE learns from whole episodes, so a rollout must be at "
            f"least as long as one ({spec.env_id} ends episodes at {spec.max_episode_steps} "
            f"steps); got {run.train.num_steps}"
        )
    optimizer, learning_rate = make_optimizer(cfg, family, run.num_iterations)
    # XLA:CPU (jaxlib 0.10.2) runs a convolution's backward pass 6-30x slower inside a while
    # loop than outside one: the filter-gradient convolution keeps a layout its fast (Eigen)
    # path does not take (measured: 8x8/4 conv, 32 frames, 12.5 ms outside, 425 ms inside).
    # So with a CNN on CPU the epoch and minibatch loops are unrolled: longer to compile, and
    # the CNN update ~10x faster. The driver keeps one iteration per call for such presets.
    unroll = cfg.network == "nature_cnn" and jax.default_backend() == "cpu"
    net = networks.build(cfg, spec)
    dist = networks.distribution(spec)
    return Parts(
        cfg, family, spec, net, dist, optimizer, learning_rate, run.train.num_steps, unroll
    )


def make_optimizer(cfg, family: Family, num_iterations: int):
    """``(optimizer, learning_rate schedule)``: Adam or RMSProp after `clip_or_skip`."""
    steps = num_iterations * family.num_epochs * family.num_minibatches
    if cfg.anneal_lr:
        learning_rate = optax.linear_schedule(cfg.learning_rate, 0.0, steps)
    else:
        learning_rate = optax.constant_schedule(cfg.learning_rate)
    if cfg.optimizer == "adam":
        inner = optax.adam(learning_rate, eps=cfg.optimizer_eps)
    else:  # as torch's RMSprop (SB3's A2C): epsilon outside the square root
        inner = optax.rmsprop(
            learning_rate, decay=cfg.rmsprop_decay, eps=cfg.optimizer_eps, eps_in_sqrt=False
        )
    # Adam on one flat vector instead of per-layer leaves: the minibatch step compiled to 94
    # XLA:CPU kernels instead of 148 (CartPole MLPs), and each kernel launch costs more than
    # its arithmetic at these sizes.
    # A NaN or Inf gradient skips its update instead of poisoning the parameters (guard.py).
    return optax.flatten(clip_or_skip(inner, cfg.max_grad_norm)), learning_rate


def init(parts: Parts, key: Array) -> ActorCriticState:
    spec, cfg = parts.spec, parts.cfg
    params = parts.net.init(key)
    return ActorCriticState(
        params=params,
        opt_state=parts.optimizer.init(params),
        obs_stats=RunningStats.create(spec.observation_shape),
        return_stats=RunningStats.create(()),
        discounted_return=jnp.zeros((spec.num_envs,), jnp.float32),
        kl_penalty=jnp.float32(getattr(cfg, "kl_init_penalty", 1.0)),
        iteration=jnp.int32(0),
        pending=_empty_pending(parts) if parts.family.estimator == "monte_carlo" else (),
    )


def health(state: ActorCriticState) -> Health:
    return guard.health(state.params, state.opt_state)


def observe(parts: Parts, obs_stats: RunningStats | None, obs: Array) -> Array:
    if parts.cfg.normalize_observations:
        return obs_stats.normalize(obs, parts.cfg.obs_clip)
    return obs


def actor_params(parts: Parts, state: ActorCriticState) -> dict[str, Any]:
    """The parameters and, with observation normalization, its statistics."""
    stats = state.obs_stats if parts.cfg.normalize_observations else None
    return {"params": state.params, "obs_stats": stats}


def act(parts: Parts, ap, core, obs: Array, key: Array, explore: bool = True, mask=None):
    """Sample (``explore``) or take the mode of the (masked) policy; extras: ``log_prob``."""
    out, core = parts.net.act(ap["params"], core, observe(parts, ap["obs_stats"], obs))
    out = parts.dist.mask(out, mask)
    if not explore:
        return parts.dist.mode(out), core, {}
    action = parts.dist.sample(out, key)
    return action, core, {"log_prob": parts.dist.log_prob(out, action)}


def scale_rewards(parts: Parts, state: ActorCriticState, rollout: Rollout):
    """Scale rewards by the running std of the discounted return (as SB3's VecNormalize)."""
    cfg = parts.cfg
    if not cfg.normalize_rewards:
        return rollout.reward, state.return_stats, state.discounted_return

    def accumulate(ret, xs):
        reward, done = xs
        ret = ret * cfg.gamma + reward
        return jnp.where(done, 0.0, ret), ret

    discounted, returns = jax.lax.scan(
        accumulate, state.discounted_return, (rollout.reward, rollout.done)
    )
    stats = state.return_stats.update(returns)
    return stats.scale(rollout.reward, cfg.reward_clip), stats, discounted


def learn(parts: Parts, state: ActorCriticState, rollout: Rollout, key: Array):
    """Advantages (GAE, V-trace or Monte-Carlo, truncation bootstrapped), then epochs x
    minibatches of updates on them."""
    reward, return_stats, discounted = scale_rewards(parts, state, rollout)
    pending = state.pending
    if parts.family.estimator == "monte_carlo":
        batch, pending, metrics = monte_carlo_batch(parts, state, rollout, reward)
    elif parts.net.recurrent:
        batch, metrics = sequence_batch(parts, state, rollout, reward)
    else:
        batch, metrics = flat_batch(parts, state, rollout, reward)
    if parts.family.objective == "kl_penalty":
        old_out = evaluate_batch(parts, state.params, batch, value=False)[0]
        batch["old_out"] = _like_batch(parts, old_out, reward.shape)
    params, opt_state, update_metrics = update(parts, state, batch, key)
    if parts.family.estimator == "monte_carlo":  # no episode ended: Adam's momentum must not move
        learned = jnp.sum(batch["weights"]) > 0
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(learned, new, old),
            (params, opt_state),
            (state.params, state.opt_state),
        )
    metrics |= update_metrics
    penalty = state.kl_penalty
    if parts.family.objective == "kl_penalty":
        penalty = losses.adapt_kl_penalty(penalty, metrics["train/kl"], parts.cfg.kl_target)
        metrics["train/kl_penalty"] = penalty
    steps_per_update = parts.family.num_epochs * parts.family.num_minibatches
    metrics["train/learning_rate"] = parts.learning_rate(state.iteration * steps_per_update)
    obs_stats = state.obs_stats
    if parts.cfg.normalize_observations:
        obs_stats = obs_stats.update(rollout.obs)
    new_state = ActorCriticState(
        params,
        opt_state,
        obs_stats,
        return_stats,
        discounted,
        penalty,
        state.iteration + 1,
        pending,
    )
    return new_state, metrics


def _with_mask(batch: dict, mask: Array | None, flat) -> dict:
    if mask is not None:
        batch["mask"] = flat(mask)
    return batch


def flat_batch(parts: Parts, state: ActorCriticState, rollout: Rollout, reward: Array):
    """A feed-forward learner's batch: every step a sample (``[T * N, ...]``), advantages from
    one critic pass over ``obs`` and ``next_obs`` (and, for V-trace, one actor pass over
    ``obs``). Returns ``(batch, metrics)``."""
    num_steps, num_envs = reward.shape
    size = num_steps * num_envs
    flat = lambda x: x.reshape((size,) + x.shape[2:])
    obs = observe(parts, state.obs_stats, rollout.obs)
    next_obs = observe(parts, state.obs_stats, rollout.next_obs)
    both = jnp.concatenate([obs, next_obs]).reshape((2 * size,) + parts.spec.observation_shape)
    values = parts.net.value(state.params, both).reshape(2, num_steps, num_envs)
    target_log_prob = None
    if parts.family.estimator == "vtrace":
        out = parts.net.act(state.params, (), flat(obs))[0]
        target_log_prob = _log_prob(parts, out, rollout, flat).reshape(num_steps, num_envs)
    fields, metrics = targets.estimate(
        parts.cfg, parts.family, rollout, reward, values[0], values[1], target_log_prob
    )
    batch = {"obs": flat(obs), "action": flat(rollout.action)}
    batch |= {name: flat(x) for name, x in fields.items()}
    return _with_mask(batch, rollout.action_mask, flat), metrics


def _log_prob(parts: Parts, out, rollout: Rollout, flat) -> Array:
    """log pi(action) of the rollout's actions under the actor output ``out`` (masked as the
    actor masked it); ``flat`` lays a rollout field out as ``out`` is."""
    mask = None if rollout.action_mask is None else flat(rollout.action_mask)
    return parts.dist.log_prob(parts.dist.mask(out, mask), flat(rollout.action))


def sequence_batch(parts: Parts, state: ActorCriticState, rollout: Rollout, reward: Array):
    """A recurrent learner's batch: whole sequences ``[T, N, ...]`` with the core state they
    started from (``core``, ``[N, ...]``) and where episodes began (``resets``). Returns
    ``(batch, metrics)``."""
    obs = observe(parts, state.obs_stats, rollout.obs)
    next_obs = observe(parts, state.obs_stats, rollout.next_obs)
    resets = jnp.concatenate([jnp.zeros_like(rollout.done[:1]), rollout.done[:-1]])
    out, values, cores = networks.unroll(parts.net, state.params, rollout.actor_state, obs, resets)
    # V(next_obs[t]) from the state after step t: one more core step, batched over all t
    num_steps, num_envs = reward.shape
    merge = lambda x: x.reshape((num_steps * num_envs,) + x.shape[2:])
    _, next_values, _ = parts.net.both(state.params, jax.tree.map(merge, cores), merge(next_obs))
    target_log_prob = None
    if parts.family.estimator == "vtrace":
        target_log_prob = _log_prob(parts, out, rollout, lambda x: x)
    fields, metrics = targets.estimate(
        parts.cfg,
        parts.family,
        rollout,
        reward,
        values,
        next_values.reshape(num_steps, num_envs),
        target_log_prob,
    )
    batch = {
        "obs": obs,
        "action": rollout.action,
        **fields,
        "resets": resets,
        "core": rollout.actor_state,
    }
    if parts.cfg.burn_in:
        warm = (jnp.arange(num_steps) >= parts.cfg.burn_in).astype(jnp.float32)
        batch["weights"] = jnp.broadcast_to(warm[:, None], reward.shape)
    return _with_mask(batch, rollout.action_mask, lambda x: x), metrics


def _pending_steps(rollout: Rollout, reward: Array) -> dict:
    steps = {
        "obs": rollout.obs,
        "next_obs": rollout.next_obs,
        "action": rollout.action,
        "reward": reward,
        "terminated": rollout.terminated,
        "truncated": rollout.truncated,
        "log_prob": rollout.extras["log_prob"],
    }
    if rollout.action_mask is not None:
        steps["mask"] = rollout.action_mask
    return steps


def _empty_pending(parts: Parts) -> dict:
    spec, shape = parts.spec, (parts.num_steps, parts.spec.num_envs)
    obs = jnp.zeros(shape + spec.observation_shape, spec.observation_dtype)
    if spec.action_kind == "discrete":
        action = jnp.zeros(shape, jnp.int32)
    else:
        action = jnp.zeros(shape + spec.action_shape, jnp.float32)
    false, zeros = jnp.zeros(shape, bool), jnp.zeros(shape, jnp.float32)
    steps = {
        "obs": obs,
        "next_obs": obs,
        "action": action,
        "reward": zeros,
        "terminated": false,
        "truncated": false,
        "log_prob": zeros,
    }
    if spec.action_mask:
        steps["mask"] = jnp.ones(shape + (spec.num_actions,), bool)
    return {"steps": steps, "open": false}


def monte_carlo_batch(parts: Parts, state: ActorCriticState, rollout: Rollout, reward: Array):
    """REINFORCE's batch: the steps of the last two rollouts whose episode has ended and that
    were not learned yet, with their Monte-Carlo returns (minus the baseline's values).

    Returns ``(batch, pending, metrics)``; ``pending`` keeps this rollout's steps for the next
    call. A step still open after two rollouts (an episode longer than a rollout, which `make`
    refuses where the env states its time limit) is dropped and counted.
    """
    steps = _pending_steps(rollout, reward)
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), state.pending["steps"], steps)
    length, num_envs = both["reward"].shape
    size = length * num_envs
    flat = lambda x: x.reshape((size,) + x.shape[2:])
    obs = observe(parts, state.obs_stats, both["obs"])
    next_obs = observe(parts, state.obs_stats, both["next_obs"])
    if parts.family.baseline:
        values = parts.net.value(state.params, jnp.concatenate([flat(obs), flat(next_obs)]))
        value, next_value = values.reshape(2, length, num_envs)
    else:  # plain returns: no baseline, no bootstrap at a time limit
        value = next_value = jnp.zeros((length, num_envs), jnp.float32)
    returns, complete = monte_carlo_returns(
        both["reward"], both["terminated"], both["truncated"], next_value, parts.cfg.gamma
    )
    num_steps = parts.num_steps
    learnable = jnp.concatenate([state.pending["open"], jnp.ones_like(complete[num_steps:])])
    learnable = learnable & complete
    batch = {
        "obs": flat(obs),
        "action": flat(both["action"]),
        "log_prob": flat(both["log_prob"]),
        "advantages": flat(returns - value),
        "returns": flat(returns),
        "weights": flat(learnable.astype(jnp.float32)),
    }
    _with_mask(batch, both.get("mask"), flat)
    pending = {"steps": steps, "open": ~complete[num_steps:]}
    metrics = {
        "train/learned_steps": jnp.sum(learnable),
        "train/dropped_steps": jnp.sum(state.pending["open"] & ~complete[:num_steps]),
    }
    return batch, pending, metrics


def evaluate_batch(parts: Parts, params, batch: dict, value: bool = True) -> tuple[Any, Array]:
    """``(actor output, value)`` of every sample of ``batch``, flat (``[B]``), masked; with
    ``value=False`` a feed-forward network skips its critic (the value is then None)."""
    if not parts.net.recurrent and not value:
        out, value = parts.net.act(params, (), batch["obs"])[0], None
    elif parts.net.recurrent:
        out, value, _ = networks.unroll(
            parts.net, params, batch["core"], batch["obs"], batch["resets"]
        )
        merge = lambda x: x.reshape((-1,) + x.shape[2:])
        out, value = jax.tree.map(merge, out), merge(value)
    else:
        out, value, _ = parts.net.both(params, (), batch["obs"])
    return parts.dist.mask(out, _flat(parts, batch.get("mask"))), value


def _flat(parts: Parts, x):
    """A batch field as ``[B, ...]`` samples (recurrent batches are ``[T, N, ...]``)."""
    if x is None or not parts.net.recurrent:
        return x
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), x)


def _like_batch(parts: Parts, x, shape: tuple[int, int]):
    """Flat samples ``[T * N, ...]`` back in a recurrent batch's ``[T, N, ...]`` layout."""
    if not parts.net.recurrent:
        return x
    return jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), x)


def loss_fn(parts: Parts, params, batch: dict, penalty: Array) -> tuple[Array, Metrics]:
    cfg, family, dist = parts.cfg, parts.family, parts.dist
    out, value = evaluate_batch(parts, params, batch)
    field = lambda name: _flat(parts, batch.get(name))
    weights, advantages = field("weights"), field("advantages")
    new_log_prob = dist.log_prob(out, field("action"))
    if cfg.normalize_advantages:
        advantages = losses.standardize(advantages, weights)
    if family.objective == "clip":
        policy_loss, _ = losses.clipped_surrogate(
            new_log_prob, field("log_prob"), advantages, cfg.clip_eps, weights
        )
    elif family.objective == "kl_penalty":
        kl = dist.kl(field("old_out"), out)
        cutoff = cfg.kl_cutoff_factor * cfg.kl_target
        policy_loss, _ = losses.kl_penalized_surrogate(
            new_log_prob,
            field("log_prob"),
            advantages,
            kl,
            penalty,
            cutoff,
            cfg.kl_cutoff_coef,
            weights,
        )
    else:
        policy_loss = losses.policy_gradient(new_log_prob, advantages, weights)
    value_loss = losses.value_loss(value, field("returns"), weights)
    entropy = losses.mean(dist.entropy(out), weights)
    total = policy_loss - cfg.ent_coef * entropy
    if family.baseline:
        total = total + cfg.vf_coef * value_loss
    # Only the loss terms per minibatch: diagnostics (KL, clip fraction) are measured once
    # per update on the whole batch in `diagnose`; each extra op in this loop body costs
    # dispatch time 16 times per iteration on CPU.
    metrics = {
        "losses/policy_loss": policy_loss,
        "losses/value_loss": value_loss,
        "losses/entropy": entropy,
    }
    return total, metrics


def diagnose(parts: Parts, params, batch: dict) -> Metrics:
    """How far the whole update moved the policy, on the whole batch."""
    out, _ = evaluate_batch(parts, params, batch, value=False)
    weights = _flat(parts, batch.get("weights"))
    log_ratio = parts.dist.log_prob(out, _flat(parts, batch["action"])) - _flat(
        parts, batch["log_prob"]
    )
    ratio = jnp.exp(log_ratio)
    # k3 estimator of KL(old || new) (Schulman, "Approximating KL divergence", 2020)
    metrics = {"losses/approx_kl": losses.mean(ratio - 1.0 - log_ratio, weights)}
    if parts.family.objective != "pg":
        clip_eps = parts.cfg.clip_eps
        metrics["losses/clip_fraction"] = losses.mean(jnp.abs(ratio - 1.0) > clip_eps, weights)
    if parts.family.objective == "kl_penalty":
        old_out = _flat(parts, batch["old_out"])
        metrics["train/kl"] = losses.mean(parts.dist.kl(old_out, out), weights)
    return metrics


def minibatches(parts: Parts, batch: dict, key: Array) -> dict:
    """``batch`` split into ``num_minibatches`` along its samples (feed-forward) or its envs
    (recurrent: sequences stay whole), in a random order; a leading minibatch axis."""
    count = parts.family.num_minibatches
    axis = 1 if parts.net.recurrent else 0  # the core state's env axis is 0

    def split(name, x, order):
        x_axis = 0 if name == "core" else axis
        if order is not None:
            x = x[order] if x_axis == 0 else x[:, order]
        shape = x.shape[:x_axis] + (count, -1) + x.shape[x_axis + 1 :]
        return jnp.moveaxis(x.reshape(shape), x_axis, 0)

    size = jax.tree.leaves(batch["obs"])[0].shape[axis]
    # One minibatch is the whole batch: its order changes nothing but the float summation
    # order, and the shuffle (a sort and a gather per field) cost more than the Adam step
    # itself on 256 samples.
    order = None if count == 1 else jax.random.permutation(key, size)
    return {
        name: jax.tree.map(lambda x, name=name: split(name, x, order), value)
        for name, value in batch.items()
    }


def update(parts: Parts, state: ActorCriticState, batch: dict, key: Array):
    """``num_epochs`` passes of ``num_minibatches`` optimizer steps; ``(params, opt_state,
    metrics)`` with the loss terms averaged and the diagnostics of the whole update."""

    def minibatch_step(carry, minibatch):
        params, opt_state = carry
        grad_fn = jax.grad(functools.partial(loss_fn, parts), has_aux=True)
        grads, metrics = grad_fn(params, minibatch, state.kl_penalty)
        updates, opt_state = parts.optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, epoch_key):
        split = minibatches(parts, batch, epoch_key)
        return jax.lax.scan(minibatch_step, carry, split, unroll=parts.unroll)

    start = (state.params, state.opt_state)
    if parts.family.num_epochs == parts.family.num_minibatches == 1:
        # one step on the whole batch (A2C, REINFORCE): no one-trip loops in the program
        (params, opt_state), metrics = minibatch_step(start, batch)
    else:
        (params, opt_state), metrics = jax.lax.scan(
            epoch, start, jax.random.split(key, parts.family.num_epochs), unroll=parts.unroll
        )
    metrics = {**jax.tree.map(jnp.mean, metrics), **diagnose(parts, params, batch)}
    return params, opt_state, metrics
