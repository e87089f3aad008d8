"""The continuous family (DDPG, TD3, SAC): the squashed Gaussian against a numerical change of
variables, target policy smoothing and its clip, Polyak averaging, twin-min (soft) targets with
terminated and truncated steps, the losses by hand, delayed actor updates counted, the entropy
temperature moving toward its target, action scaling, and the config's refusals."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl import distributions as D
from fleetrl import replay
from fleetrl.algos import get_algorithm
from fleetrl.algos.continuous import learner as L
from fleetrl.algos.continuous import losses
from fleetrl.config import ConfigError, load_preset
from fleetrl.envs.fake_device import FakeDeviceEnv
from fleetrl.returns import n_step_bootstrap
from fleetrl.rollout import reset, simulate
from fleetrl.train import train
from fleetrl.types import EnvSpec

# ---- the squashed Gaussian ----------------------------------------------------------------------


def _numerical_log_density(mean, std, pre_tanh):
    """log p(tanh(u)) by the change of variables with a finite-difference Jacobian: the
    Gaussian density of u over |d tanh(u) / du|, per dimension, summed."""
    h = 1e-5
    jacobian = (np.tanh(pre_tanh + h) - np.tanh(pre_tanh - h)) / (2 * h)
    gauss = -0.5 * ((pre_tanh - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    return np.sum(gauss - np.log(jacobian), axis=-1)


def test_squashed_normal_log_prob_is_the_change_of_variables():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(64, 3))
    log_std = rng.uniform(-1.5, 0.5, size=(64, 3))
    pre_tanh = mean + np.exp(log_std) * rng.normal(size=(64, 3))
    ours = D.squashed_normal_log_prob(jnp.array(mean), jnp.array(log_std), jnp.array(pre_tanh))
    expected = _numerical_log_density(mean, np.exp(log_std), pre_tanh.astype(np.float64))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_squashed_normal_density_integrates_to_one_and_stays_finite():
    # 1-D: integrate p(a) over a in (-1, 1) on a fine grid of u (a = tanh u, da = tanh'(u) du)
    u = np.linspace(-12, 12, 200_001)
    log_p = D.squashed_normal_log_prob(jnp.float32(0.7), jnp.float32(-0.3), jnp.array(u)[:, None])
    da = np.gradient(np.tanh(u))
    assert abs(np.sum(np.exp(np.asarray(log_p, np.float64)) * da) - 1.0) < 1e-3
    # far in the tails, where 1 - tanh(u)^2 underflows to 0 in float32, still finite
    tails = D.squashed_normal_log_prob(jnp.zeros(2), jnp.zeros(2), jnp.array([[30.0, -30.0]]))
    assert np.isfinite(tails).all()


def test_squashed_normal_sample_matches_its_log_prob_and_bounds():
    mean, log_std = jnp.array([[0.3, -2.0]] * 4096), jnp.array([[0.0, -1.0]] * 4096)
    action, log_prob = D.squashed_normal_sample(mean, log_std, jax.random.PRNGKey(0))
    assert np.all(np.abs(action) < 1.0)
    pre = jnp.arctanh(jnp.clip(action, -1 + 1e-6, 1 - 1e-6))
    np.testing.assert_allclose(log_prob, D.squashed_normal_log_prob(mean, log_std, pre), atol=2e-2)
    np.testing.assert_allclose(np.median(action[:, 1]), math.tanh(-2.0), atol=0.02)
    np.testing.assert_array_equal(D.squashed_normal_mode(mean), jnp.tanh(mean))


# ---- the kernels by hand ------------------------------------------------------------------------


def test_target_policy_smoothing_and_its_clip():
    action = jnp.array([[0.0, 0.9, -0.9]] * 2000)
    same = losses.smoothed_target_action(action, jax.random.PRNGKey(0), 0.0, 0.5)
    np.testing.assert_array_equal(same, action)  # DDPG: no smoothing
    # huge noise: every perturbation is clipped to +-0.5, the sum to [-1, 1]
    wide = np.asarray(losses.smoothed_target_action(action, jax.random.PRNGKey(1), 100.0, 0.5))
    assert np.all(np.abs(wide[:, 0]) <= 0.5) and np.mean(np.abs(wide[:, 0]) == 0.5) > 0.99
    assert np.all((wide[:, 1] >= 0.4 - 1e-6) & (wide[:, 1] <= 1.0))
    assert np.mean(wide[:, 1] == 1.0) > 0.45 and np.all(wide[:, 2] <= -0.4 + 1e-6)
    # small noise: unclipped, zero mean with the given std
    small = np.asarray(losses.smoothed_target_action(action, jax.random.PRNGKey(2), 0.1, 0.5))
    np.testing.assert_allclose(small[:, 0].std(), 0.1, rtol=0.1)
    assert abs(small[:, 0].mean()) < 0.01


def test_polyak_hand_computed():
    online, target = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.0, 0.0])}
    once = losses.polyak(online, target, 0.25)
    np.testing.assert_allclose(once["w"], [0.25, 0.5])
    twice = losses.polyak(online, once, 0.25)
    np.testing.assert_allclose(twice["w"], [0.4375, 0.875])


def test_twin_min_targets_with_terminated_and_truncated_steps():
    # one-step windows, gamma 0.9: continuing, terminated, truncated (bootstraps), continuing
    reward = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    terminated = jnp.array([[False, True, False, False]])
    truncated = jnp.array([[False, False, True, False]])
    partial_return, discount = n_step_bootstrap(reward, terminated, truncated, 0.9)
    np.testing.assert_allclose(discount, [0.9, 0.0, 0.9, 0.9])
    next_q = jnp.array([[10.0, 10.0, 5.0, -1.0], [8.0, 20.0, 7.0, -3.0]])  # twin critics
    # TD3 / DDPG: min over the critics, no entropy
    td3 = losses.soft_min_target(next_q, jnp.zeros(4), 0.0, partial_return, discount)
    np.testing.assert_allclose(td3, [1 + 0.9 * 8, 2.0, 3 + 0.9 * 5, 4 + 0.9 * -3], rtol=1e-6)
    # SAC: minus alpha log pi at the next action
    log_prob = jnp.array([-1.0, -1.0, 2.0, 0.5])
    sac = losses.soft_min_target(next_q, log_prob, 0.5, partial_return, discount)
    expected = [1 + 0.9 * 8.5, 2.0, 3 + 0.9 * 4.0, 4 + 0.9 * -3.25]
    np.testing.assert_allclose(sac, expected, rtol=1e-6)


def test_losses_hand_computed():
    q = jnp.array([[1.0, 2.0], [3.0, 0.0]])  # two critics, two samples
    target = jnp.array([2.0, 1.0])
    valid = jnp.array([True, True])
    # 0.5 * ((1-2)^2 + (3-2)^2) = 1 and 0.5 * ((2-1)^2 + (0-1)^2) = 1
    np.testing.assert_allclose(losses.critic_loss(q, target, valid), 1.0)
    # an invalid window counts 0: only the first sample
    np.testing.assert_allclose(
        losses.critic_loss(q, jnp.array([2.0, 5.0]), jnp.array([True, False])), 1.0
    )
    np.testing.assert_allclose(losses.deterministic_actor_loss(q[0], valid), -1.5)
    # alpha log pi - min Q: 0.5 * -1 - 1 and 0.5 * 1 - 0
    np.testing.assert_allclose(
        losses.sac_actor_loss(q, jnp.array([-1.0, 1.0]), 0.5, valid), (-1.5 + 0.5) / 2
    )
    # -log_alpha * (log pi + target): log_alpha 0.5, gaps 1 and -3
    loss = losses.temperature_loss(jnp.float32(0.5), jnp.array([2.0, -2.0]), -1.0, valid)
    np.testing.assert_allclose(loss, -0.5 * (1.0 - 3.0) / 2)


def test_temperature_moves_toward_the_target_entropy():
    """alpha rises while the policy's entropy is below the target and falls above it."""
    grad = jax.grad(losses.temperature_loss)
    valid = jnp.ones(3, bool)
    # entropy -log pi = -2 < target -1: gradient negative, a descent step raises log alpha
    assert grad(jnp.float32(0.0), jnp.full(3, 2.0), -1.0, valid) < 0
    # entropy 3 > target -1: log alpha falls
    assert grad(jnp.float32(0.0), jnp.full(3, -3.0), -1.0, valid) > 0


