"""SAC (Haarnoja et al. 2018): a tanh-squashed Gaussian actor, twin critics with a soft min
target, and the entropy temperature tuned toward a target entropy."""

from fleetrl.algos.continuous import TEST_CONFIG, ContinuousState, make
from fleetrl.algos.continuous.config import SAC as Config
from fleetrl.algos.continuous.config import check_config, check_spec

__all__ = ["TEST_CONFIG", "Config", "ContinuousState", "check_config", "check_spec", "make"]
