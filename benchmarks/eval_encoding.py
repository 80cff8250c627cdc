"""Evaluation encoding: tokens/s of ``BiEncoder.encode`` (texts tokenized once, batches cut by token
count, each padded only to its longest) against a plain forward loop over the same model (batches
in input order, each padded to its longest text), on real benchmark texts.

    python benchmarks/eval_encoding.py --model ~/.cache/hybrid_dist/models/multilingual-e5-small

Texts: MLQA-R sentences and questions of every language (what the zero-shot evaluation encodes
most of) at max length 64, and BEIR SciFact documents at 256, shuffled with a fixed seed. Prints
a Markdown table and checks that both paths give the same embeddings.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def mlqa_texts(n: int) -> list[str]:
    texts = []
    for path in sorted((SHARED / "mlqa-r").glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for a in doc["data"]:
            for p in a["paragraphs"]:
                texts += p["sentences"] + [q["question"] for q in p["qas"]]
    random.Random(0).shuffle(texts)
    return texts[:n]


def scifact_texts(n: int) -> list[str]:
    rows = [json.loads(line) for line in (SHARED / "beir" / "scifact" / "corpus.jsonl").open(encoding="utf-8")]
    texts = [f"{r.get('title', '')} {r['text']}".strip() for r in rows]
    random.Random(0).shuffle(texts)
    return texts[:n]


@torch.no_grad()
def plain(model, texts: list[str], batch_size: int) -> tuple[torch.Tensor, int, int]:
    """The loop a user writes first: input order, each batch tokenized with padding=True."""
    out, real, padded = [], 0, 0
    for i in range(0, len(texts), batch_size):
        features = model.tokenize(texts[i : i + batch_size], "passage")
        real += int(features["attention_mask"].sum())
        padded += features["input_ids"].numel()
        out.append(model(**features))
    return torch.cat(out), real, padded


def measure(model, texts: list[str], length: int, batch_size: int) -> dict:
    model.max_length = model.text_tokenizer.max_length = length
    model.eval()
    plain(model, texts[:batch_size], batch_size)  # warm-up
    t0 = time.perf_counter()
    ref, real, padded = plain(model, texts, batch_size)
    t1 = time.perf_counter()
    emb = model.encode(texts, "passage", batch_size=batch_size)
    t2 = time.perf_counter()
    return {"texts": len(texts), "max_length": length, "tokens": real,
            "plain_s": t1 - t0, "plain_tok_s": real / (t1 - t0), "plain_padding": 1 - real / padded,
            "encode_s": t2 - t1, "encode_tok_s": model.encoded_tokens / (t2 - t1),
            "encode_padding": model.padded_fraction, "max_abs_diff": float((emb - ref).abs().max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--mlqa", type=int, default=3000, help="MLQA-R texts")
    p.add_argument("--scifact", type=int, default=300, help="SciFact documents")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from hybrid_dist.models.biencoder import BiEncoder

    model = BiEncoder.from_pretrained(args.model)
    rows = {"MLQA-R sentences + questions": measure(model, mlqa_texts(args.mlqa), 64, args.batch_size),
            "SciFact documents": measure(model, scifact_texts(args.scifact), 256, args.batch_size)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}\n")
    print("| texts | n | max len | tokens | plain tok/s | plain padding | encode tok/s | encode padding | speed-up "
          "| max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['texts']} | {r['max_length']} | {r['tokens']:,} | {r['plain_tok_s']:,.0f} | "
              f"{r['plain_padding']:.0%} | {r['encode_tok_s']:,.0f} | {r['encode_padding']:.1%} | "
              f"{r['plain_s'] / r['encode_s']:.2f}x | {r['max_abs_diff']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
