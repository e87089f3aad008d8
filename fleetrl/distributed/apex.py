"""Ape-X (Horgan et al. 2018) on Ray: the value-based family's async mode.

Actors with a ladder of epsilons (`fleetrl.algos.dqn.apex.epsilon_ladder`) act with the
learner's latest online network, cut their segments into n-step windows, give each its
initial priority, and send them to a replay actor (`ReplayActor`) themselves; the learner
never sees their transitions. Per iteration (``env.num_envs x train.num_steps`` env steps
reported by the actors) the learner asks the replay for ``algo.gradient_steps`` prioritized
batches at once, takes that many gradient steps in one compiled scan, and sends the new
priorities back. Every member of the family (double, dueling, n-step, C51/QR/IQN, Munchausen,
noisy) runs this way: the math is `fleetrl.algos.dqn.apex`'s.

The replay is not checkpointed: a resumed run refills it from its actors before it learns
again (``algo.learning_starts`` windows).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fleetrl.algos.dqn import apex, learner
from fleetrl.distributed import DistributedError
from fleetrl.distributed.calls import Gathered, TrainCall
from fleetrl.distributed.replay import ReplayActor
from fleetrl.programs import Carry
from fleetrl.replay import Window


class ApexState(NamedTuple):
    """The Ape-X learner's state: the value family's without its replay (``env_steps`` and
    ``params`` are what `learner.actor_params` reads; ``opt_state`` what `learner.health`
    reads)."""

    params: Any
    target_params: Any
    opt_state: Any
    gradient_steps: Any
    env_steps: Any


def ladder(run) -> np.ndarray:
    """The actors' exploration rates: the epsilon ladder, or 0 with noisy nets (which explore
    by their noise)."""
    rates = apex.epsilon_ladder(run.dist.actors)
    return np.zeros_like(rates) if run.algo.noisy else rates


def make_apex_pool(run, ray):
    """The replay actor, on the learner's node (it is the run's memory: a node removed must not
    take it), and ``dist.actors`` actors on the epsilon ladder that feed it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from fleetrl.distributed.pool import ActorPool

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    replay = (
        ray.remote(ReplayActor)
        .options(num_cpus=0, max_restarts=0, scheduling_strategy=here)
        .remote(run.algo.buffer_size, run.train.seed or 0)
    )
    rates = ladder(run)
    pool = ActorPool(ray, run, lambda index: {"epsilon": float(rates[index]), "replay": replay})
    pool.extra = (replay,)
    return pool, replay


def learner_algorithm(algo, run, spec):
    """``(algo, parts)``: the value family's `Algorithm` with the Ape-X learner's state (no
    device replay; ``actor_params``, ``act`` and ``health`` are the family's), and its parts."""
    parts = learner.build_parts(run, spec)

    def init(key):
        state = apex.init_learner(parts, key)
        return ApexState(*state, env_steps=jnp.int32(0))

    return algo._replace(init=init, learn=None), parts


def make_steps(parts):
    """``steps(state, windows[G], weights[G], keys[G])``: G gradient steps in one scan."""
    step = apex.make_learner_step(parts)

    def steps(state: apex.LearnerState, windows, weights, keys):
        def body(state, xs):
            state, priorities, metrics = step(state, *xs)
            return state, (priorities, metrics)

        state, (priorities, metrics) = jax.lax.scan(body, state, (windows, weights, keys))
        return state, priorities, metrics

    return jax.jit(steps)


class ApexCall(TrainCall):
    """The train call of an Ape-X run (see the module's docstring): `TrainCall`'s async
    gathering of the actors' reports, without drops (replay data is off-policy by design; its
    lag is still logged), and its own learner step."""

    def __init__(self, run, pool, algo, parts, replay):
        super().__init__(run, pool, algo)
        self.parts, self.cfg, self.replay = parts, run.algo, replay
        self.steps = make_steps(parts)
        self.limit = math.inf
        self.epsilon_min = float(np.min(ladder(run)))

    def learn(self, carry: Carry, gathered: Gathered) -> tuple[Carry, dict]:
        """Target refresh, then ``gradient_steps`` prioritized steps once the replay is warm."""
        cfg, state = self.cfg, jax.tree.map(lambda x: x[0], carry.algo_state)
        before = int(state.env_steps)
        after = before + self.run.steps_per_iteration
        online = apex.target_update(cfg, apex.LearnerState(*state[:4]), before, after)
        key, step_key = jax.random.split(carry.key[0])
        metrics = {"train/skipped_updates": np.int32(0), "train/nonfinite_streak": np.int32(0)}
        if after >= cfg.learning_starts:
            beta = float(learner.priority_beta(cfg, after, self.parts.total_steps))
            least = min(cfg.learning_starts, cfg.buffer_size) or 1
            batch = self.ray_get(
                self.replay.sample.remote(cfg.batch_size, cfg.gradient_steps, beta, least)
            )
            if batch is not None:
                online, metrics = self._steps(online, batch, step_key)
                metrics["train/replay_size"] = np.float32(batch["size"])
        state = ApexState(*online, env_steps=jnp.int32(after))
        carry = Carry(jax.tree.map(lambda x: jnp.asarray(x)[None], state), (), key[None])
        metrics["train/epsilon_min"] = np.float32(self.epsilon_min)
        return carry, {name: np.asarray(value)[None] for name, value in metrics.items()}

    def _steps(self, online, batch: dict, key) -> tuple[Any, dict]:
        window = Window(**batch["window"])
        keys = jax.random.split(key, self.cfg.gradient_steps)
        online, priorities, metrics = self.steps(online, window, batch["weights"], keys)
        self.updating = self.replay.update.remote(
            batch["indices"], np.asarray(priorities), batch["generations"]
        )
        metrics = jax.device_get(metrics)
        out = {name: np.mean(value) for name, value in metrics.items()}
        out["train/skipped_updates"] = np.sum(metrics["train/skipped_updates"])
        out["train/nonfinite_streak"] = metrics["train/nonfinite_streak"][-1]
        return online, out

    updating = None
    """The replay's last priority update: waited for before the next sample (its errors
    surface there)."""

    def ray_get(self, ref):
        """A replay call's result; a replay that died or hung stops the run with why."""
        ray = self.pool.ray
        try:
            if self.updating is not None:
                ray.get(self.updating, timeout=self.run.dist.sample_timeout)
            return ray.get(ref, timeout=self.run.dist.sample_timeout)
        except (ray.exceptions.RayError, TimeoutError) as error:
            raise DistributedError(
                f"the Ape-X replay failed ({type(error).__name__}: {error}); the run stops"
            ) from None
