"""Metric definitions on small hand-made rankings with known answers, and against ir_measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_dist.evaluation.metrics import language_bias, nanmean, pad_ranks, rank_metrics, trec_evaluate


def test_rank_metrics_known_values():
    ranks = pad_ranks([[1, 3], [2], [25], [3, 1], []])
    m = rank_metrics(ranks, recall_cutoffs=(1, 2, 10), map_cutoffs=(2, 20))
    # query 0: relevant at 1 and 3 -> AP = (1/1 + 2/3) / 2
    assert m["map"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map@2"][0] == pytest.approx(0.5)  # only the first is in the top 2; denominator stays 2
    assert m["map@20"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert m["r@1"][0] == 0.5 and m["r@2"][0] == 0.5 and m["r@10"][0] == 1.0
    # query 1: single relevant at 2
    assert m["map"][1] == pytest.approx(0.5) and m["r@1"][1] == 0 and m["r@2"][1] == 1
    # query 2: single relevant at 25: counted by full mAP, not by mAP@20 or R@10
    assert m["map"][2] == pytest.approx(1 / 25) and m["map@20"][2] == 0 and m["r@10"][2] == 0
    # unsorted input rows are sorted by pad_ranks
    assert m["map"][3] == pytest.approx(m["map"][0])
    # no relevant candidate: nan, and nanmean skips it
    assert all(math.isnan(v[4]) for v in m.values())
    assert nanmean(m["r@10"]) == pytest.approx((1 + 1 + 0 + 1) / 4)


def test_rank_metrics_rejects_unsorted_rows():
    with pytest.raises(ValueError, match="sorted"):
        rank_metrics(np.array([[3.0, 1.0]]))


def test_language_bias_known_values():
    # (query, rank, same language?) per relevant candidate in the pool
    entries = [
        (0, 1, True), (0, 5, False), (0, 3, False),  # same 1, others 5 and 3
        (1, 10, True), (1, 2, False),                 # no parallel in a third language: fine
        (2, 7, True),                                 # no parallel at all: undefined
        (3, 4, True), (3, 9, True), (3, 6, False),    # a two-sentence answer in its own language
    ]
    q, r, same = (np.array(col) for col in zip(*entries))
    b = language_bias(q, r, same, n_queries=5)        # query 4 has no entries
    assert b["max_rank_distance"][0] == 4 and b["same_minus_other"][0] == pytest.approx(1 - 4)
    assert b["max_rank_distance"][1] == 8 and b["same_minus_other"][1] == pytest.approx(10 - 2)
    assert math.isnan(b["max_rank_distance"][2]) and math.isnan(b["same_minus_other"][2])
    assert b["max_rank_distance"][3] == 9 - 4 and b["same_minus_other"][3] == pytest.approx(6.5 - 6)
    assert math.isnan(b["max_rank_distance"][4])
    assert nanmean(b["max_rank_distance"]) == pytest.approx((4 + 8 + 5) / 3)


def test_rank_metrics_match_ir_measures_on_random_rankings():
    ir_measures = pytest.importorskip("ir_measures")
    rng = np.random.default_rng(7)
    n_docs, n_queries = 60, 40
    qrels, run, ranks = {}, {}, []
    for q in range(n_queries):
        scores = rng.standard_normal(n_docs)  # continuous: no ties
        relevant = rng.choice(n_docs, size=rng.integers(1, 5), replace=False)
        order = np.argsort(-scores)
        position = np.empty(n_docs, dtype=int)
        position[order] = np.arange(1, n_docs + 1)
        ranks.append(position[relevant])
        qrels[f"q{q}"] = {f"d{d}": 1 for d in relevant}
        run[f"q{q}"] = {f"d{d}": float(scores[d]) for d in range(n_docs)}
    ours = rank_metrics(pad_ranks(ranks), recall_cutoffs=(1, 10), map_cutoffs=(20,))
    from ir_measures import AP, R

    theirs: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc([AP, AP @ 20, R @ 1, R @ 10], qrels, run):
        theirs.setdefault(str(m.measure), {})[m.query_id] = m.value
    for name, measure in (("map", "AP"), ("map@20", "AP@20"), ("r@1", "R@1"), ("r@10", "R@10")):
        expected = [theirs[measure][f"q{q}"] for q in range(n_queries)]
        np.testing.assert_allclose(ours[name], expected, rtol=1e-9, atol=1e-12, err_msg=name)


def test_trec_evaluate_known_values_and_missing_queries():
    qrels = {"q1": {"a": 1, "c": 1}, "q2": {"x": 2}, "q3": {"z": 1}, "q4": {"n": 0}}
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"y": 1.0, "x": 0.5}}  # q3 retrieved nothing
    agg, per_q = trec_evaluate(qrels, run, ["map", "mrr@10", "recall@100", "ndcg@10"])
    assert per_q["q1"]["map"] == pytest.approx((1 + 2 / 3) / 2)
    assert per_q["q2"]["mrr@10"] == pytest.approx(0.5)
    assert per_q["q3"] == {"map": 0.0, "mrr@10": 0.0, "recall@100": 0.0, "ndcg@10": 0.0}
    assert "q4" not in per_q  # no relevant document: not evaluated (as trec_eval)
    assert agg["recall@100"] == pytest.approx(2 / 3)
    # nDCG@10 of q1: gains at ranks 1 and 3; ideal at 1 and 2
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert per_q["q1"]["ndcg@10"] == pytest.approx(ndcg_q1)
    assert agg["ndcg@10"] == pytest.approx((ndcg_q1 + 1 / math.log2(3) + 0) / 3)
