"""The recipe's one entry for what it keeps on disk: checkpoints (written in four collective
phases and sealed), resuming from them, the final model and the best model.

A checkpoint holds the model, optimizer, scheduler, every rank's RNG states (python, numpy, torch,
CUDA), the step and sampler position, and the config. It is written to ``.tmp-step-N``, sealed
with a manifest and renamed (``checkpoints.publish``): a crash never leaves a partial checkpoint
and never touches the previous ones. A checkpoint with non-finite weights is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate.utils import broadcast_object_list

from hybrid_dist import atomic
from hybrid_dist.config import resume_changes, to_dict
from hybrid_dist.training.reliability import checkpoints as ckpt
from hybrid_dist.training.reliability import rng
from hybrid_dist.training.reliability.checkpoints import CheckpointError, ResumeError
from hybrid_dist.training.reliability.collective import collective_check
from hybrid_dist.training.reliability.nonfinite import TrainingDiverged, nonfinite_tensors

BEST_FILE = "best_metric.json"
DAMAGED_PREFIX = "damaged-"


def choose_resume(accelerator, cfg, out: Path) -> Path | None:
    """The checkpoint this run continues from (None: a fresh start), decided by the main process
    before the run writes anything, the same on every rank. Raises ``ResumeError`` (exit 2) for an
    explicit ``train.resume`` that fails verification, a config that changes what is trained, or a
    fresh run into an output_dir that holds another run's checkpoints."""
    chosen: list[str | None] = [None]

    def choose() -> None:
        path = _checkpoint_to_resume(accelerator, cfg, out / "checkpoints")
        if path is not None:
            state = json.loads((path / ckpt.STATE_FILE).read_text())
            free, refusal = resume_changes(state.get("config", {}), cfg)
            free = [c for c in free if c[0] != "train.resume"]
            if refusal:
                raise ResumeError(f"train.resume: {path.name}: {refusal}")
            if free:
                print("resume: changed since the checkpoint: "
                      + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in free), flush=True)
        chosen[0] = None if path is None else str(path)

    collective_check(accelerator, choose, main_only=True, error=ResumeError)
    found = broadcast_object_list(chosen)[0]
    return None if found is None else Path(found)


def _checkpoint_to_resume(accelerator, cfg, root: Path) -> Path | None:
    choice = cfg.train.resume
    if not choice:
        earlier = ckpt.list_steps(root)
        if earlier:
            raise ResumeError(f"train.output_dir={cfg.train.output_dir} holds checkpoints of an earlier run "
                              f"({earlier[0].name} .. {earlier[-1].name}): continue it with train.resume=auto, or "
                              "start this run in another train.output_dir")
        return None
    if choice != "auto":
        path = Path(choice)
        problem = ckpt.verify(path)
        if problem:
            raise ResumeError(f"train.resume={choice}: not an intact checkpoint: {problem}")
        return path
    path, passed_over = ckpt.newest_complete(root)
    for skipped, why in passed_over:
        if skipped.name.startswith(ckpt.PREFIX):  # keep the evidence, out of every later choice
            aside = skipped.with_name(DAMAGED_PREFIX + skipped.name)
            shutil.rmtree(aside, ignore_errors=True)
            skipped.rename(aside)
            print(f"resume: passing over {skipped.name}: {why}; moved to {aside.name} (delete it once inspected)",
                  flush=True)
        else:
            print(f"resume: passing over {skipped.name}: {why}", flush=True)
    if path is None:
        print(f"resume=auto: no intact checkpoint in {root}; starting at step 0", flush=True)
    return path


