"""Parallel corpus: records indexed by group and language, the structure the sampler draws from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from hybrid_dist.data.records import DataError, ParallelRecord


class ParallelCorpus:
    """Groups (translations of one question) x languages.

    ``positive_id`` names a record's positive passage, so the sampler can keep two groups
    answered by the same passage out of one batch.
    """

    def __init__(self, records: Sequence[ParallelRecord], source: str = "records"):
        if not records:
            raise DataError(source, None, None, "no records")
        self.source = source
        group_index: dict[str, int] = {}
        table: list[dict[str, ParallelRecord]] = []
        articles: dict[str, None] = {}
        for i, r in enumerate(records):
            g = group_index.setdefault(r.group_id, len(table))
            if g == len(table):
                table.append({})
            previous = table[g].get(r.lang)
            if previous is not None and previous != r:
                field = "query" if previous.query != r.query else "positive"
                raise DataError(source, f"record {i} (group_id {r.group_id}, lang {r.lang})", field,
                                "duplicate group_id and lang with conflicting text")
            table[g][r.lang] = r
            articles.setdefault(self.article_of(r), None)
        self.group_ids = list(group_index)
        self.table = table
        self.languages = sorted({lang for row in table for lang in row})
        self._articles = list(articles)
        self.lang_groups = {
            lang: np.array([g for g, row in enumerate(table) if lang in row], dtype=np.int64)
            for lang in self.languages
        }
        self.sizes = {lang: len(idx) for lang, idx in self.lang_groups.items()}

    @staticmethod
    def article_of(record: ParallelRecord) -> str:
        return record.article if record.article is not None else record.group_id

    def __len__(self) -> int:
        return len(self.table)

    def record(self, group: int, lang: str) -> ParallelRecord:
        return self.table[group][lang]

    def articles(self) -> list[str]:
        """Article keys in order of first appearance."""
        return list(self._articles)

    def subset(self, articles: Iterable[str], source: str | None = None) -> "ParallelCorpus":
        keep = set(articles)
        records = [r for row in self.table for r in row.values() if self.article_of(r) in keep]
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
