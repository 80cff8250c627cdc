"""JSON Lines of canonical records: one object per line with group_id, lang, query, positive,
and optionally negatives (list of strings), article and positive_id."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from hybrid_dist.data.records import DataError, ParallelRecord

REQUIRED = ("group_id", "lang", "query", "positive")


def record_from_mapping(row: Mapping, source: str, where: str) -> ParallelRecord:
    """Validate one canonical row (from JSONL or a dataset) into a record."""
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
    return ParallelRecord(
        group_id=str(group_id),
        lang=row["lang"],
        query=row["query"],
        positive=row["positive"],
        negatives=tuple(negatives),
        article=None if row.get("article") is None else str(row["article"]),
        positive_id=None if row.get("positive_id") is None else str(row["positive_id"]),
    )


def read_jsonl(path: str | Path) -> list[ParallelRecord]:
    path = Path(path)
    source = str(path)
    try:
        handle = path.open("rb")
    except OSError as e:
        raise DataError(source, None, None, f"cannot read: {e.strerror}") from None
    records = []
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"line {line_no}"
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(source, where, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(source, f"{where} column {e.colno}", None, f"invalid JSON: {e.msg}") from None
            records.append(record_from_mapping(row, source, where))
    if not records:
        raise DataError(source, None, None, "no records")
    return records


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


def iter_rows(rows: Iterable[Mapping], source: str) -> Iterator[ParallelRecord]:
    for i, row in enumerate(rows):
        yield record_from_mapping(row, source, f"record {i}")
