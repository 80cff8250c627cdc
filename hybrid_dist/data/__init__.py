"""Data: canonical records, loaders (SQuAD-format directories, JSONL, HF datasets), the
parallel corpus and the article split."""

from __future__ import annotations

from hybrid_dist.data.bad_records import BadRecords
from hybrid_dist.data.corpus import ParallelCorpus
from hybrid_dist.data.records import DataError, ParallelRecord
from hybrid_dist.data.split import ArticleSplit

__all__ = ["ArticleSplit", "BadRecords", "DataError", "ParallelCorpus", "ParallelRecord", "load_corpus",
           "training_view"]


def training_view(cfg):
    """The ``DataConfig`` training reads: ``languages`` narrowed to ``train_languages`` when a
    language hold-out is set (evaluation keeps ``cfg.languages``)."""
    import dataclasses

    if cfg.train_languages is None:
        return cfg
    return dataclasses.replace(cfg, languages=list(cfg.train_languages))


def load_corpus(cfg, part: str = "train", bad: BadRecords | None = None) -> ParallelCorpus:
    """The records ``cfg`` (a ``DataConfig``) names, restricted to one part of the article split.

    Bad records follow ``cfg.on_bad_record``; pass ``bad`` to read how many were skipped."""
    from hybrid_dist.data.hf import read_hf_dataset
    from hybrid_dist.data.jsonl import read_jsonl
    from hybrid_dist.data.squad import read_squad_articles, records_from_squad

    bad = bad or BadRecords(cfg.on_bad_record)
    order = None  # squad_dir: the directory's article order, the one evaluation splits by too
    if cfg.format == "squad_dir":
        parsed, order = read_squad_articles(cfg.path, cfg.languages, bad, cfg.max_text_chars)
        records = records_from_squad(parsed, cfg.passage_text, cfg.max_hard_negatives)
    elif cfg.format == "jsonl":
        records = read_jsonl(cfg.path, bad, cfg.max_text_chars)
    elif cfg.format == "hf":
        records = read_hf_dataset(cfg.path, cfg.hf_split, cfg.hf_config_name, cfg.hf_columns, bad, cfg.max_text_chars)
    else:
        raise ValueError(f"data.format must be squad_dir, jsonl or hf, got {cfg.format!r}")
    if cfg.languages is not None and cfg.format != "squad_dir":
        records = [r for r in records if r.lang in set(cfg.languages)]
    corpus = ParallelCorpus(records, source=str(cfg.path))
    missing = sorted(set(cfg.languages or []) - set(corpus.languages))
    if missing:
        raise DataError(str(cfg.path), None, "lang", f"no records for language(s) {missing}")
    split = ArticleSplit(cfg.split, cfg.heldout_fraction)
    subset = corpus.subset(split.select(order or corpus.articles(), part), source=f"{cfg.path} ({part} articles)")
    return subset
