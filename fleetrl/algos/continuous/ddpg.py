"""DDPG (Lillicrap et al. 2016) as TD3's authors re-tuned it and Stable-Baselines3 ships it:
one critic, a deterministic tanh actor with Gaussian exploration noise, Polyak targets."""

from fleetrl.algos.continuous import TEST_CONFIG, ContinuousState, make
from fleetrl.algos.continuous.config import DDPG as Config
from fleetrl.algos.continuous.config import check_config, check_spec

__all__ = ["TEST_CONFIG", "Config", "ContinuousState", "check_config", "check_spec", "make"]
