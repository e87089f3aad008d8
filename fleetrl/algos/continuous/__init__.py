"""The continuous-control off-policy family (DESIGN.md: config, networks, losses, learner):
DDPG, TD3 and SAC share one learner and differ by flags (`config.Family`): the number of
critics, the actor's delay, target policy smoothing, exploration noise, and SAC's squashed
Gaussian actor with its tuned temperature."""

from fleetrl.algos.continuous.learner import ContinuousState, make

TEST_CONFIG = {"learning_starts": 0, "buffer_size": 512, "batch_size": 16}
"""Overrides of ``algo`` that make a preset of this family tiny for tests: learn at once, a
small buffer and batch."""

__all__ = ["TEST_CONFIG", "ContinuousState", "make"]
