"""EnvPool: semantics (auto-reset, episode totals, seeding parity across worker counts), faults
(reliability cases F1-F7: exceptions, deaths, hangs, slow starts, restarts), bad inputs (I1-I12)
and clean shutdown. Every test checks afterwards that no child process and no shared memory of
its pools is left behind."""

from __future__ import annotations

import functools
import gc
import os
import re
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import active_children, resource_tracker

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from fleetrl.envs.errors import (
    EnvConstructionError,
    EnvPoolError,
    EnvResetError,
    EnvStepError,
    EnvTimeoutError,
    MismatchedSpacesError,
    MissingDependencyError,
    OldGymApiError,
    UnsupportedEnvError,
    UnsupportedSpaceError,
    WorkerDiedError,
)
from fleetrl.envs.fake import FaultyEnv, InjectedFault, OldGymEnv, fault_count
from fleetrl.envs.pool import EnvPool

FAKE = "fleetrl.envs.fake:FaultyEnv"


def _children() -> list[int]:
    """Live child processes of this process, except multiprocessing's shared resource
    tracker (one per interpreter, not ours to stop)."""
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and int(name) != tracker:
            found.append(int(name))
    return found


@pytest.fixture
def pools():
    """Build pools through ``pools(...)``; afterwards close them and check for leaks."""
    made: list[EnvPool] = []
    before = set(_children())

    def make(*args, from_id=True, **kwargs):
        pool = (EnvPool.from_id if from_id else EnvPool)(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
    assert not active_children()
    assert set(_children()) - before == set()
    leaked = [n for p in made for n in p.resource_names if os.path.exists(_shm_path(n))]
    assert not leaked, f"shared memory left in /dev/shm: {leaked}"


def _shm_path(name: str) -> str:
    # shared memory "psm_x" -> /dev/shm/psm_x; semaphore "/mp-x" -> /dev/shm/sem.mp-x
    return f"/dev/shm/sem.{name[1:]}" if name.startswith("/") else f"/dev/shm/{name}"


def _reference(make_env, num_envs: int, seed: int, actions: np.ndarray) -> dict:
    """What a pool must return, computed with plain gymnasium envs in a loop."""
    envs = [make_env(i) for i in range(num_envs)]
    first = [envs[i].reset(seed=seed + i)[0] for i in range(num_envs)]
    ret, length = [0.0] * num_envs, [0] * num_envs
    out = {k: [] for k in ("obs", "final_obs", "reward", "terminated", "truncated", "ret", "len")}
    for batch in actions:
        row = {k: [] for k in out}
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(int(batch[i]))
            ret[i] += r
            length[i] += 1
            row["final_obs"].append(o)
            row["reward"].append(r)
            row["terminated"].append(term)
            row["truncated"].append(trunc and not term)
            row["ret"].append(ret[i])
            row["len"].append(length[i])
            if term or trunc:
                o, _ = env.reset()
                ret[i], length[i] = 0.0, 0
            row["obs"].append(o)
        for k in out:
            out[k].append(row[k])
    return {"first": np.asarray(first), **{k: np.asarray(v) for k, v in out.items()}}


def _run(pool: EnvPool, actions: np.ndarray) -> dict:
    first = pool.reset()
    out = {k: [] for k in ("obs", "final_obs", "reward", "terminated", "truncated", "ret", "len")}
    for batch in actions:
        ts = pool.step(batch)
        fields = (ts.obs, ts.final_obs, ts.reward, ts.terminated, ts.truncated)
        for key, value in zip(out, (*fields, ts.episode_return, ts.episode_length), strict=True):
            out[key].append(value)
    return {"first": first.obs, **{k: np.asarray(v) for k, v in out.items()}}


# ---- semantics --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_auto_reset_keeps_final_obs_and_episode_totals(pools):
    make = functools.partial(FaultyEnv, max_episode_steps=7)
    actions = np.random.default_rng(0).integers(0, 2, (60, 3))
    got = _run(pools(make, 3, 0, from_id=False, seed=5), actions)
    want = _reference(make, 3, 5, actions)
    np.testing.assert_array_equal(got["first"], want["first"])
    np.testing.assert_allclose(got["obs"], want["obs"], rtol=1e-6)
    np.testing.assert_allclose(got["final_obs"], want["final_obs"], rtol=1e-6)
    for key in ("reward", "terminated", "truncated", "len"):
        np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_allclose(got["ret"], want["ret"])
    done = got["terminated"] | got["truncated"]
    assert done.sum() >= 6 and got["truncated"].any()
    assert (got["len"][done] >= 1).all() and got["len"].max() == 7
    same = np.all(got["obs"] == got["final_obs"], axis=-1)
    assert (same | done).all() and not same[done].any()  # differ exactly where an episode ended
    after = np.roll(done, 1, axis=0)[1:]
    assert (got["len"][1:][after] == 1).all()  # totals restart after an episode ended
    assert got["obs"].dtype == np.float32 and got["ret"].dtype == np.float32
    assert got["len"].dtype == np.int32


@pytest.mark.timeout(60)
def test_same_trajectories_with_0_1_2_workers_and_a_stepping_parent(pools):
    actions = np.random.default_rng(1).integers(0, 2, (150, 5))
    settings = [(0, {}), (1, {}), (2, {"pin_workers": True}), (1, {"parent_steps": True})]
    made = [pools("CartPole-v1", 5, w, seed=3, **kwargs) for w, kwargs in settings]
    runs = [_run(pool, actions) for pool in made]
    pinned = [os.sched_getaffinity(w.process.pid) for w in made[2]._workers.workers]
    assert all(len(cpus) == 1 for cpus in pinned) and (os.cpu_count() < 2 or pinned[0] != pinned[1])
    assert runs[0]["terminated"].any()
    for run in runs[1:]:
        for key, value in runs[0].items():
            np.testing.assert_array_equal(run[key], value, err_msg=key)
    want = _reference(lambda i: gymnasium.make("CartPole-v1"), 5, 3, actions)
    np.testing.assert_array_equal(runs[0]["final_obs"], want["final_obs"])
    np.testing.assert_array_equal(runs[0]["obs"], want["obs"])


@pytest.mark.timeout(30)
def test_later_resets_are_unseeded_and_reset_seed_reseeds(pools):
    pool = pools("CartPole-v1", 2, 1, seed=7, step_timeout=5)
    first = pool.reset().obs
    assert not np.array_equal(pool.reset().obs, first)  # continues the envs' RNG
    np.testing.assert_array_equal(pool.reset(seed=7).obs, first)
    np.testing.assert_array_equal(first[1], gymnasium.make("CartPole-v1").reset(seed=8)[0])


@pytest.mark.timeout(30)
def test_terminated_wins_when_both_flags_are_set(pools):
    pool = pools(FAKE, 2, env_kwargs={"both_flags_at_step": 2})
    pool.reset()
    pool.step(np.zeros(2, np.int64))
    ts = pool.step(np.zeros(2, np.int64))
    assert ts.terminated.all() and not ts.truncated.any()
    assert (ts.episode_length == 2).all()


@pytest.mark.timeout(30)
def test_spec_and_observation_dtypes(pools):
    cartpole = pools("CartPole-v1", 2).spec
    assert (cartpole.action_kind, cartpole.num_actions, cartpole.max_episode_steps) == (
        "discrete",
        2,
        500,
    )
    assert cartpole.observation_shape == (4,) and cartpole.observation_dtype == np.float32
    pendulum = pools("Pendulum-v1", 2).spec
    assert pendulum.action_kind == "continuous" and pendulum.action_shape == (1,)
    assert (pendulum.action_low, pendulum.action_high) == ((-2.0,), (2.0,))
    image = pools(ImageEnv, 2, 0, from_id=False)
    assert image.reset().obs.dtype == np.uint8
    wide = pools(Float64Env, 2, 0, from_id=False)
    assert wide.reset().obs.dtype == np.float32


# ---- env and worker faults --------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_step_exception_in_worker_names_env_step_action_and_traceback(pools):
    kwargs = {"crash_at_step": 3, "fault_envs": (1,)}
    pool = pools(FAKE, 3, 1, env_kwargs=kwargs)
    pool.reset()
    pool.step(np.array([0, 1, 0]))
    pool.step(np.array([0, 1, 0]))
    with pytest.raises(EnvStepError) as info:
        pool.step(np.array([1, 0, 1]))
    message = str(info.value)
    for text in ("env 1", "worker 0", "pool step 3", "action 0", "InjectedFault", "Traceback"):
        assert text in message
    assert "fake.py" in message and "_step_with_faults" in message  # the child's frames
    assert (info.value.env_index, info.value.step, info.value.action) == (1, 3, 0)
    assert isinstance(info.value.__cause__, InjectedFault)
    with pytest.raises(EnvPoolError, match="unusable after an earlier error"):
        pool.step(np.zeros(3, np.int64))
    pool.close()
    pool.close()


@pytest.mark.timeout(30)
def test_step_and_reset_exceptions_in_process(pools):
    pool = pools(FAKE, 2, env_kwargs={"crash_at_step": 2, "fault_envs": (0,)})
    pool.reset()
    pool.step(np.zeros(2, np.int64))
    with pytest.raises(EnvStepError, match="env 0 raised in step in-process at pool step 2"):
        pool.step(np.zeros(2, np.int64))
    # the auto-reset after a 2-step episode is the env's second reset
    kwargs = {"crash_at_reset": 2, "fault_envs": (1,), "max_episode_steps": 2}
    pool = pools(FAKE, 2, env_kwargs=kwargs)
    pool.reset()
    pool.step(np.zeros(2, np.int64))
    with pytest.raises(EnvResetError, match="env 1 raised in reset") as info:
        pool.step(np.zeros(2, np.int64))
    assert "injected crash in reset 2 of env 1" in str(info.value)


@pytest.mark.timeout(30)
def test_faults_with_a_stepping_parent_name_where_they_happened(pools):
    def pool(fault_env, **kwargs):
        fault = {"crash_at_step": 2, "fault_envs": (fault_env,)}
        made = pools(FAKE, 4, 1, env_kwargs=fault, parent_steps=True, **kwargs)
        made.reset()
        made.step(np.zeros(4, np.int64))
        return made

    with pytest.raises(EnvStepError, match="env 3 raised in step in worker 1 at pool step 2"):
        pool(3).step(np.zeros(4, np.int64))
    with pytest.raises(EnvStepError, match="env 0 raised in step in-process at pool step 2"):
        pool(0).step(np.zeros(4, np.int64))
    restarting = pool(1, on_error="restart")  # the parent's share is rebuilt in-process
    ts = restarting.step(np.zeros(4, np.int64))
    np.testing.assert_array_equal(ts.truncated, [True, True, False, False])
    assert restarting.num_restarts == 1


@pytest.mark.timeout(30)
def test_constructor_exception_fails_fast_with_traceback(pools):
    start = time.monotonic()
    with pytest.raises(EnvConstructionError) as info:
        pools(FAKE, 4, 2, env_kwargs={"crash_in_init": True, "fault_envs": (3,)})
    assert time.monotonic() - start < 10
    assert info.value.env_index == 3
    message = str(info.value)
    assert "env 3" in message and "worker 1" in message and "injected crash" in message
    assert "Traceback" in message


@pytest.mark.timeout(30)
def test_worker_killed_mid_step_is_detected_within_a_second(pools):
    pool = pools(FAKE, 4, 2, env_kwargs={"stall_at_step": 2, "stall_seconds": 20})
    pool.reset()
    pool.step(np.zeros(4, np.int64))
    victim = pool._workers.workers[1].process.pid
    killed = []
    timer = threading.Timer(0.3, lambda: (os.kill(victim, signal.SIGKILL), killed.append(1)))
    timer.start()
    start = time.monotonic()
    with pytest.raises((WorkerDiedError, EnvTimeoutError)) as info:
        pool.step(np.zeros(4, np.int64))
    elapsed = time.monotonic() - start
    timer.join()
    assert killed and isinstance(info.value, WorkerDiedError)
    assert elapsed < 0.3 + 1.0
    assert "worker 1 (envs 2-3)" in str(info.value) and "SIGKILL" in str(info.value)
    close_start = time.monotonic()
    pool.close()  # worker 0 is still sleeping in its step
    assert time.monotonic() - close_start < 4


@pytest.mark.timeout(30)
def test_worker_exit_inside_step(pools):
    pool = pools(FAKE, 2, 1, env_kwargs={"exit_at_step": 2, "fault_envs": (1,)})
    pool.reset()
    pool.step(np.zeros(2, np.int64))
    start = time.monotonic()
    with pytest.raises(
        WorkerDiedError, match=r"worker 0 \(envs 0-1\) died during step 2: exit code 3"
    ):
        pool.step(np.zeros(2, np.int64))
    assert time.monotonic() - start < 1.0


@pytest.mark.timeout(30)
def test_hung_step_times_out_and_close_is_bounded(pools):
    kwargs = {"stall_at_step": 2, "stall_seconds": 60, "fault_envs": (0,)}
    pool = pools(FAKE, 2, 2, env_kwargs=kwargs, step_timeout=0.5)
    pool.reset()
    pool.step(np.zeros(2, np.int64))
    start = time.monotonic()
    with pytest.raises(EnvTimeoutError) as info:
        pool.step(np.zeros(2, np.int64))
    assert 0.5 <= time.monotonic() - start < 2.0
    assert info.value.worker_indices == [0] and info.value.env_indices == [0]
    assert "did not finish step 2 within 0.5 s" in str(info.value)
    start = time.monotonic()
    pool.close()
    pool.close()
    assert time.monotonic() - start < 4


@pytest.mark.timeout(30)
def test_slow_constructor_hits_the_start_timeout(pools):
    kwargs = {"init_delay": 60, "fault_envs": (1,)}
    start = time.monotonic()
    with pytest.raises(EnvTimeoutError) as info:
        pools(FAKE, 2, 2, env_kwargs=kwargs, start_timeout=4.0)
    assert time.monotonic() - start < 10
    assert info.value.worker_indices == [1]
    assert "worker 1 (envs 1) did not start within 4 s" in str(info.value)


@pytest.mark.timeout(60)
def test_restart_truncates_the_broken_episodes_and_counts(pools, tmp_path):
    counter = str(tmp_path / "faults")
    kwargs = {"crash_at_step": 3, "fault_envs": (2,), "counter_path": counter, "max_faults": 1}
    pool = pools(FAKE, 4, 2, env_kwargs=kwargs, on_error="restart")
    pool.reset()
    prev = [pool.step(np.full(4, t % 2)) for t in range(2)][-1]
    ts = pool.step(np.zeros(4, np.int64))  # env 2 crashes: worker 1 (envs 2-3) restarts
    assert pool.num_restarts == 1 and fault_count(counter) == 1
    assert pool.last_restarted.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(ts.truncated, [False, False, True, True])
    np.testing.assert_array_equal(ts.final_obs[2:], prev.obs[2:])  # the last good observation
    assert (ts.reward[2:] == 0).all() and not ts.terminated[2:].any()
    np.testing.assert_array_equal(ts.episode_length, [3, 3, 2, 2])
    assert not np.array_equal(ts.obs[2:], ts.final_obs[2:])  # a fresh episode
    for t in range(3):
        ts = pool.step(np.full(4, t % 2))
    assert pool.num_restarts == 1 and not pool.last_restarted.any()
    np.testing.assert_array_equal(ts.episode_length, [6, 6, 3, 3])


@pytest.mark.timeout(30)
def test_restart_after_worker_death(pools, tmp_path):
    counter = str(tmp_path / "faults")
    kwargs = {"exit_at_step": 2, "exit_how": "sigkill", "counter_path": counter, "max_faults": 1}
    pool = pools(FAKE, 2, 1, env_kwargs=kwargs, on_error="restart")
    pool.reset()
    pool.step(np.zeros(2, np.int64))
    ts = pool.step(np.zeros(2, np.int64))
    assert pool.num_restarts == 1 and ts.truncated.all()
    assert (pool.step(np.zeros(2, np.int64)).episode_length == 1).all()


@pytest.mark.timeout(30)
def test_restart_budget_exhausted_raises_the_last_error(pools):
    kwargs = {"crash_step_prob": 1.0, "fault_envs": (1,)}
    pool = pools(FAKE, 2, env_kwargs=kwargs, on_error="restart", max_restarts=2)
    pool.reset()
    for restarts in (1, 2):
        assert pool.step(np.zeros(2, np.int64)).truncated.all()
        assert pool.num_restarts == restarts
    with pytest.raises(EnvStepError, match="env 1 raised in step") as info:
        pool.step(np.zeros(2, np.int64))
    # in the message itself, which is what the CLI prints
    assert str(info.value).startswith("EnvPool gave up after 2 worker restarts")


def test_occasional_faults_never_use_up_the_restart_budget(pools):
    # env 1 crashes in the 1,100th step of each life: 3 restarts in 3,400 steps, never 2 within
    # RESTART_WINDOW (1,000) steps; a crash every 3rd step exhausts the same budget at once
    from fleetrl.envs.pool import RESTART_WINDOW

    assert RESTART_WINDOW == 1000
    kwargs = {"crash_at_step": 1100, "fault_envs": (1,)}
    pool = pools(FAKE, 2, env_kwargs=kwargs, on_error="restart", max_restarts=1)
    pool.reset()
    actions = np.zeros(2, np.int64)
    for _ in range(3400):
        pool.step(actions)
    assert pool.num_restarts == 3
    kwargs = {"crash_at_step": 3, "fault_envs": (1,)}
    pool = pools(FAKE, 2, env_kwargs=kwargs, on_error="restart", max_restarts=1)
    pool.reset()
    with pytest.raises(EnvStepError, match="env 1 raised in step") as info:
        for _ in range(10):
            pool.step(actions)
    assert pool.num_restarts == 1
    assert "gave up after 1 worker restarts within 1000 steps" in str(info.value)


@pytest.mark.timeout(30)
def test_ctrl_c_while_stepping_leaves_no_orphans_or_worker_tracebacks(pools, capfd):
    pool = pools(FAKE, 2, 2, env_kwargs={"stall_at_step": 1, "stall_seconds": 2})
    pool.reset()
    workers = [w.process.pid for w in pool._workers.workers]

    def ctrl_c():  # what a terminal does: SIGINT to the whole foreground process group
        for pid in (*workers, os.getpid()):
            os.kill(pid, signal.SIGINT)

    timer = threading.Timer(0.3, ctrl_c)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        pool.step(np.zeros(2, np.int64))
    timer.join()
    assert all(w.process.exitcode is None for w in pool._workers.workers)  # SIGINT ignored
    with pytest.raises(EnvPoolError, match="KeyboardInterrupt"):
        pool.step(np.zeros(2, np.int64))
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 4
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.timeout(30)
def test_workers_exit_when_the_parent_dies(tmp_path):
    script = (
        "import os, sys\n"
        "from fleetrl.envs.pool import EnvPool\n"
        "pool = EnvPool.from_id('CartPole-v1', 2, 1)\n"
        "print(pool._workers.workers[0].process.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, cwd=os.getcwd()
    )
    worker = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker), "worker outlived its parent"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("started_by", ["main thread", "other thread"])
