"""What Ray costs a distributed run, piece by piece: `dist_speed.py --part overhead`.

Per segment, the round trip of an actor method that returns a segment it already holds (a
`fleetrl.distributed.actor.SegmentActor` whose sampling costs nothing), split into the call and
its scheduling (a method returning None), the actor's fetch of the parameters it is passed, the
segment's way back (pickle protocol 5 in the actor, Ray's transport, unpickling here), and what
the learner's ``ray.get`` of a finished segment costs. Per update, ``ray.put`` of the actor
parameters. Per wake of the learner, ``ray.wait`` over K outstanding segments. Then the learner
update and the actor's sampling, both in this process, for the projection. Medians of many
repetitions; every figure in microseconds unless its name says otherwise.

Also the affinity fix that ``dist_speed.py --fix`` applies without editing fleetrl
(`restore_affinity`; `patch_affinity`, a Ray worker setup hook).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import statistics
import time

import numpy as np

CARTPOLE = "ppo-cartpole-gym"
ATARI_FRAME = (4, 84, 84)  # a stacked uint8 Atari observation, for the large payload


def restore_affinity() -> None:
    """Give every thread of this process the process's CPUs back: the fix suggested for
    `fleetrl.xla_cpu.use_one_xla_thread`, which pins the calling thread to the last CPU while
    XLA starts its pool, so the pool's thread (and every thread started meanwhile) stays there;
    every actor's and the learner's XLA thread then shares that one core."""
    cpus = os.sched_getaffinity(0)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def patch_affinity() -> None:
    """A Ray worker setup hook (``--affinity-fix``): `restore_affinity` after each
    ``use_one_xla_thread`` of this process (a `SegmentActor` calls it when it starts)."""
    from fleetrl import xla_cpu

    original = xla_cpu.use_one_xla_thread

    def fixed() -> None:
        original()
        restore_affinity()

    xla_cpu.use_one_xla_thread = fixed


class Echo:
    """A Ray actor standing in for a `SegmentActor` whose sampling costs nothing."""

    def __init__(self, segment: dict):
        self.segment = segment

    def noop(self) -> None:
        return None

    def take(self, actor_params, version: int) -> None:
        return None  # Ray fetched and unpickled ``actor_params`` before the call

    def give(self) -> dict:
        return self.segment

    def sample(self, actor_params, version: int) -> dict:
        return {**self.segment, "version": version}

    def hold(self, seconds: float) -> None:
        time.sleep(seconds)


def median_us(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def run_config(preset: str, args: list[str]):
    from fleetrl.cli import parse_run_config

    return parse_run_config(preset, args, "dist_speed")


def real_segment(preset: str, args: list[str], num_actors: int):
    """``(segment, actor)``: what actor 0 of ``num_actors`` returns, and that actor, built here."""
    from fleetrl.config import dump_yaml
    from fleetrl.distributed.actor import SegmentActor

    run = run_config(preset, [*args, "--dist.mode", "sync", "--dist.actors", str(num_actors)])
    actor = SegmentActor(dump_yaml(run), 0, num_actors, 0)
    params = initial_params(actor.algo)
    actor.sample(params, 0)  # compiles
    return actor.sample(params, 0), actor, params


def initial_params(algo) -> dict:
    import jax

    state = algo.init(jax.random.PRNGKey(0))
    return jax.tree.map(np.asarray, algo.actor_params(state))


def widened(segment: dict, times: int) -> dict:
    """``segment`` with ``times`` as many envs (its rollout tiled along the env axis)."""
    rollout = {
        name: None if value is None else _tile(value, times)
        for name, value in segment["rollout"].items()
    }
    return {**segment, "rollout": rollout, "env_steps": segment["env_steps"] * times}


def _tile(value, times: int):
    import jax

    return jax.tree.map(lambda x: np.concatenate([x] * times, axis=1) if x.ndim >= 2 else x, value)


def atari_like(segment: dict, num_steps: int, num_envs: int) -> dict:
    """A segment of ``num_steps x num_envs`` with stacked uint8 frames as obs and next_obs."""
    rng = np.random.default_rng(0)
    shape = (num_steps, num_envs, *ATARI_FRAME)
    small = segment["rollout"]

    def cut(x):
        reps = -(-num_envs // x.shape[1])
        return np.concatenate([x] * reps, axis=1)[:num_steps, :num_envs]

    rollout = {name: None if v is None else _map(cut, v) for name, v in small.items()}
    rollout["obs"] = rng.integers(0, 255, shape, dtype=np.uint8)
    rollout["next_obs"] = rng.integers(0, 255, shape, dtype=np.uint8)
    return {**segment, "rollout": rollout, "env_steps": num_steps * num_envs}


def _map(fn, value):
    import jax

    return jax.tree.map(lambda x: fn(x) if np.ndim(x) >= 2 else x, value)


def nbytes(tree) -> int:
    import jax

    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def pickle5_us(segment: dict, reps: int) -> tuple[float, float]:
    """Protocol-5 pickling with out-of-band buffers (how Ray serializes NumPy arrays):
    ``(dumps, loads)`` medians."""
    import ray

    buffers: list = []

    def dumps():
        buffers.clear()
        return ray.cloudpickle.dumps(segment, protocol=5, buffer_callback=buffers.append)

    data = dumps()
    kept = list(buffers)
    return median_us(dumps, reps), median_us(lambda: pickle.loads(data, buffers=kept), reps)


def segment_costs(ray, name: str, segment: dict, params_ref, reps: int) -> dict:
    """The round trip of one segment and its parts, for one payload."""
    echo = ray.remote(Echo).options(num_cpus=0).remote(segment)
    ray.get(echo.noop.remote())
    out = {"payload": name, "bytes": nbytes(segment["rollout"]), "steps": segment["env_steps"]}
    out["call_noop"] = median_us(lambda: ray.get(echo.noop.remote()), reps)
    out["call_take_params"] = median_us(lambda: ray.get(echo.take.remote(params_ref, 1)), reps)
    out["call_give_segment"] = median_us(lambda: ray.get(echo.give.remote()), reps)
    out["round_trip"] = median_us(lambda: ray.get(echo.sample.remote(params_ref, 1)), reps)
    out["submit"] = median_us(lambda: echo.sample.remote(params_ref, 1), reps)
    ray.get(echo.noop.remote())  # drain what `submit` queued

    def ready_then_get():
        ref = echo.give.remote()
        ray.wait([ref], fetch_local=True)
        start = time.perf_counter()
        ray.get(ref)
        return time.perf_counter() - start

    gets = [ready_then_get() for _ in range(reps)]
    out["learner_get"] = statistics.median(gets) * 1e6
    out["pickle_dumps"], out["pickle_loads"] = pickle5_us(segment, reps)
    out["put_get_here"] = median_us(lambda: ray.get(ray.put(segment)), reps)
    ray.kill(echo)
    return out


def concat_us(segment: dict, count: int, reps: int) -> float:
    """`fleetrl.distributed.calls.concat_segments` of ``count`` such segments."""
    from fleetrl.distributed.calls import concat_segments, flat

    segments = [flat(dict(segment)) for _ in range(count)]
    return median_us(lambda: concat_segments(segments), reps)


def wait_us(ray, counts: tuple[int, ...], reps: int) -> dict[int, float]:
    """One wake of `fleetrl.distributed.pool.ActorPool.wait` with K segments outstanding and one
    ready: its second ``ray.wait`` (``num_returns=len(refs), timeout=0``)."""
    blocker = ray.remote(Echo).options(num_cpus=0).remote({})
    ray.get(blocker.noop.remote())
    blocker.hold.remote(600.0)
    out = {}
    for count in counts:
        refs = [blocker.noop.remote() for _ in range(count - 1)] + [ray.put(1)]
        wake = functools.partial(ray.wait, refs, num_returns=len(refs), timeout=0)
        out[count] = median_us(wake, reps)
    ray.kill(blocker)
    return out


def params_sizes() -> dict[str, dict]:
    """The actor parameters a run broadcasts: ppo-cartpole-gym's 64-64 and 256-256 (actor and
    critic: what `fleetrl.algos.actor_critic.learner.actor_params` returns), and a stand-in of
    the Nature CNN's size (1.69M float32)."""
    out = {}
    for hidden in ("64", "256"):
        run = run_config(CARTPOLE, ["--algo.hidden-sizes", hidden, hidden])
        out[f"mlp {hidden}-{hidden}"] = initial_params(_algo(run))
    rng = np.random.default_rng(0)
    shapes = [(8, 8, 4, 32), (32,), (4, 4, 32, 64), (64,), (3, 3, 64, 64), (64,)]
    shapes += [(3136, 512), (512,), (512, 6), (6,), (512, 1), (1,)]
    cnn = {f"w{i}": rng.standard_normal(shape, np.float32) for i, shape in enumerate(shapes)}
    out["nature-cnn size"] = cnn
    return out


