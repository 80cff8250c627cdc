"""The vocabulary-pruned e5 that travels to the device (hybrid_dist.models.e5_bundle): on every
text of the study it gives the full model's tokens and embeddings, and it is small enough to
travel with the data and the code in one call (64 MiB)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from hybrid_dist.models.e5_bundle import BIN_NAME, MANIFEST, TOKENIZER_NAME


@pytest.fixture(scope="module")
def full_checkpoint() -> Path:
    from hybrid_dist.models.import_e5 import ensure_e5_checkpoint

    return ensure_e5_checkpoint()


@pytest.fixture(scope="module")
def pruned_checkpoint(device_bundle, tmp_path_factory) -> Path:
    from hybrid_dist.models.import_e5 import ensure_e5_checkpoint

    return ensure_e5_checkpoint(tmp_path_factory.mktemp("pruned") / "e5", source=device_bundle / "model")


@pytest.fixture(scope="module")
def kept(device_bundle) -> np.ndarray:
    return np.asarray(json.loads((device_bundle / "model" / MANIFEST).read_text())["kept_ids"])


def raw_texts(xquad_dir: Path) -> list[str]:
    """The oracle's texts, read from the JSON files directly: every question (query prefix) and
    every paragraph (passage prefix; a paragraph holds its sentences' words) of every language."""
    texts = []
    for path in sorted(xquad_dir.glob("*.json")):
        for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
            for para in article["paragraphs"]:
                texts.append("passage: " + para["context"])
                texts += ["query: " + qa["question"] for qa in para["qas"]]
    return texts


def test_every_study_text_gets_the_original_tokens(device_bundle, full_checkpoint, kept, xquad_dir):
    from tokenizers import Tokenizer

    from hybrid_dist.evaluation.lareqa import load_lareqa

    full = Tokenizer.from_file(str(full_checkpoint / "tokenizer.json"))
    pruned = Tokenizer.from_file(str(device_bundle / "model" / TOKENIZER_NAME))
    bench = load_lareqa(xquad_dir, None, None, "all")
    texts = raw_texts(xquad_dir)
    n_raw = len(texts)
    for lang in bench.langs:  # the candidates as the evaluation builds them, with and without context
        part = bench.languages[lang]
        texts += ["passage: " + t for t in part.candidate_texts(False)]
        texts += ["passage: " + t for t in part.candidate_texts(True)[::7]]
    assert n_raw > 13_000 and len(bench.langs) == 11
    a = full.encode_batch(texts)
    b = pruned.encode_batch(texts)
    mismatched = [t for t, x, y in zip(texts, a, b) if x.ids != kept[y.ids].tolist()]
    assert not mismatched, f"{len(mismatched)} texts tokenize differently, e.g. {mismatched[0][:200]!r}"
    assert pruned.get_vocab_size() == len(kept) < full.get_vocab_size() / 4


def test_weights_are_the_full_models_rows(full_checkpoint, pruned_checkpoint, kept):
    full = load_file(str(full_checkpoint / "model.safetensors"))
    pruned = load_file(str(pruned_checkpoint / "model.safetensors"))
    assert set(full) == set(pruned)
    name = "embeddings.word_embeddings.weight"
    assert np.array_equal(pruned[name], full[name][kept])
    assert all(np.array_equal(full[k], pruned[k]) for k in full if k != name)


def test_embeddings_equal_the_full_models(full_checkpoint, pruned_checkpoint, xquad_dir):
    from hybrid_dist.models.biencoder import BiEncoder

    texts = raw_texts(xquad_dir)
    sample = texts[:: max(1, len(texts) // 120)]  # every language, questions and paragraphs
    torch.set_num_threads(1)
    out = {}
    for name, path in (("full", full_checkpoint), ("pruned", pruned_checkpoint)):
        model = BiEncoder.from_pretrained(path, max_length=128).eval()
        out[name] = torch.cat([model.encode([t.split(": ", 1)[1] for t in sample if t.startswith(kind)], kind=kind,
                                            batch_size=32) for kind in ("query", "passage")])
    assert out["full"].shape[0] == len(sample) > 100
    torch.testing.assert_close(out["pruned"], out["full"], rtol=0, atol=1e-6)


def test_the_bundle_fits_one_device_call(device_bundle):
    """Code (tracked files) + bundle under the device tool's 64 MiB, with room to spare."""
    sizes = {p.relative_to(device_bundle).as_posix(): p.stat().st_size for p in device_bundle.rglob("*") if p.is_file()}
    assert {f"model/{BIN_NAME}", f"model/{TOKENIZER_NAME}", "xquad-r.tar.gz"} <= set(sizes)
    assert sum(sizes.values()) < 40 * 2**20, sizes
