"""Random-action stepping throughput of `fleetrl.envs.pool.EnvPool` against gymnasium's vector
envs and envpool, in one invocation.

    python benchmarks/pool_throughput.py            # --steps 3000 --burn-steps 400 --repeats 5

(a) CartPole-v1, 16 envs: EnvPool with 2 workers (defaults; pinned), with 1 worker and a
    stepping parent, AsyncVectorEnv(shared_memory=True), SyncVectorEnv, EnvPool in-process.
(b) FaultyEnv burning 100 us of CPU per step, 16 envs: the same EnvPool settings against the
    2-core limit, nominal (2 / 100 us = 20,000 steps/s) and measured (2 / the step cost of the
    bare envs, stepped in a plain loop in this process in the same race), and AsyncVectorEnv.
(c) envpool's C++ CartPole, 16 envs, if ``envpool`` imports here or in ``--envpool-python``.

Each number is env steps per second, the median over ``--repeats`` timed runs of a fixed number of
batched steps with precomputed random actions (so action sampling is not timed). Contestants of
a section are built once and timed in alternation (run 1 of each, then run 2 of each, ...), so
that the noise of our shared VM hits them alike; idle contestants sleep in blocking waits.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

# keep the top light: spawned workers import this file as __mp_main__
NUM_ENVS = 16
BURN_US = 100
TWO_CORE_LIMIT = 2 / (BURN_US * 1e-6)


def _pool(make, num_workers, **kwargs):
    from fleetrl.envs.pool import EnvPool

    if isinstance(make, str):
        return EnvPool.from_id(make, NUM_ENVS, num_workers, **kwargs)
    return EnvPool(make, NUM_ENVS, num_workers, **kwargs)


class Contestant:
    """Something with ``step(actions)``; ``close()`` after the benchmark."""

    def __init__(self, name, build, step, close):
        self.name, self.env = name, build()
        self.step, self.close_fn = step, close
        self.rates: list[float] = []

    def run(self, actions) -> None:
        step, env = self.step, self.env
        start = time.perf_counter()
        for batch in actions:
            step(env, batch)
        self.rates.append(actions.size / (time.perf_counter() - start))

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def close(self):
        self.close_fn(self.env)


def pool_contestant(name, make, num_workers, **kwargs):
    def build():
        pool = _pool(make, num_workers, **kwargs)
        pool.reset()
        return pool

    return Contestant(name, build, lambda pool, a: pool.step(a), lambda pool: pool.close())


def gym_contestant(name, vector_cls, make, **kwargs):
    def build():
        env = vector_cls([make] * NUM_ENVS, **kwargs)
        env.reset(seed=0)
        return env

    return Contestant(name, build, lambda env, a: env.step(a), lambda env: env.close())


def bare_contestant(name, make):
    """The envs alone: ``make()`` x 16 stepped in a Python loop, no pool, no checks. One core,
    so its rate is 1 / (the real cost of a step), which sets the real two-core limit."""

    class Bare:
        def __init__(self):
            self.envs = [make() for _ in range(NUM_ENVS)]
            for index, env in enumerate(self.envs):
                env.reset(seed=index)

        def step(self, actions):
            for env, action in zip(self.envs, actions.tolist(), strict=True):
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    env.reset()

        def close(self):
            for env in self.envs:
                env.close()

    return Contestant(name, Bare, lambda bare, a: bare.step(a), lambda bare: bare.close())


def race(contestants, num_steps, repeats, seed=0):
    """Time ``repeats`` runs of each contestant in alternation; print how much CPU other
    processes took meanwhile (our VM is shared: a busy neighbour makes the numbers low)."""
    import numpy as np

    actions = np.random.default_rng(seed).integers(0, 2, (num_steps, NUM_ENVS))
    for contestant in contestants:
        contestant.run(actions[: max(50, num_steps // 10)])  # warm-up, not kept
        contestant.rates.clear()
    before, start, stat = _cpu_of_others(), time.perf_counter(), _cpu_times()
    for _ in range(repeats):
        for contestant in contestants:
            contestant.run(actions)
    others = _seconds_since(before) / (time.perf_counter() - start) / (os.cpu_count() or 1)
    total = [b - a for a, b in zip(stat, _cpu_times(), strict=True)]
    steal = total[7] / max(sum(total), 1)
    print(
        f"  [during this section other processes used {others:.0%} of the CPU, and the "
        f"hypervisor took {steal:.0%} (steal)]"
    )
    for contestant in contestants:
        contestant.close()
    return {c.name: c.median for c in contestants}


def _cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat): user, nice, system, idle, ..., steal."""
    with open("/proc/stat") as file:
        return [int(x) for x in file.readline().split()[1:9]]


def _cpu_of_others() -> dict[int, int]:
    """CPU ticks used so far by each process outside this process tree."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
                stats[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, IndexError, ValueError):
                pass

    def ours(pid: int) -> bool:
        for _ in range(64):
            if pid == os.getpid():
                return True
            if pid not in stats or pid <= 1:
                return False
            pid = stats[pid][0]
        return False

    return {pid: cpu for pid, (_, cpu) in stats.items() if not ours(pid)}


def _seconds_since(before: dict[int, int]) -> float:
    """CPU seconds other processes used since the snapshot ``before`` (those still running)."""
    after = _cpu_of_others()
    ticks = sum(max(0, cpu - before.get(pid, 0)) for pid, cpu in after.items())
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(limit_s: float) -> None:
    """Wait (up to ``limit_s``) until other processes use under 10% of the CPU for a second."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = _cpu_of_others()
        time.sleep(1.0)
        if _seconds_since(before) < 0.1 * (os.cpu_count() or 1):
            return
    print(f"  [machine still busy after {limit_s:.0f} s; measuring anyway]")


