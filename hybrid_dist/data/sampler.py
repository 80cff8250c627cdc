"""Global batch sampler: the batch types of the hybrid-batch paper (arXiv 2408.10536) and LAReQA.

Every optimizer step draws one *global* batch of B pairs for all ranks together. Its type:

* ``mono`` (X-X-mono): one language X, drawn for the whole batch; every query and passage in X.
* ``cross`` (X-Y): each pair draws its own passage language Y and query language X != Y, so one
  batch mixes languages and in-batch negatives differ in language from the positive.
* ``hybrid``: each step is X-X-mono with probability alpha, else X-Y (the paper's method).
* ``xx`` (LAReQA's X-X): each pair draws its own language X for query and passage alike.
* ``multilingual``: each pair draws query and passage languages independently.

Languages are drawn with probability proportional to size**smoothing in every mode: a
pair's languages are drawn first, then a group that has them.

No passage in the pool (positives and hard negatives, over every rank and accumulation step)
answers another query of the batch in any language, unless the loss counts it as a positive
(the translations of a group's positive under the multilingual loss). Which questions a passage
answers comes from ``ParallelCorpus.positive_answers`` / ``negative_answers``, an identity that
holds across languages. The batch of step s depends only on (seed, s), so any world size and
any resume point see the same data.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

import numpy as np

from hybrid_dist.data.corpus import ParallelCorpus

Mode = Literal["mono", "cross", "hybrid", "xx", "multilingual"]
StepMode = Literal["mono", "cross", "xx", "multilingual"]
MODES = ("mono", "cross", "hybrid", "xx", "multilingual")
MAX_LANGUAGE_REDRAWS = 64  # a pair's languages are redrawn when no unused group has them
# the batch sequence's definition: 2 = the paper's batch types with language-independent answer
# identity (issue #14); a checkpoint of another version would resume on different batches
SAMPLER_VERSION = 2


@dataclass(frozen=True)
class Pair:
    group: int
    query_lang: str
    passage_lang: str
    negatives: tuple[int, ...] = ()  # indices into the passage-language record's negatives


@dataclass(frozen=True)
class GlobalBatch:
    step: int
    mode: StepMode
    pairs: tuple[Pair, ...]

    def digest(self) -> str:
        """A short hash of the batch's mode and pairs: equal digests, equal batches."""
        return hashlib.sha1(repr((self.mode, self.pairs)).encode()).hexdigest()[:16]


