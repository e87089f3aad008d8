"""Callbacks the SB3 peer scripts share: a mark at the end of the first rollout (steady
steps/s from there), evaluation that times itself, and a stop rule that records when (wall
time, env steps) the threshold was reached."""

import time

from stable_baselines3.common.callbacks import (
    BaseCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)


class FirstRollout(BaseCallback):
    """Records wall time and step count when the first rollout has been collected."""

    def __init__(self):
        super().__init__()
        self.mark = None

    def _on_step(self):
        return True

    def _on_rollout_end(self):
        if self.mark is None:
            self.mark = (time.perf_counter(), self.model.num_timesteps)

    def steps_per_second(self):
        """Env steps per second from the end of the first rollout until now."""
        t1, n1 = self.mark
        return (self.model.num_timesteps - n1) / (time.perf_counter() - t1)


class TimedEval(EvalCallback):
    """EvalCallback that also accumulates the wall time spent evaluating."""

    eval_s = 0.0

    def _on_step(self):
        t = time.perf_counter()
        cont = super()._on_step()
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.eval_s += time.perf_counter() - t
        return cont


class StopAtThreshold(StopTrainingOnRewardThreshold):
    """StopTrainingOnRewardThreshold that records when (wall, steps) the threshold was hit."""

    hit = None

    def _on_step(self):
        cont = super()._on_step()
        if not cont and self.hit is None:
            self.hit = (time.time(), self.num_timesteps)
        return cont
