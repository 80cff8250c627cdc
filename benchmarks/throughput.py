"""Training throughput: hybrid_dist's trainer step against sentence-transformers'
MultipleNegativesRankingLoss and CachedMultipleNegativesRankingLoss, in one run, on the same
device, the same XQuAD-R question/answer-sentence batches and the same random-init encoder.

    python benchmarks/throughput.py --preset gpu        # XLM-R base and large shapes, batch 512 / 4096
    python benchmarks/throughput.py --preset cpu-toy    # a 2-layer, 64-wide encoder: exercises the harness

Encoders are XLM-RoBERTa-shaped (``--shape base|large|toy``), randomly initialised from a config
(no download), with the offline multilingual-e5-small tokenizer (XLM-R's 250k vocabulary).
Both systems get the same pre-tokenized pairs (tokenization runs in DataLoader workers in
training, so it is off the measured path for both) and AdamW; on a GPU both run under bf16
autocast. Reported per row: pairs/s, real (non-padding) tokens/s, MFU = 6 x non-embedding
parameters x tokens/s / peak (the peak is a bf16 matmul measured on this device, float32 on
CPU), peak memory (CUDA allocator peak; on CPU the process's peak RSS so far, which only grows),
and padding share of the encoded positions. A configuration that runs out of memory is a row
saying so. Results: a Markdown table on stdout and JSON (``--out``)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from hybrid_dist import atomic  # noqa: E402 - after the path insert

SHAPES = {  # XLM-RoBERTa base / large, multilingual-e5-small's shape, and a toy for CPU
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "e5-small": dict(hidden_size=384, num_layers=12, num_heads=12, intermediate_size=1536),
    "toy": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
}
XLMR_VOCAB = 250_002  # XLM-RoBERTa's vocabulary (multilingual-e5's tokenizer)
# (system, global batch, gradient-cache chunk) rows per preset
PRESETS = {
    "gpu": dict(shapes=["base", "large"], batch=512, cached_batch=4096, chunk=256, steps=10, warmup=3),
    "cpu-toy": dict(shapes=["toy"], batch=32, cached_batch=128, chunk=32, steps=3, warmup=1),
}
SYSTEMS = ("hybrid_dist", "hybrid_dist cached", "ST MNRL", "ST cached MNRL")


@dataclass
class Row:
    shape: str
    system: str
    batch: int
    chunk: int
    pairs_per_s: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    padding: float | None = None
    step_s: float | None = None
    note: str = ""
    # the raw measurements the rates above are computed from
    steps: int | None = None  # timed steps (after the warm-up)
    elapsed_s: float | None = None  # wall time of the timed steps
    tokens: int | None = None  # real (non-padding) tokens, queries and passages, over the timed steps
    positions: int | None = None  # encoded positions (tokens + padding) over the timed steps
    non_embedding_params: int | None = None  # the encoder's parameters outside its embeddings


# ---------------------------------------------------------------------- set-up


def build_model_dir(shape: str, out: Path, max_length: int) -> tuple[Path, int]:
    """A random-init XLM-R-shaped encoder with the e5 tokenizer, saved in the layout both systems
    load; returns the directory and the non-embedding parameter count."""
    from transformers import AutoTokenizer

    from hybrid_dist.models import import_e5
    from hybrid_dist.models.biencoder import BiEncoder
    from hybrid_dist.models.scratch import random_encoder

    tokenizer = AutoTokenizer.from_pretrained(import_e5.ensure_e5_checkpoint())
    # the full XLM-R table even when the tokenizer is a vocabulary-pruned one (the device bundle):
    # the rows it lacks are never looked up, but they are trained and stepped like the real model's
    encoder = random_encoder(tokenizer, architecture="xlm-roberta", vocab_size=max(len(tokenizer), XLMR_VOCAB),
                             max_position_embeddings=514, type_vocab_size=1, seed=0, **SHAPES[shape])
    non_embedding = sum(p.numel() for n, p in encoder.named_parameters() if not n.startswith("embeddings."))
    BiEncoder(encoder, tokenizer, max_length=max_length).save_pretrained(out)
    return out, non_embedding


def _default_attention() -> str:
    import importlib.util

    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def measured_peak_flops(device: torch.device) -> float:
    """Dense matmul FLOP/s this device reaches: bf16 on a GPU, float32 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    repeat = 50 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    _sync(device)
    return 2 * n**3 * repeat / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---------------------------------------------------------------------- the two systems


