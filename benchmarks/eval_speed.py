"""Evaluation speed: encoding throughput, and the time to score all XQuAD-R settings (11 mono +
110 cross + 11 multilingual-pool) from cached embeddings.

    python benchmarks/eval_speed.py                       # tiny random model, small sizes (CPU)
    python benchmarks/eval_speed.py --model ~/.cache/hybrid_dist/models/multilingual-e5-small \
        --encode-texts 2000 --part all

Without ``--model`` a randomly initialised 2-layer BERT (hidden 32) is used: its throughput only
measures the harness; pass a real model for real numbers. Without XQuAD-R (``--data``, default
``<repo>/../shared/data/xquad-r``) the benchmark is synthetic with the same sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybrid_dist.evaluation import DenseIndex, build_lareqa, load_lareqa, score_lareqa  # noqa: E402
from hybrid_dist.evaluation.encode import model_fingerprint, texts_hash  # noqa: E402
from hybrid_dist.evaluation.lareqa import encode_benchmark  # noqa: E402
from hybrid_dist.evaluation.search import faiss_or_none  # noqa: E402


def synthetic_benchmark(n_lang=11, n_q=1190, n_s=1200, seed=0):
    from hybrid_dist.data.squad import SquadArticle, SquadParagraph, SquadQuestion

    rng = np.random.default_rng(seed)
    parsed = {}
    for li in range(n_lang):
        lang = f"l{li:02d}"
        sentences = tuple(f"{lang} sentence {i} " + "word " * int(rng.integers(5, 30)) for i in range(n_s))
        qs = tuple(SquadQuestion(f"q{q}", f"{lang} question {q}?", 0, "x", (int(rng.integers(n_s)),)) for q in range(n_q))
        parsed[lang] = [SquadArticle("A", (SquadParagraph(" ".join(sentences), sentences, qs),))]
    return build_lareqa(parsed, name="synthetic")


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: tiny random BERT)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "xquad-r")
    p.add_argument("--part", default="all", choices=("all", "heldout"))
    p.add_argument("--encode-texts", type=int, default=512, help="texts per kind for the throughput test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="embedding cache to reuse (default: a fresh temporary directory, so the benchmark is encoded)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if (args.data / "en.json").exists():
        bench = load_lareqa(args.data, part=args.part)
    else:
        print(f"(XQuAD-R not found at {args.data}: synthetic benchmark of the same size)")
        bench = synthetic_benchmark()
    langs = bench.langs
    questions = [t for lang in langs for t in bench.languages[lang].questions]
    candidates = [t for lang in langs for t in bench.languages[lang].sentences]

    if args.model:
        from hybrid_dist.models.biencoder import BiEncoder

        model = BiEncoder.from_pretrained(args.model)
        name = Path(args.model).name
    else:
        from hybrid_dist.models.biencoder import BiEncoder
        from hybrid_dist.models.scratch import scratch_bert

        rng = np.random.default_rng(0)
        texts = [candidates[i] for i in rng.choice(len(candidates), size=min(3000, len(candidates)), replace=False)]
        encoder, tokenizer = scratch_bert(texts, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                          vocab_size=2000, max_length=64, seed=0, tokenizer="wordpiece",
                                          max_position_embeddings=128)
        model = BiEncoder(encoder, tokenizer, max_length=64)
        name = "tiny random BERT (hidden 32, 2 layers)"
    model.eval()

    rows = []
    rng = np.random.default_rng(1)
    for kind, pool in (("query", questions), ("passage", candidates)):
        texts = [pool[i] for i in rng.choice(len(pool), size=min(args.encode_texts, len(pool)), replace=False)]
        model.encode(texts[: args.batch_size], kind=kind, batch_size=args.batch_size)  # warm-up
        t = min(timed(lambda t=texts, k=kind: model.encode(t, kind=k, batch_size=args.batch_size),
                      max(1, args.repeat - 1)))
        rows.append((f"encode {kind} ({len(texts)} texts, batch {args.batch_size})", t, f"{len(texts) / t:,.0f} texts/s"))

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        fp = model_fingerprint(model)
        hit = all((Path(cache) / fp / f"{kind}-{texts_hash(texts)}.npy").exists()
                  for kind, texts in (("query", questions), ("passage", candidates)))
        t0 = time.perf_counter()
        q, c = encode_benchmark(model, bench, cache_dir=cache, fingerprint=fp)
        encode_all = time.perf_counter() - t0
        what = "load cached" if hit else "encode"
        rows.append((f"{what} benchmark ({len(questions)} questions + {len(candidates)} candidates)", encode_all,
                     f"{(len(questions) + len(candidates)) / encode_all:,.0f} texts/s"))

        def load_and_score():
            qq, cc = encode_benchmark(model, bench, cache_dir=cache, fingerprint=fp)  # cache hit: reads .npy
            return score_lareqa(bench, qq, cc)

        times = timed(load_and_score, args.repeat)
        result = load_and_score()
        rows.append((f"score all settings from cache ({result.n_settings} X->Y + {len(langs)} multi)",
                     statistics.median(times), f"pool {result.counts['pool']:,}"))
        times = timed(lambda: score_lareqa(bench, q, c), args.repeat)
        rows.append(("  of which scoring (in memory)", statistics.median(times),
                     f"{statistics.median(times) / (result.n_settings + len(langs)) * 1000:.1f} ms/setting"))

    pool = np.concatenate([c[lang] for lang in langs])
    allq = np.concatenate([q[lang] for lang in langs])
    for kind in ("flat", "torch") if faiss_or_none() else ("torch",):
        index = DenseIndex(pool, kind, device="cpu")
        times = timed(lambda i=index: i.search(allq, 100), args.repeat)
        rows.append((f"top-100 search, {kind} ({len(allq):,} queries x {len(pool):,})", statistics.median(times),
                     f"{len(allq) / statistics.median(times):,.0f} queries/s"))

    print(f"model: {name}; torch threads: {torch.get_num_threads()}; benchmark: {bench.name} ({bench.part})")
    print()
    width = max(len(r[0]) for r in rows)
    print(f"| {'step':<{width}} | {'seconds':>8} | rate |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|------|")
    for what, seconds, rate in rows:
        print(f"| {what:<{width}} | {seconds:8.3f} | {rate} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
