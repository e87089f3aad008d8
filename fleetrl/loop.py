"""The training loop: compiled calls on the run's schedule of logging, evaluation, checkpoints
and stops. `fleetrl.train.train` builds the envs and programs and hands them to a `Loop`."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from fleetrl import checkpoint
from fleetrl.build import host_metrics
from fleetrl.config import RunConfig, to_dict
from fleetrl.envs.errors import EnvInterruptedError, EnvPoolError
from fleetrl.evaluate import episode_limit, finished_means
from fleetrl.interrupts import STOP_REQUESTED, CallWatchdog, StopSignals
from fleetrl.programs import eval_keys, frozen_arg


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    """completed | threshold (stop_at_return reached) | interrupted (signal) | stopped |
    diverged (updates no longer finite; the last checkpoint predates that) | unsaved
    (the final checkpoint could not be written, see ``detail``)."""
    env_steps: int
    """Env steps per seed."""
    eval_returns: np.ndarray | None
    """Last evaluation return per seed; for a seed that reached ``train.stop_at_return``, the
    evaluation that reached it (its parameters stayed as they were then)."""
    wall_time: float
    compile_time: float
    steps_per_second: float
    """Env steps per second summed over seeds, compiled calls only."""
    detail: str = ""
    """Why a ``diverged`` run stopped, or why an ``unsaved`` one could not save."""
    signal: int | None = None
    """The signal that stopped an ``interrupted`` run (SIGINT, SIGTERM)."""
    seeds: tuple[int, ...] = ()
    """The seed of each of the run's seeds, in order (``train.seed + i``)."""


DIVERGED_STREAK = 64
"""A seed whose last this many updates, and at least two iterations' worth, were all skipped
as non-finite has diverged: its parameters no longer produce a finite loss, and waiting
longer only burns time."""