def hybrid_dist_trainer(model_dir: Path, batch: int, chunk: int, group: int, data: Path, out: Path,
                        max_length: int, attn: str):
    from hybrid_dist.config import load_config
    from hybrid_dist.training.trainer import Trainer

    cfg = load_config(None, [
        f"model.name_or_path={model_dir}", f"model.max_length={max_length}", f"data.path={data}", f"sampler.batch_size={batch}",
        "sampler.mode=hybrid", f"train.output_dir={out}", "train.max_steps=1000000", "train.save_every=0",
        "train.progress_bar=false", "train.log_batches=false", "eval.before_training=false",
        "eval.after_training=false", f"train.grad_cache_chunk_size={chunk}", f"train.length_group_size={group}",
        "train.preemption_signals=[]", "data.num_workers=0", f"model.attn_implementation={attn}",
    ])
    return Trainer(cfg).setup()  # built, not trained: the benchmark calls train_step itself


def tokenized_steps(model_dir: Path, batch: int, args) -> list:
    """The batches hybrid_dist's trainer draws (same sampler, seed 0), tokenized, one process."""
    from hybrid_dist.data.batches import StepDataset
    from hybrid_dist.config import load_config
    from hybrid_dist.data import load_corpus
    from hybrid_dist.models.biencoder import PrefixTokenizer
    from hybrid_dist.data.sampler import GlobalBatchSampler

    cfg = load_config(None, [f"data.path={args.data}", f"sampler.batch_size={batch}", "sampler.mode=hybrid"])
    corpus = load_corpus(cfg.data, "train")
    sampler = GlobalBatchSampler(corpus, batch, "hybrid", cfg.sampler.alpha, cfg.sampler.smoothing, cfg.train.seed)
    from transformers import AutoTokenizer

    tokenizer = PrefixTokenizer(AutoTokenizer.from_pretrained(model_dir), cfg.model.query_prefix,
                                cfg.model.passage_prefix, args.max_length)
    dataset = StepDataset(corpus, sampler, tokenizer, 0, 1)
    return [dataset[s] for s in range(args.warmup + args.steps)]


