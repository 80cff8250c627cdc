"""What a loader does with a malformed record: stop (``error``, the default) or count and drop it
(``skip``, ``data.on_bad_record``). File-level problems (unreadable file, invalid JSON, wrong
encoding) never come here: they always stop, since nothing after them can be trusted."""

from __future__ import annotations

from typing import Literal

from hybrid_dist.data.records import DataError

Policy = Literal["error", "skip"]


class BadRecords:
    def __init__(self, policy: Policy = "error"):
        if policy not in ("error", "skip"):
            raise ValueError(f"data.on_bad_record must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.count = 0
        self.first: DataError | None = None

    def reject(self, error: DataError, records: int = 1) -> None:
        """Raise ``error``, or (skip) count ``records`` dropped records and remember the first."""
        if self.policy == "error":
            raise error
        self.count += max(1, records)
        if self.first is None:
            self.first = error

    def summary(self) -> str | None:
        if not self.count:
            return None
        return f"skipped {self.count} bad records (first: {self.first})"