def print_table(title, rates, reference):
    print(f"\n{title}")
    print(f"| contestant | steps/s (median) | vs {reference} |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / rates[reference]:.2f}x |")


def pool_variants(make):
    """EnvPool with 2 cores' worth of stepping: defaults, pinned workers, a stepping parent."""
    return [
        pool_contestant("EnvPool W=2", make, 2),
        pool_contestant("EnvPool W=2, pin_workers", make, 2, pin_workers=True),
        pool_contestant("EnvPool W=1, parent_steps", make, 1, parent_steps=True),
    ]


def section_cartpole(args):
    import gymnasium

    make = functools.partial(gymnasium.make, "CartPole-v1")
    contestants = [
        *pool_variants("CartPole-v1"),
        gym_contestant("AsyncVectorEnv", gymnasium.vector.AsyncVectorEnv, make, shared_memory=True),
        gym_contestant("SyncVectorEnv", gymnasium.vector.SyncVectorEnv, make),
        pool_contestant("EnvPool W=0", "CartPole-v1", 0),
        pool_contestant("EnvPool W=0, check_finite=False", "CartPole-v1", 0, check_finite=False),
    ]
    rates = race(contestants, args.steps, args.repeats)
    print_table("(a) CartPole-v1, 16 envs", rates, "AsyncVectorEnv")
    return rates


def section_burn(args):
    import gymnasium

    from fleetrl.envs.fake import FaultyEnv

    make = functools.partial(FaultyEnv, burn_us=BURN_US)
    contestants = [
        *pool_variants(make),
        gym_contestant("AsyncVectorEnv", gymnasium.vector.AsyncVectorEnv, make, shared_memory=True),
        pool_contestant("EnvPool W=0", make, 0),
        bare_contestant("bare envs, plain loop (one core)", make),
    ]
    rates = race(contestants, args.burn_steps, args.repeats)
    print_table(f"(b) FaultyEnv burning {BURN_US} us/step, 16 envs", rates, "AsyncVectorEnv")
    measured_limit = 2 * rates["bare envs, plain loop (one core)"]
    print(
        f"step cost measured: {1e6 / rates['bare envs, plain loop (one core)']:.1f} us, so the "
        f"2-core limit is {measured_limit:,.0f} steps/s (nominal {TWO_CORE_LIMIT:,.0f})"
    )
    for name, rate in rates.items():
        print(
            f"{name}: {rate / measured_limit:.1%} of the measured 2-core limit, "
            f"{rate / TWO_CORE_LIMIT:.1%} of the nominal"
        )
    return rates


def section_envpool(args):
    """envpool, then EnvPool again right after it (same machine state)."""
    print("\n(c) envpool CartPole-v1, 16 envs (C++ threads), then EnvPool again")
    rate = envpool_rate(args)
    if rate is None:
        print("envpool not available here or in --envpool-python: skipped")
        return
    rates = {"envpool": rate, **race(pool_variants("CartPole-v1"), args.steps, args.repeats)}
    print_table("", rates, "envpool")


def envpool_rate(args) -> float | None:
    """envpool's CartPole steps/s, here or in ``--envpool-python``; None if unavailable."""
    try:
        import envpool
    except ImportError:
        python = args.envpool_python
        if not python or not os.path.exists(python):
            return None
        command = [python, __file__, "--only-envpool", "--steps", str(args.steps)]
        command += ["--repeats", str(args.repeats)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode:
            print(result.stderr[-2000:], file=sys.stderr)
            return None
        *notes, last = result.stdout.strip().splitlines()
        print("\n".join(notes))
        return json.loads(last)["envpool"]
    contestant = Contestant(
        "envpool",
        lambda: _envpool_build(envpool),
        lambda env, a: env.step(a),
        lambda env: env.close(),
    )
    return race([contestant], args.steps, args.repeats)["envpool"]


def _envpool_build(envpool):
    env = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=NUM_ENVS, seed=0)
    env.reset()
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="batched steps per CartPole run")
    parser.add_argument("--burn-steps", type=int, default=400, help="batched steps per (b) run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--envpool-python", default="/work/envpoolvenv/bin/python")
    parser.add_argument(
        "--wait-quiet", type=float, default=600, help="max seconds to wait for an idle machine"
    )
    parser.add_argument("--only-envpool", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only_envpool:
        print(json.dumps({"envpool": envpool_rate(args)}))
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.repeats} repeats")
    wait_until_quiet(args.wait_quiet)
    cartpole = section_cartpole(args)
    async_rate = cartpole["AsyncVectorEnv"]
    for name in [n for n in cartpole if n.startswith("EnvPool W=2") or "parent" in n]:
        print(f"target EnvPool >= 5x AsyncVectorEnv: {name}: {cartpole[name] / async_rate:.2f}x")
    wait_until_quiet(args.wait_quiet)
    section_burn(args)
    wait_until_quiet(args.wait_quiet)
    section_envpool(args)


if __name__ == "__main__":
    main()
