"""LAReQA-style answer-sentence retrieval (XQuAD-R, MLQA-R).

Every sentence of every paragraph is a candidate (optionally encoded together with its
paragraph); a question's relevant candidates are the sentences its answer span overlaps, in the
language of the pool. Questions are parallel across languages by id. Settings:

* ``X->X`` (monolingual) and ``X->Y``, ``X != Y`` (cross-lingual): queries in ``X``, the pool is
  every candidate of ``Y``; relevant are the answer sentences of the parallel question in ``Y``
  (queries without a parallel in ``Y`` are skipped);
* ``X->multi``: the pool is every language's candidates together; relevant are the answer
  sentences of the parallel questions in all languages.

Ranks are exact ranks in the full pool (ties broken by candidate position: languages in sorted
order, then file order), so mAP is not truncated. Metrics per setting are means over queries;
the summary macro-averages settings per family. Language bias is measured in the multilingual
pool from the ranks of each query's relevant candidates (its parallel answers): the highest
minus the lowest rank, and the mean same-language minus the mean other-language rank; both are
averaged over a language's queries, then over languages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hybrid_dist.data.records import DataError
from hybrid_dist.data.split import ArticleSplit
from hybrid_dist.data.squad import SquadArticle, article_order, language_files, read_squad_articles
from hybrid_dist.evaluation.encode import encode_texts, model_fingerprint
from hybrid_dist.evaluation.metrics import language_bias, nanmean, rank_metrics
from hybrid_dist.evaluation.search import resolve_device

log = logging.getLogger(__name__)

XQUAD_R_LANGUAGES = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
MLQA_R_LANGUAGES = ["ar", "de", "en", "es", "hi", "vi", "zh"]
#: per-setting metrics; the summary holds ``{mono,cross,multi}_{metric}``
PAIR_METRICS = ("map", "map@20", "r@1", "r@10")
FAMILIES = ("mono", "cross", "multi")
BIAS_METRICS = ("max_rank_distance", "same_minus_other")


def summary_metric_names() -> list[str]:
    """The keys of ``LareqaResult.summary`` (what ``eval.metric`` may name)."""
    return ([f"{setting}_{m}" for setting in ("mono", "cross", "multi") for m in PAIR_METRICS]
            + [f"bias_{k}" for k in BIAS_METRICS])


# ----------------------------------------------------------------------------- benchmark


@dataclass
class LareqaLanguage:
    """One language's questions and candidate pool."""

    lang: str
    qids: list[str]
    questions: list[str]
    sentences: list[str]
    contexts: list[str]  # the paragraph of each candidate sentence
    relevant: list[tuple[int, ...]]  # per question: indices into ``sentences``

    def candidate_texts(self, with_context: bool = False) -> list[str]:
        """Sentence alone, or ``sentence\\nparagraph`` (the form training uses for
        ``passage_text="sentence_and_paragraph"``)."""
        if with_context:
            return [f"{s}\n{c}" for s, c in zip(self.sentences, self.contexts)]
        return list(self.sentences)


@dataclass
class LareqaBenchmark:
    name: str
    source: str
    languages: dict[str, LareqaLanguage]
    part: str = "all"
    split: dict | None = None
    articles: list[str] = field(default_factory=list)

    @property
    def langs(self) -> list[str]:
        return list(self.languages)

    def counts(self) -> dict:
        return {
            "questions": {lang: len(v.qids) for lang, v in self.languages.items()},
            "candidates": {lang: len(v.sentences) for lang, v in self.languages.items()},
            "articles": len(self.articles),
        }


