"""IMPALA and PPO with V-trace advantages, members of the actor-critic family: on-policy they
are A2C and PPO (the same update, rho = 1), stale behaviour log-probabilities give the clipped
weights and advantages of the kernel, the recurrent path replays with V-trace too, the config's
defaults and refusals, a smoke run of the preset, and (slow) the preset solving CartPole for 5
vmapped seeds."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fleetrl.algos.actor_critic import config as C
from fleetrl.algos.actor_critic import learner as L
from fleetrl.config import ConfigError, load_preset
from fleetrl.envs.fake_device import FakeDeviceEnv
from fleetrl.returns import vtrace
from fleetrl.rollout import reset, simulate
from fleetrl.train import train

NUM_ENVS, NUM_STEPS = 4, 12


def _run(preset: str, algorithm: str | None = None, algo=None, **fields):
    """``preset`` on 4 envs x 12 steps with a small network; ``algo``: a whole config instead."""
    run = load_preset(preset)
    algo = algo if algo is not None else dataclasses.replace(run.algo, hidden_sizes=(16,))
    return dataclasses.replace(
        run,
        algorithm=algorithm or run.algorithm,
        algo=dataclasses.replace(algo, **fields),
        env=dataclasses.replace(run.env, num_envs=NUM_ENVS),
        train=dataclasses.replace(run.train, num_steps=NUM_STEPS, total_steps=8 * NUM_STEPS),
    )


def _rollout(run, kind: str = "discrete", key: int = 1):
    """The initial state of ``run``'s learner and one rollout it acted, with episode ends."""
    env = FakeDeviceEnv(kind, NUM_ENVS, episode_length=5, terminate_prob=0.2)
    algo = L.make(run, env.spec)
    state = algo.init(jax.random.PRNGKey(0))
    carry = reset(env, jax.random.PRNGKey(key), algo)
    _, rollout = jax.jit(lambda s, c: simulate(algo, env, s, c, NUM_STEPS))(state, carry)
    assert rollout.terminated.any() and rollout.truncated.any()
    return env, algo, state, rollout


def _a2c_twin(impala: C.IMPALA) -> C.A2C:
    """An A2C config with every hyperparameter of ``impala`` that A2C has."""
    names = {f.name for f in dataclasses.fields(C.A2C)}
    return C.A2C(**{n: getattr(impala, n) for n in names})


def test_on_policy_the_impala_update_is_the_a2c_update():
    """Acting with the parameters it learns from, IMPALA's weights are 1 and V-trace (lambda 1)
    is A2C's n-step return: one update moves the parameters identically."""
    run = _run("impala-cartpole")
    env, algo, state, rollout = _rollout(run)
    a2c_run = _run("a2c-cartpole", algo=_a2c_twin(run.algo))
    a2c = L.make(a2c_run, env.spec)
    a2c_state = a2c.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(2)
    new, metrics = jax.jit(algo.learn)(state, rollout, key)
    a2c_new, _ = jax.jit(a2c.learn)(a2c_state, rollout, key)
    assert float(metrics["train/rho_mean"]) == pytest.approx(1.0, abs=1e-5)
    assert float(metrics["train/rho_clipped_fraction"]) == 0.0
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), new.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the update did something
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        new.params,
        a2c_new.params,
    )