class GlobalBatchSampler:
    """Args:
        batch_size: global batch B (pairs per optimizer step, over all ranks).
        mode: ``mono``, ``cross``, ``hybrid`` (mono with probability ``alpha``, else cross),
            ``xx`` or ``multilingual`` (see the module docstring).
        smoothing: exponent on language sizes (1 = proportional, 0 = uniform).
        translations_per_group: k > 1 puts k pairs of each group in every mixed-language batch,
            with k distinct passage languages: the batches the multilingual contrastive loss
            needs. A mono step holds one language, so it takes one pair per group.
        num_negatives: hard negatives per pair, drawn from the passage record's negatives that
            answer no query of the batch.
    """

    def __init__(
        self,
        corpus: ParallelCorpus,
        batch_size: int,
        mode: Mode = "hybrid",
        alpha: float = 0.5,
        smoothing: float = 1.0,
        seed: int = 0,
        translations_per_group: int = 1,
        num_negatives: int = 0,
    ):
        k = translations_per_group
        for problem in sampler_problems(mode, alpha, batch_size, k, num_negatives):
            raise ValueError(problem)
        self.corpus = corpus
        self.batch_size = batch_size
        self.mode = mode
        self.alpha = alpha
        self.smoothing = smoothing
        self.seed = seed
        self.k = k
        self.num_negatives = num_negatives
        self.step = 0
        self.languages = list(corpus.languages)
        sizes = np.array([corpus.sizes[lang] for lang in self.languages], dtype=np.float64)
        self.weights = sizes**smoothing
        self.weights /= self.weights.sum()
        self._lang_index = {lang: i for i, lang in enumerate(self.languages)}
        self._weight_list = [float(x) for x in self.weights]
        self._check_corpus_serves()
        self._mixed_candidates = np.flatnonzero([len(langs) >= min(k, 2) for langs in corpus.group_languages])
        self.batch(0)  # a corpus that cannot fill a batch fails here, not at the first step

    def _check_corpus_serves(self) -> None:
        corpus, b, k = self.corpus, self.batch_size, self.k
        where = f"sampler.mode={self.mode} on {corpus.source}"
        step_modes = {"hybrid": ("mono", "cross")}.get(self.mode, (self.mode,))
        if "cross" in step_modes and len(self.languages) < 2:
            raise ValueError(f"{where}: X-Y batches need at least two languages; the corpus has {self.languages}")
        if k > 1 and k > len(self.languages):
            raise ValueError(f"{where}: sampler.translations_per_group={k} needs {k} languages; the corpus has "
                             f"{len(self.languages)} ({', '.join(self.languages)})")
        if "mono" in step_modes:
            small = {lang: n for lang, n in corpus.sizes.items() if n < b}
            if small:
                raise ValueError(f"{where}: an X-X-mono batch holds sampler.batch_size={b} questions of one language, "
                                 f"but {', '.join(f'{lang} has {n}' for lang, n in small.items())}; lower batch_size "
                                 f"or leave those languages out (data.languages)")
        mixed = [m for m in step_modes if m != "mono"]
        if mixed:
            need = max(k, 2 if "cross" in mixed else 1)
            have = sum(len(langs) >= need for langs in corpus.group_languages)
            if have < b // k:
                raise ValueError(f"{where}: a batch needs {b // k} questions with at least {need} languages each "
                                 f"(sampler.batch_size={b}, translations_per_group={k}); the corpus has {have}")
        if self.num_negatives:
            lacking = [(corpus.group_ids[g], lang) for g, row in enumerate(corpus.table)
                       for lang, r in row.items() if not r.negatives]
            if lacking:
                gid, lang = lacking[0]
                raise ValueError(f"sampler.num_negatives={self.num_negatives} but {len(lacking)} records have no "
                                 f"hard negatives (first: group_id {gid}, lang {lang}); set data.max_hard_negatives")

    # ------------------------------------------------------------------ drawing
    def batch(self, step: int) -> GlobalBatch:
        """The global batch of optimizer step ``step`` (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, step])
        mode = self.mode
        if mode == "hybrid":
            mode = "mono" if rng.random() < self.alpha else "cross"
        builder = _BatchBuilder(self.corpus, self.num_negatives, rng)
        if mode == "mono":
            lang = self._draw_languages(rng, 1)[0]
            candidates = self.corpus.lang_groups[lang]
            builder.fill(rng.permutation(candidates), self.batch_size, lambda: ([lang], [lang]), f"mono ({lang})")
        else:
            builder.fill(rng.permutation(self._mixed_candidates), self.batch_size // self.k,
                         lambda: self._mixed_languages(rng, mode), mode)
        return GlobalBatch(step=step, mode=mode, pairs=tuple(builder.pairs))

    def _mixed_languages(self, rng: np.random.Generator, mode: str) -> tuple[list[str], list[str]]:
        """(query languages, passage languages) for one group's k pairs."""
        passages = self._draw_languages(rng, self.k)
        if mode == "xx":
            return passages, passages
        if mode == "cross":
            return [self._draw_languages(rng, 1, excluded=p)[0] for p in passages], passages
        return [self._draw_languages(rng, 1)[0] for _ in passages], passages

    def _draw_languages(self, rng: np.random.Generator, n: int, excluded: str | None = None) -> list[str]:
        """``n`` distinct languages, each drawn with probability proportional to size**smoothing
        among those not drawn yet (and not ``excluded``)."""
        w = list(self._weight_list)
        if excluded is not None:
            w[self._lang_index[excluded]] = 0.0
        out = []
        for _ in range(n):
            cumulative = list(accumulate(w))
            i = bisect_right(cumulative, rng.random() * cumulative[-1])
            out.append(self.languages[i])
            w[i] = 0.0
        return out

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
            raise ValueError(f"sampler.batch_size={self.batch_size}: must be divisible by the number of processes "
                             f"x train.gradient_accumulation_steps ({world_size} x {micro_steps})")
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
        return {"step": self.step, "version": SAMPLER_VERSION, "seed": self.seed, "corpus": self.corpus.fingerprint(),
                "mode": self.mode, "alpha": self.alpha, "batch_size": self.batch_size,
                "translations_per_group": self.k, "num_negatives": self.num_negatives,
                "smoothing": self.smoothing}

    def load_state_dict(self, state: dict) -> None:
        current = self.state_dict()
        if state.get("version", 1) != SAMPLER_VERSION:
            raise ValueError(f"this checkpoint was trained with sampler version {state.get('version', 1)} (before the "
                             f"paper's batch types and cross-language false-negative filtering); this code draws "
                             f"version {SAMPLER_VERSION} batches, so resuming would change the run's data. Start a new "
                             f"run (another train.output_dir), or resume with the code that wrote it")
        for key in ("seed", "corpus", "mode", "alpha", "batch_size", "translations_per_group", "num_negatives",
                    "smoothing"):
            if state.get(key, current[key]) != current[key]:
                raise ValueError(f"sampler state was saved with {key}={state[key]!r} but this run has "
                                 f"{key}={current[key]!r}; the batch sequence would differ")
        self.step = int(state["step"])


