"""The study's arms, size presets and run plan (issue #9).

One source of truth for the arm configs: ``experiments/configs/hybrid.yaml`` (the base arm,
written by hand) holds the shared budget, and :data:`ARMS` lists what each other arm changes in it
(``pinned``, plus ``budget`` for the candidate that spends more on purpose). The other YAML files in
``experiments/configs/`` are generated from those two (``python -m experiments.arms``; a test
checks that they are in sync), so each stays a self-contained file that
``hybrid_dist.config.load_config`` reads and that the runs' recorded commands name. The runner
re-applies ``pinned`` after any size preset or command-line override, so an override such as
``train.max_steps=3`` never turns the zero-shot arm into a trained one, nor ``sampler.mode=...``
one arm into another.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hybrid_dist import atomic
from hybrid_dist.config import flatten, load_config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_ARM = "hybrid"  # the arm every other one is compared with, field by field


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    pinned: dict  # dotted config key -> value: the fields that make this arm what it is
    trains: bool = True  # False: evaluation of the pretrained model only (seed-independent, run once)
    # fields outside the shared budget on purpose (recommended only), written into the arm's file but
    # not pinned: a size preset still scales them
    budget: dict = field(default_factory=dict)
    note: str = ""  # more for the generated file's header comment

    @property
    def config(self) -> Path:
        return CONFIG_DIR / f"{self.name}.yaml"

    @property
    def budget_differs(self) -> tuple[str, ...]:
        return tuple(self.budget)


_HYBRID = {"sampler.mode": "hybrid", "sampler.alpha": 0.5}
_MLLOSS = {"loss.name": "multilingual"}

ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("zero-shot", "pretrained multilingual-e5-small, no training",
        {"train.max_steps": 0, "eval.before_training": True, "eval.after_training": False}, trains=False,
        note="The pretrained model evaluated on the held-out articles; also every arm's before-training "
             "evaluation."),
    Arm("xx-mono", "X-X: monolingual batches only", {"sampler.mode": "mono"}),
    Arm("xy-cross", "X-Y: cross-lingual batches only", {"sampler.mode": "cross"}),
    Arm("hybrid", "hybrid batches, alpha 0.5 (monolingual with probability alpha)", dict(_HYBRID)),
    Arm("multilingual", "multilingual batches (query and passage languages drawn per pair)",
        {"sampler.mode": "multilingual"}),
    Arm("hybrid-mlloss", "hybrid batches (alpha 0.5) + multilingual contrastive loss, 2 translations per question",
        {**_HYBRID, **_MLLOSS, "sampler.translations_per_group": 2},
        note="The loss needs several translations of a question in one batch, otherwise it equals InfoNCE: "
             "translations_per_group 2 (64 questions x 2 passage languages in each X-Y step; X-X-mono steps "
             "hold one pair per question)."),
    Arm("recommended", "candidate: hybrid + multilingual loss, batch 256 = 64 questions x 4 translations",
        {**_HYBRID, **_MLLOSS, "sampler.translations_per_group": 4}, budget={"sampler.batch_size": 256},
        note="A CANDIDATE, not a result: twice the study's pairs per step (same 200 steps, lr and schedule). "
             "Hybrid batches keep mono and cross retrieval; the multilingual loss scores every translation of "
             "the answer in the pool as a positive, which should lower language bias and raise "
             "multilingual-pool mAP. To be confirmed (or replaced) by the GPU study: `python -m experiments.run "
             "--arms all,recommended ...` (experiments/README.md); if it does not beat the best study arm "
             "there, recommend that arm instead."),
]}
STUDY_ARMS = ["zero-shot", "xx-mono", "xy-cross", "hybrid", "multilingual", "hybrid-mlloss"]
#: the order runs are made in, so that a study cut short leaves the most useful table: the first
#: seed of these arms, then the further seeds, then the alpha sweep
PRIORITY = ["zero-shot", "xx-mono", "xy-cross", "hybrid", "hybrid-mlloss", "recommended", "multilingual"]
SWEEP_ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


@dataclass(frozen=True)
class SizePreset:
    name: str
    description: str
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    batch_factor: dict = field(default_factory=dict)  # arm -> multiple of the preset's batch size


SIZES: dict[str, SizePreset] = {
    "gpu": SizePreset(
        "gpu", "the issue's reference settings, the configs as written (200 steps x 128 pairs, all 11 languages, "
        "max length 128)", (), (0, 1, 2)),
    "cpu": SizePreset(
        "cpu", "shrunk to fit a 2-core CPU: 5 languages (en, de, es, ar, zh), max length 64, 30 steps x 16 pairs, "
        "3 warm-up steps, checkpoint only at the end; NOT the study's settings",
        ("data.languages=[en,de,es,ar,zh]", "model.max_length=64", "sampler.batch_size=16", "train.max_steps=30",
         "optim.warmup_steps=3", "train.save_every=0", "eval.batch_size=64"),
        (0, 1), batch_factor={"recommended": 2}),
}


def size_overrides(size: str, arm: str) -> list[str]:
    preset = SIZES[size]
    out = list(preset.overrides)
    factor = preset.batch_factor.get(arm)
    if factor:
        base = next(int(o.split("=", 1)[1]) for o in out if o.startswith("sampler.batch_size="))
        out.append(f"sampler.batch_size={base * factor}")
    return out


def pin_overrides(arm: str) -> list[str]:
    return [f"{k}={_yaml_value(v)}" for k, v in ARMS[arm].pinned.items()]


def _yaml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def alpha_label(alpha: float) -> str:
    return f"alpha-{alpha:g}"


@dataclass(frozen=True)
class RunSpec:
    name: str  # directory under <out>/runs: the arm, or alpha-<a> for a sweep point
    arm: str
    seed: int
    alpha: float | None  # set for the alpha sweep's own runs
    overrides: tuple[str, ...]  # everything after --config, output directory and seed included

    @property
    def config(self) -> Path:
        return ARMS[self.arm].config

    def dir(self, out: Path) -> Path:
        return run_dir(out, self.name, self.seed)


def run_dir(out: Path, name: str, seed: int) -> Path:
    return Path(out) / "runs" / name / f"seed{seed}"


def plan(out: Path, arms: list[str], seeds: list[int], alphas: list[float], size: str = "gpu",
         user_overrides: list[str] | None = None) -> tuple[list[RunSpec], list[tuple[float, str]]]:
    """Every run of the study, in the order to run them, and the sweep's points as ``(alpha, run
    name)``. Order: every arm's first seed (in :data:`PRIORITY` order), then the arms' further
    seeds, then the sweep, seed by seed; so a study cut at any point has the widest table it
    could. The sweep reuses the hybrid arm's runs where its alpha equals the arm's."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; arms are {list(ARMS)}")
    if not seeds:
        raise ValueError("no seeds")
    specs: list[RunSpec] = []

    def add(name: str, arm: str, seed: int, alpha: float | None) -> None:
        pins = pin_overrides(arm)
        if alpha is not None:  # a sweep point: the arm's alpha gives way to the point's
            pins = [p for p in pins if not p.startswith("sampler.alpha=")] + [f"sampler.alpha={alpha:g}"]
        overrides = (size_overrides(size, arm) + list(user_overrides or []) + pins + [
            f"train.seed={seed}", f"train.output_dir={run_dir(out, name, seed)}", "train.resume=auto",
            "train.progress_bar=false"])
        specs.append(RunSpec(name, arm, seed, alpha, tuple(overrides)))

    for arm in arms:
        for seed in (seeds if ARMS[arm].trains else seeds[:1]):
            add(arm, arm, seed, None)
    points: list[tuple[float, str]] = []
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha} is outside [0, 1]")
        if BASE_ARM in arms and alpha == ARMS[BASE_ARM].pinned["sampler.alpha"]:
            points.append((alpha, BASE_ARM))
            continue
        name = alpha_label(alpha)
        points.append((alpha, name))
        for seed in seeds:
            add(name, BASE_ARM, seed, alpha)
    rank = {name: i for i, name in enumerate(PRIORITY)}

    def order(spec: RunSpec) -> tuple:
        sweep_point = spec.alpha is not None
        return (sweep_point, seeds.index(spec.seed), spec.alpha if sweep_point else rank.get(spec.arm, len(rank)))

    return sorted(specs, key=order), points


