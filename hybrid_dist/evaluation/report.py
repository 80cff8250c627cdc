"""Reports: the JSON result file, Markdown tables in the paper's layout, the X->Y heatmap and
the comparison of two result files.

A result file is ``{"format": "hybrid_dist.eval/1", "model": {...}, "config": {...},
"results": {benchmark: result dict}, ...}``; a result dict is ``LareqaResult.to_dict()`` (kind
``lareqa``) or ``IRResult.to_dict()`` (kind ``ir``). NaN is written as ``null``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from hybrid_dist import atomic
from hybrid_dist.atomic import json_clean

FORMAT = "hybrid_dist.eval/1"

#: paper layout: per benchmark, Mono / Cross / Multi mAP and language bias
LAREQA_COLUMNS = (("Mono", "mono_map"), ("Cross", "cross_map"), ("Multi", "multi_map"),
                  ("Bias", "bias_max_rank_distance"))
BENCHMARK_TITLES = {"xquad-r": "XQuAD-R", "mlqa-r": "MLQA-R", "scifact": "SciFact", "beir/scifact": "SciFact"}
#: ad-hoc retrieval columns of the results table (``<benchmark>/<metric>`` keys)
IR_COLUMNS = (("nDCG@10", "ndcg@10"), ("MRR@10", "mrr@10"))
LOWER_IS_BETTER = ("bias_max_rank_distance",)
METRIC_TITLES = {"map": "mAP", "map@20": "mAP@20", "r@1": "R@1", "r@10": "R@10"}


def metric_direction(name: str) -> str:
    """"max" or "min": how to pick the best checkpoint by summary metric ``name``.
    ``bias_max_rank_distance`` is lower-better; ``bias_same_minus_other`` is best near 0
    (its absolute value is lower-better), everything else higher-better."""
    base = name.rsplit("/", 1)[-1]
    lower = base in LOWER_IS_BETTER or base.endswith(tuple(f"_{m}" for m in LOWER_IS_BETTER))  # hold-out cells
    return "min" if lower or base == "bias_same_minus_other" else "max"


def is_better(name: str, new: float, best: float | None) -> bool:
    """Whether ``new`` beats ``best`` for checkpoint selection by metric ``name``."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    if name.rsplit("/", 1)[-1] == "bias_same_minus_other":
        return abs(new) < abs(best)
    return new < best if metric_direction(name) == "min" else new > best


# ----------------------------------------------------------------------------- JSON


def make_report(results: Mapping[str, object], model: Mapping | None = None, config: Mapping | None = None,
                timings: Mapping | None = None) -> dict:
    """The result-file dict: ``results`` maps benchmark name -> result (object with
    ``to_dict()``, or a dict)."""
    return json_clean({
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": dict(model or {}),
        "config": dict(config or {}),
        "results": {name: (r.to_dict() if hasattr(r, "to_dict") else dict(r)) for name, r in results.items()},
        "timings": dict(timings or {}),
    })


def write_json(report: Mapping, path: str | os.PathLike) -> Path:
    return atomic.write_json(path, report, indent=1, clean=True)


