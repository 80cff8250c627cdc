"""Checks before training starts: the output directory can be written, and its disk has room for
the checkpoints the run will keep. Failing here costs seconds; failing at the first checkpoint
costs the steps before it."""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hybrid_dist.training.reliability.collective import ReportedError, collective_check


# checkpoint files hold more than the raw tensors (pickling, RNG and scheduler states): about 3% on
# the tiny test model; 10% keeps the estimate on the safe side
FILE_OVERHEAD = 1.10


class PreflightError(ReportedError):
    pass


def check_writable(path: Path, tag: str = "") -> None:
    """Create ``path`` and write, sync and delete a probe file in it (``tag`` keeps the probes of
    several ranks apart)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"train.output_dir {path}: cannot create it ({_reason(e)})") from None
    probe = path / f".write-probe{tag}-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise PreflightError(f"train.output_dir {path}: not writable ({_reason(e)})") from None


@dataclass(frozen=True)
class SpaceEstimate:
    """What a run writes: ``checkpoint_slots`` checkpoints (weights + optimizer states) and
    ``model_copies`` saved models, less what existing checkpoints already occupy."""

    parameters: int
    bytes_per_value: int
    optimizer_states: int
    checkpoint_slots: int
    model_copies: int
    already_used: int = 0

    @property
    def checkpoint_bytes(self) -> int:
        return int(self.parameters * self.bytes_per_value * (1 + self.optimizer_states) * FILE_OVERHEAD)

    @property
    def needed(self) -> int:
        model = self.parameters * self.bytes_per_value
        return max(0, self.checkpoint_bytes * self.checkpoint_slots - self.already_used) + model * self.model_copies

    def explain(self) -> str:
        return (f"{self.checkpoint_slots} checkpoints of ~{_size(self.checkpoint_bytes)} ({self.parameters:,} parameters "
                f"x {self.bytes_per_value} bytes x (weights + {self.optimizer_states} optimizer states) x "
                f"{FILE_OVERHEAD} file overhead) + {self.model_copies} saved model(s) of ~{_size(self.parameters * self.bytes_per_value)}"
                + (f", less {_size(self.already_used)} of existing checkpoints" if self.already_used else ""))


def check_free_space(path: Path, estimate: SpaceEstimate, min_free_bytes: int = 0) -> int:
    """Raise unless ``path``'s file system can take ``estimate`` and still keep ``min_free_bytes``
    free. Returns the free bytes."""
    free = shutil.disk_usage(path).free
    if free < estimate.needed + min_free_bytes:
        margin = f" + train.min_free_bytes {_size(min_free_bytes)}" if min_free_bytes else ""
        raise PreflightError(
            f"train.output_dir {path}: {_size(free)} free, but this run needs about {_size(estimate.needed)}"
            f"{margin}: {estimate.explain()}. Free space, point train.output_dir elsewhere or lower train.keep_last")
    return free


# ---------------------------------------------------------------------- the recipe's checks


def check_output_dir(accelerator, out: Path) -> None:
    """Every rank writes into the output directory (its RNG state), so every rank checks it."""
    collective_check(accelerator, lambda: check_writable(out, f"-rank{accelerator.process_index}"), error=PreflightError)


def check_room_for_checkpoints(accelerator, cfg, out: Path, model) -> None:
    """Room for the checkpoints and models ``cfg`` will keep, checked by the main process before
    any training step (and before DDP wraps the model)."""

    def check() -> None:
        t = cfg.train
        params = list(model.parameters())
        saves = t.max_steps // t.save_every + 1 if t.save_every else 1
        best = 1 if cfg.eval.every_steps else 0
        estimate = SpaceEstimate(
            # ds_numel: a parameter ZeRO-3 already partitioned at load time holds an empty placeholder
            parameters=sum(getattr(p, "ds_numel", p.numel()) for p in params),
            bytes_per_value=max(p.element_size() for p in params),
            optimizer_states=2,  # AdamW: exp_avg and exp_avg_sq
            # keep_last plus the one being written before the oldest goes, and the best
            checkpoint_slots=(min(t.keep_last + 1, saves) if t.keep_last else saves) + best,
            model_copies=1 + best, already_used=directory_bytes(out / "checkpoints"))
        free = check_free_space(out, estimate, t.min_free_bytes)
        print(f"output: {out}: {free / 2**30:,.1f} GiB free; needs about {estimate.needed / 2**20:,.1f} MiB "
              f"({estimate.explain()})", flush=True)

    collective_check(accelerator, check, main_only=True, error=PreflightError)


def check_evaluation_data(cfg, train_group_ids=None) -> None:
    """Held-out evaluation reads data.path strictly (data.on_bad_record does not apply to it):
    with skipped records, a file it would reject must stop the run now, not at the first
    evaluation hours later. With ``train_group_ids`` (the training corpus' question ids): the
    held-out questions must be none of them, or the held-out numbers measure memorised data."""
    e = cfg.eval
    check_overlap = train_group_ids is not None and e.part == "heldout"
    if cfg.data.format != "squad_dir" or not (e.before_training or e.after_training or e.every_steps):
        return
    if cfg.data.on_bad_record != "skip" and not check_overlap:
        return
    from hybrid_dist.data import DataError
    from hybrid_dist.data.split import ArticleSplit
    from hybrid_dist.evaluation.lareqa import heldout_overlap, load_lareqa

    try:  # memoised: the evaluation itself reuses this parse
        bench = load_lareqa(cfg.data.path, cfg.data.languages, ArticleSplit(cfg.data.split, cfg.data.heldout_fraction),
                            e.part)
    except DataError as err:
        raise DataError(err.source, err.where, err.field_name,
                        f"{err.problem} (held-out evaluation reads the data strictly: fix it, or turn evaluation off "
                        "with eval.before_training=false eval.after_training=false eval.every_steps=0)") from None
    if not check_overlap:
        return
    overlap = heldout_overlap(train_group_ids, bench)
    if overlap:
        held = len({q for lang in bench.languages.values() for q in lang.qids})
        shown = ", ".join(sorted(overlap)[:3])
        raise DataError(str(cfg.data.path), None, "data.split",
                        f"{len(overlap)} of {held} held-out questions are also training questions (e.g. {shown}): "
                        "training and evaluation disagree on which article a question belongs to; the held-out "
                        "numbers would measure memorised questions")


def check_benchmarks(cfg) -> None:
    """Every ``eval.benchmarks`` path is there before training starts (not at the first
    evaluation, after hours of training)."""
    e = cfg.eval
    if not e.benchmarks or not (e.before_training or e.after_training or e.every_steps):
        return
    from hybrid_dist.evaluation.suite import benchmark_problems

    problems = benchmark_problems(e.benchmarks)
    if problems:
        raise problems[0]


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOTDIR:
        return "a parent is a file, not a directory"
    return e.strerror or str(e)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError
