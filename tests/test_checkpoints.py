"""Checkpoint directories (sealing, verification, selection, retention), the non-finite guard and
the fault-injection spec, on real files; and the best checkpoint surviving keep_last in a real run."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from cpu_runs import run
from hybrid_dist.training.reliability import checkpoints as ckpt
from hybrid_dist.training.reliability.faults import Fault, Faults, parse
from hybrid_dist.training.reliability.nonfinite import NonFiniteSteps, TrainingDiverged, nonfinite_tensors


def write_checkpoint(root, step: int, publish: bool = True):
    tmp = ckpt.tmp_dir(root, step)
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"w" * 100)
    (tmp / ckpt.STATE_FILE).write_text(json.dumps({"step": step}))
    if publish:
        ckpt.publish(tmp, ckpt.step_dir(root, step))
    return ckpt.step_dir(root, step) if publish else tmp


def test_publish_seals_and_verify_catches_damage(tmp_path):
    root = tmp_path / "checkpoints"
    path = write_checkpoint(root, 3)
    assert path.name == "step-00000003" and not ckpt.tmp_dir(root, 3).exists()
    manifest = json.loads((path / ckpt.MANIFEST).read_text())["files"]
    state = json.dumps({"step": 3}).encode()
    assert manifest == {"model.safetensors": {"size": 100, "sha256": hashlib.sha256(b"w" * 100).hexdigest()},
                        ckpt.STATE_FILE: {"size": len(state), "sha256": hashlib.sha256(state).hexdigest()}}
    assert ckpt.verify(path) is None
    (path / "model.safetensors").write_bytes(b"w" * 50 + b"x" + b"w" * 49)  # one byte changed, same size
    assert ckpt.verify(path, checksums=False) is None
    assert ckpt.verify(path).startswith("model.safetensors fails its checksum")
    (path / "model.safetensors").write_bytes(b"w" * 10)  # a file truncated after the fact
    assert ckpt.verify(path) == "model.safetensors has 10 bytes, the manifest says 100"
    (path / "model.safetensors").unlink()
    assert ckpt.verify(path) == "model.safetensors is missing"
    (path / ckpt.MANIFEST).unlink()
    assert "never finished" in ckpt.verify(path)


def test_newest_complete_passes_over_partial_and_damaged(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        write_checkpoint(root, step)
    write_checkpoint(root, 8, publish=False)  # killed while writing
    (ckpt.step_dir(root, 6) / ckpt.STATE_FILE).write_text("{}")  # damaged: size differs from the manifest
    path, passed_over = ckpt.newest_complete(root)
    assert path == ckpt.step_dir(root, 4)
    assert [(p.name, why.split(" ")[0]) for p, why in passed_over] == [(".tmp-step-00000008", "interrupted"),
                                                                       ("step-00000006", ckpt.STATE_FILE)]
    assert ckpt.newest_complete(tmp_path / "none") == (None, [])


def test_prune_keeps_last_k_and_the_protected_one(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 7):
        write_checkpoint(root, step)
    write_checkpoint(root, 7, publish=False)
    gone = ckpt.prune(root, keep_last=2, protect=[ckpt.step_dir(root, 2)])
    assert sorted(p.name for p in gone) == [".tmp-step-00000007", "step-00000001", "step-00000003", "step-00000004"]
    assert [p.name for p in ckpt.list_steps(root)] == ["step-00000002", "step-00000005", "step-00000006"]
    assert ckpt.prune(root, keep_last=0) == []  # 0 keeps everything


def test_recover_dir_after_a_save_cut_between_renames(tmp_path):
    model = tmp_path / "model"
    old = tmp_path / ".model.old"
    old.mkdir()
    (old / "config.json").write_text("{}")
    (tmp_path / ".model.tmp-abc").mkdir()
    ckpt.recover_dir(model)
    assert (model / "config.json").exists() and not old.exists() and not (tmp_path / ".model.tmp-abc").exists()


def test_nonfinite_guard_counts_in_a_row_and_stops_past_the_limit():
    guard = NonFiniteSteps(limit=2)
    assert "step 3: non-finite loss" in guard.skipped(3, float("nan"), float("nan"))
    guard.ok()
    assert "(1 in a row" in guard.skipped(5, 1.0, float("inf"))
    assert "non-finite gradient" in guard.skipped(6, 1.0, float("inf"))
    with pytest.raises(TrainingDiverged, match=r"3 non-finite step\(s\) in a row \(steps 5-7\), more than train.max_bad_steps=2"):
        guard.skipped(7, float("inf"), 1.0)
    with pytest.raises(TrainingDiverged, match=r"\(step 1\)"):
        NonFiniteSteps(limit=0).skipped(1, float("nan"), 1.0)


def test_nonfinite_tensors_names_weights_and_optimizer_states():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert nonfinite_tensors(model, optimizer) == []
    with torch.no_grad():
        model.bias[0] = float("nan")
    optimizer.state[model.weight]["exp_avg"][0, 0] = float("inf")
    assert nonfinite_tensors(model, optimizer) == ["bias", "optimizer state exp_avg of weight"]


def test_fault_spec():
    assert parse("nan_loss@3:r1, hang@5,hang_in_checkpoint@4:r0") == [
        Fault("nan_loss", 3, 1), Fault("hang", 5, None), Fault("hang_in_checkpoint", 4, 0)]
    assert parse(None) == parse("") == []
    with pytest.raises(ValueError, match="HYBRID_DIST_FAULT: cannot read 'explode@3'"):
        parse("explode@3")
    faults = Faults(rank=0, spec="nan_loss@3:r1,inf_grad@2")
    assert not faults.at("nan_loss", 3) and faults.at("inf_grad", 2) and not faults.at("inf_grad", 3)


def test_best_checkpoint_survives_keep_last(tmp_path, xquad_dir):
    """keep_last=1 and a final checkpoint at step 6: the best one (evaluated at 2 or 4) stays."""
    out = tmp_path / "run"
    settings = ("train.max_steps=6", "train.save_every=0", "train.keep_last=1", "eval.every_steps=2")
    run(1, out, *settings)
    best = json.loads((out / "best" / "best_metric.json").read_text())
    assert best["step"] in (2, 4) and best["metric"] == "multi_map"
    kept = [p.name for p in ckpt.list_steps(out / "checkpoints")]
    assert kept == [f"step-{best['step']:08d}", "step-00000006"]
    assert ckpt.verify(out / "checkpoints" / f"step-{best['step']:08d}") is None
    assert (out / "best" / "model.safetensors").exists()
    resumed = run(1, out, *settings, "train.resume=auto")  # auto: the newest, not the best
    assert "step-00000006 at step 6" in resumed.stdout and "config differs" not in resumed.stdout