def load_report(path: str | os.PathLike) -> dict:
    """A result file; a bare result dict (one benchmark) is wrapped as a report."""
    from hybrid_dist.data.records import DataError

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(str(path), None, None, f"cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"line {e.lineno} column {e.colno}", None, f"invalid JSON: {e.msg}") from None
    if not isinstance(doc, dict):
        raise DataError(str(path), None, None, "expected a JSON object")
    if "results" not in doc:
        if "summary" in doc and "benchmark" in doc:
            doc = {"format": FORMAT, "model": {}, "config": {}, "results": {doc["benchmark"]: doc}}
        else:
            raise DataError(str(path), None, "results", "missing (not an evaluation result file)")
    if not isinstance(doc["results"], dict):
        raise DataError(str(path), None, "results", "expected an object {benchmark: result}")
    for name, r in doc["results"].items():
        if not isinstance(r, dict) or not isinstance(r.get("summary"), dict):
            raise DataError(str(path), f"results.{name}", "summary", "missing or not an object")
    return doc


def flat_summary(report: Mapping) -> dict[str, float]:
    """``{benchmark}/{metric}`` -> value over every result in a report (None -> nan)."""
    out = {}
    for bench, r in report["results"].items():
        for k, v in r["summary"].items():
            out[f"{bench}/{k}"] = float("nan") if v is None else float(v)
    return out


# ----------------------------------------------------------------------------- tables


def _fmt(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric.startswith("bias_"):
        return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    if metric.startswith(("n_", "count")):
        return f"{value:.0f}"
    return f"{value:.3f}"


def format_results_table(rows: Mapping[str, Mapping[str, float]], benchmark: str = "xquad-r") -> str:
    """Markdown table in the paper's layout: one row per model / sampling, per benchmark the
    columns Mono, Cross, Multi (mAP) and Bias (max rank distance in the multilingual pool,
    lower is better).

    ``rows[label]`` is a flat metric dict such as ``LareqaResult.summary``; keys without a
    ``benchmark/`` prefix belong to ``benchmark``, prefixed keys (``mlqa-r/mono_map``, as in
    :func:`flat_summary`) to their own column group."""
    benches: dict[str, None] = {}
    for metrics in rows.values():
        for key in metrics:
            bench = key.split("/", 1)[0] if "/" in key else benchmark
            base = key.rsplit("/", 1)[-1]
            if any(base == m for _, m in LAREQA_COLUMNS):
                benches.setdefault(bench, None)
    if not benches:
        benches[benchmark] = None
    ir_cols: dict[tuple[str, str, str], None] = {}  # (benchmark, column name, metric)
    for metrics in rows.values():
        for key in metrics:
            if "/" in key:
                bench, base = key.rsplit("/", 1)
                for name, metric in IR_COLUMNS:
                    if base == metric:
                        ir_cols.setdefault((bench, name, metric), None)
    header = ["Model / sampling"]
    for bench in benches:
        title = BENCHMARK_TITLES.get(bench, bench)
        header += [f"{title} {name}" + (" ↓" if metric in LOWER_IS_BETTER else "") for name, metric in LAREQA_COLUMNS]
    header += [f"{BENCHMARK_TITLES.get(bench, bench)} {name}" for bench, name, _ in ir_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for label, metrics in rows.items():
        cells = [str(label)]
        for bench in benches:
            for _, metric in LAREQA_COLUMNS:
                value = metrics.get(f"{bench}/{metric}", metrics.get(metric) if bench == benchmark else None)
                cells.append(_fmt(value, metric))
        cells += [_fmt(metrics.get(f"{bench}/{metric}"), metric) for bench, _, metric in ir_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HOLDOUT_COLUMNS = (("Mono", "mono_map"), ("Cross", "cross_map"), ("Multi (pool of B)", "multi_map"),
                   ("Bias ↓ (pool of B)", "bias_max_rank_distance"))


def format_holdout_table(base: Mapping, tuned: Mapping, labels: tuple[str, str] = ("zero-shot", "fine-tuned")) -> str:
    """Markdown table of a language hold-out: per cell A->B (queries in group A's languages,
    passages in group B's; see evaluation/holdout.py) the zero-shot row, the fine-tuned row and
    their difference. ``base`` / ``tuned``: ``LareqaResult.groups`` dicts."""
    groups = tuned.get("groups") or base.get("groups") or {}
    lines = [f"seen: {', '.join(groups.get('seen', []))}; unseen: {', '.join(groups.get('unseen', [])) or '(none)'}",
             "", "| cell (query -> passage) | model | " + " | ".join(t for t, _ in HOLDOUT_COLUMNS) + " |",
             "| --- | --- |" + " ---: |" * len(HOLDOUT_COLUMNS)]
    for cell, after in tuned.get("cells", {}).items():
        before = base.get("cells", {}).get(cell, {})
        delta = {m: (after[m] - before[m]) if m in after and m in before else None for _, m in HOLDOUT_COLUMNS}
        for label, row in ((labels[0], before), (labels[1], after)):
            lines.append(f"| {cell if label == labels[0] else ''} | {label} | "
                         + " | ".join(_fmt(row.get(m), m) for _, m in HOLDOUT_COLUMNS) + " |")
        lines.append("| | Δ | " + " | ".join(_fmt_delta(delta[m], m) for _, m in HOLDOUT_COLUMNS) + " |")
    return "\n".join(lines)


def format_cells_table(groups: Mapping) -> str:
    """One model's language hold-out cells (``LareqaResult.groups``) as a Markdown table."""
    g = groups.get("groups", {})
    lines = [f"seen: {', '.join(g.get('seen', []))}; unseen: {', '.join(g.get('unseen', [])) or '(none)'}", "",
             "| cell (query -> passage) | " + " | ".join(t for t, _ in HOLDOUT_COLUMNS) + " |",
             "| --- |" + " ---: |" * len(HOLDOUT_COLUMNS)]
    for cell, row in groups.get("cells", {}).items():
        lines.append(f"| {cell} | " + " | ".join(_fmt(row.get(m), m) for _, m in HOLDOUT_COLUMNS) + " |")
    return "\n".join(lines)


def _fmt_delta(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.0f}" if metric.startswith("bias_") else f"{value:+.3f}"


def format_detail_table(summary: Mapping[str, float]) -> str:
    """Every LAReQA summary metric: rows mono / cross / multi, columns mAP, mAP@20, R@1, R@10."""
    cols = (("mAP", "map"), ("mAP@20", "map@20"), ("R@1", "r@1"), ("R@10", "r@10"))
    lines = ["| Setting | " + " | ".join(c for c, _ in cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for fam, title in (("mono", "Mono (X→X)"), ("cross", "Cross (X→Y, X≠Y)"), ("multi", "Multi (X→all)")):
        lines.append(f"| {title} | " + " | ".join(_fmt(summary.get(f"{fam}_{m}"), m) for _, m in cols) + " |")
    lines.append("")
    lines.append(f"Language bias (multilingual pool): max rank distance "
                 f"{_fmt(summary.get('bias_max_rank_distance'), 'bias_')}, same-language minus other-language "
                 f"rank {_fmt(summary.get('bias_same_minus_other'), 'bias_')}.")
    return "\n".join(lines)


def format_matrix_table(result: Mapping, metric: str = "map") -> str:
    """The X->Y matrix (rows: query language, columns: candidate language) plus the
    X->multi column, as Markdown."""
    langs = result["languages"]
    mat = result["matrix"][metric]
    lines = ["| X \\ Y | " + " | ".join(langs) + " | multi |", "| --- |" + " ---: |" * (len(langs) + 1)]
    for x in langs:
        cells = [_fmt(mat[x].get(y), metric) for y in langs] + [_fmt(result["multi"][metric].get(x), metric)]
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_ir_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of ad-hoc retrieval metrics: columns ``benchmark metric`` over every
    ``benchmark/metric`` key that is not a LAReQA metric."""
    lareqa_like = ("mono_", "cross_", "multi_", "bias_")
    cols: dict[str, None] = {}
    for metrics in rows.values():
        for k in metrics:
            if "/" in k and not k.rsplit("/", 1)[-1].startswith(lareqa_like):
                cols.setdefault(k, None)
    lines = ["| Model | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for label, metrics in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(metrics.get(c), c) for c in cols) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- heatmap


def plot_heatmap(result: Mapping, path: str | os.PathLike, metric: str = "map", title: str | None = None) -> Path:
    """PNG heatmap of the X->Y ``metric`` matrix (rows: query language, columns: candidates)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("heatmaps need matplotlib: pip install 'hybrid-dist[plots]'") from e

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    langs = result["languages"]
    mat = np.array([[np.nan if result["matrix"][metric][x][y] is None else result["matrix"][metric][x][y]
                     for y in langs] for x in langs], dtype=float)
    size = 1.0 + 0.55 * len(langs)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    ax.set_xlabel("candidate language (Y)")
    ax.set_ylabel("question language (X)")
    for i in range(len(langs)):
        for j in range(len(langs)):
            if not np.isnan(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2f}".lstrip("0"), ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] < 0.6 else "black")
    label = METRIC_TITLES.get(metric, metric)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    bench = result.get("benchmark", "")
    ax.set_title(title or f"{BENCHMARK_TITLES.get(bench, bench)} X→Y {label}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- comparison


def compare_reports(a: Mapping, b: Mapping, label_a: str = "A", label_b: str = "B", top: int = 5) -> str:
    """Markdown comparison of two result files: every summary metric of the benchmarks both
    hold (A, B, B − A, and whether B is better), and for LAReQA results the X->Y pairs whose mAP
    changed most."""
    out = [f"# {label_a} vs {label_b}", ""]
    for side, rep in ((label_a, a), (label_b, b)):
        model = rep.get("model") or {}
        out.append(f"- **{side}**: model `{model.get('path', '?')}` (fingerprint {model.get('fingerprint', '?')}), "
                   f"created {rep.get('created', '?')}")
    out.append("")
    common = [k for k in a["results"] if k in b["results"]]
    only = sorted(set(a["results"]) ^ set(b["results"]))
    if only:
        out += [f"Benchmarks in only one file (not compared): {', '.join(only)}", ""]
    for bench in common:
        ra, rb = a["results"][bench], b["results"][bench]
        sa, sb = ra["summary"], rb["summary"]
        out += [f"## {bench}", ""]
        ca, cb = ra.get("config") or {}, rb.get("config") or {}
        differ = [k for k in ("part", "split", "candidate_context", "source") if ca.get(k) != cb.get(k)]
        if differ:
            out += ["Note: evaluated differently (" + "; ".join(f"{k}: {ca.get(k)} vs {cb.get(k)}" for k in differ)
                    + "), so the numbers are not directly comparable.", ""]
        out += [ f"| Metric | {label_a} | {label_b} | Δ ({label_b} − {label_a}) | better |",
                "| --- | ---: | ---: | ---: | :---: |"]
        for k in [k for k in sa if k in sb]:
            va, vb = sa[k], sb[k]
            if va is None or vb is None:
                delta, mark = "–", ""
            else:
                delta = f"{vb - va:+.0f}" if k.startswith("bias_") and abs(vb - va) >= 10 else f"{vb - va:+.3f}"
                mark = label_b if is_better(k, vb, va) else (label_a if is_better(k, va, vb) else "=")
            out.append(f"| {k} | {_fmt(va, k)} | {_fmt(vb, k)} | {delta} | {mark} |")
        if ra.get("kind") == "lareqa" and rb.get("kind") == "lareqa":
            changes = []
            for x, row in ra["matrix"]["map"].items():
                for y, va in row.items():
                    vb = rb["matrix"]["map"].get(x, {}).get(y)
                    if va is not None and vb is not None:
                        changes.append((vb - va, x, y, va, vb))
            changes.sort(key=lambda c: -abs(c[0]))
            if changes:
                out += ["", f"Largest X→Y mAP changes (of {len(changes)} pairs):", ""]
                out += [f"- {x}→{y}: {va:.3f} → {vb:.3f} ({d:+.3f})" for d, x, y, va, vb in changes[:top]]
        out.append("")
    return "\n".join(out)
