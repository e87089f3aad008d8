"""SAC against Stable-Baselines3 and sbx (SB3's JAX port): three comparisons, one per mode.

ttt (default): seconds from process start until the evaluation return first reaches -200 on
  Pendulum-v1. fleetrl's sac-pendulum (gymnax Pendulum inside the compiled program; RL-Zoo's SAC
  settings but 64-64 networks and batch 128, 1 env, 8 env steps then 8 gradient steps per
  iteration) against SB3 SAC and sbx SAC at RL-Zoo's settings (peers/sb3_sac.py: 256-256
  networks, learning rate 1e-3, one gradient step per env step). --same-settings runs fleetrl
  with 256-256 networks and batch 256 too (the equal-settings row). All evaluate every 1,000 env
  steps on 10 deterministic episodes and stop at a mean of -200 within 20k env steps. fleetrl
  cold: an empty compilation cache; warm: a cache filled by one earlier run. Peers cold: from
  the start of their process (imports included); warm: a second run in the same process. Medians
  over seeds; a seed that never reaches -200 counts as infinitely slow.

seeds: 8 seeds of sac-pendulum's full 20k env steps compiled into one program
  (--train.num-seeds 8), process wall time, against 8 SB3 runs back to back in one process
  (peers/sb3_sac.py --runs 8, 256-256 as RL-Zoo; --peer-lib sbx for sbx) with their final
  evaluation returns. --peer-runs K < 8 runs K and projects 8 (the runs are independent).

halfcheetah: SAC on MuJoCo HalfCheetah-v5 on the host at UTD 1, 256-256 networks, batch 256 (the
  sac-halfcheetah preset: RL-Zoo's settings) against SB3 and sbx at the same settings: env
  steps/s once learning has started (fleetrl: the compiled calls after the first call past
  learning_starts; peers: --steps-per-second N after --learning-starts 10000 and 200 more), the
  microseconds per gradient step against the arithmetic floor (benchmarks/sac_floor.py), and
  the wall time of 1M env steps projected from these rates (10k random steps, 990k learning).

Pin to one core on a shared machine (taskset -c 1) and pass --peer-torch-threads 1.

    python benchmarks/sac_speed.py [--mode ttt|seeds|halfcheetah] [--seeds 5]
        [--same-settings] [--steps 4096] [--peer-python PY] [--skip-peer]
        [--peer-libs sb3 sbx] [--peer-torch-threads 1]
"""

from __future__ import annotations

import argparse
import tempfile

from common import DEFAULT_PEER_PYTHON, first_time_reaching, median, run_fleetrl, run_peer

THRESHOLD = -200.0
TTT_ARGS = ["--train.eval-every", "1000", "--train.eval-episodes", "10"]
SAME = ["--algo.hidden-sizes", "256", "256", "--algo.batch-size", "256"]


def peer_args(args) -> list[str]:
    return ["--torch-threads", str(args.peer_torch_threads)] if args.peer_torch_threads else []


def fleetrl_ttt(seed: int, cache_dir: str, args) -> tuple[float, int]:
    extra = [*TTT_ARGS, "--train.checkpoint-every", "0", "--train.seed", str(seed)]
    extra += ["--train.stop-at-return", str(THRESHOLD)] + (SAME if args.same_settings else [])
    result = run_fleetrl("sac-pendulum", extra, cache_dir)
    reached = first_time_reaching(result["records"], THRESHOLD)
    return (float("inf"), result["env_steps"]) if reached is None else reached


def time_to_threshold(args) -> None:
    warm_cache = tempfile.mkdtemp(prefix="fleetrl-warm-cache-")
    fleetrl_ttt(0, warm_cache, args)  # fills the warm cache
    rows: dict[str, list[float]] = {"cold": [], "warm": []}
    for seed in range(args.seeds):
        cold = fleetrl_ttt(seed, tempfile.mkdtemp(prefix="fleetrl-cold-cache-"), args)
        warm = fleetrl_ttt(seed, warm_cache, args)
        rows["cold"].append(cold[0])
        rows["warm"].append(warm[0])
        line = f"seed {seed}: fleetrl cold {cold[0]:.1f} s ({cold[1]} steps), warm {warm[0]:.1f} s"
        for lib in [] if args.skip_peer else args.peer_libs:
            peer = ["--lib", lib, "--seed", str(seed), *peer_args(args)]
            out = run_peer(args.peer_python, "sb3_sac.py", peer)
            cold_s = out["time_to_threshold_s"] if out["reached"] else float("inf")
            warm_s = out["warm_time_to_threshold_s"] if out["warm_reached"] else float("inf")
            rows.setdefault(f"{lib}_cold", []).append(cold_s)
            rows.setdefault(f"{lib}_warm", []).append(warm_s)
            line += f" | {lib} cold {cold_s:.1f} s ({out['steps_to_threshold']} steps), "
            line += f"warm {warm_s:.1f} s"
        print(line, flush=True)
    cold, warm = median(rows["cold"]), median(rows["warm"])
    nets = "256-256, batch 256" if args.same_settings else "64-64, batch 128 (the preset)"
    print(f"\nmedian seconds from process start to eval return >= {THRESHOLD:g}:")
    print(f"  fleetrl sac-pendulum, {nets}: cold cache {cold:.1f} s, warm cache {warm:.1f} s")
    for lib in [] if args.skip_peer else args.peer_libs:
        peer_cold, peer_warm = median(rows[f"{lib}_cold"]), median(rows[f"{lib}_warm"])
        print(f"  {lib} SAC (RL-Zoo settings): cold {peer_cold:.1f} s, warm {peer_warm:.1f} s")
        ratios = f"cold {peer_cold / cold:.1f}x, warm {peer_warm / warm:.1f}x"
        print(f"  ratio {lib} / fleetrl: {ratios}")


