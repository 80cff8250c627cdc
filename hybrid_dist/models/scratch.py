"""The no-download encoder: a small BERT from a config, with a byte-level BPE tokenizer trained
on the training text, written as an ordinary Hugging Face model directory."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from hybrid_dist.atomic import staged_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE handles scripts written without spaces (Thai, Chinese) without [UNK]."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
    )


def build_scratch_encoder(scratch_cfg, texts: Iterable[str], max_length: int, seed: int, out_dir: str | Path) -> Path:
    """Write tokenizer + randomly initialised BertModel to ``out_dir`` (atomically); return it."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, scratch_cfg.vocab_size, max_length)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=scratch_cfg.hidden_size,
        num_hidden_layers=scratch_cfg.num_layers,
        num_attention_heads=scratch_cfg.num_heads,
        intermediate_size=scratch_cfg.intermediate_size,
        max_position_embeddings=max(512, max_length),
        hidden_dropout_prob=scratch_cfg.dropout,
        attention_probs_dropout_prob=scratch_cfg.dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=False)
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
