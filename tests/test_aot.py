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


def test_a_damaged_program_file_is_ignored_and_rewritten(tiny, tmp_path):
    run = tiny("ppo-cartpole")
    train(run)
    for path in aot.cache_folder().glob("*.bin"):
        path.write_bytes(aot.FORMAT + b"\x05\x00\x00\x00\x00\x00\x00\x00garbage")
    again = dataclasses.replace(run, log=dataclasses.replace(run.log, run_dir=str(tmp_path / "b")))
    with pytest.warns(RuntimeWarning, match="ignoring cached program"):
        result = train(again)
    assert result.status == "completed"
    assert all(p.read_bytes()[-7:] != b"garbage" for p in aot.cache_folder().glob("*.bin"))


def test_a_compiled_configuration_is_remembered_before_the_backend_starts(tiny, tmp_path):
    """`auto` picks one XLA thread for a configuration whose train program is cached (another
    seed, another cadence): it compiles as fast then, and runs faster."""
    from fleetrl.cli import _one_xla_thread_pays
    from fleetrl.train import compilation_cache_dir, program_config

    run = tiny("ppo-cartpole", iterations=1)  # a learning rate no other test compiles
    run = dataclasses.replace(run, algo=dataclasses.replace(run.algo, learning_rate=3.21e-4))
    assert not aot.was_compiled("train", program_config(run), compilation_cache_dir())
    assert not _one_xla_thread_pays(run)  # short, cold: all threads
    train(run)
    other_seed = dataclasses.replace(
        run, train=dataclasses.replace(run.train, seed=7, eval_every=0, checkpoint_every=0)
    )
    assert aot.was_compiled("train", program_config(other_seed), compilation_cache_dir())
    assert _one_xla_thread_pays(other_seed)
    bigger = dataclasses.replace(run, algo=dataclasses.replace(run.algo, hidden_sizes=(32,)))
    assert not _one_xla_thread_pays(bigger)
