"""TD3 (Fujimoto et al. 2018): twin critics with a min target, target policy smoothing, the
actor and targets updated every second critic update."""

from fleetrl.algos.continuous import TEST_CONFIG, ContinuousState, make
from fleetrl.algos.continuous.config import TD3 as Config
from fleetrl.algos.continuous.config import check_config, check_spec

__all__ = ["TEST_CONFIG", "Config", "ContinuousState", "check_config", "check_spec", "make"]
