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


@pytest.mark.parametrize("when", ["startup", "training"])
def test_ctrl_c_with_worker_processes_leaves_nothing_behind(tmp_path, when):
    """Host envs in two worker processes, Ctrl+C while the program compiles or while it trains
    (then with a checkpoint): exit 130, and no process (workers, resource tracker), no shared
    memory and no resource-tracker warning left behind."""
    import psutil

    run_dir = tmp_path / "run"
    proc = start(
        run_dir,
        "--env.backend", "gymnasium",
        "--env.num-envs", "4",
        "--env.num-workers", "2",
        "--train.num-steps", "32",
        "--train.log-every", "128",
    )  # fmt: skip
    try:
        workers = lambda: psutil.Process(proc.pid).children(recursive=True)
        if when == "startup":
            wait_for(lambda: len(workers()) >= 3)  # two workers and the resource tracker
        else:
            wait_for(lambda: metrics_lines(run_dir) >= 2)
        children = workers()
        shm = {m.path for m in psutil.Process(proc.pid).memory_maps() if "/dev/shm/" in m.path}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "leaked" not in out, out
    if when == "training":
        assert checkpoint.latest(run_dir) is not None
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left running: {alive}"
    assert shm and not any(os.path.exists(path) for path in shm)  # the pool's, all unlinked


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_ctrl_c_during_startup_is_one_line_and_exits_130(tmp_path, delay):
    """Ctrl+C while Python imports, traces or compiles (an empty compilation cache): exit 130
    with one line, no traceback; Python drops a KeyboardInterrupt raised inside JAX's garbage
    collector callback, so this also checks that the CLI's handler steers clear of it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetrl", "train", "ppo-cartpole", "--log.progress", "False",
         "--log.run-dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "FLEETRL_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "fleetrl: interrupted" in out or checkpoint.latest(tmp_path / "run") is not None, out


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


def start_hanging_eval(run_dir, *extra):
    """A host-env run whose evaluation hangs: eval env 5 (training has envs 0-3) sleeps forever
    in its third step, inside the compiled evaluation; ``stalled(run_dir)`` once it does."""
    marker = run_dir.parent / "stalled"
    kwargs = f"{{stall_at_step: 3, stall_seconds: 100000, fault_envs: [5], counter_path: {marker}}}"
    return start(
        run_dir,
        "--env.id", "fleetrl.envs.fake:FaultyEnv",
        "--env.backend", "gymnasium",
        "--env.num-envs", "4",
        "--env.num-workers", "0",
        "--env.kwargs", kwargs,
        "--train.num-steps", "32",
        "--train.log-every", "128",
        "--train.eval-every", "128",
        "--train.eval-episodes", "6",
        "--train.checkpoint-every", "0",
        *extra,
    )  # fmt: skip


def stalled(run_dir):
    return (run_dir.parent / "stalled").exists()


def test_a_hung_evaluation_is_stopped_by_the_watchdog(tmp_path):
    run_dir = tmp_path / "run"
    # compilation waits under the same limit: 25 s leaves a loaded machine time to compile
    proc = start_hanging_eval(run_dir, "--train.call-timeout", "25")
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        proc.kill()
    assert proc.returncode == 3, out
    assert "an evaluation has not returned after 25 s" in out


def test_sigterm_while_an_env_hangs_exits_within_the_grace(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_hanging_eval(run_dir, "--train.stop-grace", "2")
    try:
        wait_for(lambda: stalled(run_dir))  # inside the evaluation, for good
        time.sleep(0.2)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        waited = time.time() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "did not stop within 2 s (train.stop_grace)" in out
    assert waited < 20


def test_a_second_signal_while_an_env_hangs_exits_at_once(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_hanging_eval(run_dir, "--train.stop-grace", "0")  # 0: wait for ever
    try:
        wait_for(lambda: stalled(run_dir))
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # the first one only asks the loop to stop
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    # the default action if Python's handler could run in between (it restores it), else ours
    assert proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT), out
    assert proc.returncode == -signal.SIGINT or "a second signal arrived" in out


def test_signals_reach_the_watcher_while_the_main_thread_cannot_run_python(tmp_path):
    """The main thread stuck in C, so that Python's handler cannot run (as while it waits for a
    compiled call): the first signal starts the grace timer, a second one exits at once, both
    through the wakeup fd. Simulated: the main thread blocks the signals, so they land on the
    watcher thread, and then blocks in a read that nothing interrupts."""
    code = (
        "import os, signal, threading\n"
        "from fleetrl.interrupts import StopSignals\n"
        "with StopSignals(grace=float(os.environ['GRACE'])) as s:\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})\n"
        "    # 'ready' once the main thread is inside the read: a signal arriving while it still\n"
        "    # runs bytecode would run our Python handler there (and reset the disposition)\n"
        "    threading.Timer(0.5, print, ('ready',), {'flush': True}).start()\n"
        "    os.read(os.pipe()[0], 1)\n"
    )
    for grace, signals, expect in (
        ("1", 1, "did not stop within 1 s"),
        ("0", 2, "a second signal"),
    ):
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, "GRACE": grace},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            for _ in range(signals):
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert expect in out
