"""Callbacks the SB3 peer scripts share: evaluation that times itself, and a stop rule that
records when (wall time, env steps) the threshold was reached."""

import time

from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold


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
