"""The gradient-cached loss equals the uncached loss: same value, same parameter gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_bert_dir
from hybrid_dist.training.gradcache import RngState, cached_backward
from hybrid_dist.training.length_groups import grouped_forward, padding_fraction, sort_by_length, split_trimmed
from hybrid_dist.losses import InfoNCELoss, MultilingualContrastiveLoss
from hybrid_dist.models.biencoder import BiEncoder

QUERIES = ["how many points", "wie viele Punkte", "cuántos puntos", "黑豹队的防守", "ทีมรับของแพนเธอร์ส",
           "the quick fox", "der braune Fuchs", "el zorro"]
PASSAGES = [t + " gave up in the game over the season" * (1 + i % 3) for i, t in enumerate(QUERIES)]
NEGATIVES = [t[::-1] for t in PASSAGES]


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def features(model):
    return [model.tokenize(QUERIES, "query"), model.tokenize(PASSAGES, "passage"),
            model.tokenize(NEGATIVES, "passage")]


def assert_same(got_loss, got, want_loss, want, rtol=1e-4):
    """Loss within rtol; every gradient element within rtol of its tensor's scale (float32
    summation order moves elements near zero). Gradients that are zero up to rounding (key
    biases: softmax ignores them) are skipped."""
    torch.testing.assert_close(got_loss, want_loss, rtol=rtol, atol=0)
    assert got.keys() == want.keys() and len(got) > 10
    largest = max(float(g.norm()) for g in want.values())
    checked = 0
    for name in want:
        if float(want[name].norm()) <= 1e-6 * largest:
            continue
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=rtol * scale, msg=name)
        checked += 1
    assert checked >= len(want) - 4


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gc")
    return {0.0: tiny_bert_dir(base / "nodrop", dropout=0.0), 0.1: tiny_bert_dir(base / "drop", dropout=0.1)}


@pytest.mark.parametrize("loss_fn", [InfoNCELoss(0.05), MultilingualContrastiveLoss(0.05, "mean")],
                         ids=["infonce", "multilingual"])
@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_cached_equals_whole_batch_without_dropout(model_dirs, loss_fn, chunk_size):
    model = BiEncoder.from_pretrained(model_dirs[0.0]).train()
    groups = torch.tensor([0, 1, 2, 0, 1, 5, 6, 2])
    q, p, n = features(model)
    loss = loss_fn(model(**q), model(**p), model(**n), groups, groups)
    loss.backward()
    want_loss, want = loss.detach(), grads(model)

    got_loss = cached_backward(model, loss_fn, [q, p, n], (groups, groups), chunk_size)
    assert_same(got_loss, grads(model), want_loss, want)


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_cached_equals_uncached_with_dropout(model_dirs, chunk_size):
    """With dropout on, the reference is the same (length-sorted) chunks encoded with a graph from
    the same random state: the cache's replay must reproduce every dropout mask."""
    model = BiEncoder.from_pretrained(model_dirs[0.1]).train()
    loss_fn = InfoNCELoss(0.05)
    q, p, n = features(model)

    torch.manual_seed(7)
    embeddings = [grouped_forward(model, f, chunk_size) for f in (q, p, n)]
    loss = loss_fn(*embeddings)
    loss.backward()
    want_loss, want, after_reference = loss.detach(), grads(model), torch.get_rng_state()

    torch.manual_seed(7)
    got_loss = cached_backward(model, loss_fn, [q, p, n], (), chunk_size)
    assert_same(got_loss, grads(model), want_loss, want)
    # the replays leave the random stream where one pass would have left it
    assert torch.equal(torch.get_rng_state(), after_reference)

    # and dropout is really on: another seed gives another loss
    torch.manual_seed(8)
    assert not torch.allclose(cached_backward(model, loss_fn, [q, p, n], (), chunk_size), got_loss)


def test_rng_replay_restores_the_stream():
    torch.manual_seed(0)
    state = RngState.capture()
    first = torch.rand(3)
    after = torch.rand(2)
    torch.manual_seed(0)
    torch.rand(3)
    with state.replay():
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.rand(2), after)


def test_chunks_trim_padding_only_on_the_right():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    ids = torch.arange(12).reshape(3, 4) * mask
    parts = split_trimmed({"input_ids": ids, "attention_mask": mask}, 2)
    assert [tuple(p["input_ids"].shape) for p in parts] == [(2, 3), (1, 1)]
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    (part,) = split_trimmed({"input_ids": left, "attention_mask": left}, 2)
    assert part["input_ids"].shape == (2, 3)


def test_length_sorting_groups_short_rows_together():
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    features = {"input_ids": torch.arange(16).reshape(4, 4) * mask, "attention_mask": mask}
    ordered, order = sort_by_length(features)
    assert order.tolist() == [1, 3, 2, 0]
    parts = split_trimmed(ordered, 2)
    assert [tuple(p["input_ids"].shape) for p in parts] == [(2, 4), (2, 2)]
    assert padding_fraction([features]) == pytest.approx(6 / 16)
    assert padding_fraction(parts) == pytest.approx(2 / 12)


@pytest.mark.parametrize("group_size", [1, 3, 8])
def test_grouped_forward_equals_one_padded_forward(model_dirs, group_size):
    """Embeddings and parameter gradients of length-grouped, trimmed sub-batches equal one forward
    over the padded batch (dropout off): trimming removes only compute on padding."""
    model = BiEncoder.from_pretrained(model_dirs[0.0]).train()
    q, p, _ = features(model)
    weights = torch.randn(len(QUERIES) * 2, model.dim, generator=torch.Generator().manual_seed(0))
    whole = torch.cat([model(**q), model(**p)])
    want_loss = (whole * weights).sum()
    want_loss.backward()
    want = grads(model)
    grouped = torch.cat([grouped_forward(model, q, group_size), grouped_forward(model, p, group_size)])
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-6)
    got_loss = (grouped * weights).sum()
    got_loss.backward()
    assert_same(got_loss.detach(), grads(model), want_loss.detach(), want)