# ---- the learner --------------------------------------------------------------------------------


def _setup(name: str, utd: float = 1.0, **algo):
    env = FakeDeviceEnv("continuous", 2, episode_length=8)
    run = load_preset(f"{name}-pendulum")
    run = dataclasses.replace(
        run,
        env=dataclasses.replace(run.env, num_envs=2),
        train=dataclasses.replace(run.train, num_steps=4, total_steps=64),
        algo=dataclasses.replace(
            run.algo,
            hidden_sizes=(16,),
            utd=utd,
            **{**get_algorithm(name).TEST_CONFIG, **algo},
        ),
    )
    get_algorithm(name).check_config(run)
    algo_ = get_algorithm(name).make(run, env.spec)
    return run, env, algo_


def _iterate(algo, env, iterations: int, seed: int = 0):
    key = jax.random.PRNGKey(seed)
    state, carry = algo.init(key), reset(env, key, algo)

    @jax.jit
    def iteration(state, carry, key):
        carry, rollout = simulate(algo, env, state, carry, 4)
        return *algo.learn(state, rollout, key), carry

    for i in range(iterations):
        state, metrics, carry = iteration(state, carry, jax.random.PRNGKey(100 + i))
    return state, metrics


def _adam_count(opt_state) -> int:
    counts = [
        int(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
        if "count" in jax.tree_util.keystr(path)
    ]
    assert counts, opt_state
    return counts[0]


@pytest.mark.parametrize("name, actor_updates", [("td3", 8), ("sac", 16), ("ddpg", 16)])
def test_delayed_actor_updates_counted(name, actor_updates):
    # 2 envs x 4 steps x utd 2 = 16 critic updates per iteration; TD3's actor every second
    _, env, algo = _setup(name, utd=2.0)
    state, metrics = _iterate(algo, env, 3)
    assert int(state.gradient_steps) == 3 * 16
    assert _adam_count(state.critic_opt) == 3 * 16
    assert _adam_count(state.actor_opt) == 3 * actor_updates
    if name == "sac":  # a 2-D action's target entropy is -2; a fresh policy's is far above
        assert float(metrics["train/entropy"]) > -2.0
        np.testing.assert_allclose(metrics["train/alpha"], jnp.exp(state.log_alpha))
        assert float(metrics["train/alpha"]) < 1.0


def test_targets_follow_by_polyak_and_td3_targets_move_only_with_the_actor():
    _, env, algo = _setup("td3", utd=0.25, tau=0.5)  # 2 gradient steps: one block
    key = jax.random.PRNGKey(0)
    state, carry = algo.init(key), reset(env, key, algo)
    carry, rollout = simulate(algo, env, state, carry, 4)
    new, _ = jax.jit(algo.learn)(state, rollout, key)
    # one actor update after the second critic update: each target moved halfway, once
    for online, before, after in (
        (new.critic, state.target_critic, new.target_critic),
        (new.actor, state.target_actor, new.target_actor),
    ):
        expected = jax.tree.map(lambda o, t: 0.5 * o + 0.5 * t, online, before)
        jax.tree.map(lambda e, a: np.testing.assert_allclose(a, e, atol=1e-6), expected, after)


def test_random_actions_until_learning_starts_then_the_policy():
    _, env, algo = _setup("td3", learning_starts=8)  # one iteration of 2 x 4 steps
    key = jax.random.PRNGKey(0)
    state = algo.init(key)
    assert bool(algo.actor_params(state)["random"])
    state, _ = _iterate(algo, env, 1)
    assert int(state.gradient_steps) == 8 and not bool(algo.actor_params(state)["random"])


def test_actions_map_onto_asymmetric_bounds_and_back():
    spec = EnvSpec(
        "box", 1, (3,), "continuous", action_shape=(2,), action_low=(-2.0, 0.0),
        action_high=(2.0, 10.0),
    )  # fmt: skip
    run = load_preset("sac-pendulum")
    algo_module = get_algorithm("sac")
    parts = L.Parts(
        run.algo, None, spec, None, None, None, None, None, 1,
        np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32), -2.0,
    )  # fmt: skip
    unit = jnp.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 0.5]])
    env_action = L.to_env(parts, unit)
    np.testing.assert_allclose(env_action, [[-2, 0], [0, 5], [2, 7.5]])
    np.testing.assert_allclose(L.from_env(parts, env_action), unit, atol=1e-6)
    assert algo_module.Config is not None