# ----------------------------------------------------------------------------- generated arm configs


def arm_changes(name: str) -> dict[str, tuple[object, str]]:
    """What the arm's file changes in the base arm's: dotted key -> (value, line comment)."""
    arm = ARMS[name]
    changes: dict[str, tuple[object, str]] = {"train.output_dir": (f"runs/experiments/{name}", "")}
    changes.update({k: (v, "ARM") for k, v in arm.pinned.items()})
    changes.update({k: (v, "BUDGET: outside the shared budget on purpose") for k, v in arm.budget.items()})
    return changes


def arm_config_text(name: str) -> str:
    """The YAML file of a non-base arm: ``hybrid.yaml``'s settings (and their comments) with the
    arm's changes (those that differ, marked ARM / BUDGET), under a header naming the sources."""
    if name == BASE_ARM:
        raise ValueError(f"{BASE_ARM}.yaml is the base, written by hand")
    arm = ARMS[name]
    lines = (CONFIG_DIR / f"{BASE_ARM}.yaml").read_text(encoding="utf-8").splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")):]
    base_values = flatten(load_config(CONFIG_DIR / f"{BASE_ARM}.yaml"))
    todo = {k: v for k, v in arm_changes(name).items() if k == "train.output_dir" or base_values.get(k) != v[0]}
    section = ""
    for i, line in enumerate(body):
        if line and not line[0].isspace() and not line.startswith("#"):
            section = line.split(":", 1)[0]
            continue
        key = line.strip().split(":", 1)[0]
        if f"{section}.{key}" in todo and line.startswith("  ") and not line.startswith("   "):
            value, comment = todo.pop(f"{section}.{key}")
            body[i] = f"  {key}: {yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]}"
            body[i] += f"   # {comment}" if comment else ""
    if todo:
        raise ValueError(f"{BASE_ARM}.yaml does not set {sorted(todo)}: add them there (with the base's value) "
                         f"so that arm {name!r} can change them")
    header = f'Issue #9 study, arm "{name}": {arm.description}. {arm.note}'
    wrapped = textwrap.wrap(" ".join(header.split()), 98, break_on_hyphens=False)
    wrapped = [f"GENERATED by `python -m experiments.arms` from {BASE_ARM}.yaml (the shared budget) and this",
               "arm's fields in experiments/arms.py (marked ARM / BUDGET): edit those, not this file.",
               *wrapped, "Run through experiments/run.py, which sets train.output_dir and train.seed per run."]
    return "".join(f"# {line}\n" for line in wrapped) + "\n".join(body) + "\n"


def stale_configs() -> list[str]:
    """The generated arm files that differ from what :func:`arm_config_text` gives now."""
    return [name for name in ARMS if name != BASE_ARM and (
        not ARMS[name].config.exists() or ARMS[name].config.read_text(encoding="utf-8") != arm_config_text(name))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="experiments.arms",
                                description="write the arm configs (experiments/configs/*.yaml other than "
                                            f"{BASE_ARM}.yaml) from {BASE_ARM}.yaml and experiments/arms.py")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = p.parse_args(argv)
    stale = stale_configs()
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)} (run python -m experiments.arms)", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        atomic.write_text(ARMS[name].config, arm_config_text(name))
        print(f"wrote {ARMS[name].config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
