"""Starting or joining the Ray cluster of a distributed run, safely.

Anyone who can reach a Ray cluster's ports can run code on it as its owner. So:
- a local cluster starts with the dashboard off and Ray's token authentication on (a token of
  this process's own when the user has none: nothing written to disk); Ray binds the machine's
  address whatever ``_node_ip_address`` says (inside a fresh network namespace loopback is all
  there is, which is how our tests keep every connection local), so a local cluster started
  with ``RAY_AUTH_MODE=disabled`` on an address other hosts can reach is refused;
- joining a cluster (``dist.address``) that is not on this machine's loopback needs
  ``RAY_AUTH_MODE=token``: otherwise refused, with how to enable it.
Nothing read from disk or the network is unpickled by fleetrl: configs travel as YAML text
and segments as plain dicts of arrays between actors of our own authenticated cluster.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
import warnings
from pathlib import Path

from fleetrl.config import ConfigError, DistConfig

AUTH_HELP = (
    "start the cluster with token authentication (`RAY_AUTH_MODE=token ray start --head ...`; "
    "`ray get-auth-token --generate` writes a token to ~/.ray/auth_token) and run fleetrl with "
    "RAY_AUTH_MODE=token and the same token (in ~/.ray/auth_token, or RAY_AUTH_TOKEN)"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IPv4/IPv6 address) is this machine's loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    """The host of ``HOST:PORT`` (brackets of an IPv6 address removed)."""
    return address.rpartition(":")[0].strip("[]")


def check_join(address: str, environ=os.environ) -> None:
    """Refuse to join ``address`` from other hosts' reach without token authentication."""
    if is_loopback(host_of(address)):
        return
    if environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise ConfigError(
            f"dist.address {address}: joining a Ray cluster reachable from other hosts without "
            "Ray's token authentication is refused (anyone who reaches it can run code as you); "
            + AUTH_HELP
        )


def local_auth_env(environ=os.environ) -> dict[str, str]:
    """The variables that turn token authentication on for a local cluster: none when the user
    chose a mode; else ``RAY_AUTH_MODE=token`` and, without a token of theirs, a fresh one that
    lives in this process's environment (Ray's processes inherit it)."""
    if "RAY_AUTH_MODE" in environ:
        return {}
    extra = {"RAY_AUTH_MODE": "token"}
    has_token = "RAY_AUTH_TOKEN" in environ or "RAY_AUTH_TOKEN_PATH" in environ
    if not has_token and not (Path.home() / ".ray" / "auth_token").is_file():
        extra["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
    return extra


def _refresh_auth(extra: dict[str, str]) -> None:
    """Turn token authentication on in a process that imported Ray before (its configuration is
    read at import; Ray's own local start refreshes it the same way)."""
    if not extra:
        return
    os.environ.update(extra)
    try:
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # another Ray: its own default applies
        pass


_STARTED: list[Cluster] = []


def release_all() -> None:
    """Stop the local clusters this process started (`fleetrl.interrupts.release_and_exit`:
    a hard exit leaves no Ray process of ours behind)."""
    for cluster in list(_STARTED):
        cluster.close()


class Cluster:
    """The Ray connection of one run: started here (``started``) or joined."""

    def __init__(self, dist: DistConfig, cpus_needed: float):
        from fleetrl.distributed import require_ray

        local = dist.address is None
        if local and "ray" not in sys.modules:  # Ray reads its auth mode when imported
            os.environ.update(local_auth_env())
        self.ray = ray = require_ray()
        self.started = self.owned = False
        if ray.is_initialized():  # a caller (a test module, a notebook) connected: theirs
            return
        self.owned = True
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        quiet = {"logging_level": "warning", "log_to_driver": True}
        if dist.address is not None:
            check_join(dist.address)
            ray.init(address=dist.address, **quiet)
            self._check_exposed(f"the cluster at {dist.address}")
        else:
            _refresh_auth(local_auth_env())
            cpus = max(os.cpu_count() or 1, int(-(-cpus_needed // 1)))
            with warnings.catch_warnings():  # Ray's processes fork-exec: no JAX state shared
                warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
                self._start_local(cpus, quiet)
            self.started = True
            _STARTED.append(self)
            self._check_local()

    def _start_local(self, cpus: int, quiet: dict) -> None:
        self.ray.init(
            address="local",  # a new cluster, never one this machine already runs
            num_cpus=cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            **quiet,
        )

    def _check_local(self) -> None:
        self._check_exposed("the local Ray cluster")

    def _check_exposed(self, what: str) -> None:
        """Refuse (disconnect, stop a cluster started here) a cluster any of whose nodes other
        hosts can reach while token authentication is off: a head joined at 127.0.0.1 may
        still listen on every address (Ray binds the machine's address whatever flags say)."""
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return
        ray = self.ray
        hosts = {host_of(ray.get_runtime_context().gcs_address)}
        hosts |= {node.get("NodeManagerAddress", "") for node in ray.nodes() if node.get("Alive")}
        exposed = sorted(host for host in hosts if host and not is_loopback(host))
        if exposed:
            self.owned = True  # disconnect even from a cluster the caller joined
            self.close()
            raise ConfigError(
                f"RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE')!r}: {what} listens on "
                f"{', '.join(exposed)}, which other hosts can reach, and token authentication "
                "is off; unset RAY_AUTH_MODE for a local cluster (fleetrl then turns it on) or "
                + AUTH_HELP
            )

    def require_cpus(self, needed: float) -> None:
        """Refuse, before any actor waits to be scheduled, a cluster too small for them all."""
        cpus = self.ray.cluster_resources().get("CPU", 0.0)
        if cpus < needed:
            raise ConfigError(
                f"dist.actors: {needed:g} CPUs needed (dist.actors x dist.actor_cpus), the Ray "
                f"cluster has {cpus:g}; add nodes, or lower dist.actors or dist.actor_cpus"
            )

    def close(self) -> None:
        """Disconnect (a connection made by the caller stays); a cluster started here stops
        with every process of it."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = self.owned = False
        if self in _STARTED:
            _STARTED.remove(self)
