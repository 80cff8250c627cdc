"""JSON Lines of canonical records: one object per line with group_id, lang, query, positive,
and optionally negatives (list of strings), article and positive_id."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from hybrid_dist.data.bad_records import BadRecords
from hybrid_dist.data.records import DataError, ParallelRecord, excerpt, json_problem, not_utf8

REQUIRED = ("group_id", "lang", "query", "positive")


def record_from_mapping(row: Mapping, source: str, where: str, max_chars: int = 0) -> ParallelRecord:
    """Validate one canonical row (from JSONL or a dataset) into a record. ``max_chars`` > 0
    rejects longer texts: a multi-megabyte "passage" is a data bug, and tokenizing it would
    cost seconds every time it is drawn."""
    if not isinstance(row, Mapping):
        raise DataError(source, where, None, f"expected a JSON object, got {type(row).__name__}")
    for name in REQUIRED:
        if name not in row or row[name] is None:
            raise DataError(source, where, name, "missing")
    group_id = row["group_id"]
    if not isinstance(group_id, (str, int)) or isinstance(group_id, bool):
        raise DataError(source, where, "group_id", f"expected a string or integer, got {type(group_id).__name__}")
    for name in ("lang", "query", "positive"):
        if not isinstance(row[name], str):
            raise DataError(source, where, name, f"expected a string, got {type(row[name]).__name__}")
        if not row[name].strip():
            raise DataError(source, where, name, "empty")
    negatives = row.get("negatives") or []
    if not isinstance(negatives, (list, tuple)) or not all(isinstance(n, str) for n in negatives):
        raise DataError(source, where, "negatives", "expected a list of strings")
    for name in ("article", "positive_id"):
        if row.get(name) is not None and not isinstance(row[name], (str, int)):
            raise DataError(source, where, name, f"expected a string, got {type(row[name]).__name__}")
    if max_chars:
        texts = [("query", row["query"]), ("positive", row["positive"])]
        texts += [(f"negatives[{i}]", n) for i, n in enumerate(negatives)]
        for name, text in texts:
            if len(text) > max_chars:
                raise DataError(source, where, name, f"{len(text):,} characters, more than data.max_text_chars="
                                f"{max_chars:,} (text starts {excerpt(text, 40)})")
    return ParallelRecord(
        group_id=str(group_id),
        lang=row["lang"],
        query=row["query"],
        positive=row["positive"],
        negatives=tuple(negatives),
        article=None if row.get("article") is None else str(row["article"]),
        positive_id=None if row.get("positive_id") is None else str(row["positive_id"]),
    )


def read_jsonl(path: str | Path, bad: BadRecords | None = None, max_chars: int = 0) -> list[ParallelRecord]:
    """Invalid JSON or UTF-8 on any line stops (the file is damaged); a well-formed line with a
    bad record stops too, or is counted and dropped when ``bad`` skips."""
    path = Path(path)
    source = str(path)
    bad = bad or BadRecords()
    try:
        handle = path.open("rb")
    except OSError as e:
        raise DataError(source, None, None, f"cannot read: {e.strerror}") from None
    unique = _Unique(source)
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"line {line_no}"
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(source, where, None, not_utf8(raw[:4] if line_no == 1 else b"", e)) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # a newline inside a cut-off string is not the problem
            except json.JSONDecodeError as e:
                raise DataError(source, f"{where} column {e.colno}", None, json_problem(e, line)) from None
            try:
                unique.add(record_from_mapping(row, source, where, max_chars), where)
            except DataError as e:
                bad.reject(e)
    if not unique.records:
        raise DataError(source, None, None, "no records" + (" left after skipping bad ones" if bad.count else ""))
    return unique.records


class _Unique:
    """Keeps records in order; a second record for the same (group_id, lang) must carry the same
    text, since two different texts under one id would silently make a false pair."""

    def __init__(self, source: str):
        self.source = source
        self.records: list[ParallelRecord] = []
        self._first: dict[tuple[str, str], tuple[str, ParallelRecord]] = {}

    def add(self, record: ParallelRecord, where: str) -> None:
        key = (record.group_id, record.lang)
        if key in self._first:
            first_where, first = self._first[key]
            if first != record:
                field = next(f for f in ("query", "positive", "negatives", "article", "positive_id")
                             if getattr(first, f) != getattr(record, f))
                raise DataError(self.source, f"{where} (group_id {record.group_id}, lang {record.lang})", field,
                                f"duplicate group_id and lang with conflicting text (first at {first_where})")
            return  # an exact repeat adds nothing
        self._first[key] = (where, record)
        self.records.append(record)


def write_jsonl(records: Iterable[ParallelRecord], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as out:
        for r in records:
            row = {"group_id": r.group_id, "lang": r.lang, "query": r.query, "positive": r.positive}
            if r.negatives:
                row["negatives"] = list(r.negatives)
            if r.article is not None:
                row["article"] = r.article
            if r.positive_id is not None:
                row["positive_id"] = r.positive_id
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def records_from_rows(rows: Iterable[Mapping], source: str, bad: BadRecords | None = None,
                      max_chars: int = 0) -> list[ParallelRecord]:
    """Validated records of a dataset's rows, under the same rules as JSONL lines."""
    bad = bad or BadRecords()
    unique = _Unique(source)
    for i, row in enumerate(rows):
        try:
            unique.add(record_from_mapping(row, source, f"record {i}", max_chars), f"record {i}")
        except DataError as e:
            bad.reject(e)
    return unique.records
