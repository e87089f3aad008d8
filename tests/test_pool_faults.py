"""EnvPool faults, continued: observations of the wrong shape, dtype or range (I9), a failing
startup check (F2/I12), in-process constructors that hang (F6), envs closed after a fault (L5),
waits a trainer can interrupt (L1), and the messages the CLI prints. As in test_pool.py, the
``pools`` fixture checks afterwards that no child process and no shared memory is left."""

from __future__ import annotations

import functools
import signal
import time
import warnings

import numpy as np
import pytest
from test_pool import FAKE, pools  # noqa: F401 (the fixture)

from fleetrl.envs import checks
from fleetrl.envs.errors import (
    EnvConstructionError,
    EnvInterruptedError,
    EnvPoolError,
    EnvPoolWarning,
    EnvResetError,
    EnvStepError,
    EnvTimeoutError,
)
from fleetrl.envs.fake import FaultyEnv, InjectedFault
from fleetrl.envs.handles import interrupt_after


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, np.int64)


# ---- observations of the wrong shape (I9) -------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("shape", [(3,), (), (1,)])  # () and (1,): numpy would broadcast them
def test_an_observation_changing_shape_is_a_step_error_naming_both_shapes(
    pools,  # noqa: F811
    num_workers,
    shape,
):
    kwargs = {"reshape_at_step": 3, "reshape_to": shape, "fault_envs": (1,)}
    pool = pools(FAKE, 2, num_workers, env_kwargs=kwargs)
    pool.reset()
    for _ in range(2):
        pool.step(_zeros(2))
    with pytest.raises(EnvStepError) as info:
        pool.step(np.ones(2, np.int64))
    message = str(info.value)
    assert (info.value.env_index, info.value.step) == (1, 3)
    assert message.startswith("env 1 returned an observation of the wrong shape in step")
    assert "pool step 3" in message and f"of shape {shape}" in message
    assert "declares shape (4,)" in message
    assert "\n" not in message  # fleetrl's check, not a numpy traceback
    if num_workers:  # reported by a live worker, not "worker 0 died: exit code 1"
        assert pool._workers.workers[0].process.exitcode is None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_auto_reset_observation_of_another_shape_is_a_reset_error(pools, num_workers):  # noqa: F811
    kwargs = {"reshape_at_reset": 2, "reshape_to": (), "max_episode_steps": 2, "fault_envs": (0,)}
    pool = pools(FAKE, 2, num_workers, env_kwargs=kwargs)
    pool.reset()
    pool.step(_zeros(2))
    with pytest.raises(EnvResetError) as info:
        pool.step(_zeros(2))  # the episode ends: env 0's second reset
    assert (info.value.env_index, info.value.step) == (0, 2)
    message = str(info.value)
    assert (
        "during pool step 2" in message and "reset() returned an observation of shape ()" in message
    )


