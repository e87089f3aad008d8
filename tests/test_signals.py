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
def test_signal_writes_checkpoint_and_exits_128_plus_signal(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    try:
        wait_for(lambda: metrics_lines(run_dir) >= 2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, out  # 130 after Ctrl+C, 143 after SIGTERM
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


@pytest.mark.parametrize(
    "sig, when",
    [(signal.SIGINT, "startup"), (signal.SIGINT, "training"), (signal.SIGTERM, "startup")],
)
def test_a_signal_with_worker_processes_leaves_nothing_behind(tmp_path, sig, when):
    """Host envs in two worker processes, Ctrl+C or SIGTERM while the program compiles or while
    it trains (then with a checkpoint): exit 128 + the signal with a line saying so, and no
    process (workers, resource tracker), no shared memory and no resource-tracker warning left
    behind (SIGTERM at startup was the default action: no message, leaked semaphores)."""
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
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, out
    assert "Traceback" not in out and "leaked" not in out, out
    if when == "startup":
        assert ("interrupted" if sig == signal.SIGINT else "stopped by SIGTERM") in out, out
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
    from fleetrl.restore import evaluate_run

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
    returns = evaluate_run(run_dir, episodes=1).returns  # verifies manifest and checksums
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
    # no checkpoint in the run dir: `--resume` would fail, so it is not what the message says
    assert "No checkpoint to continue from" in proc.stderr and "--resume" not in proc.stderr


def start_hanging(run_dir, where: str, *extra, at_step: int = 3):
    """A host-env run in which one env sleeps forever in its ``at_step``-th step: training env 3
    (where="training"; stepped in this process unless ``extra`` adds workers; evaluation has
    envs 0-1) or evaluation env 5 (where="eval"; evaluation has envs 0-5, in a worker process,
    training 0-3); ``stalled(run_dir)`` once it does."""
    marker = run_dir.parent / "stalled"
    index, episodes = (3, "2") if where == "training" else (5, "6")
    kwargs = (
        f"{{stall_at_step: {at_step}, stall_seconds: 100000, fault_envs: [{index}], "
        f"counter_path: {marker}}}"
    )
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
        "--train.eval-episodes", episodes,
        "--train.checkpoint-every", "0",
        *extra,
    )  # fmt: skip


def stalled(run_dir):
    return (run_dir.parent / "stalled").exists()


def signal_when_stalled(proc, run_dir, sig) -> tuple[str, float, list]:
    """Send ``sig`` once the run's env hangs for good; its output, the seconds it took to exit
    after the signal, and the processes it had started."""
    import psutil

    try:
        wait_for(lambda: stalled(run_dir))
        time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        sent = time.time()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        return out, time.time() - sent, children
    finally:
        proc.kill()


def test_a_hung_in_process_env_is_stopped_by_the_watchdog(tmp_path):
    """Nothing interrupts an env stepped in this process: the call watchdog ends the run."""
    run_dir = tmp_path / "run"
    # compilation waits under the same limit: 25 s leaves a loaded machine time to compile
    proc = start_hanging(run_dir, "training", "--train.call-timeout", "25")
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        proc.kill()
    assert proc.returncode == 3, out
    assert "a compiled training call has not returned after 25 s" in out
    assert "No checkpoint to continue from" in out  # not `--resume`, which would fail


def test_a_hung_evaluation_step_times_out_and_training_goes_on(tmp_path):
    """Evaluation envs step in a worker process: a hung step times out after
    env.step_timeout, the evaluation is NaN with a warning, and training goes on (F12)."""
    import json

    run_dir = tmp_path / "run"
    proc = start_hanging(run_dir, "eval", "--env.step-timeout", "2", "--train.total-steps", "256")
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "the evaluation at step 128 failed (EnvTimeoutError" in out, out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/episodic_return" in r]
    assert [r["step"] for r in evals] == [128, 256]
    assert all(r["eval/episodic_return"] is None for r in evals)  # NaN, every time it hung
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_ctrl_c_while_a_worker_env_hangs_checkpoints_and_exits_130(tmp_path):
    """A hung env in a worker process does not hold a stop signal up until env.step_timeout
    (L1): the wait for it ends at once, the cut call's result is dropped, the state before it
    is checkpointed, exit 130; nothing is left running."""
    import psutil

    run_dir = tmp_path / "run"
    proc = start_hanging(
        run_dir, "training", "--env.num-workers", "1", at_step=100
    )  # calls of 32 steps per env: three complete (step 384), the fourth hangs
    out, waited, children = signal_when_stalled(proc, run_dir, signal.SIGINT)
    assert proc.returncode == 130, out
    assert waited < 15 and "Traceback" not in out, out
    assert checkpoint.latest(run_dir).name == "step_384"
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left running: {alive}"


def test_sigterm_while_an_in_process_env_hangs_exits_within_the_grace(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_hanging(run_dir, "training", "--train.stop-grace", "2")
    out, waited, _ = signal_when_stalled(proc, run_dir, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "did not stop within 2 s (train.stop_grace)" in out
    assert waited < 20


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_an_env_hangs_exits_at_once(tmp_path, sig):
    """Our handler stays installed for the second signal: an exit with a message, the workers
    stopped first (the default action killed silently, SIGTERM above all: L2)."""
    run_dir = tmp_path / "run"
    proc = start_hanging(run_dir, "training", "--train.stop-grace", "0")  # 0: wait for ever
    try:
        wait_for(lambda: stalled(run_dir))
        time.sleep(0.2)
        proc.send_signal(sig)
        time.sleep(1.0)
        assert proc.poll() is None  # the first one only asks the loop to stop
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, out
    assert "a second signal arrived" in out and "leaked" not in out, out


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
