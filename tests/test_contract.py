"""The algorithm contract (DESIGN.md, "Algorithm contract v2"), checked for every registered
algorithm (and its recurrent variants) on every kind of fake device env: discrete, continuous,
image (uint8 frames) and masked discrete. A new algorithm gets these checks for free: init,
acting through ``simulate`` (actor state threaded and stored, masked actions never taken),
learning, a second jitted iteration without recompilation, evaluation, the driver's health
check and a checkpoint round trip."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from fleetrl import checkpoint
from fleetrl.algos import ALGORITHMS, get_algorithm
from fleetrl.config import ConfigError, load_preset, preset_names
from fleetrl.envs.fake_device import KINDS, FakeDeviceEnv
from fleetrl.evaluate import make_evaluate
from fleetrl.programs import compile_light
from fleetrl.rollout import reset, simulate

NUM_ENVS, NUM_STEPS = 4, 16

# every registered algorithm, plus the recurrent cores of those that have them and the
# value-based combinations that presets use: (label, algorithm, overrides)
RAINBOW = {
    "double_q": True,
    "dueling": True,
    "noisy": True,
    "n_step": 3,
    "distributional": "c51",
    "prioritized": True,
}
VARIANTS = [(name, name, {}) for name in ALGORITHMS] + [
    ("ppo-lstm", "ppo", {"core": "lstm", "core_size": 8}),
    ("a2c-gru", "a2c", {"core": "gru", "core_size": 8}),
    ("impala-lstm", "impala", {"core": "lstm", "core_size": 8}),
    ("ppo-vtrace", "ppo", {"advantage": "vtrace"}),
    ("rainbow", "dqn", RAINBOW),
    ("rainbow-iqn", "dqn", {**RAINBOW, "distributional": "iqn", "num_tau_samples": 4}),
    ("qr-dqn", "dqn", {"distributional": "qr", "num_quantiles": 5}),
    ("m-dqn", "dqn", {"munchausen": True}),
    ("m-iqn", "dqn", {"munchausen": True, "distributional": "iqn", "num_tau_samples": 4}),
    ("sac-n3-utd2", "sac", {"n_step": 3, "utd": 2.0, "autotune": False}),
]
# the variants on every kind run with -m slow; by default on the kinds that exercise what
# they add (masks in a sequence or in a target, uint8 frames through an encoder or a replay)
DEFAULT_VARIANTS = {
    ("ppo-lstm", "masked"),
    ("a2c-gru", "image"),
    ("impala-lstm", "masked"),
    ("ppo-vtrace", "continuous"),
    ("rainbow", "masked"),
    ("rainbow", "image"),
    ("rainbow-iqn", "discrete"),
    ("qr-dqn", "discrete"),
    ("m-dqn", "discrete"),
    ("m-iqn", "masked"),
    ("sac-n3-utd2", "continuous"),
}


def _cases():
    for label, name, overrides in VARIANTS:
        for kind in KINDS:
            slow = overrides and (label, kind) not in DEFAULT_VARIANTS
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(name, overrides, kind, marks=marks, id=f"{label}-{kind}")


def _base_preset(name: str) -> str:
    """A shipped preset of algorithm ``name`` (its config is then shrunk), one with an MLP where
    there is one: the fake envs' vector observations fit no conv torso (pqn-breakout-minatar
    sorts before pqn-cartpole)."""
    runs = [(p, load_preset(p)) for p in preset_names()]
    # single-process presets: a distributed one (apex-cartpole) has its own settings (n-step)
    ours = [(p, run) for p, run in runs if run.algorithm == name and run.dist.mode == "single"]
    assert ours, f"no preset ships algorithm {name}"
    mlp = [p for p, run in ours if getattr(run.algo, "network", "mlp") == "mlp"]
    return (mlp or [p for p, _ in ours])[0]


def _run(name: str, overrides: dict):
    run = load_preset(_base_preset(name))
    algo = dataclasses.replace(
        run.algo, hidden_sizes=(16,), **get_algorithm(name).TEST_CONFIG, **overrides
    )
    return dataclasses.replace(
        run,
        algo=algo,
        env=dataclasses.replace(run.env, num_envs=NUM_ENVS),
        train=dataclasses.replace(run.train, num_steps=NUM_STEPS, total_steps=8 * NUM_STEPS),
    )


def _nbytes(tree) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def _finite(tree) -> bool:
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating))


@pytest.mark.parametrize("name, overrides, kind", list(_cases()))
def test_contract(name, overrides, kind, tmp_path):
    module = get_algorithm(name)
    env = FakeDeviceEnv(kind, NUM_ENVS, episode_length=NUM_STEPS)
    try:
        module.check_spec(env.spec)
    except ConfigError as error:  # refused before any work, naming the env
        assert "env.id" in str(error) and env.spec.env_id in str(error)
        return
    run = _run(name, overrides)
    algo = module.make(run, env.spec)
    key = jax.random.PRNGKey(0)
    state, carry = algo.init(key), reset(env, key, algo)

    def iteration(state, carry, key):
        carry, rollout = simulate(algo, env, state, carry, NUM_STEPS)
        state, metrics = algo.learn(state, rollout, key)
        return state, carry, rollout, metrics

    # compiled once, cheaply; the second call takes the first's output: the state keeps its
    # structure, shapes and dtypes from iteration to iteration (else a TypeError here)
    step = compile_light(jax.jit(iteration), state, carry, key)
    for i in range(2):
        state, carry, rollout, metrics = step(state, carry, jax.random.PRNGKey(i + 1))
    _check_rollout(algo, env, rollout, carry)
    assert all(np.ndim(v) == 0 for v in metrics.values()) and _finite(metrics), metrics
    health = algo.health(state)
    assert _finite(health.params) and int(health.skipped_updates) == 0
    assert int(health.nonfinite_streak) == 0
    # what acting needs is small: no replay buffer, no optimizer state
    assert _nbytes(algo.actor_params(state)) <= 2 * _nbytes(health.params) + 1024
    returns, _, _ = compile_light(jax.jit(make_evaluate(algo, env)), state, key)(state, key)
    assert returns.shape == (NUM_ENVS,) and np.all(np.isfinite(returns))
    _check_checkpoint(tmp_path, {"state": state, "carry": carry})


def _check_rollout(algo, env, rollout, carry):
    spec = env.spec
    assert rollout.reward.shape == (NUM_STEPS, NUM_ENVS)
    assert rollout.obs.dtype == np.dtype(spec.observation_dtype)
    if spec.action_kind == "discrete":
        assert rollout.action.shape == (NUM_STEPS, NUM_ENVS)
    else:
        assert rollout.action.shape == (NUM_STEPS, NUM_ENVS) + spec.action_shape
    # the actor state the segment started from, shaped as the actor's own
    fresh = algo.init_actor(jax.random.PRNGKey(0), NUM_ENVS)
    shapes = lambda tree: [np.shape(x) for x in jax.tree.leaves(tree)]
    assert shapes(rollout.actor_state) == shapes(fresh) == shapes(carry.actor_state)
    if "log_prob" in rollout.extras:
        assert np.all(np.isfinite(rollout.extras["log_prob"]))
    if spec.action_mask:  # never a masked action, in training or in the env's own count
        taken = np.take_along_axis(
            np.asarray(rollout.action_mask), np.asarray(rollout.action)[..., None], axis=-1
        )
        assert taken.all()
        assert int(np.sum(carry.env_state.violations)) == 0
    else:
        assert rollout.action_mask is None


def _check_checkpoint(tmp_path, tree):
    path = checkpoint.save(tmp_path, 1, tree, {"note": "contract"})
    restored, meta = checkpoint.load(path, jax.tree.map(np.zeros_like, tree))
    assert meta["note"] == "contract"
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(restored), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
