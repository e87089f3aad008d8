"""The value-based family's Q-network: one module whose head the config's flags choose.

Every member's network returns ``[B, A, K]``: K = 1 for scalar Q, the atoms' logits for C51,
the quantiles for QR-DQN, and one value per sampled fraction for IQN, so the learner handles
them alike and `q_values` turns any of them into ``[B, A]`` expected values.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.nets import ACTIVATIONS
from fleetrl.types import Array

_ORTHOGONAL = nn.initializers.orthogonal(np.sqrt(2))


class NoisyDense(nn.Module):
    """A linear layer with factorized Gaussian noise (Fortunato et al. 2018, eq. 10-11).

    ``noisy=True`` draws fresh noise from the ``"noise"`` RNG stream; ``noisy=False`` uses the
    mean weights (evaluation). Initialisation as in the paper's section 3.2.
    """

    features: int
    sigma0: float = 0.5

    @nn.compact
    def __call__(self, x: Array, noisy: bool) -> Array:
        fan_in = x.shape[-1]
        bound = 1.0 / np.sqrt(fan_in)
        uniform = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
        sigma = nn.initializers.constant(self.sigma0 / np.sqrt(fan_in))
        w_mu = self.param("kernel", uniform, (fan_in, self.features))
        b_mu = self.param("bias", uniform, (self.features,))
        w_sigma = self.param("kernel_sigma", sigma, (fan_in, self.features))
        b_sigma = self.param("bias_sigma", sigma, (self.features,))
        y = x @ w_mu + b_mu
        if not noisy:
            return y
        in_key, out_key = jax.random.split(self.make_rng("noise"))
        scale = lambda e: jnp.sign(e) * jnp.sqrt(jnp.abs(e))
        eps_in = scale(jax.random.normal(in_key, (fan_in,)))
        eps_out = scale(jax.random.normal(out_key, (self.features,)))
        # x (W_mu + W_sigma * outer(eps_in, eps_out)) without forming the outer product
        return y + ((x * eps_in) @ w_sigma) * eps_out + b_sigma * eps_out


class NatureConvs(nn.Module):
    """The Nature-DQN paper's convolutions (Mnih et al. 2015): 32x8x8/4, 64x4x4/2, 64x3x3/1,
    ReLU, on ``[B, C, H, W]`` uint8 frames scaled to [0, 1] here (the replay stores bytes). Its
    dense 512 layer is the network's hidden layer (``hidden_sizes: [512]``), so that noisy
    nets and IQN's embedding treat it as Rainbow and IQN do."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.transpose(x.astype(jnp.float32) / 255.0, (0, 2, 3, 1))
        for features, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            conv = nn.Conv(
                features, (kernel, kernel), (stride, stride), "VALID", kernel_init=_ORTHOGONAL
            )
            x = nn.relu(conv(x))
        return x.reshape((x.shape[0], -1))


