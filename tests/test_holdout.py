"""Language hold-out: the seen/unseen cells on a hand-made benchmark whose every number is worked
out by hand below, the training side of the split (only seen languages are trained on), and the
config rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_dist.config import ConfigError, load_config
from hybrid_dist.evaluation.lareqa import LareqaBenchmark, LareqaLanguage, score_lareqa
from hybrid_dist.evaluation.report import format_holdout_table

# Four languages, one question each; every language's pool is [answer, distractor]. Candidates are
# one-hot vectors (pool order a0 a1 b0 b1 c0 c1 d0 d1), so a query's embedding *is* its score row.
LANGS = ["a", "b", "c", "d"]
SCORES = {  # a0   a1   b0   b1   c0   c1   d0   d1
    "a": [.90, .10, .50, .60, .30, .70, .20, .05],
    "b": [.40, .80, .90, .10, .60, .20, .30, .05],
    "c": [.60, .10, .20, .30, .90, .80, .70, .50],
    "d": [.10, .20, .60, .30, .40, .50, .80, .90],
}
GROUPS = {"seen": ["a", "b"], "unseen": ["c", "d"]}


def _benchmark():
    langs = {x: LareqaLanguage(x, ["q1"], [f"question {x}"], [f"answer {x}", f"other {x}"], ["", ""], [(0,)])
             for x in LANGS}
    bench = LareqaBenchmark("hand", "", langs)
    eye = np.eye(8, dtype=np.float32)
    cand = {x: eye[2 * i: 2 * i + 2] for i, x in enumerate(LANGS)}
    query = {x: np.asarray([SCORES[x]], dtype=np.float32) for x in LANGS}
    return bench, query, cand


@pytest.fixture(scope="module")
def cells():
    bench, query, cand = _benchmark()
    return score_lareqa(bench, query, cand, device="cpu", language_groups=GROUPS).groups


def test_cells_are_the_hand_computed_numbers(cells):
    # X->Y (pool = Y's two candidates): AP 1 if answer Y0 outscores distractor Y1, else 1/2.
    #   a: a 1, b .5 (.5<.6), c .5 (.3<.7), d 1      b: a .5, b 1, c 1, d 1
    #   c: a 1, b .5, c 1, d 1                       d: a .5, b 1, c .5 (.4<.5), d .5 (.8<.9)
    # multilingual pool of the seen group {a0 a1 b0 b1}, relevant a0 and b0:
    #   a: a0 .9 > b1 .6 > b0 .5 > a1 .1: ranks 1, 3 -> AP (1 + 2/3)/2 = 5/6, spread 2
    #   b: b0 .9 > a1 .8 > a0 .4 > b1:    ranks 1, 3 -> 5/6, spread 2
    #   c: a0 .6 > b1 .3 > b0 .2 > a1:    ranks 1, 3 -> 5/6, spread 2
    #   d: b0 .6 > b1 .3 > a1 .2 > a0 .1: ranks 1, 4 -> (1 + 2/4)/2 = 3/4, spread 3
    # pool of the unseen group {c0 c1 d0 d1}, relevant c0 and d0:
    #   a: c1 .7 > c0 .3 > d0 .2 > d1:    ranks 2, 3 -> (1/2 + 2/3)/2 = 7/12, spread 1
    #   b: c0 .6 > d0 .3 > c1 .2 > d1:    ranks 1, 2 -> 1, spread 1
    #   c: c0 .9 > c1 .8 > d0 .7 > d1 .5: ranks 1, 3 -> 5/6, spread 2
    #   d: d1 .9 > d0 .8 > c1 .5 > c0 .4: ranks 2, 4 -> (1/2 + 2/4)/2 = 1/2, spread 2
    want = {
        "seen->seen": {"mono_map": (1 + 1) / 2, "cross_map": (.5 + .5) / 2, "multi_map": 5 / 6,
                       "bias_max_rank_distance": 2},
        "seen->unseen": {"cross_map": (.5 + 1 + 1 + 1) / 4, "multi_map": (7 / 12 + 1) / 2,
                         "bias_max_rank_distance": 1},
        "unseen->seen": {"cross_map": (1 + .5 + .5 + 1) / 4, "multi_map": (5 / 6 + 3 / 4) / 2,
                         "bias_max_rank_distance": (2 + 3) / 2},
        "unseen->unseen": {"mono_map": (1 + .5) / 2, "cross_map": (1 + .5) / 2, "multi_map": (5 / 6 + 1 / 2) / 2,
                           "bias_max_rank_distance": 2},
    }
    assert cells["groups"] == GROUPS
    assert set(cells["cells"]) == set(want)
    for cell, metrics in want.items():
        got = cells["cells"][cell]
        assert set(got) == set(metrics), (cell, sorted(got))
        for metric, value in metrics.items():
            assert got[metric] == pytest.approx(value, abs=1e-9), (cell, metric)


def test_no_groups_no_cells_and_one_sided_groups():
    bench, query, cand = _benchmark()
    assert score_lareqa(bench, query, cand, device="cpu").groups == {}
    every = score_lareqa(bench, query, cand, device="cpu", language_groups={"seen": LANGS, "unseen": []}).groups
    assert every["cells"]["seen->seen"]["mono_map"] == pytest.approx((1 + 1 + 1 + .5) / 4)
    assert math.isnan(every["cells"]["unseen->unseen"]["mono_map"])
    assert math.isnan(every["cells"]["seen->unseen"]["multi_map"])


def test_table_has_every_cell_with_the_difference(cells):
    base = {"groups": cells["groups"], "cells": {c: {k: v - 0.25 if not k.startswith("bias") else v + 10
                                                     for k, v in m.items()} for c, m in cells["cells"].items()}}
    text = format_holdout_table(base, cells)
    assert "seen: a, b; unseen: c, d" in text
    rows = [line for line in text.splitlines() if line.startswith("| | Δ")]
    assert len(rows) == 4
    assert rows[0].split("|")[3:7] == [" +0.250 ", " +0.250 ", " +0.250 ", " -10 "]  # seen->seen: all four columns
    assert rows[1].split("|")[3].strip() == "–"  # seen->unseen has no mono cell


# ----------------------------------------------------------------------------- training side


def test_training_reads_only_the_seen_languages(xquad_dir):
    from hybrid_dist.data.preview import build_sampler, preview_batches

    cfg = load_config(None, [f"data.path={xquad_dir}", "data.languages=[en,de,es,ru]",
                             "data.train_languages=[en,de]", "sampler.batch_size=8"])
    corpus, _ = build_sampler(cfg)
    assert sorted(corpus.languages) == ["de", "en"]
    langs = {lang for batch in preview_batches(cfg, 20) for p in batch["pairs"]
             for lang in (p["query_lang"], p["passage_lang"])}
    assert langs == {"de", "en"}


@pytest.mark.parametrize("overrides, message", [
    (["data.languages=[en,de]", "data.train_languages=[en,ru]"], "not in data.languages"),
    (["data.train_languages=[]"], "trains on nothing"),
    (["data.train_languages=[en,en]"], "twice"),
    (["data.train_languages=[en]", "sampler.mode=hybrid"], "at least 2 training languages"),
    (["optim.retention_weight=-1"], "retention_weight"),
])
def test_config_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_one_training_language_is_fine_for_monolingual_batches():
    cfg = load_config(None, ["data.train_languages=[en]", "sampler.mode=mono"])
    assert cfg.data.train_languages == ["en"]


def test_cli_hold_out_cells_agree_with_the_matrix(tmp_path, xquad_dir, capsys):
    """`hybrid_dist.evaluate --seen-languages` on real XQuAD-R (a tiny random encoder): with one
    unseen language the pool of the unseen group is that language alone, so its multilingual cells
    must equal X->es settings that the main scorer computes independently."""
    from hybrid_dist.evaluate import main
    from toy_eval import tiny_biencoder

    model = tiny_biencoder(["the quick brown fox", "der schnelle braune fuchs"], hidden=32, layers=1)
    model.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "out"
    assert main(["--model", str(tmp_path / "tiny"), "--benchmark", "xquad-r", "--data", str(xquad_dir),
                 "--languages", "en,de,es", "--seen-languages", "en,de", "--output-dir", str(out), "--no-cache",
                 "--no-progress", "--no-heatmap", "--batch-size", "128"]) == 0
    assert "seen->unseen" in capsys.readouterr().out
    import json

    r = json.loads((out / "results.json").read_text())["results"]["xquad-r"]
    m, cells = r["matrix"]["map"], r["groups"]["cells"]
    assert r["groups"]["groups"] == {"seen": ["de", "en"], "unseen": ["es"]}
    assert cells["unseen->unseen"]["multi_map"] == pytest.approx(m["es"]["es"], abs=1e-9)
    assert cells["seen->unseen"]["multi_map"] == pytest.approx((m["en"]["es"] + m["de"]["es"]) / 2, abs=1e-9)
    assert cells["seen->unseen"]["cross_map"] == pytest.approx((m["en"]["es"] + m["de"]["es"]) / 2, abs=1e-9)
    assert cells["seen->seen"]["mono_map"] == pytest.approx((m["en"]["en"] + m["de"]["de"]) / 2, abs=1e-9)
    assert cells["unseen->seen"]["cross_map"] == pytest.approx((m["es"]["en"] + m["es"]["de"]) / 2, abs=1e-9)
    assert cells["unseen->unseen"]["cross_map"] is None  # nan (no X != Y pair in one language), JSON null
