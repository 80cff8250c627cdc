"""The throughput benchmark runs end to end at its CPU toy size (CI exercises the harness; the
numbers themselves are checked only for consistency, never against a time)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from cpu_runs import REPO, environment

STEPS, MAX_LENGTH = 1, 128  # the run below; benchmarks/throughput.py's default --max-length
TOY = dict(hidden=64, intermediate=256, layers=2)  # benchmarks/throughput.py SHAPES["toy"]


def non_embedding_params(hidden: int, intermediate: int, layers: int) -> int:
    """A BERT / XLM-R encoder layer: Q, K, V and output projections, the feed-forward pair, two LayerNorms."""
    attention = 4 * (hidden * hidden + hidden)
    feed_forward = (hidden * intermediate + intermediate) + (intermediate * hidden + hidden)
    layer_norms = 2 * 2 * hidden
    return layers * (attention + feed_forward + layer_norms)


@pytest.mark.slow
@pytest.mark.ci_slow  # the benchmark script end to end (about 27 s)
def test_throughput_benchmark_toy_run(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--preset", "cpu-toy", "--steps", str(STEPS),
                           "--warmup", "1", "--out", str(out)], cwd=REPO, env=environment(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    peak = report["info"]["peak_tflops"] * 1e12
    assert math.isfinite(peak) and peak > 0
    assert [r["system"] for r in rows] == ["hybrid_dist", "hybrid_dist cached", "ST MNRL", "ST cached MNRL"]
    assert [r["batch"] for r in rows] == [32, 128, 32, 128]
    for r in rows:
        assert r["note"] == "" and r["shape"] == "toy", r
        for key in ("pairs_per_s", "tokens_per_s", "mfu", "peak_memory_gib", "step_s", "elapsed_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["steps"] == STEPS
        assert r["non_embedding_params"] == non_embedding_params(**TOY)
        # every rate from the raw measurements: STEPS steps of `batch` pairs in elapsed_s seconds
        assert r["step_s"] == pytest.approx(r["elapsed_s"] / STEPS, rel=1e-9)
        assert r["pairs_per_s"] == pytest.approx(r["batch"] * STEPS / r["elapsed_s"], rel=1e-9)
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["elapsed_s"], rel=1e-9)
        # MFU = 6 x non-embedding parameters x tokens/s / peak FLOP/s
        assert r["mfu"] == pytest.approx(6 * non_embedding_params(**TOY) * r["tokens"] / r["elapsed_s"] / peak, rel=1e-6)
        assert 0 < r["mfu"] < 1
        assert r["padding"] == pytest.approx(1 - r["tokens"] / r["positions"], rel=1e-9) and 0 <= r["padding"] < 1
        # a question and a sentence per pair, each at least [CLS] + one piece + [SEP], at most MAX_LENGTH
        assert 2 * 3 * r["batch"] * STEPS <= r["tokens"] <= r["positions"] <= 2 * MAX_LENGTH * r["batch"] * STEPS, r
    # both systems are fed the same pairs: the same real tokens at the same batch
    by = {r["system"]: r for r in rows}
    assert by["hybrid_dist"]["tokens"] == by["ST MNRL"]["tokens"]
    assert by["hybrid_dist cached"]["tokens"] == by["ST cached MNRL"]["tokens"]
    assert by["hybrid_dist cached"]["tokens"] > by["hybrid_dist"]["tokens"]  # 128 pairs against 32
    assert "| toy | hybrid_dist cached | 128 | 32 |" in proc.stdout