def many_seeds(args) -> None:
    extra = ["--train.num-seeds", "8", "--train.seed", "0", "--train.checkpoint-every", "0"]
    result = run_fleetrl("sac-pendulum", extra, tempfile.mkdtemp(prefix="fleetrl-cold-cache-"))
    final = [round(x, 1) for x in result["eval_returns"]]
    ours = result["process_wall"]
    print(f"fleetrl sac-pendulum, 8 seeds in one program: {ours:.1f} s (process), final {final}")
    runs = args.peer_runs
    for lib in [] if args.skip_peer else args.peer_libs:
        out = run_peer(
            args.peer_python, "sb3_sac.py", ["--lib", lib, "--runs", str(runs), *peer_args(args)]
        )
        finals = [round(x, 1) for x in out["final_eval_returns"]]
        # runs are independent and back to back: 8 take 8 / runs times as long (imports once)
        total = out["cold_wall_s"] - out["wall_s"] + out["wall_s"] * 8 / runs
        kind = "measured" if runs == 8 else f"projected from {runs} runs"
        print(f"{lib} SAC, {runs} runs back to back: {out['cold_wall_s']:.1f} s, final {finals}")
        print(f"  8 runs: {total:.1f} s ({kind}); {lib} / fleetrl: {total / ours:.1f}x", flush=True)


def halfcheetah(args) -> None:
    learning_starts = 10240  # the preset's 10,000 rounded up to whole calls of 10,240 steps
    # one call of random steps, one call past learning_starts (not timed), one timed call
    extra = ["--train.total-steps", str(learning_starts + 2 * 10240)]
    extra += ["--train.eval-every", "0", "--train.checkpoint-every", "0", "--train.seed", "0"]
    result = run_fleetrl("sac-halfcheetah", extra, cache_dir=None)
    calls, last = [], 0
    for record in result["records"]:
        if "charts/sps" in record:
            calls.append((record["step"], (record["step"] - last) / record["charts/sps"]))
            last = record["step"]
    random_s = calls[0][1]
    learning = [(s, t) for s, t in calls if s > learning_starts + 10240]  # after the first
    ours = 10240 * len(learning) / sum(t for _, t in learning)
    print(f"fleetrl sac-halfcheetah: {ours:,.0f} env steps/s learning ({1e6 / ours:,.0f} us per")
    print(f"  env step with its gradient step), {10240 / random_s:,.0f} steps/s before learning")
    print(f"  1M env steps projected: {(10240 / (10240 / random_s) + 990_000 / ours) / 3600:.2f} h")
    for lib in [] if args.skip_peer else args.peer_libs:
        peer = ["--lib", lib, "--steps-per-second", str(args.steps), "--env", "HalfCheetah-v5"]
        out = run_peer(args.peer_python, "sb3_sac.py", [*peer, *peer_args(args)])
        hours = 990_000 / out["sps"] / 3600
        print(f"{lib} SAC: {out['sps']:,.0f} env steps/s learning ({out['us_per_step']:,.0f} us);")
        print(f"  990k learning steps projected: {hours:.2f} h; fleetrl / {lib}: "
              f"{ours / out['sps']:.2f}x", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("ttt", "seeds", "halfcheetah"), default="ttt")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--peer-runs", type=int, default=8, help="seeds: peer runs made")
    parser.add_argument("--same-settings", action="store_true", help="fleetrl with 256-256")
    parser.add_argument("--steps", type=int, default=4096, help="halfcheetah: peers' timed steps")
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--peer-libs", nargs="+", default=["sb3", "sbx"])
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--peer-torch-threads", type=int, default=None)
    args = parser.parse_args()
    {"ttt": time_to_threshold, "seeds": many_seeds, "halfcheetah": halfcheetah}[args.mode](args)


if __name__ == "__main__":
    main()
