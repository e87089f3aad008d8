"""Distributed training on Ray: sync and async modes, faults, resume, Ctrl+C, a multi-node
cluster. Every test here starts Ray, so the module runs inside a fresh network namespace
(tests/test_ray_namespace.py runs it there; loopback is then the only interface) and starts
one local multi-node cluster for all its tests."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        os.environ.get("FLEETRL_NETNS") != "1",
        reason="Ray tests run in a fresh network namespace, through tests/test_ray_namespace.py",
    ),
]

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from fleetrl.config import load_preset  # noqa: E402
from fleetrl.restore import evaluate_run  # noqa: E402
from fleetrl.train import train  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, both on 127.0.0.1 (the namespace has nothing else)."""
    from ray.cluster_utils import Cluster

    local = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "include_dashboard": False},
    )
    ray.init(address=local.address, logging_level="warning")
    RAYLETS[:] = [
        psutil.Process(p.process.pid) for p in local.head_node.all_processes.get("raylet", [])
    ]
    yield local
    ray.shutdown()
    local.shutdown()


def dist_run(tmp_path, preset="ppo-cartpole", total=16384, **dist):
    run = load_preset(preset)
    return dataclasses.replace(
        run,
        train=dataclasses.replace(
            run.train,
            seed=0,
            total_steps=total,
            eval_every=0,
            eval_episodes=4,
            checkpoint_every=0,
            stop_at_return=None,
        ),
        log=dataclasses.replace(run.log, root=str(tmp_path), progress=False, tensorboard=False),
        dist=dataclasses.replace(run.dist, **{"mode": "sync", "actors": 2, **dist}),
    )


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def last(run_dir: Path, name: str):
    values = [row[name] for row in metrics(run_dir) if name in row]
    return values[-1] if values else None


def actor_processes() -> list:
    """This module's cluster's actor processes (children of its raylets; not another run's
    that shares the machine)."""
    found = []
    for raylet in raylets():
        try:
            children = raylet.children(recursive=True)
        except psutil.Error:
            continue
        for proc in children:
            try:
                if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::SegmentActor"):
                    found.append(proc)
            except psutil.Error:
                pass
    return found


RAYLETS: list = []


def raylets() -> list:
    return [p for p in RAYLETS if p.is_running()]


def act_on_actor(action) -> callable:
    """``action(process)`` on one of the cluster's actors; True once done."""

    def run():
        for proc in actor_processes():
            try:
                action(proc)
                return True
            except psutil.Error:
                continue
        return False

    return run


def when_training(tmp_path, action, after_lines: int = 1) -> threading.Thread:
    """Run ``action()`` on a thread once the run under ``tmp_path`` has logged a call (again
    until it returns something other than False)."""

    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            files = list(Path(tmp_path).glob("*/metrics.jsonl"))
            if files and len(files[0].read_text().splitlines()) >= after_lines:
                if action() is not False:
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sync_trains_publishes_one_version_and_resumes(cluster, tmp_path):
    run = dist_run(tmp_path, total=8192)
    result = train(run)
    assert result.status == "completed" and result.env_steps == 8192
    assert last(result.run_dir, "dist/policy_lag_max") == 0  # every actor acted with it
    assert last(result.run_dir, "faults/actor_restarts") == 0
    longer = dataclasses.replace(run, train=dataclasses.replace(run.train, total_steps=12288))
    resumed = train(longer, resume=result.run_dir)
    assert resumed.status == "completed" and resumed.env_steps == 12288
    assert [row["step"] for row in metrics(result.run_dir)][-1] == 12288
    assert evaluate_run(result.run_dir, episodes=2).returns.shape == (1, 2)  # `fleetrl eval`


def test_async_logs_policy_lag_and_drops_what_is_too_old(cluster, tmp_path):
    result = train(dist_run(tmp_path / "a", mode="async", total=8192))
    assert result.status == "completed"
    lags = [row["dist/policy_lag"] for row in metrics(result.run_dir) if "dist/policy_lag" in row]
    assert lags and max(lags) >= 0.5  # actors act while the learner learns: some lag
    strict = train(dist_run(tmp_path / "b", mode="async", total=4096, max_policy_lag=0))
    assert strict.status == "completed"
    assert last(strict.run_dir, "dist/dropped_segments") > 0
    assert max(row.get("dist/policy_lag_max", 0) for row in metrics(strict.run_dir)) == 0


def test_killed_actor_is_restarted_and_training_goes_on(cluster, tmp_path):
    killed = []
    when_training(tmp_path, act_on_actor(lambda proc: killed.append(proc.kill() or proc.pid)))
    result = train(dist_run(tmp_path, total=61440))
    assert killed, "no actor process found to kill"
    assert result.status == "completed"
    assert last(result.run_dir, "faults/actor_restarts") >= 1


def test_restarts_off_a_dead_actor_stops_the_run_cleanly(cluster, tmp_path):
    from fleetrl.distributed import DistributedError

    when_training(tmp_path, act_on_actor(lambda proc: proc.kill()))
    with pytest.raises(DistributedError, match="dist.max_restarts is 0"):
        train(dist_run(tmp_path, total=409600, max_restarts=0))
    deadline = time.time() + 30
    while actor_processes() and time.time() < deadline:  # the run killed its actors
        time.sleep(0.2)
    assert not actor_processes()


def test_hung_actor_is_replaced(cluster, tmp_path):
    stopped = []
    # SIGSTOP: alive, never answers
    when_training(tmp_path, act_on_actor(lambda proc: stopped.append(proc.suspend() or proc)))
    started = time.time()
    result = train(dist_run(tmp_path, total=40960, sample_timeout=3.0))
    for proc in stopped:
        if proc.is_running():
            proc.kill()
    assert stopped and result.status == "completed"
    assert last(result.run_dir, "faults/actor_timeouts") >= 1
    assert time.time() - started < 90


