"""PQN: the Q(lambda) kernel against hand-computed values and a plain-Python loop, the next
observation's legal actions in the returns' max, greedy evaluation, config errors, a smoke run
and (slow) CartPole learning."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl.algos.dqn import pqn
from fleetrl.config import ConfigError, load_preset
from fleetrl.envs.fake_device import FakeDeviceEnv
from fleetrl.evaluate import make_evaluate
from fleetrl.returns import q_lambda_returns
from fleetrl.train import train
from fleetrl.types import EnvSpec, Rollout

# ---------------------------------------------------------------- the Q(lambda) kernel


def _kernel(reward, terminated, truncated, next_value, gamma, lam):
    as_f32 = lambda x: jnp.asarray(x, jnp.float32)
    args = (as_f32(reward), jnp.asarray(terminated), jnp.asarray(truncated), as_f32(next_value))
    return np.asarray(q_lambda_returns(*args, gamma, lam))


def test_q_lambda_hand_computed():
    """gamma = lam = 0.5, rewards 1, 2, 3 and next values 10, 20, 30 in three envs: no episode
    end; truncated at 0 and terminated at 1; terminated at 2."""
    reward = np.array([[1.0] * 3, [2.0] * 3, [3.0] * 3])
    next_value = np.array([[10.0] * 3, [20.0] * 3, [30.0] * 3])
    terminated = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    truncated = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]], bool)
    expected = np.array(
        [
            # G2 = 3 + .5 * 30 = 18; G1 = 2 + .5 (.5 * 20 + .5 * 18); G0 = 1 + .5 (5 + .5 G1)
            [6.375, 6.0, 5.4375],  # env 1: truncated: 1 + .5 * 10 and no lambda across it
            [11.5, 2.0, 7.75],  # env 1: terminated: the reward; env 2: 2 + .5 (10 + .5 * 3)
            [18.0, 18.0, 3.0],  # the last step bootstraps from its own next value
        ]
    )
    returns = _kernel(reward, terminated, truncated, next_value, 0.5, 0.5)
    np.testing.assert_allclose(returns, expected, rtol=1e-6)


def q_lambda_reference(reward, terminated, truncated, next_value, gamma, lam):
    """Per env, backwards: one-step target at episode ends and at the window's end; else
    r + gamma ((1 - lam) next_value + lam G[t + 1])."""
    num_steps, num_envs = reward.shape
    returns = np.zeros((num_steps, num_envs))
    for n in range(num_envs):
        for t in reversed(range(num_steps)):
            if terminated[t, n]:
                returns[t, n] = reward[t, n]
            elif truncated[t, n] or t == num_steps - 1:
                returns[t, n] = reward[t, n] + gamma * next_value[t, n]
            else:
                blend = (1 - lam) * next_value[t, n] + lam * returns[t + 1, n]
                returns[t, n] = reward[t, n] + gamma * blend
    return returns


@pytest.mark.parametrize("lam", [0.0, 0.65, 1.0])
def test_q_lambda_matches_python_loop(lam):
    rng = np.random.default_rng(0)
    shape = (9, 4)
    reward, next_value = rng.normal(size=shape), rng.normal(size=shape)
    terminated, truncated = np.zeros(shape, bool), np.zeros(shape, bool)
    terminated[2, 0] = truncated[5, 0] = True
    truncated[8, 1] = True  # at the window's end too
    terminated[0, 2] = terminated[1, 2] = truncated[4, 2] = True
    args = (reward, terminated, truncated, next_value, 0.9, lam)
    np.testing.assert_allclose(_kernel(*args), q_lambda_reference(*args), rtol=1e-5, atol=1e-5)
    if lam == 0.0:  # one-step Q-learning targets
        one_step = reward + 0.9 * (1 - terminated) * next_value
        np.testing.assert_allclose(_kernel(*args), one_step, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- masks and acting


def tiny_pqn(spec: EnvSpec, **algo):
    """A PQN of ``pqn-cartpole``'s config with a small network, built for ``spec``."""
    run = load_preset("pqn-cartpole")
    fields = dict(hidden_sizes=(8,), num_minibatches=2, num_epochs=1)
    run = dataclasses.replace(
        run,
        env=dataclasses.replace(run.env, num_envs=spec.num_envs),
        train=dataclasses.replace(run.train, num_steps=4, total_steps=64),
        algo=dataclasses.replace(run.algo, **fields, **algo),
    )
    return pqn.make(run, spec)


