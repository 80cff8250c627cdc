"""Multilingual contrastive loss: every passage in the pool with the query's group id (the
positive and all its translations) is a positive.

``mean`` (default) scores each positive against the negatives alone and averages over the
positives, so every translation is pulled above every negative (what lowers language bias);
``sum`` is multi-positive InfoNCE, -log(sum over positives / sum over pool)."""

from __future__ import annotations

import torch
from torch import nn

from hybrid_dist import distributed
from hybrid_dist.losses.pool import gather_pool


class MultilingualContrastiveLoss(nn.Module):
    def __init__(self, temperature: float = 0.05, aggregation: str = "mean"):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if aggregation not in ("mean", "sum"):
            raise ValueError(f"aggregation must be 'mean' or 'sum', got {aggregation!r}")
        self.temperature = temperature
        self.aggregation = aggregation

    def forward(self, queries: torch.Tensor, passages: torch.Tensor, negatives: torch.Tensor | None = None,
                query_groups: torch.Tensor | None = None, passage_groups: torch.Tensor | None = None) -> torch.Tensor:
        if query_groups is None or passage_groups is None:
            raise ValueError("the multilingual loss needs query_groups and passage_groups")
        pool, _ = gather_pool(passages, negatives)
        pool_groups = distributed.all_gather_no_grad(passage_groups)
        if pool.shape[0] > pool_groups.shape[0]:  # hard negatives never count as positives
            pool_groups = torch.cat([pool_groups, pool_groups.new_full((pool.shape[0] - pool_groups.shape[0],), -1)])
        scores = queries @ pool.T / self.temperature
        positive = query_groups[:, None] == pool_groups[None, :]
        neg_inf = torch.finfo(scores.dtype).min
        if self.aggregation == "sum":
            per_query = torch.logsumexp(scores, 1) - torch.logsumexp(scores.masked_fill(~positive, neg_inf), 1)
            return per_query.mean()
        negatives_lse = torch.logsumexp(scores.masked_fill(positive, neg_inf), 1, keepdim=True)
        per_positive = torch.logaddexp(scores, negatives_lse) - scores  # -log softmax of one positive vs the negatives
        per_query = (per_positive * positive).sum(1) / positive.sum(1)
        return per_query.mean()
