"""Issue #27, the research question at CPU size: does the multilingual contrastive loss with hybrid
batches change zero-shot retrieval (BEIR SciFact, MLQA-R) compared with standard contrastive loss?

Arms (all trained on the XQuAD-R training articles, parity split, every language):

* ``infonce+mono``: standard contrastive loss (InfoNCE), X-X-mono batches;
* ``infonce+hybrid``: InfoNCE, hybrid batches (alpha 0.5);
* ``mlloss+hybrid``: the multilingual contrastive loss, hybrid batches, k = 2 translations per
  question (without k > 1 the multilingual loss is InfoNCE);
* ``zero-shot``: the pretrained model, once.

Each trained model is evaluated on the held-out XQuAD-R articles, all of MLQA-R (never trained
on) and BEIR SciFact (nDCG@10), through ``eval.benchmarks``. Every run in this one process
(experiments/inprocess.py); a run whose ``results.json`` exists is reused, so the same command
continues. Writes ``table.md``, ``summary.json`` and ``RUN.md`` into ``--out``.

  python -m experiments.research_question --out experiments/results/research-question-cpu-DATE --seeds 0 1 2
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

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARMS = {
    "zero-shot": ["train.max_steps=0", "eval.before_training=true", "eval.after_training=false"],
    "infonce+mono": ["sampler.mode=mono", "loss.name=infonce", "sampler.translations_per_group=1"],
    "infonce+hybrid": ["sampler.mode=hybrid", "loss.name=infonce", "sampler.translations_per_group=1"],
    "mlloss+hybrid": ["sampler.mode=hybrid", "loss.name=multilingual", "sampler.translations_per_group=2"],
}
TRAINED = [a for a in ARMS if a != "zero-shot"]
#: (label, result key, lower is better)
METRICS = [("XQuAD-R held-out Mono mAP", "mono_map", False), ("XQuAD-R held-out Cross mAP", "cross_map", False),
           ("XQuAD-R held-out Multi mAP", "multi_map", False), ("XQuAD-R held-out bias", "bias_max_rank_distance", True),
           ("MLQA-R Mono mAP", "mlqa-r/mono_map", False), ("MLQA-R Cross mAP", "mlqa-r/cross_map", False),
           ("MLQA-R Multi mAP", "mlqa-r/multi_map", False), ("MLQA-R bias", "mlqa-r/bias_max_rank_distance", True),
           ("SciFact nDCG@10", "scifact/ndcg@10", False), ("SciFact Recall@100", "scifact/recall@100", False)]
SIZES = {
    "cpu": ("30 steps x 16 pairs, max length 64 for training and every evaluation (SciFact documents cut to 64 "
            "tokens), 3 warm-up steps (2-core CPU); NOT the reference settings",
            ["model.max_length=64", "sampler.batch_size=16", "train.max_steps=30", "optim.warmup_steps=3",
             "eval.batch_size=128"]),
    "gpu": ("the reference settings of experiments/configs/hybrid.yaml (200 steps x 128 pairs, max length 128; "
            "SciFact at 512)", []),
}


def benchmarks(size: str) -> str:
    scifact_len = 64 if size == "cpu" else 512
    return (f"eval.benchmarks=[{{name: mlqa-r, path: {SHARED / 'mlqa-r'}}}, "
            f"{{name: scifact, kind: beir, path: {SHARED / 'beir' / 'scifact'}, max_length: {scifact_len}}}]")


def run_overrides(size: str, arm: str, seed: int, out_dir: Path, extra: list[str]) -> list[str]:
    return [*SIZES[size][1], f"data.path={SHARED / 'xquad-r'}", "data.languages=null", "train.save_every=0",
            "train.save_final=false", "train.progress_bar=false", "eval.before_training=false", benchmarks(size),
            *extra, *ARMS[arm], f"train.seed={seed}", f"train.output_dir={out_dir}"]


def finished(out: Path, arm: str) -> dict[int, dict]:
    found = {}
    for p in sorted((out / "runs" / arm).glob("seed*/results.json")):
        results = json.loads(p.read_text())["results"]
        found[int(p.parent.name[4:])] = results[list(results)[-1]]
    return found


def aggregate(out: Path) -> dict:
    """Per arm and metric: mean and sd over the seeds every trained arm finished (paired), and
    the paired differences of ``mlloss+hybrid`` against each InfoNCE arm."""
    runs = {arm: finished(out, arm) for arm in ARMS}
    paired = sorted(set.intersection(*(set(runs[a]) for a in TRAINED))) if all(runs[a] for a in TRAINED) else []
    agg: dict = {"paired_seeds": paired, "arms": {}, "differences": {}}
    for arm in ARMS:
        # before every trained arm has a seed in common, each arm shows what it finished (unpaired)
        seeds = sorted(runs[arm]) if arm == "zero-shot" or not paired else paired
        if seeds:
            agg["arms"][arm] = {"seeds": seeds, **{k: stats([runs[arm][s].get(k) for s in seeds]) for _, k, _ in METRICS},
                                "eval_s": {k: runs[arm][seeds[0]].get(f"{k}/eval_s") for k in ("mlqa-r", "scifact")}}
    for base in ("infonce+mono", "infonce+hybrid"):
        if paired:
            agg["differences"][f"mlloss+hybrid - {base}"] = {
                k: stats([runs["mlloss+hybrid"][s][k] - runs[base][s][k] for s in paired]) for _, k, _ in METRICS}
    return agg


def _v(st: dict | None, bias: bool, sd: bool = True) -> str:
    if not st or st.get("mean") is None:
        return "–"
    text = f"{st['mean']:.0f}" if bias else f"{st['mean']:.3f}"
    if sd and st.get("n", 1) > 1 and st.get("std") is not None:
        text += f" ± {st['std']:.0f}" if bias else f" ± {st['std']:.3f}"
    return text


def _d(st: dict | None, bias: bool) -> str:
    if not st or st.get("mean") is None:
        return "–"
    mean, std = st["mean"], st.get("std") or 0.0
    vals = st.get("values") or [mean]
    if bias:
        return f"{mean:+.0f} ± {std:.0f} ({min(vals):+.0f}..{max(vals):+.0f})"
    return f"{mean:+.3f} ± {std:.3f} ({min(vals):+.3f}..{max(vals):+.3f})"


def format_table(agg: dict) -> str:
    arms = agg["arms"]
    diffs = agg["differences"]
    header = ["metric", *[f"{a} (seeds {','.join(map(str, arms[a]['seeds']))})" for a in ARMS if a in arms], *diffs]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for label, key, bias in METRICS:
        cells = [label + (" ↓" if bias else "")]
        cells += [_v(arms[a].get(key), bias, a != "zero-shot") for a in ARMS if a in arms]
        cells += [_d(d.get(key), bias) for d in diffs.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="experiments.research_question", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--summarize", action="store_true", help="run nothing: rewrite table.md and summary.json")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args(argv)
    chosen = args.arms.split(",")
    unknown = sorted(set(chosen) - set(ARMS))
    if unknown:
        p.error(f"unknown arms {unknown}; arms are {list(ARMS)}")
    plan = ([("zero-shot", args.seeds[0])] if "zero-shot" in chosen else []) + [
        (a, s) for s in args.seeds for a in TRAINED if a in chosen]
    command = "python -m experiments.research_question " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    session, t0, ran = StudySession(), time.time(), []
    for arm, seed in ([] if args.summarize else plan):
        d = args.out / "runs" / arm / f"seed{seed}"
        if (d / "results.json").exists():
            print(f"{arm} seed {seed}: done before, skipped")
            continue
        cfg = load_config(CONFIG_DIR / "hybrid.yaml", run_overrides(args.size, arm, seed, d, list(args.overrides)))
        print(f"{arm} seed {seed}: running", flush=True)
        rc, wall, _ = train_in_process(session, cfg, d / "train.log")
        ran.append({"arm": arm, "seed": seed, "rc": rc, "wall_s": wall})
        print(f"{arm} seed {seed}: exit {rc} in {wall:.0f}s", flush=True)
        _write(args, command, t0, ran, final=False)
    return _write(args, command, t0, ran, final=not args.summarize)


def _write(args, command: str, t0: float, ran: list, final: bool) -> int:
    agg = aggregate(args.out)
    table = format_table(agg) if agg["arms"] else "(no finished run)\n"
    atomic.write_json(args.out / "summary.json", {"format": "hybrid_dist.research_question/1", "size": args.size,
                                                  "seeds": args.seeds, **agg}, indent=1)
    atomic.write_text(args.out / "table.md", f"# Issue #27: multilingual loss + hybrid vs InfoNCE, zero-shot "
                      f"({args.size} size)\n\n{SIZES[args.size][0]}. Mean ± sd over the paired seeds "
                      f"{agg['paired_seeds']}; differences are paired (per seed), mean ± sd (min..max).\n\n{table}")
    if not final:
        return 0
    history_path = args.out / "invocations.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    history.append({"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                    "finished": _now(), "wall_s": time.time() - t0, "size": args.size, "overrides": args.overrides,
                    "device": device_info(), "git": git_info(), "ran": ran})
    atomic.write_json(history_path, history, indent=1)
    atomic.write_text(args.out / "RUN.md", run_record(args.out.name, history, lambda inv: f"- size: `{inv['size']}` ({SIZES[inv['size']][0]})"))
    print(table)
    return 0 if all(r["rc"] == 0 for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