def sentence_transformers_step(model_dir: Path, cached: bool, chunk: int, device: torch.device, attn: str):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss)

    model = SentenceTransformer(str(model_dir), device=str(device), model_kwargs={"attn_implementation": attn})
    model.train()
    # scale 20 = temperature 0.05, cosine similarity: the same loss as hybrid_dist's InfoNCE
    loss = (CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=chunk) if cached
            else MultipleNegativesRankingLoss(model, scale=20.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def step(query: dict, passage: dict) -> None:
        features = [{k: v.to(device) for k, v in query.items()}, {k: v.to(device) for k, v in passage.items()}]
        with autocast():
            value = loss(features, None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ---------------------------------------------------------------------- measuring


def measure(shape: str, system: str, batch: int, chunk: int, args, model_dir: Path, non_embedding: int,
            peak: float, device: torch.device) -> Row:
    row = Row(shape, system, batch, chunk if "cached" in system else 0)
    _reset_memory(device)
    trainer = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cached = "cached" in system
            if system.startswith("hybrid"):
                trainer = hybrid_dist_trainer(model_dir, batch, chunk if cached else 0, args.length_group, args.data,
                                              Path(tmp) / "run", args.max_length, args.attn)
                steps = [trainer.dataset[s] for s in range(args.warmup + args.steps)]  # tokenized ahead, as in workers

                def run(micro_batches, i):
                    trainer.train_step(micro_batches, i + 1)
            else:
                steps = tokenized_steps(model_dir, batch, args)
                st_step = sentence_transformers_step(model_dir, cached, chunk, device, args.attn)

                def run(micro_batches, i):
                    mb = micro_batches[0]
                    st_step(mb.query, mb.passage)
            for i in range(args.warmup):
                run(steps[i], i)
            _sync(device)
            start = time.perf_counter()
            for i in range(args.warmup, args.warmup + args.steps):
                run(steps[i], i)
            _sync(device)
            elapsed = time.perf_counter() - start
            timed = steps[args.warmup:]
            tokens = sum(int(mb.query["attention_mask"].sum() + mb.passage["attention_mask"].sum())
                         for s in timed for mb in s)
            positions = sum(mb.query["attention_mask"].numel() + mb.passage["attention_mask"].numel()
                            for s in timed for mb in s)
            row.steps, row.elapsed_s, row.tokens, row.positions = args.steps, elapsed, tokens, positions
            row.non_embedding_params = non_embedding
            row.step_s = elapsed / args.steps
            row.pairs_per_s = batch * args.steps / elapsed
            row.tokens_per_s = tokens / elapsed
            row.mfu = 6 * non_embedding * row.tokens_per_s / peak
            row.peak_memory_gib = _peak_memory_gib(device)
            # what the padded batch would have spent on padding; hybrid_dist's grouping trims most of it
            row.padding = 1 - tokens / positions
    except torch.cuda.OutOfMemoryError:
        row.note = "out of memory"
    finally:
        if trainer is not None:
            trainer.close()
        _reset_memory(device)
    return row


def markdown(rows: list[Row], info: dict) -> str:
    lines = [f"{info['date']}, {info['device']}, torch {info['torch']}, peak {info['peak_tflops']:.1f} TFLOP/s "
             f"({info['peak_dtype']} matmul, measured), attention {info['attention']} for both systems", "",
             "| shape | system | global batch | chunk | pairs/s | tokens/s | MFU | peak memory (GiB) | step (s) "
             "| padding in batch | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        lines.append(f"| {r.shape} | {r.system} | {r.batch} | {r.chunk or '-'} | {f(r.pairs_per_s, ',.1f')} | "
                     f"{f(r.tokens_per_s, ',.0f')} | {f(r.mfu, '.1%')} | {f(r.peak_memory_gib, '.2f')} | "
                     f"{f(r.step_s, '.3f')} | {f(r.padding, '.0%')} | {r.note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu-toy")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="override the preset's shapes")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--batch", type=int, help="global batch of the uncached rows")
    p.add_argument("--cached-batch", type=int, help="global batch of the gradient-cached rows")
    p.add_argument("--chunk", type=int, help="gradient-cache chunk (texts per forward)")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--length-group", type=int, default=64, help="hybrid_dist train.length_group_size (0: off)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--attn", choices=("sdpa", "eager", "flash_attention_2"), default=_default_attention(),
                   help="attention kernel for both systems (default: flash_attention_2 where flash-attn and CUDA are)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "xquad-r")
    p.add_argument("--out", type=Path, help="write the rows and device info as JSON here")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("batch", "cached_batch", "chunk", "steps", "warmup"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = measured_peak_flops(device)
    info = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "peak_tflops": peak / 1e12,
            "attention": args.attn,
            "peak_dtype": "bf16" if device.type == "cuda" else "float32",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "command": " ".join(["python", "benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes or preset["shapes"]:
            model_dir, non_embedding = build_model_dir(shape, Path(tmp) / shape, args.max_length)
            for system in args.systems:
                batch = args.cached_batch if "cached" in system else args.batch
                row = measure(shape, system, batch, args.chunk, args, model_dir, non_embedding, peak, device)
                print(f"{shape:6s} {system:18s} batch {batch:5d}: "
                      f"{row.note or f'{row.pairs_per_s:,.1f} pairs/s, MFU {row.mfu:.1%}'}", flush=True)
                rows.append(row)
    table = markdown(rows, info)
    print(table)
    if args.out:
        atomic.write_json(args.out, {"info": info, "rows": [asdict(r) for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
