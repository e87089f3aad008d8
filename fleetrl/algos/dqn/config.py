"""The value-based family's configuration and its checks.

One frozen config for every member: DQN, Double DQN, dueling, n-step, noisy nets, C51, QR-DQN,
IQN, Munchausen and prioritized replay are flags of it that compose (Rainbow is a preset of
flags, DESIGN.md "Layout for a family of algorithms").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fleetrl.config import ConfigError, require, require_replay_rows
from fleetrl.types import EnvSpec


@dataclass(frozen=True)
class Config:
    """Value-based hyperparameters (defaults: RL-Zoo's CartPole DQN, the papers' for options)."""

    learning_rate: float = 2.3e-3
    """Adam step size."""
    anneal_lr: bool = False
    """Decay the step size linearly to 0 over train.total_steps."""
    adam_epsilon: float = 1e-8
    """Adam's epsilon (Rainbow and IQN: 1.5e-4 / 0.01 / batch_size; Dopamine uses 3.125e-4)."""
    gamma: float = 0.99
    """Discount factor."""
    clip_rewards: bool = False
    """Learn from the sign of each reward (Mnih et al. 2015, Atari); returns are logged raw."""
    buffer_size: int = 100_000
    """Replay capacity in transitions (split evenly over the envs)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    learning_starts: int = 1_000
    """Env steps collected before the first gradient step."""
    gradient_steps: int = 128
    """Gradient steps per iteration (one iteration = num_envs x num_steps env steps)."""
    target_update_interval: int = 10
    """Env steps between target network updates, counted as Stable-Baselines3 (and so RL-Zoo)
    counts them: updates fall between iterations, never inside one's gradient steps, and an
    iteration that crosses k multiples of the interval applies k of them."""
    tau: float = 1.0
    """Target update weight (1: copy)."""
    epsilon_start: float = 1.0
    """Initial exploration rate (unused with ``noisy``)."""
    epsilon_end: float = 0.04
    """Final exploration rate (unused with ``noisy``)."""
    exploration_fraction: float = 0.16
    """Fraction of train.total_steps over which epsilon decays linearly."""
    double_q: bool = False
    """Double DQN: pick the next action with the online network, value it with the target."""
    n_step: int = 1
    """Steps of real reward before bootstrapping."""
    loss: Literal["huber", "mse"] = "huber"
    """TD loss of scalar Q-learning (distributional members have their own)."""
    max_grad_norm: float = 10.0
    """Global gradient norm clip."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layers of the Q-network (after the conv torso, if any)."""
    activation: Literal["tanh", "relu", "elu", "gelu"] = "relu"
    """Hidden activation."""
    network: Literal["mlp", "nature_cnn", "minatar_cnn"] = "mlp"
    """mlp: vector observations; nature_cnn: the Nature-DQN convolutions for stacked uint8
    frames [C, 84, 84] (Atari; its dense 512 layer is ``hidden_sizes: [512]``); minatar_cnn:
    MinAtar's DQN torso, one 16x3x3 conv, for [10, 10, C]."""
    layer_norm: bool = False
    """LayerNorm before each hidden activation (PQN's stabiliser, Gallici et al. 2024)."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016): Q = V + A - mean_a A, per atom or quantile."""
    noisy: bool = False
    """Factorized Gaussian noisy layers (Fortunato et al. 2018) explore instead of epsilon."""
    noisy_sigma: float = 0.5
    """sigma_0 of the noisy layers (the paper's 0.5)."""
    distributional: Literal["none", "c51", "qr", "iqn"] = "none"
    """none: scalar Q; c51: categorical over fixed atoms (Bellemare et al. 2017); qr: fixed
    quantile fractions (Dabney et al. 2018a); iqn: sampled fractions (Dabney et al. 2018b)."""
    num_atoms: int = 51
    """C51: atoms of the support."""
    v_min: float = -10.0
    """C51: lowest atom."""
    v_max: float = 10.0
    """C51: highest atom."""
    num_quantiles: int = 200
    """QR-DQN: quantiles."""
    num_tau_samples: int = 64
    """IQN: fractions sampled for the online network (N)."""
    num_tau_prime_samples: int = 64
    """IQN: fractions sampled for the target network (N')."""
    num_quantile_samples: int = 32
    """IQN: fractions averaged to act (K)."""
    num_cosines: int = 64
    """IQN: cosine features of a fraction."""
    kappa: float = 1.0
    """QR-DQN and IQN: Huber threshold of the quantile loss."""
    munchausen: bool = False
    """Munchausen RL (Vieillard et al. 2020): a scaled log-policy bonus and a soft target."""
    munchausen_alpha: float = 0.9
    """Munchausen: weight of the log-policy bonus."""
    munchausen_tau: float = 0.03
    """Munchausen: entropy temperature."""
    munchausen_clip: float = -1.0
    """Munchausen: lower clip l0 of tau * log pi."""
    prioritized: bool = False
    """Proportional prioritized replay (Schaul et al. 2016) on the device."""
    priority_alpha: float = 0.6
    """PER: priority exponent."""
    priority_beta_start: float = 0.4
    """PER: importance-sampling exponent at the start, annealed linearly to priority_beta_end."""
    priority_beta_end: float = 1.0
    """PER: importance-sampling exponent at train.total_steps."""
    priority_epsilon: float = 1e-6
    """PER: added to |TD error| so no transition has priority 0."""

    def __post_init__(self):
        _check_positive(self)
        _check_ranges(self)
        _check_combinations(self)


