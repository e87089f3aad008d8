"""PPO state, policy and learning step: pure functions built by ``make(run, spec)``."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fleetrl import distributions as D
from fleetrl.algos.guard import clip_or_skip, skip_metrics
from fleetrl.algos.ppo import losses
from fleetrl.config import ConfigError
from fleetrl.nets import MLP, GaussianHead, Torso
from fleetrl.normalize import RunningStats
from fleetrl.returns import gae
from fleetrl.types import Algorithm, Array, EnvSpec, Metrics, Rollout


@struct.dataclass
class PPOState:
    params: dict[str, Any]
    """{"actor": ..., "critic": ...}: separate networks, one optimizer; with
    ``algo.shared_torso`` also "torso", and actor/critic are only the output layers."""
    opt_state: Any
    obs_stats: RunningStats
    return_stats: RunningStats
    discounted_return: Array
    """[N] running discounted return per env, for reward scaling."""
    kl_penalty: Array
    """Adaptive KL penalty coefficient (objective=kl_penalty)."""
    iteration: Array


def _distribution(spec: EnvSpec):
    """(sample, mode, log_prob, entropy, kl) over the actor's output for this action space."""
    if spec.action_kind == "discrete":
        return (
            D.categorical_sample,
            lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32),
            D.categorical_log_prob,
            D.categorical_entropy,
            D.categorical_kl,
        )
    shape = spec.action_shape

    def sample(out, key):
        mean, log_std = out
        return D.normal_sample(mean, log_std, key).reshape(mean.shape[:-1] + shape)

    return (
        sample,
        lambda out: out[0].reshape(out[0].shape[:-1] + shape),
        lambda out, action: D.normal_log_prob(*out, action.reshape(out[0].shape)),
        lambda out: D.normal_entropy(out[1]),
        lambda p, q: D.normal_kl(p[0], p[1], q[0], q[1]),
    )


