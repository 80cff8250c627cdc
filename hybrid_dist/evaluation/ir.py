"""Ad-hoc retrieval benchmarks: BEIR-format datasets, MIRACL, MS MARCO passage (dev).

Each loader returns an :class:`IRDataset` (corpus, queries, graded qrels and the benchmark's
standard metrics); :func:`evaluate_ir` encodes it, searches with :class:`DenseIndex` (FAISS exact
inner product by default) and computes the metrics with ``ir_measures``.

Layouts (every malformed line is a ``DataError`` naming file, line and field):

* **BEIR**: ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl`` (``_id``,
  ``text``), ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score``, header optional).
  Metrics nDCG@10, Recall@100, MAP (over the top 100 retrieved).
* **MIRACL** (the layout of the ``miracl/miracl`` and ``miracl/miracl-corpus`` repositories), under
  one root, any depth: ``topics.miracl-v1.0-<lang>-<split>.tsv`` (``qid<TAB>query``),
  ``qrels.miracl-v1.0-<lang>-<split>.tsv`` (``qid Q0 docid rel``) and ``*.jsonl[.gz]`` files
  (``docid``, ``title``, ``text``) under a folder ``miracl-corpus-v1.0-<lang>``. Without a local
  root the Hugging Face datasets ``miracl/miracl`` and ``miracl/miracl-corpus`` are used (online).
  Metrics nDCG@10, Recall@100.
* **MS MARCO** passage: ``collection.tsv`` (``pid<TAB>passage``), ``queries.dev.small.tsv`` (or
  ``queries.dev.tsv``; ``qid<TAB>query``), ``qrels.dev.small.tsv`` (``qid 0 pid 1``). Metrics
  MRR@10, Recall@1000.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hybrid_dist.data.records import DataError
from hybrid_dist.evaluation.encode import encode_texts, model_fingerprint
from hybrid_dist.evaluation.metrics import trec_evaluate
from hybrid_dist.evaluation.search import APPROXIMATE_THRESHOLD, DenseIndex

log = logging.getLogger(__name__)


@dataclass
class IRDataset:
    name: str
    source: str
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    metrics: tuple[str, ...]
    depth: int
    ignore_identical_ids: bool = False

    def __post_init__(self):
        if len(self.doc_ids) != len(self.doc_texts):
            raise ValueError("doc_ids and doc_texts differ in length")
        # only queries with text and at least one relevant judgment are evaluated
        self.queries = {q: t for q, t in self.queries.items()
                        if any(r >= 1 for r in self.qrels.get(q, {}).values())}
        if not self.queries:
            raise DataError(self.source, None, None, "no query has relevance judgments (qrels and queries share no id)")


@dataclass
class IRResult:
    benchmark: str
    summary: dict[str, float]
    per_query: dict[str, dict[str, float]]
    counts: dict
    config: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = "ir"
        return d

    @classmethod
    def from_dict(cls, d) -> "IRResult":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- file readers


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError(str(path), None, None, "missing file")
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield n, line
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, None, f"not valid UTF-8 ({e.reason})") from None


def read_jsonl_objects(path: Path, id_field: str, text_fields: Sequence[str], required: Sequence[str]) -> list[tuple[str, dict]]:
    out = []
    for n, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(str(path), f"line {n}", None, f"invalid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(str(path), f"line {n}", None, f"expected a JSON object, got {type(obj).__name__}")
        for name in (id_field, *required):
            if name not in obj:
                raise DataError(str(path), f"line {n}", name, "missing")
        if not isinstance(obj[id_field], (str, int)) or isinstance(obj[id_field], bool):
            raise DataError(str(path), f"line {n}", id_field, f"expected a string id, got {type(obj[id_field]).__name__}")
        for name in text_fields:
            if name in obj and obj[name] is not None and not isinstance(obj[name], str):
                raise DataError(str(path), f"line {n}", name, f"expected a string, got {type(obj[name]).__name__}")
        out.append((str(obj[id_field]), obj))
    return out


def read_tsv_pairs(path: Path, what: str = "text") -> dict[str, str]:
    """``id<TAB>text`` lines."""
    out: dict[str, str] = {}
    for n, line in _lines(path):
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise DataError(str(path), f"line {n}", what, "expected 'id<TAB>text'")
        out[parts[0].strip()] = parts[1]
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR ``qid<TAB>docid<TAB>score`` (header optional) or TREC ``qid iter docid rel``."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in _lines(path):
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if len(parts) == 3:
            qid, docid, rel = parts
        elif len(parts) == 4:
            qid, _, docid, rel = parts
        else:
            raise DataError(str(path), f"line {n}", None, f"expected 3 (qid docid score) or 4 (qid iter docid rel) columns, got {len(parts)}")
        try:
            grade = int(float(rel))
        except ValueError:
            if n == 1 and not qrels:  # header
                continue
            raise DataError(str(path), f"line {n}", "score", f"expected an integer relevance, got {rel!r}") from None
        qrels.setdefault(qid, {})[docid] = grade
    if not qrels:
        raise DataError(str(path), None, None, "no relevance judgments")
    return qrels


def _doc_text(obj: dict) -> str:
    title = (obj.get("title") or "").strip()
    text = obj.get("text") or ""
    return f"{title} {text}".strip() if title else text


# ----------------------------------------------------------------------------- loaders


def load_beir(data_dir: str | Path, split: str = "test", name: str | None = None) -> IRDataset:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(str(data_dir), None, None, "not a directory (expected corpus.jsonl, queries.jsonl, qrels/)")
    corpus = read_jsonl_objects(data_dir / "corpus.jsonl", "_id", ("title", "text"), ("text",))
    queries = read_jsonl_objects(data_dir / "queries.jsonl", "_id", ("text",), ("text",))
    qrels = read_qrels(data_dir / "qrels" / f"{split}.tsv")
    name = name or f"beir/{data_dir.name}"
    ignore_identical = data_dir.name.lower() in ("arguana", "quora")  # BEIR's convention
    return IRDataset(name, str(data_dir), [i for i, _ in corpus], [_doc_text(o) for _, o in corpus],
                     {i: o["text"] for i, o in queries}, qrels, ("ndcg@10", "recall@100", "map"), 100,
                     ignore_identical)


def load_msmarco(data_dir: str | Path, name: str = "msmarco-dev") -> IRDataset:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(str(data_dir), None, None, "not a directory (expected collection.tsv, queries, qrels)")
    collection = read_tsv_pairs(data_dir / "collection.tsv", "passage")
    q_path = next((data_dir / n for n in ("queries.dev.small.tsv", "queries.dev.tsv") if (data_dir / n).exists()),
                  data_dir / "queries.dev.small.tsv")
    r_path = next((data_dir / n for n in ("qrels.dev.small.tsv", "qrels.dev.tsv") if (data_dir / n).exists()),
                  data_dir / "qrels.dev.small.tsv")
    queries = read_tsv_pairs(q_path, "query")
    qrels = read_qrels(r_path)
    return IRDataset(name, str(data_dir), list(collection), list(collection.values()), queries, qrels,
                     ("mrr@10", "recall@1000"), 1000)


def _find(root: Path, pattern: str, what: str) -> Path:
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise DataError(str(root), None, None, f"no {what} file matching '{pattern}'")
    return hits[0]


def load_miracl(data_dir: str | Path | None, lang: str, split: str = "dev") -> IRDataset:
    """Local files under ``data_dir`` (see the module doc), or the Hugging Face datasets when
    ``data_dir`` is ``None`` (needs the hub)."""
    name = f"miracl/{lang}"
    if data_dir is None:
        return _load_miracl_hf(lang, split)
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(str(root), None, None, "not a directory")
    topics = read_tsv_pairs(_find(root, f"topics.miracl-v1.0-{lang}-{split}.tsv", "topics"), "query")
    qrels = read_qrels(_find(root, f"qrels.miracl-v1.0-{lang}-{split}.tsv", "qrels"))
    corpus_dirs = sorted(p for p in root.rglob(f"miracl-corpus-v1.0-{lang}") if p.is_dir())
    if not corpus_dirs:
        raise DataError(str(root), None, None, f"no corpus folder 'miracl-corpus-v1.0-{lang}'")
    files = sorted(p for p in corpus_dirs[0].rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise DataError(str(corpus_dirs[0]), None, None, "no *.jsonl or *.jsonl.gz corpus files")
    ids, texts = [], []
    for path in files:
        for docid, obj in read_jsonl_objects(path, "docid", ("title", "text"), ("text",)):
            ids.append(docid)
            texts.append(_doc_text(obj))
    return IRDataset(name, str(root), ids, texts, topics, qrels, ("ndcg@10", "recall@100"), 100)


def _load_miracl_hf(lang: str, split: str) -> IRDataset:
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise ImportError("MIRACL from the Hugging Face Hub needs datasets: pip install 'hybrid-dist[eval]'") from e

    topics_ds = load_dataset("miracl/miracl", lang, split=split)
    queries, qrels = {}, {}
    for row in topics_ds:
        qid = str(row["query_id"])
        queries[qid] = row["query"]
        judged = qrels.setdefault(qid, {})
        for p in row.get("negative_passages") or []:
            judged[str(p["docid"])] = 0
        for p in row.get("positive_passages") or []:
            judged[str(p["docid"])] = 1
    corpus_ds = load_dataset("miracl/miracl-corpus", lang, split="train")
    ids = [str(d) for d in corpus_ds["docid"]]
    texts = [_doc_text({"title": t, "text": x}) for t, x in zip(corpus_ds["title"], corpus_ds["text"])]
    return IRDataset(f"miracl/{lang}", f"hf:miracl/miracl:{lang}:{split}", ids, texts, queries, qrels,
                     ("ndcg@10", "recall@100"), 100)


# ----------------------------------------------------------------------------- evaluation


def evaluate_ir(
    model,
    dataset: IRDataset,
    batch_size: int = 64,
    show_progress: bool = False,
    cache_dir: str | Path | None = None,
    index_type: str = "auto",
    device: str | None = "auto",
    approximate_threshold: int = APPROXIMATE_THRESHOLD,
    fingerprint: str | None = None,
    shard_across_ranks: bool = False,
) -> IRResult:
    """Encode corpus and queries (sharded over ranks with ``shard_across_ranks``, a collective
    call), search the top ``dataset.depth`` and compute the dataset's metrics."""
    t0 = time.perf_counter()
    if cache_dir is not None and fingerprint is None:
        fingerprint = model_fingerprint(model)
    kw = dict(batch_size=batch_size, show_progress=show_progress, cache_dir=cache_dir, fingerprint=fingerprint,
              shard_across_ranks=shard_across_ranks)
    qids = list(dataset.queries)
    doc_emb = encode_texts(model, dataset.doc_texts, "passage", **kw)
    q_emb = encode_texts(model, [dataset.queries[q] for q in qids], "query", **kw)
    t1 = time.perf_counter()
    index = DenseIndex(doc_emb, index_type=index_type, device=device, approximate_threshold=approximate_threshold)
    depth = dataset.depth + (1 if dataset.ignore_identical_ids else 0)
    scores, ids = index.search(q_emb, depth)
    t2 = time.perf_counter()
    run: dict[str, dict[str, float]] = {}
    for qi, qid in enumerate(qids):
        hits = {}
        for s, i in zip(scores[qi], ids[qi]):
            if i < 0:
                continue
            docid = dataset.doc_ids[i]
            if dataset.ignore_identical_ids and docid == qid:
                continue
            hits[docid] = float(s)
            if len(hits) == dataset.depth:
                break
        run[qid] = hits
    summary, per_query = trec_evaluate({q: dataset.qrels[q] for q in qids}, run, dataset.metrics)
    t3 = time.perf_counter()
    return IRResult(
        benchmark=dataset.name,
        summary=summary,
        per_query=per_query,
        counts={"documents": len(dataset.doc_ids), "queries": len(qids)},
        config={"source": dataset.source, "index_type": index.index_type, "index_on_gpu": index.on_gpu,
                "depth": dataset.depth, "batch_size": batch_size, "model_fingerprint": fingerprint},
        timings={"encode_s": t1 - t0, "search_s": t2 - t1, "metrics_s": t3 - t2, "total_s": t3 - t0},
    )
