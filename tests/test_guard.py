"""Non-finite updates: skipped by the optimizer, and a diverged run stops without saving garbage."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fleetrl import checkpoint
from fleetrl.algos.guard import clip_or_skip, skip_metrics
from fleetrl.cli import main
from fleetrl.loop import DIVERGED_STREAK, nonfinite_parameters
from fleetrl.train import train


def test_clip_or_skip_clips_like_optax_and_skips_nonfinite_gradients():
    adam = optax.adam(0.1)
    guarded = clip_or_skip(adam, max_norm=1.0)
    reference = optax.chain(optax.clip_by_global_norm(1.0), adam)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    state, ref_state = guarded.init(params), reference.init(params)
    for grads in (  # under the norm, then clipped
        {"w": jnp.array([0.3, 0.4]), "b": jnp.array(-0.2)},
        {"w": jnp.array([3.0, 4.0]), "b": jnp.array(-2.0)},
    ):
        updates, state = guarded.update(grads, state, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        assert jax.tree.all(jax.tree.map(np.array_equal, updates, expected))
        assert jax.tree.all(jax.tree.map(np.array_equal, state.inner, ref_state[1]))
    assert int(state.streak) == 0 and int(state.skipped) == 0
    good_state = state
    # NaN, then Inf: the parameters do not move, the optimizer state stays finite, counted
    for bad_value in (jnp.nan, jnp.inf):
        bad = {"w": jnp.array([0.3, bad_value]), "b": jnp.array(-0.2)}
        updates, state = guarded.update(bad, state, params)
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.inner))
    assert int(state.streak) == 2 and int(state.skipped) == 2
    metrics = skip_metrics(good_state, state)
    assert int(metrics["train/skipped_updates"]) == 2
    assert int(metrics["train/nonfinite_streak"]) == 2
    # a finite update ends the streak but not the total
    updates, state = guarded.update({"w": jnp.array([0.3, 0.4]), "b": jnp.array(0.1)}, state)
    assert int(state.streak) == 0 and int(state.skipped) == 2
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))


def test_nonfinite_parameters_are_named():
    params = {"actor": {"w": np.array([1.0, np.nan])}, "critic": {"w": np.ones(2)}}
    assert nonfinite_parameters(params) == ["['actor']['w']"]
    assert nonfinite_parameters({"n": np.array([1, 2])}) == []


def test_a_diverging_run_stops_and_never_checkpointsnonfinite_parameters(tiny, capsys):
    # lr 3e38: the first Adam step overflows the network and every later loss is NaN
    run = tiny("ppo-cartpole", iterations=12)
    run = dataclasses.replace(
        run,
        algo=dataclasses.replace(run.algo, learning_rate=3e38),
        train=dataclasses.replace(run.train, checkpoint_every=run.steps_per_iteration),
    )
    result = train(run)
    assert result.status == "diverged"
    assert "NaN or Inf" in result.detail and "learning_rate" in result.detail
    updates_per_iteration = run.algo.num_epochs * run.algo.num_minibatches
    spi = run.steps_per_iteration
    assert result.env_steps <= spi * (DIVERGED_STREAK // updates_per_iteration + 1)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["detail"] == result.detail
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["train/skipped_updates"] for r in records if "train/skipped_updates" in r)
    # every update after the first was skipped: no checkpoint was written while skipping, so
    # none at all here (they would have rotated out the ones from before)
    assert checkpoint.latest(result.run_dir) is None
    first_skip = min(r["step"] for r in records if r.get("train/skipped_updates", 0) > 0)
    assert first_skip == run.steps_per_iteration


def test_cli_exits_1_naming_the_divergence(tiny):
    run = tiny("dqn-cartpole", iterations=40)
    spi = run.steps_per_iteration
    args = [
        "train", "dqn-cartpole", "--log.run-dir", run.log.run_dir, "--log.progress", "False",
        "--log.tensorboard", "False", "--train.total-steps", str(40 * spi),
        "--train.log-every", str(spi), "--train.eval-every", "0", "--train.checkpoint-every", "0",
        "--algo.learning-starts", "0", "--algo.gradient-steps", "16",
        "--algo.learning-rate", "3e38",
    ]  # fmt: skip
    assert main(args) == 1