def test_worker_inside_a_long_step_dies_with_its_parent(tmp_path, started_by):
    """Linux's parent-death signal for a pool started by the main thread; a watch thread in the
    worker for one started by another thread (the evaluation pool, started beside compilation)."""
    counter = tmp_path / "stalls"
    make = f"EnvPool.from_id({FAKE!r}, 1, 1, env_kwargs=kwargs, step_timeout=120)"
    if started_by == "other thread":
        make = f"concurrent.futures.ThreadPoolExecutor(1).submit(lambda: {make}).result()"
    script = (
        "import concurrent.futures, time\n"
        "import numpy as np\n"
        "from fleetrl.envs.pool import EnvPool\n"
        f"kwargs = {{'stall_at_step': 1, 'stall_seconds': 60, 'counter_path': {str(counter)!r}}}\n"
        f"pool = {make}\n"
        "print(pool._workers.workers[0].process.pid, flush=True)\n"
        "pool.reset()\n"
        "pool.step_async(np.zeros(1, np.int64))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    worker = None
    try:
        worker = int(parent.stdout.readline())
        deadline = time.monotonic() + 20
        while fault_count(str(counter)) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the worker is inside its 60 s step
        assert fault_count(str(counter)) == 1, "the worker never started its step"
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.05)
        assert not _alive(worker), "a worker inside a step outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(5)
        parent.stdout.close()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["watchdog", "ctrl-c"])
