"""The erosion guard (optim.retention_weight): the update against a plain-AdamW oracle, its state
through a state_dict, exact resume of a real 2-rank run, and the same update under DDP, DeepSpeed
ZeRO-2/3 and the gradient cache."""

from __future__ import annotations

import shutil

import pytest
import torch

from cpu_runs import run, weights
from hybrid_dist.training.retention import ANCHOR, RetentionAdamW, retention_distance


def _grads(steps: int, shape=(3, 4), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def test_update_is_adamw_plus_the_pull_toward_the_first_weights():
    """Oracle: torch's AdamW, with w -= lr * lambda * (w - w0) done by hand before each step."""
    lr, lam, wd = 0.01, 5.0, 0.1
    w0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    ours = RetentionAdamW([a], retention_weight=lam, lr=lr, weight_decay=wd)
    oracle = torch.optim.AdamW([b], lr=lr, weight_decay=wd)
    for g in _grads(6):
        a.grad, b.grad = g.clone(), g.clone()
        with torch.no_grad():
            b -= lr * lam * (b - w0)
        ours.step()
        oracle.step()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert torch.equal(ours.state[a][ANCHOR], w0)
    assert retention_distance(ours) == pytest.approx(float((a.detach() - w0).norm()), rel=1e-6)


def test_pull_keeps_weights_near_their_start():
    """A constant gradient: plain AdamW walks ~lr per step; with the pull the distance settles
    near 1/lambda (Adam's step ~lr balances lr * lambda * distance)."""
    lam = 50.0
    free, held = torch.zeros(10, requires_grad=True), torch.zeros(10, requires_grad=True)
    opt_free = torch.optim.AdamW([free], lr=1e-3, weight_decay=0)
    opt_held = RetentionAdamW([held], retention_weight=lam, lr=1e-3, weight_decay=0)
    for _ in range(300):
        free.grad, held.grad = torch.ones(10), torch.ones(10)
        opt_free.step()
        opt_held.step()
    assert float(free.abs().max()) == pytest.approx(0.3, rel=0.01)  # 300 steps of lr
    assert float(held.abs().max()) == pytest.approx(1 / lam, rel=0.1)


def test_state_dict_round_trip_continues_exactly():
    w0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    grads = _grads(5, seed=3)
    whole = w0.clone().requires_grad_()
    opt = RetentionAdamW([whole], retention_weight=20.0, lr=0.01)
    for g in grads:
        whole.grad = g.clone()
        opt.step()
    part = w0.clone().requires_grad_()
    opt = RetentionAdamW([part], retention_weight=20.0, lr=0.01)
    for g in grads[:3]:
        part.grad = g.clone()
        opt.step()
    saved = opt.state_dict()
    resumed = part.detach().clone().requires_grad_()
    opt2 = RetentionAdamW([resumed], retention_weight=20.0, lr=0.01)
    opt2.load_state_dict(saved)
    assert torch.equal(opt2.state[resumed][ANCHOR], w0)  # the initial weights came back, not the current ones
    for g in grads[3:]:
        resumed.grad = g.clone()
        opt2.step()
    assert torch.equal(resumed, whole)


def test_switching_retention_on_at_a_resume_is_refused():
    w = torch.zeros(3, requires_grad=True)
    plain = torch.optim.AdamW([w], lr=0.01)
    w.grad = torch.ones(3)
    plain.step()
    opt = RetentionAdamW([w], retention_weight=1.0, lr=0.01)
    opt.load_state_dict(plain.state_dict())
    w.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="no initial weights"):
        opt.step()


# ----------------------------------------------------------------------------- real runs

RET = ("optim.retention_weight=300", "model.scratch.dropout=0.0")


@pytest.fixture(scope="module")
def two_rank_retention(tmp_path_factory):
    out = tmp_path_factory.mktemp("ret") / "two"
    run(2, out, *RET)
    return out


def _distance(a: dict, b: dict) -> float:
    return float(torch.cat([(a[k] - b[k]).flatten() for k in sorted(a)]).norm())


def test_retention_keeps_the_trained_weights_nearer_the_initial_ones(two_rank_retention, tmp_path):
    run(2, tmp_path / "free", "model.scratch.dropout=0.0")
    init = weights(two_rank_retention / "init")
    assert torch.equal(init["embeddings.word_embeddings.weight"],
                       weights(tmp_path / "free" / "init")["embeddings.word_embeddings.weight"])
    held, free = _distance(weights(two_rank_retention / "model"), init), _distance(weights(tmp_path / "free" / "model"), init)
    assert 0 < held < 0.8 * free, (held, free)


