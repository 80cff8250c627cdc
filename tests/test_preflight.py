"""Output directory checks before training: unwritable or too full is a clear error naming the
path, exit code 2, before any training step. Tests run as root, where permission bits do not stop
writes, so "unwritable" is a path under a regular file, or (where mounting is allowed) a real
read-only file system; "too full" is a real 1 MiB tmpfs, or train.min_free_bytes set beyond the disk.
A disk that fills up later, mid-run, is a real tmpfs filled while the ranks are stopped (SIGSTOP)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cpu_runs import run
from hybrid_dist.training.reliability.preflight import PreflightError, SpaceEstimate, check_free_space, check_writable


def test_estimate_counts_weights_and_two_adamw_states():
    e = SpaceEstimate(parameters=1_000_000, bytes_per_value=4, optimizer_states=2, checkpoint_slots=3, model_copies=2,
                      already_used=1_000_000)
    assert e.checkpoint_bytes == int(12_000_000 * 1.1)
    assert e.needed == 3 * e.checkpoint_bytes - 1_000_000 + 2 * 4_000_000
    assert "1,000,000 parameters x 4 bytes x (weights + 2 optimizer states)" in e.explain()


def test_unwritable_and_full_are_errors_naming_the_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PreflightError, match=rf"train.output_dir {blocker}/out: cannot create it \(a parent is a file"):
        check_writable(blocker / "out")
    e = SpaceEstimate(10, 4, 2, 1, 1)
    assert check_free_space(tmp_path, e) > 0
    with pytest.raises(PreflightError, match=rf"train.output_dir {tmp_path}: .* free, but this run needs about"):
        check_free_space(tmp_path, e, min_free_bytes=2**62)


def _no_run_started(out: Path) -> bool:
    return not (out / "checkpoints").exists() and not (out / "batches.jsonl").exists()


def test_cli_output_dir_under_a_file_exits_2_before_training(tmp_path, xquad_dir):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "run"
    proc = run(1, out, expect=2)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: train.output_dir {out}: cannot create it (a parent is a file, not a directory)")
    assert "Traceback" not in proc.stderr


def test_cli_too_little_space_exits_2_before_training(tmp_path, xquad_dir):
    out = tmp_path / "run"
    proc = run(1, out, "train.min_free_bytes=1000000000000000000", expect=2)  # 1 EB: more than any disk here
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: train.output_dir {out}: ") and "free, but this run needs about" in last
    assert "checkpoints of ~" in last and "+ train.min_free_bytes" in last and "Traceback" not in proc.stderr
    assert _no_run_started(out)


@pytest.fixture
def tmpfs(tmp_path):
    """A real tiny file system (1 MiB), where this machine allows mounting; skipped elsewhere."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_cli_real_small_and_read_only_file_systems(tmpfs, xquad_dir):
    out = tmpfs / "run"
    proc = run(1, out, "train.save_every=2", "train.keep_last=2", expect=2)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: train.output_dir {out}: ") and " KiB free, but this run needs about 2.4 MiB" in last, last
    assert _no_run_started(out)

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    proc = run(1, tmpfs / "other", expect=2)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: train.output_dir {tmpfs / 'other'}: cannot create it (Read-only file system)")


def test_disk_filling_up_mid_run_stops_cleanly(tmpfs, xquad_dir):
    """The disk fills after the checks passed: the checkpoint write fails on a rank, every rank stops
    with one message, the temporary directory goes and the earlier checkpoints stay complete."""
    import os
    import signal
    import time

    from cpu_runs import command, environment, worker_processes
    from hybrid_dist.training.reliability import checkpoints

    subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)
    out = tmpfs / "run"
    proc = subprocess.Popen(command(2, out, "train.max_steps=20", "train.save_every=2", "train.keep_last=1"),
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "batches.jsonl"
    try:  # step 3 logged: checkpoint 2 is complete
        while proc.poll() is None and not (log.exists() and log.read_bytes().count(b"\n") >= 3):
            time.sleep(0.002)
        workers = worker_processes(proc.pid)
        for w in workers:  # hold the ranks still (a stalled node) while the disk fills up
            w.send_signal(signal.SIGSTOP)
        stat = os.statvfs(tmpfs)
        (tmpfs / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 150 * 1024))
        for w in workers:
            w.send_signal(signal.SIGCONT)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output[-3000:]
    error = next(line for line in output.splitlines() if line.startswith("error: writing checkpoint"))
    assert "No space left on device" in error or "write failed" in error, error
    assert error.endswith(f"the earlier checkpoints in {out / 'checkpoints'} are untouched"), error
    assert not list((out / "checkpoints").glob(".tmp-*")) and not (out / "model").exists()
    kept = checkpoints.list_steps(out / "checkpoints")
    assert kept and all(checkpoints.verify(p) is None for p in kept)
