"""Networks and action distributions of the actor-critic family, as pure functions.

`build` gives a `Network`: feed-forward (separate actor and critic, or a shared torso) or
recurrent (an encoder, an LSTM or GRU core, then actor and critic output layers). Every member
of the family (REINFORCE, A2C, PPO) acts and learns through the same four functions.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fleetrl import distributions as D
from fleetrl.config import ConfigError
from fleetrl.nets import MLP, GaussianHead, Torso
from fleetrl.rollout import reset_where
from fleetrl.types import Array, EnvSpec


class Network(NamedTuple):
    """``init(key) -> params``; ``initial_core(n) -> core`` (``()`` without a core);
    ``act(params, core, obs[B]) -> (out, core)``: the actor's output for one step;
    ``value(params, obs[B]) -> value[B]`` (feed-forward only);
    ``both(params, core, obs[B]) -> (out, value[B], core)``: one step of actor and critic;
    ``recurrent``: whether ``core`` carries state from step to step. A recurrent network also
    has its three stages apart, for `unroll`: ``encode(params, obs[B]) -> x[B]``,
    ``step(params, core, x[B]) -> (core, h[B])`` and ``heads(params, h[B]) -> (out, value)``."""

    init: Any
    initial_core: Any
    act: Any
    value: Any
    both: Any
    recurrent: bool
    encode: Any = None
    step: Any = None
    heads: Any = None


def build(cfg, spec: EnvSpec) -> Network:
    """The network ``cfg`` (an actor-critic config) describes for ``spec``."""
    if cfg.network == "nature_cnn" and len(spec.observation_shape) != 3:
        raise ConfigError(
            "algo.network: nature_cnn needs stacked image observations [C, H, W], got shape "
            f"{spec.observation_shape} from {spec.env_id} (set env.preprocess: atari)"
        )
    if cfg.core != "none":
        return _recurrent(cfg, spec)
    return _feed_forward(cfg, spec)


def _actor_head(cfg, spec: EnvSpec, hidden, network: str):
    if spec.action_kind == "discrete":
        return MLP(hidden, spec.num_actions, cfg.activation, 0.01, network)
    size = math.prod(spec.action_shape)
    return GaussianHead(hidden, size, cfg.activation, cfg.init_log_std, network)


def _dummy_obs(spec: EnvSpec) -> Array:
    return jnp.zeros((1,) + spec.observation_shape, spec.observation_dtype)


def _feed_forward(cfg, spec: EnvSpec) -> Network:
    # With a shared torso, the actor and critic below are output layers on its features.
    torso = Torso(cfg.hidden_sizes, cfg.activation, cfg.network) if cfg.shared_torso else None
    hidden, network = ((), "mlp") if cfg.shared_torso else (cfg.hidden_sizes, cfg.network)
    actor = _actor_head(cfg, spec, hidden, network)
    critic = MLP(hidden, 1, cfg.activation, 1.0, network)

    def features(params, obs: Array) -> Array:
        return obs if torso is None else torso.apply(params["torso"], obs)

    def init(key: Array):
        actor_key, critic_key = jax.random.split(key)
        dummy = _dummy_obs(spec)
        params = {}
        if torso is not None:
            params["torso"] = torso.init(jax.random.fold_in(key, 1), dummy)
            dummy = torso.apply(params["torso"], dummy)
        return params | {
            "actor": actor.init(actor_key, dummy),
            "critic": critic.init(critic_key, dummy),
        }

    def value(params, obs: Array) -> Array:
        return critic.apply(params["critic"], features(params, obs))[:, 0]

    def act(params, core, obs: Array):
        return actor.apply(params["actor"], features(params, obs)), core

    def both(params, core, obs: Array):
        x = features(params, obs)  # one torso pass when it is shared
        return actor.apply(params["actor"], x), critic.apply(params["critic"], x)[:, 0], core

    return Network(init, lambda n: (), act, value, both, recurrent=False)


class _Core(nn.Module):
    """One step of an LSTM or GRU (resets are `unroll`'s)."""

    kind: str
    size: int

    @nn.compact
    def __call__(self, state, x):
        if self.kind == "lstm":
            cell = nn.OptimizedLSTMCell(self.size)
        else:
            cell = nn.GRUCell(self.size)
        return cell(state, x)


def _recurrent(cfg, spec: EnvSpec) -> Network:
    encoder = Torso(cfg.hidden_sizes, cfg.activation, cfg.network)
    core = _Core(cfg.core, cfg.core_size)
    actor = _actor_head(cfg, spec, (), "mlp")
    critic = MLP((), 1, cfg.activation, 1.0, "mlp")

    def initial_core(n: int):
        zeros = jnp.zeros((n, cfg.core_size), jnp.float32)
        return (zeros, zeros) if cfg.core == "lstm" else zeros

    def init(key: Array):
        keys = jax.random.split(key, 4)
        dummy = _dummy_obs(spec)
        params = {"encoder": encoder.init(keys[0], dummy)}
        x = encoder.apply(params["encoder"], dummy)
        params["core"] = core.init(keys[1], initial_core(1), x)
        _, h = core.apply(params["core"], initial_core(1), x)
        return params | {"actor": actor.init(keys[2], h), "critic": critic.init(keys[3], h)}

    def encode(params, obs: Array) -> Array:
        return encoder.apply(params["encoder"], obs)

    def step(params, state, x: Array):
        return core.apply(params["core"], state, x)

    def heads(params, h: Array):
        return actor.apply(params["actor"], h), critic.apply(params["critic"], h)[:, 0]

    def act(params, state, obs: Array):
        state, h = step(params, state, encode(params, obs))
        return actor.apply(params["actor"], h), state

    def both(params, state, obs: Array):
        state, h = step(params, state, encode(params, obs))
        return (*heads(params, h), state)

    return Network(init, initial_core, act, None, both, True, encode, step, heads)


def unroll(net: Network, params, core, obs: Array, resets: Array, burn_in: int = 0):
    """Actor outputs and values along sequences: ``obs[T, B, ...]`` from the core state
    ``core`` (``[B, ...]``) at ``t = 0``, reset to the initial state where ``resets[t]`` (an
    episode began at ``t``). Returns ``(out[T, B], value[T, B], cores[T, B])``: ``cores[t]``
    is the state after step ``t`` (before any reset), from which ``next_obs[t]`` is valued.

    Only the core runs step by step: the encoder and the heads see all ``T x B`` inputs in one
    batched call (a convolution's backward pass inside an XLA:CPU loop is 6-30x slower than
    outside one, see learner.py). The time loop stays a loop: unrolled 4, 8 or 32 steps at a
    time, PPO-LSTM at RL-Zoo's CartPole settings ran at 4.3k, 2.5k and 2.4k steps/s against
    5.9k (docs/BENCHMARKS.md, section 13). ``burn_in``: no gradient flows into the state from
    the first ``burn_in`` steps (R2D2's burn-in; their outputs are computed but get no loss).
    """
    num_steps, batch = resets.shape
    merge = lambda x: x.reshape((num_steps * batch,) + x.shape[2:])
    split = lambda x: x.reshape((num_steps, batch) + x.shape[1:])
    x = split(net.encode(params, merge(obs)))
    fresh = net.initial_core(batch)

    def step(state, xs):
        x_t, reset_t = xs
        state, h = net.step(params, reset_where(reset_t, fresh, state), x_t)
        return state, (h, state)

    if burn_in:
        state, (h_warm, cores_warm) = jax.lax.scan(step, core, (x[:burn_in], resets[:burn_in]))
        state = jax.lax.stop_gradient(state)
        _, (h_rest, cores_rest) = jax.lax.scan(step, state, (x[burn_in:], resets[burn_in:]))
        join = lambda a, b: jnp.concatenate([a, b])
        h, cores = join(h_warm, h_rest), jax.tree.map(join, cores_warm, cores_rest)
    else:
        _, (h, cores) = jax.lax.scan(step, core, (x, resets))
    out, value = net.heads(params, merge(h))
    return jax.tree.map(split, out), split(value), cores


class Distribution(NamedTuple):
    """``sample(out, key)``, ``mode(out)``, ``log_prob(out, action)``, ``entropy(out)``,
    ``kl(p, q)`` and ``mask(out, mask)`` over the actor's output for one action space."""

    sample: Any
    mode: Any
    log_prob: Any
    entropy: Any
    kl: Any
    mask: Any


def distribution(spec: EnvSpec) -> Distribution:
    """Categorical logits (masked where the env masks actions) or a diagonal Gaussian."""
    if spec.action_kind == "discrete":
        return Distribution(
            D.categorical_sample,
            lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32),
            D.categorical_log_prob,
            D.categorical_entropy,
            D.categorical_kl,
            D.mask_logits,
        )
    shape = spec.action_shape

    def sample(out, key):
        mean, log_std = out
        return D.normal_sample(mean, log_std, key).reshape(mean.shape[:-1] + shape)

    return Distribution(
        sample,
        lambda out: out[0].reshape(out[0].shape[:-1] + shape),
        lambda out, action: D.normal_log_prob(*out, action.reshape(out[0].shape)),
        lambda out: D.normal_entropy(out[1]),
        lambda p, q: D.normal_kl(p[0], p[1], q[0], q[1]),
        lambda out, mask: out,
    )
