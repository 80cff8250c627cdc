"""A run never resumes from garbage and never trains something other than what its config says:
checksummed checkpoints, config changes on resume, mistakes found before anything is written, and
the exit codes a scheduler acts on (2: fix the input, 75: preempted, requeue), with real files,
real processes and real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cpu_runs import REPO, command, environment, free_port, run, weights
from hybrid_dist.training.reliability import checkpoints as ckpt


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("error", "config error"))]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------- 1. checksums


def test_a_flipped_byte_is_passed_over_and_the_older_checkpoint_resumes(tmp_path):
    out = tmp_path / "run"
    args = ("train.max_steps=10", "train.save_every=4", "train.keep_last=3")
    run(1, out, *args)
    uninterrupted = weights(out / "model")
    flip_byte(ckpt.step_dir(out / "checkpoints", 10) / "model.safetensors")  # same size: sizes alone miss it

    proc = run(1, out, *args, "train.resume=auto")
    assert "passing over step-00000010: model.safetensors fails its checksum" in proc.stdout
    assert f"resumed from {ckpt.step_dir(out / 'checkpoints', 8)} at step 8" in proc.stdout
    # the damaged copy is kept aside for inspection, out of every later choice and of pruning
    aside = out / "checkpoints" / "damaged-step-00000010"
    assert aside.is_dir() and ckpt.verify(aside).startswith("model.safetensors fails its checksum")
    assert [p.name for p in ckpt.list_steps(out / "checkpoints")] == ["step-00000004", "step-00000008",
                                                                      "step-00000010"]
    for path in ckpt.list_steps(out / "checkpoints"):
        assert ckpt.verify(path) is None
    # resumed from step 8's intact state: the run ends where the uninterrupted one did
    for name, value in uninterrupted.items():
        torch.testing.assert_close(weights(out / "model")[name], value, rtol=0, atol=1e-6)

    proc = run(1, tmp_path / "explicit", f"train.resume={aside}", expect=2)
    line = one_line_error(proc)
    assert f"train.resume={aside}" in line and "model.safetensors fails its checksum" in line
    assert not (tmp_path / "explicit" / "config.yaml").exists()


def test_pruning_keeps_the_checkpoint_just_sealed_among_stale_newer_steps(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (4, 8, 12):  # 8 and 12: left from before a resume at 4
        tmp = ckpt.tmp_dir(root, step)
        tmp.mkdir(parents=True)
        (tmp / ckpt.STATE_FILE).write_text("{}")
        ckpt.publish(tmp, ckpt.step_dir(root, step))
    tmp = ckpt.tmp_dir(root, 6)
    tmp.mkdir()
    (tmp / ckpt.STATE_FILE).write_text("{}")
    ckpt.publish(tmp, ckpt.step_dir(root, 6))
    ckpt.prune(root, keep_last=1, protect=[ckpt.step_dir(root, 6)])
    assert [p.name for p in ckpt.list_steps(root)] == ["step-00000006", "step-00000012"]


# ---------------------------------------------------------------------- 2. config changes on resume


def test_a_changed_scratch_model_is_refused_on_resume_and_a_fresh_run_cannot_overwrite(tmp_path):
    out = tmp_path / "run"
    run(1, out, "train.max_steps=4", "train.save_every=2")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    wider = ("model.scratch.hidden_size=64", "model.scratch.intermediate_size=128")

    proc = run(1, out, "train.resume=auto", "train.max_steps=6", *wider, expect=2)
    line = one_line_error(proc)
    assert "model.scratch.hidden_size 32 -> 64" in line and "model.scratch.intermediate_size 64 -> 128" in line
    assert "train.output_dir" in line and "can never change on resume" in line

    proc = run(1, out, *wider, expect=2)  # a fresh run into the same directory
    line = one_line_error(proc)
    assert "holds checkpoints of an earlier run" in line and "train.resume=auto" in line
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing lost


def test_a_fresh_run_rebuilds_an_init_built_from_other_scratch_sizes(tmp_path):
    out = tmp_path / "run"
    run(1, out, "train.max_steps=2", "train.save_every=0", "train.save_final=false")  # init/, no checkpoints
    assert json.loads((out / "init" / "config.json").read_text())["hidden_size"] == 32
    proc = run(1, out, "train.max_steps=2", "model.scratch.hidden_size=64", "model.scratch.intermediate_size=128")
    assert "was built from other model.scratch settings; rebuilding it" in proc.stdout
    assert json.loads((out / "init" / "config.json").read_text())["hidden_size"] == 64
    assert weights(out / "model")["embeddings.word_embeddings.weight"].shape[1] == 64


def test_resume_changes_what_may_change_and_refuses_what_is_trained(tmp_path):
    out = tmp_path / "run"
    run(1, out, "train.max_steps=4", "train.save_every=2")
    proc = run(1, out, "train.resume=auto", "sampler.batch_size=4", "train.max_steps=6", expect=2)
    line = one_line_error(proc)
    assert "sampler.batch_size 8 -> 4" in line and "can never change on resume" in line

    proc = run(1, out, "train.resume=auto", "model.name_or_path=" + str(out / "init"), expect=2)
    assert "model.name_or_path None -> " in one_line_error(proc)

    proc = run(1, out, "train.resume=auto", "optim.lr=0.01", "train.max_steps=6", expect=2)
    line = one_line_error(proc)
    assert "optim.lr 0.001 -> 0.01" in line and "train.allow_config_change=[optim.lr]" in line

    proc = run(1, out, "train.resume=auto", "optim.lr=0.01", "train.allow_config_change=[optim.lr]",
               "train.max_steps=6", "train.log_every=1")
    assert "changed since the checkpoint: optim.lr 0.001 -> 0.01, train.allow_config_change" in proc.stdout
    assert "train.max_steps 4 -> 6" in proc.stdout and "resumed from" in proc.stdout
    assert (out / "checkpoints" / "step-00000006").is_dir()


# ---------------------------------------------------------------------- 3. mistakes before anything is written


@pytest.mark.parametrize("overrides, expected", [
    (["sampler.batch_size=0"], "sampler.batch_size=0 must be at least 1"),
    (["sampler.batch_size=-4"], "sampler.batch_size=-4 must be at least 1"),
    (["sampler.batch_size=100000"], "sampler.batch_size=100000 questions of one language"),
    (["eval.metric=multi_mapp", "eval.every_steps=2"], "eval.metric='multi_mapp': must be one of mono_map"),
    (["sampler.alpha=1.5"], "sampler.alpha=1.5 is outside [0, 1]"),
    (["loss.temperature=0"], "loss.temperature=0.0: must be > 0"),
    (["optim.lr=-1e-5"], "optim.lr=-1e-05: must be > 0"),
    (["train.max_steps=-1"], "train.max_steps=-1: must be at least 0"),
    (["train.allow_config_change=[sampler.seed]"], "'sampler.seed' is not a config key"),
])
def test_a_mistake_is_one_line_naming_the_key_and_nothing_is_written(tmp_path, overrides, expected):
    out = tmp_path / "run"
    proc = run(1, out, *overrides, expect=2)
    assert expected in one_line_error(proc)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert written == []


@pytest.mark.slow  # two processes to hit one setup check (about 30 s idle); the other mistakes run by default
def test_a_batch_size_the_world_size_cannot_split_stops_every_rank_before_writing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "hybrid_dist.launch", *command(2, out, "sampler.batch_size=9")],
                          cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "sampler.batch_size=9: must be divisible by the number of processes x " \
           "train.gradient_accumulation_steps (2 x 1)" in proc.stderr
    assert not (out / "config.yaml").exists() and not (out / "init").exists()


# ---------------------------------------------------------------------- 4. exit codes


def torchrun_command(out: Path, *overrides: str) -> list[str]:
    args = command(1, out, *overrides)[1:]  # python's arguments: -m hybrid_dist.train ...
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", *args]


@pytest.mark.parametrize("launcher", [
    "accelerate", pytest.param("torchrun", marks=[pytest.mark.slow, pytest.mark.ci_slow])])  # ~18 s each
def test_sigterm_to_a_two_process_launch_checkpoints_and_exits_75(tmp_path, launcher):
    out = tmp_path / "run"
    overrides = ("train.max_steps=2000", "train.save_every=0", "train.log_every=1")
    launch = command(2, out, *overrides) if launcher == "accelerate" else torchrun_command(out, *overrides)
    proc = subprocess.Popen([sys.executable, "-m", "hybrid_dist.launch", *launch], cwd=REPO, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "tensorboard"
    deadline = time.monotonic() + 240
    while not (out / "batches.jsonl").exists() or len((out / "batches.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 75, output[-3000:]
    marker = json.loads((out / "PREEMPTED").read_text())
    step = marker["step"]
    assert marker["signal"] == "SIGTERM" and 3 <= step < 2000
    path = ckpt.step_dir(out / "checkpoints", step)
    assert ckpt.verify(path) is None
    # both ranks' states are in the checkpoint (the RNG state of each rank)
    assert {p.name for p in path.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert "Traceback" not in output and log.exists()
    # and the run resumes from it
    resumed = run(2, out, "train.max_steps=" + str(step + 2), "train.save_every=0", "train.resume=auto")
    assert f"at step {step}" in resumed.stdout + resumed.stderr


def test_launch_exit_code_rules():
    from hybrid_dist.launch import job_exit_code

    assert job_exit_code(1, {"rank-0": 75, "rank-1": 75}) == 75
    assert job_exit_code(143, {"rank-0": 75}) == 75  # a slower rank was killed by the launcher
    assert job_exit_code(1, {"rank-0": 2, "rank-1": 2}) == 2
    assert job_exit_code(1, {"rank-0": 3}) == 3
    assert job_exit_code(1, {"rank-0": 2, "rank-1": 3}) == 1  # no agreement: the launcher's
    assert job_exit_code(0, {"rank-0": 0, "rank-1": 0}) == 0
    assert job_exit_code(1, {}) == 1  # every rank crashed
