"""``python -m hybrid_dist.tune --config ray_configs/tiny-cpu.yaml [--address local|auto|ray://host:10001]``

Runs a Ray Tune search (see ray_configs/ and docs/tune.md) and writes, in the experiment
directory: trials.md / trials.csv / trials.json, best.yaml (a training config for
hybrid_dist.train) and alpha-plot.png."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hybrid_dist import atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hybrid_dist.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="search file (ray_configs/*.yaml)")
    parser.add_argument("--address", default="local",
                        help="'local' (start Ray here), 'auto' (the cluster this node belongs to: ray start, "
                             "SLURM, the autoscaler's head) or ray://host:10001 (Ray Client)")
    parser.add_argument("--num-cpus", type=float, help="with --address local: CPUs Ray may schedule (default: all)")
    parser.add_argument("--num-gpus", type=float, help="with --address local: GPUs Ray may schedule")
    parser.add_argument("--storage", help="overrides storage_path: a directory (shared on clusters) or s3:// gs://")
    parser.add_argument("--name", help="experiment name (default: the search file's name)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the experiment of the same name: unfinished and failed trials resume")
    parser.add_argument("overrides", nargs="*",
                        help="key=value on the search file, e.g. search.num_samples=8 overrides.train.max_steps=50")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from hybrid_dist.config import ConfigError
    from hybrid_dist.tune.spec import load_search, search_summary

    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"storage_path={args.storage}"] if args.storage else [])
    try:
        spec = load_search(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        import ray  # noqa: F401
    except ImportError:
        print("error: Ray is not installed: pip install -e '.[tune]'", file=sys.stderr)
        return 2
    import ray

    from hybrid_dist.tune import results as res
    from hybrid_dist.tune.search import connect, experiment_paths, run_search

    paths = experiment_paths(spec, args.name)
    started = time.time()
    try:
        connect(args.address, args.num_cpus, args.num_gpus)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        grid = run_search(spec, paths, resume=args.resume)
        base = spec.training_config()
        rows = res.trial_rows(grid, spec, base.train.max_steps)
    finally:
        ray.shutdown()
    out = Path(paths["results"])
    tables = res.write_tables(rows, spec, out)
    atomic.write_text(out / "search.json", json.dumps({**search_summary(spec), "paths": paths, "address": args.address,
                                                      "wall_s": round(time.time() - started, 1)}, indent=2, default=str))
    best = res.best_row(rows, spec.metric_mode)
    plot = res.plot_alpha(rows, spec, out / "alpha-plot.png")
    print()
    print(tables["markdown"].read_text())
    counts = {s: sum(r["status"] == s for r in rows) for s in (res.COMPLETED, res.STOPPED, res.ERROR, res.INCOMPLETE)}
    print("trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if counts[res.INCOMPLETE]:
        print("the search did not finish: continue it with --resume (same --config, --storage and --name)")
    if best is None:
        print("no trial reported the metric; no best.yaml written", file=sys.stderr)
        return 1
    best_yaml = res.write_best_config(best, spec, out / "best.yaml", output_dir=f"runs/{paths['name']}-best")
    print(f"best: {best['trial_id']} {spec.metric}={best['metric']:.4f} {best['params']}")
    print(f"best config: {best_yaml}   (python -m hybrid_dist.train --config {best_yaml})")
    print(f"tables: {tables['markdown']}, {tables['csv']}, {tables['json']}")
    if plot is not None:
        print(f"plot: {plot}")
    print(f"wall time: {time.time() - started:.0f}s")
    return 0 if counts[res.ERROR] < len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
