"""experiments/research_question.py: the study's table pairs seeds and differences them per seed."""

from __future__ import annotations

import json
import statistics

from experiments.research_question import ARMS, METRICS, aggregate, format_table


def _write(out, arm, seed, value):
    d = out / "runs" / arm / f"seed{seed}"
    d.mkdir(parents=True)
    summary = {key: value + 0.01 * i for i, (_, key, _) in enumerate(METRICS)}
    (d / "results.json").write_text(json.dumps({"results": {"step 30 (fine-tuned)": summary}}))


def test_paired_seeds_and_differences(tmp_path):
    values = {"infonce+mono": [0.50, 0.52, 0.51], "infonce+hybrid": [0.55, 0.54, 0.56], "mlloss+hybrid": [0.60, 0.61]}
    _write(tmp_path, "zero-shot", 0, 0.40)
    for arm, vs in values.items():
        for seed, v in enumerate(vs):
            _write(tmp_path, arm, seed, v)
    agg = aggregate(tmp_path)
    assert agg["paired_seeds"] == [0, 1]  # seed 2 lacks mlloss+hybrid: left out of every arm
    key = "scifact/ndcg@10"
    offset = 0.01 * [k for _, k, _ in METRICS].index(key)
    assert agg["arms"]["infonce+mono"][key]["mean"] == statistics.mean([0.50 + offset, 0.52 + offset])
    diffs = [0.60 - 0.55, 0.61 - 0.54]
    d = agg["differences"]["mlloss+hybrid - infonce+hybrid"][key]
    assert abs(d["mean"] - statistics.mean(diffs)) < 1e-12 and abs(d["std"] - statistics.stdev(diffs)) < 1e-12
    table = format_table(agg)
    assert "| SciFact nDCG@10 |" in table and "+0.060 ± 0.014 (+0.050..+0.070)" in table
    assert set(ARMS) <= set(agg["arms"])
