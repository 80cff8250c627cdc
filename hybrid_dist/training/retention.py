"""Erosion guard: AdamW whose every step also pulls each weight toward its initial value.

    w <- w - lr * retention_weight * (w - w_init)      then the usual AdamW update

This is L2-SP (Li et al., 2018: an L2 penalty toward the pretrained weights instead of toward
zero) applied the way AdamW applies weight decay (decoupled from the adaptive gradient step, as
Loshchilov & Hutter argue for decay): a weight the training data pushes on consistently still
moves, one it says little about drifts back to where pretraining put it. It follows the
learning-rate schedule, like AdamW's decay. With Adam's normalised steps of about ``lr`` per
coordinate, a weight settles within about ``1 / retention_weight`` of its initial value, so useful
weights for a few hundred steps at lr 3e-5 are in the hundreds to thousands.

Why in the optimizer and not as a loss term or an embedding-distillation term:

* the initial weights are *optimizer state* (``state[p]["retention_anchor"]``), captured at the
  first step from the very tensors the optimizer updates: under DDP the full weights, under
  DeepSpeed ZeRO-2/3 each rank's fp32 partition (so the copy is sharded like Adam's moments, and
  nothing ever has to gather a ZeRO-3 parameter outside the forward pass);
* every checkpoint already holds the optimizer state (``accelerator.save_state``; DeepSpeed's
  per-partition optimizer files), so a resume restores the anchors bit for bit;
* gradients are untouched: gradient accumulation, the gradient cache, clipping and the
  non-finite guard see exactly what they saw without it, and a skipped (non-finite) step skips
  the pull too;
* no second model and no second forward pass (distillation against a frozen copy would cost a
  frozen model per rank and a forward per text, and only protects the languages in the batch).
"""

from __future__ import annotations

import torch

ANCHOR = "retention_anchor"


class RetentionAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` plus the pull toward the weights of the first step (see module doc).

    ``retention_weight`` is every group's default (a group may set its own ``"retention_weight"``)."""

    def __init__(self, params, retention_weight: float = 0.0, **kwargs):
        if not retention_weight >= 0:
            raise ValueError(f"retention_weight must be >= 0, got {retention_weight}")
        super().__init__(params, **kwargs)
        self.retention_weight = float(retention_weight)
        for group in self.param_groups:
            group.setdefault("retention_weight", self.retention_weight)

    @torch.no_grad()
    def step(self, closure=None):
        fresh = {}
        for group in self.param_groups:
            weight = float(group.get("retention_weight", self.retention_weight))
            lr = float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                anchor = state.get(ANCHOR)
                if anchor is None:
                    if state:  # AdamW has stepped this weight before, without an anchor
                        raise RuntimeError(
                            "optim.retention_weight: the optimizer state (a checkpoint made with "
                            "optim.retention_weight=0?) holds no initial weights to pull toward; retention cannot "
                            "be switched on at a resume")
                    fresh[p] = p.detach().clone()  # the weights before any update: w_init
                    continue  # w == w_init: the pull is zero at the first step
                if weight and lr:
                    p.add_(p - anchor, alpha=-lr * weight)
        loss = super().step(closure)
        for p, anchor in fresh.items():
            self.state[p][ANCHOR] = anchor
        return loss


def retention_distance(optimizer) -> float:
    """Euclidean distance of this rank's weights (or ZeRO partition) from their anchors: 0 before
    the first step. For logs and tests."""
    total = 0.0
    for group in optimizer.param_groups:
        for p in group["params"]:
            anchor = optimizer.state.get(p, {}).get(ANCHOR)
            if anchor is not None:
                total += float(((p.detach().float() - anchor.float()) ** 2).sum())
    return total ** 0.5
