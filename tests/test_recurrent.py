"""Recurrent policies: on a memory task (bsuite's MemoryChain: the answer is shown at the first
step and asked for at the last) a GRU policy answers right where a feed-forward policy of the
same size and budget can only guess."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fleetrl.config import load_preset
from fleetrl.train import train


def _memory_run(tmp_path, core: str):
    run = load_preset("ppo-gru-memorychain")
    return dataclasses.replace(
        run,
        train=dataclasses.replace(
            run.train,
            seed=0,
            num_seeds=2,
            total_steps=16384,
            eval_every=8192,
            log_every=8192,
            checkpoint_every=0,
        ),
        algo=dataclasses.replace(run.algo, core=core),
        log=dataclasses.replace(
            run.log, run_dir=str(tmp_path / core), progress=False, tensorboard=False
        ),
    )


@pytest.mark.slow  # ~40 s of training on 2 cores
def test_recurrent_policy_beats_feed_forward_on_a_memory_task(tmp_path):
    gru = train(_memory_run(tmp_path, "gru"))
    feed_forward = train(_memory_run(tmp_path, "none"))
    # +1 for the right answer, -1 for the wrong one: a policy without memory guesses (mean 0)
    assert np.all(gru.eval_returns >= 0.9), gru.eval_returns
    assert np.all(np.abs(feed_forward.eval_returns) <= 0.5), feed_forward.eval_returns
