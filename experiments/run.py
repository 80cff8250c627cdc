"""Run the issue #9 study: every arm x seed and the alpha sweep, one ``hybrid_dist.train``
subprocess each, in order; then write table.md, summary.json, alpha_sweep.png, the X->Y heatmaps
(zero-shot and the best arm) and RUN.md into ``--out``.

  python -m experiments.run --out experiments/results/NAME                      # the study (GPU)
  python -m experiments.run --out DIR --size cpu                                # 2-core CPU preset
  python -m experiments.run --out DIR --arms zero-shot,hybrid --seeds 0 --no-sweep train.max_steps=5

``--in-process`` makes every run in this one Python process instead (experiments/inprocess.py):
the same trainer and the same numbers, without a new interpreter, data parse, model load and
tokenization per run, and without the second evaluation for the heatmaps.

Runs go in the order that leaves the most useful table when a study is cut short: every arm's
first seed, then the further seeds, then the alpha sweep.

Resumable: a run whose results.json exists is skipped (after checking that it was made with the
same config), an interrupted one restarts from its last checkpoint (train.resume=auto), so the
same command continues a study. ``--time-budget`` stops before a run that would not fit.
Trailing ``key=value`` overrides apply to every run, except the fields that define an arm
(experiments/arms.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from experiments.arms import SIZES, STUDY_ARMS, SWEEP_ALPHAS, RunSpec, plan
from experiments.summarize import final_summary, write_outputs
from experiments.inprocess import StudySession, train_in_process, write_matrix
from hybrid_dist import atomic
from hybrid_dist.config import OUTPUT_KEYS, ConfigError, differences, load_config, to_dict

PREEMPTED = 75  # hybrid_dist.train's exit code after a preemption signal (checkpoint written)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="experiments.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="study directory (created; reused to resume)")
    p.add_argument("--arms", default="all",
                   help=f"comma-separated arms; 'all' = {','.join(STUDY_ARMS)}; add ',recommended' for the "
                        f"candidate (default all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: gpu 0 1 2, cpu 0 1")
    p.add_argument("--alphas", type=float, nargs="+", default=SWEEP_ALPHAS,
                   help="alpha sweep of the hybrid arm (default 0 0.25 0.5 0.75 1; 0.5 reuses the hybrid arm)")
    p.add_argument("--no-sweep", action="store_true", help="skip the alpha sweep")
    p.add_argument("--size", choices=sorted(SIZES), default="gpu",
                   help="; ".join(f"{s.name}: {s.description}" for s in SIZES.values()))
    p.add_argument("--launcher", default="python",
                   help="how each run is started, followed by '-m hybrid_dist.train ...': 'python' (this "
                        "interpreter, one process: one GPU or the CPU) or e.g. 'accelerate launch --num_processes 8'")
    p.add_argument("--keep-models", action="store_true",
                   help="keep every run's model/ and checkpoints/ (default: deleted once the run is evaluated)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no run that would end after this many seconds (estimated from this invocation's "
                        "slowest run); rerun the same command to continue")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failed run (default: go on)")
    p.add_argument("--in-process", action="store_true",
                   help="every run in this process (one GPU or the CPU): shared imports, data, model and "
                        "tokenization; no checkpoints or saved models (train.save_every=0 train.save_final=false)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="train.max_steps=N for every trained run, with optim.warmup_steps=N//10 (cuts a study to "
                        "fit a time slot)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("--note", default="", help="a line for RUN.md (what this run is for)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    args = p.parse_args(argv)
    arms: list[str] = []
    for item in args.arms.split(","):
        item = item.strip()
        arms += STUDY_ARMS if item == "all" else ([item] if item else [])
    args.arm_list = list(dict.fromkeys(arms))
    if args.seeds is None:
        args.seeds = list(SIZES[args.size].seeds)
    if args.no_sweep:
        args.alphas = []
    if args.in_process and args.launcher.strip() != "python":
        p.error("--in-process runs in this interpreter; it takes no --launcher")
    if args.steps is not None:
        if args.steps < 1:
            p.error("--steps must be at least 1")
        args.overrides = [f"train.max_steps={args.steps}", f"optim.warmup_steps={args.steps // 10}", *args.overrides]
    if args.in_process and not args.keep_models:
        args.overrides = ["train.save_every=0", "train.save_final=false", *args.overrides]
    return args


# ----------------------------------------------------------------------------- helpers


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """What differs between a finished run's config and the one that would run it now, except
    where a run writes and how it reports (config.OUTPUT_KEYS): one line per key."""
    return [f"{k}: {a!r} (on disk) vs {b!r}" for k, a, b in differences(saved, wanted, OUTPUT_KEYS)]


def train_command(launcher: str, spec: RunSpec) -> list[str]:
    prefix = [sys.executable] if launcher.strip() == "python" else shlex.split(launcher)
    return prefix + ["-m", "hybrid_dist.train", "--config", str(_rel(spec.config)), *spec.overrides]


def eval_command(cfg, model_dir: Path, out_dir: Path) -> list[str]:
    """``hybrid_dist.evaluate`` with the trainer's evaluation settings: the same numbers, plus the
    X->Y matrix the trainer's results.json does not keep."""
    cmd = [sys.executable, "-m", "hybrid_dist.evaluate", "--model", str(model_dir), "--benchmark", "xquad-r",
           "--data", cfg.data.path, "--part", cfg.eval.part, "--split", cfg.data.split,
           "--heldout-fraction", str(cfg.data.heldout_fraction), "--batch-size", str(cfg.eval.batch_size),
           "--max-length", str(cfg.model.max_length), "--output-dir", str(out_dir),
           "--no-cache", "--no-heatmap", "--no-progress"]
    if cfg.data.languages:
        cmd += ["--languages", ",".join(cfg.data.languages)]
    if cfg.eval.candidate_context:
        cmd.append("--candidate-context")
    return cmd