def _check_positive(cfg: Config) -> None:
    for name in (
        "learning_rate",
        "adam_epsilon",
        "max_grad_norm",
        "noisy_sigma",
        "kappa",
        "munchausen_tau",
        "priority_epsilon",
    ):
        value = getattr(cfg, name)
        require(value > 0, f"algo.{name}", f"must be > 0, got {value}")
    for name in (
        "buffer_size",
        "batch_size",
        "gradient_steps",
        "target_update_interval",
        "n_step",
        "num_quantiles",
        "num_tau_samples",
        "num_tau_prime_samples",
        "num_quantile_samples",
        "num_cosines",
    ):
        require(getattr(cfg, name) >= 1, f"algo.{name}", f"must be >= 1, got {getattr(cfg, name)}")
    require(cfg.num_atoms >= 2, "algo.num_atoms", f"must be >= 2, got {cfg.num_atoms}")
    require(
        cfg.learning_starts >= 0, "algo.learning_starts", f"must be >= 0, got {cfg.learning_starts}"
    )
    require(  # tyro takes `--algo.hidden-sizes` with nothing after it as ()
        len(cfg.hidden_sizes) > 0 and all(s >= 1 for s in cfg.hidden_sizes),
        "algo.hidden_sizes",
        f"needs at least one layer, each of size >= 1, got {cfg.hidden_sizes}",
    )


def _check_ranges(cfg: Config) -> None:
    require(0 <= cfg.gamma <= 1, "algo.gamma", f"must be in [0, 1], got {cfg.gamma}")
    require(0 < cfg.tau <= 1, "algo.tau", f"must be in (0, 1], got {cfg.tau}")
    for name in (
        "epsilon_start",
        "epsilon_end",
        "exploration_fraction",
        "priority_alpha",
        "priority_beta_start",
        "priority_beta_end",
        "munchausen_alpha",
    ):
        value = getattr(cfg, name)
        require(0 <= value <= 1, f"algo.{name}", f"must be in [0, 1], got {value}")
    require(
        cfg.munchausen_clip < 0, "algo.munchausen_clip", f"must be < 0, got {cfg.munchausen_clip}"
    )
    require(
        cfg.v_min < cfg.v_max,
        "algo.v_min",
        f"must be below algo.v_max, got {cfg.v_min} >= {cfg.v_max}",
    )


def _check_combinations(cfg: Config) -> None:
    require(
        not (cfg.munchausen and cfg.distributional == "c51"),
        "algo.munchausen",
        "Munchausen is defined for scalar Q (M-DQN) and quantiles (M-IQN, M-QR), not for C51's "
        "categorical target; use distributional none, qr or iqn",
    )
    require(
        not (cfg.munchausen and cfg.n_step > 1),
        "algo.munchausen",
        f"Munchausen's target is one-step (Vieillard et al. 2020), got algo.n_step={cfg.n_step}; "
        "its log-policy bonus over an n-step window is not defined there",
    )
    require(
        not (cfg.munchausen and cfg.double_q),
        "algo.double_q",
        "Munchausen bootstraps from the target's softmax policy, not an argmax, so double_q "
        "would change nothing; leave it false",
    )


def check_config(run) -> None:
    need = max(run.train.num_steps, run.algo.n_step + 4)
    require_replay_rows(run, need, "an n-step window with its frame history")


def check_spec(spec: EnvSpec) -> None:
    if spec.action_kind != "discrete":
        raise ConfigError(
            f"env.id: value-based methods need a discrete action space, and {spec.env_id} has "
            "continuous actions; use PPO, A2C or REINFORCE for this env"
        )
