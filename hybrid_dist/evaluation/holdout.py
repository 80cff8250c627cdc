"""Language hold-out cells: every LAReQA metric split by whether the query language and the
passage languages were seen in training.

With the languages split into ``seen`` (``data.train_languages``) and ``unseen`` (the others
evaluated), a cell ``A->B`` (A, B in {seen, unseen}) takes queries in the languages of group A and
passages in the languages of group B:

* ``mono_map`` (A = B only): mean of the X->X mAP over X in A;
* ``cross_map``: mean of the X->Y mAP over X in A, Y in B, X != Y;
* ``multi_map``: the multilingual pool *restricted to group B*: for each query in a language of A
  the pool is every candidate of every language of B, and its relevant candidates are its
  parallel answers in those languages; mean over a language's queries, then over A's languages.
  (Restricting the pool keeps the other group's correct answers from counting as errors.);
* ``bias_max_rank_distance``: in the same B pool, the highest minus the lowest rank of a query's
  parallel answers, averaged like ``multi_map`` (0: the answers in all of B's languages are
  ranked together); queries with fewer than two answers in the pool are left out.

A cell with no language on either side, or (cross) no X != Y pair, is ``nan``. ``mono_map`` does
not exist for seen->unseen and unseen->seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from hybrid_dist.evaluation.metrics import language_bias, nanmean, rank_metrics

GROUPS = ("seen", "unseen")
CELLS = tuple(f"{a}->{b}" for a in GROUPS for b in GROUPS)
CELL_METRICS = ("mono_map", "cross_map", "multi_map", "bias_max_rank_distance")


def language_groups(languages: Sequence[str], seen: Sequence[str]) -> dict[str, list[str]]:
    """``{"seen": [...], "unseen": [...]}`` over ``languages`` (in their order)."""
    seen_set = set(seen)
    return {"seen": [x for x in languages if x in seen_set], "unseen": [x for x in languages if x not in seen_set]}


def pool_ranks(benchmark, query_emb: Mapping[str, np.ndarray], cand_emb: Mapping[str, np.ndarray], x: str,
               pool_langs: Sequence[str], device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the queries of language ``x`` against the pool of ``pool_langs``' candidates: one
    entry per (query, parallel answer in the pool): ``(query index, pool language index, 1-based
    rank in the pool)``; ties broken by pool position (languages in ``pool_langs`` order)."""
    from hybrid_dist.evaluation.lareqa import _pair_ranks, relevant_pairs

    sizes = [len(benchmark.languages[y].sentences) for y in pool_langs]
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    c_pool = torch.as_tensor(np.concatenate([np.asarray(cand_emb[y], dtype=np.float32) for y in pool_langs]),
                             device=device)
    index = {y: {qid: i for i, qid in enumerate(benchmark.languages[y].qids)} for y in pool_langs}
    pq, py, pc = relevant_pairs(benchmark, x, pool_langs, index, offsets)
    q = torch.as_tensor(np.asarray(query_emb[x], dtype=np.float32), device=device)
    _, total = _pair_ranks(q, c_pool, pq, py, pc, offsets, 1 << 24)
    return pq, py, total


def _padded(pq: np.ndarray, ranks: np.ndarray, n_queries: int) -> np.ndarray:
    from hybrid_dist.evaluation.lareqa import _padded as padded

    return padded(pq, ranks.astype(np.float64), n_queries)


def group_cells(benchmark, query_emb, cand_emb, matrix_map: Mapping[str, Mapping[str, float]],
                groups: Mapping[str, Sequence[str]], device: str = "cpu") -> dict:
    """Every cell's metrics (module docstring); ``matrix_map[X][Y]`` is the X->Y mAP of the full
    evaluation. Returns ``{"groups": groups, "cells": {"seen->unseen": {metric: value}, ...}}``."""
    groups = {g: list(groups.get(g, [])) for g in GROUPS}
    cells: dict[str, dict[str, float]] = {}
    per_language: dict[tuple[str, str], dict[str, float]] = {}
    for b in GROUPS:
        pool = groups[b]
        if not pool:
            continue
        for x in benchmark.langs:
            pq, py, ranks = pool_ranks(benchmark, query_emb, cand_emb, x, pool, device)
            nq = len(benchmark.languages[x].qids)
            ap = rank_metrics(_padded(pq, ranks, nq), recall_cutoffs=(), map_cutoffs=())["map"]
            same = np.array([pool[i] == x for i in py], dtype=bool) if len(py) else np.zeros(0, dtype=bool)
            bias = language_bias(pq, ranks, same, nq)["max_rank_distance"]
            bias[np.bincount(pq, minlength=nq) < 2] = np.nan
            per_language[(x, b)] = {"multi_map": nanmean(ap), "bias_max_rank_distance": nanmean(bias)}
    for a in GROUPS:
        for b in GROUPS:
            qs, ps = groups[a], groups[b]
            cell = {"cross_map": nanmean(matrix_map[x][y] for x in qs for y in ps if x != y),
                    "multi_map": nanmean(per_language[(x, b)]["multi_map"] for x in qs if (x, b) in per_language),
                    "bias_max_rank_distance": nanmean(per_language[(x, b)]["bias_max_rank_distance"]
                                                      for x in qs if (x, b) in per_language)}
            if a == b:
                cell = {"mono_map": nanmean(matrix_map[x][x] for x in qs), **cell}
            cells[f"{a}->{b}"] = cell
    return {"groups": groups, "cells": cells}


def flat_cells(groups: Mapping) -> dict[str, float]:
    """The cells as flat summary keys (``seen_to_unseen_multi_map``, ...): what the trainer logs,
    Ray Tune can optimise and ``eval.metric`` can select by."""
    return {f"{cell.replace('->', '_to_')}_{metric}": value
            for cell, metrics in groups.get("cells", {}).items() for metric, value in metrics.items()}


def holdout_metric_names() -> list[str]:
    """Every key ``flat_cells`` can produce (what ``eval.metric`` may name under a language hold-out);
    a mono cell exists only where the query and passage groups are the same."""
    return [f"{a}_to_{b}_{m}" for a in GROUPS for b in GROUPS for m in CELL_METRICS if m != "mono_map" or a == b]
