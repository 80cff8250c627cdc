"""Retrieval metrics.

Two kinds:

* **Rank-based LAReQA metrics**, computed from the 1-based ranks of each query's relevant
  candidates in the *full* ranking of the pool (so mAP is exact, not cut at a depth). The
  definitions are trec_eval's (and therefore ``ir_measures``'): ``AP`` divides by the number of
  relevant candidates, ``AP@k`` is trec_eval's ``map_cut_k`` (the same denominator), ``R@k`` is the
  fraction of the relevant candidates found in the top ``k``. A test cross-checks them against
  ``ir_measures``.
* **Standard IR metrics** over a run (``{qid: {docid: score}}``) and qrels, computed with
  ``ir_measures`` (which calls ``pytrec_eval``): nDCG@10, R@100, MAP, MRR@10, R@1000, ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: metric name in our reports -> ir_measures measure string
TREC_MEASURES = {
    "ndcg@10": "nDCG@10",
    "recall@100": "R@100",
    "recall@1000": "R@1000",
    "map": "AP",
    "map@100": "AP@100",
    "mrr@10": "RR@10",
}

# ----------------------------------------------------------------------------- rank metrics


def pad_ranks(ranks: Sequence[Sequence[int]]) -> np.ndarray:
    """Per-query lists of relevant ranks -> a ``(queries, max relevant)`` float array, each row
    sorted ascending and padded with ``inf``."""
    width = max((len(r) for r in ranks), default=0)
    out = np.full((len(ranks), max(width, 1)), np.inf)
    for i, r in enumerate(ranks):
        if len(r):
            out[i, : len(r)] = np.sort(np.asarray(r, dtype=np.float64))
    return out


def rank_metrics(
    ranks: np.ndarray,
    recall_cutoffs: Iterable[int] = (1, 10),
    map_cutoffs: Iterable[int] = (20,),
) -> dict[str, np.ndarray]:
    """Per-query ``map``, ``map@k`` and ``r@k`` from padded ranks (see :func:`pad_ranks`).

    ``ranks[i]`` holds the 1-based ranks of query ``i``'s relevant candidates in the full
    ranking, ascending, ``inf``-padded. A query with no relevant candidate gets ``nan``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be 2-D (queries x relevant), got shape {ranks.shape}")
    finite = np.isfinite(ranks)
    n_rel = finite.sum(1).astype(np.float64)
    if ranks.shape[1] > 1 and np.any(np.where(finite[:, 1:], ranks[:, 1:] < ranks[:, :-1], False)):
        raise ValueError("each row of ranks must be sorted ascending")
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)[None, :]
        precision = np.where(finite, position / np.where(finite, ranks, 1.0), 0.0)
        out = {"map": precision.sum(1) / n_rel}
        for k in map_cutoffs:
            out[f"map@{k}"] = np.where(ranks <= k, precision, 0.0).sum(1) / n_rel
        for k in recall_cutoffs:
            out[f"r@{k}"] = (ranks <= k).sum(1) / n_rel
    for v in out.values():
        v[n_rel == 0] = np.nan
    return out


def language_bias(
    query: np.ndarray, ranks: np.ndarray, same_language: np.ndarray, n_queries: int
) -> dict[str, np.ndarray]:
    """Language-bias measures for queries in a multilingual pool, from one entry per (query,
    relevant candidate): ``query[i]`` the query's index, ``ranks[i]`` the candidate's 1-based rank
    in the pool, ``same_language[i]`` whether the candidate is in the query's language.

    Returns per query (length ``n_queries``)

    * ``max_rank_distance``: the highest minus the lowest rank of the query's relevant
      candidates (its parallel answers): 0 when the answers in every language are ranked
      together, large when the model groups candidates by language;
    * ``same_minus_other``: the mean rank of the same-language relevant candidates minus the mean
      rank of the other languages' ones (negative: the model prefers the query's language).

    Both are ``nan`` for a query without any other-language relevant candidate (no parallel), and
    ``same_minus_other`` also for one without a same-language relevant candidate."""
    query = np.asarray(query, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.float64)
    same = np.asarray(same_language, dtype=bool)
    hi = np.full(n_queries, -np.inf)
    lo = np.full(n_queries, np.inf)
    np.maximum.at(hi, query, ranks)
    np.minimum.at(lo, query, ranks)
    n_same = np.bincount(query, weights=same.astype(np.float64), minlength=n_queries)
    n_other = np.bincount(query, weights=(~same).astype(np.float64), minlength=n_queries)
    sum_same = np.bincount(query, weights=np.where(same, ranks, 0.0), minlength=n_queries)
    sum_other = np.bincount(query, weights=np.where(same, 0.0, ranks), minlength=n_queries)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(n_other >= 1, hi - lo, np.nan)
        same_minus_other = np.where((n_same >= 1) & (n_other >= 1), sum_same / n_same - sum_other / n_other, np.nan)
    return {"max_rank_distance": distance, "same_minus_other": same_minus_other}


def nanmean(values: Iterable[float]) -> float:
    """Mean ignoring nan; nan when nothing is left (never warns)."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# ----------------------------------------------------------------------------- trec metrics


def trec_evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Iterable[str] = ("ndcg@10", "recall@100", "map"),
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate and per-query values of ``metrics`` (our names, see :data:`TREC_MEASURES`, or
    any ``ir_measures`` measure string) with ``ir_measures``.

    Every query in ``qrels`` with at least one relevant (grade >= 1) document counts: one
    missing from ``run`` scores 0 (trec_eval ``-c``) instead of being silently dropped from the
    average. Queries with no relevant document are left out, as trec_eval does."""
    try:
        import ir_measures
    except ImportError as e:
        raise ImportError("TREC metrics (BEIR, MIRACL, MS MARCO) need ir_measures: "
                          "pip install 'hybrid-dist[eval]'") from e

    names = list(metrics)
    measures = {name: ir_measures.parse_measure(TREC_MEASURES.get(name, name)) for name in names}
    by_measure = {m: name for name, m in measures.items()}
    qrels_in = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()
                if any(int(r) >= 1 for r in docs.values())}
    run_in = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items() if str(q) in qrels_in}
    per_query: dict[str, dict[str, float]] = {q: {name: 0.0 for name in names} for q in qrels_in}
    if run_in:
        for m in ir_measures.iter_calc(list(measures.values()), qrels_in, run_in):
            per_query[m.query_id][by_measure[m.measure]] = float(m.value)
    aggregate = {name: nanmean(per_query[q][name] for q in per_query) for name in names}
    return aggregate, per_query
