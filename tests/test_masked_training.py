"""Action masks end to end: every algorithm trains, evaluates and checkpoints on a host env
that raises on any masked action (`fleetrl.envs.fake.MaskedEnv`, its mask in ``info`` or in a
Dict observation), so a run that completes never took one; the loss sees the masked policy."""

from __future__ import annotations

import dataclasses

import pytest

from fleetrl.config import load_preset
from fleetrl.train import train


def _masked_run(tiny, base: str, dict_obs: bool):
    run = tiny(base)
    kwargs = "{dict_obs: true}" if dict_obs else ""
    env = dataclasses.replace(
        run.env,
        id="fleetrl.envs.fake:MaskedEnv",
        backend="gymnasium",
        num_workers=0,
        num_envs=4,
        kwargs=kwargs,
    )
    return dataclasses.replace(
        run,
        env=env,
        train=dataclasses.replace(run.train, num_steps=16, total_steps=64, eval_every=32),
    )


@pytest.mark.parametrize(
    "base, dict_obs",
    # the actor-critic members share one act and loss (each runs on a masked device env in
    # tests/test_contract.py); DQN acts on its own
    [("ppo-cartpole-gym", False), ("ppo-cartpole-gym", True), ("dqn-cartpole-gym", False)],
)
def test_no_masked_action_is_ever_taken(tiny, base, dict_obs):
    result = train(_masked_run(tiny, base, dict_obs))
    assert result.status == "completed"
    # a legal action pays 1 on each of the 10 steps of an episode; a masked one would raise
    assert float(result.eval_returns[0]) == 10.0


def test_masked_preset_loads_with_its_mask():
    from fleetrl import envs

    run = load_preset("ppo-taxi-masked")
    env = envs.make(run.env, num_envs=2)
    try:
        assert env.spec.action_mask and env.spec.observation_shape == (500,)
    finally:
        env.close()


def test_the_loss_sees_the_masked_policy():
    """The learner's batch carries the rollout's mask, and the policy it differentiates gives
    masked actions no probability (so its log-probabilities match the behaviour's)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fleetrl.algos.actor_critic import learner as L
    from fleetrl.envs.fake_device import FakeDeviceEnv
    from fleetrl.rollout import reset, simulate

    run = load_preset("ppo-cartpole")
    env = FakeDeviceEnv("masked", 4)
    algo = L.make(run, env.spec)
    state = algo.init(jax.random.PRNGKey(0))
    carry = reset(env, jax.random.PRNGKey(1), algo)
    _, rollout = jax.jit(lambda s, c: simulate(algo, env, s, c, 8))(state, carry)
    parts = L.build_parts(run, env.spec)
    batch, _ = L.flat_batch(parts, state, rollout, rollout.reward)
    assert batch["mask"].shape == (32, 4)
    out, _ = L.evaluate_batch(parts, state.params, batch)
    probs = np.asarray(jax.nn.softmax(out))
    assert np.all(probs[~np.asarray(batch["mask"])] == 0.0)
    relogp = parts.dist.log_prob(out, batch["action"])
    np.testing.assert_allclose(relogp, batch["log_prob"], atol=1e-5)
    assert jnp.isfinite(L.loss_fn(parts, state.params, batch, state.kl_penalty)[0])
