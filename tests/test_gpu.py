"""GPU paths: bf16 training through the real trainer, flash-attention varlen against sdpa, and the
throughput benchmark at a small size. Skipped without CUDA (CI has none); run them on a GPU
machine with `python -m pytest tests/test_gpu.py`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from cpu_runs import DATA, REPO, environment, run, weights

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_training_on_gpu(tmp_path):
    proc = run(1, tmp_path, "train.mixed_precision=bf16", "train.length_group_size=4", "train.max_steps=4")
    assert "trained to step 4" in proc.stdout + proc.stderr
    init, final = weights(tmp_path / "init"), weights(tmp_path / "model")
    assert all(torch.isfinite(t).all() for t in final.values())
    assert any(not torch.equal(final[k], init[k]) for k in init)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_flash_attention_varlen_matches_sdpa(tmp_path):
    """Padded batch of mixed lengths: flash-attention's unpadded kernels give the sdpa embeddings."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from hybrid_dist.models.biencoder import BiEncoder

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(50)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    config = BertConfig(vocab_size=52, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, hidden_dropout_prob=0, attention_probs_dropout_prob=0)
    BiEncoder(BertModel(config, add_pooling_layer=False), tokenizer).save_pretrained(tmp_path / "m")
    texts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(3 + 5 * i)) for i in range(6)]
    out = {}
    for impl in ("sdpa", "flash_attention_2"):
        model = BiEncoder.from_pretrained(tmp_path / "m", attn_implementation=impl, dtype=torch.bfloat16).cuda()
        out[impl] = model.encode(texts, "query", batch_size=6).float()
    torch.testing.assert_close(out["flash_attention_2"], out["sdpa"], rtol=0, atol=2e-2)


def test_throughput_benchmark_runs_on_gpu(tmp_path):
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--preset", "gpu", "--shapes", "toy",
                           "--batch", "64", "--cached-batch", "256", "--chunk", "64", "--steps", "2", "--warmup", "1",
                           "--data", str(DATA), "--out", str(out)], cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["pairs_per_s"] and r["peak_memory_gib"] > 0 for r in rows)
