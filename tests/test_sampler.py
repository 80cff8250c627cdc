import math
from collections import Counter

import numpy as np
import pytest

from hybrid_dist.data.corpus import ParallelCorpus
from hybrid_dist.data.records import ParallelRecord
from hybrid_dist.data.sampler import GlobalBatchSampler


def synthetic_corpus(sizes=None, shared_every=0):
    """Groups 0..max-1; language `lang` holds the first sizes[lang] groups. With shared_every=n,
    groups 2i and 2i+1 (i % n == 0) share their positive passage."""
    sizes = sizes or {"en": 400, "de": 200, "fr": 100}
    records = []
    for lang, n in sizes.items():
        for g in range(n):
            pid = f"{lang}/{g // 2}" if shared_every and (g // 2) % shared_every == 0 else f"{lang}/g{g}"
            records.append(ParallelRecord(str(g), lang, f"q{g}-{lang}", f"p{g}-{lang}",
                                          negatives=(f"n{g}a-{lang}", f"n{g}b-{lang}"), positive_id=pid))
    return ParallelCorpus(records)


def test_mono_batches_share_one_language_and_cross_batches_never_match():
    corpus = synthetic_corpus()
    mono = GlobalBatchSampler(corpus, 32, "mono", seed=1)
    cross = GlobalBatchSampler(corpus, 32, "cross", seed=1)
    for step in range(50):
        b = mono.batch(step)
        assert b.mode == "mono" and len({(p.query_lang, p.passage_lang) for p in b.pairs}) == 1
        assert all(p.query_lang == p.passage_lang for p in b.pairs)
        c = cross.batch(step)
        assert c.mode == "cross" and all(p.query_lang != p.passage_lang for p in c.pairs)
        assert all(lang in corpus.table[p.group] for p in c.pairs for lang in (p.query_lang, p.passage_lang))


def test_per_pair_language_draws():
    corpus = synthetic_corpus({"en": 300, "de": 300, "fr": 300})
    xx = GlobalBatchSampler(corpus, 64, "xx", seed=2)
    cross = GlobalBatchSampler(corpus, 64, "cross", seed=2)
    multi = GlobalBatchSampler(corpus, 64, "multilingual", seed=2)
    same = Counter()
    for step in range(30):
        assert all(p.query_lang == p.passage_lang for p in xx.batch(step).pairs)
        assert len({p.passage_lang for p in xx.batch(step).pairs}) == 3  # languages mixed within the batch
        assert all(p.query_lang != p.passage_lang for p in cross.batch(step).pairs)
        assert len({p.passage_lang for p in cross.batch(step).pairs}) == 3
        same.update(p.query_lang == p.passage_lang for p in multi.batch(step).pairs)
    # independent draws over 3 equal languages: same language with probability 1/3
    n = sum(same.values())
    assert abs(same[True] - n / 3) < 3 * math.sqrt(n * (1 / 3) * (2 / 3))


def test_hybrid_alpha_frequency_within_three_sigma():
    corpus = synthetic_corpus()
    for alpha in (0.3, 0.5, 0.8):
        sampler = GlobalBatchSampler(corpus, 16, "hybrid", alpha=alpha, seed=7)
        mono = sum(sampler.batch(s).mode == "mono" for s in range(2000))
        assert abs(mono - 2000 * alpha) <= 3 * math.sqrt(2000 * alpha * (1 - alpha)), (alpha, mono)


def test_language_drawn_in_proportion_to_size_with_smoothing():
    sizes = {"en": 400, "de": 200, "fr": 100}
    corpus = synthetic_corpus(sizes)
    for smoothing in (1.0, 0.0):
        sampler = GlobalBatchSampler(corpus, 8, "mono", smoothing=smoothing, seed=3)
        counts = Counter(sampler.batch(s).pairs[0].query_lang for s in range(2000))
        weights = np.array([n**smoothing for n in sizes.values()], dtype=float)
        for lang, p in zip(sizes, weights / weights.sum()):
            assert abs(counts[lang] - 2000 * p) <= 3 * math.sqrt(2000 * p * (1 - p)), (smoothing, counts)


def test_no_group_or_positive_passage_twice_in_a_global_batch():
    corpus = synthetic_corpus({"en": 300, "de": 300}, shared_every=1)  # every two groups share a positive
    for mode in ("mono", "cross", "multilingual"):
        sampler = GlobalBatchSampler(corpus, 64, mode, seed=5)
        for step in range(40):
            pairs = sampler.batch(step).pairs
            assert len({p.group for p in pairs}) == len(pairs)
            passages = [corpus.record(p.group, p.passage_lang).positive_id for p in pairs]
            assert len(set(passages)) == len(passages)


def test_a_translation_that_answers_another_query_never_sits_in_its_pool():
    """Sentence indices differ between translations: in German, group 1's answer sentence also
    answers group 0 (one sentence where English has two). A German passage of group 1 must
    then never share a batch with group 0's query, in any language, although the two groups'
    English passages differ. Groups 2.. are ordinary."""
    records = []
    for g in range(40):
        for lang in ("en", "de", "fr"):
            pid = "de/s1" if lang == "de" and g in (0, 1) else f"{lang}/s{g}"
            records.append(ParallelRecord(str(g), lang, f"q{g}-{lang}", f"p{pid}", positive_id=pid))
    corpus = ParallelCorpus(records)
    assert corpus.answers_of(1, "de") == {0, 1} and corpus.answers_of(1, "en") == {1}
    together = 0
    for mode in ("cross", "xx", "multilingual", "hybrid"):
        sampler = GlobalBatchSampler(corpus, 32, mode, seed=4)
        for step in range(200):
            pairs = sampler.batch(step).pairs
            groups = {p.group for p in pairs}
            together += {0, 1} <= groups
            for p in pairs:
                if p.passage_lang == "de" and p.group in (0, 1):
                    assert not {0, 1} - {p.group} & groups, (mode, step, pairs)
    assert together > 0  # the two groups still meet when neither German passage is drawn


def test_hard_negatives_never_answer_a_question_of_the_batch():
    """Each group's hard negatives are the positives of the next two groups (as other sentences of
    a paragraph are other questions' answers): they may only be drawn when those groups are absent."""
    records = []
    for g in range(60):
        for lang in ("en", "de"):
            negs = tuple(f"p{(g + d) % 60}-{lang}" for d in (1, 2, 3, 4))
            records.append(ParallelRecord(str(g), lang, f"q{g}-{lang}", f"p{g}-{lang}", negatives=negs))
    corpus = ParallelCorpus(records)
    sampler = GlobalBatchSampler(corpus, 16, "hybrid", num_negatives=2, seed=0)
    for step in range(200):
        pairs = sampler.batch(step).pairs
        groups = {p.group for p in pairs}
        for p in pairs:
            for i in p.negatives:
                answered = (p.group + 1 + i) % 60
                assert answered not in groups, (step, p)


def test_translations_per_group_gives_distinct_passage_languages():
    corpus = synthetic_corpus({"en": 200, "de": 200, "fr": 200})
    sampler = GlobalBatchSampler(corpus, 30, "cross", translations_per_group=3, seed=1)
    pairs = sampler.batch(0).pairs
    groups = [pairs[i : i + 3] for i in range(0, 30, 3)]
    assert len({g[0].group for g in groups}) == 10
    for g in groups:
        assert len({p.group for p in g}) == 1 and len({p.passage_lang for p in g}) == 3
        assert all(p.query_lang != p.passage_lang for p in g)
    with pytest.raises(ValueError, match="cannot hold a question's translations"):
        GlobalBatchSampler(corpus, 30, "mono", translations_per_group=3)
    with pytest.raises(ValueError, match="needs 4 languages"):
        GlobalBatchSampler(corpus, 32, "cross", translations_per_group=4)


@pytest.mark.parametrize("world_size,micro_steps", [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2)])
def test_rank_slices_partition_the_global_batch(world_size, micro_steps):
    sampler = GlobalBatchSampler(synthetic_corpus(), 32, "hybrid", seed=11)
    batch = sampler.batch(3)
    pieces = [sampler.rank_slice(batch, r, world_size, m, micro_steps)
              for m in range(micro_steps) for r in range(world_size)]
    assert all(len(p) == 32 // (world_size * micro_steps) for p in pieces)
    assert [pair for piece in pieces for pair in piece] == list(batch.pairs)


def test_indivisible_or_oversized_batches_are_clear_errors():
    corpus = synthetic_corpus()
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        GlobalBatchSampler(corpus, 30, "mono").rank_slice(GlobalBatchSampler(corpus, 30, "mono").batch(0), 0, 4)
    with pytest.raises(ValueError, match="fr has 100; lower batch_size"):
        GlobalBatchSampler(corpus, 150, "mono", seed=0)
    with pytest.raises(ValueError, match=r"alpha=1.5 is outside \[0, 1\]"):
        GlobalBatchSampler(corpus, 16, "hybrid", alpha=1.5)


def test_sequence_depends_only_on_seed_and_step():
    corpus = synthetic_corpus()
    a = GlobalBatchSampler(corpus, 16, "hybrid", seed=42)
    b = GlobalBatchSampler(corpus, 16, "hybrid", seed=42)
    forward = [a.batch(s) for s in range(20)]
    backward = [b.batch(s) for s in reversed(range(20))][::-1]
    assert forward == backward
    assert GlobalBatchSampler(corpus, 16, "hybrid", seed=43).batch(0) != forward[0]


def test_state_dict_round_trip():
    corpus = synthetic_corpus()
    sampler = GlobalBatchSampler(corpus, 16, "hybrid", seed=9, num_negatives=1)
    it = iter(sampler)
    for _ in range(5):
        next(it)
    state = sampler.state_dict()
    resumed = GlobalBatchSampler(corpus, 16, "hybrid", seed=9, num_negatives=1)
    resumed.load_state_dict(state)
    assert next(iter(resumed)) == next(it)
    with pytest.raises(ValueError, match="seed"):
        GlobalBatchSampler(corpus, 16, "hybrid", seed=10).load_state_dict(state)
    # a checkpoint of the earlier sampler (no version) would resume on other batches
    old = {k: v for k, v in state.items() if k != "version"}
    with pytest.raises(ValueError, match="sampler version 1 .* resuming would change the run's data"):
        GlobalBatchSampler(corpus, 16, "hybrid", seed=9, num_negatives=1).load_state_dict(old)


def test_hard_negatives_are_drawn_from_the_passage_record():
    corpus = synthetic_corpus()
    sampler = GlobalBatchSampler(corpus, 16, "cross", num_negatives=3, seed=0)
    for pair in sampler.batch(0).pairs:
        assert len(pair.negatives) == 3
        assert all(0 <= i < len(corpus.record(pair.group, pair.passage_lang).negatives) for i in pair.negatives)


def test_real_xquad_r_hybrid_batches(xquad_corpus):
    from hybrid_dist.data.split import ArticleSplit

    train = xquad_corpus.subset(ArticleSplit("parity").select(xquad_corpus.articles(), "train"))
    sampler = GlobalBatchSampler(train, 128, "hybrid", alpha=0.5, seed=0)
    for step in range(20):
        pairs = sampler.batch(step).pairs
        assert len(pairs) == 128 and len({p.group for p in pairs}) == 128
        keys = [train.record(p.group, p.passage_lang).positive_id for p in pairs]
        assert len(set(keys)) == 128