class PatchConv(nn.Module):
    """A VALID, stride-1 convolution as one matmul over the ``k x k`` shifted slices of
    ``[B, H, W, C]``: the same parameters (``kernel [k, k, C, F]``, ``bias [F]``), initial values
    and outputs as ``nn.Conv``. XLA:CPU runs a conv's backward pass 10-50x slower inside a loop
    than outside one (actor_critic/learner.py); on MinAtar's 10x10 frames this form took
    2.2 ms per gradient step in a scan where ``nn.Conv`` took 17 (batch 128, 16 filters)."""

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, channels = self.kernel_size, x.shape[-1]
        shape = (k, k, channels, self.features)
        kernel = self.param("kernel", _ORTHOGONAL, shape)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
        patches = jnp.stack(
            [x[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axis=3
        )  # [B, h, w, k * k, C], in the kernel's (row, column) order
        return jnp.einsum("bhwpc,pcf->bhwf", patches, kernel.reshape(k * k, channels, -1)) + bias


class MinAtarCNN(nn.Module):
    """MinAtar's DQN torso (Young & Tian 2019): one conv of 16 3x3 filters, stride 1, ReLU, on
    ``[B, 10, 10, C]`` observations (channels last, as gymnax gives them); ``layer_norm``:
    normalised before the ReLU, as purejaxql's PQN does."""

    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = PatchConv(16, 3, name="Conv_0")(x)  # the parameter names of nn.Conv
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        return nn.relu(x).reshape((x.shape[0], -1))


class QNetwork(nn.Module):
    """Torso, hidden layers, then a Q head chosen by the flags; returns ``[B, A, K]``."""

    num_actions: int
    hidden_sizes: Sequence[int]
    activation: str = "relu"
    network: str = "mlp"
    layer_norm: bool = False
    dueling: bool = False
    noisy: bool = False
    noisy_sigma: float = 0.5
    distributional: str = "none"
    num_outputs: int = 1
    """K per action: atoms (c51), quantiles (qr), 1 (none, and iqn per fraction)."""
    num_cosines: int = 64

    @nn.compact
    def __call__(self, obs: Array, taus: Array | None = None, noisy: bool = False) -> Array:
        """``obs [B, ...]``; ``taus [B, M]`` fractions for IQN; ``noisy`` draws layer noise."""
        x = obs.astype(jnp.float32)
        if self.network == "nature_cnn":
            x = NatureConvs()(obs)
        elif self.network == "minatar_cnn":
            x = MinAtarCNN(self.layer_norm)(x)
        x = x.reshape((x.shape[0], -1))
        *first, last = self.hidden_sizes
        for size in first:
            x = self._hidden(x, size, noisy)
        x = x[:, None, :]  # [B, M=1, D]
        if self.distributional == "iqn":
            x = x * self._fraction_embedding(taus, x.shape[-1])  # [B, M, D]
        x = self._hidden(x, last, noisy)
        return self._head(x, noisy)

    def _dense(self, x: Array, size: int, noisy: bool, gain: float = np.sqrt(2)) -> Array:
        if self.noisy:
            return NoisyDense(size, self.noisy_sigma)(x, noisy)
        return nn.Dense(size, kernel_init=nn.initializers.orthogonal(gain))(x)

    def _hidden(self, x: Array, size: int, noisy: bool) -> Array:
        x = self._dense(x, size, noisy)
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        return ACTIVATIONS[self.activation](x)

    def _fraction_embedding(self, taus: Array, size: int) -> Array:
        """IQN's phi(tau) (Dabney et al. 2018b, eq. 4): ReLU(Dense(cos(pi i tau))),
        ``[B, M, D]``."""
        i = jnp.arange(self.num_cosines, dtype=jnp.float32)
        features = jnp.cos(jnp.pi * i * taus[..., None])
        return nn.relu(nn.Dense(size, kernel_init=_ORTHOGONAL)(features))

    def _head(self, x: Array, noisy: bool) -> Array:
        a, k = self.num_actions, self.num_outputs
        advantage = self._dense(x, a * k, noisy, gain=1.0).reshape(x.shape[:2] + (a, k))
        if self.dueling:  # Wang et al. 2016, eq. 9: identifiable by a zero mean advantage
            value = self._dense(x, k, noisy, gain=1.0).reshape(x.shape[:2] + (1, k))
            self.sow("intermediates", "value", value)
            advantage = value + advantage - advantage.mean(axis=2, keepdims=True)
        if self.distributional == "iqn":  # [B, M, A, 1] -> [B, A, M]
            return jnp.transpose(advantage[..., 0], (0, 2, 1))
        return advantage[:, 0]  # [B, A, K]


def make_network(cfg, num_actions: int) -> QNetwork:
    """The Q-network a config asks for."""
    outputs = {"c51": cfg.num_atoms, "qr": cfg.num_quantiles}.get(cfg.distributional, 1)
    return QNetwork(
        num_actions=num_actions,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        network=cfg.network,
        layer_norm=cfg.layer_norm,
        dueling=cfg.dueling,
        noisy=cfg.noisy,
        noisy_sigma=cfg.noisy_sigma,
        distributional=cfg.distributional,
        num_outputs=outputs,
        num_cosines=cfg.num_cosines,
    )


def support(cfg) -> Array:
    """C51's atoms ``[num_atoms]``, evenly spaced on [v_min, v_max]."""
    return jnp.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms)


def q_values(outputs: Array, distributional: str, atoms: Array | None = None) -> Array:
    """Expected Q ``[B, A]`` from a network's ``[B, A, K]`` outputs."""
    if distributional == "none":
        return outputs[..., 0]
    if distributional == "c51":
        return jnp.sum(jax.nn.softmax(outputs, axis=-1) * atoms, axis=-1)
    return outputs.mean(axis=-1)  # quantiles, sampled or fixed


def quantile_midpoints(num: int) -> Array:
    """QR-DQN's fixed fractions (2i + 1) / 2N, ``[num]`` (also IQN's deterministic act)."""
    return (jnp.arange(num, dtype=jnp.float32) + 0.5) / num
