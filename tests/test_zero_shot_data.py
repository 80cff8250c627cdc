"""The zero-shot benchmarks on the real files in ../shared (issue #27): MLQA-R as the product loads
it, checked against counts and answer sentences computed here from the raw JSON; BEIR SciFact's
metrics checked against ir_measures on the real qrels and a real run file."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_dist.evaluation.ir import evaluate_ir, load_beir
from hybrid_dist.evaluation.lareqa import MLQA_R_LANGUAGES, load_lareqa, relevant_pairs
from hybrid_dist.evaluation.metrics import trec_evaluate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MLQA_R = SHARED / "mlqa-r"
SCIFACT = SHARED / "beir" / "scifact"
#: the question counts ../shared/README.md gives
README_QUESTIONS = {"en": 1148, "ar": 517, "de": 512, "es": 500, "hi": 507, "vi": 511, "zh": 504}


@pytest.fixture(scope="module")
def mlqa():
    if not (MLQA_R / "en.json").exists():
        pytest.skip(f"MLQA-R not found at {MLQA_R}")
    raw = {lang: json.loads((MLQA_R / f"{lang}.json").read_text(encoding="utf-8")) for lang in MLQA_R_LANGUAGES}
    return raw, load_lareqa(MLQA_R, None, None, "all", name="mlqa-r")


def _raw_counts(doc) -> tuple[int, int]:
    qids = {qa["id"] for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]}
    sentences = sum(len(p["sentences"]) for a in doc["data"] for p in a["paragraphs"])
    return len(qids), sentences


def _raw_answers(doc) -> dict[str, list[str]]:
    """qid -> the sentences its answer span overlaps (by sentence_breaks), from the raw file."""
    out = {}
    for a in doc["data"]:
        for p in a["paragraphs"]:
            for qa in p["qas"]:
                start = qa["answers"][0]["answer_start"]
                end = start + len(qa["answers"][0]["text"])
                hit = [s for (b, e), s in zip(p["sentence_breaks"], p["sentences"]) if b < max(end, start + 1) and e > start]
                out[qa["id"]] = hit
    return out


def test_mlqa_r_counts_per_language_match_the_raw_files(mlqa):
    raw, bench = mlqa
    assert bench.langs == sorted(MLQA_R_LANGUAGES)
    for lang in MLQA_R_LANGUAGES:
        questions, candidates = _raw_counts(raw[lang])
        assert questions == README_QUESTIONS[lang]
        assert len(bench.languages[lang].qids) == questions, lang
        assert len(bench.languages[lang].sentences) == candidates, lang


def test_mlqa_r_multilingual_pool_of_a_question_in_some_languages(mlqa):
    """A question asked in English and only some other languages: its relevant set in the
    multilingual pool is its answer sentences in exactly those languages."""
    raw, bench = mlqa
    langs = bench.langs
    present = {lang: set(bench.languages[lang].qids) for lang in langs}
    partial = [q for q in bench.languages["en"].qids if 1 < sum(q in present[x] for x in langs) < len(langs)]
    assert partial, "MLQA-R has questions missing in some languages"
    qid = partial[0]
    sizes = [len(bench.languages[y].sentences) for y in langs]
    offsets = np.r_[0, np.cumsum(sizes)]
    index = {y: {q: i for i, q in enumerate(bench.languages[y].qids)} for y in langs}
    pq, py, pc = relevant_pairs(bench, "en", langs, index, offsets)
    i = index["en"][qid]
    pool = [t for y in langs for t in bench.languages[y].sentences]
    got = sorted((langs[y], pool[c]) for y, c in zip(py[pq == i], pc[pq == i]))
    answers = {lang: _raw_answers(raw[lang]) for lang in langs}
    expected = sorted((lang, s) for lang in langs if qid in answers[lang] for s in answers[lang][qid])
    assert got == expected
    assert {lang for lang, _ in got} == {lang for lang in langs if qid in present[lang]}
    assert len({lang for lang, _ in got}) < len(langs)


def test_mlqa_r_titles_differ_but_articles_are_one(mlqa):
    """MLQA-R titles are translated; the benchmark's article keys link a question's languages."""
    raw, bench = mlqa
    raw_titles = {lang: {a["title"] for a in raw[lang]["data"]} for lang in ("en", "de")}
    assert raw_titles["en"] != raw_titles["de"]
    held = load_lareqa(MLQA_R, None, None, "heldout", name="mlqa-r")
    train = load_lareqa(MLQA_R, None, None, "train", name="mlqa-r")
    held_q = {q for lang in held.languages.values() for q in lang.qids}
    train_q = {q for lang in train.languages.values() for q in lang.qids}
    assert held_q and train_q and not held_q & train_q
    assert len(held_q | train_q) == len({q for lang in bench.languages.values() for q in lang.qids})


class WordHashEncoder:
    """A lexical bag-of-words encoder (deterministic, fast): a real scorer for a real run file."""

    fingerprint = "word-hash-4096"

    def encode(self, texts, kind="query", batch_size=64, show_progress=False):
        out = np.zeros((len(texts), 4096), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                if len(w) > 2:
                    out[i, zlib.crc32(w.encode()) % 4096] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return torch.from_numpy(out)


@pytest.fixture(scope="module")
def scifact():
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"BEIR SciFact not found at {SCIFACT}")
    return load_beir(SCIFACT, "test", "scifact")


def _raw_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        q, d, r = line.split("\t")
        qrels.setdefault(q, {})[d] = int(r)
    return qrels


def test_scifact_loads_whole(scifact):
    docs = sum(1 for line in (SCIFACT / "corpus.jsonl").open(encoding="utf-8") if line.strip())
    assert docs == 5183 == len(scifact.doc_ids)
    assert len(scifact.queries) == 300 == len(_raw_qrels(SCIFACT / "qrels" / "test.tsv"))


def test_scifact_metrics_equal_ir_measures_on_the_real_qrels_and_a_run_file(scifact, tmp_path):
    import ir_measures
    from ir_measures import R, nDCG

    enc = WordHashEncoder()
    qids = list(scifact.queries)
    q = enc.encode([scifact.queries[x] for x in qids]).numpy().astype(np.float64)
    d = enc.encode(scifact.doc_texts).numpy().astype(np.float64)
    scores = q @ d.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    run_file = tmp_path / "run.trec"
    with run_file.open("w") as f:
        for i, qid in enumerate(qids):
            for rank, j in enumerate(top[i]):
                f.write(f"{qid} Q0 {scifact.doc_ids[j]} {rank + 1} {scores[i, j]:.8f} wordhash\n")
    qrels_file = tmp_path / "qrels.trec"
    qrels_file.write_text("".join(f"{q} 0 {d} {r}\n" for q, docs in _raw_qrels(SCIFACT / "qrels" / "test.tsv").items()
                                  for d, r in docs.items()))
    expected = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], ir_measures.read_trec_qrels(str(qrels_file)),
                                          ir_measures.read_trec_run(str(run_file)))
    run = {}
    for qid, _, doc, _, score, _ in (line.split() for line in run_file.read_text().splitlines()):
        run.setdefault(qid, {})[doc] = float(score)
    ours, _ = trec_evaluate(scifact.qrels, run, ("ndcg@10", "recall@100"))
    assert ours["ndcg@10"] == pytest.approx(expected[nDCG @ 10], abs=1e-12)
    assert ours["recall@100"] == pytest.approx(expected[R @ 100], abs=1e-12)
    assert 0.3 < expected[nDCG @ 10] < 0.8  # a lexical scorer finds SciFact's evidence
    # the product's whole path (encode, FAISS search, metrics) on the same scorer
    result = evaluate_ir(enc, scifact, batch_size=256, device="cpu")
    assert result.counts == {"documents": 5183, "queries": 300}
    assert result.summary["ndcg@10"] == pytest.approx(expected[nDCG @ 10], abs=2e-3)
    assert result.summary["recall@100"] == pytest.approx(expected[R @ 100], abs=2e-3)