def _algo(run):
    from fleetrl import envs
    from fleetrl.algos import get_algorithm

    env = envs.make(run.env, num_envs=1)
    try:
        return get_algorithm(run.algorithm).make(run, env.spec)
    finally:
        if hasattr(env, "close"):
            env.close()


def broadcast_costs(ray, reps: int) -> list[dict]:
    """Per parameter set: ``ray.put`` here, and an actor's fetch of the object (its
    ``take(ref)`` call minus a call without arguments)."""
    echo = ray.remote(Echo).options(num_cpus=0).remote({})
    ray.get(echo.noop.remote())
    noop = median_us(lambda: ray.get(echo.noop.remote()), reps)
    rows = []
    for name, params in params_sizes().items():
        put = median_us(lambda params=params: ray.put(params), reps)

        def put_and_fetch(params=params):
            ray.get(echo.take.remote(ray.put(params), 1))

        fetch = median_us(put_and_fetch, reps) - put - noop
        by_value = median_us(lambda params=params: ray.get(echo.take.remote(params, 1)), reps)
        rows.append(
            {
                "params": name,
                "bytes": nbytes(params),
                "put": put,
                "actor_fetch": fetch,
                "call_by_value_extra": by_value - noop,
            }
        )
    ray.kill(echo)
    return rows


