"""Deterministic train / held-out split by article, so the two never share an article."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["parity", "hash", "none"]
Part = Literal["train", "heldout", "all"]


@dataclass(frozen=True)
class ArticleSplit:
    """``parity``: articles at even positions (first-appearance order) train, odd ones are held out.
    ``hash``: an article is held out when sha1(article) falls in the first ``heldout_fraction``.
    ``none``: every article trains and nothing is held out."""

    strategy: Strategy = "parity"
    heldout_fraction: float = 0.5

    def is_heldout(self, article: str, index: int) -> bool:
        if self.strategy == "none":
            return False
        if self.strategy == "parity":
            return index % 2 == 1
        if self.strategy == "hash":
            digest = int.from_bytes(hashlib.sha1(article.encode("utf-8")).digest()[:8], "big")
            return digest / 2**64 < self.heldout_fraction
        raise ValueError(f"unknown split strategy {self.strategy!r}; expected parity, hash or none")

    def select(self, articles: Sequence[str], part: Part) -> set[str]:
        """The articles (in first-appearance order ``articles``) that belong to ``part``."""
        if part == "all":
            return set(articles)
        held = {a for i, a in enumerate(articles) if self.is_heldout(a, i)}
        return held if part == "heldout" else set(articles) - held
