"""The one-call device check (benchmarks/device_check.sh), rehearsed end to end on the CPU at toy
size: every stage runs, with the carried bundle and the data from its archive only, and the two
files that come back from the device tool hold everything (the GPU tests skip themselves here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.ci_slow  # about 2 min
@pytest.mark.timeout(1200)  # its subprocess may take 900 s, after the device bundle's 900 s build
def test_rehearsal_produces_the_complete_check(tmp_path, device_bundle):
    out = tmp_path / "out"
    env = dict(os.environ, REHEARSE="1", BUNDLE=str(device_bundle), PYTHON=sys.executable, TMPDIR=str(tmp_path))
    env.pop("HYBRID_DIST_CACHE", None)
    proc = subprocess.run(["bash", "benchmarks/device_check.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    check = subprocess.run([sys.executable, "benchmarks/device_summary.py", "--check", str(out)], cwd=REPO,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, proc.stdout[-4000:] + check.stderr
    assert sorted(p.name for p in out.iterdir()) == ["device-check.tar.gz", "summary.md"]
    with tarfile.open(out / "device-check.tar.gz") as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers()}
        summary = json.load(tar.extractfile("./study/summary.json"))
        env_txt = tar.extractfile("./environment.txt").read().decode()
        tests_log = tar.extractfile("./logs/gpu-tests.log").read().decode()
    assert not any(n.startswith(("cache/", "data/")) for n in names)  # the model and data stay behind
    assert set(summary["arms"]) == {"zero-shot", "xx-mono", "hybrid"}
    assert all(r["summary"]["multi_map"] > 0.1 for r in summary["runs"])  # the pruned e5, not a random model
    assert "GPU: none" in env_txt and "skipped" in tests_log
    text = (out / "summary.md").read_text()
    assert "| study | 0 |" in text and "## Training throughput" in text and "hybrid_dist" in text
    assert "| zeroshot | 0 |" in text and "seen->unseen" in text  # the language hold-out ran after the study
    with tarfile.open(out / "device-check.tar.gz") as tar:
        holdout = json.load(tar.extractfile("./zeroshot/summary.json"))
    assert set(holdout["arms"]) == {"zero-shot", "hybrid", "hybrid+retention"}
    assert not list(tmp_path.glob("device-check.*"))  # the work directory is removed
