"""Network torsos and heads (flax.linen). Orthogonal init as in CleanRL/PPO implementations
(Engstrom et al. 2020, "Implementation Matters"): hidden gain sqrt(2), policy head 0.01."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu}


class MLP(nn.Module):
    """Hidden layers, then a linear output of ``out_size`` (orthogonal init, gain ``out_gain``)."""

    hidden_sizes: Sequence[int]
    out_size: int
    activation: str = "tanh"
    out_gain: float = 1.0

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        x = x.reshape((x.shape[0], -1)) if x.ndim > 1 else x
        for size in self.hidden_sizes:
            x = act(nn.Dense(size, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.out_size, kernel_init=nn.initializers.orthogonal(self.out_gain))(x)


class GaussianHead(nn.Module):
    """Mean from an MLP; a learned, state-independent log standard deviation (BatchPPO, CleanRL)."""

    hidden_sizes: Sequence[int]
    action_size: int
    activation: str = "tanh"
    init_log_std: float = 0.0

    @nn.compact
    def __call__(self, x):
        mean = MLP(self.hidden_sizes, self.action_size, self.activation, 0.01)(x)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.action_size,)
        )
        return mean, jnp.broadcast_to(log_std, mean.shape)
