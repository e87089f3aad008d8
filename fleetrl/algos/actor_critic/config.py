"""Configurations of the actor-critic family: one frozen dataclass per algorithm.

The members share `Shared` (networks, optimizer, normalization, recurrent core) and differ in a
few fields and their defaults; the learner reads the family flags through `Family.of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from fleetrl.config import require


@dataclass(frozen=True)
class Shared:
    """What every member of the actor-critic family has: networks, optimizer, normalization."""

    learning_rate: float = 2.5e-4
    """Step size."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    """adam, or rmsprop as in A3C/A2C (Mnih et al. 2016) and SB3's A2C."""
    optimizer_eps: float = 1e-5
    """Epsilon of Adam or RMSProp."""
    rmsprop_decay: float = 0.99
    """RMSProp's decay of the squared-gradient average (optimizer=rmsprop)."""
    gamma: float = 0.99
    """Discount factor."""
    ent_coef: float = 0.01
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient norm clip."""
    normalize_advantages: bool = True
    """Standardize advantages per minibatch."""
    normalize_observations: bool = False
    """Running mean/std observation normalization (statistics live in the state)."""
    normalize_rewards: bool = False
    """Scale rewards by the running std of the discounted return."""
    obs_clip: float = 10.0
    """Clip of normalized observations."""
    reward_clip: float = 10.0
    """Clip of scaled rewards."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layers of the actor and of the (separate) critic; with a core, of the encoder
    in front of it."""
    activation: Literal["tanh", "relu", "elu", "gelu"] = "tanh"
    """Activation of the hidden layers."""
    network: Literal["mlp", "nature_cnn"] = "mlp"
    """mlp: for vector observations; nature_cnn: a Nature-DQN conv torso in front of the hidden
    layers, for stacked uint8 frames [C, 84, 84] (Atari)."""
    shared_torso: bool = False
    """Actor and critic share the network's torso (the Nature CNN and the hidden layers) and
    differ only in their output layers, as in CleanRL's and BatchPPO's Atari agents: half the
    compute of two CNNs. False: two separate networks."""
    init_log_std: float = 0.0
    """Initial log standard deviation of Gaussian actions."""
    core: Literal["none", "lstm", "gru"] = "none"
    """Recurrent core (BatchPPO's recurrent policy, PureJaxRL's PPO-RNN): an encoder (the
    hidden layers), an LSTM or GRU, then the actor and critic output layers. Rollouts are
    learned as whole sequences from the state they started in; the state resets where an
    episode ended."""
    core_size: int = 128
    """Units of the recurrent core."""
    burn_in: int = 0
    """First steps of each sequence that only warm up the core's state: no loss on them, and no
    gradient flows from later steps into them (R2D2's burn-in)."""

    def __post_init__(self):
        positive = ("learning_rate", "optimizer_eps", "max_grad_norm", "obs_clip", "reward_clip")
        for name in positive:
            value = getattr(self, name)
            require(value > 0, f"algo.{name}", f"must be > 0, got {value}")
        for name in ("gamma", "rmsprop_decay"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"algo.{name}", f"must be in [0, 1], got {value}")
        for name in ("ent_coef", "vf_coef", "burn_in"):
            value = getattr(self, name)
            require(value >= 0, f"algo.{name}", f"must be >= 0, got {value}")
        require(self.core_size >= 1, "algo.core_size", f"must be >= 1, got {self.core_size}")
        require(
            all(s >= 1 for s in self.hidden_sizes),
            "algo.hidden_sizes",
            f"sizes must be >= 1, got {self.hidden_sizes}",
        )
        require(  # tyro takes `--algo.hidden-sizes` with nothing after it as ()
            self.network != "mlp" or len(self.hidden_sizes) > 0,
            "algo.hidden_sizes",
            "an mlp network needs at least one hidden layer, got none",
        )
        require(
            self.core == "none" or not self.shared_torso,
            "algo.shared_torso",
            "a recurrent core is always shared by actor and critic; leave shared_torso false",
        )


def _check_gae_lambda(value: float) -> None:
    require(0 <= value <= 1, "algo.gae_lambda", f"must be in [0, 1], got {value}")


@dataclass(frozen=True)
class VTraceLevels:
    """V-trace's truncation levels (Espeholt et al. 2018, eq. 1 and 4), for the members that
    learn from data acted by older parameters (IMPALA; PPO with ``advantage: vtrace``)."""

    rho_bar: float = 1.0
    """Clip of the importance weight pi/mu in the value targets' TD errors: the targets
    converge to pi's value where no weight exceeds it, else to that of a policy between mu and
    pi (Espeholt et al. 2018, section 4.1)."""
    pg_rho_bar: float = 1.0
    """Clip of the importance weight on the policy-gradient advantages."""
    c_bar: float = 1.0
    """Clip of the trace coefficients c_t (how far corrections propagate back in time)."""

    def _check_levels(self) -> None:
        for name in ("rho_bar", "pg_rho_bar", "c_bar"):
            value = getattr(self, name)
            require(value > 0, f"algo.{name}", f"must be > 0, got {value}")


@dataclass(frozen=True)
class PPO(VTraceLevels, Shared):
    """PPO hyperparameters (defaults: CleanRL's ppo.py for CartPole)."""

    gae_lambda: float = 0.95
    """GAE lambda (with ``advantage: vtrace``, V-trace's lambda)."""
    advantage: Literal["gae", "vtrace"] = "gae"
    """gae: GAE advantages and returns. vtrace: V-trace's (Espeholt et al. 2018), computed once
    per rollout, corrected for data acted by older parameters (asynchronous actors) with
    rho_bar, pg_rho_bar and c_bar; the surrogate's ratio is then taken against the parameters
    at the start of the update, not the behaviour policy (decoupled PPO, Hilton et al. 2021:
    the clipped weight behaviour -> current is in the advantages). On-policy both agree."""
    num_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch; num_envs x num_steps (with a core: num_envs) must be divisible
    by it."""
    objective: Literal["clip", "kl_penalty"] = "clip"
    """clip: clipped surrogate; kl_penalty: BatchPPO's adaptive KL penalty."""
    clip_eps: float = 0.2
    """Ratio clipping range (objective=clip)."""
    kl_target: float = 0.01
    """Target KL per update (objective=kl_penalty)."""
    kl_init_penalty: float = 1.0
    """Initial KL penalty coefficient (objective=kl_penalty)."""
    kl_cutoff_factor: float = 2.0
    """KL above kl_cutoff_factor x kl_target is penalized quadratically (objective=kl_penalty)."""
    kl_cutoff_coef: float = 1000.0
    """Weight of the quadratic KL cutoff penalty (objective=kl_penalty)."""

    def __post_init__(self):
        super().__post_init__()
        _check_gae_lambda(self.gae_lambda)
        self._check_levels()
        for name in ("num_epochs", "num_minibatches"):
            value = getattr(self, name)
            require(value >= 1, f"algo.{name}", f"must be >= 1, got {value}")
        for name in ("clip_eps", "kl_target"):
            value = getattr(self, name)
            require(value > 0, f"algo.{name}", f"must be > 0, got {value}")
        for name in ("kl_init_penalty", "kl_cutoff_coef"):
            value = getattr(self, name)
            require(value >= 0, f"algo.{name}", f"must be >= 0, got {value}")


@dataclass(frozen=True)
class A2C(Shared):
    """A2C hyperparameters (Mnih et al. 2016, synchronous; defaults: SB3/RL-Zoo's A2C): one
    policy-gradient step per rollout on n-step (gae_lambda=1) or GAE advantages."""

    learning_rate: float = 7e-4
    anneal_lr: bool = False
    optimizer: Literal["adam", "rmsprop"] = "rmsprop"
    normalize_advantages: bool = False
    ent_coef: float = 0.0
    gae_lambda: float = 1.0
    """1: n-step returns bootstrapped at the end of the rollout (A2C as published); < 1: GAE."""

    def __post_init__(self):
        super().__post_init__()
        _check_gae_lambda(self.gae_lambda)


@dataclass(frozen=True)
class IMPALA(VTraceLevels, Shared):
    """IMPALA's learner (Espeholt et al. 2018; defaults: its Atari settings, section 5 and
    appendix): one policy-gradient step per rollout on V-trace advantages, the value function
    regressed on V-trace targets, RMSProp, no advantage normalization. The behaviour policy is
    what the actor recorded (``extras["log_prob"]``), the target policy the current
    parameters: in one process they agree (rho = 1, A2C with n-step returns); asynchronous
    actors lag, which V-trace corrects."""

    learning_rate: float = 6e-4
    optimizer: Literal["adam", "rmsprop"] = "rmsprop"
    optimizer_eps: float = 0.01
    """Epsilon of RMSProp (the paper's 0.01 sits inside the square root, TF's RMSProp; here it
    is added outside it, as for the family's other members)."""
    max_grad_norm: float = 40.0
    normalize_advantages: bool = False
    ent_coef: float = 0.01
    gae_lambda: float = 1.0
    """V-trace's lambda (c_t = lambda min(c_bar, rho_t)); 1 as published. Named as the
    family's trace lambda: on-policy V-trace is GAE with this lambda."""

    def __post_init__(self):
        super().__post_init__()
        _check_gae_lambda(self.gae_lambda)
        self._check_levels()


@dataclass(frozen=True)
class Reinforce(Shared):
    """REINFORCE (Williams 1992) as TF-Agents and JORLDY ship it: Monte-Carlo returns of whole
    episodes, optionally minus a learned value baseline, one policy-gradient step per rollout.

    Each rollout's steps whose episode has not ended yet are kept in the learner state and
    learned at the next rollout, once their returns are known: one update later, so slightly
    off-policy (no importance correction; ``losses/approx_kl`` then mixes two behaviour
    policies)."""

    learning_rate: float = 1e-3
    anneal_lr: bool = False
    baseline: bool = True
    """Subtract a learned value baseline (trained with vf_coef) from the returns."""

    def __post_init__(self):
        super().__post_init__()
        require(self.core == "none", "algo.core", "REINFORCE has no recurrent variant here")


class Family(NamedTuple):
    """The flags that tell the family's members apart, read from any of their configs."""

    estimator: str  # "gae" | "vtrace" | "monte_carlo"
    objective: str  # "clip" | "kl_penalty" | "pg"
    gae_lambda: float
    num_epochs: int
    num_minibatches: int
    baseline: bool

    @classmethod
    def of(cls, cfg: Shared) -> Family:
        if isinstance(cfg, Reinforce):
            estimator = "monte_carlo"
        elif isinstance(cfg, IMPALA):
            estimator = "vtrace"
        else:
            estimator = getattr(cfg, "advantage", "gae")
        return cls(
            estimator=estimator,
            objective=getattr(cfg, "objective", "pg"),
            gae_lambda=getattr(cfg, "gae_lambda", 1.0),
            num_epochs=getattr(cfg, "num_epochs", 1),
            num_minibatches=getattr(cfg, "num_minibatches", 1),
            baseline=getattr(cfg, "baseline", True),
        )


def check_config(run) -> None:
    """Cross-section checks of a ``RunConfig`` using an actor-critic algorithm."""
    family = Family.of(run.algo)
    if run.algo.core != "none":
        require(
            run.env.num_envs % family.num_minibatches == 0,
            "algo.num_minibatches",
            f"with a recurrent core minibatches are whole sequences of envs: env.num_envs="
            f"{run.env.num_envs} is not divisible by {family.num_minibatches}",
        )
        require(
            run.algo.burn_in < run.train.num_steps,
            "algo.burn_in",
            f"must be < train.num_steps={run.train.num_steps}, got {run.algo.burn_in}",
        )
        return
    batch = run.env.num_envs * run.train.num_steps
    require(
        batch % family.num_minibatches == 0,
        "algo.num_minibatches",
        f"the batch of env.num_envs x train.num_steps = {run.env.num_envs} x "
        f"{run.train.num_steps} = {batch} is not divisible by {family.num_minibatches}",
    )


def check_spec(spec) -> None:
    """The family handles Discrete and Box action spaces, masked or not: nothing to refuse."""