class Loop:
    """One session of a run's training loop: the state its steps share, and the steps.

    ``programs``: the compiled ``(train_call, evaluate)``; ``carry`` and ``counters`` as
    `fleetrl.train` restored or made them (``counters["solved_returns"]`` included).
    """

    def __init__(self, run: RunConfig, run_dir: Path, built, programs, carry, counters, logger):
        self.run, self.run_dir, self.logger = run, run_dir, logger
        self.env, self.eval_env, self.algo = built
        self.train_call, self.evaluate = programs
        self.carry, self.counters = carry, counters
        self.num_seeds, self.spi = run.train.num_seeds, run.steps_per_iteration
        self.threshold = run.train.stop_at_return
        self.watchdog = CallWatchdog(run_dir, run.train.call_timeout)
        self.slowest = self.run_time = 0.0  # seconds: the slowest call, all calls
        self.metrics: dict[str, np.ndarray] = {}  # of the last call
        self.divergence: list[str] = []  # why the run diverged, if it did
        self.save_errors: list[str] = []  # checkpoints that could not be written (training on)
        self.warned_seeds: set[int] = set()
        self.warned_unfinished = False
        self.console, self.signal = None, None
        self.saved_step = -1  # env steps of the last checkpoint this session committed
        self.eval_returns, self.last_eval_step = None, -1
        self.first_iteration = counters["iteration"]
        self.record_video = None
        if run.log.video_every:
            from fleetrl.visualize import make_training_recorder

            self.record_video = make_training_recorder(
                run, self.algo, self.env.spec, episodes=run.log.video_episodes
            )
            counters.setdefault("next_video", run.log.video_every)

    def run_schedule(self, console, stop_after_steps: int | None) -> str:
        """Train until the schedule, a threshold, a signal or a divergence ends the run; write
        the final evaluation and checkpoint. Returns the status (see `TrainResult`)."""
        from fleetrl.progress import Progress

        self.console, status = console, "completed"
        if all_solved(self.counters, self.threshold):  # resumed after it stopped there
            status = "threshold"
            self.eval_returns = np.array(self.counters["solved_returns"], np.float32)
        progress = Progress(console, self.run, self.counters["env_steps"]) if console else None
        on_signal = progress.on_signal if progress else None
        with StopSignals(on_signal, self.run.train.stop_grace, self.run_dir) as signals:
            try:
                while status == "completed" and not self._schedule_done():
                    try:
                        steps = self._call()
                    except EnvInterruptedError:
                        status = "interrupted"
                        break
                    status = self._after_call(steps, progress, signals, stop_after_steps)
                status = self._finish(status, signals)
                self.signal = signals.received
                return status
            finally:
                self.logger.close()
                if progress:
                    progress.stop()

    def _schedule_done(self) -> bool:
        return self.counters["iteration"] >= self.run.num_iterations

    def _call(self) -> int:
        """One compiled call, its metrics logged; the env steps per seed after it."""
        run, counters = self.run, self.counters
        call_start = time.time()
        # later calls: 20x the slowest call so far, at least the configured timeout / 5
        slowest = self.slowest
        self.watchdog.start(max(20 * slowest, call_floor(run)) if slowest else None)
        before = self.carry
        try:
            frozen = frozen_arg(run, counters["solved_returns"])
            self.carry, metrics = self.train_call(self.carry, *frozen)
            metrics = summarize(jax.device_get(metrics))
        finally:
            self.watchdog.stop()
        try:
            metrics.update(host_metrics(self.env))
        except EnvInterruptedError:  # a signal cut a host env's step short: the call trained
            self.carry = before  # on zeros from then on, so the run keeps the state before it
            raise
        call_time = time.time() - call_start
        self.slowest, self.run_time = max(slowest, call_time), self.run_time + call_time
        counters["iteration"] += run.iterations_per_call
        steps = counters["env_steps"] = counters["iteration"] * self.spi
        metrics["charts/sps"] = np.float64(
            run.iterations_per_call * self.spi * self.num_seeds / call_time
        )
        self.logger.write(steps, metrics)
        self.metrics = metrics
        return steps

    def _after_call(self, steps: int, progress, signals, stop_after_steps) -> str:
        """The schedule after a call: divergence, evaluation, video, progress, threshold,
        checkpoint, signals. Returns the status, ``completed`` to go on."""
        run, counters, metrics = self.run, self.counters, self.metrics
        ipc = run.iterations_per_call
        if _diverged(metrics, steps, ipc, self.divergence, self.warned_seeds, self.console):
            return "diverged"
        if run.train.eval_every and steps >= counters["next_eval"]:
            self.eval_returns, self.last_eval_step = self._evaluate(steps), steps
            while counters["next_eval"] <= steps:
                counters["next_eval"] += run.train.eval_every
        if self.record_video and steps >= counters["next_video"]:
            self.record_video(self.carry.algo_state, steps, self.run_dir)
            while counters["next_video"] <= steps:
                counters["next_video"] += run.log.video_every
        if progress:
            progress.update(steps, metrics, self.eval_returns)
        if all_solved(counters, self.threshold):
            return "threshold"
        if (
            run.train.checkpoint_every
            and steps >= counters["next_checkpoint"]
            and not _all_skipping(metrics)  # keep the checkpoints from before
        ):
            # advanced first: the checkpoint records the next one, so that a run resumed from
            # it does not write the same checkpoint again at its first call
            while counters["next_checkpoint"] <= steps:
                counters["next_checkpoint"] += run.train.checkpoint_every
            if not self._save():
                return "diverged"
        if signals.received is not None:
            return "interrupted"
        if stop_after_steps is not None and steps >= stop_after_steps:
            return "stopped"
        return "completed"

    def _finish(self, status: str, signals) -> str:
        """The final evaluation (a run that completed its schedule) and checkpoint."""
        steps = self.counters["env_steps"]
        if status == "completed" and self.last_eval_step != steps:
            self.eval_returns = self._evaluate(steps)
            if signals.received is not None:  # a stop signal during it: the run was interrupted
                status = "interrupted"
        if status != "diverged" and _all_skipping(self.metrics):
            self.divergence.append(
                f"the run stopped at step {steps:,} while every update was skipped as "
                "non-finite; no checkpoint was written then"
            )
            return "diverged"
        if status == "diverged":
            return status
        if self.saved_step == steps:  # a periodic checkpoint of this very state
            return status
        errors_before = len(self.save_errors)
        if not self._save():
            return "diverged"
        if len(self.save_errors) > errors_before:
            return "unsaved"  # trained, but the final checkpoint is not on disk
        return status

    def _evaluate(self, steps: int) -> np.ndarray:
        """Evaluate every seed and log it; the returns, a solved seed's the one that solved it
        (see `note_solved`). The mean is over the episodes that ended: NaN, with a warning,
        when none did (an env that never ends) or when a host eval env failed (a crash, a
        hung step past ``env.step_timeout``): training goes on (reliability case F12)."""
        run = self.run
        self.watchdog.start(run.train.call_timeout, "an evaluation")  # a host env may hang in it
        try:
            returns, lengths, finished = jax.device_get(
                self.evaluate(self.carry.algo_state, eval_keys(run, steps))
            )
        finally:  # an exception must not leave the watchdog to kill the process later
            self.watchdog.stop()
        finished = np.asarray(finished, bool)
        try:
            host_metrics(self.eval_env)
        except EnvInterruptedError:  # a stop signal cut it short: no evaluation, the run stops
            return np.full(self.num_seeds, np.nan, np.float32)
        except EnvPoolError as error:
            finished = np.zeros_like(finished)  # what came back after the failure is zeros
            self._eval_failed(steps, error)
        else:
            if not finished.all():
                self._warn_unfinished(steps, finished)
        mean, mean_length = finished_means(returns, lengths, finished)
        self.logger.write(
            steps,
            {
                "eval/episodic_return": mean,
                "eval/episodic_length": mean_length,
                "eval/finished_fraction": finished.mean(1),
            },
        )
        solved, reported = note_solved(self.counters["solved_returns"], mean, self.threshold)
        self.counters["solved_returns"] = solved
        return reported

    def _eval_failed(self, steps: int, error: EnvPoolError) -> None:
        """A host eval env failed: warn, and replace its envs for the next evaluation (unless
        a stop signal arrived: the run is stopping)."""
        if STOP_REQUESTED.is_set():
            return
        first = str(error).splitlines()[0]
        self._warn(
            f"the evaluation at step {steps:,} failed ({type(error).__name__}: {first}); "
            "eval/episodic_return is NaN for it and training goes on"
        )
        self.eval_env.restart()

    def _warn_unfinished(self, steps: int, finished: np.ndarray) -> None:
        if self.warned_unfinished:
            return
        self.warned_unfinished = True
        limit = episode_limit(self.run.train.eval_max_steps, self.eval_env.spec)
        self._warn(
            f"at step {steps:,}, {int((~finished).sum())} of {finished.size} evaluation episodes "
            f"did not end within {limit} steps (train.eval_max_steps, or the env's time limit); "
            "eval/episodic_return averages those that ended, NaN where none did "
            "(eval/finished_fraction); said once"
        )

    def _warn(self, message: str) -> None:
        message = f"fleetrl: warning: {message}"
        if self.console:
            self.console.print(message, markup=False)
        else:
            print(message, file=sys.stderr)

    def _save(self) -> bool:
        """Commit a checkpoint; refuse (False) when a parameter is NaN or Inf."""
        counters, run_dir = self.counters, self.run_dir
        nonfinite = nonfinite_parameters(self.algo.health(self.carry.algo_state).params)
        if nonfinite:
            self.divergence.append(
                f"parameters are no longer finite at step {counters['env_steps']:,} "
                f"({', '.join(nonfinite[:4])}{', ...' if len(nonfinite) > 4 else ''})"
            )
            return False
        meta = {
            "counters": counters,
            "config": to_dict(self.run),  # what resume compares with (see fleetrl.train)
            "env_id": self.run.env.id,
            "num_seeds": self.num_seeds,
        }
        try:
            checkpoint.save(run_dir, counters["env_steps"], {"carry": self.carry}, meta)
            self.saved_step = counters["env_steps"]
        except checkpoint.CheckpointWriteError as error:  # disk full, quota, permissions
            message = f"fleetrl: warning: {error}"  # names the bytes needed, the intact one
            print(message, file=sys.stderr)
            self.save_errors.append(message)
        except OSError as error:  # committed; removing the oldest one (retention) failed
            print(
                f"fleetrl: warning: the checkpoint of step {counters['env_steps']:,} is "
                f"committed, but removing older ones failed: {error}",
                file=sys.stderr,
            )
        return True

    def result(self, status: str, compile_time: float, started: float) -> TrainResult:
        """The session's `TrainResult`, also written to ``summary.json``."""
        steps_here = (self.counters["iteration"] - self.first_iteration) * self.spi
        steps_here *= self.num_seeds
        details = {
            "diverged": "; ".join(self.divergence),
            "unsaved": "; ".join(self.save_errors[-1:]),
        }
        result = TrainResult(
            self.run_dir,
            status,
            self.counters["env_steps"],
            self.eval_returns,
            time.time() - started,
            compile_time,
            steps_here / self.run_time if self.run_time > 0 else math.nan,
            details.get(status, ""),
            self.signal if status == "interrupted" else None,
            tuple(self.run.train.seed + i for i in range(self.num_seeds)),
        )
        try:
            _write_summary(result)
        except OSError as error:  # a full disk: the run's outcome is still reported
            self._warn(f"could not write {self.run_dir / 'summary.json'}: {error}")
        return result


