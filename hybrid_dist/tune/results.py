"""What a search leaves behind: the trials table (Markdown, CSV, JSON), ``best.yaml`` (a
complete training config for ``hybrid_dist.train``) and the metric-vs-alpha plot with one line
per learning-rate bucket. Works on plain rows, so it is usable without Ray."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from hybrid_dist import atomic
from hybrid_dist.config import to_dict
from hybrid_dist.tune.spec import SearchSpec

SUMMARY_COLUMNS = ("mono_map", "cross_map", "multi_map", "bias_max_rank_distance")
COMPLETED, STOPPED, ERROR, INCOMPLETE = "completed", "stopped early (ASHA)", "error", "incomplete (resume it)"


def trial_rows(result_grid, spec: SearchSpec, max_steps: int) -> list[dict[str, Any]]:
    """One plain dict per trial from Tune's ResultGrid: sampled values, status, last metrics and
    the metric history (step -> value)."""
    rows = []
    # Tune's own trial states, in the grid's order: TERMINATED (finished or stopped by the
    # scheduler), ERROR, or still PENDING / RUNNING / PAUSED when the search was interrupted
    analysis = getattr(result_grid, "_experiment_analysis", None)
    states = [t.status for t in analysis.trials] if analysis is not None else []
    for i, result in enumerate(result_grid):
        metrics = dict(result.metrics or {})
        history = []
        frame = result.metrics_dataframe
        if frame is not None and spec.metric in frame and "step" in frame:
            history = [(int(s), _num(v)) for s, v in zip(frame["step"], frame[spec.metric]) if not _missing(s)]
        step = int(metrics["step"]) if "step" in metrics and not _missing(metrics["step"]) else 0
        state = states[i] if i < len(states) else "TERMINATED"
        if result.error is not None or state == "ERROR":
            status = ERROR
        elif step >= max_steps:
            status = COMPLETED
        elif state == "TERMINATED" and spec.scheduler.name == "asha":
            status = STOPPED
        else:
            status = INCOMPLETE  # interrupted: `--resume` continues it
        rows.append({
            "trial_id": metrics.get("trial_id") or Path(result.path).name,
            "params": {k: result.config.get(k) for k in spec.space},
            "status": status,
            "step": step,
            "metric": _num(metrics.get(spec.metric)),
            "metrics": {k: _num(metrics.get(k)) for k in SUMMARY_COLUMNS if k in metrics},
            "history": history,
            "time_s": _num(metrics.get("time_total_s")),
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:500],
            "path": result.path,
            "checkpoint_path": metrics.get("checkpoint_path"),
        })
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def best_row(rows: list[dict], mode: str) -> dict | None:
    """The best final metric among completed trials (an early-stopped trial's last value is from a
    shorter run, so it competes only when no trial completed)."""
    pool = [r for r in rows if r["status"] == COMPLETED and r["metric"] is not None]
    pool = pool or [r for r in rows if r["status"] != ERROR and r["metric"] is not None]
    if not pool:
        return None
    pick = max if mode == "max" else min
    return pick(pool, key=lambda r: r["metric"])


# ---------------------------------------------------------------------- files


def write_tables(rows: list[dict], spec: SearchSpec, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(spec.space)
    header = ["trial", "status", "step", *keys, spec.metric, *[c for c in SUMMARY_COLUMNS if c != spec.metric], "time (s)"]
    table = []
    for r in rows:
        table.append([r["trial_id"], r["status"], r["step"], *[_fmt(r["params"].get(k)) for k in keys],
                      _fmt(r["metric"]), *[_fmt(r["metrics"].get(c)) for c in SUMMARY_COLUMNS if c != spec.metric],
                      _fmt(r["time_s"], 1)])
    md = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    paths = {"markdown": out / "trials.md", "csv": out / "trials.csv", "json": out / "trials.json"}
    atomic.write_text(paths["markdown"], "\n".join(md) + "\n")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(table)
    atomic.write_text(paths["csv"], buffer.getvalue())
    atomic.write_text(paths["json"], json.dumps({"metric": spec.metric, "mode": spec.metric_mode, "trials": rows},
                                                indent=2, default=str) + "\n")
    return paths


def write_best_config(row: dict, spec: SearchSpec, path: Path, output_dir: str) -> Path:
    """The base training config + fixed overrides + the best trial's values: what
    ``python -m hybrid_dist.train --config best.yaml`` trains (the data path made absolute)."""
    sampled = dict(row["params"])
    cfg = spec.training_config(sampled)
    data = Path(cfg.data.path).expanduser()
    cfg.data.path = str(data if data.is_absolute() else data.resolve())
    cfg.train.output_dir = output_dir
    cfg.train.resume = None
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in sampled.items())
    head = (f"# Best trial of the search {spec.name!r} ({spec.source}): {row['trial_id']}, "
            f"{spec.metric}={_fmt(row['metric'])} at step {row['step']}\n"
            f"# sampled: {values}\n# train it: python -m hybrid_dist.train --config {path.name}\n")
    atomic.write_text(path, head + yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    return path


def plot_alpha(rows: list[dict], spec: SearchSpec, path: Path, alpha_key: str = "sampler.alpha",
               lr_key: str = "optim.lr") -> Path | None:
    """Final held-out metric against alpha, one line per learning-rate bucket (filled markers:
    completed trials; hollow: the value at which ASHA stopped a trial). None without alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["status"] != ERROR and r["metric"] is not None
              and r["params"].get(alpha_key) is not None
              and r["params"].get("sampler.mode", "hybrid") == "hybrid"]  # alpha only acts in hybrid mode
    if not points:
        return None
    buckets = lr_buckets([r["params"].get(lr_key) for r in points])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, members) in enumerate(_group(points, buckets)):
        color = colors[i % len(colors)]
        done = sorted((r for r in members if r["status"] == COMPLETED), key=lambda r: r["params"][alpha_key])
        if done:
            ax.plot([r["params"][alpha_key] for r in done], [r["metric"] for r in done], "o-", color=color, label=label)
        stopped = [r for r in members if r["status"] != COMPLETED]
        if stopped:
            ax.plot([r["params"][alpha_key] for r in stopped], [r["metric"] for r in stopped], "o", color=color,
                    mfc="none", label=None if done else label)
    if any(r["status"] != COMPLETED for r in points):
        ax.plot([], [], "o", color="gray", mfc="none", label="stopped early (value at stop)")
    ax.set_xlabel("alpha (probability of a monolingual batch)")
    ax.set_ylabel(f"held-out {spec.metric}" + (" (lower is better)" if spec.metric_mode == "min" else ""))
    ax.set_title(f"{spec.name}: {spec.metric} vs alpha", fontsize=10)
    ax.set_xlim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="learning rate", title_fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def lr_buckets(lrs: list[float | None]) -> list[str]:
    """A label per learning rate: the value itself when there are few distinct ones (a grid),
    else its half-decade on a log scale (a sampled range)."""
    known = sorted({lr for lr in lrs if lr is not None})
    if len(known) <= 4:
        return ["lr fixed" if lr is None else f"lr={lr:.2g}" for lr in lrs]
    labels = []
    for lr in lrs:
        if lr is None:
            labels.append("lr fixed")
            continue
        lo = math.floor(math.log10(lr) * 2) / 2
        labels.append(f"lr in [{10 ** lo:.1e}, {10 ** (lo + 0.5):.1e})")
    return labels


def _group(points: list[dict], labels: list[str]):
    groups: dict[str, list[dict]] = {}
    for r, label in zip(points, labels):
        groups.setdefault(label, []).append(r)
    return sorted(groups.items(), key=lambda kv: _sort_key(kv[1]))


def _sort_key(members: list[dict]):
    lr = members[0]["params"].get("optim.lr")
    return (lr is None, lr or 0.0)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _num(v):
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
            return f"{v:.3g}"
        return f"{v:.{digits}g}" if digits > 1 else f"{v:.1f}"
    return str(v)
