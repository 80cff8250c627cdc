"""Aggregate a study directory into ``table.md``, ``summary.json``, ``alpha_sweep.png`` and the
X->Y heatmaps; every file is written to a temporary name and renamed, so an interrupted run never
leaves a half-written one.

A study directory holds ``runs/<name>/seed<k>/`` per run: ``results.json`` (written by
``hybrid_dist.train``: ``{"config": ..., "results": {"step 0 (before training)": summary,
"step N (fine-tuned)": summary}}``), ``run.json`` (written by ``experiments.run``: arm, seed, alpha,
command, wall time) and, for the runs with a heatmap, ``eval/results.json`` (``hybrid_dist.evaluate``:
the full X->Y matrix). ``python -m experiments.summarize DIR`` rebuilds the outputs from disk.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from experiments.arms import ARMS, BASE_ARM
from hybrid_dist import atomic
from hybrid_dist.evaluation.report import plot_heatmap

FORMAT = "hybrid_dist.experiments/1"
#: the table's columns: (title, summary key)
MAP_COLUMNS = (("Mono mAP", "mono_map"), ("Cross mAP", "cross_map"), ("Multi mAP", "multi_map"))
BIAS_COLUMNS = (("Bias: max rank distance ↓", "bias_max_rank_distance"),
                ("Same − other rank", "bias_same_minus_other"))
RECALL_COLUMNS = tuple((f"{fam.capitalize()} {m}", f"{fam}_{k}") for m, k in (("R@1", "r@1"), ("R@10", "r@10"))
                       for fam in ("mono", "cross", "multi"))
SWEEP_METRICS = ("mono_map", "cross_map", "multi_map")
BEST_METRIC = "multi_map"  # picks the arm whose heatmap is drawn next to the zero-shot one
_STEP_KEY = re.compile(r"^step (\d+)")


# ----------------------------------------------------------------------------- reading runs


def final_summary(results: dict) -> tuple[str, dict]:
    """The held-out summary a run ends with: its last ``step N (fine-tuned)`` entry, else (zero-shot,
    no training) ``step 0 (before training)``. Returns ``(key, summary)``."""
    entries = results.get("results") or {}
    tuned = [(int(m.group(1)), k) for k in entries if k.endswith("(fine-tuned)") and (m := _STEP_KEY.match(k))]
    if tuned:
        key = max(tuned)[1]
    elif "step 0 (before training)" in entries:
        key = "step 0 (before training)"
    else:
        raise ValueError(f"no final evaluation among {sorted(entries)}")
    return key, entries[key]


def load_run(directory: Path) -> dict | None:
    """One run's record, or None while its results.json does not exist (not run, or interrupted)."""
    directory = Path(directory)
    res_path = directory / "results.json"
    if not res_path.exists():
        return None
    results = json.loads(res_path.read_text(encoding="utf-8"))
    key, summary = final_summary(results)
    meta = {}
    if (directory / "run.json").exists():
        meta = json.loads((directory / "run.json").read_text(encoding="utf-8"))
    cfg = results.get("config") or {}
    name = directory.parent.name
    seed = meta.get("seed", cfg.get("train", {}).get("seed"))
    if seed is None:
        seed = int(directory.name.removeprefix("seed"))
    matrix = None
    eval_path = directory / "eval" / "results.json"
    if eval_path.exists():
        matrix = json.loads(eval_path.read_text(encoding="utf-8"))["results"].get("xquad-r")
    return {
        "name": name,
        "arm": meta.get("arm", name if name in ARMS else BASE_ARM),
        "seed": int(seed),
        "alpha": (cfg.get("sampler") or {}).get("alpha"),
        "dir": str(directory),
        "result_key": key,
        "summary": {k: (float("nan") if v is None else float(v)) for k, v in summary.items()},
        "wall_s": meta.get("wall_s"),
        "eval": matrix,
    }


def load_runs(out: Path) -> list[dict]:
    runs = []
    for d in sorted((Path(out) / "runs").glob("*/seed*")):
        run = load_run(d)
        if run is not None:
            runs.append(run)
    return runs


# ----------------------------------------------------------------------------- statistics


def stats(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; ``None`` for one value) of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "values": list(values)}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "values": vals}


