"""Return estimators: GAE, V-trace, n-step targets, Monte-Carlo and Q(lambda) returns, and the
n-step bootstrap of a replayed window (value-based and continuous off-policy families). One
kernel per concept; tested against references.

Conventions: time-major ``[T, N]`` arrays. ``terminated[t]`` means the step ``t`` reached a
terminal state (no bootstrap); ``truncated[t]`` means the episode was cut by a time limit, so the
target still bootstraps from the value of the observation reached (``next_value[t]``), but the
advantage recursion stops there because ``t + 1`` belongs to a new episode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fleetrl.types import Array


def gae(
    reward: Array,
    value: Array,
    next_value: Array,
    terminated: Array,
    truncated: Array,
    gamma: float,
    lam: float,
) -> tuple[Array, Array]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) with time limits.

    Args: ``reward, value, next_value, terminated, truncated``: ``[T, N]``. ``value[t]`` is
    V(obs[t]); ``next_value[t]`` is V(next_obs[t]), the state reached by step ``t`` before any
    auto-reset. Returns ``(advantages, returns)``, both ``[T, N]``, with
    ``returns = advantages + value`` (the value-function targets).
    """
    not_terminal = 1.0 - terminated.astype(value.dtype)
    not_done = 1.0 - (terminated | truncated).astype(value.dtype)
    delta = reward + gamma * not_terminal * next_value - value

    def backward(carry: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        delta_t, not_done_t = xs
        advantage = delta_t + gamma * lam * not_done_t * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(value[0]), (delta, not_done), reverse=True
    )
    return advantages, advantages + value


def vtrace(
    value: Array,
    next_value: Array,
    reward: Array,
    terminated: Array,
    truncated: Array,
    behaviour_log_prob: Array,
    target_log_prob: Array,
    gamma: float,
    *,
    rho_bar: float = 1.0,
    pg_rho_bar: float = 1.0,
    c_bar: float = 1.0,
    lambda_: float = 1.0,
) -> tuple[Array, Array]:
    """V-trace value targets and policy-gradient advantages (Espeholt et al. 2018, eq. 1-4)
    for data acted by a behaviour policy mu and learned by a target policy pi.

    Args: ``value, next_value, reward, terminated, truncated``: ``[T, N]``, as `gae` takes
    them (``next_value[t]``: V(next_obs[t]), the state step ``t`` reached before any
    auto-reset); ``behaviour_log_prob, target_log_prob``: ``[T, N]``, log mu(a_t|x_t) as the
    actor recorded it and log pi(a_t|x_t). With ``rho_t = pi / mu``:

    - ``delta_t = min(rho_bar, rho_t) (r_t + gamma (1 - terminated_t) next_value_t - V_t)``
    - ``acc_t = delta_t + gamma (1 - done_t) c_t acc_{t+1}``, ``c_t = lambda_ min(c_bar, rho_t)``,
      ``acc_T = 0``; ``vs_t = V_t + acc_t``
    - ``q_t = next_value_t + lambda_ (1 - done_t) acc_{t+1}`` (= ``vs_{t+1}`` for lambda 1,
      where V(obs[t+1]) = V(next_obs[t]); for lambda < 1 rlax's blend of vs and V, so that
      on-policy the advantages are exactly GAE's)
    - ``pg_advantage_t = min(pg_rho_bar, rho_t) (r_t + gamma (1 - terminated_t) q_t - V_t)``

    A terminated step does not bootstrap; a truncated one bootstraps from ``next_value``; the
    recursion never crosses an episode end, and the segment's last step bootstraps from
    ``next_value[T - 1]``. On-policy (rho = 1, c_bar >= 1) ``vs`` and the advantages are
    `gae`'s returns and advantages with ``lam = lambda_``. Returns ``(vs, pg_advantages)``,
    ``[T, N]``, without gradient (they are targets).
    """
    # rlax.vtrace_td_error_and_advantage computes the same for one sequence (no env axis) with
    # one discount per step and no observation of its own to bootstrap from: it cannot
    # bootstrap a truncated step from the state it reached while cutting the trace there. So
    # we keep our own kernel, batched over N, and test it against rlax's (vmapped) on segments
    # without truncation (tests/test_vtrace.py).
    rho = jnp.exp(target_log_prob - behaviour_log_prob)
    not_terminal = 1.0 - terminated.astype(value.dtype)
    not_done = 1.0 - (terminated | truncated).astype(value.dtype)
    delta = jnp.minimum(rho_bar, rho) * (reward + gamma * not_terminal * next_value - value)
    trace = gamma * not_done * lambda_ * jnp.minimum(c_bar, rho)

    def backward(acc_next: Array, xs: tuple[Array, ...]) -> tuple[Array, Array]:
        delta_t, trace_t, not_done_t, next_value_t = xs
        q = next_value_t + lambda_ * not_done_t * acc_next
        acc = delta_t + trace_t * acc_next
        return acc, (acc, q)

    xs = (delta, trace, not_done, next_value)
    _, (acc, q) = jax.lax.scan(backward, jnp.zeros_like(value[0]), xs, reverse=True)
    pg_advantages = jnp.minimum(pg_rho_bar, rho) * (reward + gamma * not_terminal * q - value)
    return jax.lax.stop_gradient(value + acc), jax.lax.stop_gradient(pg_advantages)