def build_lareqa(
    parsed: Mapping[str, Sequence[SquadArticle]],
    articles: set[str] | None = None,
    name: str = "lareqa",
    source: str = "",
    part: str = "all",
    split: ArticleSplit | None = None,
) -> LareqaBenchmark:
    """A benchmark from parsed SQuAD-format data (language -> articles), keeping only the
    articles named in ``articles`` (all when ``None``)."""
    langs = sorted(parsed)
    if not langs:
        raise DataError(source or name, None, None, "no languages")
    out: dict[str, LareqaLanguage] = {}
    kept_titles: dict[str, None] = {}
    for lang in langs:
        qids, questions, sentences, contexts, relevant = [], [], [], [], []
        seen_q: set[str] = set()
        for article in parsed[lang]:
            if articles is not None and article.title not in articles:
                continue
            kept_titles.setdefault(article.title, None)
            for para in article.paragraphs:
                base = len(sentences)
                sentences.extend(para.sentences)
                contexts.extend([para.context] * len(para.sentences))
                for q in para.questions:
                    if q.qid in seen_q:
                        raise DataError(f"{source or name} ({lang})", f"article {article.title!r}", "id",
                                        f"question id {q.qid!r} appears twice")
                    seen_q.add(q.qid)
                    qids.append(q.qid)
                    questions.append(q.question)
                    relevant.append(tuple(base + i for i in q.answer_sentences))
        if not qids:
            raise DataError(f"{source or name} ({lang})", None, None,
                            f"no questions left in the '{part}' part of the article split")
        out[lang] = LareqaLanguage(lang, qids, questions, sentences, contexts, relevant)
    return LareqaBenchmark(name, source, out, part, asdict(split) if split else None, list(kept_titles))


_PARSE_MEMO: dict[tuple, tuple[dict[str, list[SquadArticle]], list[str]]] = {}


def _read_dir_memo(data_dir: Path, languages: list[str] | None) -> tuple[dict[str, list[SquadArticle]], list[str]]:
    """``read_squad_articles`` (the article identity training uses too) memoised on the files'
    paths, sizes and mtimes, so the training loop parses the benchmark once."""
    files = language_files(data_dir)
    language_files(data_dir, languages)  # a missing language is an error naming the directory
    key = (tuple(languages or ()),) + tuple(
        (lang, str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for lang, p in files.items())
    if key not in _PARSE_MEMO:
        if len(_PARSE_MEMO) > 8:
            _PARSE_MEMO.clear()
        _PARSE_MEMO[key] = read_squad_articles(data_dir, languages)
    return _PARSE_MEMO[key]


def select_articles(parsed: Mapping[str, Sequence[SquadArticle]], split: ArticleSplit | None, part: str,
                    order: Sequence[str] | None = None) -> set[str] | None:
    """The article titles of ``part`` under ``split`` (same order and rule the training side uses;
    ``order``: the directory's article order, else the order over ``parsed``)."""
    if part not in ("train", "heldout", "all"):
        raise ValueError(f"part must be 'train', 'heldout' or 'all', got {part!r}")
    if part == "all":
        return None
    split = split or ArticleSplit()
    return split.select(list(order) if order is not None else article_order(dict(parsed)), part)


def load_lareqa(
    data_dir: str | Path,
    languages: list[str] | None = None,
    split: ArticleSplit | None = None,
    part: str = "heldout",
    name: str = "xquad-r",
) -> LareqaBenchmark:
    """Read a directory of SQuAD-format files (one per language, parallel by question id) as a
    LAReQA benchmark restricted to one part of the article split (``split=None``: the default
    ``ArticleSplit()``, i.e. parity)."""
    data_dir = Path(data_dir)
    parsed, order = _read_dir_memo(data_dir, languages)
    chosen = select_articles(parsed, split, part, order)
    if part != "all":
        split = split or ArticleSplit()
    return build_lareqa(parsed, chosen, name=name, source=str(data_dir), part=part, split=split)


def heldout_overlap(train_ids, benchmark: LareqaBenchmark) -> set[str]:
    """Question ids that are both training groups and questions of ``benchmark``."""
    ids = set(train_ids)
    return {qid for lang in benchmark.languages.values() for qid in lang.qids if qid in ids}


# ----------------------------------------------------------------------------- result


@dataclass
class LareqaResult:
    """Every number of one LAReQA evaluation.

    ``summary``: flat ``{family}_{metric}`` (e.g. ``mono_map``, ``cross_r@10``, ``multi_map@20``)
    and ``bias_max_rank_distance``, ``bias_same_minus_other``. ``matrix[metric][X][Y]``: the X->Y
    value (diagonal = monolingual). ``multi[metric][X]``: X->multilingual pool.
    ``bias[X]``: bias metrics for queries in X. ``n_queries[X][Y]`` / ``n_queries_multi[X]``:
    queries scored per setting."""

    benchmark: str
    languages: list[str]
    summary: dict[str, float]
    matrix: dict[str, dict[str, dict[str, float]]]
    multi: dict[str, dict[str, float]]
    bias: dict[str, dict[str, float]]
    n_queries: dict[str, dict[str, int]]
    n_queries_multi: dict[str, int]
    counts: dict
    config: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # language hold-out: {"groups": {"seen": [...], "unseen": [...]}, "cells": {"seen->unseen": {...}}}
    # (evaluation/holdout.py); empty when no language groups were given
    groups: dict = field(default_factory=dict)

    @property
    def n_settings(self) -> int:
        """Number of X->Y settings evaluated (mono + cross; 121 for XQuAD-R)."""
        return sum(1 for x in self.n_queries for y in self.n_queries[x] if self.n_queries[x][y] > 0)

    def matrix_array(self, metric: str = "map") -> np.ndarray:
        return np.array([[self.matrix[metric][x][y] for y in self.languages] for x in self.languages])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = "lareqa"
        d["n_settings"] = self.n_settings
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "LareqaResult":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- scoring


def _padded(query_idx: np.ndarray, values: np.ndarray, n_queries: int) -> np.ndarray:
    """Group ``values`` by ``query_idx`` into an ``(n_queries, width)`` array, each row sorted
    ascending and ``inf``-padded."""
    if len(values) == 0:
        return np.full((n_queries, 1), np.inf)
    order = np.lexsort((values, query_idx))
    q, v = query_idx[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(q)) + 1]
    counts = np.diff(np.r_[starts, len(q)])
    pos = np.arange(len(q)) - np.repeat(starts, counts)
    out = np.full((n_queries, int(counts.max())), np.inf)
    out[q, pos] = v
    return out


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Ascending sort of each row. On the CPU numpy's SIMD sort is many times faster than
    ``torch.sort``; on a GPU torch's is used."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


