"""The paper's batch types on real XQuAD-R data, checked against an independent oracle.

Every combination the config allows of

    sampler.mode        mono | cross | hybrid (alpha 0.5) | xx | multilingual
    translations k      1 | 2 | 4        (k > 1: loss.name=multilingual, never with mono)
    hard negatives      off | data.max_hard_negatives=3 + sampler.num_negatives=1

at global batch 128, seed 0, on the training part of XQuAD-R, is drawn through the public
``hybrid_dist.data.preview.preview_batches`` (the texts exactly as the tokenizer gets them) and
checked step by step:

* mono steps hold one language for the whole batch (query == passage language);
* cross steps: query != passage language in every pair, >= 8 passage languages per batch;
* xx steps: query == passage language in every pair, >= 8 languages per batch;
* hybrid: the number of mono steps lies in the exact binomial 99.9% interval of alpha;
* k: every question id appears exactly k times, with k distinct passage languages (a mono step
  holds a single language, so there every question appears once; see the sampler docstring);
* zero false negatives by the oracle below;
* every pair is a real training record: its question and positive are the oracle's, its hard
  negatives are sentences of the question's article in the passage language.

The oracle reads the raw JSON files with the ``json`` module only. For every language L it maps
each sentence text to the question ids it answers: a question's answer sentence is the sentence
whose ``sentence_breaks`` span [b, e) contains ``answers[0].answer_start`` (if the start falls
between sentences, the first sentence starting at or after it). Texts are the ``sentences``
entries; the library feeds them to the tokenizer as-is, and a few carry surrounding whitespace
(22 in zh, 4 in ar, ...). The oracle keys them whitespace-normalized (``" ".join(s.split())``),
since two texts that differ only in whitespace are the same passage to a tokenizer; on this data
that gives exactly the partition exact-text keys give (no two sentences of one language differ
only in whitespace), so it is never looser than the library's own identity. Question ids are
shared across languages, so a German sentence "answers" question q for the English query of q
too.

A pool text (any pair's passage or hard negative, language = that pair's passage language) is a
false negative for query i (question q_i) when the oracle says it answers q_i, unless it is a
pair's *positive passage* of question q_i and the loss counts it positive: the query's own pair
always, another pair of the same question only under ``loss.name=multilingual``. A hard negative
is never a positive, so it must answer no question of the batch, its own pair's included.

The train/held-out split is re-derived too (``data.split: parity``): article titles in order of
first appearance (languages in sorted order), even positions train.

Default run: DEFAULT_STEPS steps per combination. ``-m slow`` runs SLOW_STEPS (the issue's 2,000).
Also here: rank slices and accumulation pools, determinism in (seed, step), config validation,
language smoothing on a synthetic corpus, and the ``--print-batches`` CLI.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BATCH = 128
ALPHA = 0.5
SEED = 0
DEFAULT_STEPS = 150
SLOW_STEPS = 2000
MIN_MIXED_LANGUAGES = 8  # cross / xx batches: distinct (passage) languages per batch
EXAMPLES = 5  # violations quoted per property in a failure message

STEP_MODES = {"mono": {"mono"}, "cross": {"cross"}, "hybrid": {"mono", "cross"}, "xx": {"xx"},
              "multilingual": {"multilingual"}}
EMPTY: frozenset[str] = frozenset()


# ---------------------------------------------------------------------------- combinations


@dataclass(frozen=True)
class Combo:
    mode: str
    k: int
    negatives: bool

    @property
    def loss(self) -> str:
        return "multilingual" if self.k > 1 else "infonce"

    @property
    def num_negatives(self) -> int:
        return 1 if self.negatives else 0

    @property
    def id(self) -> str:
        return f"{self.mode}-k{self.k}-{'hardneg' if self.negatives else 'nohardneg'}"

    def overrides(self, data_path: Path, seed: int = SEED) -> list[str]:
        out = [f"data.path={data_path}", f"sampler.mode={self.mode}", f"sampler.batch_size={BATCH}",
               f"sampler.translations_per_group={self.k}", f"loss.name={self.loss}", f"train.seed={seed}"]
        if self.mode == "hybrid":
            out.append(f"sampler.alpha={ALPHA}")
        if self.negatives:
            out += ["data.max_hard_negatives=3", "sampler.num_negatives=1"]
        return out


COMBOS = [Combo(mode, k, neg) for mode in ("mono", "cross", "hybrid", "xx", "multilingual")
          for k in (1, 2, 4) for neg in (False, True) if not (mode == "mono" and k > 1)]


# ---------------------------------------------------------------------------- the oracle


@functools.lru_cache(maxsize=None)
def norm(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Oracle:
    answers: dict[tuple[str, str], frozenset[str]]  # (lang, normalized sentence) -> question ids it answers
    question: dict[tuple[str, str], str]  # (qid, lang) -> question text
    answer_sentence: dict[tuple[str, str], str]  # (qid, lang) -> normalized answer sentence
    article: dict[str, str]  # qid -> article title
    article_sentences: dict[tuple[str, str], set[str]]  # (lang, title) -> normalized sentences
    train: frozenset[str]  # question ids of the training articles
    languages: list[str]
    _raw: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    def answered_by(self, lang: str, text: str) -> frozenset[str]:
        key = (lang, text)
        hit = self._raw.get(key)
        if hit is None:
            hit = self._raw[key] = self.answers.get((lang, norm(text)), EMPTY)
        return hit


def answer_sentence_index(breaks: list[list[int]], start: int) -> int:
    for i, (b, e) in enumerate(breaks):
        if b <= start < e:
            return i
    after = [i for i, (b, _) in enumerate(breaks) if b >= start]
    assert after, f"answer_start {start} after the last sentence"
    return after[0]


def build_oracle(directory: Path) -> Oracle:
    files = {p.stem: p for p in sorted(directory.glob("*.json"))}
    answers: dict[tuple[str, str], set[str]] = defaultdict(set)
    question, answer_sentence, article = {}, {}, {}
    article_sentences: dict[tuple[str, str], set[str]] = defaultdict(set)
    order: dict[str, None] = {}
    for lang in sorted(files):
        doc = json.loads(files[lang].read_text(encoding="utf-8"))
        for art in doc["data"]:
            title = art["title"]
            order.setdefault(title, None)
            for para in art["paragraphs"]:
                sentences, breaks = para["sentences"], para["sentence_breaks"]
                assert len(sentences) == len(breaks), (lang, title)
                article_sentences[(lang, title)].update(norm(s) for s in sentences)
                for qa in para["qas"]:
                    qid = str(qa["id"])
                    sentence = norm(sentences[answer_sentence_index(breaks, qa["answers"][0]["answer_start"])])
                    answers[(lang, sentence)].add(qid)
                    question[(qid, lang)] = qa["question"]
                    answer_sentence[(qid, lang)] = sentence
                    # the split is by article: a question must sit in one article in every language
                    assert article.setdefault(qid, title) == title, (qid, lang, title, article[qid])
    titles = list(order)
    train_titles = {t for i, t in enumerate(titles) if i % 2 == 0}
    train = frozenset(q for q, t in article.items() if t in train_titles)
    return Oracle({key: frozenset(v) for key, v in answers.items()}, question, answer_sentence, article,
                  dict(article_sentences), train, sorted(files))


@pytest.fixture(scope="module")
def oracle(xquad_dir) -> Oracle:
    o = build_oracle(xquad_dir)
    assert len(o.languages) == 11 and len(o.train) > 500, (o.languages, len(o.train))
    return o


# ---------------------------------------------------------------------------- drawing batches

_CORPORA: dict[str, object] = {}


def preview(cfg, steps: int):
    """``batch_preview.preview_batches`` with the training corpus loaded once per data config: the
    26 combinations share two corpora (with and without hard negatives), and parsing XQuAD-R takes
    about a second. The CLI and determinism tests load fresh corpora."""
    from hybrid_dist.data.preview import batch_as_dict, sampler_for
    from hybrid_dist.data import load_corpus

    key = repr(cfg.data)
    if key not in _CORPORA:
        _CORPORA[key] = load_corpus(cfg.data, "train")
    corpus = _CORPORA[key]
    sampler = sampler_for(cfg, corpus)
    for step in range(steps):
        yield batch_as_dict(corpus, sampler.batch(step))


@pytest.fixture(scope="module")
def configs(xquad_dir):
    """Combo -> loaded Config, each loaded once."""
    from hybrid_dist.config import load_config

    cache = {}

    def get(combo: Combo):
        if combo not in cache:
            cache[combo] = load_config(None, combo.overrides(xquad_dir))
        return cache[combo]

    return get


@dataclass
class Violations:
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, prop: str, message: str) -> None:
        self.counts[prop] += 1
        if len(self.examples[prop]) < EXAMPLES:
            self.examples[prop].append(message)

    def report(self, header: str) -> str:
        lines = [header]
        for prop, n in self.counts.most_common():
            lines.append(f"  {prop}: {n} violation(s); first {len(self.examples[prop])}:")
            lines += [f"    - {m}" for m in self.examples[prop]]
        return "\n".join(lines)


def short(text: str, n: int = 70) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


@dataclass
class RunStats:
    steps: int = 0
    modes: Counter = field(default_factory=Counter)
    same_language_pairs: int = 0
    cross_language_pairs: int = 0
    false_negatives: int = 0


def check_batch(b: dict, expected_step: int, combo: Combo, o: Oracle, v: Violations, stats: RunStats) -> None:
    step, mode, pairs = b.get("step"), b.get("mode"), b.get("pairs", [])
    stats.steps += 1
    stats.modes[mode] += 1
    where = f"step {step}"
    if step != expected_step:
        v.add("step numbers", f"expected step {expected_step}, got {step}")
    if mode not in STEP_MODES[combo.mode]:
        v.add("step mode", f"{where}: mode {mode!r}, expected one of {sorted(STEP_MODES[combo.mode])}")
    if len(pairs) != BATCH:
        v.add("batch size", f"{where}: {len(pairs)} pairs, expected {BATCH}")

    # every pair is a real training record
    for j, p in enumerate(pairs):
        q, ql, pl = p["group_id"], p["query_lang"], p["passage_lang"]
        if q not in o.train:
            v.add("training split", f"{where} pair {j}: question {q} is not in a training article "
                                    f"({o.article.get(q, 'unknown article')})")
            continue
        if o.question.get((q, ql)) != p["query"]:
            v.add("record: query", f"{where} pair {j}: query {short(p['query'])} is not question {q} in {ql} "
                                   f"({short(o.question.get((q, ql), '<none>'))})")
        if norm(p["passage"]) != o.answer_sentence.get((q, pl)):
            v.add("record: positive", f"{where} pair {j}: passage {short(p['passage'])} is not the answer "
                                      f"sentence of {q} in {pl} ({short(o.answer_sentence.get((q, pl), '<none>'))})")
        if len(p["negatives"]) != combo.num_negatives:
            v.add("record: negatives", f"{where} pair {j}: {len(p['negatives'])} hard negatives, "
                                       f"expected {combo.num_negatives}")
        sentences = o.article_sentences.get((pl, o.article[q]), set())
        for n in p["negatives"]:
            if norm(n) not in sentences or norm(n) == norm(p["passage"]):
                v.add("record: negatives", f"{where} pair {j}: hard negative {short(n)} is not another sentence of "
                                           f"{o.article[q]!r} in {pl}")

    # batch types
    langs = [(p["query_lang"], p["passage_lang"]) for p in pairs]
    passage_langs = {pl for _, pl in langs}
    if mode == "mono":
        if len(set(langs)) != 1 or langs[0][0] != langs[0][1]:
            v.add("mono: one language", f"{where}: (query, passage) languages {dict(Counter(langs))}")
    elif mode == "cross":
        same = [j for j, (ql, pl) in enumerate(langs) if ql == pl]
        if same:
            v.add("cross: query != passage language", f"{where}: {len(same)} pairs with query language == passage "
                                                      f"language, e.g. pair {same[0]} {langs[same[0]]}")
        if len(passage_langs) < MIN_MIXED_LANGUAGES:
            v.add("cross: >= 8 passage languages", f"{where}: {sorted(passage_langs)}")
    elif mode == "xx":
        differ = [j for j, (ql, pl) in enumerate(langs) if ql != pl]
        if differ:
            v.add("xx: query == passage language", f"{where}: {len(differ)} pairs with query language != passage "
                                                   f"language, e.g. pair {differ[0]} {langs[differ[0]]}")
        if len(passage_langs) < MIN_MIXED_LANGUAGES:
            v.add("xx: >= 8 languages", f"{where}: {sorted(passage_langs)}")
    same_pairs = sum(ql == pl for ql, pl in langs)
    stats.same_language_pairs += same_pairs
    stats.cross_language_pairs += len(langs) - same_pairs

    # k translations per question (a mono step holds one language: one pair per question)
    by_qid: dict[str, list[int]] = defaultdict(list)
    for j, p in enumerate(pairs):
        by_qid[p["group_id"]].append(j)
    k = 1 if mode == "mono" else combo.k
    for q, js in by_qid.items():
        plangs = {pairs[j]["passage_lang"] for j in js}
        if len(js) != k or len(plangs) != k:
            v.add(f"k={k}: pairs per question", f"{where}: question {q} has {len(js)} pairs with passage languages "
                                                f"{sorted(pairs[j]['passage_lang'] for j in js)}, expected {k} distinct")

    # false negatives
    multilingual_loss = combo.loss == "multilingual"
    for j, p in enumerate(pairs):
        pl = p["passage_lang"]
        items = [("passage", p["passage"])] + [("hard negative", n) for n in p["negatives"]]
        for kind, text in items:
            for q in o.answered_by(pl, text):
                for i in by_qid.get(q, ()):
                    if kind == "passage" and p["group_id"] == q and (i == j or multilingual_loss):
                        continue  # a positive the loss counts
                    stats.false_negatives += 1
                    qp = pairs[i]
                    v.add("false negatives", f"{where}: query of pair {i} (question {q}, {qp['query_lang']}: "
                                             f"{short(qp['query'], 50)}) vs {kind} of pair {j} (question "
                                             f"{p['group_id']}, {pl}): {short(text)} answers {q}")


def binomial_interval(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    """Exact two-sided acceptance interval [lo, hi] of Binomial(n, p): P(X < lo) and P(X > hi) are
    each at most (1 - confidence) / 2."""
    if p <= 0.0 or p >= 1.0:
        return round(n * p), round(n * p)
    tail = (1.0 - confidence) / 2
    cdf, lo, hi = 0.0, None, n
    for x in range(n + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
                        + x * math.log(p) + (n - x) * math.log1p(-p))
        if lo is None and cdf > tail:
            lo = x
        if cdf >= 1.0 - tail:
            hi = x
            break
    return lo, hi


def run_combo(combo: Combo, steps: int, configs, oracle: Oracle) -> None:
    cfg = configs(combo)
    v, stats = Violations(), RunStats()
    for expected, b in enumerate(preview(cfg, steps)):
        check_batch(b, expected, combo, oracle, v, stats)
    if stats.steps != steps:
        v.add("step count", f"preview_batches yielded {stats.steps} batches, expected {steps}")
    if combo.mode == "hybrid":
        lo, hi = binomial_interval(steps, ALPHA)
        mono = stats.modes["mono"]
        if not lo <= mono <= hi:
            v.add("hybrid: mono steps ~ Binomial(steps, alpha)",
                  f"{mono} mono steps of {steps}; the 99.9% interval for alpha={ALPHA} is [{lo}, {hi}]")
    if combo.mode == "multilingual" and not (stats.same_language_pairs and stats.cross_language_pairs):
        v.add("multilingual: independent languages", f"{stats.same_language_pairs} same-language and "
                                                     f"{stats.cross_language_pairs} cross-language pairs in {steps} steps")
    assert not v.counts, v.report(f"{combo.id}, {steps} steps, batch {BATCH}, seed {SEED}: "
                                  f"{stats.false_negatives} false negative(s), modes {dict(stats.modes)}")


@pytest.mark.parametrize("combo", COMBOS, ids=[c.id for c in COMBOS])
def test_paper_batches(combo, configs, oracle):
    run_combo(combo, DEFAULT_STEPS, configs, oracle)


@pytest.mark.slow
@pytest.mark.ci_slow  # 2,000 steps of every setting: about 4-5 min in all
@pytest.mark.parametrize("combo", COMBOS, ids=[c.id for c in COMBOS])
def test_paper_batches_2000_steps(combo, configs, oracle):
    run_combo(combo, SLOW_STEPS, configs, oracle)


def test_oracle_catches_planted_false_negatives(configs, oracle):
    """The checker is not vacuous: false negatives planted into a real batch are found."""
    import copy

    combo = Combo("cross", 1, False)
    real = next(iter(preview(configs(combo), 1)))

    def false_negatives(batch: dict, c: Combo) -> int:
        v = Violations()
        check_batch(batch, 0, c, oracle, v, RunStats())
        return v.counts["false negatives"]

    assert false_negatives(real, combo) == 0
    p0, p1 = real["pairs"][0], real["pairs"][1]

    # another question's answer sentence as a hard negative (in pair 1's passage language)
    planted = copy.deepcopy(real)
    planted["pairs"][1]["negatives"] = [oracle.answer_sentence[(p0["group_id"], p1["passage_lang"])]]
    assert false_negatives(planted, combo) == 1
    # a pair's own answer sentence as its hard negative
    planted = copy.deepcopy(real)
    planted["pairs"][0]["negatives"] = [p0["passage"]]
    assert false_negatives(planted, combo) == 1

    # a translation of question 0 as pair 1: a false negative both ways under InfoNCE, a positive
    # under the multilingual loss
    other = next(lang for lang in oracle.languages if lang != p0["passage_lang"])
    planted = copy.deepcopy(real)
    planted["pairs"][1] = dict(p0, passage_lang=other, passage=oracle.answer_sentence[(p0["group_id"], other)])
    assert false_negatives(planted, combo) == 2
    assert false_negatives(planted, Combo("cross", 2, False)) == 0

    # two training questions answered by one sentence (common in XQuAD: several questions per sentence)
    lang, qids = next((lang, qids) for (lang, _), qids in oracle.answers.items() if len(qids & oracle.train) >= 2)
    qa, qb = sorted(qids & oracle.train)[:2]
    planted = copy.deepcopy(real)
    planted["pairs"] = [p for p in real["pairs"] if p["group_id"] not in qids][: BATCH - 2] + [
        {"group_id": q, "query_lang": lang, "passage_lang": lang, "query": oracle.question[(q, lang)],
         "passage": oracle.answer_sentence[(q, lang)], "negatives": []} for q in (qa, qb)]
    assert false_negatives(planted, combo) == 2


def test_binomial_interval():
    lo, hi = binomial_interval(100, 0.5)
    assert (lo, hi) == (34, 66)  # P(X <= 33) = 0.00044 <= 0.0005 < P(X <= 34) = 0.00089
    lo, hi = binomial_interval(2000, 0.5)
    assert 926 <= lo <= 927 and 1073 <= hi <= 1074  # normal approximation: 1000 -+ 3.29 * sqrt(500)


# ---------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("overrides", [
    ["sampler.translations_per_group=2", "loss.name=infonce"],
    ["sampler.mode=mono", "sampler.translations_per_group=2", "loss.name=multilingual"],
    ["sampler.alpha=1.5"],
    ["sampler.alpha=-0.1"],
], ids=["infonce-k2", "mono-k2", "alpha-1.5", "alpha--0.1"])
def test_invalid_combinations_are_config_errors(overrides):
    from hybrid_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError):
        load_config(None, ["sampler.batch_size=128"] + overrides)


def test_every_tested_combination_is_a_valid_config(xquad_dir):
    from hybrid_dist.config import load_config

    for combo in COMBOS:
        cfg = load_config(None, combo.overrides(xquad_dir))
        assert (cfg.sampler.mode, cfg.sampler.translations_per_group, cfg.loss.name) == (combo.mode, combo.k, combo.loss)


# ---------------------------------------------------------------------------- ranks and determinism

SHARDING_COMBOS = [Combo("cross", 1, False), Combo("hybrid", 4, True), Combo("multilingual", 2, True)]


@pytest.mark.parametrize("combo", SHARDING_COMBOS, ids=[c.id for c in SHARDING_COMBOS])
def test_rank_slices_and_determinism(combo, xquad_dir):
    from hybrid_dist.data.preview import build_sampler, preview_batches
    from hybrid_dist.config import load_config

    cfg = load_config(None, combo.overrides(xquad_dir))
    corpus_a, a = build_sampler(cfg)
    corpus_b, b = build_sampler(cfg)  # a fresh corpus and sampler
    steps = list(range(12))
    forward = {s: a.batch(s) for s in steps}
    scrambled = [7, 3, 11, 0, 5, 5, 9, 1, 10, 2, 8, 6, 4]  # 7 before 3, and one step drawn twice
    again = {s: b.batch(s) for s in scrambled}
    for s in steps:
        assert (again[s].step, again[s].mode, again[s].pairs) == (forward[s].step, forward[s].mode, forward[s].pairs), \
            f"step {s} differs between two samplers of one config (call order {scrambled})"
        assert a.batch(s) == forward[s], f"step {s} differs when drawn again by the same sampler"
    _, other_seed = build_sampler(load_config(None, combo.overrides(xquad_dir, seed=SEED + 1)))
    same = [s for s in steps if other_seed.batch(s).pairs == forward[s].pairs]
    assert not same, f"seed {SEED + 1} draws the same batches as seed {SEED} at steps {same}"

    # preview_batches(start=...) is the same sequence, in the corpus' group ids
    preview = list(preview_batches(cfg, 3, start=5))
    assert [p["step"] for p in preview] == [5, 6, 7]
    for p in preview:
        batch = forward[p["step"]]
        assert p["mode"] == batch.mode
        assert [(x["group_id"], x["query_lang"], x["passage_lang"]) for x in p["pairs"]] == \
               [(corpus_a.group_ids[y.group], y.query_lang, y.passage_lang) for y in batch.pairs]

    # rank slices over world sizes x accumulation steps join back to the global batch, in order;
    # each accumulation pool (one contrastive pool) holds whole questions
    for s in steps:
        batch = forward[s]
        for world_size in (1, 2, 4):
            for micro_steps in (1, 2):
                pools = [[a.rank_slice(batch, r, world_size, m, micro_steps) for r in range(world_size)]
                         for m in range(micro_steps)]
                sizes = {len(piece) for pool in pools for piece in pool}
                assert sizes == {BATCH // (world_size * micro_steps)}, (s, world_size, micro_steps, sizes)
                joined = [pair for pool in pools for piece in pool for pair in piece]
                assert joined == list(batch.pairs), f"step {s}: slices for world {world_size} x {micro_steps} " \
                                                    f"micro steps do not join back to the global batch"
                groups = [{pair.group for piece in pool for pair in piece} for pool in pools]
                split = set.intersection(*groups) if len(groups) > 1 else set()
                assert not split, f"step {s}: questions {sorted(corpus_a.group_ids[g] for g in split)[:5]} are " \
                                  f"split across accumulation pools ({micro_steps} micro steps)"


# ---------------------------------------------------------------------------- smoothing


def test_language_smoothing_per_pair():
    """xx draws each pair's language with probability size**smoothing (normalized), then a group
    that has it. Languages of sizes 400/200/100/50 (language L holds the first n groups), batch 16:
    no language can run out (the smallest has 50 groups, a batch uses at most 16), so each pair's
    language is an independent draw and each language's pair count is Binomial(pairs, p_L). The
    test accepts the exact binomial interval at 1 - 0.001/8 (Bonferroni over 4 languages x 2
    smoothings: a 0.1% family-wise false alarm). With 400 x 16 = 6,400 pairs the half-width is
    about 0.02, far below the gap between uniform (0.25 each) and proportional (0.53 / 0.27 /
    0.13 / 0.07)."""
    from hybrid_dist.data.corpus import ParallelCorpus
    from hybrid_dist.data.records import ParallelRecord
    from hybrid_dist.data.sampler import GlobalBatchSampler

    sizes = {"en": 400, "de": 200, "fr": 100, "sw": 50}
    records = [ParallelRecord(str(g), lang, f"q{g}-{lang}", f"p{g}-{lang}", positive_id=f"{lang}/{g}")
               for lang, n in sizes.items() for g in range(n)]
    corpus = ParallelCorpus(records, source="synthetic")
    steps, batch = 400, 16
    for smoothing in (0.0, 1.0):
        sampler = GlobalBatchSampler(corpus, batch_size=batch, mode="xx", smoothing=smoothing, seed=SEED)
        counts: Counter = Counter()
        for s in range(steps):
            pairs = sampler.batch(s).pairs
            assert len(pairs) == batch and all(p.query_lang == p.passage_lang for p in pairs)
            counts.update(p.passage_lang for p in pairs)
        n = steps * batch
        weights = {lang: size**smoothing for lang, size in sizes.items()}
        total = sum(weights.values())
        for lang, w in weights.items():
            lo, hi = binomial_interval(n, w / total, 1 - 0.001 / 8)
            assert lo <= counts[lang] <= hi, (f"smoothing {smoothing}: {lang} (size {sizes[lang]}) has "
                                              f"{counts[lang]} of {n} pairs, expected [{lo}, {hi}]; all: {dict(counts)}")


# ---------------------------------------------------------------------------- CLI


def _tree(path: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in [path, *path.rglob("*")]} if path.exists() else {}


def test_print_batches_cli(monkeypatch, xquad_dir):
    from hybrid_dist.data.preview import preview_batches
    from hybrid_dist.config import load_config

    run_dir = REPO / "runs" / "tiny"
    before = _tree(run_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hybrid_dist.train", "--config", "configs/tiny.yaml",
                           "sampler.mode=cross", "--print-batches", "3"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, f"--print-batches 3 took {elapsed:.0f} s"
    assert _tree(run_dir) == before, f"--print-batches wrote to {run_dir}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout[-3000:]
    printed = [json.loads(line) for line in lines]
    for i, obj in enumerate(printed):
        assert set(obj) == {"step", "mode", "pairs"} and obj["step"] == i and obj["mode"] == "cross", obj.keys()
        assert obj["pairs"], obj
        for p in obj["pairs"]:
            assert set(p) == {"group_id", "query_lang", "passage_lang", "query", "passage", "negatives"}, p.keys()
            assert all(isinstance(p[key], str) for key in ("group_id", "query_lang", "passage_lang", "query", "passage"))
            assert isinstance(p["negatives"], list)
            assert not p["query"].startswith("query: ") and not p["passage"].startswith("passage: ")
    monkeypatch.chdir(REPO)  # tiny.yaml's data.path is relative
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["sampler.mode=cross"])
    expected = [json.loads(json.dumps(b, ensure_ascii=False)) for b in preview_batches(cfg, 3)]
    assert printed == expected


def test_the_trainer_trains_on_the_batches_print_batches_shows(tmp_path, xquad_dir):
    """A real 2-rank training run logs each step's global batch digest; they equal the digests of
    the batches the preview's sampler draws for the same config, step for step (xx: a step mode
    the trainer's own bookkeeping must know too)."""
    from cpu_runs import DATA, REPO, batch_log, run

    from hybrid_dist.data.preview import build_sampler
    from hybrid_dist.config import load_config

    overrides = ["sampler.mode=xx", "train.max_steps=4", "train.save_every=0"]
    out = tmp_path / "run"
    run(2, out, *overrides)
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.path={DATA}", *overrides])
    _, sampler = build_sampler(cfg)
    assert batch_log(out) == [(s + 1, sampler.batch(s).digest()) for s in range(4)]
