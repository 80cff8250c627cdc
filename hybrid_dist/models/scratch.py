"""Randomly initialised encoders built from a config (no download): the one builder behind the
trainer's no-download fallback, the tests' tiny models and the benchmarks' random-init encoders.

* :func:`train_tokenizer`: a fast tokenizer trained offline on some texts (byte-level BPE, or
  BERT-style WordPiece).
* :func:`random_encoder`: a BERT or XLM-RoBERTa encoder (no pooling layer) of the given sizes,
  initialised from a seed, sized for a tokenizer.
* :func:`scratch_bert`: both at once, in memory: ``(BertModel, tokenizer)``.
* :func:`build_scratch_encoder`: the trainer's fallback, written as an ordinary Hugging Face model
  directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (BertConfig, BertModel, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast,
                          XLMRobertaConfig, XLMRobertaModel)

from hybrid_dist.atomic import staged_dir, write_json

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TokenizerKind = Literal["bpe", "wordpiece"]
ARCHITECTURES = {"bert": (BertConfig, BertModel), "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel)}


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int | None = None,
                    kind: TokenizerKind = "bpe") -> PreTrainedTokenizerFast:
    """A BERT-style fast tokenizer ([CLS] text [SEP]) trained on ``texts``. ``bpe``: byte-level
    BPE, which handles scripts written without spaces (Thai, Chinese) without [UNK]; ``wordpiece``:
    lower-cased WordPiece. ``max_length``: the tokenizer's ``model_max_length`` (None: unset)."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        raise ValueError(f"tokenizer kind must be 'bpe' or 'wordpiece', got {kind!r}")
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    limit = {} if max_length is None else {"model_max_length": max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", **limit,
    )


def random_encoder(tokenizer: PreTrainedTokenizerBase, *, hidden_size: int, num_layers: int, num_heads: int,
                   intermediate_size: int, seed: int = 0, max_position_embeddings: int = 512,
                   dropout: float | None = None, vocab_size: int | None = None,
                   architecture: Literal["bert", "xlm-roberta"] = "bert", **config) -> PreTrainedModel:
    """A randomly initialised encoder without pooling layer, ``torch.manual_seed(seed)`` right
    before the weights are drawn. ``vocab_size``: embedding rows (default: the tokenizer's
    length); ``dropout``: hidden and attention dropout (None: the config class's default);
    ``config``: further config fields (e.g. ``type_vocab_size``)."""
    config_cls, model_cls = ARCHITECTURES[architecture]
    if dropout is not None:
        config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cfg = config_cls(
        vocab_size=vocab_size if vocab_size is not None else len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    torch.manual_seed(seed)
    return model_cls(cfg, add_pooling_layer=False)


def scratch_bert(texts: Iterable[str], *, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                 vocab_size: int, max_length: int, seed: int = 0, dropout: float | None = None,
                 tokenizer: TokenizerKind = "bpe",
                 max_position_embeddings: int | None = None) -> tuple[BertModel, PreTrainedTokenizerFast]:
    """In memory: a tokenizer trained on ``texts`` (``vocab_size`` pieces at most, ``max_length``
    tokens) and a randomly initialised BertModel for it (``max_position_embeddings`` default:
    max(512, max_length))."""
    tok = train_tokenizer(texts, vocab_size, max_length, kind=tokenizer)
    model = random_encoder(tok, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                           intermediate_size=intermediate_size, seed=seed, dropout=dropout,
                           max_position_embeddings=max_position_embeddings or max(512, max_length))
    return model, tok


def build_scratch_encoder(scratch_cfg, texts: Iterable[str], max_length: int, seed: int, out_dir: str | Path) -> Path:
    """Write tokenizer (byte-level BPE) + randomly initialised BertModel of ``scratch_cfg``'s sizes
    (a ``ScratchEncoderConfig``) to ``out_dir`` (atomically); return it."""
    out = Path(out_dir)
    model, tokenizer = scratch_bert(
        texts, hidden_size=scratch_cfg.hidden_size, num_layers=scratch_cfg.num_layers,
        num_heads=scratch_cfg.num_heads, intermediate_size=scratch_cfg.intermediate_size,
        vocab_size=scratch_cfg.vocab_size, max_length=max_length, seed=seed, dropout=scratch_cfg.dropout,
    )
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / RECIPE_FILE, scratch_recipe(scratch_cfg, max_length, seed))
    return out


RECIPE_FILE = "scratch_recipe.json"


def scratch_recipe(scratch_cfg, max_length: int, seed: int) -> dict:
    """What a scratch encoder was built from: a directory built from another recipe is another model."""
    from dataclasses import asdict

    return {**asdict(scratch_cfg), "max_length": max_length, "seed": seed}
