"""A corpus of malformed files, one problem each: truncated JSON, wrong encoding, a missing field, an
empty language, duplicate ids with conflicting text, an answer span outside its context, and 10 MB
single lines (invalid JSON, and a valid record with a 10 MB passage).

Each is one clear DataError naming file, line (or record) and field, never more than a few hundred
characters; with data.on_bad_record=skip, record-level problems are dropped and counted, while
file-level ones (invalid JSON, wrong encoding) still stop. Through the CLI: exit 2, one `error:`
line, no traceback."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cpu_runs import run
from hybrid_dist.config import DataConfig
from hybrid_dist.data import BadRecords, DataError, load_corpus

MB10 = 10 * 2**20


def row(i: int, lang: str = "en", **kw) -> dict:
    r = {"group_id": f"g{i}", "lang": lang, "query": f"question {i} in {lang}?", "positive": f"answer {i} in {lang}.",
         "article": f"a{i % 4}"}
    r.update(kw)
    return r


def jsonl(path: Path, *lines: str | dict | bytes) -> Path:
    data = b"".join((x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()) + b"\n"
                    for x in lines)
    path.write_bytes(data)
    return path


def squad(context="Alpha beta. Gamma delta.", start=12, text="Gamma", qid="q1", question="Which?", extra_qas=()):
    qas = [{"id": qid, "question": question, "answers": [{"answer_start": start, "text": text}]}, *extra_qas]
    return {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def good_qa(qid: str, question: str = "Which one?") -> dict:
    return {"id": qid, "question": question, "answers": [{"answer_start": 0, "text": "Alpha"}]}


def squad_dir(root: Path, en: dict | str | bytes, de: dict | None = None) -> Path:
    root.mkdir()
    for lang, doc in (("en", en), ("de", de or squad(question="Welches?"))):
        raw = doc if isinstance(doc, bytes) else (doc if isinstance(doc, str) else json.dumps(doc)).encode()
        (root / f"{lang}.json").write_bytes(raw)
    return root


@dataclass
class Case:
    """A malformed input: ``make(tmp) -> DataConfig``; the error names ``file`` and has ``where``,
    ``field`` and ``says`` in it; ``skipped`` is the count under on_bad_record=skip (None: still an error)."""

    make: object
    file: str
    where: str
    field: str | None
    says: str
    skipped: int | None


CASES = {
    "jsonl_truncated_last_line": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", row(0), row(1), json.dumps(row(2))[:30]))),
        "r.jsonl", "line 3 column", None, "the input ends there (truncated?)", None),
    "jsonl_latin1_line": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", row(0), json.dumps(row(1, query="Grüße?"),
                                                                           ensure_ascii=False).encode("latin-1")))),
        "r.jsonl", "line 2", None, "not valid UTF-8 (invalid start byte at byte", None),
    "jsonl_utf16_file": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", json.dumps(row(0)).encode("utf-16")))),
        "r.jsonl", "line 1", None, "UTF-16 byte-order mark: re-encode it as UTF-8", None),
    "jsonl_missing_field": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", row(0), {k: v for k, v in row(1).items()
                                                                                    if k != "positive"}, row(2)))),
        "r.jsonl", "line 2", "positive", "missing", 1),
    "jsonl_empty_language": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", row(0), row(1), row(2, lang=" ")))),
        "r.jsonl", "line 3", "lang", "empty", 1),
    "jsonl_duplicate_id_conflicting_text": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", row(0), row(1), row(0), row(0, query="other?")))),
        "r.jsonl", "line 4 (group_id g0, lang en)", "query", "conflicting text (first at line 1)", 1),
    "jsonl_10mb_line_invalid_json": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", row(0), '{"group_id": "g1", "positive": "'
                                                             + "x" * MB10))),
        "r.jsonl", "line 2 column 32", None, "invalid JSON: Unterminated string starting at column 32", None),
    "jsonl_10mb_valid_record": Case(
        lambda t: DataConfig(format="jsonl", path=str(jsonl(t / "r.jsonl", row(0), row(1, positive="y" * MB10), row(2)))),
        "r.jsonl", "line 2", "positive", "10,485,760 characters, more than data.max_text_chars=1,000,000", 1),
    "squad_truncated_file": Case(
        lambda t: DataConfig(path=str(squad_dir(t / "d", json.dumps(squad(), indent=1)[:-40]))),
        "en.json", "line", None, "(truncated?)", None),
    "squad_latin1_file": Case(
        lambda t: DataConfig(path=str(squad_dir(t / "d", json.dumps(squad(question="Grüße?"), indent=1,
                                                                    ensure_ascii=False).encode("latin-1")))),
        "en.json", "line 11", None, "not valid UTF-8", None),
    "squad_span_outside_context": Case(
        lambda t: DataConfig(path=str(squad_dir(t / "d", squad(start=40, extra_qas=[good_qa("q2")])))),
        "en.json", "data[0].paragraphs[0].qas[0] (id q1).answers[0]", "answer_start",
        "span [40, 45) outside the context (length 24)", 1),
    "squad_missing_field": Case(
        lambda t: DataConfig(path=str(squad_dir(t / "d", {"data": [{"paragraphs": []}, squad(extra_qas=[good_qa("q2")])["data"][0]]}))),
        "en.json", "data[0]", "title", "missing", 1),
    "squad_empty_language": Case(
        lambda t: DataConfig(path=str(squad_dir(t / "d", squad(), {"data": [{"title": "T", "paragraphs": [
            {"context": "Nichts.", "qas": []}]}]}))),
        "de.json", "", "qas", "the file holds no questions (a language with no records)", None),
    "squad_duplicate_id_conflicting_text": Case(
        lambda t: DataConfig(path=str(squad_dir(t / "d", squad(extra_qas=[good_qa("q1", "Something else?")])))),
        "en.json", "data[0].paragraphs[0].qas[1] (id q1)", "id",
        "duplicate id with a different question (first: 'Which?', at data[0].paragraphs[0].qas[0] (id q1))", 1),
    "squad_10mb_single_line_context": Case(
        lambda t: DataConfig(path=str(squad_dir(t / "d", {"data": [
            {"title": "Huge", "paragraphs": [{"context": "z" * MB10 + ".", "qas": [good_qa("q9"), good_qa("q8")]}]},
            squad()["data"][0]]}))),
        "en.json", "data[0].paragraphs[0]", "context", "10,485,761 characters, more than data.max_text_chars", 2),
}


@dataclass
class Built:
    """What the loader made from its input: the longest text of every record, paragraph and
    sentence split it built, and how many corpora."""

    records: list[int]
    paragraphs: list[int]
    splits: list[int]
    corpora: int = 0


@pytest.fixture
def built(monkeypatch) -> Built:
    import hybrid_dist.data as data_pkg
    from hybrid_dist.data import jsonl as jsonl_mod
    from hybrid_dist.data import squad as squad_mod

    seen = Built([], [], [])

    def spy(into: list[int], real, texts):
        def wrapper(*args, **kwargs):
            into.append(max(len(t) for t in texts(*args, **kwargs)))
            return real(*args, **kwargs)
        return wrapper

    def record_texts(**kw):
        return kw["query"], kw["positive"], *kw.get("negatives", ())

    for module in (jsonl_mod, squad_mod):
        monkeypatch.setattr(module, "ParallelRecord", spy(seen.records, module.ParallelRecord, record_texts))
    monkeypatch.setattr(squad_mod, "SquadParagraph",
                        spy(seen.paragraphs, squad_mod.SquadParagraph, lambda context, *a, **kw: (context,)))
    monkeypatch.setattr(squad_mod, "split_sentences", spy(seen.splits, squad_mod.split_sentences, lambda c: (c,)))
    real_corpus = data_pkg.ParallelCorpus

    def corpus(*args, **kwargs):
        seen.corpora += 1
        return real_corpus(*args, **kwargs)

    monkeypatch.setattr(data_pkg, "ParallelCorpus", corpus)
    return seen


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_clear_error_naming_file_line_field(name, tmp_path, built):
    case = CASES[name]
    cfg = case.make(tmp_path)
    cfg.split = "none"
    with pytest.raises(DataError) as e:
        load_corpus(cfg, "all")
    message = str(e.value)
    assert Path(e.value.source).name == case.file and message.startswith(e.value.source), message
    assert case.where in (e.value.where or ""), message
    assert e.value.field_name == case.field and (case.field is None or f"field '{case.field}'" in message), message
    assert case.says in message, message
    assert len(message) < 600, f"{len(message)} characters"  # an excerpt, never the 10 MB line
    # rejected cheaply, before anything costly is done with it: no text over the limit reached a
    # record, a paragraph or the sentence splitter, and no corpus (so no sampler, tokenizer or
    # training step) was made from the input
    limit = cfg.max_text_chars
    assert max(built.records + built.paragraphs + built.splits, default=0) <= limit, built
    assert built.corpora == 0
    if cfg.format == "jsonl":  # read line by line: it stops at the bad line; no line after it becomes a record
        line = re.match(r"line (\d+)", e.value.where or "")
        assert line and len(built.records) <= int(line[1]), (e.value.where, built)
    else:  # the files are validated whole before any record is made
        assert built.records == [], built


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.skipped is not None))
def test_skip_drops_and_counts_bad_records(name, tmp_path):
    case = CASES[name]
    cfg = case.make(tmp_path)
    cfg.split, cfg.on_bad_record = "none", "skip"
    bad = BadRecords(cfg.on_bad_record)
    corpus = load_corpus(cfg, "all", bad)
    assert bad.count == case.skipped and len(corpus) >= 1
    summary = bad.summary()
    assert summary.startswith(f"skipped {case.skipped} bad records (first: ") and case.says in summary
    assert len(summary) < 700


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.skipped is None))
def test_file_level_problems_stop_even_when_skipping(name, tmp_path):
    cfg = CASES[name].make(tmp_path)
    cfg.split, cfg.on_bad_record = "none", "skip"
    with pytest.raises(DataError, match=CASES[name].says.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_corpus(cfg, "all")


def test_a_valid_10mb_record_loads_when_the_limit_is_lifted(tmp_path):
    cfg = CASES["jsonl_10mb_valid_record"].make(tmp_path)
    cfg.split, cfg.max_text_chars = "none", 0
    corpus = load_corpus(cfg, "all")
    assert len(corpus.record(1, "en").positive) == MB10


def test_hf_rows_follow_the_same_rules(tmp_path):
    import datasets

    rows = [row(0), row(1, lang="de"), {**row(2), "query": None}, row(0, positive="different.")]
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "ds"))
    cfg = DataConfig(format="hf", path=str(tmp_path / "ds"), split="none")
    with pytest.raises(DataError, match=r"record 2: field 'query': missing"):
        load_corpus(cfg, "all")
    cfg.on_bad_record = "skip"
    bad = BadRecords("skip")
    assert len(load_corpus(cfg, "all", bad)) == 2 and bad.count == 2  # the missing query and the conflicting duplicate
    assert bad.summary() == f"skipped 2 bad records (first: dataset {tmp_path / 'ds'}[train]: record 2: field 'query': missing)"
    # a damaged file through the datasets loader: one DataError, not a pyarrow traceback
    broken = jsonl(tmp_path / "broken.jsonl", row(0), json.dumps(row(1))[:25])
    with pytest.raises(DataError, match=r"broken.jsonl\[train\]: cannot load: "):
        load_corpus(DataConfig(format="hf", path=str(broken), split="none"), "all")


# ---------------------------------------------------------------------- through the command line


def trainable_jsonl(path: Path, bad_lines: list[str | dict]) -> Path:
    good = [row(i, lang) for i in range(24) for lang in ("en", "de")]
    return jsonl(path, good[0], *bad_lines, *good[1:])


def test_cli_bad_record_exits_2_with_one_line(tmp_path, xquad_dir):
    data = trainable_jsonl(tmp_path / "r.jsonl", ['{"group_id": "g99", "positive": "' + "x" * MB10])
    proc = run(1, tmp_path / "out", "data.format=jsonl", f"data.path={data}", "data.languages=[en, de]", expect=2)
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 2000, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {data}: line 2 column 33: invalid JSON: Unterminated string starting at column 33; the input ends there (truncated?)")


def test_cli_skip_logs_how_many_and_trains(tmp_path, xquad_dir):
    bad = [{k: v for k, v in row(90).items() if k != "positive"}, row(91, lang=""), row(0, query="a conflicting text?"),
           row(92, positive="y" * MB10)]
    data = trainable_jsonl(tmp_path / "r.jsonl", bad)
    out = tmp_path / "out"
    proc = run(1, out, "data.format=jsonl", f"data.path={data}", "data.languages=[en, de]", "data.split=none",
               "data.on_bad_record=skip", "train.max_steps=2", "train.save_every=0")
    assert f"data: skipped 4 bad records (first: {data}: line 2: field 'positive': missing)" in proc.stdout
    assert "trained to step 2" in proc.stdout and (out / "model" / "model.safetensors").exists()