MASKED = EnvSpec("fake", 2, (4,), "discrete", num_actions=3, action_mask=True)


def masked_rollout(mask, done):
    """A ``[T, N]`` rollout of MASKED's shapes: observations of ones, rewards 0, ``done[t]``
    as terminations in env 0 and truncations in env 1."""
    num_steps, num_envs = done.shape
    obs = jnp.ones((num_steps, num_envs, 4))
    zeros = jnp.zeros((num_steps, num_envs))
    terminated = jnp.asarray(done).at[:, 1].set(False)
    return Rollout(
        obs=obs,
        action=jnp.zeros((num_steps, num_envs), jnp.int32),
        reward=zeros,
        terminated=terminated,
        truncated=jnp.asarray(done) & ~terminated,
        next_obs=obs,
        extras={},
        episode_return=zeros,
        episode_length=zeros,
        action_mask=jnp.asarray(mask),
    )


def test_next_action_mask_shifts_and_is_all_legal_where_unknown():
    mask = np.zeros((3, 2, 3), bool)
    mask[0, :, 0] = mask[1, :, 1] = mask[2, :, 2] = True
    done = np.zeros((3, 2), bool)
    done[0, 1] = True  # truncated in env 1: the final observation's mask is not recorded
    got = np.asarray(pqn.next_action_mask(masked_rollout(mask, done)))
    np.testing.assert_array_equal(got[0, 0], mask[1, 0])  # next_obs[0] is obs[1]
    np.testing.assert_array_equal(got[1], mask[2])
    assert got[0, 1].all() and got[2].all()  # after an episode end, at the rollout's end
    assert pqn.next_action_mask(masked_rollout(mask, done)._replace(action_mask=None)) is None


