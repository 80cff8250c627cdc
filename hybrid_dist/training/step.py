"""One optimizer step over a global batch: each micro-batch (gradient accumulation) is encoded
plainly, in length groups, or through the gradient cache, scored by the loss against the
all-gathered pool, and back-propagated; then one update on every rank, or a skip on every rank
when the loss or gradient is not finite somewhere."""

from __future__ import annotations

import math

import torch

from hybrid_dist.data.batches import MicroBatch
from hybrid_dist.training.gradcache import cached_backward
from hybrid_dist.training.length_groups import grouped_forward


class TrainStep:
    def __init__(self, accelerator, driver, optimizer, scheduler, loss_fn, train_cfg, max_grad_norm: float,
                 guard, faults):
        self.accelerator, self.driver, self.optimizer, self.scheduler = accelerator, driver, optimizer, scheduler
        self.loss_fn, self.train_cfg, self.max_grad_norm = loss_fn, train_cfg, max_grad_norm
        self.guard, self.faults = guard, faults

    def __call__(self, micro_batches: list[MicroBatch], step: int) -> tuple[torch.Tensor, float]:
        """``step``: its 1-based number. Returns the mean loss and the global gradient norm. The data
        position and the learning-rate schedule advance also when the update is skipped."""
        acc, driver = self.accelerator, self.driver
        model = driver.model
        model.train()
        total = torch.zeros((), device=acc.device)
        grad_norm = float("nan")
        loss_ok = True
        for mb in micro_batches:
            with acc.accumulate(model):
                groups = (mb.query_groups.to(acc.device), mb.passage_groups.to(acc.device))
                inputs = [_to(mb.query, acc.device), _to(mb.passage, acc.device),
                          _to(mb.negative, acc.device) if mb.negative is not None else None]

                def loss_fn(q, p, n, *groups):
                    loss = self.loss_fn(q, p, n, *groups)
                    return loss * float("nan") if self.faults.at("nan_loss", step) else loss

                def backward_allowed(loss: torch.Tensor) -> bool:
                    nonlocal loss_ok
                    loss_ok = driver.backward_allowed(loss, loss_ok)
                    return loss_ok

                chunk = self.train_cfg.grad_cache_chunk_size
                if chunk:  # embeddings in no-graph chunks, loss, then chunked re-encoding
                    loss = cached_backward(model, loss_fn, inputs, groups, chunk, backward=driver.backward,
                                           no_sync=driver.no_sync, backward_allowed=backward_allowed)
                else:
                    group = self.train_cfg.length_group_size
                    embeddings = [grouped_forward(model, f, group) if f is not None else None for f in inputs]
                    loss = loss_fn(*embeddings, *groups)
                    if backward_allowed(loss):
                        driver.backward(loss)
                total += loss.detach() / len(micro_batches)
                if acc.sync_gradients:
                    if self.faults.at("inf_grad", step) and driver.gradients_editable:
                        next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = math.inf
                    grad_norm = driver.finish(self.optimizer, total, loss_ok, step, self.guard, self.max_grad_norm)
                    self.scheduler.step()
                driver.zero_grad(self.optimizer)
        return total, grad_norm


def _to(features: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}
