"""InfoNCE over the global pool: each query's positive is its own passage; every other passage
and hard negative on every rank is a negative."""

from __future__ import annotations

import torch
from torch import nn

from hybrid_dist.losses.pool import gather_pool


class InfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, queries: torch.Tensor, passages: torch.Tensor, negatives: torch.Tensor | None = None,
                query_groups: torch.Tensor | None = None, passage_groups: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss over this rank's queries (embeddings [b, d]; negatives [b * n, d])."""
        pool, offset = gather_pool(passages, negatives)
        scores = queries @ pool.T / self.temperature
        labels = torch.arange(queries.shape[0], device=queries.device) + offset
        return nn.functional.cross_entropy(scores, labels)
