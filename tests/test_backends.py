"""The trainer under DeepSpeed ZeRO-2 and ZeRO-3 (DeepSpeed's CPU accelerator over gloo, 2 ranks)
against DDP: the first update, the gradient cache, saving and resuming.

Adam's first step is lr * g / (|g| + eps), blind to the gradient's scale for a small eps; these
runs use eps = lr = 1000 and no clipping or weight decay, so the first update is about g itself
and a gradient scaled by the world size (the all-gather pitfall) would show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from cpu_runs import REPO, run, weights

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")

SCALE_VISIBLE = ("optim.lr=1000", "optim.eps=1000", "optim.weight_decay=0", "optim.max_grad_norm=0",
                 "optim.warmup_steps=0", "optim.scheduler=constant", "model.scratch.dropout=0",
                 "train.max_steps=1", "train.save_every=0", "train.log_batches=false")


def _init_and_update(out: Path) -> tuple[dict, dict]:
    return weights(out / "init"), weights(out / "model")


def _assert_same_update(reference: Path, other: Path, rtol: float = 1e-4) -> None:
    init, ref = _init_and_update(reference)
    init2, got = _init_and_update(other)
    for name in init:
        assert torch.equal(init[name], init2[name]), f"{name}: runs started from different weights"
    delta_ref = torch.cat([(ref[n] - init[n]).flatten() for n in sorted(init)])
    delta_got = torch.cat([(got[n] - init[n]).flatten() for n in sorted(init)])
    assert delta_ref.abs().max() > 1e-6, "the reference run did not move the weights"
    rel = (delta_got - delta_ref).norm() / delta_ref.norm()
    assert rel < rtol, f"first update differs from the reference by {rel:.2e} (relative norm)"
    ratio = delta_got.norm() / delta_ref.norm()
    assert abs(ratio - 1) < rtol, f"update scale {ratio:.4f} x the reference"


@pytest.fixture(scope="module")
def ddp_first_update(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    run(2, out, *SCALE_VISIBLE)
    return out


@pytest.mark.parametrize("launcher", [
    "zero2-1node.yaml", "zero3-1node.yaml",
    # CPU offload builds DeepSpeed's cpu_adam op at first use (about 40 s) and runs ZeRO-3 on top
    pytest.param("zero3-offload-1node.yaml", marks=[pytest.mark.slow, pytest.mark.ci_slow])])
def test_zero_first_update_equals_ddp(ddp_first_update, tmp_path, launcher):
    run(2, tmp_path, *SCALE_VISIBLE, launcher=launcher)
    # the checkpoint is DeepSpeed's own (per-rank optimizer shards): the backend really ran
    shards = sorted(p.name for p in (tmp_path / "checkpoints").rglob("*optim_states.pt"))
    assert len(shards) == 2, shards
    _assert_same_update(ddp_first_update, tmp_path)


@pytest.mark.slow
@pytest.mark.ci_slow  # two 2-rank runs (about 20 s); ZeRO-2 = DDP without accumulation runs by default
def test_zero2_gradient_accumulation_equals_ddp(tmp_path):
    """Two micro-batches per step: the training config's accumulation steps, not the launcher's
    (whose DeepSpeed config says 1), decide when the engine steps; DeepSpeed's 1/steps loss
    scaling matches DDP's."""
    run(2, tmp_path / "ddp", *SCALE_VISIBLE, "train.gradient_accumulation_steps=2")
    proc = run(2, tmp_path / "zero2", *SCALE_VISIBLE, "train.gradient_accumulation_steps=2",
               launcher="zero2-1node.yaml")
    assert "launcher gradient_accumulation_steps=1 ignored" in proc.stdout + proc.stderr
    _assert_same_update(tmp_path / "ddp", tmp_path / "zero2")


