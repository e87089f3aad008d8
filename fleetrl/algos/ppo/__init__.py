"""PPO (Schulman et al. 2017) as in BatchPPO: clipped objective or adaptive KL penalty."""

from fleetrl.algos.ppo.config import Config, check_config, check_spec
from fleetrl.algos.ppo.learner import PPOState, make

__all__ = ["Config", "PPOState", "check_config", "check_spec", "make"]
