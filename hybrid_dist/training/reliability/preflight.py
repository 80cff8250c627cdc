"""Checks before training starts: the output directory can be written, and its disk has room for
the checkpoints the run will keep. Failing here costs seconds; failing at the first checkpoint
costs the steps before it."""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


# checkpoint files hold more than the raw tensors (pickling, RNG and scheduler states): about 3% on
# the tiny test model; 10% keeps the estimate on the safe side
FILE_OVERHEAD = 1.10


class PreflightError(RuntimeError):
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
