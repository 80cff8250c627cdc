"""The gathered loss on 2 gloo ranks (under real DDP, started by torch.distributed.run) equals
one process's loss on the concatenated global batch: the loss value and every parameter gradient."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_loss_worker import GROUPS, compute, load_model, make_inputs, make_loss
from hybrid_dist.losses import InfoNCELoss, MultilingualContrastiveLoss

WORKER = Path(__file__).with_name("dist_loss_worker.py")


def run_two_ranks(model_dir, loss_name, dtype_name, out_file, chunk_size=0):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(WORKER.parent.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(model_dir), loss_name, dtype_name, str(out_file), str(chunk_size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_bert_dir

    return tiny_bert_dir(tmp_path_factory.mktemp("tiny") / "bert", dropout=0.0)


@pytest.mark.parametrize("dtype_name, chunk_size", [("float64", 0), ("float32", 0), ("float64", 3)],
                         ids=["float64", "float32", "float64-gradcache"])
@pytest.mark.parametrize("loss_name", ["infonce", "multilingual-mean", "multilingual-sum"])
def test_two_process_loss_and_gradients_equal_single_process(model_dir, loss_name, dtype_name, chunk_size, tmp_path):
    """Also with the gradient cache on the 2 ranks (chunks of 3, DDP syncing once).
    float64: every gradient element within rtol 1e-5. float32: the same maths, where
    summation order alone moves elements near zero by ~1e-7 of the tensor's scale, so each
    gradient tensor is compared by relative norm."""
    run_two_ranks(model_dir, loss_name, dtype_name, tmp_path / "dist.pt", chunk_size)
    dist = torch.load(tmp_path / "dist.pt")
    dtype = torch.float64 if dtype_name == "float64" else torch.float32

    model = load_model(model_dir, dtype)
    q, p, n = make_inputs(model.tokenizer.vocab_size)
    loss = compute(model, make_loss(loss_name), q, p, n, GROUPS)
    loss.backward()

    torch.testing.assert_close(dist["loss"], loss.detach(), rtol=1e-5, atol=0)
    largest = max(float(prm.grad.norm()) for prm in model.parameters() if prm.grad is not None)
    checked = 0
    for name, param in model.named_parameters():
        if param.grad is None:
            assert dist["grads"][name] is None, name
            continue
        got, want = dist["grads"][name], param.grad
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-14, msg=name)
        elif float(want.norm()) > 1e-6 * largest:  # skip gradients that are zero up to rounding
            assert float((got - want).norm()) <= 1e-5 * float(want.norm()), name
        checked += 1
    assert checked > 10 and largest > 0


def test_multilingual_loss_counts_translations_as_positives():
    """Two queries of one group, two passages: with both passages counted as positives, the
    loss is lower than InfoNCE (which treats the translation as a negative)."""
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.9, 0.2], [0.0, 1.0]]), dim=-1)
    p = q.clone()
    groups = torch.tensor([7, 7, 3])
    info = InfoNCELoss(0.1)(q, p)
    for aggregation in ("mean", "sum"):
        multi = MultilingualContrastiveLoss(0.1, aggregation)(q, p, None, groups, groups)
        assert multi < info
    # with all-distinct groups the multi-positive "sum" form reduces to InfoNCE
    distinct = torch.tensor([0, 1, 2])
    torch.testing.assert_close(MultilingualContrastiveLoss(0.1, "sum")(q, p, None, distinct, distinct), info)
    torch.testing.assert_close(MultilingualContrastiveLoss(0.1, "mean")(q, p, None, distinct, distinct), info)


def test_infonce_matches_hand_computed_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    neg = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    s = q @ torch.cat([p, neg]).T / t
    expected = (-(s[0, 0] - torch.logsumexp(s[0], 0)) - (s[1, 1] - torch.logsumexp(s[1], 0))) / 2
    torch.testing.assert_close(InfoNCELoss(t)(q, p, neg), expected)