def _with_head_bias(state, bias):
    """``state`` with the Q head's bias (the last Dense layer) set to ``bias [A]``."""
    params = jax.tree.map(lambda x: x, state.params)
    layers = params["params"]
    head = max((k for k in layers if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    layers[head]["bias"] = jnp.asarray(bias, jnp.float32)
    return state.replace(params=params)


def test_returns_max_over_the_legal_next_actions():
    """Action 0 has the highest Q by far; where the next observation's mask forbids it, the
    one-step target (gamma 1, lambda 0, rewards 0) is the best legal action's Q instead."""
    algo = tiny_pqn(MASKED, gamma=1.0, q_lambda=0.0, reward_scale=1.0)
    state = _with_head_bias(algo.init(jax.random.PRNGKey(0)), [100.0, 0.0, 0.0])
    mask = np.ones((3, 2, 3), bool)
    mask[1:, :, 0] = False  # illegal from step 1 on
    rollout = masked_rollout(mask, np.zeros((3, 2), bool))
    parts = algo.learn.args[0]
    batch = jax.jit(functools.partial(pqn.make_batch, parts))(state.params, rollout)
    targets = np.asarray(batch["target"]).reshape(3, 2)
    q = np.asarray(pqn.q_of(parts, state.params, jnp.ones((1, 4))))[0]
    np.testing.assert_allclose(targets[:2], np.full((2, 2), q[1:].max()), rtol=1e-5)
    # the last step's next observation is the next rollout's first: its mask is not recorded
    np.testing.assert_allclose(targets[2], np.full(2, q.max()), rtol=1e-5)


def test_acting_is_epsilon_greedy_over_legal_actions_and_greedy_without_explore():
    algo = tiny_pqn(MASKED)
    state = _with_head_bias(algo.init(jax.random.PRNGKey(0)), [100.0, 0.0, 0.0])
    obs = jnp.ones((2, 4))
    mask = jnp.array([[True, True, True], [False, True, True]])
    act = jax.jit(
        lambda ap, key, explore: algo.act(ap, (), obs, key, explore, mask)[0], static_argnums=2
    )
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    for epsilon in (0.0, 1.0):
        ap = {"params": state.params, "epsilon": jnp.float32(epsilon)}
        greedy = np.stack([act(ap, key, False) for key in keys[:20]])
        assert (greedy == greedy[0]).all()  # the key plays no part
        assert greedy[0, 0] == 0 and greedy[0, 1] != 0  # the argmax over legal actions
    taken = np.stack([act(ap, key, True) for key in keys])  # epsilon 1
    assert set(taken[:, 0]) == {0, 1, 2} and set(taken[:, 1]) == {1, 2}  # uniform, legal only


def test_evaluation_is_greedy_whatever_the_exploration_rate():
    """Evaluation of a state that still explores with epsilon 1 and of the same parameters
    past the exploration schedule (epsilon 0): the same episodes, action for action."""
    env = FakeDeviceEnv("masked", 4, episode_length=8)
    algo = tiny_pqn(env.spec, epsilon_end=0.0)
    state = algo.init(jax.random.PRNGKey(1))
    late = state.replace(env_steps=jnp.int32(10**6))
    assert float(algo.actor_params(state)["epsilon"]) == 1.0
    assert float(algo.actor_params(late)["epsilon"]) == 0.0
    evaluate = jax.jit(make_evaluate(algo, env))
    key = jax.random.PRNGKey(2)
    first, again = evaluate(state, key), evaluate(late, key)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_minatar_torso_is_nn_conv_as_a_matmul():
    """`networks.PatchConv` (MinAtar's conv, fast in XLA:CPU loops): nn.Conv's parameter names,
    shapes and initial values, and its outputs."""
    import flax.linen as nn

    from fleetrl.algos.dqn.networks import _ORTHOGONAL, MinAtarCNN

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(16, (3, 3), (1, 1), "VALID", kernel_init=_ORTHOGONAL)(x))
            return x.reshape((x.shape[0], -1))

    x = jax.random.uniform(jax.random.PRNGKey(3), (5, 10, 10, 4))
    expected = Reference().init(jax.random.PRNGKey(0), x)
    params = MinAtarCNN().init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    assert all(map(np.array_equal, jax.tree.leaves(params), jax.tree.leaves(expected)))
    np.testing.assert_allclose(
        MinAtarCNN().apply(params, x), Reference().apply(expected, x), rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------- config and runs


@pytest.mark.parametrize(
    "field, value",
    [("q_lambda", 1.5), ("learning_rate", 0.0), ("num_minibatches", 0), ("hidden_sizes", ())],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"algo.{field}"):
        pqn.PQNConfig(**{field: value})


def test_minibatches_must_divide_the_batch():
    run = load_preset("pqn-cartpole")
    with pytest.raises(ConfigError, match="algo.num_minibatches"):
        dataclasses.replace(run, algo=dataclasses.replace(run.algo, num_minibatches=3))


def test_command_line_overrides_reach_the_config():
    from fleetrl.cli import parse_run_config

    run = parse_run_config("pqn-cartpole", ["--algo.learning-rate", "1e-3"], "fleetrl train")
    assert run.algorithm == "pqn" and run.algo.learning_rate == 1e-3


def test_continuous_actions_are_refused_naming_the_env():
    spec = EnvSpec("Pendulum-v1", 1, (3,), "continuous", action_shape=(1,))
    with pytest.raises(ConfigError, match="env.id: PQN needs a discrete action space"):
        pqn.check_spec(spec)


def test_pqn_cartpole_smoke_run(tiny):
    result = train(tiny("pqn-cartpole"))
    assert result.status == "completed" and np.isfinite(result.eval_returns).all()
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    learned = [r for r in map(json.loads, lines) if "losses/td_loss" in r]
    assert len(learned) == 2
    for record in learned:
        for name in ("losses/td_loss", "losses/q_values", "train/epsilon", "train/learning_rate"):
            assert np.isfinite(record[name]), (name, record)
        assert record["losses/td_loss"] > 0


@pytest.mark.slow
def test_pqn_cartpole_reaches_475(tmp_path):
    """pqn-cartpole as shipped, seed 0: an evaluation return >= 475 within the budget."""
    run = load_preset("pqn-cartpole")
    run = dataclasses.replace(
        run,
        train=dataclasses.replace(run.train, seed=0),
        log=dataclasses.replace(
            run.log, run_dir=str(tmp_path / "run"), progress=False, tensorboard=False
        ),
    )
    result = train(run)
    assert result.eval_returns.max() >= 475, result.eval_returns