def learner_costs(preset: str, args: list[str], env_multiples: tuple[int, ...], reps: int):
    """Learner update (``fleetrl.distributed.calls.learner_update``) and publish (actor params
    to the host, then ``ray.put``) of ``preset``, on batches of its rollout widened
    ``env_multiples`` times; ``(batch env steps, update ms, publish ms)`` rows."""
    segment, actor, _ = real_segment(preset, args, 1)
    rows = []
    for times in env_multiples:
        rows.append(_learner_cost(actor, widened(segment, times), times, reps))
    return rows


def _learner_cost(actor, segment: dict, times: int, reps: int) -> tuple[int, float, float]:
    import jax

    from fleetrl.algos import get_algorithm
    from fleetrl.distributed.calls import concat_segments, flat, learner_update, publishable
    from fleetrl.programs import Carry, over_seeds, raw_keys

    run = actor.run
    spec = dataclasses.replace(actor.env.spec, num_envs=run.env.num_envs * times)
    algo = get_algorithm(run.algorithm).make(run, spec)
    carry = jax.jit(over_seeds(lambda key: Carry(algo.init(key), (), key)))(raw_keys([0]))
    update, publish = learner_update(algo), publishable(algo)
    rollout = concat_segments([flat(dict(segment))])
    state = {"carry": carry}

    def step():
        state["carry"], metrics = update(state["carry"], rollout)
        jax.block_until_ready(metrics)

    update_ms = median_us(step, reps) / 1e3
    publish_ms = median_us(lambda: publish(state["carry"]), reps) / 1e3
    return segment["env_steps"], update_ms, publish_ms


def actor_rates(cases: list[tuple[str, list[str], int]], reps: int) -> list[dict]:
    """Env steps/s of one `SegmentActor` sampling alone in this process, per case
    ``(preset, args, actors)`` (the actor's share: ``env.num_envs / actors`` envs)."""
    rows = []
    for preset, args, actors in cases:
        segment, actor, params = real_segment(preset, args, actors)
        seconds = median_us(functools.partial(actor.sample, params, 0), reps, warmup=1) / 1e6
        rows.append(
            {
                "preset": preset,
                "envs": actor.env.spec.num_envs,
                "steps": segment["env_steps"],
                "sample_ms": seconds * 1e3,
                "steps_per_s": segment["env_steps"] / seconds,
            }
        )
        actor.close()
    return rows
