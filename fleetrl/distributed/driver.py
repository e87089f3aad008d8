"""The learner side of a distributed run: what `fleetrl.train` builds and compiles in place of
the single-process envs and train call, so that `fleetrl.loop.Loop` (logging, evaluation,
checkpoints, resume, signals) runs every mode the same way.

One iteration = one learner update on ``env.num_envs x train.num_steps`` env steps, as in a
single-process run: ``dist.actors`` segments of ``num_envs / actors`` envs each.
- sync: every actor samples with the current parameters; the learner waits for one segment
  from each, learns, and publishes the new parameters once (``ray.put``).
- async: an actor is asked for its next segment as soon as it returns one, with whatever
  parameters are newest then; the learner learns on the first segments ready and never
  waits for a slow actor. A segment's policy lag (learner version now minus the version it
  was acted with) is logged (``dist/policy_lag``); one older than ``dist.max_policy_lag`` is
  dropped (``dist/dropped_segments``). The value-based family runs as Ape-X (`apex`).
The learner state is the run's truth: checkpoints hold it alone, and actors are rebuilt from
it on resume.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import jax

from fleetrl import envs
from fleetrl.algos import get_algorithm
from fleetrl.config import RunConfig
from fleetrl.distributed.calls import TrainCall
from fleetrl.programs import Carry, compile_program, eval_keys, over_seeds
from fleetrl.types import EnvSpec


class Session:
    """What the driver sees as the run's training env: its spec, and the cluster and actors
    that step it (``replay``: Ape-X's replay actor, else None). ``close`` stops the actors
    and a cluster started here."""

    def __init__(self, run: RunConfig, spec: EnvSpec):
        from fleetrl.distributed.cluster import Cluster

        self.spec, self.run = spec, run
        needed = run.dist.actors * run.dist.actor_cpus
        self.cluster = Cluster(run.dist, needed)
        self.pool = self.replay = None
        try:
            self.cluster.require_cpus(needed)
            self.pool, self.replay = make_pool(run, self.cluster.ray)
        except BaseException:
            self.cluster.close()
            raise

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.cluster.close()


def make_pool(run: RunConfig, ray):
    """``(pool, replay)``: the run's actors (and Ape-X's replay actor, else None)."""
    if uses_apex(run):
        from fleetrl.distributed.apex import make_apex_pool

        return make_apex_pool(run, ray)
    from fleetrl.distributed.pool import ActorPool

    return ActorPool(ray, run), None


def uses_apex(run: RunConfig) -> bool:
    """The value-based family's async mode is Ape-X."""
    return run.dist.mode == "async" and run.algorithm == "dqn"


def learner_side(run: RunConfig, algo, spec: EnvSpec):
    """``(algo, init, parts)``: the learner's algorithm (Ape-X's keeps no device replay), its
    ``init(keys[1]) -> Carry`` (no env carry: actors hold the envs), and Ape-X's parts (else
    None). Also what restores a distributed run's checkpoint (`fleetrl.restore`)."""
    parts = None
    if uses_apex(run):
        from fleetrl.distributed.apex import learner_algorithm

        algo, parts = learner_algorithm(algo, run, spec)

    def init_one(key):
        init_key, _, loop_key = jax.random.split(key, 3)  # the keys a single-process run uses
        return Carry(algo.init(init_key), (), loop_key)

    return algo, jax.jit(over_seeds(init_one)), parts


def build(run: RunConfig):
    """``(session, eval_env, algo)``: the learner's evaluation env and algorithm (built for the
    whole batch, ``env.num_envs``), and the Ray session whose actors step the training envs."""
    from fleetrl.build import _eval_env_config, close_envs

    module = get_algorithm(run.algorithm)
    eval_env = envs.make(_eval_env_config(run), num_envs=run.train.eval_episodes)
    try:
        spec = dataclasses.replace(eval_env.spec, num_envs=run.env.num_envs)
        module.check_spec(spec)
        session = Session(run, spec)
    except BaseException:
        close_envs(eval_env)
        raise
    return session, eval_env, module.make(run, spec)


def compile_run(run: RunConfig, session: Session, eval_env, algo):
    """Futures of ``(init, train_call, evaluate)`` as `fleetrl.programs.compile_run` gives them;
    the train call gathers segments from the actors and runs the compiled learner update."""
    from fleetrl.evaluate import make_evaluate
    from fleetrl.programs import seed_keys

    algo, init, parts = learner_side(run, algo, session.spec)
    keys = (seed_keys(run),)
    init_future, carry = compile_program("dist-init", run, session, init, keys, light=True)
    evaluate = jax.jit(over_seeds(make_evaluate(algo, eval_env, run.train.eval_max_steps or None)))
    args = (carry.algo_state, eval_keys(run, 0))
    evaluate_future = compile_program("evaluate", run, eval_env, evaluate, args, light=True)[0]
    if parts is not None:
        from fleetrl.distributed.apex import ApexCall

        call = ApexCall(run, session.pool, algo, parts, session.replay)
    else:
        call = TrainCall(run, session.pool, algo)
    train_future = concurrent.futures.Future()
    train_future.set_result(call)
    return init_future, train_future, evaluate_future