def make(run, spec: EnvSpec) -> Algorithm:
    """Build PPO's ``init``, ``policy`` and ``learn`` for ``run`` (a RunConfig) and ``spec``."""
    cfg = run.algo
    if cfg.network == "nature_cnn" and len(spec.observation_shape) != 3:
        raise ConfigError(
            "algo.network: nature_cnn needs stacked image observations [C, H, W], got shape "
            f"{spec.observation_shape} from {spec.env_id} (set env.preprocess: atari)"
        )
    # With a shared torso, the actor and critic below are output layers on its features.
    torso = Torso(cfg.hidden_sizes, cfg.activation, cfg.network) if cfg.shared_torso else None
    hidden, network = ((), "mlp") if cfg.shared_torso else (cfg.hidden_sizes, cfg.network)
    if spec.action_kind == "discrete":
        actor = MLP(hidden, spec.num_actions, cfg.activation, 0.01, network)
    else:
        size = math.prod(spec.action_shape)
        actor = GaussianHead(hidden, size, cfg.activation, cfg.init_log_std, network)
    critic = MLP(hidden, 1, cfg.activation, 1.0, network)

    def features(params, obs: Array) -> Array:
        return obs if torso is None else torso.apply(params["torso"], obs)

    def apply_actor(params, obs: Array):
        return actor.apply(params["actor"], features(params, obs))

    def apply_critic(params, obs: Array) -> Array:
        return critic.apply(params["critic"], features(params, obs))[:, 0]

    def apply_both(params, obs: Array):
        """(actor output, value): one torso pass when it is shared."""
        x = features(params, obs)
        return actor.apply(params["actor"], x), critic.apply(params["critic"], x)[:, 0]

    sample, mode, log_prob, entropy, kl_divergence = _distribution(spec)
    updates_per_iteration = cfg.num_epochs * cfg.num_minibatches
    if cfg.anneal_lr:
        learning_rate = optax.linear_schedule(
            cfg.learning_rate, 0.0, run.num_iterations * updates_per_iteration
        )
    else:
        learning_rate = optax.constant_schedule(cfg.learning_rate)
    # Adam on one flat vector instead of per-layer leaves: the minibatch step compiled to 94
    # XLA:CPU kernels instead of 148 (CartPole MLPs), and each kernel launch costs more than
    # its arithmetic at these sizes.
    # A NaN or Inf gradient skips its update instead of poisoning the parameters (guard.py).
    optimizer = optax.flatten(clip_or_skip(optax.adam(learning_rate, eps=1e-5), cfg.max_grad_norm))

    def observe(state: PPOState, obs: Array) -> Array:
        if cfg.normalize_observations:
            return state.obs_stats.normalize(obs, cfg.obs_clip)
        return obs

    image = cfg.network == "nature_cnn"
    # XLA:CPU (jaxlib 0.10.2) runs a convolution's backward pass 6-30x slower inside a while
    # loop than outside one: the filter-gradient convolution keeps a layout its fast (Eigen)
    # path does not take (measured: 8x8/4 conv, 32 frames, 12.5 ms outside, 425 ms inside).
    # So with a CNN on CPU the epoch and minibatch loops are unrolled: longer to compile, and
    # the CNN update ~10x faster. The driver keeps one iteration per call for such presets.
    unroll = image and jax.default_backend() == "cpu"

    def init(key: Array) -> PPOState:
        actor_key, critic_key = jax.random.split(key)
        dummy = jnp.zeros((1,) + spec.observation_shape, jnp.uint8 if image else jnp.float32)
        params = {}
        if torso is not None:
            params["torso"] = torso.init(jax.random.fold_in(key, 1), dummy)
            dummy = torso.apply(params["torso"], dummy)
        params |= {"actor": actor.init(actor_key, dummy), "critic": critic.init(critic_key, dummy)}
        return PPOState(
            params=params,
            opt_state=optimizer.init(params),
            obs_stats=RunningStats.create(spec.observation_shape),
            return_stats=RunningStats.create(()),
            discounted_return=jnp.zeros((spec.num_envs,), jnp.float32),
            kl_penalty=jnp.float32(cfg.kl_init_penalty),
            iteration=jnp.int32(0),
        )

    def policy(state: PPOState, obs: Array, key: Array, explore: bool = True):
        out = apply_actor(state.params, observe(state, obs))
        if not explore:
            return mode(out), {}
        action = sample(out, key)
        return action, {"log_prob": log_prob(out, action)}

    def scale_rewards(state: PPOState, rollout: Rollout) -> tuple[Array, RunningStats, Array]:
        """Scale rewards by the running std of the discounted return (as SB3's VecNormalize)."""
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

    def loss_fn(params, batch: dict[str, Any], penalty: Array) -> tuple[Array, Metrics]:
        out, value = apply_both(params, batch["obs"])
        new_log_prob = log_prob(out, batch["action"])
        advantages = batch["advantages"]
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        if cfg.objective == "clip":
            policy_loss, metrics = losses.clipped_surrogate(
                new_log_prob, batch["log_prob"], advantages, cfg.clip_eps
            )
        else:
            kl = kl_divergence(batch["old_out"], out)
            policy_loss, metrics = losses.kl_penalized_surrogate(
                new_log_prob,
                batch["log_prob"],
                advantages,
                kl,
                penalty,
                cfg.kl_cutoff_factor * cfg.kl_target,
                cfg.kl_cutoff_coef,
            )
        value_loss = losses.value_loss(value, batch["returns"])
        entropy_mean = jnp.mean(entropy(out))
        total = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy_mean
        # Only the loss terms per minibatch: diagnostics (KL, clip fraction) are measured once
        # per update on the whole batch in `diagnose`; each extra op in this loop body costs
        # dispatch time 16 times per iteration on CPU.
        metrics = {
            "losses/policy_loss": policy_loss,
            "losses/value_loss": value_loss,
            "losses/entropy": entropy_mean,
        }
        return total, metrics

    def diagnose(params, batch: dict[str, Any]) -> Metrics:
        """How far the whole update moved the policy, on the whole batch."""
        out = apply_actor(params, batch["obs"])
        log_ratio = log_prob(out, batch["action"]) - batch["log_prob"]
        metrics = {
            # k3 estimator of KL(old || new) (Schulman, "Approximating KL divergence", 2020)
            "losses/approx_kl": jnp.mean(jnp.exp(log_ratio) - 1.0 - log_ratio),
            "losses/clip_fraction": jnp.mean(jnp.abs(jnp.exp(log_ratio) - 1.0) > cfg.clip_eps),
        }
        if cfg.objective == "kl_penalty":
            metrics["train/kl"] = jnp.mean(kl_divergence(batch["old_out"], out))
        return metrics

    def learn(state: PPOState, rollout: Rollout, key: Array) -> tuple[PPOState, Metrics]:
        """Advantages (GAE, truncation bootstrapped), then epochs x minibatches of Adam."""
        num_steps, num_envs = rollout.reward.shape
        batch_size = num_steps * num_envs
        obs = observe(state, rollout.obs)
        next_obs = observe(state, rollout.next_obs)
        reward, return_stats, discounted = scale_rewards(state, rollout)
        both = jnp.concatenate([obs, next_obs]).reshape((2 * batch_size,) + spec.observation_shape)
        values = apply_critic(state.params, both).reshape(2, num_steps, num_envs)
        advantages, returns = gae(
            reward,
            values[0],
            values[1],
            rollout.terminated,
            rollout.truncated,
            cfg.gamma,
            cfg.gae_lambda,
        )
        flat = lambda x: x.reshape((batch_size,) + x.shape[2:])
        batch = {
            "obs": flat(obs),
            "action": flat(rollout.action),
            "log_prob": flat(rollout.extras["log_prob"]),
            "advantages": flat(advantages),
            "returns": flat(returns),
        }
        if cfg.objective == "kl_penalty":
            batch["old_out"] = apply_actor(state.params, batch["obs"])

        def minibatch_step(carry, minibatch):
            params, opt_state = carry
            grads, metrics = jax.grad(loss_fn, has_aux=True)(params, minibatch, state.kl_penalty)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), metrics

        def epoch(carry, epoch_key):
            if cfg.num_minibatches == 1:
                # One minibatch is the whole batch: its order changes nothing but the float
                # summation order, and the shuffle (a sort and a gather per field) cost more
                # than the Adam step itself on 256 samples.
                minibatches = jax.tree.map(lambda x: x[None], batch)
            else:
                order = jax.random.permutation(epoch_key, batch_size)
                minibatches = jax.tree.map(
                    lambda x: x[order].reshape((cfg.num_minibatches, -1) + x.shape[1:]), batch
                )
            return jax.lax.scan(minibatch_step, carry, minibatches, unroll=unroll)

        (params, opt_state), metrics = jax.lax.scan(
            epoch,
            (state.params, state.opt_state),
            jax.random.split(key, cfg.num_epochs),
            unroll=unroll,
        )
        metrics = {**jax.tree.map(jnp.mean, metrics), **diagnose(params, batch)}
        metrics.update(skip_metrics(state.opt_state, opt_state))
        penalty = state.kl_penalty
        if cfg.objective == "kl_penalty":
            penalty = losses.adapt_kl_penalty(penalty, metrics["train/kl"], cfg.kl_target)
            metrics["train/kl_penalty"] = penalty
        metrics["train/learning_rate"] = learning_rate(state.iteration * updates_per_iteration)
        obs_stats = state.obs_stats
        if cfg.normalize_observations:
            obs_stats = obs_stats.update(rollout.obs)
        new_state = PPOState(
            params=params,
            opt_state=opt_state,
            obs_stats=obs_stats,
            return_stats=return_stats,
            discounted_return=discounted,
            kl_penalty=penalty,
            iteration=state.iteration + 1,
        )
        return new_state, metrics

    return Algorithm(init=init, policy=policy, learn=learn)
