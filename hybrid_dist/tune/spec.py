"""A search file (``ray_configs/*.yaml``): the training config every trial starts from, the fixed
and sampled overrides on it, the search algorithm, ASHA early stopping and each trial's workers.

Parsed as strictly as training configs: unknown keys, unknown training keys in ``overrides`` /
``space`` and malformed distributions are errors that name the file and the key."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hybrid_dist.config import Config, ConfigError, apply_overrides, from_dict, load_config
from hybrid_dist.config import validate as validate_config

#: distribution name -> number of arguments (None: a list of values)
DISTRIBUTIONS = {"grid": None, "choice": None, "uniform": 2, "loguniform": 2, "quniform": 3,
                 "qloguniform": 3, "randint": 2}


@dataclass
class SearchSection:
    algorithm: Literal["grid", "random", "optuna", "bayesopt"] = "random"
    num_samples: int = 1  # grid: repeats of the whole grid; others: number of trials
    seed: int = 0
    max_concurrent_trials: int = 1  # 0: as many as the cluster's resources allow


@dataclass
class SchedulerSection:
    name: Literal["asha", "fifo"] = "asha"
    # ASHA counts training steps (the reported ``step``): one rung every grace_period * rf^k steps
    grace_period: int = 0  # 0: eval.every_steps (the first held-out evaluation)
    reduction_factor: float = 2.0
    brackets: int = 1


@dataclass
class ResourcesSection:
    num_workers: int = 2  # Ray Train workers (DDP ranks) per trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    trial_driver_cpus: float = 0.25  # the Tune trial only starts and watches its Train run
    # PACK: workers on as few nodes as fit; STRICT_PACK: one node per trial (no shared filesystem needed)
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"


@dataclass
class FailureSection:
    trial_max_failures: int = 1  # Tune restarts a trial whose driver died; Train resumes its run
    worker_max_failures: int = 1  # Ray Train restarts the worker group from the last checkpoint
    inject_worker_failure_at_step: int = 0  # tests and drills: once per search, rank 0 fails after this step's checkpoint


@dataclass
class SearchSpec:
    name: str = "search"
    base_config: str = "configs/tiny.yaml"  # relative to the search file
    metric: str = "multi_map"
    mode: Literal["auto", "max", "min"] = "auto"  # auto: hybrid_dist.evaluation.metric_direction
    storage_path: str = "runs/tune"  # local directory (relative to the working directory) or s3:// gs://
    work_dir: str | None = None  # trainers' output dirs; default <experiment>/trials (shared FS when multi-node)
    keep_checkpoints: int = 2  # Ray checkpoints kept per trial
    overrides: dict = field(default_factory=dict)  # training key -> value, the same for every trial
    space: dict = field(default_factory=dict)  # training key -> {grid|choice|uniform|loguniform|...: args}
    search: SearchSection = field(default_factory=SearchSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    failure: FailureSection = field(default_factory=FailureSection)
    source: str = ""  # the search file, for messages and relative paths

    @property
    def metric_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        from hybrid_dist.evaluation import metric_direction

        return metric_direction(self.metric)

    def base_path(self) -> Path:
        return (Path(self.source).parent / self.base_config).resolve() if self.source else Path(self.base_config)

    def training_config(self, sampled: dict[str, Any] | None = None) -> Config:
        """The training config of a trial: base file, then fixed overrides, then sampled values."""
        items = {**self.overrides, **(sampled or {})}
        return load_config(self.base_path(), [override(k, v) for k, v in items.items()])


def override(key: str, value: Any) -> str:
    """``key=value`` for hybrid_dist.config (JSON is valid YAML, so types survive)."""
    return f"{key}={json.dumps(value)}"


def config_from_dict(tree: dict, overrides: list[str] | None = None) -> Config:
    """A Config from ``to_dict`` output (what travels to Ray workers), then ``key=value`` overrides."""
    cfg = apply_overrides(from_dict(tree, Config, "trial config"), overrides or [])
    validate_config(cfg, "trial config")
    return cfg


# ---------------------------------------------------------------------- loading


def load_search(path: str | Path, overrides: list[str] | None = None) -> SearchSpec:
    """The search file, then ``key=value`` overrides (``search.num_samples=8``,
    ``overrides.train.max_steps=20``, ``space.sampler.alpha={grid: [0, 1]}``)."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read search file: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. search.num_samples=8")
        head, _, rest = key.partition(".")
        value = yaml.safe_load(raw)
        if head in ("overrides", "space") and rest:
            tree.setdefault(head, {})[rest] = value  # keys there are dotted training keys themselves
        else:
            node = tree
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {item!r}: {part} is not a section")
            node[parts[-1]] = value
    for key in ("overrides", "space"):
        if tree.get(key) is None:
            tree[key] = {}
        if not isinstance(tree[key], dict):
            raise ConfigError(f"{path}: {key}: expected a mapping of training keys")
    fixed, space = tree.pop("overrides"), tree.pop("space")
    spec = from_dict(tree, SearchSpec, str(path))
    spec.overrides, spec.space, spec.source = fixed, space, str(path)
    validate(spec)
    return spec


