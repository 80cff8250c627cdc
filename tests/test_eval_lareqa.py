"""LAReQA evaluation: a hand-made benchmark with known ranks, brute-force and ir_measures
cross-checks, and real XQuAD-R (candidate counts of the LAReQA table, 121 settings)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_dist.data.records import DataError
from hybrid_dist.data.split import ArticleSplit
from hybrid_dist.evaluation import (
    build_lareqa,
    evaluate_lareqa,
    evaluate_xquad_r,
    load_lareqa,
    score_lareqa,
)
from hybrid_dist.evaluation.lareqa import encode_benchmark
from toy_eval import HashingEncoder, tiny_biencoder, write_toy_lareqa

XQUAD_R = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xquad-r"
needs_xquad_r = pytest.mark.skipif(not (XQUAD_R / "en.json").exists(), reason=f"XQuAD-R not found at {XQUAD_R}")

# LAReQA (Roy et al., 2020), XQuAD-R candidate sentences per language
LAREQA_CANDIDATES = {"ar": 1222, "de": 1276, "el": 1234, "en": 1180, "es": 1215, "hi": 1244,
                     "ru": 1219, "th": 852, "tr": 1167, "vi": 1209, "zh": 1196}
SUMMARY_KEYS = {"mono_map", "cross_map", "multi_map", "mono_map@20", "cross_map@20", "multi_map@20",
                "mono_r@1", "mono_r@10", "cross_r@1", "cross_r@10", "multi_r@1", "multi_r@10",
                "bias_max_rank_distance", "bias_same_minus_other"}


class LookupEncoder:
    """Returns a fixed vector per text (KeyError for an unexpected text)."""

    def __init__(self, table):
        self.table = table
        self.fingerprint = "lookup"

    def encode(self, texts, kind, batch_size=64, show_progress=False):
        return torch.tensor(np.array([self.table[t] for t in texts], dtype=np.float32))


def test_hand_made_benchmark_known_values(tmp_path):
    bench = load_lareqa(write_toy_lareqa(tmp_path / "toy"), part="all", name="toy")
    assert bench.langs == ["de", "en"]
    # pool order: de block (D0 D1 D2), then en (E0 E1 E2); candidates are one-hot, a query's
    # vector lists its score for each pool position
    cands = ["D0 eins.", "D1 zwei.", "D2 drei.", "E0 alpha.", "E1 beta.", "E2 gamma."]
    table = {c: np.eye(6)[i] for i, c in enumerate(cands)}
    table.update({
        "en question one": [.9, .2, .5, .8, .1, .3],  # relevant D1, E0
        "en question two": [.1, .2, .7, .4, .6, .5],  # relevant D2, E2
        "de Frage eins": [.3, .9, .1, .2, .8, .4],    # relevant D1, E0
        "de Frage zwei": [.5, .4, .3, .2, .1, .6],    # relevant D2, E2
    })
    r = evaluate_lareqa(LookupEncoder(table), bench)
    m = r.matrix["map"]
    assert m["en"]["en"] == pytest.approx((1 + 1 / 2) / 2)
    assert m["en"]["de"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["de"]["de"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["de"]["en"] == pytest.approx((1 / 3 + 1) / 2)
    # multilingual pool ranks: en q1 -> 2, 5; en q2 -> 1, 3; de q1 -> 1, 5; de q2 -> 1, 4
    assert r.multi["map"]["en"] == pytest.approx(((1 / 2 + 2 / 5) / 2 + (1 + 2 / 3) / 2) / 2)
    assert r.multi["map"]["de"] == pytest.approx(((1 + 2 / 5) / 2 + (1 + 2 / 4) / 2) / 2)
    s = r.summary
    assert SUMMARY_KEYS <= set(s)
    assert s["mono_map"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert s["cross_map"] == pytest.approx(2 / 3)
    assert s["multi_map"] == pytest.approx((0.641666667 + 0.725) / 2)
    assert s["mono_r@1"] == pytest.approx(0.5) and s["mono_r@10"] == 1.0
    assert s["multi_r@1"] == pytest.approx((0 + 0.5 + 0.5 + 0.5) / 4)
    # bias: max rank distance en (3, 2), de (4, 3); same - other: en (2-5, 3-1), de (1-5, 4-1)
    assert r.bias["en"]["max_rank_distance"] == pytest.approx(2.5)
    assert s["bias_max_rank_distance"] == pytest.approx(3.0)
    assert r.bias["en"]["same_minus_other"] == pytest.approx(-0.5)
    assert s["bias_same_minus_other"] == pytest.approx(-0.5)
    assert r.n_settings == 4 and r.counts["pool"] == 6


def test_candidate_context_changes_the_encoded_text(tmp_path):
    bench = load_lareqa(write_toy_lareqa(tmp_path / "toy"), part="all")
    enc = HashingEncoder(dim=16)
    plain = bench.languages["en"].candidate_texts(False)
    ctx = bench.languages["en"].candidate_texts(True)
    assert plain[0] == "E0 alpha." and ctx[0] == "E0 alpha.\nE0 alpha. E1 beta. E2 gamma."
    r1 = evaluate_lareqa(enc, bench, candidate_context=False)
    r2 = evaluate_lareqa(enc, bench, candidate_context=True)
    assert r2.config["candidate_context"] is True and r1.config["candidate_context"] is False


def _random_benchmark(rng, langs=("aa", "bb", "cc"), n_q=30, n_s=40, missing=0.2):
    """Synthetic parsed data: every language has its own paragraphs; some questions lack
    parallels, some answers span two sentences, and one candidate text is duplicated."""
    from hybrid_dist.data.squad import SquadArticle, SquadParagraph, SquadQuestion

    parsed = {}
    for li, lang in enumerate(langs):
        sentences = [f"{lang} sentence {i}" for i in range(n_s)]
        sentences[5] = sentences[4]  # a duplicate candidate: an exact tie
        questions = []
        for q in range(n_q):
            if li > 0 and rng.random() < missing:
                continue
            span = tuple(sorted(rng.choice(n_s, size=int(rng.integers(1, 3)), replace=False)))
            questions.append(SquadQuestion(f"q{q}", f"{lang} question {q}", 0, "x", span))
        parsed[lang] = [SquadArticle("A", (SquadParagraph(" ".join(sentences), tuple(sentences), tuple(questions)),))]
    return build_lareqa(parsed, name="random")


def _brute_force(bench, q_emb, c_emb):
    """Every setting by sorting the full score rows (stable: ties by pool position)."""
    langs = bench.langs
    pool = np.concatenate([c_emb[lang] for lang in langs])
    offsets = np.r_[0, np.cumsum([len(c_emb[lang]) for lang in langs])]
    index = {lang: {qid: i for i, qid in enumerate(bench.languages[lang].qids)} for lang in langs}
    out = {}
    for x in langs:
        for qi, qid in enumerate(bench.languages[x].qids):
            scores = pool @ q_emb[x][qi]
            rel_all = []
            for yi, y in enumerate(langs):
                j = index[y].get(qid)
                if j is None:
                    continue
                block = scores[offsets[yi]: offsets[yi + 1]]
                order = np.argsort(-block, kind="stable")
                pos = np.empty(len(block), int)
                pos[order] = np.arange(1, len(block) + 1)
                rel = bench.languages[y].relevant[j]
                out.setdefault((x, y), []).append(sorted(pos[list(rel)]))
                rel_all += [offsets[yi] + c for c in rel]
            order = np.argsort(-scores, kind="stable")
            pos = np.empty(len(scores), int)
            pos[order] = np.arange(1, len(scores) + 1)
            out.setdefault((x, "multi"), []).append(sorted(pos[rel_all]))
            own = [c for c in rel_all if offsets[langs.index(x)] <= c < offsets[langs.index(x) + 1]]
            other = [c for c in rel_all if c not in own]
            if other:
                out.setdefault((x, "distance"), []).append(pos[rel_all].max() - pos[rel_all].min())
                out.setdefault((x, "same-other"), []).append(pos[own].mean() - pos[other].mean())
    return out


def test_ranks_match_brute_force_sorting_including_ties():
    from hybrid_dist.evaluation.metrics import nanmean, pad_ranks, rank_metrics

    rng = np.random.default_rng(3)
    bench = _random_benchmark(rng)
    dim = 8
    q_emb = {lang: rng.standard_normal((len(v.qids), dim)).astype(np.float32) for lang, v in bench.languages.items()}
    c_emb = {lang: rng.standard_normal((len(v.sentences), dim)).astype(np.float32) for lang, v in bench.languages.items()}
    for lang in bench.langs:
        c_emb[lang][5] = c_emb[lang][4]  # duplicate text, identical embedding
        c_emb[lang][7] = c_emb[lang][4]  # and one more exact tie at a later position
    r = score_lareqa(bench, q_emb, c_emb, max_elems=500)  # tiny chunks: exercises the chunking
    expected = _brute_force(bench, q_emb, c_emb)
    for x in bench.langs:
        assert r.bias[x]["max_rank_distance"] == pytest.approx(np.mean(expected.pop((x, "distance"))))
        assert r.bias[x]["same_minus_other"] == pytest.approx(np.mean(expected.pop((x, "same-other"))))
    for (x, y), ranks in expected.items():
        per_q = rank_metrics(pad_ranks(ranks), (1, 10), (20,))
        got = r.multi if y == "multi" else None
        for metric in ("map", "map@20", "r@1", "r@10"):
            value = r.multi[metric][x] if got is not None else r.matrix[metric][x][y]
            assert value == pytest.approx(nanmean(per_q[metric]), abs=1e-12), (x, y, metric)
    # questions without a parallel are skipped in X->Y but still scored in the pool
    assert r.n_queries["aa"]["bb"] == len(bench.languages["bb"].qids)
    assert r.n_queries_multi["aa"] == len(bench.languages["aa"].qids)


def _hash_vector(text: str, dim: int = 24) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


class RandomTextEncoder:
    """A fixed random unit vector per text (identical texts tie, nothing else does)."""

    fingerprint = "random-text"

    def encode(self, texts, kind, batch_size=64, show_progress=False):
        return torch.from_numpy(np.stack([_hash_vector(kind + t) for t in texts]))


@needs_xquad_r
def test_lareqa_map_matches_ir_measures_on_xquad_r():
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import AP, R

    bench = load_lareqa(XQUAD_R, languages=["en", "de", "zh"], part="heldout")
    q_emb, c_emb = encode_benchmark(RandomTextEncoder(), bench)
    r = score_lareqa(bench, q_emb, c_emb)
    langs = bench.langs
    sizes = [len(c_emb[lang]) for lang in langs]
    offsets = np.r_[0, np.cumsum(sizes)]
    n_pool = offsets[-1]
    # docnos descend with pool position, so trec_eval's tie rule (docno descending) = ours
    docno = [f"{n_pool - i:07d}" for i in range(n_pool)]
    pool = np.concatenate([c_emb[lang] for lang in langs])
    index = {lang: {qid: i for i, qid in enumerate(bench.languages[lang].qids)} for lang in langs}
    for x in ("en", "zh"):
        lx = bench.languages[x]
        scores = q_emb[x] @ pool.T
        for target in ("de", "zh", "multi"):
            ys = langs if target == "multi" else [target]
            qrels, run = {}, {}
            for qi, qid in enumerate(lx.qids):
                cols = [c for y in ys for c in range(offsets[langs.index(y)], offsets[langs.index(y) + 1])]
                run[qid] = {docno[c]: float(scores[qi, c]) for c in cols}
                qrels[qid] = {docno[offsets[langs.index(y)] + c]: 1 for y in ys
                              for c in bench.languages[y].relevant[index[y][qid]]}
            agg = ir_measures.calc_aggregate([AP, AP @ 20, R @ 1, R @ 10], qrels, run)
            ours = {m: (r.multi[m][x] if target == "multi" else r.matrix[m][x][target])
                    for m in ("map", "map@20", "r@1", "r@10")}
            assert ours["map"] == pytest.approx(agg[AP], abs=1e-9), (x, target)
            assert ours["map@20"] == pytest.approx(agg[AP @ 20], abs=1e-9), (x, target)
            assert ours["r@1"] == pytest.approx(agg[R @ 1], abs=1e-9), (x, target)
            assert ours["r@10"] == pytest.approx(agg[R @ 10], abs=1e-9), (x, target)


@needs_xquad_r
def test_xquad_r_counts_and_121_settings():
    bench = load_lareqa(XQUAD_R, part="all")
    counts = bench.counts()
    assert counts["candidates"] == LAREQA_CANDIDATES
    assert set(counts["questions"].values()) == {1190}
    assert counts["articles"] == 48
    enc = HashingEncoder(dim=48)
    r = evaluate_lareqa(enc, bench)
    assert r.n_settings == 121
    assert len(r.languages) == 11 and r.counts["pool"] == sum(LAREQA_CANDIDATES.values())
    assert all(r.n_queries[x][y] == 1190 for x in r.languages for y in r.languages)
    assert SUMMARY_KEYS <= set(r.summary) and all(np.isfinite(v) for v in r.summary.values())
    # a lexical encoder: same-language retrieval beats chance by far, and the pool is language-biased
    assert r.summary["mono_map"] > 0.2 > r.summary["cross_map"]
    assert r.summary["bias_same_minus_other"] < 0
    # one encode call per kind, every text once
    assert enc.calls == [("query", 11 * 1190), ("passage", sum(LAREQA_CANDIDATES.values()))]


@needs_xquad_r
def test_heldout_part_uses_the_training_split():
    split = ArticleSplit("parity")
    held = load_lareqa(XQUAD_R, split=split, part="heldout")
    train = load_lareqa(XQUAD_R, split=split, part="train")
    assert len(held.articles) == 24 and len(train.articles) == 24
    assert not set(held.articles) & set(train.articles)
    assert held.counts()["questions"]["en"] + train.counts()["questions"]["en"] == 1190
    assert held.counts()["candidates"]["th"] + train.counts()["candidates"]["th"] == 852


@needs_xquad_r
def test_evaluate_xquad_r_contract_with_a_tiny_biencoder():
    model = tiny_biencoder(["the quick brown fox", "der schnelle fuchs"], hidden=32, layers=2)
    r = evaluate_xquad_r(model, XQUAD_R, split=ArticleSplit("parity"), part="heldout",
                         languages=["en", "de"], batch_size=128)
    assert SUMMARY_KEYS <= set(r.summary)
    assert all(isinstance(v, float) for v in r.summary.values())
    assert r.n_settings == 4 and r.config["part"] == "heldout"
    assert r.counts["questions"] == {"de": 578, "en": 578}
    assert model.training  # encode restores the mode


def test_bad_benchmark_files_raise_data_errors(tmp_path):
    d = write_toy_lareqa(tmp_path / "bad")
    (d / "de.json").write_text('{"data": [ {"title": "T", "paragraphs": [ }', encoding="utf-8")
    with pytest.raises(DataError, match=r"de\.json: line 1 column \d+: invalid JSON"):
        load_lareqa(d, part="all")
    doc = json.loads((d / "en.json").read_text())
    del doc["data"][0]["paragraphs"][0]["qas"][1]["question"]
    (d / "de.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"qas\[1\].*field 'question': missing"):
        load_lareqa(d, part="all")
    with pytest.raises(DataError, match="no file for language"):
        load_lareqa(tmp_path / "bad", languages=["xx"], part="all")
    with pytest.raises(DataError, match="not a directory"):
        load_lareqa(tmp_path / "nowhere", part="all")


def test_empty_heldout_part_is_an_error(tmp_path):
    d = write_toy_lareqa(tmp_path / "one-article")  # a single article: parity holds out nothing
    with pytest.raises(DataError, match="no questions left in the 'heldout' part"):
        load_lareqa(d, part="heldout")