def test_replay_stores_continuous_actions():
    buffer = replay.create((3,), jnp.float32, 2, 8, action_shape=(2,), action_dtype=jnp.float32)
    obs = jnp.arange(24, dtype=jnp.float32).reshape(4, 2, 3)
    action = jnp.linspace(-1, 1, 16).reshape(4, 2, 2)
    zeros = jnp.zeros((4, 2), bool)
    buffer = replay.add(buffer, obs, obs, action, jnp.ones((4, 2)), zeros, zeros)
    window = replay.read_windows(buffer, jnp.array([1, 2]), jnp.array([0, 1]), 1)
    np.testing.assert_allclose(window.action, [action[1, 0], action[2, 1]])
    assert window.action.dtype == jnp.float32


# ---- refusals -----------------------------------------------------------------------------------


def test_discrete_envs_and_unbounded_actions_are_refused_naming_the_env():
    module = get_algorithm("sac")
    discrete = EnvSpec("CartPole-v1", 1, (4,), "discrete", num_actions=2)
    with pytest.raises(ConfigError, match="env.id.*CartPole-v1"):
        module.check_spec(discrete)
    unbounded = EnvSpec(
        "Box-inf", 1, (3,), "continuous", action_shape=(1,), action_low=(-math.inf,),
        action_high=(math.inf,),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="env.id.*Box-inf.*RescaleAction"):
        module.check_spec(unbounded)


