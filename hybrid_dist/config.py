"""One typed config tree, loaded from YAML with ``key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hybrid_dist import atomic


class ConfigError(ValueError):
    pass


@dataclass
class ScratchEncoderConfig:
    """A small BERT built from this config (random init) with a tokenizer trained on the training
    text: the no-download fallback when ``model.name_or_path`` is empty."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 8000
    dropout: float = 0.1


@dataclass
class ModelConfig:
    name_or_path: str | None = None  # hub id, local directory or offline:multilingual-e5-small; empty: build `scratch`
    scratch: ScratchEncoderConfig = field(default_factory=ScratchEncoderConfig)
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    max_length: int = 128
    # transformers attention kernel: sdpa, eager, flash_attention_2 (unpadded varlen attention; falls
    # back to sdpa with a message where flash-attn or CUDA is missing); None: transformers' default
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute


@dataclass
class DataConfig:
    format: Literal["squad_dir", "jsonl", "hf"] = "squad_dir"
    path: str = "../shared/data/xquad-r"
    languages: list[str] | None = None  # None: every language found
    # language hold-out: train on these only (None: every language of data.languages); evaluation
    # still covers data.languages, and its report splits each metric into seen/unseen cells
    train_languages: list[str] | None = None
    passage_text: Literal["sentence", "sentence_and_paragraph"] = "sentence"
    max_hard_negatives: int = 0  # squad_dir: other sentences of the paragraph/article kept per record
    split: Literal["parity", "hash", "none"] = "parity"
    heldout_fraction: float = 0.5  # for split=hash
    hf_split: str = "train"
    hf_config_name: str | None = None
    hf_columns: dict[str, str] | None = None  # canonical field -> dataset column
    num_workers: int = 2  # DataLoader workers that tokenize ahead of the training step (0: in the step)
    on_bad_record: Literal["error", "skip"] = "error"  # skip: drop malformed records and log how many
    max_text_chars: int = 1_000_000  # a longer query/passage/context is a bad record (a data bug); 0: no limit


@dataclass
class SamplerConfig:
    # the paper's batch types: mono = X-X-mono (one language per global batch), cross = X-Y (each
    # pair its own query language X != passage language Y), hybrid = X-X-mono with probability
    # alpha else X-Y, per step; LAReQA's xx (each pair X = Y, languages mixed) and multilingual
    # (query and passage languages drawn independently)
    mode: Literal["mono", "cross", "hybrid", "xx", "multilingual"] = "hybrid"
    alpha: float = 0.5
    batch_size: int = 100  # global: pairs per optimizer step over all ranks
    smoothing: float = 1.0  # languages drawn with probability proportional to size**smoothing
    translations_per_group: int = 1  # k > 1: k passage languages per question (multilingual loss only)
    num_negatives: int = 0  # hard negatives per pair (needs data.max_hard_negatives)


@dataclass
class LossConfig:
    name: Literal["infonce", "multilingual"] = "infonce"
    temperature: float = 0.05
    aggregation: Literal["mean", "sum"] = "mean"  # multilingual loss only


