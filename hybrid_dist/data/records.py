"""The canonical training record and the error every loader raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field


MAX_MESSAGE_PART = 300  # characters of one message part: a 10 MB record must not become a 10 MB error


class DataError(ValueError):
    """Malformed input. The message names the file, the line or record, and the field."""

    def __init__(self, source: str, where: str | None, field_name: str | None, problem: str):
        self.source, self.where, self.field_name, self.problem = source, where, field_name, problem
        parts = [clip(str(source))]
        if where:
            parts.append(clip(where))
        if field_name:
            parts.append(f"field '{clip(field_name)}'")
        super().__init__(f"{': '.join(parts)}: {clip(problem)}")


def clip(text: str, limit: int = MAX_MESSAGE_PART) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def excerpt(text: str, limit: int = 60) -> str:
    """A short quoted excerpt of user text for an error message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def not_utf8(raw_start: bytes, error: UnicodeDecodeError) -> str:
    """The problem text for a file that is not UTF-8, with a hint for the usual culprit."""
    hint = ""
    if raw_start.startswith((b"\xff\xfe", b"\xfe\xff")):
        hint = "; the file starts with a UTF-16 byte-order mark: re-encode it as UTF-8"
    return f"not valid UTF-8 ({error.reason} at byte {error.start}){hint}"


def json_problem(error, text: str) -> str:
    """The problem text for a ``json.JSONDecodeError``; a file cut short says so."""
    if not text.strip():
        return "empty (no JSON at all)"
    msg = f"{error.msg} column {error.colno}" if error.msg.endswith(" at") else error.msg  # "... starting at"
    if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
        return f"invalid JSON: {msg}; the input ends there (truncated?)"
    return f"invalid JSON: {msg}"


@dataclass(frozen=True)
class ParallelRecord:
    """One question-passage pair in one language.

    Records sharing a ``group_id`` are translations of each other. ``article`` keys the
    train/held-out split (translations may carry translated titles: the corpus links them through
    their groups). ``positive_id`` and ``negative_ids`` identify passages within a language, so
    the corpus can tell which questions each passage answers, whatever its text (see
    ``ParallelCorpus``); without them a passage is identified by its text.
    """

    group_id: str
    lang: str
    query: str
    positive: str
    negatives: tuple[str, ...] = field(default_factory=tuple)
    article: str | None = None
    positive_id: str | None = None
    negative_ids: tuple[str, ...] = ()  # empty, or one id per negative