def n_step_target(
    reward: Array,
    terminated: Array,
    truncated: Array,
    bootstrap_value: Array,
    gamma: float,
) -> Array:
    """n-step TD target from ``n`` consecutive steps of one env starting at a sampled step.

    Args: ``reward, terminated, truncated``: ``[n, B]`` steps ``t .. t+n-1``;
    ``bootstrap_value``: ``[n, B]``, the value of ``next_obs[t+k]`` for each ``k``. The target
    sums discounted rewards up to the first step that ends the episode (or ``n``) and bootstraps
    from the state that step reached, unless it was terminal. Returns ``[B]``.
    """
    n = reward.shape[0]
    done = terminated | truncated
    # alive[k]: no episode end strictly before step k
    ended_before = jnp.cumsum(done.astype(jnp.int32), axis=0) - done.astype(jnp.int32)
    alive = (ended_before == 0).astype(reward.dtype)
    discounts = gamma ** jnp.arange(n, dtype=reward.dtype)[:, None]
    rewards = jnp.sum(alive * discounts * reward, axis=0)
    # the last step counted: first episode end, else n - 1
    last = jnp.where(done.any(axis=0), jnp.argmax(done, axis=0), n - 1)
    columns = jnp.arange(reward.shape[1])
    bootstrap = (1.0 - terminated[last, columns].astype(reward.dtype)) * bootstrap_value[
        last, columns
    ]
    return rewards + gamma ** (last + 1).astype(reward.dtype) * bootstrap


def monte_carlo_returns(
    reward: Array,
    terminated: Array,
    truncated: Array,
    next_value: Array,
    gamma: float,
) -> tuple[Array, Array]:
    """Monte-Carlo returns (REINFORCE, Williams 1992) over a window of whole and partial episodes.

    Args: ``reward, terminated, truncated, next_value``: ``[T, N]`` (``next_value[t]``: the
    value of the state step ``t`` reached, read only where it was truncated: an episode cut by
    a time limit bootstraps from it, pass zeros for no bootstrap). Returns ``(returns,
    complete)``, ``[T, N]``: ``returns[t]`` is the discounted sum of rewards from ``t`` to the
    end of its episode; ``complete[t]`` says whether that end lies in the window (where it
    does not, ``returns[t]`` is only the partial sum and must not be learned from).
    """
    not_done = 1.0 - (terminated | truncated).astype(reward.dtype)
    bootstrap = truncated.astype(reward.dtype) * next_value

    def backward(carry, xs):
        ret, complete = carry
        reward_t, not_done_t, bootstrap_t, done_t = xs
        ret = reward_t + gamma * (not_done_t * ret + bootstrap_t)
        complete = done_t | complete
        return (ret, complete), (ret, complete)

    init = (jnp.zeros_like(reward[0]), jnp.zeros(reward.shape[1:], bool))
    done = terminated | truncated
    _, (returns, complete) = jax.lax.scan(
        backward, init, (reward, not_done, bootstrap, done), reverse=True
    )
    return returns, complete


def q_lambda_returns(
    reward: Array,
    terminated: Array,
    truncated: Array,
    next_value: Array,
    gamma: float,
    lam: float,
) -> Array:
    """Peng's Q(lambda) returns (Peng & Williams 1996) over a rollout, as PQN learns from them
    (Gallici et al. 2024; purejaxql's pqn_gymnax.py): lambda-returns whose every step
    bootstraps from the greedy value, without cutting traces at exploratory actions.

    ``G[t] = r[t] + gamma * (1 - terminated[t]) * ((1 - l[t]) * next_value[t] + l[t] * G[t+1])``
    with ``l[t] = lam`` where the episode goes on after ``t`` inside the window, and 0 where
    it ended at ``t`` or ``t`` is the window's last step. A truncated step therefore
    bootstraps from ``next_value[t]`` alone and carries no return across the boundary.

    Args: ``reward, terminated, truncated, next_value``: ``[T, N]``; ``next_value[t]`` is
    ``max_a Q(next_obs[t], a)``, the state step ``t`` reached before any auto-reset (read
    only where not terminated). Returns the targets ``G``, ``[T, N]``.
    """
    not_terminal = 1.0 - terminated.astype(reward.dtype)
    carry_on = lam * (1.0 - (terminated | truncated).astype(reward.dtype))

    def backward(next_return: Array, xs: tuple[Array, ...]) -> tuple[Array, Array]:
        reward_t, not_terminal_t, carry_on_t, next_value_t = xs
        blend = next_value_t + carry_on_t * (next_return - next_value_t)
        ret = reward_t + gamma * not_terminal_t * blend
        return ret, ret

    # G[T] := next_value[T - 1]: the last step's blend is its own bootstrap whatever lam
    _, returns = jax.lax.scan(
        backward, next_value[-1], (reward, not_terminal, carry_on, next_value), reverse=True
    )
    return returns


def n_step_bootstrap(
    reward: Array, terminated: Array, truncated: Array, gamma: float
) -> tuple[Array, Array]:
    """The reward part and the bootstrap discount of an n-step target.

    Args: ``reward, terminated, truncated``: ``[n, B]``, steps ``t .. t+n-1`` of one env. The
    window stops at its first episode end (or after n steps): step k* = that end, else n - 1.
    Returns ``(partial_return [B], discount [B])`` with partial_return = sum_{k <= k*} gamma^k
    r_k and discount = gamma^(k*+1), or 0 where step k* terminated. A truncated step keeps its
    discount: it bootstraps from the observation it reached (``replay.Window.next_obs``).
    """
    n = reward.shape[0]
    done = terminated | truncated
    ended_before = jnp.cumsum(done.astype(jnp.int32), axis=0) - done.astype(jnp.int32)
    alive = (ended_before == 0).astype(reward.dtype)
    powers = gamma ** jnp.arange(n, dtype=reward.dtype)[:, None]
    partial_return = jnp.sum(alive * powers * reward, axis=0)
    last = jnp.where(done.any(axis=0), jnp.argmax(done, axis=0), n - 1)
    ended = jnp.take_along_axis(terminated, last[None], axis=0)[0]
    discount = jnp.where(ended, 0.0, gamma ** (last + 1).astype(reward.dtype))
    return partial_return, discount