def validate(spec: SearchSpec) -> None:
    where = spec.source or "search"
    if not spec.base_path().exists():
        raise ConfigError(f"{where}: base_config {spec.base_config!r}: no such file ({spec.base_path()})")
    if not spec.space:
        raise ConfigError(f"{where}: space: nothing to search over")
    for key, dist in spec.space.items():
        parse_distribution(key, dist, where)
        if key in spec.overrides:
            raise ConfigError(f"{where}: {key} is both in overrides and in space")
    # every key must be a training key, and every value it can take of the right type
    probe = {k: example_value(parse_distribution(k, d, where)) for k, d in spec.space.items()}
    try:
        cfg = spec.training_config(probe)
        for key, dist in spec.space.items():
            kind, args = parse_distribution(key, dist, where)
            for value in (args if kind in ("grid", "choice") else args[:2]):
                spec.training_config({**probe, key: value})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not cfg.eval.every_steps:
        raise ConfigError(f"{where}: eval.every_steps must be > 0 (in the base config or overrides): "
                          "ASHA needs held-out reports during training")
    if cfg.data.format != "squad_dir":
        raise ConfigError(f"{where}: the held-out metric needs data.format=squad_dir")
    if spec.search.algorithm == "grid":
        bad = [k for k, d in spec.space.items() if parse_distribution(k, d, where)[0] not in ("grid", "choice")]
        if bad:
            raise ConfigError(f"{where}: search.algorithm=grid needs grid or choice values; {bad} are ranges "
                              "(use algorithm random, optuna or bayesopt)")
    elif spec.search.algorithm in ("optuna", "bayesopt"):
        bad = [k for k, d in spec.space.items() if parse_distribution(k, d, where)[0] == "grid"]
        if bad:
            raise ConfigError(f"{where}: {spec.search.algorithm} cannot take grid values ({bad}): use choice")
    if spec.search.algorithm == "bayesopt":
        bad = [k for k, d in spec.space.items()
               if parse_distribution(k, d, where)[0] not in ("uniform", "loguniform")]
        if bad:
            raise ConfigError(f"{where}: bayesopt searches continuous ranges only (uniform, loguniform); {bad} are not")
    if spec.resources.num_workers < 1:
        raise ConfigError(f"{where}: resources.num_workers must be >= 1")


def parse_distribution(key: str, dist: Any, where: str) -> tuple[str, list]:
    if not isinstance(dist, dict) or len(dist) != 1:
        raise ConfigError(f"{where}: space.{key}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: args, got {dist!r}")
    (kind, args), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: space.{key}: unknown distribution {kind!r}; known: {list(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: space.{key}.{kind}: expected a non-empty list")
    arity = DISTRIBUTIONS[kind]
    if arity is not None:
        if len(args) != arity:
            raise ConfigError(f"{where}: space.{key}.{kind}: expected {arity} numbers, got {args!r}")
        try:
            args = [float(a) for a in args]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: space.{key}.{kind}: expected numbers, got {args!r}") from None
        if args[0] >= args[1]:
            raise ConfigError(f"{where}: space.{key}.{kind}: lower bound must be below the upper bound")
        if kind in ("loguniform", "qloguniform") and args[0] <= 0:
            raise ConfigError(f"{where}: space.{key}.{kind}: bounds must be positive")
        if kind == "randint":
            args = [int(a) for a in args]
    return kind, args


def example_value(parsed: tuple[str, list]) -> Any:
    kind, args = parsed
    if kind in ("grid", "choice"):
        return args[0]
    if kind in ("loguniform", "qloguniform"):
        return math.sqrt(args[0] * args[1])
    return args[0]


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """Tune's search space: one flat entry per training key (the key stays readable in results)."""
    from ray import tune

    space = {}
    for key, dist in spec.space.items():
        kind, args = parse_distribution(key, dist, spec.source)
        if kind == "grid" or (kind == "choice" and spec.search.algorithm == "grid"):
            space[key] = tune.grid_search(args)
        elif kind == "choice":
            space[key] = tune.choice(args)
        elif kind == "uniform":
            space[key] = tune.uniform(*args)
        elif kind == "loguniform":
            space[key] = tune.loguniform(*args)
        elif kind == "quniform":
            space[key] = tune.quniform(*args)
        elif kind == "qloguniform":
            space[key] = tune.qloguniform(*args)
        else:
            space[key] = tune.randint(*args)
    return space


def search_summary(spec: SearchSpec) -> dict:
    """The resolved search, written next to the results."""
    tree = dataclasses.asdict(spec)
    tree.update(base_config=str(spec.base_path()), mode=spec.metric_mode)
    return tree
