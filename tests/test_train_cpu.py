"""End-to-end CPU training through the real launcher: `accelerate launch --cpu --num_processes 2`
starts two gloo ranks; checkpoints, the saved model, TensorBoard scalars and resume are checked
on disk, and two ranks train exactly the weights one process trains on the same global batches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# dropout off, so one process and two ranks compute the same function
TINY = ["--config", str(REPO / "configs" / "tiny.yaml"), "model.scratch.dropout=0.0"]


def launch(out: Path, processes: int, *overrides: str) -> subprocess.CompletedProcess:
    # --main_process_port: accelerate launch sets MASTER_PORT=29500 whatever the environment says
    cmd = [shutil.which("accelerate") or "accelerate", "launch", "--cpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "hybrid_dist.train", *TINY, f"train.output_dir={out}",
           f"data.path={REPO.parent / 'shared/data/xquad-r'}", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, xquad_dir):
    out = tmp_path_factory.mktemp("train") / "two"
    proc = launch(out, 2)
    return out, proc


def test_two_ranks_train_checkpoint_and_save(two_rank_run):
    from hybrid_dist.models.biencoder import BiEncoder

    out, proc = two_rank_run
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000006"]
    last = out / "checkpoints" / "step-00000006"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["sampler"]["step"] == 6
    # one RNG state per rank: proof that two processes ran
    assert sorted(p.name for p in last.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert "trained to step 6" in proc.stdout

    model = BiEncoder.from_pretrained(out / "model")
    emb = model.encode(["Wie viele Punkte?", "How many points?"], "query")
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    before, after = weights(out / "init"), weights(out / "model")
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert len(changed) == len(after)  # every parameter moved


def test_tensorboard_scalars(two_rank_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = two_rank_run
    acc = EventAccumulator(str(out / "tensorboard"))  # scalars; hparams live in a subdirectory
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/batch_is_mono"} <= tags
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [2, 4, 6]
    assert all(0 < e.value < 10 for e in losses)
    assert {e.value for e in acc.Scalars("train/batch_is_mono")} <= {0.0, 1.0}


def test_one_process_trains_the_same_weights(two_rank_run, tmp_path):
    out, _ = two_rank_run
    launch(tmp_path / "one", 1)
    one, two = weights(tmp_path / "one" / "model"), weights(out / "model")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_continues_to_the_same_weights(two_rank_run, tmp_path):
    out, _ = two_rank_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    shutil.rmtree(resumed / "model")
    proc = launch(resumed, 2, "train.resume=auto")
    assert "resumed from" in proc.stdout and "step-00000003" in proc.stdout
    want, got = weights(out / "model"), weights(resumed / "model")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_bad_override_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hybrid_dist.train", *TINY, "sampler.alpah=0.3"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sampler.alpah" in proc.stderr


def test_gradient_cache_trains_the_same_weights(two_rank_run, tmp_path):
    """2 ranks, each micro-batch of 4 pairs encoded in chunks of 3 texts (dropout off)."""
    out, _ = two_rank_run
    launch(tmp_path / "cached", 2, "train.grad_cache_chunk_size=3")
    want, got = weights(out / "model"), weights(tmp_path / "cached" / "model")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
