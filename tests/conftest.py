from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
XQUAD_R = REPO.parent / "shared" / "data" / "xquad-r"

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
