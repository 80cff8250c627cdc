"""Loaders on real XQuAD-R and on malformed input: every error names the file, the line or
record, and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_dist.config import DataConfig
from hybrid_dist.data import DataError, load_corpus
from hybrid_dist.data.corpus import ParallelCorpus
from hybrid_dist.data.jsonl import read_jsonl, write_jsonl
from hybrid_dist.data.records import ParallelRecord
from hybrid_dist.data.split import ArticleSplit
from hybrid_dist.data.squad import read_squad_dir, read_squad_file, records_from_squad, split_sentences

LANGS = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]


# ---------------------------------------------------------------------- real XQuAD-R


def test_xquad_r_counts(xquad_corpus):
    assert xquad_corpus.languages == LANGS
    assert xquad_corpus.sizes == {lang: 1190 for lang in LANGS}
    assert len(xquad_corpus) == 1190
    assert len(xquad_corpus.articles()) == 48
    # every question is answered in every language: groups are complete rows
    assert all(len(row) == 11 for row in xquad_corpus.table)


def test_positive_is_the_sentence_holding_the_answer(xquad_dir):
    parsed = read_squad_dir(xquad_dir, ["en", "th"])
    records = {(r.lang, r.group_id): r for r in records_from_squad(parsed)}
    assert len(records) == 2 * 1190
    for lang in ("en", "th"):
        contains = total = 0
        for article in parsed[lang]:
            for para in article.paragraphs:
                for q in para.questions:
                    positive = records[lang, q.qid].positive
                    assert positive == para.sentences[q.answer_sentences[0]]
                    assert positive.strip() and len(positive) < len(para.context) + 1
                    contains += q.answer_text in positive or len(q.answer_sentences) > 1
                    total += 1
        assert total == 1190 and contains / total > 0.97, (lang, contains / total)


def test_sentence_and_paragraph_and_hard_negatives(xquad_dir):
    parsed = read_squad_dir(xquad_dir, ["de"])
    plain = records_from_squad(parsed, "sentence")
    with_para = records_from_squad(parsed, "sentence_and_paragraph", max_hard_negatives=3)
    assert len(plain) == len(with_para) == 1190
    for a, b in zip(plain[:50], with_para[:50]):
        assert b.positive.startswith(a.positive + "\n") and len(b.positive) > len(a.positive)
        assert len(b.negatives) == 3 and a.positive not in b.negatives


def test_article_split_is_disjoint_and_deterministic(xquad_dir):
    cfg = DataConfig(path=str(xquad_dir), languages=["en", "de"])
    train, held = load_corpus(cfg, "train"), load_corpus(cfg, "heldout")
    assert set(train.articles()).isdisjoint(held.articles())
    assert len(train.articles()) == len(held.articles()) == 24
    assert len(train) + len(held) == 1190
    assert set(train.group_ids).isdisjoint(held.group_ids)
    again = load_corpus(cfg, "train")
    assert again.group_ids == train.group_ids and again.fingerprint() == train.fingerprint()
    hashed = ArticleSplit("hash", 0.3)
    articles = load_corpus(DataConfig(path=str(xquad_dir), split="none"), "all").articles()
    held_hash = hashed.select(articles, "heldout")
    assert held_hash == ArticleSplit("hash", 0.3).select(list(reversed(articles)), "heldout")  # order-free
    assert 0 < len(held_hash) < len(articles)
    assert ArticleSplit("none").select(articles, "heldout") == set()



def test_split_keys_on_a_language_independent_article(xquad_dir, tmp_path):
    """With translated titles (a German copy of XQuAD-R whose titles are all German), every
    question lands on the same side of the split in every language, the same side as with the
    original titles, and the held-out evaluation selects the same questions."""
    from hybrid_dist.evaluation.lareqa import load_lareqa

    for lang in ("en", "de"):
        doc = json.loads((xquad_dir / f"{lang}.json").read_text(encoding="utf-8"))
        if lang == "de":
            for i, article in enumerate(doc["data"]):
                article["title"] = f"Artikel {i}: {article['title']} (übersetzt)"
        write(tmp_path / f"{lang}.json", doc)
    translated = DataConfig(path=str(tmp_path))
    original = DataConfig(path=str(xquad_dir), languages=["en", "de"])
    for part in ("train", "heldout"):
        corpus = load_corpus(translated, part)
        assert set(corpus.languages) == {"de", "en"}
        assert all(set(row) == {"de", "en"} for row in corpus.table), "a question split across the two sides"
        assert corpus.group_ids == load_corpus(original, part).group_ids
    assert len(load_corpus(translated, "train").articles()) == 24
    # hashing each language's own title would scatter a question's translations over both sides
    hashed = DataConfig(path=str(tmp_path), split="hash", heldout_fraction=0.5)
    train, held_out = load_corpus(hashed, "train"), load_corpus(hashed, "heldout")
    assert all(set(row) == {"de", "en"} for row in train.table + held_out.table)
    assert set(train.group_ids).isdisjoint(held_out.group_ids) and len(train) + len(held_out) == 1190
    held = load_lareqa(tmp_path, part="heldout")
    assert held.languages["de"].qids == held.languages["en"].qids == load_corpus(translated, "heldout").group_ids

def test_split_sentences_fallback():
    text = "First one. Second one! Third? 第一句。第二句。"
    spans = split_sentences(text)
    assert [text[b:e] for b, e in spans] == ["First one.", "Second one!", "Third?", "第一句。", "第二句。"]
    assert split_sentences("no punctuation") == [(0, 14)]


# ---------------------------------------------------------------------- SQuAD errors


def squad_doc(context="Alpha beta. Gamma delta.", start=12, text="Gamma", qid="q1", question="Which?"):
    return {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": qid, "question": question, "answers": [{"answer_start": start, "text": text}]}]}]}]}


def write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1), encoding="utf-8")
    return path


def test_squad_without_sentence_breaks_uses_fallback(tmp_path):
    (article,) = read_squad_file(write(tmp_path / "en.json", squad_doc()))
    (para,) = article.paragraphs
    assert para.sentences == ("Alpha beta.", "Gamma delta.")
    assert para.questions[0].answer_sentences == (1,)


def test_squad_bad_json_names_file_and_line(tmp_path):
    path = write(tmp_path / "en.json", '{"data": [\n  {"title": "T",\n   "paragraphs": [}\n]}')
    with pytest.raises(DataError) as e:
        read_squad_file(path)
    assert str(path) in str(e.value) and "line 3" in str(e.value) and "invalid JSON" in str(e.value)


@pytest.mark.parametrize("mutate, field, where", [
    (lambda d: d["data"][0].pop("title"), "title", "data[0]"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "context", "data[0].paragraphs[0]"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"), "question", "qas[0] (id q1)"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].pop("answer_start"), "answer_start",
     "answers[0]"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), "answers", "qas[0] (id q1)"),
    (lambda d: d.pop("data"), "data", "top level"),
])
def test_squad_missing_field(tmp_path, mutate, field, where):
    doc = squad_doc()
    mutate(doc)
    path = write(tmp_path / "de.json", doc)
    with pytest.raises(DataError) as e:
        read_squad_file(path)
    assert e.value.source == str(path) and e.value.field_name == field and where in e.value.where
    assert f"field '{field}'" in str(e.value)


def test_squad_answer_span_outside_context(tmp_path):
    path = write(tmp_path / "en.json", squad_doc(start=40))
    with pytest.raises(DataError) as e:
        read_squad_file(path)
    assert e.value.field_name == "answer_start" and "outside the context" in str(e.value)
    assert "id q1" in e.value.where


def test_squad_answer_text_mismatch(tmp_path):
    path = write(tmp_path / "en.json", squad_doc(start=0, text="Gamma"))
    with pytest.raises(DataError) as e:
        read_squad_file(path)
    assert e.value.field_name == "text" and "does not match" in str(e.value)


def test_squad_bad_sentence_breaks(tmp_path):
    doc = squad_doc()
    doc["data"][0]["paragraphs"][0]["sentence_breaks"] = [[0, 11], [12, 99]]
    with pytest.raises(DataError) as e:
        read_squad_file(write(tmp_path / "en.json", doc))
    assert e.value.field_name == "sentence_breaks[1]"


def test_language_with_no_records(tmp_path):
    write(tmp_path / "en.json", squad_doc())
    empty = write(tmp_path / "de.json", {"data": [{"title": "T", "paragraphs": [{"context": "x", "qas": []}]}]})
    with pytest.raises(DataError) as e:
        read_squad_dir(tmp_path)
    assert e.value.source == str(empty) and "no questions" in str(e.value)
    with pytest.raises(DataError) as e:
        load_corpus(DataConfig(path=str(tmp_path), languages=["en", "fr"]))
    assert "fr" in str(e.value)


def test_squad_dir_parallel_by_id(tmp_path):
    write(tmp_path / "en.json", squad_doc(question="Which one?"))
    write(tmp_path / "de.json", squad_doc(question="Welches?"))
    corpus = load_corpus(DataConfig(path=str(tmp_path), split="none"), "all")
    assert corpus.group_ids == ["q1"] and corpus.languages == ["de", "en"]
    assert corpus.record(0, "de").query == "Welches?" and corpus.record(0, "en").positive == "Gamma delta."


# ---------------------------------------------------------------------- JSONL


def good_row(**kw):
    row = {"group_id": "g1", "lang": "en", "query": "q?", "positive": "p.", "negatives": ["n1"]}
    row.update(kw)
    return row


def test_jsonl_round_trip(tmp_path):
    records = [ParallelRecord("g1", "en", "q?", "p.", ("n",), "art", "en/1"),
               ParallelRecord("g1", "de", "F?", "P.", (), "art", None)]
    write_jsonl(records, tmp_path / "r.jsonl")
    assert read_jsonl(tmp_path / "r.jsonl") == records


def test_jsonl_bad_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good_row()) + "\n\n" + '{"group_id": "g2", "lang": "de",\n')
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    assert e.value.source == str(path) and e.value.where.startswith("line 3") and "invalid JSON" in str(e.value)


@pytest.mark.parametrize("row, field", [
    ({k: v for k, v in good_row().items() if k != "positive"}, "positive"),
    (good_row(query="  "), "query"),
    (good_row(lang=3), "lang"),
    (good_row(negatives="n1"), "negatives"),
    (good_row(group_id=None), "group_id"),
])
def test_jsonl_bad_field(tmp_path, row, field):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good_row(group_id="g0")) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    assert (e.value.where, e.value.field_name) == ("line 2", field)
    assert f"{path}: line 2: field '{field}'" in str(e.value)


def test_conflicting_duplicate_record():
    with pytest.raises(DataError) as e:
        ParallelCorpus([ParallelRecord("g", "en", "a?", "p"), ParallelRecord("g", "en", "b?", "p")], source="x.jsonl")
    assert e.value.field_name == "query" and "record 1" in e.value.where


def test_jsonl_via_config(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [good_row(group_id=f"g{i}", lang=lang, article=f"a{i}") for i in range(4) for lang in ("en", "de")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = load_corpus(DataConfig(format="jsonl", path=str(path)), "train")
    held = load_corpus(DataConfig(format="jsonl", path=str(path)), "heldout")
    assert train.group_ids == ["g0", "g2"] and held.group_ids == ["g1", "g3"]
    assert train.sizes == {"de": 2, "en": 2}


# ---------------------------------------------------------------------- Hugging Face datasets


def test_hf_dataset_from_disk_with_column_mapping(tmp_path):
    import datasets

    rows = {"id": ["g1", "g1", "g2"], "lang": ["en", "de", "en"], "question": ["q?", "F?", "r?"],
            "passage": ["p.", "P.", "s."], "title": ["A", "A", "B"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    cfg = DataConfig(format="hf", path=str(tmp_path / "ds"), split="none",
                     hf_columns={"group_id": "id", "query": "question", "positive": "passage", "article": "title"})
    corpus = load_corpus(cfg, "all")
    assert corpus.group_ids == ["g1", "g2"] and corpus.record(0, "de").positive == "P."
    assert corpus.articles() == ["A", "B"]

    with pytest.raises(DataError) as e:
        load_corpus(DataConfig(format="hf", path=str(tmp_path / "ds"), hf_columns={"positive": "answer"}), "all")
    assert e.value.field_name == "answer" and "no such column" in str(e.value)
    with pytest.raises(DataError) as e:
        load_corpus(DataConfig(format="hf", path=str(tmp_path / "ds")), "all")  # no canonical 'group_id'
    assert e.value.field_name == "group_id" and e.value.where == "record 0"
    with pytest.raises(DataError) as e:
        load_corpus(DataConfig(format="hf", path=str(tmp_path / "ds"), hf_split="test",
                               hf_columns={"group_id": "id"}), "all")
    assert "split" in str(e.value)
