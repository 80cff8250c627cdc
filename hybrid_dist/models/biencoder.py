"""A shared-weight bi-encoder over any Hugging Face encoder, saved in a layout that both
``transformers.AutoModel`` and ``sentence_transformers.SentenceTransformer`` load."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hybrid_dist.atomic import staged_dir

Kind = Literal["query", "passage"]
Pooling = Literal["mean", "cls"]


class PrefixTokenizer:
    """Adds the query/passage prefix and tokenizes; small and picklable, so DataLoader workers
    can tokenize off the training step's hot path."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, query_prefix: str, passage_prefix: str, max_length: int):
        self.tokenizer = tokenizer
        self.prefixes = {"query": query_prefix, "passage": passage_prefix}
        self.max_length = max_length

    def __call__(self, texts: Sequence[str], kind: Kind) -> dict[str, torch.Tensor]:
        prefix = self.prefixes[kind]
        return dict(
            self.tokenizer(
                [prefix + t for t in texts],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )


class BiEncoder(nn.Module):
    """Encodes queries and passages with one encoder; embeddings are pooled and L2-normalised."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pooling: Pooling = "mean",
        normalize: bool = True,
        query_prefix: str = "query: ",
        passage_prefix: str = "passage: ",
        max_length: int = 128,
    ):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by mean/CLS pooling; unused parameters would break DDP
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.prefixes = {"query": query_prefix, "passage": passage_prefix}
        self.max_length = max_length
        self.text_tokenizer = PrefixTokenizer(tokenizer, query_prefix, passage_prefix, max_length)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        max_length: int | None = None,
        **model_kwargs,
    ) -> "BiEncoder":
        """Load a hub id or a local directory. Settings saved with the model (our own layout or
        any sentence-transformers directory) are used unless an argument overrides them."""
        saved = _read_saved_settings(Path(name_or_path)) if Path(name_or_path).is_dir() else {}
        encoder = AutoModel.from_pretrained(str(name_or_path), **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))

        def pick(arg, key, default):
            return arg if arg is not None else saved.get(key, default)

        return cls(
            encoder,
            tokenizer,
            pooling=pick(pooling, "pooling", "mean"),
            normalize=pick(normalize, "normalize", True),
            query_prefix=pick(query_prefix, "query_prefix", "query: "),
            passage_prefix=pick(passage_prefix, "passage_prefix", "passage: "),
            max_length=pick(max_length, "max_length", 128),
        )

    # ------------------------------------------------------------------ encoding
    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def tokenize(self, texts: Sequence[str], kind: Kind) -> dict[str, torch.Tensor]:
        return self.text_tokenizer(texts, kind)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **features) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **features).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if pooled.dtype in (torch.float16, torch.bfloat16):
            pooled = pooled.float()  # the loss and similarities in full precision
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        kind: Kind,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """Embeddings (float32, on CPU) in input order.

        Every text is tokenized once, up front; batches are then cut from the texts sorted by
        token count, each padded only to its own longest text, so almost no compute goes to
        padding (``padded_fraction`` after a call: the share of padding in what was encoded)."""
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        prefix = self.prefixes[kind]
        tokens = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length,
                                padding=False)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        out = torch.empty(len(texts), self.dim)
        real = padded = 0
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=f"encode {kind}", disable=not show_progress, unit="batch"):
            idx = order[start : start + batch_size]
            batch = self._pad([tokens["input_ids"][i] for i in idx])
            real += sum(lengths[i] for i in idx)
            padded += batch["input_ids"].numel()
            features = {k: v.to(self.device) for k, v in batch.items()}
            out[idx] = self(**features).float().cpu()
        self.padded_fraction = 1.0 - real / padded if padded else 0.0
        self.encoded_tokens = real
        self.train(was_training)
        return out

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` (and zero ``token_type_ids`` where the
        model takes them) for token id lists."""
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[j, : len(r)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            batch["token_type_ids"] = torch.zeros_like(ids)
        return batch

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the model atomically: into a temporary sibling directory, renamed when complete,
        so an interrupted save never leaves a half-written model where a good one was.
        ``state_dict``: this module's full weights where they live elsewhere (ZeRO-3 shards)."""
        out = Path(out_dir)
        with staged_dir(out) as tmp:
            encoder = getattr(self.encoder, "module", self.encoder)
            if state_dict is None:
                encoder.save_pretrained(tmp, safe_serialization=True)
            else:
                weights = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
                # the names as in memory: transformers would otherwise "revert" a model loaded under
                # ZeRO-3 to legacy names (LayerNorm.gamma) that AutoModel then fails to match
                encoder.save_pretrained(tmp, safe_serialization=True, state_dict=weights, save_original_format=False)
            self.tokenizer.save_pretrained(tmp)
            _write_sentence_transformers_files(tmp, self)
        return out


def _write_sentence_transformers_files(directory: Path, model: BiEncoder) -> None:
    """The classic sentence-transformers layout (Transformer -> Pooling -> Normalize), which
    sentence-transformers 2.x to 6.x load; prompts carry the query/passage prefixes."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if model.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    pooling_dir = directory / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": model.dim,
        "pooling_mode_cls_token": model.pooling == "cls",
        "pooling_mode_mean_tokens": model.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": {"max_seq_length": model.max_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": {"query": model.prefixes["query"], "passage": model.prefixes["passage"]},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _read_saved_settings(directory: Path) -> dict:
    """Pooling, normalisation, prefixes and max length from a sentence-transformers layout."""
    settings: dict = {}
    pooling_file = directory / "1_Pooling" / "config.json"
    if pooling_file.exists():
        pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
        if pooling.get("pooling_mode_cls_token") or pooling.get("pooling_mode") == "cls":
            settings["pooling"] = "cls"
        else:
            settings["pooling"] = "mean"
    modules_file = directory / "modules.json"
    if modules_file.exists():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        settings["normalize"] = any("Normalize" in m.get("type", "") for m in modules)
    st_config = directory / "config_sentence_transformers.json"
    if st_config.exists():
        prompts = json.loads(st_config.read_text(encoding="utf-8")).get("prompts", {})
        if "query" in prompts:
            settings["query_prefix"] = prompts["query"]
        if "passage" in prompts:
            settings["passage_prefix"] = prompts["passage"]
    sbert = directory / "sentence_bert_config.json"
    if sbert.exists():
        max_len = json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length")
        if max_len:
            settings["max_length"] = int(max_len)
    return settings
