"""Small stand-in encoders for tests (no download needed).

* :class:`HashingEncoder`: hashed character n-grams -> a fixed random projection; instant,
  deterministic and lexical (so monolingual retrieval works better than chance).
* :func:`tiny_biencoder`: a real :class:`~hybrid_dist.models.biencoder.BiEncoder` around a randomly
  initialised 2-layer BERT (hidden 32) with a WordPiece tokenizer trained offline on the given
  texts (both from :func:`hybrid_dist.models.scratch.scratch_bert`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch


class HashingEncoder:
    """``encode(texts, kind, batch_size, show_progress)`` -> L2-normalised float32 tensor."""

    def __init__(self, dim: int = 64, ngram: int = 3, seed: int = 0):
        self.dim, self.ngram, self.seed = dim, ngram, seed
        self.fingerprint = f"hashing-{dim}-{ngram}-{seed}"
        self.calls: list[tuple[str, int]] = []  # (kind, number of texts) per call

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        t = f" {text.lower()} "
        for i in range(max(1, len(t) - self.ngram + 1)):
            h = hashlib.blake2b(f"{self.seed}:{t[i:i + self.ngram]}".encode(), digest_size=8).digest()
            idx = int.from_bytes(h[:4], "little") % self.dim
            v[idx] += 1.0 if h[4] & 1 else -1.0
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def encode(self, texts: Sequence[str], kind: str = "query", batch_size: int = 64, show_progress: bool = False):
        from tqdm.auto import tqdm

        self.calls.append((kind, len(texts)))
        rows = [self._vector(t) for t in tqdm(texts, desc=f"encode {kind}", disable=not show_progress)]
        return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32))


def tiny_biencoder(texts: Iterable[str] | None = None, seed: int = 0, hidden: int = 32, layers: int = 2,
                   vocab_size: int = 2000, max_length: int = 64):
    """A randomly initialised 2-layer BERT bi-encoder (for tests; its scores are meaningless), built
    by the library's :func:`~hybrid_dist.models.scratch.scratch_bert` with a WordPiece tokenizer."""
    from hybrid_dist.models.biencoder import BiEncoder
    from hybrid_dist.models.scratch import scratch_bert

    corpus = list(texts) if texts is not None else [
        "query: passage: the quick brown fox jumps over the lazy dog",
        "der schnelle braune fuchs springt über den faulen hund",
        "el rápido zorro marrón salta sobre el perro perezoso",
    ]
    encoder, tokenizer = scratch_bert(corpus, hidden_size=hidden, num_layers=layers, num_heads=2,
                                      intermediate_size=hidden * 2, vocab_size=vocab_size, max_length=max_length,
                                      seed=seed, tokenizer="wordpiece", max_position_embeddings=max(128, max_length))
    return BiEncoder(encoder, tokenizer, max_length=max_length)


def _paragraph(sentences: list[str], qas: list[tuple[str, str, str]]) -> dict:
    context, breaks = "", []
    for s in sentences:
        if context:
            context += " "
        breaks.append([len(context), len(context) + len(s)])
        context += s
    return {"context": context, "sentences": sentences, "sentence_breaks": breaks, "qas": [
        {"id": qid, "question": q, "answers": [{"answer_start": context.index(a), "text": a}]} for qid, q, a in qas]}


def write_toy_lareqa(directory: str | Path) -> Path:
    """A two-language XQuAD-R-style directory (``de.json``, ``en.json``): one article, one
    paragraph of three sentences, two parallel questions (q1 answered by sentence 0 in English
    and sentence 1 in German, q2 by sentence 2 in both)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    docs = {
        "en": _paragraph(["E0 alpha.", "E1 beta.", "E2 gamma."],
                         [("q1", "en question one", "alpha"), ("q2", "en question two", "gamma")]),
        "de": _paragraph(["D0 eins.", "D1 zwei.", "D2 drei."],
                         [("q1", "de Frage eins", "zwei"), ("q2", "de Frage zwei", "drei")]),
    }
    for lang, para in docs.items():
        (directory / f"{lang}.json").write_text(json.dumps({"data": [{"title": "T", "paragraphs": [para]}]}),
                                                encoding="utf-8")
    return directory
