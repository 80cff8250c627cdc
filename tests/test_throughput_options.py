"""The speed and memory options change how the work is done, never what is learned: length-grouped
encoding, gradient checkpointing, DataLoader tokenization workers, the attention fallback and
torch.compile each train the same weights on the same batches as the plain run (dropout off)."""

from __future__ import annotations

import pytest
import torch

from cpu_runs import batch_log, run, weights

COMMON = ("model.scratch.dropout=0",)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    run(1, out, *COMMON)
    return out


def _assert_same_training(reference, other, atol=1e-5):
    assert batch_log(other) == batch_log(reference)
    want, got = weights(reference / "model"), weights(other / "model")
    assert want.keys() == got.keys()
    moved = max(float((want[k] - weights(reference / "init")[k]).abs().max()) for k in want)
    assert moved > 1e-3, "the reference run did not train"
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=atol, msg=name)


def test_grouping_checkpointing_workers_and_attention_fallback_train_the_same(plain, tmp_path):
    proc = run(1, tmp_path, *COMMON, "train.length_group_size=3", "model.gradient_checkpointing=true",
               "data.num_workers=2", "model.attn_implementation=flash_attention_2")
    if not torch.cuda.is_available():
        assert "flash-attn or CUDA is missing here; using sdpa" in proc.stdout + proc.stderr
    _assert_same_training(plain, tmp_path)


def test_gradient_cache_with_sorted_chunks_trains_the_same(plain, tmp_path):
    run(1, tmp_path, *COMMON, "train.grad_cache_chunk_size=3")
    _assert_same_training(plain, tmp_path)


@pytest.mark.slow
def test_torch_compile_trains_the_same(plain, tmp_path):
    """About 30 s on 2 CPU cores (inductor compiles C++ kernels for each new shape)."""
    run(1, tmp_path, *COMMON, "train.compile=true")
    _assert_same_training(plain, tmp_path)