def test_node_removed_mid_run_training_continues(cluster, tmp_path):
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    when_training(tmp_path, lambda: cluster.remove_node(node))
    result = train(dist_run(tmp_path, total=61440, actors=4))
    assert result.status == "completed"
    assert last(result.run_dir, "faults/actor_restarts") >= 1  # SPREAD put actors on it


def test_ctrl_c_stops_every_actor_and_keeps_a_checkpoint(tmp_path):
    """The CLI starts its own local Ray (no cluster fixture): after Ctrl+C, the run has a
    checkpoint and no process it started is left."""
    command = [
        sys.executable, "-m", "fleetrl", "train", "ppo-cartpole", "--dist.mode", "sync",
        "--train.seed", "0", "--train.total-steps", "4000000", "--train.stop-at-return", "None",
        "--log.root", str(tmp_path), "--log.progress", "False",
    ]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(child.pid)
    deadline, family = time.time() + 120, set()
    while time.time() < deadline and child.poll() is None:
        family |= {p.pid for p in proc.children(recursive=True)}
        files = list(tmp_path.glob("*/metrics.jsonl"))
        if files and files[0].read_text().count("\n") >= 2:
            break
        time.sleep(0.1)
    family |= {p.pid for p in proc.children(recursive=True)}
    child.send_signal(signal.SIGINT)
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 130, output[-3000:]
    run_dir = next(tmp_path.glob("ppo-cartpole__*"))
    assert list((run_dir / "checkpoints").glob("step_*")), output[-3000:]
    deadline = time.time() + 20
    while time.time() < deadline and [p for p in family if psutil.pid_exists(p)]:
        time.sleep(0.2)
    alive = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive, [psutil.Process(p).cmdline() for p in alive]


def test_apex_actors_feed_the_replay_and_the_learner_sends_priorities(cluster, tmp_path):
    run = dist_run(tmp_path, preset="apex-cartpole", total=4096, mode="async", actors=4)
    run = dataclasses.replace(
        run, algo=dataclasses.replace(run.algo, learning_starts=512, gradient_steps=16)
    )
    result = train(run)
    assert result.status == "completed"
    rows = metrics(result.run_dir)
    assert last(result.run_dir, "train/replay_size") >= 2048
    assert any((row.get("losses/td_loss") or 0) > 0 for row in rows)  # NaN (null) while warm
    assert last(result.run_dir, "train/epsilon_min") == pytest.approx(0.4**8, rel=1e-3)
    assert evaluate_run(result.run_dir, episodes=2).returns.shape == (1, 2)  # no replay in it


@pytest.mark.slow  # keeps the default suite under 15 min on 2 cores
def test_impala_runs_async_and_measures_its_rho(cluster, tmp_path):
    result = train(dist_run(tmp_path, preset="impala-cartpole", total=8192, mode="async"))
    assert result.status == "completed"
    assert last(result.run_dir, "train/rho_mean") is not None
    assert last(result.run_dir, "dist/policy_lag") is not None


def solved_at(run_dir: Path, level: float) -> int | None:
    for row in metrics(run_dir):
        if row.get("eval/episodic_return", 0) >= level:
            return row["step"]
    return None


@pytest.mark.slow
def test_impala_async_learns_cartpole(cluster, tmp_path):
    run = dist_run(tmp_path, preset="impala-cartpole", total=200_000, mode="async")
    run = dataclasses.replace(
        run,
        train=dataclasses.replace(
            run.train, eval_every=10240, eval_episodes=16, stop_at_return=500.0
        ),
    )
    result = train(run)
    assert solved_at(result.run_dir, 475) is not None


@pytest.mark.slow
def test_apex_learns_cartpole(cluster, tmp_path):
    run = dist_run(tmp_path, preset="apex-cartpole", total=50_000, mode="async", actors=4)
    run = dataclasses.replace(
        run, train=dataclasses.replace(run.train, eval_every=4096, eval_episodes=10)
    )
    result = train(run)
    assert solved_at(result.run_dir, 475) is not None


@pytest.mark.slow
def test_sync_matches_single_process_statistically(cluster, tmp_path):
    """PPO on CartPole, 5 seeds each, the preset's schedule: the mean evaluation return at the
    same env steps agrees, sync (2 actors) or in one process, within 3 standard errors of the
    difference (plus 25 for two means at the 500 ceiling)."""
    import numpy as np

    finals = {}
    for mode in ("single", "sync"):
        returns = []
        for seed in range(5):
            run = dist_run(tmp_path / mode / str(seed), total=102_400, mode=mode)
            run = dataclasses.replace(
                run, train=dataclasses.replace(run.train, seed=seed, eval_episodes=16)
            )
            returns.append(float(train(run).eval_returns[0]))
        finals[mode] = np.array(returns)
    a, b = finals["single"], finals["sync"]
    error = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= 3 * error + 25, finals
    assert min(a.mean(), b.mean()) >= 400, finals


@pytest.mark.slow  # keeps the default suite under 15 min on 2 cores
def test_the_cli_joins_a_running_cluster_by_address(cluster, tmp_path):
    command = [
        sys.executable, "-m", "fleetrl", "train", "ppo-cartpole", "--dist.mode", "sync",
        "--dist.address", cluster.address, "--train.seed", "0", "--train.total-steps", "4096",
        "--log.root", str(tmp_path), "--log.progress", "False",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (next(tmp_path.glob("ppo-cartpole__*")) / "summary.json").is_file()
