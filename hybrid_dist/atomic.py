"""Files and directories that appear whole or not at all.

Everything the product writes for later (checkpoints, models, results, reports, plots, caches) goes
through here: written to a hidden sibling, flushed, then renamed over the target, so a reader or a
crash sees the old version or the complete new one, never a partial write."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk (a rename is durable only after the
    directory holding it is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp_path)`` creates the file (a library that wants a path: matplotlib, np.save);
    the temporary keeps ``path``'s suffix, which such libraries read the format from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """``write(f)`` fills an open binary file."""

    def to_path(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return write_with(path, to_path)


def write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    return write_stream(path, lambda f: f.write(payload))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def json_clean(obj):
    """NaN and infinity -> None (JSON has neither); keys as strings; numpy scalars as Python's."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return json_clean(obj.item())
    return obj


def write_json(path: str | os.PathLike, obj, indent: int = 2, clean: bool = False) -> Path:
    """``clean``: NaN/inf become null (strict JSON for other tools); otherwise Python's JSON."""
    if clean:
        text = json.dumps(json_clean(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    else:
        text = json.dumps(obj, indent=indent, ensure_ascii=False)
    return write_text(path, text + "\n")


def replace_dir(staged: Path, final: Path) -> None:
    """Move a finished directory over ``final``; an existing ``final`` is moved aside first and
    deleted only once the new one is in place."""
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(final)
    fsync_path(final.parent)


@contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """``with staged_dir(out) as tmp:`` fill ``tmp``; on success it replaces ``out``, on an error
    it is deleted and ``out`` is untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
