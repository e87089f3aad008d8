"""Shared fixtures: small runs of the presets, built through the same config path as the CLI."""

from __future__ import annotations

import dataclasses

import pytest

from fleetrl.config import RunConfig, load_preset


def pytest_configure(config):
    """Run each test process on one CPU, as the CLI does for vmapped seeds (see
    fleetrl.cli.use_one_core_for_vmapped_seeds): tests train 2 seeds in-process, and XLA:CPU's
    thread pool occasionally wedged on vmapped programs with jax 0.10.2. Must happen before JAX
    creates its thread pool. Under pytest-xdist (``-n 2``, the default) worker ``gw<i>`` takes
    CPU ``i`` (modulo the CPUs it may use): pinned to the same CPU, two workers were no faster
    than one."""
    import os
    import signal

    # Started as a background job (`cmd &` in a script: SIGINT and SIGQUIT ignored), the tests
    # that Ctrl+C a `fleetrl` child would see it ignore the signal, as the CLI leaves an ignored
    # SIGINT ignored (nohup): give the children of this process the default disposition.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker and (config.getoption("numprocesses", None) or 0) > 0:
        return  # xdist's controller runs no test: its workers pin themselves (they inherit it)
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        from fleetrl.cli import use_one_core_for_vmapped_seeds

        use_one_core_for_vmapped_seeds()
        return
    if os.environ.get("FLEETRL_VMAP_ONE_CORE", "1") == "0":
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})


def with_log(run: RunConfig, **log) -> RunConfig:
    """``run`` with some ``log`` fields replaced."""
    return dataclasses.replace(run, log=dataclasses.replace(run.log, **log))


def tiny_run(preset: str, tmp_path, iterations: int = 2, **train) -> RunConfig:
    """``preset`` shrunk to a few iterations: one call per iteration, eval every call."""
    run = load_preset(preset)
    if run.env.backend == "gymnasium":  # host envs: short rollouts, the pool's workers kept
        run = dataclasses.replace(
            run, train=dataclasses.replace(run.train, num_steps=min(run.train.num_steps, 32))
        )
    if run.env.preprocess == "atari":  # the CNN on a CPU: a few frames, short evaluations
        names = {f.name for f in dataclasses.fields(run.algo)}
        epochs = {"num_epochs": 1, "num_minibatches": 1} if "num_epochs" in names else {}
        run = dataclasses.replace(
            run,
            env=dataclasses.replace(run.env, num_envs=2),
            train=dataclasses.replace(run.train, num_steps=16, eval_max_steps=50),
            algo=dataclasses.replace(run.algo, **epochs),
        )
    spi = run.steps_per_iteration
    train_fields = dict(
        seed=0,  # presets leave it unset (a seed is then drawn): tests compare runs
        total_steps=iterations * spi,
        log_every=spi,
        eval_every=spi,
        eval_episodes=2,
        checkpoint_every=0,
    )
    train_fields.update(train)
    from fleetrl.algos import get_algorithm

    # each algorithm says what makes its presets tiny (DQN: learn at once, few gradient steps)
    algo = dataclasses.replace(run.algo, **get_algorithm(run.algorithm).TEST_CONFIG)
    # a distributed preset smoke-runs in one process here: the tests that start Ray run in a
    # network namespace of their own (tests/test_distributed.py)
    from fleetrl.config import DistConfig

    return dataclasses.replace(
        run,
        algo=algo,
        dist=DistConfig(),
        train=dataclasses.replace(run.train, **train_fields),
        log=dataclasses.replace(
            run.log, run_dir=str(tmp_path / "run"), tensorboard=False, progress=False
        ),
    )


@pytest.fixture
def tiny(tmp_path):
    return lambda preset, **kw: tiny_run(preset, tmp_path, **kw)


@pytest.fixture(scope="session", autouse=True)
def trusted_fake_envs():
    """The fault-injection envs of `fleetrl.envs.fake` are named by id in runs built here (a
    test of the trust gate itself runs the CLI in a fresh process)."""
    from fleetrl.envs.trust import trust_modules

    trust_modules("fleetrl.envs.fake")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent JAX cache for the session: identical programs compile once."""
    import os

    from fleetrl.programs import enable_compilation_cache

    os.environ["FLEETRL_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    enable_compilation_cache()
