"""MLQA-R builder on a fixture in the official MLQA v1 layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_dist.data.records import DataError
from hybrid_dist.data.split import ArticleSplit
from hybrid_dist.evaluate import main
from hybrid_dist.evaluation import build_lareqa, build_mlqa_r, evaluate_mlqa_r, load_lareqa, write_squad_dir
from hybrid_dist.evaluation.lareqa import select_articles
from toy_eval import HashingEncoder


def _para(context, qas):
    return {"context": context, "qas": [
        {"id": qid, "question": q, "answers": [{"answer_start": context.index(a), "text": a}]} for qid, q, a in qas]}


def write_mlqa(root: Path) -> Path:
    """MLQA_V1/{test,dev}: en, de, ar same-language files, plus a cross-language file."""
    test, dev = root / "test", root / "dev"
    test.mkdir(parents=True)
    dev.mkdir(parents=True)
    en = {"data": [
        {"title": "Article A", "paragraphs": [
            _para("Paris is the capital. It lies on the Seine. The river is long.",
                  [("q1", "What is the capital?", "Paris"), ("q2", "Where does it lie?", "on the Seine")]),
            _para("The tower was built in 1889. It is tall!", [("q3", "When was the tower built?", "1889")]),
        ]},
        {"title": "Article B", "paragraphs": [
            _para("Berlin has many museums. Berlin is large.", [("q4", "What does Berlin have?", "many museums")]),
        ]},
    ]}
    de_ctx = "Paris ist die Hauptstadt. Es liegt an der Seine. Der Fluss ist lang."
    de = {"data": [
        {"title": "Artikel A", "paragraphs": [
            _para(de_ctx, [("q1", "Was ist die Hauptstadt?", "Paris")]),
            _para(de_ctx, [("q2", "Wo liegt es?", "an der Seine"), ("q1", "Was ist die Hauptstadt?", "Paris")]),
        ]},
        {"title": "Artikel B", "paragraphs": [
            _para("Berlin hat viele Museen. Berlin ist groß.", [("q4", "Was hat Berlin?", "viele Museen")]),
        ]},
    ]}
    ar = {"data": [
        {"title": "مقالة أ", "paragraphs": [_para("باريس هي العاصمة. تقع على نهر السين.", [("q1", "ما هي العاصمة؟", "باريس")])]},
        {"title": "مقالة ب", "paragraphs": [_para("برلين فيها متاحف كثيرة. برلين كبيرة.", [("q4", "ماذا في برلين؟", "متاحف كثيرة")])]},
    ]}
    cross = {"data": [{"title": "Artikel A", "paragraphs": [_para(de_ctx, [("q1", "What is the capital?", "Paris")])]}]}
    for name, doc in (("test-context-en-question-en.json", en), ("test-context-de-question-de.json", de),
                      ("test-context-ar-question-ar.json", ar), ("test-context-de-question-en.json", cross)):
        (test / name).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    (dev / "dev-context-en-question-en.json").write_text(json.dumps(en), encoding="utf-8")
    return root


def _questions(articles):
    return {q.qid for a in articles for p in a.paragraphs for q in p.questions}


def test_build_groups_by_id_and_unifies_titles(tmp_path):
    root = write_mlqa(tmp_path / "MLQA_V1")
    parsed = build_mlqa_r(root, ["ar", "de", "en"])
    assert sorted(parsed) == ["ar", "de", "en"]
    for lang in parsed:
        assert {a.title for a in parsed[lang]} == {"Article A", "Article B"}
    assert _questions(parsed["de"]) == {"q1", "q2", "q4"}
    assert _questions(parsed["ar"]) == {"q1", "q4"}
    # the repeated German paragraph is merged, q1 kept once
    de_a = next(a for a in parsed["de"] if a.title == "Article A")
    assert len(de_a.paragraphs) == 1 and [q.qid for q in de_a.paragraphs[0].questions] == ["q1", "q2"]
    # sentences from the punctuation splitter; answers point at theirs
    en_a = next(a for a in parsed["en"] if a.title == "Article A")
    assert en_a.paragraphs[0].sentences == ("Paris is the capital.", "It lies on the Seine.", "The river is long.")
    assert en_a.paragraphs[0].questions[1].answer_sentences == (1,)
    bench = build_lareqa(parsed, name="mlqa-r")
    q, c = ({lang: v for lang, v in x.items()} for x in (bench.counts()["questions"], bench.counts()["candidates"]))
    assert q == {"ar": 2, "de": 3, "en": 4} and c == {"ar": 4, "de": 5, "en": 7}
    r = evaluate_mlqa_r(HashingEncoder(dim=16), root, languages=["ar", "de", "en"], part="all")
    assert r.n_settings == 9
    assert r.n_queries["en"] == {"ar": 2, "de": 3, "en": 4}  # only questions with a parallel
    assert r.n_queries["ar"]["de"] == 2 and r.n_queries_multi["en"] == 4


def test_split_folder_and_dev_files(tmp_path):
    root = write_mlqa(tmp_path / "MLQA_V1")
    assert sorted(build_mlqa_r(root / "test", ["de", "en"])) == ["de", "en"]  # the folder itself
    assert _questions(build_mlqa_r(root, ["en"], split="dev")["en"]) == {"q1", "q2", "q3", "q4"}
    with pytest.raises(DataError, match=r"no dev-context-X-question-X.json file for language\(s\) \['de'\]"):
        build_mlqa_r(root, ["de", "en"], split="dev")


def test_heldout_split_over_unified_titles(tmp_path):
    root = write_mlqa(tmp_path / "MLQA_V1")
    parsed = build_mlqa_r(root, ["ar", "de", "en"])
    held = select_articles(parsed, ArticleSplit("parity"), "heldout")
    assert held == {"Article B"}  # second title in first-appearance order
    r = evaluate_mlqa_r(HashingEncoder(dim=16), root, languages=["ar", "de", "en"], part="heldout")
    assert r.counts["questions"] == {"ar": 1, "de": 1, "en": 1}


def test_write_squad_dir_round_trip_and_cli(tmp_path, capsys):
    root = write_mlqa(tmp_path / "MLQA_V1")
    parsed = build_mlqa_r(root, ["ar", "de", "en"])
    out = write_squad_dir(parsed, tmp_path / "mlqa-r")
    assert sorted(p.name for p in out.iterdir()) == ["ar.json", "de.json", "en.json"]
    again = load_lareqa(out, part="all", name="mlqa-r")
    direct = build_lareqa(parsed)
    for lang in ("ar", "de", "en"):
        assert again.languages[lang].sentences == direct.languages[lang].sentences
        assert again.languages[lang].relevant == direct.languages[lang].relevant
    enc = HashingEncoder(dim=16)
    a = evaluate_mlqa_r(enc, out, part="all")
    b = evaluate_mlqa_r(enc, root, languages=["ar", "de", "en"], part="all")
    assert a.summary == pytest.approx(b.summary, nan_ok=True)
    assert main(["build-mlqa-r", "--mlqa", str(root), "--out", str(tmp_path / "cli"), "--languages", "de,en"]) == 0
    assert "de: 2 articles, 3 questions, 5 candidate sentences" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["de.json", "en.json"]


def test_malformed_mlqa_file_names_file_and_field(tmp_path):
    root = write_mlqa(tmp_path / "MLQA_V1")
    path = root / "test" / "test-context-de-question-de.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"test-context-de-question-de\.json: data\[1\]\.paragraphs\[0\]\.qas\[0\].*field 'text'"):
        build_mlqa_r(root, ["de", "en"])
