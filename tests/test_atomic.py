"""hybrid_dist.atomic: every write leaves the old file or the whole new one."""

import json
import math
import os

import pytest

from hybrid_dist import atomic


def test_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "table.md"
    atomic.write_text(target, "old\n")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic.write_text(target, "new and half-written\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_a_writer_that_fails_leaves_nothing(tmp_path):
    target = tmp_path / "plot.png"

    def draw(path):
        path.write_bytes(b"partial")
        raise RuntimeError("matplotlib failed")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, draw)
    assert list(tmp_path.iterdir()) == []


def test_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01")
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"\x00\x01"
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_json_clean_writes_strict_json(tmp_path):
    import numpy as np

    path = atomic.write_json(tmp_path / "r.json", {"a": math.nan, "b": [math.inf, 1.5], 3: np.float32(0.5)}, clean=True)
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.5], "3": 0.5}


def test_staged_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with atomic.staged_dir(out) as tmp:
        (tmp / "weights").write_text("v1")
    assert (out / "weights").read_text() == "v1"

    with pytest.raises(RuntimeError):
        with atomic.staged_dir(out) as tmp:
            (tmp / "weights").write_text("v2, half")
            raise RuntimeError("killed mid-save")
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left

    with atomic.staged_dir(out) as tmp:
        (tmp / "other").write_text("v3")
    assert sorted(p.name for p in out.iterdir()) == ["other"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