@pytest.mark.parametrize("launcher", ["zero2-1node.yaml", "zero3-1node.yaml"])
def test_zero_gradient_cache_equals_uncached(ddp_first_update, tmp_path, launcher):
    """Chunks of 2 texts: 4 re-encodings per step, one engine step (no 'gradient computed twice')."""
    run(2, tmp_path, *SCALE_VISIBLE, "train.grad_cache_chunk_size=2", launcher=launcher)
    _assert_same_update(ddp_first_update, tmp_path)


@pytest.mark.slow
@pytest.mark.ci_slow  # three ZeRO-3 runs (about 30 s)
def test_zero3_saves_whole_model_and_resumes(tmp_path):
    """ZeRO-3 shards the weights across ranks; the saved model must still be whole, and a resumed
    run must end where an uninterrupted one does (constant schedule: the first part's shorter
    max_steps must not change its learning rates)."""
    common = ("model.scratch.dropout=0", "optim.scheduler=constant", "train.save_every=2")
    whole = tmp_path / "whole"
    run(2, whole, *common, "train.max_steps=4", launcher="zero3-1node.yaml")
    init, final = weights(whole / "init"), weights(whole / "model")
    assert set(final) == set(init)
    for name in init:
        assert final[name].shape == init[name].shape, name  # not ZeRO-3's empty placeholders
    assert any(not torch.equal(final[n], init[n]) for n in init)

    part = tmp_path / "part"
    run(2, part, *common, "train.max_steps=2", launcher="zero3-1node.yaml")
    run(2, part, *common, "train.max_steps=4", "train.resume=auto", launcher="zero3-1node.yaml")
    resumed = weights(part / "model")
    for name in final:
        torch.testing.assert_close(resumed[name], final[name], rtol=1e-5, atol=1e-7, msg=name)


def test_zero2_nonfinite_loss_skips_the_step(tmp_path):
    """A NaN loss at step 2 on every rank: no backward, no engine step, the run goes on."""
    proc = run(2, tmp_path, "model.scratch.dropout=0", "train.max_steps=3", launcher="zero2-1node.yaml",
               fault="nan_loss@2")
    assert "step 2: non-finite loss" in proc.stdout + proc.stderr
    final = weights(tmp_path / "model")
    assert all(torch.isfinite(t).all() for t in final.values())


def test_launcher_configs_are_valid():
    """Every launcher parses, names a real backend, and the DeepSpeed ones leave clipping and batch
    sizes to the training config (set by hybrid_dist.training.backends.configure_deepspeed)."""
    from accelerate.commands.config.config_args import load_config_from_file

    seen = set()
    for path in sorted((REPO / "launchers").glob("*.yaml")):
        cfg = load_config_from_file(str(path))
        raw = yaml.safe_load(path.read_text())
        seen.add(str(cfg.distributed_type).split(".")[-1])
        assert cfg.num_processes >= 1 and cfg.num_machines >= 1, path.name
        if "multinode" in path.name:
            assert cfg.num_machines > 1 and cfg.num_processes % cfg.num_machines == 0, path.name
        if raw["distributed_type"] == "DEEPSPEED":
            ds = raw["deepspeed_config"]
            assert ds["zero_stage"] in (2, 3), path.name
            assert "deepspeed_config_file" not in ds, path.name
            if ds["zero_stage"] == 3:
                assert ds.get("zero3_save_16bit_model"), f"{path.name}: a ZeRO-3 model would save empty"
        if raw["distributed_type"] == "FSDP":
            assert raw["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT", path.name
    assert {"MULTI_GPU", "MULTI_CPU", "DEEPSPEED", "FSDP"} <= seen, seen


def test_fsdp_on_cpu_is_refused_with_the_reason(tmp_path):
    proc = run(1, tmp_path, launcher="fsdp-1node.yaml", expect=None)
    if os.environ.get("CUDA_VISIBLE_DEVICES") or torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert proc.returncode != 0
    assert "FSDP needs GPUs" in proc.stderr
