"""Global batch sampler: the hybrid-batch method.

Every optimizer step draws one *global* batch of B pairs for all ranks together. Its mode is
monolingual (query and passage in the same language) with probability alpha, else
cross-lingual (languages differ); languages are drawn with probability proportional to
size**smoothing. A batch never holds a group twice (its translations) nor two groups answered
by the same passage: either would be a false negative for the other. The batch for
step s depends only on (seed, s), so any world size and any resume point see the same data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hybrid_dist.data.corpus import ParallelCorpus

Mode = Literal["mono", "cross", "hybrid", "multilingual"]
LanguageDraw = Literal["batch", "pair"]


@dataclass(frozen=True)
class Pair:
    group: int
    query_lang: str
    passage_lang: str
    negatives: tuple[int, ...] = ()  # indices into the passage-language record's negatives


@dataclass(frozen=True)
class GlobalBatch:
    step: int
    mode: Literal["mono", "cross", "multilingual"]
    pairs: tuple[Pair, ...]

    def digest(self) -> str:
        """A short hash of the batch's mode and pairs: equal digests, equal batches."""
        return hashlib.sha1(repr((self.mode, self.pairs)).encode()).hexdigest()[:16]


class GlobalBatchSampler:
    """Args:
        batch_size: global batch B (pairs per optimizer step, over all ranks).
        mode: ``mono``, ``cross``, ``hybrid`` (mono with probability ``alpha``) or
            ``multilingual`` (each pair's query and passage languages drawn independently).
        smoothing: exponent on language sizes (1 = proportional, 0 = uniform).
        language_draw: ``batch`` draws one language (mono) or one language pair (cross) for the
            whole batch; ``pair`` draws them for each pair.
        translations_per_group: k > 1 puts k pairs of each group in the batch, with k distinct
            passage languages: the batches the multilingual contrastive loss needs.
        num_negatives: hard negatives per pair, drawn from the passage record's negatives.
    """

    def __init__(
        self,
        corpus: ParallelCorpus,
        batch_size: int,
        mode: Mode = "hybrid",
        alpha: float = 0.5,
        smoothing: float = 1.0,
        seed: int = 0,
        language_draw: LanguageDraw = "batch",
        translations_per_group: int = 1,
        num_negatives: int = 0,
    ):
        if mode not in ("mono", "cross", "hybrid", "multilingual"):
            raise ValueError(f"sampler mode must be mono, cross, hybrid or multilingual, got {mode!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if language_draw not in ("batch", "pair"):
            raise ValueError(f"language_draw must be 'batch' or 'pair', got {language_draw!r}")
        k = translations_per_group
        if k < 1 or batch_size % k:
            raise ValueError(f"translations_per_group ({k}) must be >= 1 and divide batch_size ({batch_size})")
        if k > 1 and language_draw == "batch" and mode != "multilingual":
            raise ValueError("translations_per_group > 1 needs language_draw='pair' (one language per batch "
                             "cannot hold several translations)")
        if mode in ("cross", "hybrid") and len(corpus.languages) < 2:
            raise ValueError(f"mode {mode!r} needs at least two languages; the corpus has {corpus.languages}")
        self.corpus = corpus
        self.batch_size = batch_size
        self.mode = mode
        self.alpha = alpha
        self.smoothing = smoothing
        self.seed = seed
        self.language_draw = language_draw
        self.k = k
        self.num_negatives = num_negatives
        self.step = 0
        self.languages = list(corpus.languages)
        sizes = np.array([corpus.sizes[lang] for lang in self.languages], dtype=np.float64)
        self.weights = sizes**smoothing
        self.weights /= self.weights.sum()
        self._lang_weight = dict(zip(self.languages, self.weights))
        self._eligible_cache: dict[tuple, np.ndarray] = {}
        if num_negatives:
            lacking = [(corpus.group_ids[g], lang) for g, row in enumerate(corpus.table)
                       for lang, r in row.items() if not r.negatives]
            if lacking:
                gid, lang = lacking[0]
                raise ValueError(f"num_negatives={num_negatives} but {len(lacking)} records have no negatives "
                                 f"(first: group_id {gid}, lang {lang})")

    # ------------------------------------------------------------------ drawing
    def batch(self, step: int) -> GlobalBatch:
        """The global batch of optimizer step ``step`` (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, step])
        mode = self.mode
        if mode == "hybrid":
            mode = "mono" if rng.random() < self.alpha else "cross"
        if self.k == 1 and self.language_draw == "batch" and mode != "multilingual":
            pairs = self._batch_languages(rng, mode)
        else:
            pairs = self._pair_languages(rng, mode)
        if self.num_negatives:
            pairs = [self._with_negatives(rng, p) for p in pairs]
        return GlobalBatch(step=step, mode=mode, pairs=tuple(pairs))

    def _batch_languages(self, rng: np.random.Generator, mode: str) -> list[Pair]:
        q = self._draw_language(rng, self.languages)
        p = q if mode == "mono" else self._draw_language(rng, [x for x in self.languages if x != q])
        return self._collect(rng, self._eligible((q, p)), self.batch_size, f"{mode} {q}->{p}",
                             lambda g: [Pair(int(g), q, p)])

    def _pair_languages(self, rng: np.random.Generator, mode: str) -> list[Pair]:
        def draw(g: int) -> list[Pair]:
            langs = list(self.corpus.table[g])
            pairs = []
            for p in self._draw_languages(rng, langs, self.k):
                if mode == "mono":
                    q = p
                elif mode == "cross":
                    q = self._draw_language(rng, [x for x in langs if x != p])
                else:
                    q = self._draw_language(rng, langs)
                pairs.append(Pair(int(g), q, p))
            return pairs

        min_langs = max(self.k, 2 if mode == "cross" else 1)
        return self._collect(rng, self._eligible(min_langs), self.batch_size // self.k, mode, draw)

    def _collect(self, rng: np.random.Generator, eligible: np.ndarray, n_groups: int, what: str,
                 draw_pairs) -> list[Pair]:
        """Walk the eligible groups in random order, drawing each one's pairs, and keep a group
        unless one of its passages is already in the batch (two questions answered by the same
        sentence): that passage would be a false negative for the other query."""
        used: set[tuple[str, str]] = set()
        pairs: list[Pair] = []
        kept = 0
        for g in eligible[rng.permutation(len(eligible))]:
            candidate = draw_pairs(int(g))
            keys = {(p.passage_lang, pid) for p in candidate
                    if (pid := self.corpus.record(p.group, p.passage_lang).positive_id) is not None}
            if keys & used:
                continue
            used |= keys
            pairs.extend(candidate)
            kept += 1
            if kept == n_groups:
                return pairs
        raise ValueError(f"a {what} batch needs {n_groups} groups with distinct positive passages but the "
                         f"corpus ({self.corpus.source}) yielded only {kept}; lower batch_size")

    def _draw_language(self, rng: np.random.Generator, langs: list[str]) -> str:
        return self._draw_languages(rng, langs, 1)[0]

    def _draw_languages(self, rng: np.random.Generator, langs: list[str], n: int) -> list[str]:
        w = np.array([self._lang_weight[x] for x in langs])
        idx = rng.choice(len(langs), size=n, replace=False, p=w / w.sum())
        return [langs[i] for i in idx]

    def _eligible(self, key) -> np.ndarray:
        """Groups that hold the languages a draw needs: a (query, passage) language pair, or a
        minimum number of languages."""
        if key not in self._eligible_cache:
            if isinstance(key, tuple):
                q, p = key
                groups = np.intersect1d(self.corpus.lang_groups[q], self.corpus.lang_groups[p])
            else:
                groups = np.array([g for g, row in enumerate(self.corpus.table) if len(row) >= key], dtype=np.int64)
            self._eligible_cache[key] = groups
        return self._eligible_cache[key]

    def _with_negatives(self, rng: np.random.Generator, pair: Pair) -> Pair:
        available = len(self.corpus.record(pair.group, pair.passage_lang).negatives)
        idx = rng.choice(available, size=self.num_negatives, replace=available < self.num_negatives)
        return Pair(pair.group, pair.query_lang, pair.passage_lang, tuple(int(i) for i in idx))

    # ------------------------------------------------------------------ ranks
    def rank_slice(self, batch: GlobalBatch, rank: int, world_size: int,
                   micro_step: int = 0, micro_steps: int = 1) -> tuple[Pair, ...]:
        """This rank's pairs for one micro step. The global batch is cut into ``micro_steps``
        contrastive pools (gradient accumulation), each shared out over ``world_size`` ranks."""
        pool = self.micro_pool_size(world_size, micro_steps)
        per_rank = pool // world_size
        start = micro_step * pool + rank * per_rank
        return batch.pairs[start : start + per_rank]

    def micro_pool_size(self, world_size: int, micro_steps: int = 1) -> int:
        if self.batch_size % (world_size * micro_steps):
            raise ValueError(f"batch_size {self.batch_size} must be divisible by world size x accumulation "
                             f"steps ({world_size} x {micro_steps})")
        pool = self.batch_size // micro_steps
        if pool % self.k:
            raise ValueError(f"each accumulation pool ({pool} pairs) must hold whole groups of "
                             f"translations_per_group={self.k}")
        return pool

    # ------------------------------------------------------------------ iteration and state
    def __iter__(self) -> Iterator[GlobalBatch]:
        while True:  # advance first, so state_dict() always names the next batch to draw
            self.step += 1
            yield self.batch(self.step - 1)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "corpus": self.corpus.fingerprint(),
                "mode": self.mode, "alpha": self.alpha, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "corpus", "mode", "alpha", "batch_size"):
            current = self.state_dict()[key]
            if state.get(key, current) != current:
                raise ValueError(f"sampler state was saved with {key}={state[key]!r} but this run has "
                                 f"{key}={current!r}; the batch sequence would differ")
        self.step = int(state["step"])
