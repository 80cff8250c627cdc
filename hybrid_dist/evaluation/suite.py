"""The extra benchmarks of ``eval.benchmarks``: each evaluated at its own maximum length, its
numbers returned as ``<name>/<metric>`` with its cost (``<name>/eval_s``) beside them."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from hybrid_dist.data.records import DataError
from hybrid_dist.data.split import ArticleSplit


@contextlib.contextmanager
def max_length(model, length: int):
    """Encode with ``length`` tokens per text (0: unchanged) for the duration of the block."""
    tok = getattr(model, "text_tokenizer", None)
    old = getattr(model, "max_length", None), getattr(tok, "max_length", None)
    if length:
        model.max_length = length
        if tok is not None:
            tok.max_length = length
    try:
        yield model
    finally:
        if length:
            model.max_length = old[0]
            if tok is not None:
                tok.max_length = old[1]


def benchmark_problems(benchmarks) -> list[DataError]:
    """What is missing on disk for each benchmark, before any training (every problem names the
    config key and the path)."""
    from hybrid_dist.data.squad import language_files

    problems = []
    for i, b in enumerate(benchmarks):
        key = f"eval.benchmarks[{i}].path"
        path = Path(b.path)
        if b.kind == "lareqa":
            try:
                language_files(path, b.languages)
            except DataError as e:
                problems.append(DataError(e.source, None, key, e.problem))
        elif b.kind == "beir":
            need = [path / "corpus.jsonl", path / "queries.jsonl", path / "qrels" / f"{b.split}.tsv"]
            missing = [str(p) for p in need if not p.is_file() and not Path(f"{p}.gz").is_file()]
            if missing:
                problems.append(DataError(str(path), None, key, f"not a BEIR dataset: missing {', '.join(missing)}"))
        elif not path.is_dir():
            problems.append(DataError(str(path), None, key, "not a directory"))
    return problems


def evaluate_benchmark(model, bench, split: ArticleSplit, batch_size: int, candidate_context: bool = False,
                       shard_across_ranks: bool = False, show_progress: bool = False) -> dict[str, float]:
    """One ``eval.benchmarks`` entry: ``{"<name>/<metric>": value, "<name>/eval_s": seconds,
    "<name>/max_length": tokens}``."""
    from hybrid_dist.evaluation.ir import evaluate_ir, load_beir, load_msmarco
    from hybrid_dist.evaluation.lareqa import evaluate_lareqa, load_lareqa

    started = time.perf_counter()
    size = bench.batch_size or batch_size
    with max_length(model, bench.max_length):
        if bench.kind == "lareqa":
            data = load_lareqa(bench.path, bench.languages, split if bench.part != "all" else None, bench.part,
                               name=bench.name)
            summary = evaluate_lareqa(model, data, candidate_context, size, show_progress,
                                      shard_across_ranks=shard_across_ranks).summary
        else:
            data = load_beir(bench.path, bench.split, bench.name) if bench.kind == "beir" else load_msmarco(
                bench.path, bench.name)
            summary = evaluate_ir(model, data, size, show_progress, device="cpu" if _on_cpu(model) else "auto",
                                  shard_across_ranks=shard_across_ranks).summary
        length = getattr(model, "max_length", 0)
    out = {f"{bench.name}/{k}": v for k, v in summary.items()}
    out[f"{bench.name}/eval_s"] = time.perf_counter() - started
    out[f"{bench.name}/max_length"] = float(length or 0)
    return out


def _on_cpu(model) -> bool:
    device = getattr(model, "device", None)
    return device is None or getattr(device, "type", "cpu") == "cpu"
