"""The training recipe: data -> sampler -> model -> loss -> optimizer, under Accelerate.

``Trainer(cfg).fit()`` = ``setup()`` then ``train()``; it runs on CPU, one GPU or many nodes, and
Accelerate supplies the backend (DDP, DeepSpeed ZeRO-2/3 or FSDP through a launcher config). Where
to change what:

- a batch mode: hybrid_dist/data/sampler.py       - a loss: hybrid_dist/losses/
- a backend: hybrid_dist/training/backends.py     - a metric: hybrid_dist/evaluation/metrics.py
- the step (accumulation, gradient cache): hybrid_dist/training/step.py
- a checkpoint rule: hybrid_dist/training/reliability/checkpointing.py (and checkpoints.py)"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from accelerate.utils import set_seed

from hybrid_dist import atomic
from hybrid_dist.config import Config, save_config, to_dict
from hybrid_dist.data.batches import MicroBatch, StepDataset, step_loader
from hybrid_dist.data.preview import sampler_for
from hybrid_dist.losses import build_loss
from hybrid_dist.training import backends, components
from hybrid_dist.training.progress import TrainingLog
from hybrid_dist.training.reliability import preflight
from hybrid_dist.training.reliability.checkpointing import Checkpointer, choose_resume
from hybrid_dist.training.reliability.faults import Faults
from hybrid_dist.training.reliability.nonfinite import NonFiniteGuard
from hybrid_dist.training.reliability.preemption import PreemptionWatcher
from hybrid_dist.training.step import TrainStep


class Trainer:
    def __init__(self, cfg: Config, callbacks: list | None = None):
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        # objects with any of on_evaluate(trainer, summary) and on_checkpoint(trainer, path),
        # called on every rank: how Ray Tune or a scheduler observes training without a fork of it
        self.callbacks = list(callbacks or [])
        self.step = 0
        self.results: dict[str, dict[str, float]] = {}
        # language hold-out (data.train_languages): each evaluation's seen/unseen cells, by the
        # same labels as results (evaluation/holdout.py)
        self.language_groups: dict[str, dict] = {}
        self.last_evaluation = None  # the newest held-out LareqaResult (the X->Y matrix, not only the summary)
        self.preempted = False
        self.resume_from: Path | None = None  # chosen in setup, loaded at the start of train
        self.accelerator = self.model = self.optimizer = self.driver = self.preemption = self.log = None
        self._closed = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> Trainer:
        """Build every component; every check that can fail before training runs here, before
        the run writes anything but its probe files."""
        cfg = self.cfg
        acc = self.accelerator = backends.accelerator_for(cfg.train, self.out)
        set_seed(cfg.train.seed)
        self.faults = Faults(acc.process_index)
        preflight.check_output_dir(acc, self.out)
        self.resume_from = choose_resume(acc, cfg, self.out)  # before anything is written
        self.corpus = self._load_corpus()
        preflight.check_evaluation_data(cfg, self.corpus.group_ids)
        preflight.check_benchmarks(cfg)
        self.sampler = sampler_for(cfg, self.corpus)
        self.sampler.micro_pool_size(acc.num_processes, cfg.train.gradient_accumulation_steps)
        model = components.apply_training_options(self._load_pretrained(self._model_source()), cfg)
        # loading may draw random numbers (transformers initialises weights the checkpoint lacks);
        # training's streams (dropout) start from the seed however the model was obtained
        set_seed(cfg.train.seed)
        preflight.check_room_for_checkpoints(acc, cfg, self.out, model)  # before DDP exists (see close)
        if acc.is_main_process:
            save_config(cfg, self.out / "config.yaml")
        self.dataset = StepDataset(self.corpus, self.sampler, model.text_tokenizer, acc.process_index,
                                   acc.num_processes, cfg.train.gradient_accumulation_steps)
        rows = self.sampler.micro_pool_size(acc.num_processes, cfg.train.gradient_accumulation_steps)
        self.model, self.optimizer, self.driver = backends.prepare(
            acc, model, components.optimizer_for(model, cfg.optim), cfg.optim.max_grad_norm, rows // acc.num_processes)
        self.scheduler = components.scheduler_for(self.optimizer, cfg)
        acc.register_for_checkpointing(self.scheduler)
        self.checkpointer = Checkpointer(acc, cfg, self.out, self.faults,
                                         on_saved=lambda path: self._callback("on_checkpoint", path))
        self.checkpointer.recover_outputs()
        self.checkpointer.attach(self.model, self.optimizer, self.sampler, self.driver)
        self.guard = NonFiniteGuard(acc, cfg.train.max_bad_steps)
        self.train_step_fn = TrainStep(acc, self.driver, self.optimizer, self.scheduler, build_loss(cfg.loss),
                                       cfg.train, cfg.optim.max_grad_norm, self.guard, self.faults)
        signals = cfg.train.preemption_signals
        self.preemption = PreemptionWatcher(signals) if signals else None
        return self

    # hooks a subclass may replace (an in-process study shares the corpus and the loaded weights)
    def _load_corpus(self):
        return components.training_corpus(self.cfg, self.accelerator.print)

    def _model_source(self) -> str | Path:
        return components.model_source(self.cfg, self.accelerator, self.out, self.corpus, self.accelerator.print)

    def _load_pretrained(self, source: str | Path):
        """The model as loaded, before training options apply."""
        return components.load_pretrained(self.cfg.model, source, self.accelerator.print)

    # ------------------------------------------------------------------ training
    def fit(self) -> dict[str, dict[str, float]]:
        if self.accelerator is None:
            self.setup()
        try:
            return self.train()
        except BaseException:
            self.close()  # an error must also free DDP before the process group (see close)
            raise

    def train(self) -> dict[str, dict[str, float]]:
        cfg, acc = self.cfg, self.accelerator
        self.resume()
        self.log = TrainingLog(acc, cfg, self.out, self.step)
        if cfg.eval.before_training and self.step == 0:
            self._evaluate_as("step 0 (before training)")
        started = time.time()
        for micro_batches in step_loader(self.dataset, self.step, cfg.train.max_steps, cfg.data.num_workers):
            self.faults.hang_if("hang", self.step + 1)
            loss, grad_norm = self.train_step(micro_batches, self.step + 1)
            self.step += 1
            self.log.step(self.step, micro_batches, loss, self.scheduler, grad_norm)
            if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 and self.step < cfg.train.max_steps:
                summary = self._evaluate_as(f"step {self.step}")
                self._callback("on_evaluate", summary)
                self.checkpointer.keep_if_best(self.step, summary)
            saved = bool(cfg.train.save_every and self.step % cfg.train.save_every == 0)
            if saved:
                self.save_checkpoint()
            if self.preemption is not None and self.preemption.should_stop() and self.step < cfg.train.max_steps:
                if not saved:
                    self.save_checkpoint()
                self.preemption.record(acc, self.out, self.step)
                self.preempted = True
                break
        self.log.close()
        if not self.preempted:
            self._finish(time.time() - started)
        self.close()
        return self.results

    def _finish(self, elapsed: float) -> None:
        """The final checkpoint and model, the evaluation after training, results.json."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.train.save_final and self.step and (not cfg.train.save_every or self.step % cfg.train.save_every):
            self.save_checkpoint()
        if cfg.train.save_final:
            self.checkpointer.save_model(self.out / "model")
        acc.print(f"trained to step {self.step} in {elapsed:.1f}s"
                  + (f"; model saved to {self.out / 'model'}" if cfg.train.save_final else " (train.save_final=false: "
                     "no final checkpoint or model)"))
        if cfg.eval.after_training:
            summary = self._evaluate_as(f"step {self.step} (fine-tuned)")
            self._callback("on_evaluate", summary)
        if acc.is_main_process and self.results:
            doc = {"config": to_dict(cfg), "results": self.results}
            if self.language_groups:
                doc["language_groups"] = self.language_groups
            atomic.write_json(self.out / "results.json", doc)

    def train_step(self, micro_batches: list[MicroBatch], step: int | None = None):
        """One optimizer step (``step``: its 1-based number): ``(loss, grad norm)``."""
        return self.train_step_fn(micro_batches, self.step + 1 if step is None else step)

    def _evaluate_as(self, label: str) -> dict[str, float]:
        summary = self.results[label] = self.evaluate()
        if self.last_evaluation is not None and self.last_evaluation.groups:
            self.language_groups[label] = self.last_evaluation.groups
        return summary

    def evaluate(self) -> dict[str, float]:
        """Held-out LAReQA evaluation, then every ``eval.benchmarks`` entry; a collective call:
        each rank encodes a shard of the texts, every rank scores the gathered embeddings (about a
        second), the main process logs."""
        cfg, acc = self.cfg, self.accelerator
        from hybrid_dist.data.split import ArticleSplit

        split = ArticleSplit(cfg.data.split, cfg.data.heldout_fraction)
        model = acc.unwrap_model(self.model)
        # ZeRO-3's forwards are collective: every rank must encode the same batches
        shard = acc.num_processes > 1 and not self.driver.forward_is_collective
        show = cfg.train.progress_bar and acc.is_main_process
        summary: dict[str, float] = {}
        if cfg.data.format != "squad_dir":
            if not cfg.eval.benchmarks:
                acc.print("evaluation skipped: the built-in held-out evaluation needs data.format=squad_dir")
                return {}
        else:
            from hybrid_dist.evaluation import evaluate_xquad_r

            result = evaluate_xquad_r(
                model, cfg.data.path, split=split, part=cfg.eval.part, languages=cfg.data.languages,
                candidate_context=cfg.eval.candidate_context, batch_size=cfg.eval.batch_size, show_progress=show,
                shard_across_ranks=shard, seen_languages=cfg.data.train_languages,
            )
            self.last_evaluation = result
            summary.update(result.summary)
            if result.groups:  # a language hold-out: the seen/unseen cells as flat keys too
                from hybrid_dist.evaluation.holdout import flat_cells

                summary.update(flat_cells(result.groups))
            acc.print(f"evaluated {Path(cfg.data.path).name} ({cfg.eval.part}) in {result.timings['total_s']:.0f}s "
                      f"at max length {getattr(model, 'max_length', '?')}")
        if cfg.eval.benchmarks:
            from hybrid_dist.evaluation.suite import evaluate_benchmark

            for bench in cfg.eval.benchmarks:
                numbers = evaluate_benchmark(model, bench, split, cfg.eval.batch_size, cfg.eval.candidate_context,
                                             shard, show)
                summary.update(numbers)
                acc.print(f"evaluated {bench.name} in {numbers[f'{bench.name}/eval_s']:.0f}s at max length "
                          f"{numbers[f'{bench.name}/max_length']:.0f}")
        acc.log({f"eval/{k}": v for k, v in summary.items()}, step=self.step)
        return summary

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        return self.checkpointer.save(self.step)

    def resume(self) -> None:
        self.step = self.checkpointer.resume(self.resume_from)

    def save_model(self, path: Path) -> None:
        self.checkpointer.save_model(path)

    def _callback(self, event: str, *args) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self, *args)

    def close(self) -> None:
        """Release the wrapped model before the process group: a DDP Reducer that drops the last
        reference to a gloo group destroys it while holding the GIL, which can deadlock at exit."""
        if self._closed or self.accelerator is None:
            return
        self._closed = True
        if self.log is not None:
            self.log.close()
        self.model = self.optimizer = self.driver = self.train_step_fn = None
        if getattr(self, "checkpointer", None) is not None:
            self.checkpointer.attach(None, None, None, None)
        if self.preemption is not None:
            self.preemption.close()
        self.accelerator.free_memory()
        gc.collect()
        self.accelerator.end_training()