def test_gradient_steps_not_a_multiple_of_the_policy_delay_are_refused():
    run = load_preset("td3-pendulum")
    with pytest.raises(ConfigError, match="algo.utd.*policy_delay=2"):
        dataclasses.replace(run, train=dataclasses.replace(run.train, num_steps=3))
    with pytest.raises(ConfigError, match="algo.utd.*needs one"):
        dataclasses.replace(run, algo=dataclasses.replace(run.algo, utd=0.01))
    with pytest.raises(ConfigError, match="algo.tau"):
        dataclasses.replace(run, algo=dataclasses.replace(run.algo, tau=0.0))


# ---- both paths: compiled gymnax envs with seeds in one program, gymnasium envs in workers ------


def test_sac_on_mountaincar_continuous_trains_two_seeds_in_one_program(tiny):
    run = tiny("sac-pendulum", num_seeds=2)
    run = dataclasses.replace(run, env=dataclasses.replace(run.env, id="MountainCarContinuous-v0"))
    result = train(run)
    assert result.status == "completed" and result.eval_returns.shape == (2,)
    assert np.isfinite(result.eval_returns).all()


@pytest.mark.timeout(300)
def test_td3_on_gymnasium_pendulum_in_worker_processes(tiny):
    run = tiny("td3-pendulum")
    env = dataclasses.replace(run.env, backend="gymnasium", num_envs=2, num_workers=2)
    result = train(dataclasses.replace(run, env=env))
    assert result.status == "completed" and np.isfinite(result.eval_returns).all()


# ---- which networks each step reads and writes --------------------------------------------------


def _learner_and_window(name: str):
    run, env, algo = _setup(name)
    parts = algo.learn.args[0]
    key = jax.random.PRNGKey(0)
    state, carry = algo.init(key), reset(env, key, algo)
    carry, rollout = simulate(algo, env, state, carry, 4)
    state = L.insert(parts, state, rollout)
    learner = L.Learner.of(state)
    rows, envs = replay.sample_uniform(state.buffer, key, 8, 1)
    return parts, state, learner, replay.read_windows(state.buffer, rows, envs, 1)


def test_td3_and_ddpg_bootstrap_from_the_target_actor():
    for name in ("ddpg", "td3"):
        parts, _, learner, window = _learner_and_window(name)
        # a target actor whose output layer is zero acts 0 everywhere; the online one does not
        zero_out = jax.tree_util.tree_map_with_path(
            lambda path, p: jnp.zeros_like(p) if "Dense_1" in jax.tree_util.keystr(path) else p,
            learner.actor,
        )
        learner = learner._replace(target_actor=zero_out)
        action, log_prob = L.next_action(parts, learner, window.next_obs, jax.random.PRNGKey(1))
        if name == "ddpg":
            np.testing.assert_array_equal(action, 0.0)
        else:  # smoothing noise only, clipped to +-0.5
            assert np.all(np.abs(action) <= 0.5) and np.any(action != 0)
        np.testing.assert_array_equal(log_prob, 0.0)


