"""Runs the Ray tests (marker ``ray``) in a fresh network namespace, where loopback is the only
interface: every Ray process they start then talks over 127.0.0.1 and nothing else, whatever
address Ray would otherwise pick (DESIGN.md, "Distributed"). Skipped, with the reason, where
namespaces are unavailable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

INSIDE = os.environ.get("FLEETRL_NETNS") == "1"


def namespace_prefix() -> list[str] | None:
    """``unshare -n`` (root, as CI runs), else ``unshare -rn`` (a user namespace), whichever
    works here; None if neither does."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return None
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def run_inside(marker: str, timeout: float) -> None:
    pytest.importorskip("ray", reason='Ray is not installed (pip install "fleetrl[ray]")')
    if INSIDE:
        pytest.skip("already inside the namespace")
    prefix = namespace_prefix()
    if prefix is None:
        pytest.skip("no network namespace here (unshare -n / -rn and ip needed): Ray tests skipped")
    inner = (
        f"ip link set lo up && exec {sys.executable} -m pytest -q -n 0 -p no:cacheprovider "
        f"-m '{marker}' tests/test_distributed.py"
    )
    env = os.environ | {"FLEETRL_NETNS": "1", "FLEETRL_VMAP_ONE_CORE": "0"}
    env.pop("PYTEST_XDIST_WORKER", None)
    # the xdist worker is pinned to one CPU: Ray's actors and learner may use them all
    all_cpus = lambda: os.sched_setaffinity(0, range(os.cpu_count() or 1))  # noqa: E731
    done = subprocess.run(
        [*prefix, "sh", "-c", inner],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        preexec_fn=all_cpus if hasattr(os, "sched_setaffinity") else None,
    )
    output = done.stdout + done.stderr
    if done.returncode == 5:  # no test selected
        return
    assert done.returncode == 0, output[-8000:]
    print(output[-2000:])


@pytest.mark.timeout(960)
def test_ray_tests_in_a_network_namespace():
    run_inside("ray and not slow", timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(2500)
def test_ray_learning_tests_in_a_network_namespace():
    run_inside("ray and slow", timeout=2400)
