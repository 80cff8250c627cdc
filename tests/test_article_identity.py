"""One article identity for training and evaluation (issue #27): a question never trains in one
language and is held out in another, whatever titles a language translates or which languages
each side reads; and setup() refuses a run whose held-out questions are training questions."""

from __future__ import annotations

import json
import shutil

import pytest

from hybrid_dist.config import DataConfig, EvalConfig, Config
from hybrid_dist.data import DataError, load_corpus, training_view
from hybrid_dist.data.split import ArticleSplit
from hybrid_dist.evaluation.lareqa import load_lareqa
from hybrid_dist.training.reliability.preflight import check_evaluation_data


@pytest.fixture(scope="module")
def translated_titles(xquad_dir, tmp_path_factory):
    """XQuAD-R with every German title translated (the other languages keep theirs)."""
    out = tmp_path_factory.mktemp("xquad-translated")
    for path in sorted(xquad_dir.glob("*.json")):
        shutil.copy(path, out / path.name)
    doc = json.loads((out / "de.json").read_text(encoding="utf-8"))
    for article in doc["data"]:
        article["title"] = f"Artikel über {article['title']}"
    (out / "de.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return out


def _raw_qids_by_title(path):
    """Oracle from the raw JSON: title -> question ids of one file."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {a["title"]: {qa["id"] for p in a["paragraphs"] for qa in p["qas"]} for a in doc["data"]}


@pytest.mark.parametrize("split", ["hash", "parity"])
def test_translated_titles_and_a_language_holdout_never_leak(translated_titles, split):
    data = DataConfig(path=str(translated_titles), split=split, train_languages=["de", "en"])
    train = load_corpus(training_view(data), "train")
    held = load_lareqa(translated_titles, None, ArticleSplit(split, 0.5), "heldout")
    train_ids = set(train.group_ids)
    held_ids = {q for lang in held.languages.values() for q in lang.qids}
    assert train_ids and held_ids
    assert not train_ids & held_ids  # before the fix: 209 of 533 held-out questions trained (hash)
    # every English article (by the raw file) lies wholly on one side
    for title, qids in _raw_qids_by_title(translated_titles / "en.json").items():
        sides = {("train" if q in train_ids else "heldout" if q in held_ids else "?") for q in qids}
        assert len(sides) == 1 and "?" not in sides, (title, sides)


def test_training_and_evaluation_split_the_same_way_whatever_languages_they_read(translated_titles):
    """The held-out part read over two languages holds the same questions as over all of them."""
    split = ArticleSplit("hash", 0.5)
    some = load_lareqa(translated_titles, ["de", "en"], split, "heldout")
    every = load_lareqa(translated_titles, None, split, "heldout")
    assert set(some.languages["de"].qids) == set(every.languages["de"].qids)
    assert set(some.languages["en"].qids) == set(every.languages["en"].qids)


def test_setup_check_names_the_overlap(xquad_dir):
    cfg = Config(data=DataConfig(path=str(xquad_dir)), eval=EvalConfig(part="heldout"))
    held = load_lareqa(xquad_dir, None, ArticleSplit(), "heldout")
    held_ids = sorted({q for lang in held.languages.values() for q in lang.qids})
    train = load_corpus(cfg.data, "train")
    check_evaluation_data(cfg, train.group_ids)  # disjoint: passes
    with pytest.raises(DataError) as err:
        check_evaluation_data(cfg, list(train.group_ids) + held_ids[:7])
    message = str(err.value)
    assert f"7 of {len(held_ids)} held-out questions are also training questions" in message
    assert "data.split" in message and str(xquad_dir) in message