def test_sac_bootstraps_with_its_current_actor_and_alpha():
    parts, _, learner, window = _learner_and_window("sac")
    key = jax.random.PRNGKey(1)
    action, log_prob = L.next_action(parts, learner, window.next_obs, key)
    mean, log_std = parts.actor.apply(learner.actor, window.next_obs)
    expected = D.squashed_normal_sample(mean, log_std, key)
    np.testing.assert_allclose(action, expected[0])
    np.testing.assert_allclose(log_prob, expected[1], rtol=1e-6)
    # the target: min of the target critics minus alpha log pi, with alpha = exp(log_alpha)
    learner = learner._replace(log_alpha=jnp.log(jnp.float32(0.3)))
    loss_a, _ = L.critic_loss_fn(parts, learner.critic, learner, window, key)
    ret, discount = n_step_bootstrap(window.reward, window.terminated, window.truncated, 0.99)
    next_q = parts.critic.apply(learner.target_critic, window.next_obs, action)
    target = ret + discount * (jnp.min(next_q, 0) - 0.3 * log_prob)
    q = parts.critic.apply(learner.critic, window.obs, window.action)
    expected_loss = losses.critic_loss(q, target, window.valid)
    np.testing.assert_allclose(loss_a, expected_loss, rtol=1e-5)


def _same(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def test_each_step_moves_only_its_own_networks():
    for name in ("sac", "td3"):
        parts, state, learner, window = _learner_and_window(name)
        after, _ = L.critic_step(parts, state.buffer, learner, jax.random.PRNGKey(2))
        assert not _same(after.critic, learner.critic)
        assert _same(after.actor, learner.actor)
        assert _same(after.target_critic, learner.target_critic)
        assert _same(after.log_alpha, learner.log_alpha)
        moved, _ = L.actor_step(parts, learner, window, jax.random.PRNGKey(3))
        assert not _same(moved.actor, learner.actor) and _same(moved.critic, learner.critic)


def test_twin_critics_start_different():
    _, _, learner, window = _learner_and_window("td3")
    parts = _learner_and_window("td3")[0]
    q = parts.critic.apply(learner.critic, window.obs, window.action)
    assert q.shape == (2, 8) and not np.allclose(q[0], q[1])


def test_warm_up_acts_uniformly_whatever_the_policy_and_evaluation_never_does():
    _, env, algo = _setup("sac", learning_starts=100)
    state = algo.init(jax.random.PRNGKey(0))
    ap = algo.actor_params(state)
    assert bool(ap["random"])
    obs = jnp.zeros((4096, 3))
    random_action, _, _ = algo.act(ap, (), obs, jax.random.PRNGKey(1), True)
    # the fake env's bounds are [-1, 1]: uniform there, whatever the (constant-input) policy
    assert np.all(np.abs(random_action) <= 1.0)
    np.testing.assert_allclose(np.mean(random_action), 0.0, atol=0.03)
    np.testing.assert_allclose(np.var(random_action), 1 / 3, atol=0.02)
    greedy, _, _ = algo.act(ap, (), obs, jax.random.PRNGKey(1), False)
    np.testing.assert_allclose(greedy, greedy[:1].repeat(4096, 0))  # deterministic mode


@pytest.mark.parametrize(
    "field, value, name",
    [
        ("log_std_min", 3.0, "algo.log_std_min"),
        ("ent_coef", 0.0, "algo.ent_coef"),
        ("buffer_size", 4, "algo.buffer_size"),
        ("learning_rate", -1.0, "algo.learning_rate"),
        ("n_critics", 0, "algo.n_critics"),
        ("policy_delay", 64, "algo.policy_delay"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field, value, name):
    run = load_preset("sac-pendulum")
    with pytest.raises(ConfigError, match=name):
        dataclasses.replace(run, algo=dataclasses.replace(run.algo, **{field: value}))


def test_negative_noise_is_refused_naming_the_field():
    run = load_preset("td3-pendulum")
    with pytest.raises(ConfigError, match="algo.exploration_noise"):
        dataclasses.replace(run, algo=dataclasses.replace(run.algo, exploration_noise=-0.1))