class ArrayRewardEnv(FaultyEnv):
    """Returns its reward as an array of 2: each env's step succeeds, the batch write fails."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, np.ones(2), terminated, truncated, info


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_unexpected_exception_in_a_worker_is_a_reported_fault(pools, num_workers, tmp_path):  # noqa: F811
    closed = tmp_path / "closed"
    make = functools.partial(ArrayRewardEnv, close_path=str(closed))
    pool = pools(make, 2, num_workers, from_id=False)
    pool.reset()
    with pytest.raises(EnvStepError) as info:
        pool.step(_zeros(2))
    message = str(info.value)
    where = "in worker 0" if num_workers else "in-process"
    assert message.startswith(f"one of envs 0-1 raised in step {where} at pool step 1")
    assert "ValueError" in message and "Traceback" in message
    if num_workers:
        assert pool._workers.workers[0].process.exitcode is None  # alive, idle
    pool.close()
    assert sorted(closed.read_text().split()) == ["0", "1"]


class InPlaceEnv(FaultyEnv):
    """Returns one array it overwrites in place, in step and in reset (some simulators do)."""

    def __init__(self, env_index: int = 0):
        super().__init__(env_index)
        self.buffer = np.zeros(4, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.buffer[:] = -1.0
        return self.buffer, {}

    def step(self, action):
        super().step(action)
        self.buffer[:] = self.episode_steps
        return self.buffer, 1.0, self.episode_steps == 3, False, {}


@pytest.mark.timeout(30)
def test_final_obs_survives_an_env_that_reuses_its_array_in_reset(pools):  # noqa: F811
    pool = pools(InPlaceEnv, 2, 0, from_id=False)
    pool.reset()
    for _ in range(2):
        pool.step(_zeros(2))
    ts = pool.step(_zeros(2))
    assert ts.terminated.all()
    assert (ts.final_obs == 3).all() and (ts.obs == -1).all()


# ---- observation dtype and bounds (I9) ----------------------------------------------------------


def _pool_warnings(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count ours, not Python's once-per-location filter
        run()
    return [str(w.message) for w in caught if issubclass(w.category, EnvPoolWarning)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_float64_observation_of_a_float32_box_warns_once_per_pool(pools, num_workers):  # noqa: F811
    kwargs = {"obs_dtype": "float64", "fault_envs": (1,)}
    results = []

    def run():
        pool = pools(FAKE, 3, num_workers, env_kwargs=kwargs)
        pool.reset()
        results.extend(pool.step(_zeros(3)) for _ in range(5))
        pool.reset()

    found = _pool_warnings(run)
    assert len(found) == 1, found
    assert found[0].startswith("env 1 returned a float64 observation from reset()")
    assert "declares float32: fleetrl casts to float32" in found[0]
    assert results[-1].obs.dtype == np.float32


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_observation_outside_the_box_warns_once_and_passes_through(pools, num_workers):  # noqa: F811
    kwargs = {"obs_bound": 10.0, "out_of_bounds_at_step": 3, "fault_envs": (2,)}
    results = []

    def run():
        pool = pools(FAKE, 3, num_workers, env_kwargs={**kwargs, "max_episode_steps": 4})
        pool.reset()
        results.extend(pool.step(_zeros(3)) for _ in range(12))  # again at step 7 and 11

    found = _pool_warnings(run)
    assert len(found) == 1, found
    assert found[0].startswith("env 2 returned an observation outside its observation space")
    assert "at pool step 3: element 0 is 20" in found[0]
    assert "passes values beyond the bounds through unchanged" in found[0]
    assert results[2].final_obs[2, 0] == 20.0  # unchanged


@pytest.mark.timeout(30)
def test_bounds_are_checked_on_a_sample_of_steps_without_false_alarms(pools):  # noqa: F811
    due, step = [], 0
    while step <= 5000:
        due.append(step)
        step = checks.next_bounds_check(step)
    assert due == [*range(1001), 2000, 3000, 4000, 5000]
    actions = np.random.default_rng(0).integers(0, 2, (300, 4))

    def run():  # CartPole: float32 bounds, some at float32's max
        pool = pools("CartPole-v1", 4)
        pool.reset()
        for batch in actions:
            pool.step(batch)

    assert _pool_warnings(run) == []
    assert pools("CartPole-v1", 1)._bounds is not None  # it was checked
    assert pools(FAKE, 1)._bounds is None  # unbounded: nothing to check


# ---- a failing startup check (F2/I12) -----------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_failing_startup_check_puts_the_cause_on_the_first_line(pools, num_workers):  # noqa: F811
    kwargs = {"crash_at_reset": 1, "fault_envs": (3,), "startup_probe": True}
    with pytest.raises(EnvConstructionError) as info:
        pools(FAKE, 4, num_workers, env_kwargs=kwargs)
    first, second, blank, traceback, *_ = str(info.value).splitlines()
    where = "in worker 1" if num_workers else "in-process"
    assert first == (
        f"env 3 ({FAKE}) raised in its startup check (reset) {where}: InjectedFault: injected "
        "crash in reset 1 of env 3"
    )
    assert "metadata['fleetrl_startup_probe'] = False" in second
    assert blank == "" and traceback.startswith("Traceback")
    assert info.value.env_index == 3 and isinstance(info.value.__cause__, InjectedFault)


# ---- start timeouts (F6) ------------------------------------------------------------------------


def test_timeout_messages_name_the_pool_argument_and_the_cli_field():
    start = str(EnvTimeoutError([1], [1], 4.0, "start"))
    step = str(EnvTimeoutError([0], [0], 0.5, "step 2"))
    assert "start_timeout (--env.start-timeout from the command line)" in start
    assert "step_timeout (--env.step-timeout from the command line)" in step


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])  # 1: with parent_steps, the parent's share
def test_a_hanging_constructor_in_process_hits_the_start_timeout(pools, num_workers, tmp_path):  # noqa: F811
    closed = tmp_path / "closed"
    kwargs = {"init_delay": 60, "fault_envs": (1,), "close_path": str(closed)}
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(EnvTimeoutError) as info:  # 3 envs, parent_steps: the parent has 0-1
        pools(FAKE, 3, num_workers, env_kwargs=kwargs, start_timeout=1.0, parent_steps=True)
    assert time.monotonic() - start < 10
    assert info.value.env_indices == [1] and info.value.in_process
    message = str(info.value)
    assert "env 1 did not finish its constructor in-process within 1 s" in message
    assert "--env.start-timeout" in message
    assert closed.read_text().split() == ["0"]  # the env built before it was closed
    assert signal.getsignal(signal.SIGALRM) is handler  # pytest-timeout's, if it had one


@pytest.mark.timeout(30)
def test_interrupt_after_restores_the_previous_alarm():
    fired = []
    saved = signal.setitimer(signal.ITIMER_REAL, 0)  # pytest-timeout's, if any
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        with pytest.raises(TimeoutError, match="ours"):
            with interrupt_after(0.2, lambda: TimeoutError("ours")):
                time.sleep(5)
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.45  # the previous, restored
        deadline = time.monotonic() + 10
        while not fired and time.monotonic() < deadline:  # a loaded machine may be late
            time.sleep(0.05)
        assert len(fired) == 1
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # due before ours: its handler runs
        with interrupt_after(5, lambda: TimeoutError("ours")):
            time.sleep(0.4)
        assert len(fired) == 2 and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if saved[0]:
            signal.setitimer(signal.ITIMER_REAL, *saved)


# ---- envs closed after a fault (L5) -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_close_after_a_step_fault_closes_the_failed_workers_envs_too(pools, tmp_path):  # noqa: F811
    closed = tmp_path / "closed"
    kwargs = {"crash_at_step": 2, "fault_envs": (0,), "close_path": str(closed)}
    pool = pools(FAKE, 4, 2, env_kwargs=kwargs)
    pool.reset()
    pool.step(_zeros(4))
    with pytest.raises(EnvStepError, match="env 0 raised in step in worker 0"):
        pool.step(_zeros(4))
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 4
    assert sorted(closed.read_text().split()) == ["0", "1", "2", "3"]


@pytest.mark.timeout(30)
def test_a_restart_closes_the_old_workers_envs(pools, tmp_path):  # noqa: F811
    closed, counter = tmp_path / "closed", str(tmp_path / "faults")
    kwargs = {"crash_at_step": 2, "fault_envs": (2,), "counter_path": counter, "max_faults": 1}
    pool = pools(FAKE, 4, 2, env_kwargs={**kwargs, "close_path": str(closed)}, on_error="restart")
    pool.reset()
    pool.step(_zeros(4))
    pool.step(_zeros(4))
    assert pool.num_restarts == 1
    assert sorted(closed.read_text().split()) == ["2", "3"]
    pool.close()
    assert sorted(closed.read_text().split()) == ["0", "1", "2", "2", "3", "3"]


# ---- interruptible waits (L1) -------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("on_error", ["raise", "restart"])
def test_should_stop_interrupts_a_wait_for_a_hung_worker(pools, on_error):  # noqa: F811
    stop_at = []

    def should_stop() -> bool:
        return bool(stop_at) and time.monotonic() >= stop_at[0]

    kwargs = {"stall_at_step": 2, "stall_seconds": 30, "fault_envs": (1,)}
    pool = pools(FAKE, 2, 2, env_kwargs=kwargs, should_stop=should_stop, on_error=on_error)
    pool.reset()
    pool.step(_zeros(2))
    start = time.monotonic()
    stop_at.append(start + 0.5)
    with pytest.raises(EnvInterruptedError) as info:
        pool.step(_zeros(2))
    assert 0.5 <= time.monotonic() - start < 3.0  # within ~0.1 s (one poll) on a quiet machine
    assert info.value.worker_indices == [1] and info.value.step == 2
    assert "interrupted while waiting for worker 1 (envs 1) during pool step 2" in str(info.value)
    assert pool.num_restarts == 0  # never a restart on the way out
    with pytest.raises(EnvPoolError, match="unusable after an earlier error"):
        pool.step(_zeros(2))
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 4


@pytest.mark.timeout(30)
def test_should_stop_interrupts_a_slow_start(pools):  # noqa: F811
    start = time.monotonic()
    with pytest.raises(EnvInterruptedError, match="during pool startup"):
        pools(FAKE, 2, 1, env_kwargs={"init_delay": 30}, should_stop=lambda: True)
    assert time.monotonic() - start < 10
    with pytest.raises(TypeError, match="should_stop: must be callable"):
        pools(FAKE, 2, should_stop=True)


# ---- messages the CLI prints (it shows str(error)) ----------------------------------------------


@pytest.mark.timeout(30)
def test_the_nonfinite_message_names_the_cli_field(pools):  # noqa: F811
    pool = pools(FAKE, 2, env_kwargs={"nonfinite_at_step": 1, "fault_envs": (0,)})
    pool.reset()
    with pytest.raises(EnvStepError, match=r"check_finite=False \(--env.check-finite False\)"):
        pool.step(_zeros(2))


@pytest.mark.timeout(10)
def test_the_new_errors_pickle_with_their_attributes():
    import pickle

    for error in (
        EnvInterruptedError([0, 1], [0, 1, 2], "step 4", 4),
        EnvTimeoutError([0], [1], 2.0, "start", in_process=True),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