def test_retention_resumes_to_the_same_weights(two_rank_retention, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(two_rank_retention, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    shutil.rmtree(resumed / "model")
    proc = run(2, resumed, *RET, "train.resume=auto")
    assert "resumed from" in proc.stdout and "step-00000003" in proc.stdout
    want, got = weights(two_rank_retention / "model"), weights(resumed / "model")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_retention_cannot_be_switched_on_at_a_resume(tmp_path):
    out = tmp_path / "plain"
    run(1, out, "train.max_steps=3", "train.save_every=3")
    proc = run(1, out, "train.max_steps=6", "train.resume=auto", "optim.retention_weight=100", expect=2)
    assert "optim.retention_weight 0.0 -> 100.0" in proc.stderr  # the resume's config check
    # accepted explicitly: the checkpoint still holds no initial weights to pull toward
    proc = run(1, out, "train.max_steps=6", "train.resume=auto", "optim.retention_weight=100",
               "train.allow_config_change=[optim.retention_weight]", expect=None)
    assert proc.returncode != 0 and "no initial weights" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- backends

# as tests/test_backends.py (Adam with eps = lr = 1000 moves a weight by about its gradient), for two
# steps: the pull is zero at the first step, lr * lambda * (w1 - w0) = 0.1 (w1 - w0) at the second
SCALE_VISIBLE_2 = ("optim.lr=1000", "optim.eps=1000", "optim.weight_decay=0", "optim.max_grad_norm=0",
                   "optim.warmup_steps=0", "optim.scheduler=constant", "model.scratch.dropout=0",
                   "train.max_steps=2", "train.save_every=0", "train.log_batches=false",
                   "optim.retention_weight=1e-4")


def _update(out) -> torch.Tensor:
    init, final = weights(out / "init"), weights(out / "model")
    return torch.cat([(final[n] - init[n]).flatten() for n in sorted(init)])


@pytest.fixture(scope="module")
def ddp_retention(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-ret")
    run(2, out, *SCALE_VISIBLE_2)
    return out


def test_the_pull_changes_the_ddp_update(ddp_retention, tmp_path):
    run(2, tmp_path, *SCALE_VISIBLE_2[:-1])
    with_pull, without = _update(ddp_retention), _update(tmp_path)
    rel = float((with_pull - without).norm() / without.norm())
    assert rel > 1e-3, rel


@pytest.mark.parametrize("launcher, extra", [
    ("zero2-1node.yaml", ()), ("zero3-1node.yaml", ()), ("zero2-1node.yaml", ("train.grad_cache_chunk_size=2",)),
], ids=["zero2", "zero3", "zero2-gradcache"])
def test_retention_update_equals_ddp(ddp_retention, tmp_path, launcher, extra):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
    run(2, tmp_path, *SCALE_VISIBLE_2, *extra, launcher=launcher)
    ref, got = _update(ddp_retention), _update(tmp_path)
    assert float(ref.abs().max()) > 1e-6
    rel = float((got - ref).norm() / ref.norm())
    assert rel < 1e-4, f"update differs from DDP's by {rel:.2e} (relative norm)"


def test_gradient_cache_with_retention_equals_uncached_under_ddp(ddp_retention, tmp_path):
    run(2, tmp_path, *SCALE_VISIBLE_2, "train.grad_cache_chunk_size=3")
    ref, got = _update(ddp_retention), _update(tmp_path)
    rel = float((got - ref).norm() / ref.norm())
    assert rel < 1e-4, rel


@pytest.mark.slow
@pytest.mark.ci_slow  # three ZeRO-2 runs (about 27 s); the 2-rank DDP resume runs by default
def test_zero2_retention_resumes_to_the_same_weights(tmp_path):
    """The anchors live in DeepSpeed's per-rank optimizer shards."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
    common = (*RET, "optim.scheduler=constant", "train.save_every=2")
    run(2, tmp_path / "whole", *common, "train.max_steps=4", launcher="zero2-1node.yaml")
    run(2, tmp_path / "part", *common, "train.max_steps=2", launcher="zero2-1node.yaml")
    run(2, tmp_path / "part", *common, "train.max_steps=4", "train.resume=auto", launcher="zero2-1node.yaml")
    want, got = weights(tmp_path / "whole" / "model"), weights(tmp_path / "part" / "model")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=k)