def call_floor(run: RunConfig) -> float:
    """The least a call after the first may take before the watchdog ends the run: the
    configured timeout / 5; a distributed call also gets the time to replace a hung actor
    (its pool bounds every wait itself: `fleetrl.distributed.pool`)."""
    floor = run.train.call_timeout / 5
    if run.dist.mode != "single":
        floor = max(floor, run.dist.sample_timeout + run.dist.start_timeout + 60)
    return floor


def summarize(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-seed metrics of one call: means over its iterations; episode means over episodes;
    skipped updates summed; the non-finite streak as it stands after the last iteration."""
    metrics = dict(metrics)
    count = metrics.pop("episodes/count").sum(axis=1)
    returns = metrics.pop("episodes/return_sum").sum(axis=1)
    lengths = metrics.pop("episodes/length_sum").sum(axis=1)
    out = {name: value.mean(axis=1) for name, value in metrics.items()}
    if "train/skipped_updates" in metrics:
        out["train/skipped_updates"] = metrics["train/skipped_updates"].sum(axis=1)
        out["train/nonfinite_streak"] = metrics["train/nonfinite_streak"][:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["charts/episodic_return"] = np.where(count > 0, returns / count, np.nan)
        out["charts/episodic_length"] = np.where(count > 0, lengths / count, np.nan)
    return out


def solved_returns(
    saved: list | None, num_seeds: int, threshold: float | None
) -> list[float | None]:
    """Per seed, the evaluation return with which it reached ``threshold`` (None: not yet),
    from a checkpoint's record (``saved``; None for a fresh run or an older checkpoint). A
    record below the threshold of a resumed run (it was raised, or removed) is dropped: that
    seed learns again."""
    saved = list(saved) if saved is not None else [None] * num_seeds
    kept = threshold is not None
    return [r if kept and r is not None and r >= threshold else None for r in saved]


def note_solved(
    solved: list[float | None], returns: np.ndarray, threshold: float | None
) -> tuple[list[float | None], np.ndarray]:
    """``(solved, reported)`` after an evaluation of ``returns`` ``[S]``: the seeds that reach
    ``threshold`` for the first time are recorded; a solved seed reports the return that
    solved it (it stopped learning then, see `make_train_call`)."""
    values = np.asarray(returns, dtype=float).tolist()
    solved = [  # `not v >= threshold`: a NaN evaluation (no episode ended) solves nothing
        r if r is not None or threshold is None or not v >= threshold else v
        for r, v in zip(solved, values, strict=True)
    ]
    reported = [r if r is not None else v for r, v in zip(solved, values, strict=True)]
    return solved, np.array(reported, np.float32)


def all_solved(counters: dict, threshold: float | None) -> bool:
    return threshold is not None and all(r is not None for r in counters["solved_returns"])


def nonfinite_parameters(params) -> list[str]:
    """Names of the parameter arrays holding a NaN or Inf (checked on the host before saving);
    ``params``: what the algorithm's `Health` names (all seeds)."""
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    return [
        jax.tree_util.keystr(path)
        for path, leaf in leaves
        if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all()
    ]


def _all_skipping(metrics) -> bool:
    """Every seed's latest update was skipped as non-finite: a checkpoint now would only
    rotate out the ones from before."""
    streak = metrics.get("train/nonfinite_streak")
    return streak is not None and bool(np.all(np.asarray(streak) > 0))


def _diverged(
    metrics, steps: int, iterations: int, divergence: list[str], warned: set[int], console
) -> bool:
    """True when every seed's last `DIVERGED_STREAK` updates, and at least two iterations'
    worth, were skipped as non-finite; warns once about a seed that diverged while others
    still learn. ``iterations``: iterations in the call the metrics summarize."""
    streak = metrics.get("train/nonfinite_streak")
    if streak is None:
        return False
    # a fully skipped call skipped every update: its count per iteration is the updates per
    # iteration (320 for the MuJoCo presets, 16 for ppo-cartpole)
    per_iteration = np.asarray(metrics["train/skipped_updates"]) / iterations
    limit = np.maximum(DIVERGED_STREAK, 2 * per_iteration)
    bad = [int(i) for i in np.flatnonzero(np.asarray(streak) >= limit)]
    if not bad:
        return False
    losses = ", ".join(
        f"{name}={np.asarray(value).tolist()}"
        for name, value in metrics.items()
        if name.startswith("losses/") and not np.all(np.isfinite(value))
    )
    why = (
        f"the last {int(np.max(np.asarray(streak)[bad]))} updates had a NaN or Inf gradient "
        f"at step {steps:,}"
        + (f" ({losses})" if losses else "")
        + "; lower algo.learning_rate or algo.max_grad_norm"
    )
    if len(bad) == len(np.asarray(streak)):
        divergence.append(why)
        return True
    new = [i for i in bad if i not in warned]
    if new:
        warned.update(new)
        message = f"fleetrl: warning: seed(s) {new} diverged: {why}; the other seeds go on"
        (console.print(message, markup=False) if console else print(message, file=sys.stderr))
    return False


def _write_summary(result: TrainResult) -> None:
    """``summary.json``: how the last session of the run ended, for people and benchmarks."""
    import json

    from fleetrl.logger import PROCESS_START
    from fleetrl.rundir import atomic_write_text

    summary = {
        "status": result.status,
        **({"detail": result.detail} if result.detail else {}),
        "env_steps": result.env_steps,
        "seeds": list(result.seeds),
        "eval_returns": None  # NaN (no evaluation episode ended) as null: strict JSON
        if result.eval_returns is None
        else [x if math.isfinite(x) else None for x in np.asarray(result.eval_returns).tolist()],
        "wall_time": result.wall_time,
        "compile_time": result.compile_time,
        "steps_per_second": result.steps_per_second,
        "process_time": time.time() - PROCESS_START,
    }
    atomic_write_text(result.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
