"""summary.md of a device check (benchmarks/device_check.sh): the stages with their exit codes
and times, the environment, the throughput table and the study's table, from the work
directory the script packs.

    python benchmarks/device_summary.py WORKDIR OUT.md [--budget S] [--elapsed S]
    python benchmarks/device_summary.py --check OUTDIR     # what a complete check left (exit 1 if not)
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from hybrid_dist import atomic  # noqa: E402 - after the path insert

STAGES = ("environment", "model", "gpu-tests", "throughput", "study", "zeroshot")
#: what the tarball must hold for a check to count as complete
REQUIRED = ("stages.tsv", "environment.txt", "throughput.json", "study/table.md", "study/summary.json",
            "study/RUN.md", "zeroshot/table.md", "zeroshot/summary.json", *(f"logs/{s}.log" for s in STAGES))


def parse_stages(text: str) -> list[dict]:
    """stages.tsv: name, exit status (or "skipped"), seconds, command; one stage a line."""
    rows = []
    for line in text.splitlines():
        name, status, seconds, command = (line.split("\t") + ["", "", ""])[:4]
        rows.append({"name": name, "status": status, "seconds": seconds, "command": command})
    return rows


def read_stages(work: Path) -> list[dict]:
    path = work / "stages.tsv"
    return parse_stages(path.read_text(encoding="utf-8")) if path.exists() else []


def throughput_table(work: Path) -> str:
    path = work / "throughput.json"
    if not path.exists():
        return "(no throughput.json: see logs/throughput.log)"
    from benchmarks.throughput import Row, markdown

    doc = json.loads(path.read_text(encoding="utf-8"))
    return markdown([Row(**r) for r in doc["rows"]], doc["info"])


def render(work: Path, budget: float | None, elapsed: float | None) -> str:
    lines = ["# Device check", ""]
    if elapsed is not None:
        lines += [f"Finished in {elapsed:.0f} s" + (f" of a {budget:.0f} s budget." if budget else "."), ""]
    lines += ["| stage | exit | seconds | command |", "| --- | ---: | ---: | --- |"]
    for r in read_stages(work):
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']} | `{r['command'][:160]}` |")
    env = work / "environment.txt"
    lines += ["", "## Environment", "", "```", env.read_text(encoding="utf-8").strip() if env.exists() else "(missing)",
              "```", "", "## Training throughput", "", throughput_table(work), "", "## Study", ""]
    table = work / "study" / "table.md"
    lines.append(table.read_text(encoding="utf-8").strip() if table.exists() else "(no study table: see logs/study.log)")
    holdout = work / "zeroshot" / "table.md"
    lines += ["", "## Language hold-out (issue #20)", "",
              holdout.read_text(encoding="utf-8").strip() if holdout.exists() else "(no table: see logs/zeroshot.log)"]
    return "\n".join(lines) + "\n"


def check(outdir: Path) -> list[str]:
    """What is missing from a finished check's OUTDIR (empty: complete)."""
    problems = []
    names = sorted(p.name for p in outdir.iterdir()) if outdir.is_dir() else []
    if names != ["device-check.tar.gz", "summary.md"]:
        problems.append(f"{outdir}: expected device-check.tar.gz and summary.md, found {names}")
    archive = outdir / "device-check.tar.gz"
    if archive.exists():
        with tarfile.open(archive) as tar:
            members = {m.name.removeprefix("./") for m in tar.getmembers()}
            problems += [f"{archive}: no {name}" for name in REQUIRED if name not in members]
            if "stages.tsv" in members:
                stages = parse_stages(tar.extractfile("./stages.tsv").read().decode())
                problems += [f"stage {r['name']} exited {r['status']}" for r in stages if r["status"] != "0"]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--budget", type=float)
    p.add_argument("--elapsed", type=float)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    if args.check:
        problems = check(args.paths[0])
        for problem in problems:
            print(f"device check incomplete: {problem}", file=sys.stderr)
        return 1 if problems else 0
    work, out = args.paths
    atomic.write_text(out, render(work, args.budget, args.elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