class _BatchBuilder:
    """Adds groups to one global batch, keeping every false negative out.

    ``questions``: the groups in the batch. ``answered``: every group that some passage already in
    the pool answers. A group joins only if no pool passage answers it, none of its passages
    answers a question already in the batch, and (with hard negatives) each of its pairs has a
    negative that answers no question of the batch, its own included."""

    def __init__(self, corpus: ParallelCorpus, num_negatives: int, rng: np.random.Generator):
        self.corpus, self.num_negatives, self.rng = corpus, num_negatives, rng
        self.questions: set[int] = set()
        self.answered: set[int] = set()
        self.pairs: list = []

    def fill(self, order: np.ndarray, n_groups: int, draw_languages, what: str) -> None:
        remaining = [int(g) for g in order]
        kept = 0
        while kept < n_groups:
            for _ in range(MAX_LANGUAGE_REDRAWS):
                query_langs, passage_langs = draw_languages()
                needed = set(query_langs) | set(passage_langs)
                i = self._first_fitting(remaining, needed, query_langs, passage_langs)
                if i is not None:
                    break
            else:
                raise ValueError(f"could not fill a {what} batch: {n_groups} questions whose passages answer no "
                                 f"other question of the batch were needed, {kept} found in the corpus "
                                 f"({self.corpus.source}); lower sampler.batch_size")
            kept += 1

    def _first_fitting(self, remaining: list[int], needed: set[str], query_langs, passage_langs) -> int | None:
        """Add the first remaining group that has the languages and no conflict; groups that
        conflict are dropped from ``remaining`` (the batch only grows, so they stay in conflict)."""
        languages = self.corpus.group_languages
        i = 0
        while i < len(remaining):
            g = remaining[i]
            if not needed <= languages[g]:
                i += 1
                continue
            if self._try_add(g, query_langs, passage_langs):
                del remaining[i]
                return i
            del remaining[i]
        return None

    def _try_add(self, g: int, query_langs, passage_langs) -> bool:
        if g in self.answered:
            return False
        corpus = self.corpus
        answers = set().union(*(corpus.positive_answers[g][p] for p in passage_langs))
        if not answers.isdisjoint(self.questions):
            return False
        blocked = self.questions | {g}
        negatives = []
        if self.num_negatives:
            for p in passage_langs:
                clean = [i for i, a in enumerate(corpus.negative_answers[g][p]) if a.isdisjoint(blocked)]
                if not clean:
                    return False
                chosen = _pick(self.rng, clean, self.num_negatives)
                negatives.append(chosen)
                for j in chosen:
                    answers |= corpus.negative_answers[g][p][j]
        self.questions.add(g)
        self.answered |= answers
        for n, (q, p) in enumerate(zip(query_langs, passage_langs)):
            self.pairs.append(Pair(g, q, p, negatives[n] if negatives else ()))
        return True


def _pick(rng: np.random.Generator, items: list[int], n: int) -> tuple[int, ...]:
    """``n`` of ``items`` at random: distinct while there are enough, else with repeats."""
    if len(items) < n:
        return tuple(items[int(rng.random() * len(items))] for _ in range(n))
    pool = list(items)
    return tuple(pool.pop(int(rng.random() * len(pool))) for _ in range(n))


def sampler_problems(mode: str, alpha: float, batch_size: int, translations_per_group: int,
                     num_negatives: int) -> list[str]:
    """What is wrong with these sampler settings on any corpus (config keys named), or nothing."""
    k = translations_per_group
    problems = []
    if mode not in MODES:
        problems.append(f"sampler.mode must be one of {list(MODES)}, got {mode!r}")
    if not 0.0 <= alpha <= 1.0:
        problems.append(f"sampler.alpha={alpha} is outside [0, 1]")
    if batch_size < 1:
        problems.append(f"sampler.batch_size={batch_size} must be at least 1")
    if k < 1:
        problems.append(f"sampler.translations_per_group={k} must be at least 1")
    elif batch_size >= 1 and batch_size % k:
        problems.append(f"sampler.translations_per_group={k} must divide sampler.batch_size={batch_size}")
    if k > 1 and mode == "mono":
        problems.append(f"sampler.translations_per_group={k} with sampler.mode=mono: an X-X-mono batch holds one "
                        "language, so it cannot hold a question's translations")
    if num_negatives < 0:
        problems.append(f"sampler.num_negatives={num_negatives} must be at least 0")
    return problems
