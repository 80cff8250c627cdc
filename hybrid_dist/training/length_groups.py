"""No compute on padding without a special kernel: sort a tokenized batch by length, cut it into
groups, trim each group to its own longest sequence, encode group by group, put the embeddings
back in batch order.

A global batch mixes 10-token questions with 60-token sentences; padded as one tensor, most of
the question rows are padding. Sorted groups are nearly rectangular, so the padding that is
left is a few tokens per row (``padding_fraction`` measures it)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Features = dict[str, torch.Tensor]


def lengths(features: Features) -> torch.Tensor:
    return features["attention_mask"].sum(1)


def padding_fraction(parts: list[Features]) -> float:
    """Share of the encoded positions that are padding."""
    total = sum(p["attention_mask"].numel() for p in parts)
    real = sum(int(p["attention_mask"].sum()) for p in parts)
    return 1.0 - real / total if total else 0.0


def sort_by_length(features: Features) -> tuple[Features, torch.Tensor]:
    """Rows longest first (stable); ``order[i]`` is the original row of sorted row i."""
    order = torch.sort(lengths(features), descending=True, stable=True).indices
    return {k: v[order] for k, v in features.items()}, order


def split_trimmed(features: Features, group_size: int) -> list[Features]:
    """Row slices of ``group_size`` rows, each trimmed to its own longest sequence (right padding;
    a left-padded batch is left as it is)."""
    if group_size < 1:
        raise ValueError(f"group size must be at least 1, got {group_size}")
    rows = features["input_ids"].shape[0]
    out = []
    for start in range(0, rows, group_size):
        part = {k: v[start : start + group_size] for k, v in features.items()}
        mask = part["attention_mask"]
        length = max(int(mask.sum(1).max().item()) if mask.numel() else 0, 1)
        if mask[:, length:].any():  # left padding: nothing to trim at the end
            length = mask.shape[1]
        out.append({k: v[:, :length] if v.dim() == 2 else v for k, v in part.items()})
    return out


def unsort(sorted_rows: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(sorted_rows)
    out[order] = sorted_rows
    return out


def grouped_forward(encode: Callable[..., torch.Tensor], features: Features, group_size: int) -> torch.Tensor:
    """``encode(**features)`` computed over length-sorted, trimmed groups; the same embeddings
    (and gradients) as one padded forward, in the original row order. ``group_size`` 0: one
    forward over the padded batch."""
    if not group_size:
        return encode(**features)
    ordered, order = sort_by_length(features)
    embeddings = torch.cat([encode(**part) for part in split_trimmed(ordered, group_size)])
    return unsort(embeddings, order)