def aggregate(runs: list[dict]) -> dict[str, dict]:
    """Per run name: seeds, and per summary metric its :func:`stats` over the seeds."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    out = {}
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        keys = list(dict.fromkeys(k for r in rs for k in r["summary"]))
        out[name] = {
            "arm": rs[0]["arm"],
            "alpha": rs[0]["alpha"],
            "seeds": [r["seed"] for r in rs],
            "metrics": {k: stats([r["summary"].get(k) for r in rs]) for k in keys},
            "wall_s": stats([r["wall_s"] for r in rs if r["wall_s"] is not None]),
        }
    return out


def format_stat(st: dict, metric: str) -> str:
    """``0.838 ± 0.004`` (mAP, recall), ``196 ± 5`` (rank distances); no ``±`` for one seed."""
    if not st or st.get("mean") is None:
        return "–"
    digits = 0 if metric.startswith("bias_") else 3
    text = f"{st['mean']:.{digits}f}"
    if st.get("std") is not None:
        text += f" ± {st['std']:.{digits}f}"
    return text


# ----------------------------------------------------------------------------- outputs


def _order(names: list[str]) -> list[str]:
    known = [n for n in ARMS if n in names]
    return known + sorted(n for n in names if n not in ARMS)


def best_arm(agg: dict, metric: str = BEST_METRIC) -> str | None:
    """The trained arm (not zero-shot, not a sweep point) with the best mean ``metric``."""
    candidates = [(v["metrics"][metric]["mean"], n) for n, v in agg.items()
                  if n in ARMS and ARMS[n].trains and metric in v["metrics"] and v["metrics"][metric]["mean"] is not None]
    return max(candidates)[1] if candidates else None


def _row(label: str, entry: dict, columns) -> str:
    cells = [label, ", ".join(str(s) for s in entry["seeds"])]
    cells += [format_stat(entry["metrics"].get(key), key) for _, key in columns]
    return "| " + " | ".join(cells) + " |"


def _table(title_first: str, columns, rows: list[tuple[str, dict]]) -> list[str]:
    header = [title_first, "seeds"] + [t for t, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    lines += [_row(label, entry, columns) for label, entry in rows]
    return lines


def format_table(agg: dict, sweep: list[tuple[float, str]], header: str = "") -> str:
    arms = [n for n in _order(list(agg)) if n in ARMS]
    rows = [(n, agg[n]) for n in arms]
    lines = []
    if header:
        lines += [header.rstrip(), ""]
    lines += ["Held-out XQuAD-R (odd-indexed articles of the parity split), mean ± sample standard deviation over "
              "seeds. Bias: in the multilingual pool, the highest minus the lowest rank of a question's parallel "
              "answers (lower is better); same − other: mean rank of the same-language answer minus the mean rank "
              "of the other languages' answers (negative: the query's own language is preferred; 0 is unbiased).",
              ""]
    lines += _table("Arm", MAP_COLUMNS + BIAS_COLUMNS, rows)
    lines += ["", "Recall (R@k: fraction of the relevant answer sentences in the top k; in the multilingual pool a "
              "question has one answer per language, so Multi R@1 is at most 1/languages).", ""]
    lines += _table("Arm", RECALL_COLUMNS, rows)
    points = [(a, n) for a, n in sweep if n in agg]
    if points:
        lines += ["", "Alpha sweep (hybrid batches, monolingual with probability alpha; alpha 0 = cross-lingual "
                  "batches only, alpha 1 = monolingual only, drawn through the hybrid sampler).", ""]
        lines += _table("alpha", MAP_COLUMNS + (("Multi R@10", "multi_r@10"),) + BIAS_COLUMNS,
                        [(f"{a:g}" + (f" ({n})" if not n.startswith("alpha-") else ""), agg[n]) for a, n in points])
    best = best_arm(agg)
    if best:
        lines += ["", f"Best trained arm by mean {BEST_METRIC}: **{best}**."]
    return "\n".join(lines) + "\n"


def plot_alpha_sweep(agg: dict, sweep: list[tuple[float, str]], path: Path, title: str = "") -> Path | None:
    points = sorted((a, n) for a, n in sweep if n in agg)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    alphas = [a for a, _ in points]
    zero = agg.get("zero-shot")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"mono_map": "tab:blue", "cross_map": "tab:orange", "multi_map": "tab:green"}
    for metric in SWEEP_METRICS:
        st = [agg[n]["metrics"].get(metric, {}) for _, n in points]
        ax.errorbar(alphas, [s.get("mean") for s in st], yerr=[s.get("std") or 0.0 for s in st], marker="o",
                    capsize=4, color=colors[metric], label=metric.replace("_map", ""))
        if zero and metric in zero["metrics"]:
            ax.axhline(zero["metrics"][metric]["mean"], color=colors[metric], linestyle=":", linewidth=1)
    ax.set_xlabel("alpha (probability of a monolingual batch)")
    ax.set_ylabel("held-out mAP")
    ax.set_title("mAP vs alpha (dotted: zero-shot)")
    ax.legend()
    st = [agg[n]["metrics"].get("bias_max_rank_distance", {}) for _, n in points]
    bx.errorbar(alphas, [s.get("mean") for s in st], yerr=[s.get("std") or 0.0 for s in st], marker="o",
                capsize=4, color="tab:red")
    if zero and "bias_max_rank_distance" in zero["metrics"]:
        bx.axhline(zero["metrics"]["bias_max_rank_distance"]["mean"], color="tab:red", linestyle=":", linewidth=1)
    bx.set_xlabel("alpha (probability of a monolingual batch)")
    bx.set_ylabel("max rank distance (lower is better)")
    bx.set_title("language bias vs alpha (dotted: zero-shot)")
    for axis in (ax, bx):
        axis.set_xticks(alphas)
        axis.grid(alpha=0.3)
    seeds = sorted({s for _, n in points for s in agg[n]["seeds"]})
    fig.suptitle(title or f"XQuAD-R held-out, mean ± std over seeds {seeds}")
    fig.tight_layout()

    def draw(tmp: Path) -> None:
        fig.savefig(tmp, dpi=120)

    try:
        return atomic.write_with(path, draw)
    finally:
        plt.close(fig)


def _first_matrix(runs: list[dict], name: str) -> dict | None:
    with_eval = sorted((r for r in runs if r["name"] == name and r["eval"]), key=lambda r: r["seed"])
    return with_eval[0] if with_eval else None


def study_context(out: Path) -> tuple[str, dict, list[tuple[float, str]] | None]:
    """The table's header line, summary.json's run context and the sweep points, from the newest
    invocation recorded in ``<out>/invocations.json`` (written by experiments.run); empty without it."""
    path = Path(out) / "invocations.json"
    if not path.exists():
        return "", {}, None
    inv = json.loads(path.read_text(encoding="utf-8"))[-1]
    from experiments.arms import SIZES

    size = inv.get("size", "gpu")
    header = (f"Study `{Path(out).name}`: size preset `{size}`"
              + (" (**CPU preset, not the study's settings**)" if size == "cpu" else "")
              + (f", overrides `{' '.join(inv['overrides'])}`" if inv.get("overrides") else "")
              + f"; device: {inv['device']['summary']}. Run record: RUN.md.")
    extra = {"size": size, "size_description": SIZES[size].description if size in SIZES else None,
             "command": inv.get("command"), "device": inv.get("device")}
    sweep = [tuple(p) for p in inv["sweep"]] if "sweep" in inv else None
    return header, extra, sweep


def write_outputs(out: Path, sweep: list[tuple[float, str]] | None = None, header: str | None = None,
                  extra: dict | None = None) -> dict:
    """Read every finished run under ``out`` and (re)write table.md, summary.json, alpha_sweep.png
    and the heatmaps (removing a heatmap of an arm that is no longer the best). ``sweep``: the alpha
    sweep's ``(alpha, run name)`` points; ``header``, ``extra``: the table's first line and more
    summary.json fields. Each defaults to what the newest invocation in invocations.json says
    (without one: every ``alpha-*`` run plus the hybrid arm, no header). Returns the summary dict."""
    out = Path(out)
    ctx_header, ctx_extra, ctx_sweep = study_context(out)
    header = ctx_header if header is None else header
    extra = {**ctx_extra, **(extra or {})}
    runs = load_runs(out)
    agg = aggregate(runs)
    if sweep is None:
        sweep = ctx_sweep
    if sweep is None:
        sweep = sorted({(v["alpha"], n) for n, v in agg.items()
                        if (n.startswith("alpha-") or n == BASE_ARM) and v["alpha"] is not None})
    best = best_arm(agg)
    heatmaps, checks = {}, {}
    for name in dict.fromkeys(["zero-shot", best]):
        run = _first_matrix(runs, name) if name else None
        if run is None:
            continue
        png = out / f"heatmap_{name}.png"
        atomic.write_with(png, lambda tmp, r=run, n=name: plot_heatmap(
            r["eval"], tmp, title=f"{n} (seed {r['seed']}): held-out X→Y mAP"))
        heatmaps[name] = {"file": png.name, "seed": run["seed"], "run": run["dir"]}
    for stale in out.glob("heatmap_*.png"):  # a previous best arm's
        if stale.name not in {h["file"] for h in heatmaps.values()}:
            stale.unlink()
    for r in runs:
        if r["eval"]:  # the heatmap evaluation and the trainer's own must agree (same model, same data)
            diffs = [abs(r["eval"]["summary"][k] - r["summary"][k]) for k in r["summary"]
                     if k in r["eval"]["summary"] and r["eval"]["summary"][k] is not None
                     and math.isfinite(r["summary"][k])]
            checks[f"{r['name']}/seed{r['seed']}"] = max(diffs) if diffs else None
    sweep_png = plot_alpha_sweep(agg, sweep, out / "alpha_sweep.png")
    summary = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "best_metric": BEST_METRIC,
        "best_arm": best,
        "arms": {n: agg[n] for n in _order(list(agg)) if n in ARMS},
        "alpha_sweep": [{"alpha": a, "run": n, **agg[n]} for a, n in sweep if n in agg],
        "heatmaps": heatmaps,
        "alpha_sweep_plot": sweep_png.name if sweep_png else None,
        "heatmap_eval_vs_trainer_max_abs_diff": checks,
        "runs": [{k: v for k, v in r.items() if k != "eval"} | {
            "matrix_map": r["eval"]["matrix"]["map"] if r["eval"] else None} for r in runs],
        **(extra or {}),
    }
    atomic.write_json(out / "summary.json", summary, indent=1, clean=True)
    atomic.write_text(out / "table.md", format_table(agg, sweep, header))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="experiments.summarize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="study directory (the runner's --out)")
    args = p.parse_args(argv)
    summary = write_outputs(args.out)
    print((args.out / "table.md").read_text(encoding="utf-8"))
    print(f"{len(summary['runs'])} runs; wrote {args.out}/table.md, summary.json"
          + (", alpha_sweep.png" if summary["alpha_sweep_plot"] else "")
          + "".join(f", {h['file']}" for h in summary["heatmaps"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