def test_an_exit_that_skips_shutdown_still_closes_the_workers_envs(tmp_path, how):
    """os._exit (a hung call's watchdog, Ctrl+C before training) releases the pools first:
    each worker closes its envs (a simulator it started, a video it records)."""
    closed = tmp_path / "closed"
    exit_ = {
        "watchdog": "from fleetrl.interrupts import exit_now; exit_now(3, 'test', None)",
        "ctrl-c": "import os, signal; os.kill(os.getpid(), signal.SIGINT); time.sleep(10)",
    }[how]
    script = (
        "import signal, time\n"
        "from fleetrl.cli import _exit_on_signal\n"
        "from fleetrl.envs.pool import EnvPool\n"
        "signal.signal(signal.SIGINT, _exit_on_signal)\n"
        f"kwargs = {{'close_path': {str(closed)!r}}}\n"
        f"pool = EnvPool.from_id({FAKE!r}, 3, 1, env_kwargs=kwargs)\n"
        "pool.reset()\n"
        f"{exit_}\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=45, cwd=os.getcwd())  # fmt: skip
    assert done.returncode == {"watchdog": 3, "ctrl-c": 130}[how], done.stderr
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(closed.read_text().split()) == ["0", "1", "2"]


@pytest.mark.timeout(30)
def test_a_pool_started_by_a_thread_outlives_the_thread(pools):
    # Linux's parent-death signal follows the thread that started a worker, not the process
    made = []
    thread = threading.Thread(target=lambda: made.append(pools(FAKE, 2, 1)))
    thread.start()
    thread.join()
    pool = made[0]
    pool.reset()
    time.sleep(0.2)
    assert pool.step(np.zeros(2, np.int64)).episode_length.tolist() == [1, 1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(30)
def test_forgotten_pool_is_closed_by_the_garbage_collector():
    pool = EnvPool.from_id("CartPole-v1", 2, 1)
    names, pid = pool.resource_names, pool._workers.workers[0].process.pid
    del pool
    gc.collect()
    assert not _alive(pid)
    assert not any(os.path.exists(_shm_path(n)) for n in names)
    assert not active_children()


# ---- bad inputs -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_action_checks_name_shape_dtype_env_and_value(pools):
    pool = pools("CartPole-v1", 8)
    with pytest.raises(EnvPoolError, match=r"call reset\(\) before step\(\)"):
        pool.step(np.zeros(8, np.int64))
    pool.reset()
    message = "actions: expected shape (8,) int for Discrete(2), got (7,) float32"
    with pytest.raises(ValueError, match=re.escape(message)):
        pool.step(np.zeros(7, np.float32))
    with pytest.raises(ValueError, match=r"got \(8,\) float64"):
        pool.step(np.zeros(8))
    actions = np.zeros(8, np.int64)
    actions[3] = 5
    with pytest.raises(ValueError, match=r"env 3 got 5, outside Discrete\(2\)"):
        pool.step(actions)
    actions[3] = -1
    with pytest.raises(ValueError, match="env 3 got -1"):
        pool.step(actions)
    pool.step(np.ones(8, np.int32))  # still usable: bad input is rejected before sending


@pytest.mark.timeout(30)
def test_continuous_actions_nan_rejected_and_out_of_range_clipped(pools):
    pool = pools(EchoEnv, 4, 0, from_id=False)
    pool.reset()
    actions = np.array([[0.5], [3.0], [-7.0], [-1.0]], np.float32)
    ts = pool.step(actions)
    np.testing.assert_array_equal(ts.obs[:, 0], [0.5, 1.0, -1.0, -1.0])  # what the env got
    assert pool.last_clip_fraction == 0.5
    actions[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"env 2 has a non-finite action \[nan\]"):
        pool.step(actions)
    with pytest.raises(ValueError, match=r"expected shape \(4, 1\) float for Box"):
        pool.step(np.zeros((4,), np.float32))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where, value", [("obs", float("nan")), ("reward", float("inf"))])
def test_nonfinite_env_output_is_an_error_naming_env_step_action(pools, where, value):
    kwargs = {"nonfinite_at_step": 3, "nonfinite_in": where, "nonfinite_value": value}
    pool = pools(FAKE, 3, env_kwargs={**kwargs, "fault_envs": (1,)})
    pool.reset()
    pool.step(np.zeros(3, np.int64))
    pool.step(np.zeros(3, np.int64))
    what = "observation" if where == "obs" else "reward"
    with pytest.raises(
        EnvStepError,
        match=f"env 1 returned a non-finite {what} at pool step 3 "
        r"\(last action 1\)",
    ):
        pool.step(np.ones(3, np.int64))
    unchecked = pools(FAKE, 3, env_kwargs=kwargs, check_finite=False)
    unchecked.reset()
    for _ in range(3):
        ts = unchecked.step(np.zeros(3, np.int64))
    assert not np.isfinite(ts.final_obs if where == "obs" else ts.reward).all()


@pytest.mark.timeout(30)
def test_old_gym_envs_are_rejected_at_construction_with_a_pointer_to_shimmy(pools):
    with pytest.raises(OldGymApiError, match="shimmy") as info:
        pools("fleetrl.envs.fake:OldGymEnv", 2, 1)  # through a worker process
    assert isinstance(info.value, EnvConstructionError) and isinstance(info.value, TypeError)
    assert "\n" not in str(info.value)  # what to do, not fleetrl's traceback
    # by id, a class that is no gymnasium.Env is refused before it is built (envs.trust);
    # given as a callable, a half-ported one is caught by the startup probe's step
    with pytest.raises(OldGymApiError, match=r"env 0: step\(\) returned 4 values.*shimmy"):
        pools(functools.partial(OldGymEnv, new_reset=True), 2, 1, from_id=False)
    with pytest.raises(EnvConstructionError, match=r"reset\(\) takes no `seed`.*shimmy"):
        pools(OldGymEnv, 2, 0, from_id=False)
    # caught by the startup probe (checks.probe_env), not at the pool's first reset or step
    with pytest.raises(OldGymApiError, match=r"not \(obs, info\).*shimmy"):
        pools(ObsOnlyResetEnv, 2, 0, from_id=False)
    with pytest.raises(OldGymApiError, match="returned 4 values.*shimmy"):
        pools(FourTupleStepEnv, 2, 0, from_id=False)


@pytest.mark.timeout(30)
def test_old_gym_api_of_an_unprobed_env_fails_at_the_first_reset_and_step(pools):
    pool = pools(lambda: Unprobed(ObsOnlyResetEnv()), 2, 0, from_id=False)
    with pytest.raises(OldGymApiError, match=r"not \(obs, info\).*shimmy"):
        pool.reset()
    pool = pools(lambda: Unprobed(FourTupleStepEnv()), 2, 0, from_id=False)
    pool.reset()
    with pytest.raises(OldGymApiError, match="returned 4 values.*shimmy"):
        pool.step(np.zeros(2, np.int64))


@pytest.mark.timeout(30)
def test_startup_probe_reports_an_env_failing_its_first_step_and_can_be_opted_out(pools):
    with pytest.raises(EnvConstructionError, match="env 0.*raised in its startup check") as info:
        pools(StepRaisesEnv, 2, 0, from_id=False)
    assert "startup check of env 0: one reset() and one step()" in str(info.value)
    pool = pools(lambda: Unprobed(StepRaisesEnv()), 2, 0, from_id=False)
    pool.reset()
    with pytest.raises(EnvStepError, match="env 0 raised in step in-process at pool step 1"):
        pool.step(np.zeros(2, np.int64))


class NeedsBox2D(gymnasium.Env):
    """What gymnasium's LunarLander does without Box2D installed."""

    def __init__(self):
        raise gymnasium.error.DependencyNotInstalled(
            "Box2D is not installed, you can install it by run `pip install swig` followed by "
            '`pip install "gymnasium[box2d]"`'
        )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_missing_package_is_one_line_naming_the_extra(pools, num_workers):
    with pytest.raises(MissingDependencyError) as info:
        pools(NeedsBox2D, 2, num_workers, from_id=False)
    message = str(info.value)
    assert "Box2D is not installed" in message and 'pip install "fleetrl[box2d]"' in message
    assert len(message.splitlines()) == 1 and isinstance(info.value, ImportError)


@pytest.mark.timeout(30)
def test_unseeded_pools_stay_unseeded_after_the_startup_probe(pools):
    obs = pools("CartPole-v1", 4, 0, seed=None).reset().obs
    assert len({row.tobytes() for row in obs}) == 4  # a fixed probe seed would repeat them


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "action_space, observation_space, match",
    [
        (spaces.Tuple([spaces.Discrete(2)] * 2), None, r"action space Tuple.*supported: Discrete"),
        (spaces.MultiBinary(3), None, "action space MultiBinary"),
        (None, spaces.Dict({"x": spaces.Box(0, 1, (2,))}), "observation space Dict.*not yet"),
        (spaces.MultiDiscrete([2, 3]), None, "action space MultiDiscrete.*ActionWrapper"),
    ],
)
def test_unsupported_spaces_are_rejected(pools, action_space, observation_space, match):
    make = functools.partial(SpacesEnv, action_space, observation_space)
    with pytest.raises(NotImplementedError, match=match) as info:
        pools(make, 2, 0, from_id=False)
    assert isinstance(info.value, UnsupportedSpaceError) and isinstance(info.value, EnvPoolError)


@pytest.mark.timeout(30)
def test_unsupported_spaces_of_a_registered_env_are_one_line_saying_what_to_do(pools):
    with pytest.raises(UnsupportedSpaceError) as info:
        pools("Blackjack-v1", 2, 1)  # through a worker process
    assert isinstance(info.value, UnsupportedEnvError)  # the CLI prints it as one line
    message = str(info.value)
    assert "observation space Tuple" in message and "FlattenObservation" in message
    assert "--env.id module.path:ClassName" in message and "\n" not in message


@pytest.mark.timeout(30)
def test_different_spaces_across_envs_name_the_index_and_both_spaces(pools):
    with pytest.raises(
        ValueError, match=r"env 2 has observation space Box.*\(3,\).*env 0 has.*\(4,\)"
    ) as info:
        pools(lambda i: FaultyEnv(i, obs_size=3 if i == 2 else 4), 3, 0, from_id=False)
    assert isinstance(info.value, MismatchedSpacesError) and info.value.env_index == 2
    with pytest.raises(MismatchedSpacesError, match="env 1 has action space Box"):
        pools(lambda i: FaultyEnv(i, continuous=i == 1), 2, 0, from_id=False)


@pytest.mark.timeout(30)
def test_bad_pool_arguments(pools):
    with pytest.raises(TypeError, match="does not pickle"):
        pools(lambda i: FaultyEnv(i), 2, 1, from_id=False)
    with pytest.raises(ValueError, match="num_workers: must be in 0..num_envs=2"):
        pools(FAKE, 2, 3)
    with pytest.raises(ValueError, match="one less with parent_steps"):
        pools(FAKE, 2, 2, parent_steps=True)
    with pytest.raises(ValueError, match="on_error"):
        pools(FAKE, 2, on_error="ignore")


@pytest.mark.timeout(10)
def test_errors_pickle_with_their_attributes():
    import pickle

    errors = [
        WorkerDiedError(1, range(2, 4), -9, "step 3"),
        EnvTimeoutError([0], [0], 0.5, "step 2"),
        EnvStepError("boom", 1, 2, [0.5]),
        EnvResetError("boom", 1, 2),
        EnvConstructionError("boom", 3),
        OldGymApiError("boom", 1),
        UnsupportedSpaceError("boom", 0),
        MismatchedSpacesError("boom", 2),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
    assert "killed by signal SIGKILL" in str(errors[0])


# ---- small envs for the checks ------------------------------------------------------------------


class EchoEnv(gymnasium.Env):
    """Observes the action it was given."""

    observation_space = spaces.Box(-5, 5, (1,), np.float32)
    action_space = spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.asarray(action, np.float32), 0.0, False, False, {}


class ImageEnv(EchoEnv):
    observation_space = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.full((8, 8, 3), 7, np.uint8), {}

    def step(self, action):
        return np.full((8, 8, 3), 7, np.uint8), 0.0, False, False, {}


class Float64Env(EchoEnv):
    observation_space = spaces.Box(-1, 1, (2,), np.float64)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(2), {}

    def step(self, action):
        return np.zeros(2), 0.0, False, False, {}


class SpacesEnv(EchoEnv):
    def __init__(self, action_space=None, observation_space=None):
        self.action_space = action_space or spaces.Discrete(2)
        self.observation_space = observation_space or spaces.Box(-1, 1, (2,), np.float32)


class ObsOnlyResetEnv(Float64Env):
    def reset(self, *, seed=None, options=None):
        return np.zeros(2)


class FourTupleStepEnv(Float64Env):
    def step(self, action):
        return np.zeros(2), 0.0, False, {}


class StepRaisesEnv(Float64Env):
    def step(self, action):
        raise InjectedFault("this env cannot step")


class Unprobed(gymnasium.Wrapper):
    """Opts its env out of the pool's startup probe (through a wrapper, as users would)."""

    def __init__(self, env):
        super().__init__(env)
        self.metadata = {**env.metadata, "fleetrl_startup_probe": False}
