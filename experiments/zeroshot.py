"""Issue #20: what fine-tuning does to the languages it was not trained on, with and without the
erosion guard (optim.retention_weight).

Trains on 6 languages (en de es ru zh ar), evaluates on all 11 held-out XQuAD-R languages, and
reports every metric per seen/unseen cell (hybrid_dist/evaluation/holdout.py) for three arms:
the zero-shot base model (once), hybrid, and hybrid + retention, over several seeds; every run in
this one process (experiments/inprocess.py). Writes ``table.md``, ``summary.json`` and ``RUN.md``
into ``--out``; a run whose ``results.json`` exists is reused, so the same command continues.

  python -m experiments.zeroshot --out experiments/results/zeroshot-cpu-DATE --size cpu --seeds 0 1 2
  python -m experiments.zeroshot --out DIR --size gpu           # the reference size (one GPU)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from experiments.arms import CONFIG_DIR
from experiments.inprocess import StudySession, train_in_process
from experiments.run import _now, device_info, git_info, run_record
from experiments.summarize import stats
from hybrid_dist import atomic
from hybrid_dist.config import load_config
from hybrid_dist.evaluation.holdout import CELL_METRICS, CELLS

SEEN = ["en", "de", "es", "ru", "zh", "ar"]
SUMMARY_METRICS = ("mono_map", "cross_map", "multi_map", "bias_max_rank_distance")
#: retention weights that pull about as hard over each size's run (lr x steps differ ~7x)
SIZES = {
    "cpu": ("30 steps x 16 pairs, max length 64, 3 warm-up steps (2-core CPU); NOT the reference settings",
            ["model.max_length=64", "sampler.batch_size=16", "train.max_steps=30", "optim.warmup_steps=3",
             "eval.batch_size=64"], 2000.0),
    "gpu": ("the reference settings of experiments/configs/hybrid.yaml (200 steps x 128 pairs, max length 128)",
            [], 300.0),
}


def arms(retention: float) -> dict[str, list[str]]:
    return {
        "zero-shot": ["train.max_steps=0", "eval.before_training=true", "eval.after_training=false"],
        "hybrid": ["optim.retention_weight=0"],
        "hybrid+retention": [f"optim.retention_weight={retention:g}"],
    }


def run_overrides(size: str, arm_overrides: list[str], seed: int, out_dir: Path, extra: list[str],
                  seen: list[str] = SEEN) -> list[str]:
    return [*SIZES[size][1], "data.languages=null", f"data.train_languages=[{','.join(seen)}]",
            "train.save_every=0", "train.save_final=false", "train.progress_bar=false", "eval.before_training=false",
            *extra, *arm_overrides, f"train.seed={seed}", f"train.output_dir={out_dir}"]


def final_groups(results: dict) -> tuple[dict, dict]:
    """(summary, language groups) of a run's last evaluation."""
    labels = list(results["results"])
    return results["results"][labels[-1]], results["language_groups"][labels[-1]]


def finished_seeds(out: Path, arm: str) -> set[int]:
    return {int(p.parent.name[4:]) for p in (out / "runs" / arm).glob("seed*/results.json")}


def aggregate(out: Path, arm_names: list[str]) -> dict:
    """Per arm: the overall summary and every cell, mean and sd over seeds. The trained arms are
    compared on the seeds both finished (paired); a seed only one of them finished is listed under
    ``unpaired`` and left out."""
    trained = [a for a in arm_names if a != "zero-shot"]
    paired = set.intersection(*(finished_seeds(out, a) for a in trained)) if trained else set()
    agg: dict = {}
    for arm in arm_names:
        seeds = sorted(finished_seeds(out, arm) if arm == "zero-shot" else paired)
        runs = [json.loads((out / "runs" / arm / f"seed{k}" / "results.json").read_text()) for k in seeds]
        if not runs:
            continue
        pairs = [final_groups(r) for r in runs]
        entry = {"n": len(runs), "overall": {m: stats([s[m] for s, _ in pairs]) for m in SUMMARY_METRICS},
                 "cells": {}}
        for cell in CELLS:
            entry["cells"][cell] = {m: stats([g["cells"][cell][m] for _, g in pairs if m in g["cells"][cell]])
                                    for m in CELL_METRICS if m in pairs[0][1]["cells"][cell]}
        entry["groups"] = pairs[0][1]["groups"]
        entry["seeds"] = seeds
        entry["unpaired_seeds"] = sorted(finished_seeds(out, arm) - set(seeds))
        agg[arm] = entry
    return agg


def _v(st: dict | None, metric: str, sd: bool = True) -> str:
    if not st or st.get("mean") is None:
        return "–"
    bias = metric.startswith("bias")
    mean = f"{st['mean']:.0f}" if bias else f"{st['mean']:.3f}"
    if sd and st.get("n", 1) > 1 and st.get("std") is not None:
        mean += f" ± {st['std']:.0f}" if bias else f" ± {st['std']:.3f}"
    return mean


def _d(a: dict | None, b: dict | None, metric: str) -> str:
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return "–"
    d = a["mean"] - b["mean"]
    return f"{d:+.0f}" if metric.startswith("bias") else f"{d:+.3f}"


