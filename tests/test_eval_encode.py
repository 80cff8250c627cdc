"""Embedding cache, model fingerprints and encoding sharded over torch.distributed ranks."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from hybrid_dist.evaluation.encode import encode_texts, model_fingerprint, texts_hash
from toy_eval import HashingEncoder, tiny_biencoder

TEXTS = [f"text number {i} with some words" for i in range(23)]


def test_cache_is_written_once_and_reused(tmp_path):
    enc = HashingEncoder(dim=16)
    a = encode_texts(enc, TEXTS, "passage", cache_dir=tmp_path)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and files[0].parent.name == enc.fingerprint
    assert files[0].name == f"passage-{texts_hash(TEXTS)}.npy"
    b = encode_texts(enc, TEXTS, "passage", cache_dir=tmp_path)
    np.testing.assert_array_equal(a, b)
    assert enc.calls == [("passage", 23)]  # second call served from disk
    encode_texts(enc, TEXTS, "query", cache_dir=tmp_path)  # another kind: another entry
    encode_texts(enc, TEXTS[:-1], "passage", cache_dir=tmp_path)  # another corpus: another entry
    assert len(enc.calls) == 3 and len(list(tmp_path.rglob("*.npy"))) == 3
    other = HashingEncoder(dim=16, seed=1)  # another model: another directory
    encode_texts(other, TEXTS, "passage", cache_dir=tmp_path)
    assert other.calls == [("passage", 23)]
    files[0].write_bytes(b"not an npy file")  # a damaged entry is recomputed
    c = encode_texts(enc, TEXTS, "passage", cache_dir=tmp_path)
    np.testing.assert_array_equal(a, c)
    assert enc.calls[-1] == ("passage", 23)


def test_texts_hash_respects_boundaries():
    assert texts_hash(["ab", "c"]) != texts_hash(["a", "bc"])
    assert texts_hash(["a"]) == texts_hash(["a"])


def test_model_fingerprint_tracks_weights_and_settings():
    model = tiny_biencoder(["some words to build a vocabulary"], hidden=32, layers=1)
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(model)
    model.prefixes["query"] = "question: "
    fp_prefix = model_fingerprint(model)
    assert fp_prefix != fp
    with torch.no_grad():
        next(model.encoder.parameters())[0, 0] += 1.0
    assert model_fingerprint(model) != fp_prefix
    with pytest.raises(TypeError):
        model_fingerprint(object())


def test_biencoder_embeddings_cached_match_fresh(tmp_path):
    model = tiny_biencoder(TEXTS, hidden=32, layers=1)
    fresh = encode_texts(model, TEXTS, "query")
    cached = encode_texts(model, TEXTS, "query", cache_dir=tmp_path)
    again = encode_texts(model, TEXTS, "query", cache_dir=tmp_path)
    np.testing.assert_allclose(fresh, cached, atol=1e-6)
    np.testing.assert_array_equal(cached, again)
    assert fresh.shape == (23, 32) and np.allclose(np.linalg.norm(fresh, axis=1), 1, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        enc = HashingEncoder(dim=16)
        local = encode_texts(enc, TEXTS[:3], "query")  # not collective: this rank alone, no hang
        assert local.shape == (3, 16)
        emb = encode_texts(enc, TEXTS, "passage", cache_dir=os.path.join(out_dir, "cache"), shard_across_ranks=True)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), emb)
        with open(os.path.join(out_dir, f"calls{rank}.txt"), "w") as f:
            f.write(repr(enc.calls))
        # second round: every rank finds the cache, nobody encodes
        enc2 = HashingEncoder(dim=16)
        encode_texts(enc2, TEXTS, "passage", cache_dir=os.path.join(out_dir, "cache"), shard_across_ranks=True)
        with open(os.path.join(out_dir, f"calls2_{rank}.txt"), "w") as f:
            f.write(repr(enc2.calls))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_ranks_encode_disjoint_shards_and_gather(tmp_path):
    import torch.multiprocessing as mp

    # the spawned ranks import this module (and toy_eval) through the parent's sys.path, which pytest's
    # rootdir insertion already gives tests/: the same `toy_eval` the parent imported, no second name
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = encode_texts(HashingEncoder(dim=16), TEXTS, "passage")
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), expected)
    # 23 texts over 2 ranks: 12 and 11
    assert (tmp_path / "calls0.txt").read_text() == "[('query', 3), ('passage', 12)]"
    assert (tmp_path / "calls1.txt").read_text() == "[('query', 3), ('passage', 11)]"
    assert (tmp_path / "calls2_0.txt").read_text() == "[]" and (tmp_path / "calls2_1.txt").read_text() == "[]"
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
