"""Custom env ids (``module.path:ClassName``): which modules fleetrl may import for them.

Why a gate: an env id travels in files that may come from someone else (a preset, a received
run directory's ``config.yaml``), and ``module:attribute`` let such a file import any module and
call any function with ``env.kwargs`` as its arguments: ``env.id: os:system`` with
``env.kwargs: {command: ...}`` ran the command on ``fleetrl eval``, ``visualize``, ``train
--resume`` and ``train <preset>`` (reliability case S5). So:

- the attribute must be a ``gymnasium.Env`` subclass, checked after the import and before
  anything is called (a wrapped env is a ``gymnasium.Wrapper`` subclass whose constructor
  builds it);
- the module is imported only with the user's consent, because importing runs its code: a
  module named by ``--env.id`` on the command line itself, one given with ``--trust-module``
  (``train``, ``eval``, ``visualize``), listed in ``FLEETRL_TRUST_MODULES`` (comma-separated),
  or passed to `trust_modules` from Python. Trusting a package trusts its submodules.

Registered gymnasium ids and gymnax ids need nothing: the packages that registered them are
installed, hence trusted. Imported by worker processes: the standard library and gymnasium only.
"""

from __future__ import annotations

import importlib
import os
import re

TRUST_VARIABLE = "FLEETRL_TRUST_MODULES"
"""Environment variable: modules (and their submodules) trusted for custom env ids."""

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_trusted: set[str] = set()


def _config_error(message: str) -> Exception:
    from fleetrl.config import ConfigError

    return ConfigError(message)


def trust_modules(*names: str) -> None:
    """Allow custom env ids from the modules ``names`` (and their submodules) in this process."""
    for name in names:
        if not _DOTTED.fullmatch(name):
            raise _config_error(f"--trust-module: {name!r} is not a module path (a.b.c)")
        _trusted.add(name)


def trusted_modules() -> set[str]:
    """The modules trusted now: `trust_modules` and ``FLEETRL_TRUST_MODULES``."""
    listed = re.split(r"[,\s]+", os.environ.get(TRUST_VARIABLE, ""))
    return _trusted | {name for name in listed if _DOTTED.fullmatch(name)}


def is_trusted(module: str) -> bool:
    return any(module == t or module.startswith(f"{t}.") for t in trusted_modules())


# Ids whose ``env_id`` keyword names another env, made by old gym, which imports the module of a
# ``module:Name`` there (shimmy's compatibility envs, registered when shimmy is installed).
_ID_TAKING = ("GymV21Environment-v0", "GymV26Environment-v0")


def check_kwargs(env_id: str, kwargs: dict) -> None:
    """The module an env's keyword arguments would have imported must be trusted too."""
    inner = kwargs.get("env_id") if env_id in _ID_TAKING else None
    module = module_of(inner) if isinstance(inner, str) else None
    if module and not is_trusted(module):
        raise _config_error(
            f"env.kwargs: env_id {inner} names the Python module {module}, which {env_id} "
            f"would import; add --trust-module {module} (or set {TRUST_VARIABLE}={module}) if "
            "you trust that code"
        )


def module_of(env_id: str) -> str | None:
    """The module a ``module:attribute`` id names, None for any other id."""
    module, colon, _ = env_id.partition(":")
    return module if colon else None


def resolve(env_id: str, check_trust: bool = True):
    """The ``gymnasium.Env`` subclass a ``module.path:ClassName`` id names, or None for
    gymnasium's own ``module:EnvName-v0`` form (importing the module registers ``EnvName-v0``).

    ``check_trust``: refuse a module the user has not trusted (see the module docstring) before
    importing it; worker processes skip it, their parent checked. Every failure is a
    ``ConfigError`` naming ``env.id``; nothing of the module is called but its import.
    """
    module_name, _, attribute = env_id.partition(":")
    if not _DOTTED.fullmatch(module_name) or not attribute:
        raise _config_error(f"env.id: {env_id!r} is not of the form module.path:ClassName")
    if check_trust and not is_trusted(module_name):
        raise _config_error(
            f"env.id: {env_id} names the Python module {module_name}, and importing it runs its "
            f"code; fleetrl imports a module named in a preset or run config only with your "
            f"consent: add --trust-module {module_name} (or set {TRUST_VARIABLE}={module_name}) "
            "if you trust that code. A module given with --env.id on the command line is trusted."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise _config_error(f"env.id: cannot import {module_name} for {env_id}: {error}") from None
    if not _DOTTED.fullmatch(attribute):
        return _registered_by(module_name, attribute, env_id)
    found = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise _config_error(
                f"env.id: module {module_name} has no {attribute}{_env_classes_hint(module)}"
            )
    _require_env_class(found, env_id)
    return found


def _registered_by(module_name: str, env_name: str, env_id: str) -> None:
    import gymnasium

    if env_name not in gymnasium.registry:
        raise _config_error(
            f"env.id: importing {module_name} registered no gymnasium env {env_name!r} "
            f"({env_id}); a custom env class is given as module.path:ClassName"
        )
    return None


def _require_env_class(found, env_id: str) -> None:
    import gymnasium

    if isinstance(found, type) and issubclass(found, gymnasium.Env):
        return
    if isinstance(found, type) and callable(getattr(found, "step", None)):
        from fleetrl.envs.checks import SHIMMY_HINT
        from fleetrl.envs.errors import OldGymApiError

        raise OldGymApiError(
            f"env.id: {env_id} is the class {found.__qualname__}, which has step() but is not "
            f"a gymnasium.Env subclass: an env of the old gym API? {SHIMMY_HINT}"
        )
    what = f"the class {found.__qualname__}" if isinstance(found, type) else _describe(found)
    raise _config_error(
        f"env.id: {env_id} is {what}, not a gymnasium.Env subclass; fleetrl builds custom "
        "envs only from env classes (a config file could otherwise name any function, such as "
        "os:system). To wrap an env, subclass gymnasium.Wrapper and build the wrapped env in "
        "its constructor."
    )


def _describe(found) -> str:
    if callable(found):
        name = getattr(found, "__qualname__", None) or type(found).__name__
        return f"the callable {name} ({type(found).__name__})"
    return f"a {type(found).__name__} value"


def _env_classes_hint(module) -> str:
    import gymnasium

    names = sorted(
        name
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, gymnasium.Env)
        and value.__module__ == module.__name__
    )
    return f"; its env classes: {', '.join(names)}" if names else ""
