"""The continuous family's actors (the critics are `fleetrl.nets.QEnsemble`): a deterministic
tanh actor (DDPG, TD3) and a tanh-squashed Gaussian (SAC). Both act in ``[-1, 1]^A``; the
learner maps that box onto the env's action bounds."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fleetrl.nets import ACTIVATIONS


def _torso(x, hidden_sizes: Sequence[int], activation: str):
    x = x.reshape((x.shape[0], -1))
    for size in hidden_sizes:
        x = ACTIVATIONS[activation](nn.Dense(size)(x))
    return x


class DeterministicActor(nn.Module):
    """mu(s) in ``[-1, 1]^A``: an MLP with a tanh output (Fujimoto et al. 2018)."""

    hidden_sizes: Sequence[int]
    action_size: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        x = _torso(obs, self.hidden_sizes, self.activation)
        return jnp.tanh(nn.Dense(self.action_size)(x))


class SquashedGaussianActor(nn.Module):
    """The pre-tanh Gaussian's mean and log standard deviation, both state dependent, the log
    standard deviation clipped to ``[log_std_min, log_std_max]`` (as Stable-Baselines3 clips
    it); `fleetrl.distributions.squashed_normal_sample` draws from it."""

    hidden_sizes: Sequence[int]
    action_size: int
    activation: str = "relu"
    log_std_min: float = -20.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs):
        x = _torso(obs, self.hidden_sizes, self.activation)
        mean = nn.Dense(self.action_size)(x)
        log_std = jnp.clip(nn.Dense(self.action_size)(x), self.log_std_min, self.log_std_max)
        return mean, log_std
