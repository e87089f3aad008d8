"""Ctrl+C and SIGTERM during training: one checkpoint, exit 130; a second Ctrl+C exits at once
without damaging the last committed checkpoint. Real processes, under a timeout."""

import os
import signal
import subprocess
import sys
import time

import pytest

from fleetrl import checkpoint

pytestmark = pytest.mark.timeout(180)


def start(run_dir, *extra):
    cmd = [
        sys.executable,
        "-m",
        "fleetrl",
        "train",
        "ppo-cartpole",
        "--log.run-dir",
        str(run_dir),
        "--log.progress",
        "False",
        "--log.tensorboard",
        "False",
        "--train.total-steps",
        "100000000",
        "--train.log-every",
        "512",
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "FLEETRL_CACHE_DIR": os.environ["FLEETRL_CACHE_DIR"]},
    )


def wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def metrics_lines(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_checkpoint_and_exits_130(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    try:
        wait_for(lambda: metrics_lines(run_dir) >= 2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    latest = checkpoint.latest(run_dir)
    assert latest is not None and (latest / "manifest.json").exists()
    # and the run resumes from it
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetrl",
            "train",
            "--resume",
            str(run_dir),
            "--train.total-steps",
            str(int(latest.name.split("_")[1]) + 1024),
            "--log.progress",
            "False",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def test_second_ctrl_c_exits_at_once_and_keeps_checkpoint(tmp_path):
    from fleetrl.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    proc = start(run_dir, "--train.checkpoint-every", "1024")
    try:
        wait_for(lambda: checkpoint.latest(run_dir) is not None and metrics_lines(run_dir) >= 4)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode in (130, -signal.SIGINT)
    returns, _ = evaluate_run(run_dir, episodes=1)  # verifies the manifest and checksums
    assert returns.shape == (1, 1)


def test_watchdog_stops_a_call_that_never_returns(tmp_path):
    """A wedged compiled call becomes exit code 3 with a message naming the run directory."""
    code = (
        "import time; from pathlib import Path; from fleetrl.interrupts import CallWatchdog\n"
        f"w = CallWatchdog(Path({str(tmp_path)!r}), timeout=0.5); w.start(); time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "has not returned after 0 s" in proc.stderr or "after 1 s" in proc.stderr
    assert f"fleetrl train --resume {tmp_path}" in proc.stderr