def format_table(agg: dict) -> str:
    zs, hy, rt = agg.get("zero-shot"), agg.get("hybrid"), agg.get("hybrid+retention")
    groups = next(iter(agg.values()))["groups"] if agg else {}
    lines = [f"Seen (trained) languages: {', '.join(groups.get('seen', []))}; unseen: "
             f"{', '.join(groups.get('unseen', []))}. Held-out XQuAD-R articles. Mean ± sd over seeds "
             f"(paired seeds {hy['seeds'] if hy else []}; "
             f"finished but left out as unpaired: {(hy or {}).get('unpaired_seeds', [])} hybrid, "
             f"{(rt or {}).get('unpaired_seeds', [])} hybrid+retention); Δ against the zero-shot model; bias lower "
             "is better.", "",
             "| cell (query → passage) | metric | zero-shot | hybrid | Δ hybrid | hybrid+retention | Δ retention | "
             "retention − hybrid |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def row(label: str, metric: str, get) -> str:
        z, h, r = (get(e) if e else None for e in (zs, hy, rt))
        return (f"| {label} | {metric} | {_v(z, metric, False)} | {_v(h, metric)} | {_d(h, z, metric)} | "
                f"{_v(r, metric)} | {_d(r, z, metric)} | {_d(r, h, metric)} |")

    for m in SUMMARY_METRICS:
        lines.append(row("all languages (full pool)" if m == SUMMARY_METRICS[0] else "", m,
                         lambda e, m=m: e["overall"].get(m)))
    for cell in CELLS:
        for i, m in enumerate(x for x in CELL_METRICS if (zs or hy or rt)["cells"][cell].get(x)):
            lines.append(row(cell if i == 0 else "", m, lambda e, c=cell, m=m: e["cells"][c].get(m)))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="experiments.zeroshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--retention", type=float, default=None, help="optim.retention_weight of the retention arm "
                   "(default: the size's, cpu 2000, gpu 300)")
    p.add_argument("--arms", default="zero-shot,hybrid,hybrid+retention",
                   help="comma-separated subset of the arms (default all; e.g. a second process for other seeds)")
    p.add_argument("--seen", default=",".join(SEEN), help="the training languages (default %(default)s)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no run that would end after this many seconds (estimated from the slowest run so "
                        "far); rerun the same command to continue")
    p.add_argument("--note", default="")
    p.add_argument("--summarize", action="store_true", help="run nothing: rewrite table.md and summary.json")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args(argv)
    retention = args.retention if args.retention is not None else SIZES[args.size][2]
    arm_table = arms(retention)
    chosen = args.arms.split(",")
    unknown = sorted(set(chosen) - set(arm_table))
    if unknown:
        p.error(f"unknown arms {unknown}; arms are {list(arm_table)}")
    plan = ([("zero-shot", args.seeds[0])] if "zero-shot" in chosen else []) + [
        (a, s) for s in args.seeds for a in ("hybrid", "hybrid+retention") if a in chosen]
    command = "python -m experiments.zeroshot " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    session, t0, ran, slowest = StudySession(), time.time(), [], 0.0
    for arm, seed in ([] if args.summarize else plan):
        d = args.out / "runs" / arm / f"seed{seed}"
        if (d / "results.json").exists():
            print(f"{arm} seed {seed}: done before, skipped")
            continue
        if args.time_budget is not None and slowest and time.time() - t0 + slowest > args.time_budget:
            print(f"time budget reached before {arm} seed {seed}; rerun to continue")
            break
        cfg = load_config(CONFIG_DIR / "hybrid.yaml",
                          run_overrides(args.size, arm_table[arm], seed, d, list(args.overrides),
                                        args.seen.split(",")))
        print(f"{arm} seed {seed}: running", flush=True)
        rc, wall, _ = train_in_process(session, cfg, d / "train.log")
        ran.append({"arm": arm, "seed": seed, "rc": rc, "wall_s": wall})
        slowest = max(slowest, wall)
        print(f"{arm} seed {seed}: exit {rc} in {wall:.0f}s", flush=True)
    agg = aggregate(args.out, list(arm_table))
    table = format_table(agg) if agg else "(no finished run)\n"
    atomic.write_json(args.out / "summary.json", {"format": "hybrid_dist.zeroshot/1", "retention_weight": retention,
                                                  "size": args.size, "seeds": args.seeds, "arms": agg}, indent=1)
    atomic.write_text(args.out / "table.md", f"# Issue #20: seen/unseen languages ({args.size} size)\n\n{table}")
    history_path = args.out / "invocations.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    if args.summarize:
        print(table)
        return 0
    history.append({"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                    "finished": _now(), "wall_s": time.time() - t0, "size": args.size, "retention_weight": retention,
                    "overrides": args.overrides, "note": args.note, "device": device_info(), "git": git_info(),
                    "ran": ran})
    atomic.write_json(history_path, history, indent=1)
    atomic.write_text(args.out / "RUN.md", run_record(args.out.name, history, lambda inv: f"- size: `{inv['size']}` ({SIZES[inv['size']][0]}); retention weight {inv['retention_weight']:g}"))
    print(table)
    return 0 if all(r["rc"] == 0 for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
