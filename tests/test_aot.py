"""Programs kept on disk (fleetrl.aot): a repeated run loads them instead of tracing."""

import dataclasses

import jax
import numpy as np
import pytest

from fleetrl import aot
from fleetrl.train import train


def test_a_repeated_run_loads_its_programs_and_matches(tiny, tmp_path, monkeypatch):
    run = tiny("ppo-cartpole")
    first = train(run)
    programs = sorted(p.name for p in aot.cache_folder().iterdir())
    assert any(name.startswith("train-") for name in programs)

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced a program that is on disk")

    monkeypatch.setattr(jax.export, "export", no_tracing)
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    second = train(again)
    np.testing.assert_array_equal(first.eval_returns, second.eval_returns)


def test_a_damaged_program_file_is_ignored_and_rewritten(tiny, tmp_path, monkeypatch):
    # a program folder of its own (JAX's cache stays where it is): every file in it is this run's
    monkeypatch.setattr(aot, "cache_folder", lambda: tmp_path / "programs")
    run = tiny("ppo-cartpole")
    train(run)
    assert any(aot.cache_folder().glob("*.bin"))
    for path in aot.cache_folder().glob("*.bin"):
        path.write_bytes(aot.FORMAT + b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    with pytest.warns(RuntimeWarning, match="ignoring cached program"):
        result = train(again)
    assert result.status == "completed"
    assert all(p.read_bytes()[-7:] != b"garbage" for p in aot.cache_folder().glob("*.bin"))


def test_auto_picks_one_xla_thread_for_small_networks():
    """`auto` runs MLP policies on device envs and on in-process host envs with one XLA thread
    (their programs still compile on every core, fleetrl.xla_cpu); the rest on one per core."""
    from fleetrl.cli import _one_xla_thread_pays
    from fleetrl.config import load_preset

    def with_(run, section, **fields):
        return dataclasses.replace(
            run, **{section: dataclasses.replace(getattr(run, section), **fields)}
        )

    assert _one_xla_thread_pays(load_preset("ppo-cartpole"))
    assert _one_xla_thread_pays(load_preset("dqn-cartpole"))
    gym = with_(load_preset("ppo-cartpole-gym"), "env", num_workers=0)
    assert _one_xla_thread_pays(gym)
    assert not _one_xla_thread_pays(with_(gym, "env", num_workers=2))
    assert not _one_xla_thread_pays(load_preset("ppo-breakout"))
    forced = with_(load_preset("ppo-cartpole"), "train", xla_threads="all")
    assert not _one_xla_thread_pays(forced)