@dataclass
class OptimConfig:
    lr: float = 3e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    scheduler: Literal["linear", "constant"] = "linear"
    max_grad_norm: float = 1.0  # 0 disables clipping
    # erosion guard: every optimizer step also pulls each weight toward its initial (pretrained)
    # value, decoupled like AdamW's decay: w -= lr * retention_weight * (w - w_init); 0: off
    # (see hybrid_dist/training/retention.py and docs/training.md "Retention")
    retention_weight: float = 0.0


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    max_steps: int = 200
    seed: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 where the GPU has it
    log_every: int = 10
    save_every: int = 100  # 0: only at the end
    keep_last: int = 2
    resume: str | None = None  # "auto" (newest complete checkpoint in output_dir) or a checkpoint path
    progress_bar: bool = True
    # > 0: gradient cache, encoding each micro-batch in chunks of this many texts (global batches
    # beyond activation memory; same gradients as without it)
    grad_cache_chunk_size: int = 0
    # on these signals: checkpoint at the next step, exit 75 (SLURM: --signal=USR1@120, preemption)
    preemption_signals: list[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"])
    max_bad_steps: int = 5  # non-finite loss/gradient steps skipped in a row before stopping; 0: stop at the first
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical resume on the same hardware
    min_free_bytes: int = 0  # free space to leave on output_dir's disk beyond the checkpoints' estimate
    log_batches: bool = True  # append each step's global batch digest to <output_dir>/batches.jsonl
    # > 0: encode each rank's texts in length-sorted groups of this many, each trimmed to its own
    # longest text (no compute on padding; same embeddings); the gradient cache's chunks are always sorted
    length_group_size: int = 0
    compile: bool = False  # torch.compile the encoder (dynamic shapes)
    # false: no final checkpoint and no <output_dir>/model (results.json only; e.g. a study's runs)
    save_final: bool = True
    # keys that a resume may change although they change what is trained (e.g. [optim.lr]); see
    # RESUME_FREE_KEYS / RESUME_FIXED_KEYS and docs/reliability.md
    allow_config_change: list[str] = field(default_factory=list)
    # seconds a rank waits in a collective for its peers before it fails (a lost node ends the
    # job instead of hanging it until the time limit); long enough for rank 0's evaluation and
    # checkpoint writes while the others wait at a barrier
    collective_timeout_s: int = 600


@dataclass
class BenchmarkConfig:
    """One more benchmark the recipe evaluates next to the held-out articles of ``data.path``;
    its numbers are logged and saved as ``<name>/<metric>`` (e.g. ``mlqa-r/multi_map``,
    ``scifact/ndcg@10``)."""

    name: str = ""  # the key prefix and table label
    kind: Literal["lareqa", "beir", "msmarco"] = "lareqa"  # lareqa: XQuAD-R/MLQA-R layout; beir, msmarco: ad-hoc IR
    path: str = ""
    part: Literal["heldout", "train", "all"] = "all"  # lareqa: part of the data.split article split
    languages: list[str] | None = None  # lareqa: None = every file
    split: str = "test"  # beir: the qrels file (qrels/<split>.tsv)
    max_length: int = 0  # tokens per text for this benchmark; 0: model.max_length
    batch_size: int = 0  # 0: eval.batch_size


@dataclass
class EvalConfig:
    before_training: bool = True
    after_training: bool = True
    every_steps: int = 0  # 0: never during training
    metric: str = "multi_map"  # the held-out metric that picks the best checkpoint
    part: Literal["heldout", "train", "all"] = "heldout"
    candidate_context: bool = False
    batch_size: int = 64
    # more benchmarks at every evaluation (zero-shot data the model never trains on): MLQA-R,
    # BEIR SciFact, ...; each with its own max length, its cost printed and saved (<name>/eval_s)
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------- loading

# keys that existed once: loading them says what replaced them instead of "unknown key"
REMOVED_KEYS = {
    "sampler.language_draw": "removed: sampler.mode says how languages are drawn (cross = X-Y with languages "
                             "drawn per pair, xx = X-X per pair, mono = one language per batch)",
}


def validate(cfg: Config, source: str = "config") -> None:
    """Every rule a config must meet on its own (types are checked while loading): ranges, names,
    settings that are wrong together. One ``ConfigError``, one line per problem, each naming the
    key, the value and what is allowed. Rules that need the corpus or the world size run in the
    recipe's setup, still before anything is written."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: " + f"\n{source}: ".join(problems))


def config_problems(cfg: Config) -> list[str]:
    from hybrid_dist.data.sampler import sampler_problems
    from hybrid_dist.evaluation.holdout import holdout_metric_names
    from hybrid_dist.evaluation.lareqa import summary_metric_names

    problems: list[str] = []

    def need(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            value = _get_path(cfg, key)
            problems.append(f"{key}={value!r}: must be {allowed}")

    m, d, s, lo, o, t, e = cfg.model, cfg.data, cfg.sampler, cfg.loss, cfg.optim, cfg.train, cfg.eval
    sc = m.scratch
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
        need(f"model.scratch.{key}", getattr(sc, key) >= 1, "at least 1")
    need("model.scratch.vocab_size", sc.vocab_size >= 260, "at least 260 (the byte alphabet and special tokens)")
    need("model.scratch.dropout", 0.0 <= sc.dropout < 1.0, "in [0, 1)")
    if sc.hidden_size >= 1 and sc.num_heads >= 1 and sc.hidden_size % sc.num_heads:
        problems.append(f"model.scratch.hidden_size={sc.hidden_size}: must be a multiple of "
                        f"model.scratch.num_heads={sc.num_heads}")
    need("model.max_length", 8 <= m.max_length <= 8192, "in [8, 8192] tokens")
    attn = ("sdpa", "eager", "flash_attention_2", "flex_attention")
    need("model.attn_implementation", m.attn_implementation in (None, *attn), f"empty or one of {list(attn)}")
    need("data.max_hard_negatives", d.max_hard_negatives >= 0, "at least 0")
    need("data.heldout_fraction", 0.0 < d.heldout_fraction < 1.0, "in (0, 1)")
    need("data.num_workers", d.num_workers >= 0, "at least 0")
    need("data.max_text_chars", d.max_text_chars >= 0, "at least 0 (0: no limit)")
    need("data.path", bool(str(d.path).strip()), "a file, directory or dataset name")
    if d.languages is not None:
        need("data.languages", len(d.languages) >= 1 and len(set(d.languages)) == len(d.languages),
             "a list of distinct language codes, or empty for every language")
    problems += sampler_problems(s.mode, s.alpha, s.batch_size, s.translations_per_group, s.num_negatives)
    need("sampler.smoothing", 0.0 <= s.smoothing <= 1.0, "in [0, 1] (0: uniform over languages, 1: by size)")
    if s.num_negatives > 0 and d.max_hard_negatives < s.num_negatives:
        problems.append(f"sampler.num_negatives={s.num_negatives}: needs data.max_hard_negatives >= "
                        f"{s.num_negatives} (now {d.max_hard_negatives})")
    if lo.name == "infonce" and s.translations_per_group > 1:
        problems.append(f"loss.name=infonce with sampler.translations_per_group={s.translations_per_group}: InfoNCE "
                        "would count a question's translations as its negatives; use loss.name=multilingual")
    need("loss.temperature", lo.temperature > 0.0, "> 0")
    need("optim.lr", o.lr > 0.0, "> 0")
    need("optim.weight_decay", o.weight_decay >= 0.0, "at least 0")
    need("optim.betas", len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas), "two numbers in [0, 1)")
    need("optim.eps", o.eps > 0, "> 0")
    need("optim.warmup_steps", o.warmup_steps >= 0, "at least 0")
    need("optim.max_grad_norm", o.max_grad_norm >= 0, "at least 0 (0: no clipping)")
    need("train.output_dir", bool(t.output_dir.strip()), "a directory")
    need("train.max_steps", t.max_steps >= 0, "at least 0 (0: evaluate the model as loaded)")
    need("train.gradient_accumulation_steps", t.gradient_accumulation_steps >= 1, "at least 1")
    if t.gradient_accumulation_steps >= 1 and s.batch_size >= 1 and s.batch_size % t.gradient_accumulation_steps:
        problems.append(f"sampler.batch_size={s.batch_size}: must be divisible by "
                        f"train.gradient_accumulation_steps={t.gradient_accumulation_steps}")
    need("train.log_every", t.log_every >= 1, "at least 1")
    need("train.save_every", t.save_every >= 0, "at least 0 (0: only at the end)")
    need("train.keep_last", t.keep_last >= 0, "at least 0 (0: keep every checkpoint)")
    need("train.grad_cache_chunk_size", t.grad_cache_chunk_size >= 0, "at least 0 (0: no gradient cache)")
    need("train.max_bad_steps", t.max_bad_steps >= 0, "at least 0")
    need("train.min_free_bytes", t.min_free_bytes >= 0, "at least 0")
    need("train.length_group_size", t.length_group_size >= 0, "at least 0 (0: off)")
    need("train.collective_timeout_s", t.collective_timeout_s >= 1, "at least 1 second")
    import signal

    for name in t.preemption_signals:
        if not isinstance(getattr(signal, name, None), signal.Signals) or name in ("SIGKILL", "SIGSTOP"):
            problems.append(f"train.preemption_signals: {name!r} is not a signal that can be caught "
                            "(e.g. SIGUSR1, SIGTERM)")
    flat = flatten(Config())
    for key in t.allow_config_change:
        if key not in flat:
            problems.append(f"train.allow_config_change: {key!r} is not a config key")
        elif _is_fixed(key):
            problems.append(f"train.allow_config_change: {key} can never change on resume ({_fixed_reason(key)})")
    need("eval.every_steps", e.every_steps >= 0, "at least 0 (0: never during training)")
    need("eval.batch_size", e.batch_size >= 1, "at least 1")
    metrics = summary_metric_names()
    holdout = holdout_metric_names() if d.train_languages is not None else []
    need("eval.metric", e.metric in metrics or e.metric in holdout,
         f"one of {', '.join(metrics)}" + (f", or a seen/unseen cell ({holdout[0]}, ...)" if holdout else ""))
    problems += _holdout_problems(cfg)
    problems += _benchmark_problems(e.benchmarks)
    return problems


def _benchmark_problems(benchmarks: list[BenchmarkConfig]) -> list[str]:
    problems, seen = [], set()
    for i, b in enumerate(benchmarks):
        key = f"eval.benchmarks[{i}]"
        if not b.name or "/" in b.name or b.name != b.name.strip():
            problems.append(f"{key}.name={b.name!r}: must be a non-empty label without '/' (it prefixes the metrics)")
        elif b.name in seen:
            problems.append(f"{key}.name={b.name!r}: a second benchmark with this name")
        seen.add(b.name)
        if not b.path:
            problems.append(f"{key}.path='': must name the benchmark's directory")
        if b.max_length < 0:
            problems.append(f"{key}.max_length={b.max_length}: must be at least 0 (0: model.max_length)")
        if b.batch_size < 0:
            problems.append(f"{key}.batch_size={b.batch_size}: must be at least 0 (0: eval.batch_size)")
        if b.kind != "lareqa" and (b.part != "all" or b.languages is not None):
            problems.append(f"{key}: part and languages apply to kind=lareqa only, not kind={b.kind}")
    return problems


def _get_path(cfg: Config, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _holdout_problems(cfg: Config) -> list[str]:
    """data.train_languages (language hold-out) and optim.retention_weight (erosion guard)."""
    problems = []
    train, every = cfg.data.train_languages, cfg.data.languages
    if train is not None:
        if not train:
            problems.append("data.train_languages=[] trains on nothing; null trains on every language")
        if len(set(train)) != len(train):
            problems.append(f"data.train_languages={train} names a language twice")
        if every is not None and set(train) - set(every):
            problems.append(f"data.train_languages {sorted(set(train) - set(every))} not in data.languages={every}: "
                            "evaluation covers data.languages, so the trained languages must be among them")
        mixed = cfg.sampler.mode in ("cross", "multilingual") or (cfg.sampler.mode == "hybrid" and cfg.sampler.alpha < 1)
        if mixed and len(set(train)) < 2:
            problems.append(f"data.train_languages={train} with sampler.mode={cfg.sampler.mode}: X-Y batches need "
                            "at least 2 training languages")
    if not cfg.optim.retention_weight >= 0:
        problems.append(f"optim.retention_weight={cfg.optim.retention_weight} must be >= 0 (0: off)")
    return problems


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then ``key=value`` overrides (``sampler.alpha=0.25``)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
        try:
            node = yaml.compose(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
        if node is not None:
            _apply_node(cfg, node, str(path), prefix="")
    apply_overrides(cfg, overrides or [])
    validate(cfg, str(path) if path is not None else "config")
    return cfg


def apply_overrides(obj, overrides: list[str]):
    """``key=value`` items (values read as YAML: ``sampler.alpha=0.25``, ``data.languages=[en,de]``)
    applied in place to ``obj`` (a Config, or any config dataclass); returns it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. sampler.alpha=0.25")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: invalid YAML value: {getattr(e, 'problem', e)}") from None
        _set_path(obj, key.strip(), value, f"override {item!r}")
    return obj


