"""fleetrl.xla_cpu: programs compiled on a client with every core, run on a one-thread client.

Each case runs in a fresh process, since the pools are fixed when JAX's CPU backend starts
(and this test process is pinned to one CPU, see conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

WIDEN = "import os, sys; os.sched_setaffinity(0, range(os.cpu_count())); "
"""Python run first in each child: every CPU (this process is pinned to one, conftest.py)."""


def usable_cpus() -> int:
    """CPUs a child may use once it widens its affinity (this process is pinned to one)."""
    if not hasattr(os, "sched_setaffinity"):
        return 0
    script = WIDEN + "print(len(os.sched_getaffinity(0)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    return int(done.stdout or 0)


pytestmark = pytest.mark.skipif(usable_cpus() < 2, reason="needs two usable CPUs")

CHILD = textwrap.dedent(
    """
    import json
    mode, cache = sys.argv[1], sys.argv[2]
    import jax, jax.numpy as jnp
    from fleetrl import xla_cpu
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    hits = []
    jax.monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None
    )
    if mode == "one":
        xla_cpu.use_one_xla_thread()

    def step(w, x):
        def body(h, _):
            h = jnp.tanh(h @ w) + 0.1 * jnp.sin(h)
            return h, h.sum()
        return jax.lax.scan(body, x, None, length=7)

    w = jnp.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64) / 8
    x = jnp.ones((16, 64))
    with xla_cpu.parallel_compile():
        compiled = jax.jit(step).lower(w, x).compile()
    h, sums = compiled(w, x)
    print(json.dumps({
        "on_helper": xla_cpu.compiled_on_helper,
        "cache_hits": len(hits),
        "sums": [float(s) for s in sums],
        "h": float(h.sum()),
    }))
    """
)


def child(mode: str, cache) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WIDEN + CHILD, mode, str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compiled_on_every_core_run_on_one_thread_and_cached_for_other_processes(tmp_path):
    reference = child("all", tmp_path / "reference")
    assert reference["on_helper"] == 0  # the default pool compiles on JAX's own client

    first = child("one", tmp_path / "cache")
    if first["on_helper"] == 0:
        pytest.fail(
            "fleetrl.xla_cpu did not compile on its helper client: a JAX internal it hooks "
            "(jax._src.compiler.backend_compile_and_load) has moved; one-thread runs now "
            "compile ~2x slower"
        )
    assert first["sums"] == reference["sums"] and first["h"] == reference["h"]

    # the executable the helper compiled went into JAX's persistent cache whole: another
    # process, with either pool, loads it from there and computes the same
    for mode in ("one", "all"):
        again = child(mode, tmp_path / "cache")
        assert again["cache_hits"] >= 1 and again["on_helper"] == 0, mode
        assert again["sums"] == reference["sums"] and again["h"] == reference["h"], mode


def cli_run(tmp_path, name: str, cache, *extra: str) -> list[dict]:
    """A short CLI run of ppo-cartpole on every CPU; its metrics records without wall times."""
    run_dir = tmp_path / name
    args = ["--train.seed", "0", "--train.total-steps", "4096", "--train.log-every", "1024"]
    args += ["--train.eval-every"]
    args += ["2048", "--train.eval-episodes", "2", "--train.checkpoint-every", "0"]
    args += ["--log.run-dir", str(run_dir), "--log.progress", "False", *extra]
    script = WIDEN + "from fleetrl.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", script, "train", "ppo-cartpole", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "FLEETRL_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0, done.stderr
    assert "compile on" not in done.stderr, done.stderr  # fleetrl.xla_cpu fell back
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "charts/sps")} for r in records]


def test_cli_runs_agree_across_thread_modes_and_cache_states(tmp_path):
    """The default single-seed run (one XLA thread; the train call compiled on the helper, init
    and evaluation beside it on JAX's client) gives the same numbers cold, warm (programs and
    shapes read from disk), and with one XLA thread per core."""
    cold = cli_run(tmp_path, "cold", tmp_path / "cache")
    warm = cli_run(tmp_path, "warm", tmp_path / "cache")
    every_core = cli_run(tmp_path, "all", tmp_path / "other", "--train.xla-threads", "all")
    assert any("eval/episodic_return" in r for r in cold)
    assert warm == cold
    assert every_core == cold
