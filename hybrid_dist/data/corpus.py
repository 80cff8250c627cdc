"""Parallel corpus: records indexed by group and language, the structure the sampler draws from.

Two language-independent identities live here, because the sampler and the split depend on them:

* **Which questions a passage answers.** A passage (in its language, by ``positive_id`` /
  ``negative_ids`` or else by text) answers every group whose positive it is in that language.
  Translations split sentences differently, so "sentence 3 in German" and "sentence 3 in
  English" are unrelated; the set of group ids answered is what is comparable across languages.
* **Which article a group belongs to.** Articles linked by a shared group (the same question in
  two languages) are one article, so a question never trains in one language and is held out in
  another, even where titles are translated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from hybrid_dist.data.records import DataError, ParallelRecord

NOTHING: frozenset[int] = frozenset()


class ParallelCorpus:
    """Groups (translations of one question) x languages.

    ``positive_answers[g][lang]``: the groups that record's positive passage answers (always
    including ``g``); ``negative_answers[g][lang][i]``: the groups its i-th hard negative answers
    (usually none). The sampler keeps any passage that answers another query of the batch out of
    the pool.
    """

    def __init__(self, records: Sequence[ParallelRecord], source: str = "records"):
        if not records:
            raise DataError(source, None, None, "no records")
        self.source = source
        group_index: dict[str, int] = {}
        table: list[dict[str, ParallelRecord]] = []
        for i, r in enumerate(records):
            g = group_index.setdefault(r.group_id, len(table))
            if g == len(table):
                table.append({})
            previous = table[g].get(r.lang)
            if previous is not None and previous != r:
                field = "query" if previous.query != r.query else "positive"
                raise DataError(source, f"record {i} (group_id {r.group_id}, lang {r.lang})", field,
                                "duplicate group_id and lang with conflicting text")
            if r.negative_ids and len(r.negative_ids) != len(r.negatives):
                raise DataError(source, f"record {i} (group_id {r.group_id}, lang {r.lang})", "negative_ids",
                                f"{len(r.negative_ids)} ids for {len(r.negatives)} negatives")
            table[g][r.lang] = r
        self.group_ids = list(group_index)
        self.table = table
        self.languages = sorted({lang for row in table for lang in row})
        self.group_languages = [frozenset(row) for row in table]
        self.lang_groups = {
            lang: np.array([g for g, row in enumerate(table) if lang in row], dtype=np.int64)
            for lang in self.languages
        }
        self.sizes = {lang: len(idx) for lang, idx in self.lang_groups.items()}
        self._index_answers()
        self._link_articles(records)

    # ------------------------------------------------------------------ answer identity
    def _index_answers(self) -> None:
        answered_by: dict[tuple, set[int]] = {}  # passage key -> groups whose positive it is
        for g, row in enumerate(self.table):
            for r in row.values():
                for key in _positive_keys(r):
                    answered_by.setdefault(key, set()).add(g)
        frozen = {key: frozenset(gs) for key, gs in answered_by.items()}

        def answers(keys) -> frozenset[int]:
            found = [frozen[k] for k in keys if k in frozen]
            return frozenset().union(*found) if found else NOTHING

        self.positive_answers = [{lang: answers(_positive_keys(r)) for lang, r in row.items()} for row in self.table]
        self.negative_answers = [
            {lang: tuple(answers(_negative_keys(r, i)) for i in range(len(r.negatives))) for lang, r in row.items()}
            for row in self.table
        ]

    def answers_of(self, group: int, lang: str) -> frozenset[int]:
        """The groups whose answer is this group's positive passage in ``lang``."""
        return self.positive_answers[group][lang]

    # ------------------------------------------------------------------ articles
    def _link_articles(self, records: Sequence[ParallelRecord]) -> None:
        parent: dict[str, str] = {}

        def root(a: str) -> str:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for r in records:  # first appearance wins, so the first-seen title names the article
            parent.setdefault(self.article_of(r), self.article_of(r))
        position = {a: i for i, a in enumerate(parent)}
        for row in self.table:
            titles = {root(self.article_of(r)) for r in row.values()}
            if len(titles) > 1:
                first = min(titles, key=position.__getitem__)
                for t in titles:
                    parent[t] = first
        self.group_article = [root(self.article_of(next(iter(row.values())))) for row in self.table]
        self._articles = [a for a in position if root(a) == a]

    @staticmethod
    def article_of(record: ParallelRecord) -> str:
        return record.article if record.article is not None else record.group_id

    def __len__(self) -> int:
        return len(self.table)

    def record(self, group: int, lang: str) -> ParallelRecord:
        return self.table[group][lang]

    def articles(self) -> list[str]:
        """Language-independent article keys in order of first appearance."""
        return list(self._articles)

    def subset(self, articles: Iterable[str], source: str | None = None) -> "ParallelCorpus":
        keep = set(articles)
        records = [r for g, row in enumerate(self.table) if self.group_article[g] in keep for r in row.values()]
        return ParallelCorpus(records, source or self.source)

    def fingerprint(self) -> str:
        """Identifies the corpus content, so a resumed sampler can check it draws from the same data."""
        h = hashlib.sha1()
        for gid, row in zip(self.group_ids, self.table):
            h.update(gid.encode())
            for lang in sorted(row):
                h.update(lang.encode())
                h.update(row[lang].positive.encode())
        return h.hexdigest()[:16]


def _positive_keys(r: ParallelRecord) -> list[tuple]:
    keys = [("text", r.lang, r.positive)]
    if r.positive_id is not None:
        keys.append(("id", r.lang, r.positive_id))
    return keys


def _negative_keys(r: ParallelRecord, i: int) -> list[tuple]:
    keys = [("text", r.lang, r.negatives[i])]
    if r.negative_ids:
        keys.append(("id", r.lang, r.negative_ids[i]))
    return keys
