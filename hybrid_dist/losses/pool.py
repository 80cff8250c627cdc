"""The negative pool both contrastive losses score against: every rank's passages, then every
rank's hard negatives, gathered with gradients."""

from __future__ import annotations

import torch

from hybrid_dist import distributed


def gather_pool(passages: torch.Tensor, negatives: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Returns the pool and the row where this rank's passages begin (the label offset)."""
    pool = distributed.all_gather_with_grad(passages)
    if negatives is not None and negatives.shape[0]:
        pool = torch.cat([pool, distributed.all_gather_with_grad(negatives)])
    return pool, distributed.rank() * passages.shape[0]
