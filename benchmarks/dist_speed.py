"""Distributed training on Ray (``--dist.mode``) on this machine: what a segment costs, how the
rate scales with actors, whether asynchronous actors overlap learning with stepping, and a
projection to a cluster. docs/BENCHMARKS.md, section 16.

    python benchmarks/dist_speed.py [--part all|overhead,scaling,overlap,seeds] [--rounds 3]
        [--fix off,on,actors] [--out dist_speed.json]

Parts:
- overhead: Ray's cost per segment and per parameter broadcast (`dist_ray`), the learner's
  update and an actor's sampling alone, in this process.
- scaling: steady env steps/s of PPO against ``dist.actors`` 1, 2, 4, 8 in modes single, sync
  and async, on gymnasium CartPole (in-process in each actor) and on a ~1 ms/step env
  (`fleetrl.envs.fake.FaultyEnv` burning CPU); ``env.num_envs`` fixed per table.
- overlap: impala-cartpole-gym and ppo-vtrace-cartpole-gym (async, 2 actors) and
  ppo-cartpole-gym (single process) against the host pool's random-action rate (8 envs
  in-process, as in section 6), measured in turn, ``--rounds`` times.
- seeds: impala-cartpole-gym as shipped for seeds 0-4, one process each (cold compilation
  cache): env steps and seconds to the first evaluation >= 475 and to the stop at 500.
The projection is printed from the overhead and scaling parts' figures.

Ray must see loopback only: run as root and the script re-executes itself in a fresh network
namespace (``unshare -n``), or run it in one yourself:
    unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/dist_speed.py'
Each training run is a fresh process calling `fleetrl.train.train`; throughput is steady
state: env steps between the first logged call (Ray, actors and compilation) and the last,
over the seconds between them, with evaluation and checkpoints off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import host_ppo_cartpole  # noqa: E402 (a sibling: benchmarks/ is on sys.path when run)

HERE = Path(__file__).resolve().parent
NETNS_MARK = "FLEETRL_BENCH_NETNS"
FAKE_ENV = "fleetrl.envs.fake:FaultyEnv"
BURN_US = 1000
QUIET = ["--train.eval-every", "0", "--train.checkpoint-every", "0", "--log.tensorboard", "False"]
QUIET += ["--train.stop-at-return", "None"]

# (label, preset, extra args): the scaling tables' envs, num_envs fixed per table
CHEAP = ("gymnasium CartPole-v1", "ppo-cartpole-gym", ["--env.num-envs", "32"])
COSTLY = (
    f"FaultyEnv burning {BURN_US} us/step",
    "ppo-cartpole-gym",
    ["--env.id", FAKE_ENV, "--env.kwargs", f"{{burn_us: {BURN_US}}}", "--env.num-envs", "8"],
)
SCALING_STEPS = {CHEAP[0]: (81920, 8192), COSTLY[0]: (6144, 1024)}  # (total, log_every)
OVERLAP = (
    ("impala-cartpole-gym (async, 2 actors)", "impala-cartpole-gym", []),
    ("ppo-vtrace-cartpole-gym (async, 2 actors)", "ppo-vtrace-cartpole-gym", []),
    ("ppo-cartpole-gym (single process)", "ppo-cartpole-gym", []),
)


# ---- the network namespace -----------------------------------------------------------------


def interfaces() -> list[str]:
    """This process's network interfaces (``/proc/self/net/dev`` follows the namespace;
    ``/sys/class/net`` shows the one sysfs was mounted in)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def ensure_loopback_only() -> None:
    """Re-execute in a fresh network namespace when an interface besides ``lo`` is visible."""
    others = [name for name in interfaces() if name != "lo"]
    if not others:
        return
    command = 'ip link set lo up && exec "$0" "$@"'
    if os.environ.get(NETNS_MARK) or os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit(
            f"dist_speed: Ray would see {', '.join(others)}; run in a fresh network namespace:\n"
            f"  unshare -n sh -c 'ip link set lo up && {sys.executable} {' '.join(sys.argv)}'"
        )
    env = {**os.environ, NETNS_MARK: "1"}
    argv = ["unshare", "-n", "sh", "-c", command, sys.executable, *sys.argv]
    os.execvpe("unshare", argv, env)


# ---- one training run ------------------------------------------------------------------------


