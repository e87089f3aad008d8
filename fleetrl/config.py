"""Run configuration: frozen dataclasses, YAML presets and command-line overrides.

A preset is a YAML file (read with `fleetrl.safeio.loads_yaml`: safe tags, no aliases) with the
sections of ``RunConfig``::

    description: one line shown by `fleetrl presets`
    reaches: the return it reaches and within what budget
    algorithm: ppo
    env: {id: CartPole-v1, num_envs: 4}
    train: {total_steps: 100000, ...}
    algo: {learning_rate: 0.00025, ...}     # the algorithm's own config

Every field can be overridden on the command line as ``--section.key value`` (tyro). The resolved
``config.yaml`` of a run has the same format, so it is itself a preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import yaml


class ConfigError(ValueError):
    """A bad preset, override or value; the message names the field."""


def require(condition: bool, name: str, message: str) -> None:
    """Raise a ``ConfigError`` naming ``name`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{name}: {message}")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment, where it runs, and how many copies are stepped as one batch."""

    id: str = "CartPole-v1"
    """Environment id: a gymnax id, a registered gymnasium id, ``module.path:ClassName``, or
    a fake device env for smoke runs: fleetrl/fake-{discrete,continuous,image,masked}
    (fleetrl.envs.fake_device)."""
    backend: Literal["auto", "gymnax", "gymnasium"] = "auto"
    """Where the env runs: gymnax (pure JAX, inside the compiled program), gymnasium (on the
    host, in a worker pool), or auto (gymnax when it has the id, gymnasium otherwise: a device
    preset given a gymnasium id trains on the host)."""
    num_envs: int = 4
    """Number of envs stepped as one batch (per seed)."""
    num_workers: int = 0
    """gymnasium: worker processes the envs are spread over (0: step them in this process)."""
    parent_steps: bool = False
    """gymnasium: the trainer process also steps a share of the envs (fastest on 2 cores with
    num_workers 1: see docs/BENCHMARKS.md, section 9)."""
    kwargs: str = ""
    """Keyword arguments, a YAML mapping ("{a: 1}"): gymnasium: of the env's constructor;
    gymnax: overrides of the env's parameters ("{memory_length: 20}"); fake device envs: of
    FakeDeviceEnv ("{episode_length: 8}")."""
    observe: tuple[int, ...] = ()
    """Keep only these elements of a 1-D observation (empty: all of it): CartPole with
    position and pole angle only, its velocities hidden, is ``--env.observe 0 2``."""
    preprocess: Literal["none", "atari"] = "none"
    """gymnasium: standard preprocessing wrappers (atari: 84x84 gray, frame skip 4, 4 stacked)."""
    step_timeout: float = 60.0
    """gymnasium: seconds a worker may take for one step before it counts as hung."""
    start_timeout: float = 60.0
    """gymnasium: seconds the envs may take to be built and probed (in worker processes or in
    this process) before the start counts as hung."""
    check_finite: bool = True
    """gymnasium: a NaN or Inf observation or reward is an error naming the env (False: let it
    through to the learner)."""
    on_error: Literal["raise", "restart"] = "raise"
    """gymnasium: on a failing or dead worker, stop the run (raise) or restart its envs."""
    max_restarts: int = 10
    """gymnasium: worker restarts allowed within any 1,000 batched steps; one more fault there
    raises the error (an env that fails for good). Occasional faults never use it up."""

    def __post_init__(self):
        require(self.num_envs >= 1, "env.num_envs", f"must be >= 1, got {self.num_envs}")
        require(bool(self.id), "env.id", "must not be empty")
        require(self.num_workers >= 0, "env.num_workers", f"must be >= 0, got {self.num_workers}")
        require(
            self.num_workers <= self.num_envs,
            "env.num_workers",
            f"must be <= env.num_envs ({self.num_envs}), got {self.num_workers}",
        )
        for name in ("step_timeout", "start_timeout"):
            value = getattr(self, name)
            require(value > 0, f"env.{name}", f"must be > 0, got {value}")
        restarts = self.max_restarts
        require(restarts >= 0, "env.max_restarts", f"must be >= 0, got {restarts}")
        self.env_kwargs()
        observe = self.observe
        require(all(i >= 0 for i in observe), "env.observe", f"indices must be >= 0, got {observe}")
        require(len(set(observe)) == len(observe), "env.observe", f"duplicate indices in {observe}")

    def env_kwargs(self) -> dict[str, Any]:
        """``kwargs`` parsed: a dict of keyword arguments for the env constructor."""
        if not self.kwargs.strip():
            return {}
        value = load_yaml(self.kwargs, "env.kwargs")
        require(isinstance(value, dict), "env.kwargs", f"expected a mapping, got {self.kwargs!r}")
        return value


@dataclass(frozen=True)
class TrainConfig:
    """Budget, schedule and seeds of a run."""

    total_steps: int = 500_000
    """Environment steps per seed, a lower bound: rounded up to whole compiled calls (each of
    log_every env steps, rounded down to whole iterations, at least one)."""
    num_steps: int = 128
    """Steps per env in one rollout; one iteration = num_envs x num_steps env steps."""
    seed: int | None = None
    """Seed of the first run; seed i of num_seeds uses seed + i. Omitted: drawn at random when
    the run starts, printed, and recorded in the run's config.yaml (so the run replays)."""
    num_seeds: int = 1
    """Independent seeds trained in one compiled program (vmap)."""
    log_every: int = 10_000
    """Env steps between returns to Python to log and update the progress bar."""
    eval_every: int = 10_000
    """Env steps between evaluations (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation, on separately seeded envs, deterministic policy."""
    eval_max_steps: int = 0
    """Step limit of an evaluation episode (0: the env's time limit, or 1000 if it has none)."""
    checkpoint_every: int = 100_000
    """Env steps between checkpoints (0: only at the end)."""
    stop_at_return: float | None = None
    """Stop early once the evaluation return of every seed reaches this value. With several
    seeds, a seed that reaches it stops learning (its parameters stay as evaluated, and that
    evaluation is its final return) while the others go on."""
    xla_threads: Literal["auto", "one", "all"] = "auto"
    """CPU threads XLA executes a single-seed run with (CLI only). one: tiny networks train
    15-35% faster; device-env programs still compile on every core (fleetrl.xla_cpu), host-env
    programs on the one thread; all: one per core; auto: one for MLP policies on device envs
    and on host envs stepped in-process (env.num_workers 0), else all."""
    call_timeout: float = 600.0
    """Seconds the compilation of the run's programs, the first compiled call, or an
    evaluation may take before the run is stopped as hung (0: never); later training calls may
    take 20x the slowest one before."""
    stop_grace: float = 120.0
    """After Ctrl+C or SIGTERM, seconds to wait for the current call to finish and the
    checkpoint to be written before exiting without it (0: wait as long as it takes)."""

    def __post_init__(self):
        for name in ("total_steps", "num_steps", "num_seeds", "log_every", "eval_episodes"):
            value = getattr(self, name)
            require(value >= 1, f"train.{name}", f"must be >= 1, got {value}")
        for name in ("eval_every", "checkpoint_every", "eval_max_steps"):
            value = getattr(self, name)
            require(value >= 0, f"train.{name}", f"must be >= 0, got {value}")
        seed = self.seed
        require(
            seed is None or 0 <= seed < 2**31, "train.seed", f"must be in 0..2^31-1, got {seed}"
        )
        for name in ("call_timeout", "stop_grace"):
            value = getattr(self, name)
            require(value >= 0, f"train.{name}", f"must be >= 0, got {value}")


@dataclass(frozen=True)
class LogConfig:
    """Where a run writes and what it shows."""

    root: str = "runs"
    """Folder under which run directories are created."""
    run_dir: str | None = None
    """Exact run directory (default: <root>/<preset>__s<seed>__<timestamp>)."""
    tensorboard: bool = True
    """Write TensorBoard events under <run_dir>/tb."""
    progress: bool = True
    """Show a progress bar."""
    video_every: int = 0
    """Env steps between videos of evaluation episodes in <run_dir>/videos (0: none); needs
    ``pip install 'fleetrl[video]'``."""
    video_episodes: int = 1
    """Episodes recorded each time (seed 0's policy, deterministic)."""

    def __post_init__(self):
        require(self.video_every >= 0, "log.video_every", f"must be >= 0, got {self.video_every}")
        require(
            self.video_episodes >= 1,
            "log.video_episodes",
            f"must be >= 1, got {self.video_episodes}",
        )


@dataclass(frozen=True)
class DistConfig:
    """How a run spreads over processes and machines (`fleetrl.distributed`, on Ray)."""

    mode: Literal["single", "sync", "async"] = "single"
    """single: one process (today's driver); sync: ``actors`` Ray actors each step
    ``env.num_envs / actors`` envs with the same policy version, the learner learns on all their
    segments at once; async: actors never wait for the learner (on-policy learning corrects the
    lag with V-trace (impala, ppo with ``advantage: vtrace``) or PPO's ratio; the value-based
    family runs as Ape-X)."""
    actors: int = 2
    """Ray actors sampling envs (sync and async); ``env.num_envs`` must be a multiple of it."""
    address: str | None = None
    """``HOST:PORT`` of an existing Ray cluster to join (``ray start --head``); None starts a
    local one (dashboard off, token authentication on)."""
    max_policy_lag: int = 4
    """async: a segment acted with parameters this many versions older than the learner's is
    dropped (and counted: ``dist/dropped_segments``). Not for Ape-X, whose replay is
    off-policy by design (its lag is still logged)."""
    max_restarts: int = 8
    """Actor restarts allowed over the run (a dead or hung actor is replaced); 0: a dead actor
    stops the run with an error."""
    sample_timeout: float = 60.0
    """Seconds a segment may take before its actor counts as hung and is replaced."""
    start_timeout: float = 180.0
    """Seconds an actor may take to start (build its envs, compile its policy)."""
    actor_cpus: float = 1.0
    """CPUs Ray reserves for each actor."""

    def __post_init__(self):
        require(self.actors >= 1, "dist.actors", f"must be >= 1, got {self.actors}")
        require(
            self.max_policy_lag >= 0,
            "dist.max_policy_lag",
            f"must be >= 0, got {self.max_policy_lag}",
        )
        require(
            self.max_restarts >= 0, "dist.max_restarts", f"must be >= 0, got {self.max_restarts}"
        )
        for name in ("sample_timeout", "start_timeout", "actor_cpus"):
            value = getattr(self, name)
            require(value > 0, f"dist.{name}", f"must be > 0, got {value}")
        if self.address is not None:
            host, _, port = self.address.rpartition(":")
            require(
                bool(host) and port.isdigit(),
                "dist.address",
                f"must be HOST:PORT of a Ray head (ray start --head), got {self.address!r}",
            )


A = TypeVar("A")


@dataclass(frozen=True)
class RunConfig(Generic[A]):
    """Everything a run needs; resolved and saved as ``config.yaml`` in the run directory."""

    algorithm: str
    """Algorithm name (a key of `fleetrl.algos.ALGORITHMS`: ppo, a2c, reinforce, dqn, pqn)."""
    algo: A
    """The algorithm's own configuration."""
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    preset: str = "custom"
    """Name of the preset this run came from."""
    description: str = ""
    """One line describing the preset."""
    reaches: str = ""
    """What the preset reaches, and within what budget."""

    def __post_init__(self):
        from fleetrl.algos import get_algorithm

        for section in ("env", "train", "log", "algo", "dist"):
            check_values(getattr(self, section), section)
        get_algorithm(self.algorithm).check_config(self)
        _check_dist(self)

    @property
    def steps_per_iteration(self) -> int:
        return self.env.num_envs * self.train.num_steps

    @property
    def iterations_per_call(self) -> int:
        """Iterations fused into one compiled call: one logging interval."""
        needed = -(-self.train.total_steps // self.steps_per_iteration)
        return max(1, min(needed, self.train.log_every // self.steps_per_iteration))

    @property
    def num_iterations(self) -> int:
        """Iterations of the run: total_steps rounded up to whole compiled calls."""
        needed = -(-self.train.total_steps // self.steps_per_iteration)
        per_call = self.iterations_per_call
        return -(-needed // per_call) * per_call


NOT_LEARNED: dict[str, str] = {
    "train.seed": "seed",
    "train.num_seeds": "seed",
    "train.total_steps": "length",
    "train.log_every": "cadence",
    "train.eval_every": "cadence",
    "train.eval_episodes": "cadence",
    "train.eval_max_steps": "cadence",
    "train.checkpoint_every": "cadence",
    "train.stop_at_return": "cadence",
    "train.xla_threads": "runtime",
    "train.call_timeout": "runtime",
    "train.stop_grace": "runtime",
    "env.step_timeout": "runtime",
    "env.start_timeout": "runtime",
    "env.max_restarts": "runtime",
    "env.on_error": "runtime",
    "log.": "runtime",
    "dist.address": "runtime",
    "dist.max_restarts": "runtime",
    "dist.sample_timeout": "runtime",
    "dist.start_timeout": "runtime",
    "dist.actor_cpus": "runtime",
}
"""The one list of settings that do not change what a run learns from what, by kind: ``seed``
(which seeds), ``length`` (how long: it also sets the learning-rate and exploration schedules,
so plots keep it apart), ``cadence`` (of logging, evaluation, checkpoints and stops) and
``runtime`` (threads, timeouts, fault handling, logging backends). A key ending in ``.`` covers
its whole section. Read through `not_learned` by the resume check (`fleetrl.train`), the
program cache key (`fleetrl.programs.program_config`) and plot grouping
(`fleetrl.plot.experiment`)."""

SHAPES_PROGRAMS = (
    "train.num_seeds",
    "train.total_steps",
    "train.log_every",
    "train.eval_episodes",
    "train.eval_max_steps",
)
"""Settings of `NOT_LEARNED` that still shape a compiled program: the seed axis, the iterations
per call (``log_every``, ``total_steps``), the evaluation's envs and step bound, and the
schedules (``total_steps``)."""


def not_learned(*kinds: str) -> tuple[str, ...]:
    """The dotted keys (or ``section.`` prefixes) of `NOT_LEARNED` of these kinds."""
    return tuple(key for key, kind in NOT_LEARNED.items() if kind in kinds)


def with_defaults(run: RunConfig, keys: tuple[str, ...]) -> RunConfig:
    """``run`` with the settings ``keys`` (dotted, or ``section.`` for a whole section) at their
    defaults: what is left is what the other settings decide."""
    sections = {}
    for key in keys:
        section, _, name = key.partition(".")
        current = sections.get(section, getattr(run, section))
        if not name:
            sections[section] = type(current)()
            continue
        default = next(f for f in dataclasses.fields(current) if f.name == name)
        if default.default is not dataclasses.MISSING:
            value = default.default
        elif default.default_factory is not dataclasses.MISSING:
            value = default.default_factory()
        else:
            raise ValueError(f"{key}: has no default to reset it to")
        sections[section] = dataclasses.replace(current, **{name: value})
    return dataclasses.replace(run, **sections)


def require_replay_rows(run, need: int, window: str) -> None:
    """A replay of ``algo.buffer_size`` transitions split over the envs holds ``need`` rows per
    env: one rollout and ``window`` (what one sample reads), else a `ConfigError`."""
    rows = run.algo.buffer_size // run.env.num_envs
    require(
        rows >= need,
        "algo.buffer_size",
        f"{run.algo.buffer_size} transitions over env.num_envs={run.env.num_envs} envs leaves "
        f"{rows} rows per env; it must hold at least one rollout (train.num_steps="
        f"{run.train.num_steps}) and {window} ({need} rows)",
    )


ASYNC_NEEDS_CORRECTION = ("a2c", "reinforce", "pqn")
"""On-policy learners without an off-policy correction: asynchronous actors would feed them
lagged data uncorrected (impala and ppo correct it; dqn runs as Ape-X)."""


def _check_dist(run: RunConfig) -> None:
    """What a distributed run needs of the rest of its config (`DistConfig`)."""
    dist = run.dist
    if dist.mode == "single":
        return
    require(
        run.train.num_seeds == 1,
        "train.num_seeds",
        f"dist.mode {dist.mode} trains one seed per run (got {run.train.num_seeds}); vmapped "
        "seeds are a single-process feature",
    )
    require(
        run.env.num_envs % dist.actors == 0,
        "dist.actors",
        f"env.num_envs {run.env.num_envs} must be a multiple of dist.actors {dist.actors} "
        "(each actor steps the same share of the envs)",
    )
    require(
        not (dist.mode == "async" and run.algorithm in ASYNC_NEEDS_CORRECTION),
        "dist.mode",
        f"async actors feed lagged data, which {run.algorithm} does not correct; use "
        "algorithm impala (V-trace), ppo or dqn (Ape-X), or dist.mode sync",
    )


def check_values(section: Any, name: str) -> None:
    """What every config field must satisfy, whatever its section: numbers are finite (an
    ``inf`` learning rate passes ``> 0``; ``nan`` passes no comparison but fails none)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float):
            require(math.isfinite(value), f"{name}.{f.name}", f"must be finite, got {value}")


_SECTIONS = {"env": EnvConfig, "train": TrainConfig, "log": LogConfig, "dist": DistConfig}
_TOP_LEVEL = (
    "description",
    "reaches",
    "algorithm",
    "algo",
    "env",
    "train",
    "log",
    "dist",
    "preset",
)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(close)}?" if close else f" Valid keys: {', '.join(valid)}."


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check a YAML value against a field's type; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if origin is Literal:
        require(
            value in typing.get_args(hint),
            name,
            f"must be one of {typing.get_args(hint)}, got {value!r}",
        )
        return value
    if origin is tuple:
        require(isinstance(value, list | tuple), name, f"expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item, name) for v in value)
    if hint is float:
        require(
            isinstance(value, int | float) and not isinstance(value, bool),
            name,
            f"expected a number, got {value!r}",
        )
        return float(value)
    if hint is int:
        require(
            isinstance(value, int) and not isinstance(value, bool),
            name,
            f"expected an integer, got {value!r}",
        )
        return value
    if hint is bool:
        require(isinstance(value, bool), name, f"expected true or false, got {value!r}")
        return value
    if hint is str:
        require(isinstance(value, str), name, f"expected a string, got {value!r}")
        return value
    return value


def build_section(cls: type, data: dict[str, Any] | None, section: str) -> Any:
    """Build a frozen config dataclass from a dict, rejecting unknown keys by name."""
    require(
        data is None or isinstance(data, dict),
        section,
        f"expected a mapping of {section} settings, got {_short(data)}",
    )
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{section}.{key}: unknown key.{_suggest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], preset: str) -> RunConfig:
    """Build a validated ``RunConfig`` from a parsed preset."""
    from fleetrl.algos import ALGORITHMS, get_algorithm

    require(isinstance(data, dict), preset, "a preset must be a YAML mapping")
    for key in data:
        if key not in _TOP_LEVEL:
            raise ConfigError(
                f"{key}: unknown top-level key in {preset}.{_suggest(key, list(_TOP_LEVEL))}"
            )
    name = data.get("algorithm")
    require(
        isinstance(name, str) and name in ALGORITHMS,
        "algorithm",
        f"must be one of {sorted(ALGORITHMS)}, got {_short(name)}",
    )
    for key in ("preset", "description", "reaches"):
        value = data.get(key, "")
        require(isinstance(value, str), key, f"expected a string, got {_short(value)}")
    algo_cls = get_algorithm(name).Config
    return RunConfig(
        algorithm=name,
        algo=build_section(algo_cls, data.get("algo"), "algo"),
        env=build_section(EnvConfig, data.get("env"), "env"),
        train=build_section(TrainConfig, data.get("train"), "train"),
        log=build_section(LogConfig, data.get("log"), "log"),
        dist=build_section(DistConfig, data.get("dist"), "dist"),
        preset=data.get("preset", preset),
        description=data.get("description", ""),
        reaches=data.get("reaches", ""),
    )


def _short(value: Any) -> str:
    """``repr`` of a value from a file, cut short: a hostile one may be huge."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


MAX_CONFIG_BYTES = 1 << 20
"""Largest preset or run config read (1 MiB; ours are under 2 KiB): a bound before parsing."""


def load_yaml(text: str, source: str) -> Any:
    """Parse a preset, run config or ``env.kwargs`` (`fleetrl.safeio.loads_yaml`: safe tags
    only, no aliases, nesting bounded) of at most `MAX_CONFIG_BYTES`; ConfigError naming
    ``source`` otherwise."""
    from fleetrl.safeio import UnsafeInputError, loads_yaml

    size = len(text.encode(errors="replace"))
    require(size <= MAX_CONFIG_BYTES, source, f"{size:,} bytes; the limit is {MAX_CONFIG_BYTES:,}")
    try:
        return loads_yaml(text, source=source)
    except UnsafeInputError as error:
        raise ConfigError(str(error)) from None


def preset_names() -> list[str]:
    folder = importlib.resources.files("fleetrl.presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_preset(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Return the parsed YAML of a preset (a name or a path) and its name."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"preset: no such file {name_or_path}")
        from fleetrl.safeio import UnsafeInputError, read_bounded

        try:  # the size checked before reading: the file may be any size
            text = read_bounded(path, MAX_CONFIG_BYTES, "preset").decode(errors="replace")
        except UnsafeInputError as error:
            raise ConfigError(str(error)) from None
        name = path.stem
    else:
        names = preset_names()
        if name_or_path not in names:
            raise ConfigError(
                f"preset: unknown preset {name_or_path!r}.{_suggest(name_or_path, names)}"
            )
        text = (importlib.resources.files("fleetrl.presets") / f"{name_or_path}.yaml").read_text()
        name = name_or_path
    return load_yaml(text, f"preset {name_or_path}"), name


def load_preset(name_or_path: str) -> RunConfig:
    data, name = read_preset(name_or_path)
    return config_from_dict(data, name)


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    data = plain(dataclasses.asdict(config))
    order = ("preset", "description", "reaches", "algorithm", "env", "train", "algo", "log")
    # a single-process run's config reads (and keys its cached programs) as before `dist` was
    out = {key: data[key] for key in order}
    if config.dist != DistConfig():
        out["dist"] = data["dist"]
    return out


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