def from_dict(tree: dict, cls: type = None, source: str = "config"):
    """The dataclass ``cls`` (default: Config) from a plain tree (``to_dict`` output, parsed JSON or
    YAML), with the same type checks and messages as a YAML file. Not validated: call ``validate``."""
    return _coerce(tree, cls or Config, source)


def _apply_node(obj: Any, node: yaml.MappingNode, source: str, prefix: str) -> None:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: {prefix or 'top level'}: expected a mapping")
    hints = typing.get_type_hints(type(obj))
    for key_node, value_node in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        dotted = f"{prefix}{key}"
        where = f"{source}:{line}: {dotted}"
        if key not in hints:
            if dotted in REMOVED_KEYS:
                raise ConfigError(f"{where}: {REMOVED_KEYS[dotted]}")
            raise ConfigError(f"{where}: unknown key; {prefix or 'top-level '}keys are {sorted(hints)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value_node, yaml.MappingNode):
            _apply_node(current, value_node, source, prefix=f"{dotted}.")
        else:
            value = yaml.safe_load(yaml.serialize(value_node))
            setattr(obj, key, _coerce(value, hints[key], where))


def _set_path(cfg: Config, dotted: str, value: Any, where: str) -> None:
    obj, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(type(obj))
        if part not in hints:
            if dotted in REMOVED_KEYS:
                raise ConfigError(f"{where}: {dotted} {REMOVED_KEYS[dotted]}")
            known = ".".join(parts[:i]) or "top level"
            raise ConfigError(f"{where}: unknown key {dotted!r}; {known} keys are {sorted(hints)}")
        if i == len(parts) - 1:
            setattr(obj, part, _coerce(value, hints[part], f"{where}: {dotted}"))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not a section")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        obj = annotation()
        for key, item in value.items():
            _set_path(obj, key, item, where)  # type: ignore[arg-type]
        return obj
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], where): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {annotation}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(cfg: Config | dict) -> dict[str, Any]:
    """Dotted keys -> values (``{"sampler.alpha": 0.5, "data.hf_columns": {...}}``): sections are
    walked, dict-valued fields stay whole. Accepts a Config or a saved ``to_dict`` tree."""
    tree = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    flat: dict[str, Any] = {}

    def walk(node: dict, cls: type | None, prefix: str) -> None:
        hints = typing.get_type_hints(cls) if cls is not None else {}
        for key, value in node.items():
            sub = hints.get(key)
            section = dataclasses.is_dataclass(sub) or (sub is None and cls is not None and isinstance(value, dict))
            if isinstance(value, dict) and section:
                walk(value, sub if dataclasses.is_dataclass(sub) else None, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(tree, Config, "")
    return flat


#: where a run writes and how it reports: the same training with other values here is the same run
OUTPUT_KEYS = frozenset({"train.output_dir", "train.resume", "train.progress_bar", "train.log_every",
                         "train.save_every", "train.keep_last", "train.min_free_bytes", "train.save_final",
                         "train.collective_timeout_s"})
#: what a resume may change (with a message): how long, how often to save, log and evaluate, and
#: how a step is computed where the gradients stay the same
RESUME_FREE_KEYS = OUTPUT_KEYS | {
    "train.max_steps", "train.log_batches", "train.preemption_signals", "train.max_bad_steps",
    "train.allow_config_change", "train.grad_cache_chunk_size", "train.length_group_size", "train.compile",
    "train.deterministic", "model.gradient_checkpointing", "model.attn_implementation", "data.num_workers",
    "eval.before_training", "eval.after_training", "eval.every_steps", "eval.metric", "eval.part",
    "eval.candidate_context", "eval.batch_size", "eval.benchmarks"}
#: what a resume can never change: the weights' shapes (model) or the batch sequence (sampler, seed)
RESUME_FIXED_KEYS = {
    "model.name_or_path": "the checkpoint holds weights of the model it was trained from",
    "model.scratch.": "the checkpoint holds weights of the scratch encoder built from these sizes",
    "sampler.": "the checkpoint's batch sequence continues from the sampler state it was saved with",
    "train.seed": "the checkpoint's batch sequence and random states continue from this seed",
}


def _is_fixed(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_FIXED_KEYS)


def _fixed_reason(key: str) -> str:
    return next(why for k, why in RESUME_FIXED_KEYS.items() if key == k or (k.endswith(".") and key.startswith(k)))


def resume_changes(saved: Config | dict, cfg: Config) -> tuple[list[tuple[str, Any, Any]], str | None]:
    """Compare a checkpoint's config with this run's: ``(changes that may go ahead, the refusal)``.
    The refusal is one line naming every key that changes what is trained and the ways forward."""
    # a key the checkpoint's config lacks (added to the code since) had its default then
    changed = differences({**flatten(Config()), **flatten(saved)}, flatten(cfg))
    free = [c for c in changed if c[0] in RESUME_FREE_KEYS or c[0] in cfg.train.allow_config_change]
    blocked = [c for c in changed if c not in free]
    if not blocked:
        return free, None
    fixed = [k for k, _, _ in blocked if _is_fixed(k)]
    shown = "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in blocked)
    ways = "resume with the checkpoint's values, or start a new run (another train.output_dir)"
    allowable = [k for k, _, _ in blocked if k not in fixed]
    if allowable:
        ways += f", or accept the change with train.allow_config_change=[{','.join(allowable)}]"
    if fixed:
        ways += f" ({', '.join(fixed)} can never change on resume: {_fixed_reason(fixed[0])})"
    return free, f"the config differs from the checkpoint's in what is trained: {shown}. To go on: {ways}"


def differences(old: Config | dict, new: Config | dict, ignore: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every dotted key that differs, except ``ignore``."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


def save_config(cfg: Config, path: str | Path) -> None:
    atomic.write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
