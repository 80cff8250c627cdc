"""Turns the sampler's global batches into this rank's tokenized micro-batches.

A map-style dataset indexed by optimizer step: item s is this rank's share of global batch s,
so DataLoader workers can tokenize ahead and resuming at step s needs no replay."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from hybrid_dist.data.corpus import ParallelCorpus
from hybrid_dist.models.biencoder import PrefixTokenizer
from hybrid_dist.data.sampler import GlobalBatchSampler, Pair


@dataclass
class MicroBatch:
    mode: str
    query: dict[str, torch.Tensor]
    passage: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor] | None
    query_groups: torch.Tensor
    passage_groups: torch.Tensor
    batch_digest: str = ""  # identifies the whole global batch (GlobalBatch.digest), for the batch log


class StepDataset(Dataset):
    def __init__(self, corpus: ParallelCorpus, sampler: GlobalBatchSampler, tokenizer: PrefixTokenizer,
                 rank: int, world_size: int, micro_steps: int = 1):
        sampler.micro_pool_size(world_size, micro_steps)  # fail early on an indivisible batch size
        self.corpus, self.sampler, self.tokenizer = corpus, sampler, tokenizer
        self.rank, self.world_size, self.micro_steps = rank, world_size, micro_steps

    def __len__(self) -> int:
        return 2**62  # indexed by step; the trainer's index sampler bounds it

    def __getitem__(self, step: int) -> list[MicroBatch]:
        batch = self.sampler.batch(step)
        micro = [
            self.micro_batch(batch.mode, self.sampler.rank_slice(batch, self.rank, self.world_size, m, self.micro_steps))
            for m in range(self.micro_steps)
        ]
        for mb in micro:
            mb.batch_digest = batch.digest()
        return micro

    def micro_batch(self, mode: str, pairs: tuple[Pair, ...]) -> MicroBatch:
        queries = [self.corpus.record(p.group, p.query_lang).query for p in pairs]
        passage_records = [self.corpus.record(p.group, p.passage_lang) for p in pairs]
        negatives = [r.negatives[i] for p, r in zip(pairs, passage_records) for i in p.negatives]
        groups = torch.tensor([p.group for p in pairs], dtype=torch.long)
        return MicroBatch(
            mode=mode,
            query=self.tokenizer(queries, "query"),
            passage=self.tokenizer([r.positive for r in passage_records], "passage"),
            negative=self.tokenizer(negatives, "passage") if negatives else None,
            query_groups=groups,
            passage_groups=groups.clone(),
        )


def step_loader(dataset: StepDataset, start_step: int, max_steps: int, num_workers: int = 0):
    """Items ``start_step .. max_steps - 1`` in order.

    The loader gets a generator of its own: by default each iterator draws its worker seed from
    the global torch RNG, which would shift every later dropout mask and make a resumed run (one
    more iterator) differ from an uninterrupted one."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start_step, max_steps),
        num_workers=num_workers,
        collate_fn=_as_is,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


def _as_is(item):
    return item
