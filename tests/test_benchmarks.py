"""The throughput benchmark runs end to end at its CPU toy size (CI exercises the harness; the
numbers themselves are checked only for consistency, never against a time)."""

from __future__ import annotations

import json
import subprocess
import sys

from cpu_runs import REPO, environment


def test_throughput_benchmark_toy_run(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--preset", "cpu-toy", "--steps", "1",
                           "--warmup", "1", "--out", str(out)], cwd=REPO, env=environment(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["system"] for r in rows] == ["hybrid_dist", "hybrid_dist cached", "ST MNRL", "ST cached MNRL"]
    assert [r["batch"] for r in rows] == [32, 128, 32, 128]
    for r in rows:
        assert r["note"] == "" and r["pairs_per_s"] > 0 and r["peak_memory_gib"] > 0
        # consistency: one step of `batch` pairs in step_s seconds
        assert abs(r["pairs_per_s"] * r["step_s"] - r["batch"]) < 1e-6 * r["batch"]
        assert 0 < r["mfu"] < 1 and 0 <= r["padding"] < 1
        assert r["tokens_per_s"] > r["pairs_per_s"] * 2  # a question and a sentence: several tokens each
    assert report["info"]["peak_tflops"] > 0
    assert "| toy | hybrid_dist cached | 128 | 32 |" in proc.stdout