def child(spec: dict) -> None:
    """``--child``: one run of ``spec["preset"]`` with ``spec["args"]``, as `fleetrl train`
    would do it (one XLA thread for an MLP beside in-process host envs: see
    ``fleetrl.cli._one_xla_thread_pays``)."""
    import dist_ray

    from fleetrl import xla_cpu
    from fleetrl.cli import parse_run_config
    from fleetrl.programs import enable_compilation_cache
    from fleetrl.train import train

    run = parse_run_config(spec["preset"], spec["args"], "dist_speed")
    if getattr(run.algo, "network", "mlp") == "mlp" and run.env.num_workers == 0:
        xla_cpu.use_one_xla_thread()
        if spec["fix"] is True:  # not with "actors": the fix in the actors only
            dist_ray.restore_affinity()
    if spec["fix"] and run.dist.mode != "single":
        start_ray(run, runtime_env={"worker_process_setup_hook": "dist_ray.patch_affinity"})
    enable_compilation_cache()
    train(run)


def start_ray(run, **options) -> None:
    """Start the local cluster as `fleetrl.distributed.cluster.Cluster` does (token
    authentication, no dashboard, 127.0.0.1), with ``options``; fleetrl then uses it."""
    from fleetrl.distributed.cluster import local_auth_env

    os.environ.update(local_auth_env())
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    cpus = max(os.cpu_count() or 1, int(-(-run.dist.actors * run.dist.actor_cpus // 1)))
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="warning",
        **options,
    )


def train_run(preset: str, args: list[str], fix=False, timeout: float = 900) -> dict:
    """A fresh process trains ``preset``; returns its steady rate and dist metrics. ``fix``:
    True, the affinity fix (`dist_ray.restore_affinity`) in the learner and every actor;
    "actors", in the actors only."""
    folder = Path(tempfile.mkdtemp(prefix="dist-speed-"))
    run_dir = folder / "run"
    args = [*args, "--log.run-dir", str(run_dir), "--log.progress", "False"]
    spec = {"preset": preset, "args": args, "fix": fix}
    env = {**os.environ, "FLEETRL_CACHE_DIR": "off", "FLEETRL_TRUST_MODULES": "fleetrl.envs.fake"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    start = time.time()
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-6000:])
        raise RuntimeError(f"{preset} {' '.join(args)} failed ({done.returncode})")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    return {
        **steady(records),
        "summary": summary,
        "process_s": time.time() - start,
        "records": records,
    }


def steady(records: list[dict]) -> dict:
    """Env steps/s between the first and the last logged call, and the dist metrics' means
    over the calls after the first."""
    calls = [r for r in records if "charts/sps" in r]
    first, last = calls[0], calls[-1]
    out = {"rate": (last["step"] - first["step"]) / (last["time"] - first["time"])}
    out["first_call_s"] = first["time"]
    for name in ("dist/wait_s", "dist/learn_s", "dist/actor_sample_s", "dist/policy_lag"):
        values = [r[name] for r in calls[1:] if name in r]
        out[name] = statistics.mean(values) if values else None
    dropped = [r.get("dist/dropped_segments") for r in calls if "dist/dropped_segments" in r]
    out["dropped"] = dropped[-1] if dropped else None
    return out


# ---- pool rates ------------------------------------------------------------------------------

# section 6's random-action rate: host_ppo_cartpole.py's measurement, in-process (0 workers)
POOL_RATE = host_ppo_cartpole.RANDOM_RATE.replace("{w}", "0")


def pool_rate(num_envs: int, processes: int = 1) -> float:
    """Random-action env steps/s of an in-process `EnvPool` of ``num_envs`` CartPoles (median
    of 5 x 1000 steps; section 6's definition); ``processes`` > 1: that many at once, summed."""
    code = POOL_RATE.format(n=num_envs)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return sum(float(p.communicate()[0].split()[-1]) for p in procs)


# ---- parts -----------------------------------------------------------------------------------


def part_overhead(args) -> dict:
    import dist_ray

    from fleetrl.config import DistConfig
    from fleetrl.distributed.cluster import Cluster
    from fleetrl.envs import trust

    trust.trust_modules("fleetrl.envs")
    reps = args.reps
    cartpole, _, _ = dist_ray.real_segment(*CHEAP[1:], 8)  # 64 steps x 4 envs (a CartPole actor's)
    payloads = {
        "CartPole 64 x 4 envs": (cartpole, reps),
        "CartPole 64 x 64 envs": (dist_ray.widened(cartpole, 16), reps),
        "Atari-sized 20 x 8 envs (uint8 4x84x84)": (
            dist_ray.atari_like(cartpole, 20, 8),
            reps // 5,
        ),
    }
    cluster = Cluster(DistConfig(mode="sync", actors=2), 2)
    ray = cluster.ray
    try:
        params_ref = ray.put(dist_ray.params_sizes()["mlp 64-64"])
        segments = [
            dist_ray.segment_costs(ray, name, seg, params_ref, n)
            for name, (seg, n) in payloads.items()
        ]
        for row, (segment, n) in zip(segments, payloads.values(), strict=True):
            row["concat_2"] = dist_ray.concat_us(segment, 2, n)
        broadcast = dist_ray.broadcast_costs(ray, reps)
        waits = dist_ray.wait_us(ray, (2, 8, 32, 128), reps)
    finally:
        cluster.close()
    learner = {
        "impala-cartpole-gym": dist_ray.learner_costs("impala-cartpole-gym", [], (1, 4, 16), 30),
        "ppo-cartpole-gym, 32 envs": dist_ray.learner_costs(*CHEAP[1:], (1, 4), 10),
    }
    actors = dist_ray.actor_rates(
        [
            ("impala-cartpole-gym", [], 2),
            (CHEAP[1], CHEAP[2], 1),
            (CHEAP[1], CHEAP[2], 8),
            (COSTLY[1], COSTLY[2], 1),
        ],
        10,
    )
    result = {"segments": segments, "broadcast": broadcast, "wait": waits}
    result |= {"learner": learner, "actors": actors}
    print_overhead(result)
    return result


def print_overhead(result: dict) -> None:
    print("\n## Ray overhead per segment (us, medians)")
    keys = ["bytes", "call_noop", "call_take_params", "call_give_segment", "round_trip", "submit"]
    keys += ["learner_get", "pickle_dumps", "pickle_loads", "put_get_here", "concat_2"]
    print("| payload | " + " | ".join(keys) + " |")
    for row in result["segments"]:
        print(f"| {row['payload']} | " + " | ".join(f"{row[k]:,.0f}" for k in keys) + " |")
    print("\n## Parameter broadcast (us)")
    for row in result["broadcast"]:
        print(
            f"| {row['params']} | {row['bytes']:,} B | put {row['put']:,.0f} | actor fetch "
            f"{row['actor_fetch']:,.0f} | passed by value instead: "
            f"+{row['call_by_value_extra']:,.0f} |"
        )
    print(
        "\n## ray.wait, one wake, K outstanding (us): "
        + ", ".join(f"K={k}: {v:,.0f}" for k, v in result["wait"].items())
    )
    print("\n## Learner update and publish (ms) by batch env steps")
    for name, rows in result["learner"].items():
        for steps, update, publish in rows:
            print(f"| {name} | {steps:,} | update {update:.2f} | publish {publish:.2f} |")
    print("\n## One actor sampling alone (this process)")
    for row in result["actors"]:
        print(
            f"| {row['preset']} | {row['envs']} envs | {row['steps']} steps | "
            f"{row['sample_ms']:.1f} ms | {row['steps_per_s']:,.0f} steps/s |"
        )


def part_scaling(args) -> dict:
    """Per env: single, then sync and async at 1, 2, 4, 8 actors in each variant of
    ``--fix``; one seed, one run each."""
    tables = {}
    for label, preset, extra in (CHEAP, COSTLY):
        total, log_every = SCALING_STEPS[label]
        base = [*extra, *QUIET, "--train.total-steps", str(total)]
        base += ["--train.log-every", str(log_every), "--train.seed", "0"]
        cases = [("single", 1, [], False)]
        if label == COSTLY[0]:
            cases.append(("single, 2 pool workers", 1, ["--env.num-workers", "2"], False))
        for mode in ("sync", "async"):
            for actors in (1, 2, 4, 8):
                dist = ["--dist.mode", mode, "--dist.actors", str(actors)]
                cases += [(mode, actors, dist, fix) for fix in fixes(args)]
        rows = []
        for mode, actors, more, fix in cases:
            result = train_run(preset, [*base, *more], fix=fix)
            result.pop("records")
            rows.append({"mode": mode, "actors": actors, "fix": fix, **result})
            print(f"{label} | {mode} | {actors} | fix {fix} | {fmt_steady(result)}", flush=True)
        tables[label] = rows
    return tables


FIXES = {"off": False, "on": True, "actors": "actors"}


def fixes(args) -> tuple:
    """``--fix``'s variants: False (as shipped), True (the affinity fix in the learner and the
    actors), "actors" (in the actors only)."""
    return tuple(FIXES[name] for name in args.fix.split(","))


def fmt_steady(r: dict) -> str:
    parts = [f"{r['rate']:,.0f} steps/s (first call ends at {r['first_call_s']:.1f} s)"]
    for name in ("dist/wait_s", "dist/learn_s", "dist/actor_sample_s"):
        if r.get(name) is not None:
            parts.append(f"{name.split('/')[1]} {r[name] * 1e3:.1f} ms")
    if r.get("dist/policy_lag") is not None:
        parts.append(f"lag {r['dist/policy_lag']:.2f}")
    return ", ".join(parts)


POOLS = {"pool, 8 envs": (8, 1), "pool, 64 envs": (64, 1), "2 pools of 64 envs at once": (64, 2)}


def part_overlap(args) -> dict:
    """In turn, ``--rounds`` times: the pools' random-action rates, then each of `OVERLAP`
    (the async presets in each variant of ``--fix``)."""
    cases = []
    for label, preset, extra in OVERLAP:
        distributed = not label.endswith("(single process)")
        cases += [(label, preset, extra, fix) for fix in (fixes(args) if distributed else (False,))]
    rows: dict[str, list] = {label: [] for label in POOLS}
    rows |= {case_label(label, fix): [] for label, _, _, fix in cases}
    for round_ in range(args.rounds):
        for label, (num_envs, processes) in POOLS.items():
            rows[label].append({"rate": pool_rate(num_envs, processes)})
        for label, preset, extra, fix in cases:
            more = [*QUIET, "--train.total-steps", "307200", "--train.seed", str(round_)]
            result = train_run(preset, [*extra, *more], fix=fix)
            result.pop("records")
            rows[case_label(label, fix)].append(result)
        rates = ", ".join(f"{k}: {v[-1]['rate']:,.0f}" for k, v in rows.items())
        print(f"round {round_}: {rates}", flush=True)
    pool = statistics.median(r["rate"] for r in rows["pool, 8 envs"])
    print(f"\n## Overlap: steady env steps/s, medians of {args.rounds} rounds")
    for label, values in rows.items():
        rate = statistics.median(v["rate"] for v in values)
        print(f"| {label} | {rate:,.0f} | {rate / pool:.0%} of the 8-env pool |")
    return rows


def case_label(label: str, fix) -> str:
    if fix == "actors":
        return f"{label}, affinity fix in the actors"
    return f"{label}, affinity fix" if fix else label


SEEDED = ("impala-cartpole-gym", "ppo-vtrace-cartpole-gym")


def part_seeds(args) -> dict:
    """Each `SEEDED` preset as shipped, seeds 0-4, one fresh process each (cold cache)."""
    out = {}
    for preset in SEEDED:
        rows = []
        for seed in range(5):
            result = train_run(preset, ["--train.seed", str(seed)])
            evals = [
                (r["step"], r["time"], r["eval/episodic_return"])
                for r in result["records"]
                if "eval/episodic_return" in r
            ]
            summary = result["summary"]
            rows.append(
                {
                    "seed": seed,
                    "first_475": next(((s, t) for s, t, v in evals if v >= 475), None),
                    "first_500": next(((s, t) for s, t, v in evals if v >= 500), None),
                    "status": summary["status"],
                    "env_steps": summary["env_steps"],
                    "process_time": summary["process_time"],
                    "eval_return": summary["eval_returns"],
                    "rate": result["rate"],
                    "first_call_s": result["first_call_s"],
                }
            )
            print(f"{preset} seed {seed}: {rows[-1]}", flush=True)
        out[preset] = rows
    return out


# ---- projection ------------------------------------------------------------------------------

NODE_ACTORS = 16  # actors (one core each) per node
LINK_BYTES_S = 1.25e9  # 10 Gbit/s per node
LINK_LATENCY_S = 200e-6  # per object transfer between nodes


def project(overhead: dict, counts=(8, 32, 128)) -> list[dict]:
    """IMPALA at K actors (one core each, 16 a node), one learner update per K segments as
    `fleetrl.distributed.calls` does: the rate is the least of what the actors make, what the
    learner's one process takes in (update + Ray's cost per segment + publish), and what its
    node's link carries. Two envs: CartPole (impala-cartpole-gym's share per actor) and the
    ~1 ms/step env (8 envs x 64 steps per actor)."""
    learner = overhead["learner"]["impala-cartpole-gym"]
    (b0, u0, publish_ms), (b1, u1, _) = learner[0], learner[-1]
    slope = (u1 - u0) / (b1 - b0)  # update ms per env step of batch, beyond b0
    seg = next(r for r in overhead["segments"] if r["payload"].startswith("CartPole 64 x 64"))
    per_segment_s = (seg["learner_get"] + seg["submit"] + seg["concat_2"] / 2) / 1e6
    params = next(r for r in overhead["broadcast"] if r["params"] == "mlp 64-64")
    envs = {
        "CartPole": next(r for r in overhead["actors"] if r["preset"] == "impala-cartpole-gym"),
        f"{BURN_US} us/step env": next(r for r in overhead["actors"] if r["envs"] == 8),
    }
    rows = []
    for env, actor in envs.items():
        for k in counts:
            batch = k * actor["steps"]
            update_s = (u0 + slope * (batch - b0)) / 1e3
            ray_s = k * (per_segment_s + _interpolate(overhead["wait"], k) / 1e6)
            learner_s = update_s + ray_s + publish_ms / 1e3 + params["put"] / 1e6
            nodes = -(-k // NODE_ACTORS)
            link = LINK_BYTES_S * seg["steps"] / seg["bytes"]
            row = {
                "env": env,
                "actors": k,
                "nodes": nodes,
                "batch": batch,
                "actors_make": k * actor["steps_per_s"],
                "learner_takes": batch / learner_s,
                "link_takes": link,
                "update_ms": update_s * 1e3,
                "ray_ms": ray_s * 1e3,
                "broadcast_ms": (
                    params["put"] / 1e6 + nodes * params["bytes"] / LINK_BYTES_S + LINK_LATENCY_S
                )
                * 1e3,
            }
            row["projected"] = min(row["actors_make"], row["learner_takes"], row["link_takes"])
            rows.append(row)
    atari = next(r for r in overhead["segments"] if r["payload"].startswith("Atari"))
    atari_segment_s = (atari["learner_get"] + atari["submit"] + atari["concat_2"] / 2) / 1e6
    transport = {
        "ray_ceiling": atari["steps"] / atari_segment_s,
        "link_ceiling": LINK_BYTES_S * atari["steps"] / atari["bytes"],
    }
    print("\n## Projection: IMPALA, one learner process (update as measured here, one core)")
    for r in rows:
        print(
            f"| {r['env']} | {r['actors']} actors, {r['nodes']} nodes | batch {r['batch']:,} | "
            f"actors make {r['actors_make']:,.0f} | learner takes {r['learner_takes']:,.0f} "
            f"(update {r['update_ms']:.1f} ms + Ray {r['ray_ms']:.1f} ms per batch) | "
            f"broadcast {r['broadcast_ms']:.2f} ms | **{r['projected']:,.0f}** |"
        )
    print(
        f"Atari-sized segments (uint8 obs and next_obs): the learner's Ray cost alone caps it at "
        f"{transport['ray_ceiling']:,.0f} env steps/s, a 10 Gbit/s link at "
        f"{transport['link_ceiling']:,.0f}"
    )
    return {"rows": rows, "atari": transport}


def _interpolate(table: dict, k: int) -> float:
    points = sorted((int(x), y) for x, y in table.items())
    lower = [p for p in points if p[0] <= k][-1] if points[0][0] <= k else points[0]
    upper = next((p for p in points if p[0] >= k), points[-1])
    if upper[0] == lower[0]:
        return lower[1]
    return lower[1] + (upper[1] - lower[1]) * (k - lower[0]) / (upper[0] - lower[0])


# ---- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", default="all", help="all, or comma-separated: overhead,scaling,overlap,seeds"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument(
        "--fix",
        default="off,on",
        help="comma-separated: distributed runs as shipped (off), with the affinity fix in the "
        "learner and the actors (on), in the actors only (actors)",
    )
    parser.add_argument("--out", default="dist_speed.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(HERE))
        child(json.loads(args.child))
        return
    ensure_loopback_only()
    sys.path.insert(0, str(HERE))
    print(f"load average before: {os.getloadavg()}", flush=True)
    parts = (
        ["overhead", "scaling", "overlap", "seeds"] if args.part == "all" else args.part.split(",")
    )
    out = {"load_before": os.getloadavg()}
    for part in parts:
        out[part] = globals()[f"part_{part}"](args)
        out[f"load_after_{part}"] = os.getloadavg()
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    if "overhead" in out:
        out["projection"] = project(out["overhead"])
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"load average after: {os.getloadavg()}; results in {args.out}")


if __name__ == "__main__":
    main()
