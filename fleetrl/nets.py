"""Network torsos and heads (flax.linen). Orthogonal init as in CleanRL/PPO implementations
(Engstrom et al. 2020, "Implementation Matters"): hidden gain sqrt(2), policy head 0.01."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu}


class NatureCNN(nn.Module):
    """The DQN Nature paper's torso (Mnih et al. 2015): conv 32x8x8/4, 64x4x4/2, 64x3x3/1,
    dense 512, ReLU. Input ``[B, C, H, W]`` uint8 frames (stacked first, as gymnasium's
    FrameStackObservation gives them), scaled to [0, 1] here so rollouts store bytes."""

    @nn.compact
    def __call__(self, x):
        x = jnp.transpose(x.astype(jnp.float32) / 255.0, (0, 2, 3, 1))
        init = nn.initializers.orthogonal(np.sqrt(2))
        for features, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            x = nn.relu(
                nn.Conv(features, (kernel, kernel), (stride, stride), "VALID", kernel_init=init)(x)
            )
        x = x.reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(512, kernel_init=init)(x))


def _hidden_layers(x, hidden_sizes: Sequence[int], activation: str, torso: str):
    """The CNN (if any) and hidden layers, created in the calling module's compact scope (so
    their parameters are named NatureCNN_0, Dense_0, ... directly under it)."""
    act = ACTIVATIONS[activation]
    if torso == "nature_cnn":
        x = NatureCNN()(x)
    x = x.reshape((x.shape[0], -1)) if x.ndim > 1 else x
    for size in hidden_sizes:
        x = act(nn.Dense(size, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
    return x


class MLP(nn.Module):
    """Hidden layers, then a linear output of ``out_size`` (orthogonal init, gain ``out_gain``).

    ``torso="nature_cnn"`` puts `NatureCNN` in front of the hidden layers (image observations).
    """

    hidden_sizes: Sequence[int]
    out_size: int
    activation: str = "tanh"
    out_gain: float = 1.0
    torso: str = "mlp"

    @nn.compact
    def __call__(self, x):
        x = _hidden_layers(x, self.hidden_sizes, self.activation, self.torso)
        return nn.Dense(self.out_size, kernel_init=nn.initializers.orthogonal(self.out_gain))(x)


class Torso(nn.Module):
    """`MLP` without its output layer: what a shared actor-critic network has in common
    (``torso="nature_cnn"`` puts `NatureCNN` first). With no hidden layers and no CNN, the
    identity."""

    hidden_sizes: Sequence[int]
    activation: str = "tanh"
    torso: str = "mlp"

    @nn.compact
    def __call__(self, x):
        return _hidden_layers(x, self.hidden_sizes, self.activation, self.torso)


class GaussianHead(nn.Module):
    """Mean from an MLP; a learned, state-independent log standard deviation (BatchPPO, CleanRL)."""

    hidden_sizes: Sequence[int]
    action_size: int
    activation: str = "tanh"
    init_log_std: float = 0.0
    torso: str = "mlp"

    @nn.compact
    def __call__(self, x):
        mean = MLP(self.hidden_sizes, self.action_size, self.activation, 0.01, self.torso)(x)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.action_size,)
        )
        return mean, jnp.broadcast_to(log_std, mean.shape)


class QEnsemble(nn.Module):
    """``n`` independent Q(s, a) networks for continuous actions, as one module: ``[n, B]``
    values of ``(obs [B, ...], action [B, A])`` (twin critics: TD3, SAC; one: DDPG).

    The members are ``nn.vmap``-ed copies of one MLP over ``concat(obs, action)``, their
    parameters stacked on a leading axis of size ``n``: one batched matmul per layer for all
    critics instead of ``n`` (fewer XLA kernels per gradient step). Flax's default init (LeCun
    normal weights, zero biases), as sbx; Stable-Baselines3 has PyTorch's uniform one.
    """

    hidden_sizes: Sequence[int]
    n: int = 2
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs.reshape((obs.shape[0], -1)), action], axis=-1)
        ensemble = nn.vmap(
            _QNetwork,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.n,
        )
        return ensemble(tuple(self.hidden_sizes), self.activation)(x)


class _QNetwork(nn.Module):
    hidden_sizes: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(nn.Dense(size)(x))
        return nn.Dense(1)(x)[..., 0]