def _stale(rollout):
    """``rollout`` as if acted by an older policy: rho = 3 (clipped to 1) on the first half of
    the steps, 1/2 on the second."""
    log_prob = rollout.extras["log_prob"]
    first_half = (jnp.arange(NUM_STEPS) < NUM_STEPS // 2)[:, None]
    stale = jnp.where(first_half, log_prob - jnp.log(3.0), log_prob + jnp.log(2.0))
    rho = jnp.where(first_half, 3.0, 0.5) * jnp.ones_like(log_prob)
    return rollout._replace(extras={**rollout.extras, "log_prob": stale}), rho


@pytest.mark.parametrize("preset", ["impala-cartpole", "ppo-cartpole"])
def test_stale_behaviour_log_probs_are_weighted_and_clipped(preset):
    """The batch holds the kernel's V-trace targets and advantages for the weights pi/mu
    (clipped at 1), the ratio is taken against the current policy, and the metrics say how
    much was clipped."""
    run = _run(preset, advantage="vtrace") if preset == "ppo-cartpole" else _run(preset)
    _, algo, state, rollout = _rollout(run)
    parts = L.build_parts(run, FakeDeviceEnv("discrete", NUM_ENVS).spec)
    stale, rho = _stale(rollout)
    batch, metrics = L.flat_batch(parts, state, stale, stale.reward)
    assert float(metrics["train/rho_mean"]) == pytest.approx((3.0 + 0.5) / 2, rel=1e-4)
    assert float(metrics["train/rho_clipped_fraction"]) == pytest.approx(0.5)
    np.testing.assert_allclose(batch["log_prob"], rollout.extras["log_prob"].reshape(-1), atol=1e-5)
    obs = jnp.concatenate([rollout.obs, rollout.next_obs]).reshape(-1, 4)
    value, next_value = parts.net.value(state.params, obs).reshape(2, NUM_STEPS, NUM_ENVS)
    vs, adv = vtrace(
        value,
        next_value,
        rollout.reward,
        rollout.terminated,
        rollout.truncated,
        jnp.zeros_like(rho),
        jnp.log(rho),
        run.algo.gamma,
        lambda_=run.algo.gae_lambda,
    )
    np.testing.assert_allclose(batch["returns"], vs.reshape(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch["advantages"], adv.reshape(-1), rtol=1e-4, atol=1e-5)
    on_policy, _ = L.flat_batch(parts, state, rollout, rollout.reward)
    assert not np.allclose(batch["advantages"], on_policy["advantages"])


def test_ppo_vtrace_on_policy_has_gaes_advantages_and_learns():
    """PPO with ``advantage: vtrace`` on its own rollouts: GAE's advantages and returns (the
    same lambda), and an update of the same size as with GAE."""
    gae_run = _run("ppo-cartpole")
    vtrace_run = _run("ppo-cartpole", advantage="vtrace")
    env, algo, state, rollout = _rollout(vtrace_run)
    batches = [
        L.flat_batch(L.build_parts(run, env.spec), state, rollout, rollout.reward)[0]
        for run in (gae_run, vtrace_run)
    ]
    for name in ("advantages", "returns", "log_prob"):
        np.testing.assert_allclose(batches[0][name], batches[1][name], rtol=1e-4, atol=1e-5)
    new, metrics = jax.jit(algo.learn)(state, rollout, jax.random.PRNGKey(2))
    gae_new, _ = jax.jit(L.make(gae_run, env.spec).learn)(state, rollout, jax.random.PRNGKey(2))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
        new.params,
        gae_new.params,
    )
    assert float(metrics["train/rho_clipped_fraction"]) == 0.0


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_recurrent_impala_replays_the_actor_and_weights_stale_steps(core):
    """With a recurrent core the target log-probabilities come from replaying the sequence:
    on its own rollout every weight is 1; a stale rollout's weights are the ones given."""
    run = _run("impala-cartpole", core=core, core_size=8)
    env, _, state, rollout = _rollout(run, kind="masked")
    parts = L.build_parts(run, env.spec)
    batch, metrics = L.sequence_batch(parts, state, rollout, rollout.reward)
    assert float(metrics["train/rho_mean"]) == pytest.approx(1.0, abs=1e-5)
    assert batch["advantages"].shape == (NUM_STEPS, NUM_ENVS)
    stale, _ = _stale(rollout)
    _, metrics = L.sequence_batch(parts, state, stale, stale.reward)
    assert float(metrics["train/rho_mean"]) == pytest.approx(1.75, rel=1e-4)
    assert float(metrics["train/rho_clipped_fraction"]) == pytest.approx(0.5)


def test_defaults_are_the_papers_and_bad_levels_are_refused():
    cfg = C.IMPALA()
    assert (cfg.optimizer, cfg.ent_coef, cfg.vf_coef, cfg.max_grad_norm) == (
        "rmsprop",
        0.01,
        0.5,
        40.0,
    )
    assert (cfg.rho_bar, cfg.pg_rho_bar, cfg.c_bar, cfg.gae_lambda) == (1.0, 1.0, 1.0, 1.0)
    assert not cfg.normalize_advantages
    family = C.Family.of(cfg)
    assert (family.estimator, family.objective, family.num_epochs) == ("vtrace", "pg", 1)
    assert C.Family.of(C.PPO(advantage="vtrace")).estimator == "vtrace"
    assert C.Family.of(C.PPO()).estimator == "gae"
    for name in ("rho_bar", "pg_rho_bar", "c_bar"):
        with pytest.raises(ConfigError, match=f"algo.{name}"):
            C.IMPALA(**{name: 0.0})
        with pytest.raises(ConfigError, match=f"algo.{name}"):
            C.PPO(**{name: -1.0})
    with pytest.raises(ConfigError, match="algo.gae_lambda"):
        C.IMPALA(gae_lambda=1.5)


def test_impala_cartpole_trains_two_seeds_in_one_program(tiny):
    result = train(tiny("impala-cartpole", num_seeds=2))
    assert result.status == "completed" and result.eval_returns.shape == (2,)
    assert np.isfinite(result.eval_returns).all()


@pytest.mark.slow
def test_impala_cartpole_solves_for_every_seed(tmp_path):
    """The preset as shipped, 5 seeds vmapped in one program: each reaches 500."""
    run = load_preset("impala-cartpole")
    run = dataclasses.replace(
        run,
        train=dataclasses.replace(run.train, num_seeds=5, seed=0),
        log=dataclasses.replace(
            run.log, run_dir=str(tmp_path / "run"), progress=False, tensorboard=False
        ),
    )
    result = train(run)
    assert result.status == "threshold" and np.all(result.eval_returns >= 500), result.eval_returns