@torch.no_grad()
def relevant_pairs(benchmark, x: str, pool_langs, qid_index, offsets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per (query of language ``x``, relevant candidate in the pool of ``pool_langs``):
    ``(query index, pool language index, candidate row in the concatenated pool)``."""
    pq, py, pc = [], [], []
    for i, qid in enumerate(benchmark.languages[x].qids):
        for yi, y in enumerate(pool_langs):
            j = qid_index[y].get(qid)
            if j is None:
                continue
            for c in benchmark.languages[y].relevant[j]:
                pq.append(i)
                py.append(yi)
                pc.append(offsets[yi] + c)
    return tuple(np.asarray(a, dtype=np.int64) for a in (pq, py, pc))


def _pair_ranks(
    q: torch.Tensor,
    c_all: torch.Tensor,
    pq: np.ndarray,
    py: np.ndarray,
    pc: np.ndarray,
    offsets: np.ndarray,
    max_elems: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each (query ``pq``, relevant candidate ``pc`` of language block ``py``): its 1-based
    rank within its own language block and within the whole pool. ``pq`` must be sorted.

    Each query's scores are sorted once per language block; a relevant candidate's count of
    better-scored candidates per block is then a binary search (exact ties, from duplicate
    candidates, are broken by pool position in a slow path that only they take)."""
    n = c_all.shape[0]
    n_blocks = len(offsets) - 1
    own = np.empty(len(pq), dtype=np.int64)
    total = np.empty(len(pq), dtype=np.int64)
    if len(pq) == 0:
        return own, total
    device = c_all.device
    q_starts = np.r_[0, np.flatnonzero(np.diff(pq)) + 1]  # first pair of each query run
    rows_per_chunk = max(1, max_elems // max(n, 1))
    for r0 in range(0, len(q_starts), rows_per_chunk):
        runs = q_starts[r0 : r0 + rows_per_chunk]
        start = int(runs[0])
        end = int(q_starts[r0 + rows_per_chunk]) if r0 + rows_per_chunk < len(q_starts) else len(pq)
        queries = pq[runs]
        # (row, slot) of each pair in this chunk
        row = np.repeat(np.arange(len(runs)), np.diff(np.r_[runs, end]))
        slot = np.arange(start, end) - runs[row]
        scores = q[torch.as_tensor(queries, device=device)] @ c_all.T  # (rows, pool)
        cols = torch.as_tensor(pc[start:end], device=device)
        row_t = torch.as_tensor(row, device=device)
        target = scores[row_t, cols]
        targets = torch.full((len(runs), int(slot.max()) + 1), float("inf"), device=device)
        targets[row_t, torch.as_tensor(slot, device=device)] = target
        greater = np.empty((end - start, n_blocks), dtype=np.int64)
        equal = np.empty((end - start, n_blocks), dtype=np.int64)
        for b in range(n_blocks):
            block = scores[:, offsets[b] : offsets[b + 1]].contiguous()
            sorted_block = _sort_rows(block)
            at_most = torch.searchsorted(sorted_block, targets, right=True)
            below = torch.searchsorted(sorted_block, targets, right=False)
            size = offsets[b + 1] - offsets[b]
            greater[:, b] = (size - at_most).cpu().numpy()[row, slot]
            equal[:, b] = (at_most - below).cpu().numpy()[row, slot]
        blocks = py[start:end]
        equal[np.arange(end - start), blocks] -= 1  # the candidate itself
        for i in np.flatnonzero(equal.sum(1) > 0):  # exact ties: lower pool position first
            c = int(pc[start + i])
            same = (scores[row[i], :c] == target[i]).cpu().numpy()
            for b in range(n_blocks):
                greater[i, b] += int(same[offsets[b] : offsets[b + 1]].sum())
        own[start:end] = greater[np.arange(end - start), blocks] + 1
        total[start:end] = greater.sum(1) + 1
    return own, total


def score_lareqa(
    benchmark: LareqaBenchmark,
    query_emb: Mapping[str, np.ndarray],
    cand_emb: Mapping[str, np.ndarray],
    device: str | None = None,
    max_elems: int = 1 << 24,
    language_groups: Mapping[str, Sequence[str]] | None = None,
) -> LareqaResult:
    """Every setting's metrics from precomputed embeddings (``lang -> (n, dim)`` arrays in the
    benchmark's question / candidate order). ``language_groups`` (``{"seen": [...], "unseen":
    [...]}``): also the seen/unseen cells of a language hold-out (``result.groups``)."""
    langs = benchmark.langs
    dev = resolve_device(device)
    sizes = [len(benchmark.languages[lang].sentences) for lang in langs]
    for lang in langs:
        nq, nc = len(benchmark.languages[lang].qids), len(benchmark.languages[lang].sentences)
        if len(query_emb[lang]) != nq or len(cand_emb[lang]) != nc:
            raise ValueError(f"{lang}: embeddings for {len(query_emb[lang])} questions / {len(cand_emb[lang])} "
                             f"candidates, benchmark has {nq} / {nc}")
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    c_all = torch.as_tensor(np.concatenate([cand_emb[lang] for lang in langs]), dtype=torch.float32, device=dev)
    qid_index = {lang: {qid: i for i, qid in enumerate(benchmark.languages[lang].qids)} for lang in langs}

    matrix = {m: {x: {} for x in langs} for m in PAIR_METRICS}
    multi = {m: {} for m in PAIR_METRICS}
    n_queries: dict[str, dict[str, int]] = {x: {} for x in langs}
    n_queries_multi: dict[str, int] = {}
    bias: dict[str, dict[str, float]] = {}
    for xi, x in enumerate(langs):
        lx = benchmark.languages[x]
        pq, py, pc = relevant_pairs(benchmark, x, langs, qid_index, offsets)
        q = torch.as_tensor(np.asarray(query_emb[x], dtype=np.float32), device=dev)
        own, total = _pair_ranks(q, c_all, pq, py, pc, offsets, max_elems)
        nq = len(lx.qids)
        for yi, y in enumerate(langs):
            m = py == yi
            ranks = _padded(pq[m], own[m].astype(np.float64), nq)
            per_q = rank_metrics(ranks, recall_cutoffs=(1, 10), map_cutoffs=(20,))
            n_queries[x][y] = int(np.isfinite(ranks[:, 0]).sum())
            for metric in PAIR_METRICS:
                matrix[metric][x][y] = nanmean(per_q[metric])
        ranks = _padded(pq, total.astype(np.float64), nq)
        per_q = rank_metrics(ranks, recall_cutoffs=(1, 10), map_cutoffs=(20,))
        n_queries_multi[x] = int(np.isfinite(ranks[:, 0]).sum())
        for metric in PAIR_METRICS:
            multi[metric][x] = nanmean(per_q[metric])
        b = language_bias(pq, total, py == xi, nq)
        bias[x] = {k: nanmean(v) for k, v in b.items()}

    summary: dict[str, float] = {}
    for metric in PAIR_METRICS:
        summary[f"mono_{metric}"] = nanmean(matrix[metric][x][x] for x in langs)
        summary[f"cross_{metric}"] = nanmean(matrix[metric][x][y] for x in langs for y in langs if x != y)
        summary[f"multi_{metric}"] = nanmean(multi[metric][x] for x in langs)
    for k in BIAS_METRICS:
        summary[f"bias_{k}"] = nanmean(bias[x][k] for x in langs)
    counts = benchmark.counts()
    counts["pool"] = int(offsets[-1])
    groups = {}
    if language_groups is not None:
        from hybrid_dist.evaluation.holdout import group_cells

        groups = group_cells(benchmark, query_emb, cand_emb, matrix["map"], language_groups, dev)
    return LareqaResult(
        benchmark=benchmark.name,
        languages=langs,
        summary=summary,
        matrix=matrix,
        multi=multi,
        bias=bias,
        n_queries=n_queries,
        n_queries_multi=n_queries_multi,
        counts=counts,
        config={"source": benchmark.source, "part": benchmark.part, "split": benchmark.split},
        groups=groups,
    )


# ----------------------------------------------------------------------------- evaluation


def encode_benchmark(
    model,
    benchmark: LareqaBenchmark,
    candidate_context: bool = False,
    batch_size: int = 64,
    show_progress: bool = False,
    cache_dir: str | Path | None = None,
    fingerprint: str | None = None,
    shard_across_ranks: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Question and candidate embeddings per language (one encode call per kind, so batches mix
    languages; sharded over ranks and cached as :func:`encode_texts` does)."""
    langs = benchmark.langs
    questions = [t for lang in langs for t in benchmark.languages[lang].questions]
    candidates = [t for lang in langs for t in benchmark.languages[lang].candidate_texts(candidate_context)]
    if cache_dir is not None and fingerprint is None:
        fingerprint = model_fingerprint(model)
    kw = dict(batch_size=batch_size, show_progress=show_progress, cache_dir=cache_dir, fingerprint=fingerprint,
              shard_across_ranks=shard_across_ranks)
    q = encode_texts(model, questions, "query", **kw)
    c = encode_texts(model, candidates, "passage", **kw)
    q_out, c_out, qi, ci = {}, {}, 0, 0
    for lang in langs:
        nq, nc = len(benchmark.languages[lang].questions), len(benchmark.languages[lang].sentences)
        q_out[lang], c_out[lang] = q[qi : qi + nq], c[ci : ci + nc]
        qi, ci = qi + nq, ci + nc
    return q_out, c_out


def evaluate_lareqa(
    model,
    benchmark: LareqaBenchmark,
    candidate_context: bool = False,
    batch_size: int = 64,
    show_progress: bool = False,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    fingerprint: str | None = None,
    shard_across_ranks: bool = False,
    language_groups: Mapping[str, Sequence[str]] | None = None,
) -> LareqaResult:
    """Encode a benchmark with ``model`` and score every setting (``shard_across_ranks``: a
    collective call that splits the encoding over the ranks, see :func:`encode_texts`)."""
    t0 = time.perf_counter()
    q, c = encode_benchmark(model, benchmark, candidate_context, batch_size, show_progress, cache_dir, fingerprint,
                            shard_across_ranks)
    t1 = time.perf_counter()
    result = score_lareqa(benchmark, q, c, device=device, language_groups=language_groups)
    t2 = time.perf_counter()
    result.config.update({"candidate_context": candidate_context, "batch_size": batch_size})
    if fingerprint:
        result.config["model_fingerprint"] = fingerprint
    result.timings = {"encode_s": t1 - t0, "score_s": t2 - t1, "total_s": t2 - t0}
    log.info("%s (%s): mono %.3f cross %.3f multi %.3f mAP, bias %.1f [%.1fs]", benchmark.name, benchmark.part,
             result.summary["mono_map"], result.summary["cross_map"], result.summary["multi_map"],
             result.summary["bias_max_rank_distance"], t2 - t0)
    return result


def evaluate_xquad_r(
    model,
    data_dir: str | Path,
    split: ArticleSplit | None = None,
    part: str = "heldout",
    languages: list[str] | None = None,
    candidate_context: bool = False,
    batch_size: int = 64,
    show_progress: bool = False,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    shard_across_ranks: bool = False,
    seen_languages: Sequence[str] | None = None,
) -> LareqaResult:
    """XQuAD-R (LAReQA) evaluation of ``model`` on one part of the article split.

    ``split=None`` uses ``ArticleSplit()`` (parity: odd-indexed articles held out); ``part`` is
    "heldout", "train" or "all". The training loop calls this on the held-out part, from the
    main process alone (the default, ``shard_across_ranks=False``; with ``True`` every rank must
    call it and each encodes a shard). No disk cache unless ``cache_dir`` is given.
    ``seen_languages`` (a language hold-out's training languages): also the seen/unseen cells
    (``result.groups``, see evaluation/holdout.py)."""
    bench = load_lareqa(data_dir, languages, split, part, name="xquad-r")
    groups = None
    if seen_languages is not None:
        from hybrid_dist.evaluation.holdout import language_groups

        groups = language_groups(bench.langs, seen_languages)
    return evaluate_lareqa(model, bench, candidate_context, batch_size, show_progress, cache_dir, device,
                           shard_across_ranks=shard_across_ranks, language_groups=groups)


def evaluate_mlqa_r(
    model,
    data_dir: str | Path,
    split: ArticleSplit | None = None,
    part: str = "all",
    languages: list[str] | None = None,
    candidate_context: bool = False,
    batch_size: int = 64,
    show_progress: bool = False,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    mlqa_split: str = "test",
    shard_across_ranks: bool = False,
) -> LareqaResult:
    """MLQA-R evaluation. ``data_dir`` is either the official MLQA directory (files
    ``<mlqa_split>-context-X-question-X.json``), built on the fly, or a directory written by
    :func:`hybrid_dist.evaluation.mlqa.write_squad_dir`."""
    from hybrid_dist.evaluation.mlqa import build_mlqa_r, is_mlqa_dir

    data_dir = Path(data_dir)
    if is_mlqa_dir(data_dir):
        parsed = build_mlqa_r(data_dir, languages or MLQA_R_LANGUAGES, split=mlqa_split)
        chosen = select_articles(parsed, split, part)
        bench = build_lareqa(parsed, chosen, name="mlqa-r", source=str(data_dir), part=part,
                             split=(split or ArticleSplit()) if part != "all" else None)
    else:
        bench = load_lareqa(data_dir, languages, split, part, name="mlqa-r")
    return evaluate_lareqa(model, bench, candidate_context, batch_size, show_progress, cache_dir, device,
                           shard_across_ranks=shard_across_ranks)
