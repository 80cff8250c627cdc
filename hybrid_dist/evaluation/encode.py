"""Encoding for evaluation: sharded across ranks when ``torch.distributed`` is initialised, and
cached on disk keyed by (model fingerprint, kind, hash of the texts).

Works with any object that has ``encode(texts, kind, batch_size, show_progress)`` returning a
``(len(texts), dim)`` tensor or array (a :class:`hybrid_dist.models.biencoder.BiEncoder`, or a
test double)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hybrid_dist import atomic, distributed

DEFAULT_CACHE_DIR = Path(os.environ.get("HYBRID_DIST_CACHE", Path.home() / ".cache" / "hybrid_dist")) / "embeddings"


# ----------------------------------------------------------------------------- fingerprints


def texts_hash(texts: Sequence[str]) -> str:
    """Content hash of an ordered list of texts (length-prefixed, so boundaries count)."""
    h = hashlib.sha1()
    h.update(str(len(texts)).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20]


def model_fingerprint(model) -> str:
    """Identifies what a model computes: its weights, tokenizer and encoding settings.

    A ``fingerprint`` attribute or method on the model wins (a test double can set one); else
    every parameter and buffer of an ``nn.Module`` is hashed together with the pooling,
    normalisation, prefixes, maximum length and tokenizer vocabulary size."""
    own = getattr(model, "fingerprint", None)
    if own is not None:
        return str(own() if callable(own) else own)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cannot fingerprint a {type(model).__name__}; give it a 'fingerprint' attribute")
    h = hashlib.sha1()
    settings = {
        "class": type(model).__name__,
        "pooling": getattr(model, "pooling", None),
        "normalize": getattr(model, "normalize", None),
        "prefixes": getattr(model, "prefixes", None),
        "max_length": getattr(model, "max_length", None),
    }
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        settings["tokenizer"] = [type(tokenizer).__name__, len(tokenizer)]
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in list(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


# ----------------------------------------------------------------------------- distributed


def rank_and_world() -> tuple[int, int]:
    return distributed.rank(), distributed.world_size()


# ----------------------------------------------------------------------------- encoding


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def encode_texts(
    model,
    texts: Sequence[str],
    kind: str,
    batch_size: int = 64,
    show_progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
    fingerprint: str | None = None,
    shard_across_ranks: bool = False,
) -> np.ndarray:
    """``(len(texts), dim)`` float32 embeddings of ``texts`` as ``kind`` ("query"/"passage").

    ``shard_across_ranks`` (a collective call: every rank must make it, with the same texts):
    with ``torch.distributed`` initialised and world size > 1, each rank encodes the rows
    ``rank::world`` and the shards are all-gathered, so every rank returns the full array.
    Without it the call is local (safe from the main process alone, as the trainer calls it).
    With ``cache_dir`` the result is stored as ``<cache_dir>/<model fingerprint>/<kind>-<texts
    hash>.npy`` (written by rank 0, atomically) and reused (when sharding: when every rank finds
    it)."""
    texts = [str(t) for t in texts]  # numpy strings make fast tokenizers crawl
    rank, world = rank_and_world()
    shard = shard_across_ranks and world > 1
    path = None
    if cache_dir is not None:
        fingerprint = fingerprint or model_fingerprint(model)
        path = Path(cache_dir) / fingerprint / f"{kind}-{texts_hash(texts)}.npy"
        cached = _load_cached(path, len(texts))
        hit = distributed.all_true(cached is not None) if shard else cached is not None
        if hit:
            return cached
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    if shard:
        local_texts = texts[rank::world]
        local = _to_numpy(model.encode(local_texts, kind=kind, batch_size=batch_size,
                                       show_progress=show_progress and rank == 0))
        if local.ndim != 2:  # this rank had no rows: learn the width from a one-text encode
            local = _to_numpy(model.encode(texts[:1], kind=kind, batch_size=1, show_progress=False))[:0]
        emb = distributed.gather_strided_rows(torch.from_numpy(local), len(texts)).numpy()
    else:
        emb = _to_numpy(model.encode(texts, kind=kind, batch_size=batch_size, show_progress=show_progress))
    if emb.shape[0] != len(texts):
        raise RuntimeError(f"model.encode returned {emb.shape[0]} rows for {len(texts)} texts")
    if path is not None and rank == 0:
        _save_atomic(path, emb)
    if path is not None and shard:
        distributed.barrier()  # the entry exists for every rank before any goes on
    return emb


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.ndim != 2 or arr.shape[0] != n or arr.dtype != np.float32:
        return None
    return arr


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    atomic.write_stream(path, lambda f: np.save(f, arr, allow_pickle=False))