def _rel(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _run_logged(cmd: list[str], log: Path) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    started = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n# started {_now()}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.wait()  # the child got the same SIGINT; let it stop
            raise
        f.write(f"# exit {rc} after {time.time() - started:.1f}s\n")
    return rc, time.time() - started


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj, indent=1, clean=True)


def device_info() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "host": platform.node()}
    if torch.cuda.is_available():
        info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
        info["summary"] = f"{len(info['gpu'])} x {info['gpu'][0]} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    else:
        info["summary"] = (f"CPU only: {cpu or 'unknown CPU'}, {os.cpu_count()} cores, {torch.get_num_threads()} "
                           f"torch threads, torch {torch.__version__}")
    return info


def git_info() -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, timeout=20, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(git("status", "--porcelain"))}


def run_record(name: str, history: list[dict], size_line) -> str:
    """RUN.md of an in-process study: one section per invocation (``size_line(invocation)``: its
    size line), with every run's exit code and wall time."""
    lines = [f"# Run record: {name}", ""]
    for i, inv in enumerate(history, 1):
        lines += [f"## Invocation {i}", "", *([inv["note"], ""] if inv.get("note") else []),
                  f"- date: {inv['started']} to {inv['finished']} (UTC); wall time {_fmt_s(inv['wall_s'])}",
                  f"- device: {inv['device']['summary']}",
                  f"- command (repository root): `{inv['command']}`",
                  size_line(inv),
                  f"- git commit: {inv['git']['commit']}" + (" (plus uncommitted changes)"
                                                             if inv['git']['uncommitted_changes'] else ""), "",
                  "| run | seed | exit | wall |", "| --- | ---: | ---: | ---: |",
                  *[f"| {r['arm']} | {r['seed']} | {r['rc']} | {_fmt_s(r['wall_s'])} |" for r in inv["ran"]], ""]
    return "\n".join(lines)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else (f"{m} min {s:02d} s" if m else f"{seconds:.1f} s")


