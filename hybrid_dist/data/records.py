"""The canonical training record and the error every loader raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Malformed input. The message names the file, the line or record, and the field."""

    def __init__(self, source: str, where: str | None, field_name: str | None, problem: str):
        self.source, self.where, self.field_name, self.problem = source, where, field_name, problem
        parts = [str(source)]
        if where:
            parts.append(where)
        if field_name:
            parts.append(f"field '{field_name}'")
        super().__init__(f"{': '.join(parts)}: {problem}")


@dataclass(frozen=True)
class ParallelRecord:
    """One question-passage pair in one language.

    Records sharing a ``group_id`` are translations of each other. ``article`` keys the
    train/held-out split; ``positive_id`` identifies the positive passage so that two groups
    answered by the same passage are never put into one batch (each would be a false
    negative for the other).
    """

    group_id: str
    lang: str
    query: str
    positive: str
    negatives: tuple[str, ...] = field(default_factory=tuple)
    article: str | None = None
    positive_id: str | None = None