class Checkpointer:
    def __init__(self, accelerator, cfg, out: Path, faults, on_saved=None):
        self.accelerator, self.cfg, self.out, self.faults = accelerator, cfg, out, faults
        self.on_saved = on_saved  # called with the path of each newly written checkpoint
        self.root = out / "checkpoints"
        self.saved_step: int | None = None
        self.model = self.optimizer = self.sampler = self.driver = None

    def attach(self, model, optimizer, sampler, driver) -> None:
        """What a checkpoint holds: the prepared model and optimizer, the sampler's position."""
        self.model, self.optimizer, self.sampler, self.driver = model, optimizer, sampler, driver

    def recover_outputs(self) -> None:
        """Finish or undo a model save that a crash interrupted (main process)."""
        if self.accelerator.is_main_process:
            for name in ("model", "best"):
                ckpt.recover_dir(self.out / name)

    # ------------------------------------------------------------------ writing
    def save(self, step: int) -> Path:
        acc = self.accelerator
        final, tmp = ckpt.step_dir(self.root, step), ckpt.tmp_dir(self.root, step)
        if self.saved_step == step:
            return final

        def refuse_nonfinite() -> None:
            bad = nonfinite_tensors(acc.unwrap_model(self.model), self.optimizer)
            if bad:
                raise TrainingDiverged(f"step {step}: refusing to write a checkpoint with non-finite values "
                                       f"in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")

        def prepare() -> None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

        def write() -> None:
            acc.save_state(str(tmp))
            self.faults.hang_if("hang_in_checkpoint", step)
            if acc.is_main_process:
                self.sampler.step = step
                state = {"step": step, "sampler": self.sampler.state_dict(), "world_size": acc.num_processes,
                         "config": to_dict(self.cfg)}
                atomic.write_json(tmp / ckpt.STATE_FILE, state)

        def seal() -> None:
            ckpt.publish(tmp, final)
            # the checkpoint just sealed is the newest that verifies (its checksums were just read):
            # pruning keeps it even where older-looking steps (left from before a resume) outnumber it
            keep = [final] + [p for p in [self.best_checkpoint()] if p is not None]
            ckpt.prune(self.root, self.cfg.train.keep_last, keep)

        collective_check(acc, refuse_nonfinite, error=TrainingDiverged)
        try:
            collective_check(acc, prepare, main_only=True, error=CheckpointError)
            collective_check(acc, write, error=CheckpointError)
            collective_check(acc, seal, main_only=True, error=CheckpointError)
        except CheckpointError as e:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"writing checkpoint {final} failed: {e}; the earlier checkpoints in {self.root} "
                                  "are untouched") from None
        self.saved_step = step
        if self.on_saved is not None:
            self.on_saved(final)
        return final

    def save_model(self, path: Path, main_only: bool = False, state_dict: dict | None = None) -> None:
        """The model as a Hugging Face / sentence-transformers directory (written atomically).
        ``main_only``: called on the main process alone, with ``state_dict`` from
        ``driver.full_state_dict()`` (collective) where the backend shards the weights."""
        acc = self.accelerator
        if not main_only:
            acc.wait_for_everyone()
            state_dict = self.driver.full_state_dict()
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(path, state_dict=state_dict)
        if not main_only:
            acc.wait_for_everyone()

    # ------------------------------------------------------------------ the best model
    def best_checkpoint(self) -> Path | None:
        try:
            step = int(json.loads((self.out / "best" / BEST_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return ckpt.step_dir(self.root, step)

    def keep_if_best(self, step: int, summary: dict[str, float]) -> None:
        """On a new best ``eval.metric``, write a checkpoint (which keep_last pruning never deletes
        while it is the best) and the model to ``<output_dir>/best``, whose best_metric.json names its step."""
        from hybrid_dist.evaluation import is_better

        metric, acc = self.cfg.eval.metric, self.accelerator
        if metric not in summary:
            raise KeyError(f"eval.metric {metric!r} is not among the evaluation metrics {sorted(summary)}")
        best_file = self.out / "best" / BEST_FILE
        better = None
        if acc.is_main_process:
            best = json.loads(best_file.read_text())["value"] if best_file.exists() else None
            better = is_better(metric, summary[metric], best)
        if not broadcast_object_list([better])[0]:  # saving is collective: every rank must agree
            return
        final = self.save(step)
        state_dict = self.driver.full_state_dict()  # collective under ZeRO-3
        if acc.is_main_process:
            self.save_model(self.out / "best", main_only=True, state_dict=state_dict)
            atomic.write_json(best_file, {"metric": metric, "value": summary[metric], "step": step,
                                          "checkpoint": str(final)})

    # ------------------------------------------------------------------ resuming
    def resume(self, path: Path | None) -> int:
        """Load ``path`` (from ``choose_resume``); the step to continue from (0: nothing to resume)."""
        acc = self.accelerator
        if path is None:
            return 0
        state = json.loads((path / ckpt.STATE_FILE).read_text())
        try:
            self.sampler.load_state_dict(state["sampler"])
        except ValueError as e:  # the same corpus is part of the batch sequence
            raise ResumeError(f"train.resume: {path.name}: {e}") from None
        acc.load_state(str(path))
        step = int(state["step"])
        rng.restore(path, acc.process_index, self.cfg.train.seed, step)
        saved_world = state.get("world_size")
        if saved_world not in (None, acc.num_processes):
            acc.print(f"resume: the checkpoint was written by {saved_world} processes and this run has "
                      f"{acc.num_processes}: the global batches continue unchanged, per-rank random streams "
                      "(dropout) cannot")
        self.saved_step = step  # already on disk
        acc.print(f"resumed from {path} at step {step}")
        return step
