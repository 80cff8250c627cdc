"""Checkpoint directories on disk: atomic publication, an integrity manifest, retention, selection.

A checkpoint is written into ``.tmp-step-N``; every file is fsynced, a manifest of file sizes and
SHA-256 checksums is written last, and the directory is renamed to ``step-N``. A crash at any
moment leaves either the complete new checkpoint or none, and the older ones untouched;
``newest_complete`` then ignores the temporary directory and any checkpoint whose files no longer
match their manifest (a missing or truncated file, or one flipped byte).
Only files here: no torch, no Accelerate."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from hybrid_dist.atomic import fsync_path, write_json
from hybrid_dist.training.reliability.collective import ReportedError

PREFIX = "step-"
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"


class CheckpointError(ReportedError):
    pass


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def tmp_dir(root: Path, step: int) -> Path:
    return root / f"{TMP_PREFIX}{PREFIX}{step:08d}"


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


CHUNK = 1 << 22  # 4 MiB reads: checksumming streams, whatever the file size


class ResumeError(CheckpointError):
    """The checkpoint ``train.resume`` names cannot be used: found before training (exit 2)."""


def _names(directory: Path) -> list[str]:
    return [str(p.relative_to(directory)) for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def publish(tmp: Path, final: Path) -> None:
    """Seal ``tmp`` (fsync and checksum every file, write the manifest last) and rename it to
    ``final``. The checksum reads each file once more, right after it was fsynced."""
    files = {}
    for name in _names(tmp):
        fsync_path(tmp / name)
        files[name] = {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
    write_json(tmp / MANIFEST, {"version": 2, "files": files})
    fsync_path(tmp)
    if final.exists():  # the same step written again (a resumed run): the new copy wins
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)


def verify(path: Path, checksums: bool = True) -> str | None:
    """Why ``path`` is not a complete, intact checkpoint, or None when it is. Sizes are checked
    first (cheap); ``checksums`` then reads every file (one pass) against its SHA-256."""
    if not path.is_dir():
        return "not a directory"
    manifest = path / MANIFEST
    if not manifest.exists():
        return f"no {MANIFEST} (its writing never finished)"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return f"unreadable {MANIFEST}"
    if STATE_FILE not in files:
        return f"no {STATE_FILE} in the manifest"
    entries = {name: entry if isinstance(entry, dict) else {"size": entry} for name, entry in files.items()}
    for name, entry in entries.items():
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != entry.get("size"):
            return f"{name} has {actual} bytes, the manifest says {entry.get('size')}"
    if checksums:
        for name, entry in entries.items():
            if "sha256" not in entry:  # written before checksums existed: sizes are all there is
                continue
            try:
                actual = sha256_file(path / name)
            except OSError as e:
                return f"{name} cannot be read ({e.strerror})"
            if actual != entry["sha256"]:
                return f"{name} fails its checksum (sha256 {actual[:12]}..., the manifest says {entry['sha256'][:12]}...)"
    return None


# ---------------------------------------------------------------------- selection and retention


def list_steps(root: Path) -> list[Path]:
    """Published checkpoint directories, oldest first (complete or not: see ``verify``)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def newest_complete(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that passes ``verify``, and the newer ones passed over with why
    (interrupted temporary directories included)."""
    passed_over = [(p, "interrupted while being written") for p in sorted(root.glob(f"{TMP_PREFIX}{PREFIX}*"))]
    for path in reversed(list_steps(root)):
        problem = verify(path)
        if problem is None:
            return path, passed_over
        passed_over.append((path, problem))
    return None, passed_over


def prune(root: Path, keep_last: int, protect: Iterable[Path] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps all) and any leftover
    temporary directory; never a ``protect``ed one (the best checkpoint). Returns what went."""
    protected = {p.resolve() for p in protect}
    steps = list_steps(root)
    doomed = steps[:-keep_last] if keep_last > 0 else []
    doomed = [p for p in doomed if p.resolve() not in protected]
    doomed += sorted(root.glob(f"{TMP_PREFIX}*"))
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ---------------------------------------------------------------------- saved model directories


def recover_dir(final: Path) -> None:
    """Undo a ``BiEncoder.save_pretrained`` cut between its two renames (the old model waits as
    ``.<name>.old``) and drop unfinished temporary copies (``.<name>.tmp-*``)."""
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
