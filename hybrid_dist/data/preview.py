"""What a config trains on: its global batches as plain JSON objects, texts as the tokenizer gets
them (without prefixes). ``python -m hybrid_dist.train --config C --print-batches N`` prints them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

from hybrid_dist.config import Config
from hybrid_dist.data import ParallelCorpus, load_corpus, training_view
from hybrid_dist.data.sampler import GlobalBatch, GlobalBatchSampler


def sampler_for(cfg: Config, corpus: ParallelCorpus) -> GlobalBatchSampler:
    """The sampler ``cfg`` trains with, over ``corpus``."""
    s = cfg.sampler
    return GlobalBatchSampler(corpus, s.batch_size, s.mode, s.alpha, s.smoothing, cfg.train.seed,
                              s.translations_per_group, s.num_negatives)


def build_sampler(cfg: Config) -> tuple[ParallelCorpus, GlobalBatchSampler]:
    """The training corpus and the sampler ``cfg`` trains with."""
    corpus = load_corpus(training_view(cfg.data), "train")
    return corpus, sampler_for(cfg, corpus)


def batch_as_dict(corpus: ParallelCorpus, batch: GlobalBatch) -> dict:
    pairs = []
    for p in batch.pairs:
        passage = corpus.record(p.group, p.passage_lang)
        pairs.append({
            "group_id": corpus.group_ids[p.group], "query_lang": p.query_lang, "passage_lang": p.passage_lang,
            "query": corpus.record(p.group, p.query_lang).query, "passage": passage.positive,
            "negatives": [passage.negatives[i] for i in p.negatives],
        })
    return {"step": batch.step, "mode": batch.mode, "pairs": pairs}


def preview_batches(cfg: Config, steps: int, start: int = 0) -> Iterator[dict]:
    """The global batches of steps ``start .. start + steps - 1``."""
    corpus, sampler = build_sampler(cfg)
    for step in range(start, start + steps):
        yield batch_as_dict(corpus, sampler.batch(step))


def print_batches(cfg: Config, steps: int, out=sys.stdout) -> None:
    for obj in preview_batches(cfg, steps):
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
