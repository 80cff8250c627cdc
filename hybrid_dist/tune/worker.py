"""What each Ray Train worker of a trial runs: the same ``Trainer`` as ``hybrid_dist.train``, with
a callback that turns its held-out evaluations into ``ray.train.report`` calls and attaches its
checkpoints, and resumes from the Ray checkpoint when the run is restored."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from hybrid_dist.training.reliability import checkpoints
from hybrid_dist.tune.spec import config_from_dict

FAULT_MARKER = "injected-failure.done"
RESTORE_LOG = "restored-from.txt"  # one line per restore: the Ray checkpoint it resumed from


class InjectedFailure(RuntimeError):
    """Raised once by ``failure.inject_worker_failure_at_step`` to exercise Ray's restore path."""


class RayReportCallback:
    """One ``ray.train.report`` per held-out evaluation, so ASHA sees one result per evaluation.

    The trainer evaluates, then (same step) writes a checkpoint: the evaluation is held until that
    checkpoint exists and is reported with it. The evaluation after training follows the last
    checkpoint and is reported at once. Every rank reports (Ray Train's reports are a barrier);
    only rank 0 attaches the directory, which on one node already holds every rank's files."""

    def __init__(self, fail_at_step: int = 0, marker: Path | None = None):
        self.pending: dict | None = None
        self.last_checkpoint: tuple[int, Path] | None = None
        self.fail_at_step, self.marker = fail_at_step, marker
        self.reports = 0

    def on_evaluate(self, trainer, summary: dict) -> None:
        if self.pending is not None:  # an evaluation no checkpoint followed: report it as it is
            self._report(trainer, self.pending, None)
        metrics = {**summary, "step": trainer.step}
        if trainer.step >= trainer.cfg.train.max_steps:
            last = self.last_checkpoint
            self._report(trainer, metrics, last[1] if last and last[0] == trainer.step else None)
        else:
            self.pending = metrics

    def on_checkpoint(self, trainer, path: Path) -> None:
        if self.pending is not None and self.pending["step"] == trainer.step:
            self._report(trainer, self.pending, path)
        self.last_checkpoint = (trainer.step, Path(path))
        self._maybe_fail(trainer)

    def _report(self, trainer, metrics: dict, checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = None
        if checkpoint_dir is not None and trainer.accelerator.is_main_process:
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(
            {k: float(v) for k, v in metrics.items()}, checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint-step-{metrics['step']:08d}" if checkpoint_dir else None,
            delete_local_checkpoint_after_upload=False,  # the trainer prunes its own (train.keep_last)
            checkpoint_upload_fn=_local_storage_upload() if checkpoint is not None else None,
        )
        self.pending = None
        self.reports += 1

    def _maybe_fail(self, trainer) -> None:
        if not self.fail_at_step or trainer.step != self.fail_at_step or self.marker is None:
            return
        if self.marker.exists():
            return
        if trainer.accelerator.is_main_process:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"failed once at step {trainer.step}\n")
            raise InjectedFailure(f"injected worker failure after the checkpoint at step {trainer.step}")


def publish_directory(source: Path, destination: Path) -> Path:
    """Copy ``source`` to ``destination`` so that ``destination`` is either absent or complete: the
    copy goes to a hidden sibling that is renamed at the end. A worker killed mid-copy (an ASHA
    stop lands while the next checkpoint uploads) leaves only ``.<name>.partial``."""
    destination = Path(destination)
    partial = destination.with_name(f".{destination.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(source, partial, copy_function=shutil.copy2)
    checkpoints.publish(partial, destination)  # the trainer's own seal-and-rename
    return destination


def _local_storage_upload():
    """Ray's default upload copies file by file into the final directory, so a killed worker can
    leave a checkpoint directory without its trainer state. On local or shared-filesystem storage
    the upload goes through ``publish_directory`` instead; cloud storage keeps Ray's upload."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    if storage.storage_filesystem.type_name != "local":
        return None

    def upload(checkpoint, checkpoint_dir_name: str):
        destination = Path(storage.experiment_fs_path) / checkpoint_dir_name
        publish_directory(Path(checkpoint.path), destination)
        return ray.train.Checkpoint(path=str(destination), filesystem=storage.storage_filesystem)

    return upload


def train_loop_per_worker(loop_config: dict) -> None:
    """``loop_config``: ``config`` (the trial's training config as a dict), ``work_dir``,
    ``fail_at_step``, ``fault_marker``. Ray Train has already set up torch.distributed (gloo on CPU, NCCL on GPU)
    and RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR, which Accelerate picks up."""
    import ray.train
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from hybrid_dist.training.trainer import Trainer

    cfg = config_from_dict(loop_config["config"])
    work = Path(loop_config["work_dir"])
    cfg.train.output_dir = str(work / "output")
    # one injected failure per search (the marker is shared by its trials)
    callback = RayReportCallback(int(loop_config.get("fail_at_step") or 0), Path(loop_config["fault_marker"]))
    checkpoint = ray.train.get_checkpoint()
    # a restored run (worker-group restart, or a restarted trial) continues from its last Ray checkpoint
    restored = checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(None)
    with restored as path:
        if path is not None:
            cfg.train.resume = os.fspath(path)
            if ray.train.get_context().get_world_rank() == 0:
                work.mkdir(parents=True, exist_ok=True)
                with open(work / RESTORE_LOG, "a", encoding="utf-8") as f:
                    f.write(f"{checkpoint.path}\n")
        trainer = Trainer(cfg, callbacks=[callback])
        trainer.fit()  # closes the trainer: DDP is freed before the process group goes away