def render_run_md(invocations: list[dict], out: Path) -> str:
    lines = [f"# Study run record: {out.name}", ""]
    sizes = {inv["size"] for inv in invocations}
    if "cpu" in sizes or any(inv.get("overrides") for inv in invocations):
        lines += ["**Not the study.** At least one invocation below used the CPU preset (`--size cpu`) and/or "
                  "command-line overrides that shrink the runs, so these numbers show that the pipeline works, "
                  "not how the arms compare at the issue's reference settings (200 steps x 128 pairs, 11 "
                  "languages, max length 128, 3 seeds).", ""]
    for i, inv in enumerate(invocations, 1):
        lines += [f"## Invocation {i}", ""]
        if inv.get("note"):
            lines += [inv["note"], ""]
        dev = inv["device"]
        lines += [
            f"- date: {inv['started']} to {inv.get('finished') or '(interrupted)'} (UTC)",
            f"- device: {dev['summary']}; {dev['platform']}, Python {dev['python']}, host {dev['host']}",
            f"- command (from the repository root): `{inv['command']}`",
            "- runner: " + ("in-process (every run in one Python process; the heatmaps' X→Y matrices are the "
                            "trainer's own evaluations)" if inv.get("in_process") else "one subprocess per run"),
            f"- size preset: `{inv['size']}` ({SIZES[inv['size']].description})",
            f"- preset overrides: `{' '.join(SIZES[inv['size']].overrides) or '(none)'}`",
            f"- command-line overrides: `{' '.join(inv.get('overrides') or []) or '(none)'}`",
            f"- arms: {', '.join(inv['arms'])}; seeds: {' '.join(map(str, inv['seeds']))}; alpha sweep: "
            f"{' '.join(f'{a:g}' for a in inv['alphas']) or '(none)'}",
            f"- git commit: {inv['git']['commit'] or '?'}"
            + (" (the working tree also had uncommitted changes)" if inv["git"]["uncommitted_changes"] else ""),
            f"- wall time: {_fmt_s(inv.get('wall_s'))}; runs: {len(inv['ran'])} ran, {len(inv['skipped'])} "
            f"skipped (already done), {len(inv['failed'])} failed"
            + (f"; stopped early: {inv['stopped']}" if inv.get("stopped") else ""),
            "",
        ]
        if inv["ran"] or inv["failed"]:
            lines += ["| run | seed | exit | train wall | heatmap eval wall |", "| --- | ---: | ---: | ---: | ---: |"]
            for r in inv["ran"] + inv["failed"]:
                lines.append(f"| {r['name']} | {r['seed']} | {r['rc']} | {_fmt_s(r['wall_s'])} | "
                             f"{_fmt_s(r.get('eval_wall_s'))} |")
            lines.append("")
    lines += ["Outputs: `table.md`, `summary.json`, `alpha_sweep.png`, `heatmap_*.png`; per run "
              "`runs/<arm>/seed<k>/` (results.json from hybrid_dist.train, config.yaml, train.log, run.json, and "
              "eval/results.json with the X→Y matrix for the first seed).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    try:
        specs, sweep = plan(out, args.arm_list, args.seeds, args.alphas, args.size, args.overrides)
        configs = {spec: load_config(spec.config, list(spec.overrides)) for spec in specs}
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data_paths = {c.data.path for c in configs.values()}
    missing = [p for p in data_paths if not Path(p).exists()]
    if missing and not args.dry_run:
        print(f"error: data not found: {missing} (run from the repository root, or override data.path)", file=sys.stderr)
        return 2
    for spec in specs:  # finished runs are reused only if they were made with the same config
        done = spec.dir(out) / "results.json"
        if done.exists():
            saved = json.loads(done.read_text(encoding="utf-8")).get("config", {})
            diffs = config_differences(saved, to_dict(configs[spec]))
            if diffs:
                print(f"error: {done} was made with another config ({'; '.join(diffs[:6])}); use another "
                      "--out, or delete that run directory", file=sys.stderr)
                return 2
    first_seed = {}
    for spec in specs:
        first_seed.setdefault(spec.name, spec.seed)
    command = "python -m experiments.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"{len(specs)} runs ({len({s.name for s in specs})} arms/sweep points x seeds), size {args.size}, "
          f"out {out}")
    if args.dry_run:
        for spec in specs:
            print(f"[{spec.name} seed {spec.seed}] {shlex.join(train_command(args.launcher, spec))}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    history_path = out / "invocations.json"
    history = json.loads(history_path.read_text(encoding="utf-8")) if history_path.exists() else []
    inv = {"started": _now(), "finished": None, "command": command, "in_process": args.in_process,
           "size": args.size, "arms": args.arm_list,
           "seeds": args.seeds, "alphas": args.alphas, "overrides": args.overrides, "note": args.note,
           "device": device_info(), "git": git_info(), "ran": [], "skipped": [], "failed": [], "stopped": None}
    history.append(inv)
    t0 = time.time()
    inv["sweep"] = [list(p) for p in sweep]

    def finish() -> None:
        inv["wall_s"] = time.time() - t0
        _write_json(history_path, history)
        write_outputs(out)  # header, sweep and context from invocations.json
        atomic.write_text(out / "RUN.md", render_run_md(history, out))

    slowest = 0.0
    status = 0
    session = StudySession() if args.in_process else None
    try:
        for i, spec in enumerate(specs, 1):
            d = spec.dir(out)
            cfg = configs[spec]
            label = f"[{i}/{len(specs)}] {spec.name} seed {spec.seed}"
            needs_matrix = spec.seed == first_seed[spec.name]
            if (d / "results.json").exists():  # its config was checked above
                print(f"{label}: done before, skipped")
                inv["skipped"].append({"name": spec.name, "seed": spec.seed})
                if (needs_matrix and not (d / "eval" / "results.json").exists() and (d / "model").exists()
                        and _matrix_eval(cfg, d, label) is not None and not args.keep_models):
                    _remove_weights(d)
                continue
            elapsed = time.time() - t0
            if args.time_budget is not None and slowest and elapsed + slowest > args.time_budget:
                inv["stopped"] = (f"time budget {args.time_budget:.0f}s: {elapsed:.0f}s used, a run takes up to "
                                  f"{slowest:.0f}s; rerun the same command to continue")
                print(f"stopping: {inv['stopped']}")
                break
            meta = {"name": spec.name, "arm": spec.arm, "seed": spec.seed, "alpha": spec.alpha,
                    "config": str(_rel(spec.config)), "overrides": list(spec.overrides),
                    "command": shlex.join(train_command(args.launcher, spec)), "started": _now(), "status": "running"}
            d.mkdir(parents=True, exist_ok=True)
            _write_json(d / "run.json", meta)
            print(f"{label}: training ({shlex.join(train_command(args.launcher, spec)[1:4])} ...)", flush=True)
            evaluation = None
            if session is not None:
                rc, wall, evaluation = train_in_process(session, cfg, d / "train.log")
            else:
                rc, wall = _run_logged(train_command(args.launcher, spec), d / "train.log")
            record = {"name": spec.name, "seed": spec.seed, "rc": rc, "wall_s": wall}
            ok = rc == 0 and (d / "results.json").exists()
            if not ok:
                meta.update(status="failed", rc=rc, wall_s=wall, finished=_now())
                _write_json(d / "run.json", meta)
                inv["failed"].append(record)
                print(f"{label}: FAILED (exit {rc}) after {wall:.0f}s; log: {d / 'train.log'}", file=sys.stderr)
                if rc == PREEMPTED:
                    inv["stopped"] = "preempted (exit 75): rerun the same command to resume"
                    status = PREEMPTED
                    break
                status = 1
                if args.stop_on_error:
                    inv["stopped"] = f"--stop-on-error: {spec.name} seed {spec.seed} failed"
                    break
                continue
            if needs_matrix and session is not None and evaluation is not None:
                write_matrix(evaluation, cfg, d / "eval")  # the trainer's own evaluation: no second one
                record["eval_wall_s"] = 0.0
            elif needs_matrix:
                record["eval_wall_s"] = _matrix_eval(cfg, d, label)
            if not args.keep_models and not (needs_matrix and record.get("eval_wall_s") is None):
                _remove_weights(d)
            meta.update(status="done", rc=rc, wall_s=wall, eval_wall_s=record.get("eval_wall_s"), finished=_now())
            _write_json(d / "run.json", meta)
            inv["ran"].append(record)
            slowest = max(slowest, wall + (record.get("eval_wall_s") or 0.0))
            summ = final_summary(json.loads((d / "results.json").read_text(encoding="utf-8")))[1]
            print(f"{label}: done in {wall:.0f}s: mono {summ['mono_map']:.3f} cross {summ['cross_map']:.3f} "
                  f"multi {summ['multi_map']:.3f} bias {summ['bias_max_rank_distance']:.0f}", flush=True)
            finish()  # tables stay current while the study runs
    except KeyboardInterrupt:
        inv["stopped"] = "interrupted (Ctrl-C); rerun the same command to continue"
        status = 130
    inv["finished"] = _now()
    finish()
    print((out / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/table.md, summary.json, alpha_sweep.png, heatmap_*.png, RUN.md "
          f"({time.time() - t0:.0f}s){'; ' + inv['stopped'] if inv['stopped'] else ''}")
    return status


def _remove_weights(d: Path) -> None:
    """A finished run's model and checkpoints (about 2 GB for e5-small); results and logs stay."""
    for sub in ("checkpoints", "model", "best"):
        shutil.rmtree(d / sub, ignore_errors=True)


def _matrix_eval(cfg, d: Path, label: str) -> float | None:
    print(f"{label}: X->Y matrix evaluation for the heatmap", flush=True)
    rc, wall = _run_logged(eval_command(cfg, d / "model", d / "eval"), d / "eval.log")
    if rc != 0:
        print(f"{label}: matrix evaluation failed (exit {rc}); log: {d / 'eval.log'}", file=sys.stderr)
        return None
    return wall


if __name__ == "__main__":
    sys.exit(main())
