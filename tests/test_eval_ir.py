"""BEIR / MIRACL / MS MARCO loaders and metrics, and the dense search backends."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_dist.data.records import DataError
from hybrid_dist.evaluation import DenseIndex, evaluate_ir, load_beir, load_miracl, load_msmarco
from hybrid_dist.evaluation.search import faiss_or_none

DOCS = {"d1": "alpha doc", "d2": "beta doc", "d3": "gamma doc", "d4": "delta doc", "d5": "epsilon doc"}


class LookupEncoder:
    fingerprint = "lookup-ir"

    def __init__(self, table):
        self.table = table

    def encode(self, texts, kind, batch_size=64, show_progress=False):
        return torch.tensor(np.array([self.table[t] for t in texts], dtype=np.float32))


def _table(queries: dict[str, list[float]], doc_texts: list[str]):
    table = {t: np.eye(len(doc_texts))[i] for i, t in enumerate(doc_texts)}
    table.update(queries)
    return table


def write_beir(d: Path, name_with_title=True) -> Path:
    (d / "qrels").mkdir(parents=True)
    with open(d / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, (docid, text) in enumerate(DOCS.items()):
            obj = {"_id": docid, "text": text}
            if name_with_title and i == 0:
                obj["title"] = "T"
            f.write(json.dumps(obj) + "\n")
    with open(d / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in (("q1", "first query"), ("q2", "second query"), ("q3", "unjudged query")):
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t2\nq2\td5\t1\n")
    return d


def test_beir_known_metrics(tmp_path):
    ds = load_beir(write_beir(tmp_path / "scifact"))
    assert ds.doc_texts[0] == "T alpha doc" and list(ds.queries) == ["q1", "q2"]  # q3 has no judgments
    table = _table({"first query": [.9, .8, .7, .1, .2],     # ranking d1 d2 d3 d5 d4
                    "second query": [.5, .4, .3, .2, .1]},   # ranking d1 d2 d3 d4 d5
                   ds.doc_texts)
    r = evaluate_ir(LookupEncoder(table), ds, index_type="flat" if faiss_or_none() else "torch", device="cpu")
    # q1: grade 1 at rank 1, grade 2 at rank 3; ideal 2 then 1 (trec_eval / BEIR: linear gains)
    dcg = 1 + 2 / math.log2(4)
    idcg = 2 + 1 / math.log2(3)
    ndcg_q1 = dcg / idcg
    ndcg_q2 = 1 / math.log2(6)
    assert r.per_query["q1"]["ndcg@10"] == pytest.approx(ndcg_q1)
    assert r.summary["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert r.summary["recall@100"] == pytest.approx(1.0)
    assert r.summary["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 5) / 2)
    assert r.counts == {"documents": 5, "queries": 2}


def test_beir_ignores_identical_ids_for_arguana(tmp_path):
    d = write_beir(tmp_path / "arguana")
    (d / "queries.jsonl").write_text(json.dumps({"_id": "d1", "text": "first query"}) + "\n")
    (d / "qrels" / "test.tsv").write_text("d1\td3\t1\n")
    ds = load_beir(d)
    assert ds.ignore_identical_ids
    table = _table({"first query": [.9, .8, .7, .1, .2]}, ds.doc_texts)
    r = evaluate_ir(LookupEncoder(table), ds, index_type="torch", device="cpu")
    assert r.per_query["d1"]["map"] == pytest.approx(1 / 2)  # d1 itself dropped: d2, d3, ...


def test_msmarco_mrr_and_recall(tmp_path):
    d = tmp_path / "msmarco"
    d.mkdir()
    (d / "collection.tsv").write_text("".join(f"{i}\tpassage number {i}\n" for i in range(12)))
    (d / "queries.dev.small.tsv").write_text("100\tfind three\n200\tfind eleven\n")
    (d / "qrels.dev.small.tsv").write_text("100\t0\t3\t1\n200\t0\t11\t1\n")
    ds = load_msmarco(d)
    assert ds.metrics == ("mrr@10", "recall@1000") and ds.depth == 1000
    scores_100 = np.linspace(1, 0, 12)  # passage i at rank i + 1: passage 3 at rank 4
    table = _table({"find three": scores_100, "find eleven": scores_100}, ds.doc_texts)
    r = evaluate_ir(LookupEncoder(table), ds, device="cpu")
    assert r.per_query["100"]["mrr@10"] == pytest.approx(1 / 4)
    assert r.per_query["200"]["mrr@10"] == 0.0  # rank 12, beyond the cutoff
    assert r.summary["recall@1000"] == 1.0


def write_miracl(root: Path, lang="sw") -> Path:
    topics = root / "miracl" / f"miracl-v1.0-{lang}" / "topics"
    qrels = root / "miracl" / f"miracl-v1.0-{lang}" / "qrels"
    corpus = root / "miracl-corpus" / f"miracl-corpus-v1.0-{lang}"
    for p in (topics, qrels, corpus):
        p.mkdir(parents=True)
    (topics / f"topics.miracl-v1.0-{lang}-dev.tsv").write_text("1\tswali moja\n2\tswali mbili\n", encoding="utf-8")
    (qrels / f"qrels.miracl-v1.0-{lang}-dev.tsv").write_text("1\tQ0\t10#0\t1\n1\tQ0\t10#1\t0\n2\tQ0\t11#0\t1\n")
    with gzip.open(corpus / "docs-0.jsonl.gz", "wt", encoding="utf-8") as f:
        for docid, title, text in (("10#0", "Kumi", "maandishi ya kumi"), ("10#1", "Kumi", "zaidi"),
                                   ("11#0", "Kumi na moja", "maandishi mengine")):
            f.write(json.dumps({"docid": docid, "title": title, "text": text}) + "\n")
    return root


def test_miracl_local_files(tmp_path):
    ds = load_miracl(write_miracl(tmp_path / "data"), "sw", "dev")
    assert ds.doc_ids == ["10#0", "10#1", "11#0"] and ds.doc_texts[0] == "Kumi maandishi ya kumi"
    assert ds.qrels["1"] == {"10#0": 1, "10#1": 0}
    table = _table({"swali moja": [.1, .9, .5], "swali mbili": [.1, .2, .3]}, ds.doc_texts)
    r = evaluate_ir(LookupEncoder(table), ds, index_type="torch", device="cpu")
    assert r.per_query["2"]["ndcg@10"] == pytest.approx(1.0)
    assert r.per_query["1"]["ndcg@10"] == pytest.approx(1 / math.log2(4))  # relevant at rank 3
    with pytest.raises(DataError, match="no topics file"):
        load_miracl(tmp_path / "data", "yo", "dev")


def test_miracl_hugging_face_path(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        if name == "miracl/miracl":
            return datasets.Dataset.from_list([
                {"query_id": "1", "query": "q one", "positive_passages": [{"docid": "a#0", "title": "A", "text": "x"}],
                 "negative_passages": [{"docid": "b#0", "title": "B", "text": "y"}]},
            ])
        return datasets.Dataset.from_list([{"docid": "a#0", "title": "A", "text": "x"},
                                           {"docid": "b#0", "title": "B", "text": "y"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_miracl(None, "yo", "dev")
    assert calls == [("miracl/miracl", "yo", "dev"), ("miracl/miracl-corpus", "yo", "train")]
    assert ds.qrels == {"1": {"b#0": 0, "a#0": 1}} and ds.doc_texts == ["A x", "B y"]


def test_malformed_files_name_file_line_and_field(tmp_path):
    d = write_beir(tmp_path / "broken")
    lines = (d / "corpus.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"_id": "d3", "body": "no text field"})
    (d / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl: line 3: field 'text': missing"):
        load_beir(d)
    lines[2] = "{not json"
    (d / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl: line 3: invalid JSON"):
        load_beir(d)
    write_beir(tmp_path / "broken2")
    (tmp_path / "broken2" / "qrels" / "test.tsv").write_text("q1\td1\t1\nq2\td5\tvery\n")
    with pytest.raises(DataError, match=r"test\.tsv: line 2: field 'score'"):
        load_beir(tmp_path / "broken2")
    with pytest.raises(DataError, match=r"dev\.tsv: missing file"):
        load_beir(tmp_path / "broken2", split="dev")
    m = tmp_path / "msm"
    m.mkdir()
    (m / "collection.tsv").write_text("0\tfine\n1 no tab here\n")
    with pytest.raises(DataError, match=r"collection\.tsv: line 2: field 'passage'"):
        load_msmarco(m)


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.skipif(faiss_or_none() is None, reason="faiss not installed")
def test_dense_index_backends_agree():
    rng = np.random.default_rng(0)
    docs, queries = _unit(rng, 3000, 32), _unit(rng, 50, 32)
    flat_s, flat_i = DenseIndex(docs, "flat", device="cpu").search(queries, 10)
    torch_s, torch_i = DenseIndex(docs, "torch", device="cpu", chunk_rows=64).search(queries, 10, batch_size=7)
    np.testing.assert_array_equal(flat_i, torch_i)
    np.testing.assert_allclose(flat_s, torch_s, rtol=1e-5, atol=1e-5)
    brute = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    np.testing.assert_array_equal(flat_i, brute)
    for kind in ("hnsw", "ivf"):
        _, ids = DenseIndex(docs, kind, device="cpu").search(queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, flat_i)])
        assert recall > 0.9, (kind, recall)
    auto = DenseIndex(docs, "auto", device="cpu", approximate_threshold=1000)
    assert auto.index_type == "ivf"
    assert DenseIndex(docs[:10], "auto", device="cpu").index_type == "flat"
    s, i = DenseIndex(docs[:5], "flat", device="cpu").search(queries[:2], 10)  # k > n
    assert s.shape == (2, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dense_index_and_lareqa_scoring_on_gpu():
    rng = np.random.default_rng(1)
    docs, queries = _unit(rng, 5000, 64), _unit(rng, 20, 64)
    cpu_i = DenseIndex(docs, "torch", device="cpu").search(queries, 20)[1]
    gpu = DenseIndex(docs, "auto", device="cuda")
    assert gpu.on_gpu or gpu.index_type == "torch"
    np.testing.assert_array_equal(gpu.search(queries, 20)[1], cpu_i)
    # LAReQA scoring on the GPU gives the CPU's numbers
    from hybrid_dist.data.squad import SquadArticle, SquadParagraph, SquadQuestion
    from hybrid_dist.evaluation import build_lareqa, score_lareqa

    parsed = {}
    for lang in ("aa", "bb"):
        sentences = tuple(f"{lang} s{i}" for i in range(300))
        qs = tuple(SquadQuestion(f"q{i}", f"{lang} q{i}", 0, "x", (int(rng.integers(300)),)) for i in range(100))
        parsed[lang] = [SquadArticle("A", (SquadParagraph(" ".join(sentences), sentences, qs),))]
    bench = build_lareqa(parsed)
    q = {lang: _unit(rng, 100, 16) for lang in ("aa", "bb")}
    c = {lang: _unit(rng, 300, 16) for lang in ("aa", "bb")}
    on_cpu = score_lareqa(bench, q, c, device="cpu").summary
    on_gpu = score_lareqa(bench, q, c, device="cuda").summary
    assert on_gpu == pytest.approx(on_cpu, rel=1e-5)
