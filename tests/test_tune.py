"""Ray Tune searches (hybrid_dist.tune).

Fast checks: search files and their errors, the search space, Optuna / BayesOpt suggestions,
results (table, best.yaml, plot) on plain rows, and the autoscaler configs against Ray's own schema.

The CI search: ``python -m hybrid_dist.tune --config ray_configs/tiny-cpu.yaml`` on a local Ray
instance — 4 random-search trials, each a real Ray Train TorchTrainer run with 2 gloo workers of
the same Trainer as hybrid_dist.train, ASHA on held-out multilingual mAP every 10 steps, and one
injected worker failure that Ray Train restores from its Ray checkpoint. Then best.yaml trains."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SEARCHES = REPO / "ray_configs"

if os.environ.get("CI"):
    import ray  # noqa: F401  CI installs the tune extra: a missing Ray must fail there, not skip
else:
    pytest.importorskip("ray", reason="needs the tune extra: pip install -e '.[tune]'")

from hybrid_dist.config import ConfigError, load_config  # noqa: E402
from hybrid_dist.tune import results as res  # noqa: E402
from hybrid_dist.tune.spec import load_search, param_space  # noqa: E402


def write_search(tmp_path: Path, **changes) -> Path:
    tree = yaml.safe_load((SEARCHES / "tiny-cpu.yaml").read_text())
    tree["base_config"] = str(REPO / "configs" / "tiny.yaml")
    for key, value in changes.items():
        node = tree
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


# ---------------------------------------------------------------------- search files


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "xquad-r-cpu.yaml", "alpha-lr-temp.yaml", "retention.yaml"])
def test_search_files_load(name):
    spec = load_search(SEARCHES / name)
    space = param_space(spec)
    assert set(space) == set(spec.space) and "sampler.alpha" in space
    cfg = spec.training_config()
    assert cfg.eval.every_steps > 0 and cfg.data.format == "squad_dir"


def test_search_space_and_overrides():
    spec = load_search(SEARCHES / "tiny-cpu.yaml", ["search.num_samples=8", "overrides.train.max_steps=50",
                                                     "space.sampler.mode={choice: [hybrid, mono]}"])
    assert spec.search.num_samples == 8 and spec.overrides["train.max_steps"] == 50
    assert spec.metric_mode == "max"
    from ray import tune

    space = param_space(spec)
    assert isinstance(space["optim.lr"].get_sampler(), tune.search.sample.LogUniform)
    assert space["sampler.mode"].categories == ["hybrid", "mono"]
    cfg = spec.training_config({"sampler.alpha": 0.3, "sampler.mode": "mono", "loss.name": "multilingual"})
    assert (cfg.sampler.alpha, cfg.sampler.mode, cfg.loss.name, cfg.train.max_steps) == (0.3, "mono", "multilingual", 50)
    bias = load_search(SEARCHES / "tiny-cpu.yaml", ["metric=bias_max_rank_distance"])
    assert bias.metric_mode == "min"


@pytest.mark.parametrize("changes, message", [
    ({"serach": {"algorithm": "grid"}}, "unknown key"),
    ({"search__algorithm": "hyperband"}, "is not one of"),
    ({"space__sampler.alpah": {"uniform": [0, 1]}}, "sampler.alpah"),
    ({"space__sampler.alpha": {"normal": [0, 1]}}, "unknown distribution"),
    ({"space__sampler.alpha": {"uniform": [1, 0]}}, "lower bound"),
    ({"space__optim.lr": {"loguniform": [0, 1]}}, "positive"),
    ({"space__loss.name": {"choice": ["infonce", "triplet"]}}, "triplet"),
    ({"search__algorithm": "grid"}, "needs grid or choice"),
    ({"overrides__eval.every_steps": 0}, "eval.every_steps must be > 0"),
    ({"base_config": "nowhere.yaml"}, "no such file"),
    ({"space__optim.retention_weight": {"uniform": [-1.0, 10.0]}}, "optim.retention_weight=-1.0 must be >= 0"),
])
def test_search_file_errors(tmp_path, changes, message):
    path = write_search(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_search(path)


def test_retention_weight_is_a_search_dimension():
    """The erosion guard's weight is sampled like lr: log-uniform, and each value reaches the
    trial's optimizer; the hold-out search optimises any seen/unseen cell in the right direction."""
    from ray import tune

    from hybrid_dist.training.components import optimizer_for
    from hybrid_dist.training.retention import RetentionAdamW

    spec = load_search(SEARCHES / "retention.yaml")
    sampler = param_space(spec)["optim.retention_weight"].get_sampler()
    assert isinstance(sampler, tune.search.sample.LogUniform)
    cfg = spec.training_config({"optim.retention_weight": 250.0, "sampler.alpha": 0.5})
    assert cfg.optim.retention_weight == 250.0 and cfg.data.train_languages == ["en", "de", "es", "ru", "zh", "ar"]
    opt = optimizer_for(torch.nn.Linear(2, 2), cfg.optim)
    assert isinstance(opt, RetentionAdamW) and {g["retention_weight"] for g in opt.param_groups} == {250.0}
    assert type(optimizer_for(torch.nn.Linear(2, 2), spec.training_config({"optim.retention_weight": 0}).optim)) \
        is torch.optim.AdamW
    assert load_search(SEARCHES / "retention.yaml", ["metric=unseen_to_unseen_multi_map"]).metric_mode == "max"
    assert load_search(SEARCHES / "retention.yaml",
                       ["metric=seen_to_unseen_bias_max_rank_distance"]).metric_mode == "min"


def test_optuna_and_bayesopt_suggest(tmp_path):
    from hybrid_dist.tune.search import build_searcher

    for algorithm, changes in (("optuna", {}), ("bayesopt", {"space__loss.name": None})):
        spec = load_search(write_search(tmp_path, search__algorithm=algorithm, **changes))
        searcher = build_searcher(spec)
        assert searcher.set_search_properties(spec.metric, spec.metric_mode, param_space(spec))
        for i in range(2):
            point = searcher.suggest(f"t{i}")
            assert 0.0 <= point["sampler.alpha"] <= 1.0 and 1e-4 <= point["optim.lr"] <= 1e-2
            spec.training_config(point)  # every suggestion is a valid training config


# ---------------------------------------------------------------------- results on plain rows


def fake_rows() -> list[dict]:
    rows = []
    for i, (alpha, lr, metric, status) in enumerate([
        (0.0, 1e-3, 0.05, res.COMPLETED), (0.5, 1e-3, 0.07, res.COMPLETED), (1.0, 1e-3, 0.06, res.COMPLETED),
        (0.5, 1e-4, 0.04, res.STOPPED), (0.2, 1e-4, 0.09, res.ERROR),
    ]):
        rows.append({"trial_id": f"t{i}", "params": {"sampler.alpha": alpha, "optim.lr": lr, "loss.temperature": 0.05,
                                                      "loss.name": "infonce"},
                     "status": status, "step": 30 if status == res.COMPLETED else 10, "metric": metric,
                     "metrics": {"mono_map": 0.2, "multi_map": metric}, "history": [(10, metric)], "time_s": 12.5,
                     "error": "boom" if status == res.ERROR else None, "path": "", "checkpoint_path": None})
    return rows


def test_tables_best_config_and_plot(tmp_path):
    spec = load_search(SEARCHES / "tiny-cpu.yaml")
    rows = fake_rows()
    best = res.best_row(rows, "max")
    assert best["trial_id"] == "t1"  # the errored trial's value never counts
    assert res.best_row(rows, "min")["trial_id"] == "t0"  # early-stopped ones only when nothing completed
    paths = res.write_tables(rows, spec, tmp_path)
    md = paths["markdown"].read_text().splitlines()
    assert md[0].startswith("| trial | status | step | sampler.alpha | optim.lr") and len(md) == 2 + len(rows)
    assert "stopped early (ASHA)" in md[5]
    assert json.loads(paths["json"].read_text())["trials"][1]["metric"] == 0.07
    best_yaml = res.write_best_config(best, spec, tmp_path / "best.yaml", output_dir=str(tmp_path / "run"))
    cfg = load_config(best_yaml)
    assert (cfg.sampler.alpha, cfg.optim.lr, cfg.train.max_steps, cfg.eval.every_steps) == (0.5, 1e-3, 30, 10)
    assert Path(cfg.data.path).is_absolute()
    plot = res.plot_alpha(rows, spec, tmp_path / "alpha.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_lr_buckets():
    assert res.lr_buckets([1e-3, 3e-4, 1e-3]) == ["lr=0.001", "lr=0.0003", "lr=0.001"]
    labels = res.lr_buckets([1.1e-4, 2e-4, 4e-4, 1.2e-3, 5e-3, 9e-3])
    assert labels[0] == labels[1] and labels[3] != labels[4] and len(set(labels)) == 4


# ---------------------------------------------------------------------- cluster configs


@pytest.mark.parametrize("name, provider", [("cluster-aws.yaml", "aws"), ("cluster-gcp.yaml", "gcp")])
def test_autoscaler_configs_validate_against_rays_schema(name, provider):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((SEARCHES / name).read_text())
    assert raw["provider"]["type"] == provider
    assert raw["head_node_type"] in raw["available_node_types"]
    setup = "\n".join(raw["setup_commands"])
    assert "torch==2.13.0" in setup and ".[tune" in setup and "import_e5" in setup
    assert any("ray start --head" in c for c in raw["head_start_ray_commands"])
    validate_config(prepare_config(raw))  # Ray's JSON schema, after Ray fills its provider defaults
    broken = dict(raw, head_node_typ="head")
    with pytest.raises(Exception):
        validate_config(prepare_config(broken))


# ---------------------------------------------------------------------- the CI search (real Ray)


MARKER = "HYBRID_DIST_TUNE_TEST"


def ray_processes(marker: str) -> set[int]:
    """Processes of the Ray instance the search started (GCS, raylet, workers): they inherit the
    search's environment, so a marker variable finds them and nothing else on the machine."""
    pids = set()
    needle = f"{MARKER}={marker}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory, xquad_dir):
    storage = tmp_path_factory.mktemp("tune")
    marker = f"{os.getpid()}-{time.time_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0", **{MARKER: marker})
    cmd = [sys.executable, "-m", "hybrid_dist.tune", "--config", str(SEARCHES / "tiny-cpu.yaml"),
           "--address", "local", "--num-cpus", "2", "--storage", str(storage),
           "failure.inject_worker_failure_at_step=10"]
    started = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    except subprocess.TimeoutExpired:
        for pid in ray_processes(marker):  # the Ray instance the killed search left behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise
    wall = time.time() - started
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    exp = storage / "tiny-cpu"
    rows = json.loads((exp / "trials.json").read_text())["trials"]
    return {"exp": exp, "rows": rows, "stdout": proc.stdout, "wall": wall, "marker": marker}


@pytest.mark.slow
@pytest.mark.ci_slow  # the real Ray search: about 100 s, shared by the module's 7 search tests
def test_trials_ran_and_reported(tiny_search):
    rows = tiny_search["rows"]
    assert len(rows) == 4 and not [r for r in rows if r["status"] == res.ERROR]
    for r in rows:
        steps = [s for s, _ in r["history"]]
        assert steps and steps == sorted(steps) and all(s % 10 == 0 for s in steps)  # one report per evaluation
        assert all(0.0 < m < 1.0 for _, m in r["history"])  # held-out multilingual mAP
        assert 0.0 <= r["params"]["sampler.alpha"] <= 1.0 and 1e-4 <= r["params"]["optim.lr"] <= 1e-2
    assert len({r["params"]["sampler.alpha"] for r in rows}) == 4  # four different sampled points


@pytest.mark.slow
@pytest.mark.ci_slow  # the real Ray search: about 100 s, shared by the module's 7 search tests
def test_asha_stopped_some(tiny_search):
    rows = tiny_search["rows"]
    stopped = [r for r in rows if r["status"] == res.STOPPED]
    completed = [r for r in rows if r["status"] == res.COMPLETED]
    assert stopped and completed
    assert all(r["step"] < 30 for r in stopped) and all(r["step"] == 30 for r in completed)


@pytest.mark.slow
@pytest.mark.ci_slow  # the real Ray search: about 100 s, shared by the module's 7 search tests
def test_failed_worker_resumed_from_its_ray_checkpoint(tiny_search):
    exp, rows = tiny_search["exp"], tiny_search["rows"]
    logs = list((exp / "trials").glob("*/restored-from.txt"))
    assert len(logs) == 1  # one injected failure in the whole search
    restored = logs[0].read_text().split()
    trial_id = logs[0].parent.name
    # Ray's copy in the experiment's storage, not the trainer's own checkpoint directory
    assert restored == [str(exp / "train-runs" / f"train-{trial_id}" / "checkpoint-step-00000010")]
    row = next(r for r in rows if r["trial_id"] == trial_id)
    assert [s for s, _ in row["history"]][0] == 10 and row["status"] in (res.COMPLETED, res.STOPPED)
    if row["status"] == res.COMPLETED:
        assert [s for s, _ in row["history"]] == [10, 20, 30]


@pytest.mark.slow
@pytest.mark.ci_slow  # the real Ray search: about 100 s, shared by the module's 7 search tests
def test_ray_checkpoints_hold_the_trainer_state(tiny_search):
    runs = sorted((tiny_search["exp"] / "train-runs").iterdir())
    assert len(runs) == 4
    for run in runs:
        checkpoints = sorted(run.glob("checkpoint-step-*"))
        assert checkpoints and len(checkpoints) <= 2  # keep_checkpoints
        # every visible checkpoint is whole, also where ASHA stopped the trial mid-upload
        for checkpoint in checkpoints:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            assert state["step"] == int(checkpoint.name.rsplit("-", 1)[1])
            assert (checkpoint / "random_states_1.pkl").exists()  # the second worker's state is there too


@pytest.mark.slow
@pytest.mark.ci_slow  # the real Ray search: about 100 s, shared by the module's 7 search tests
def test_outputs_written(tiny_search):
    exp = tiny_search["exp"]
    md = (exp / "trials.md").read_text()
    assert md.count("\n") == 2 + 4 and "multi_map" in md
    assert (exp / "trials.csv").read_text().startswith("trial,status,step,sampler.alpha")
    assert (exp / "alpha-plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "best:" in tiny_search["stdout"] and "stopped early (ASHA)" in tiny_search["stdout"]


@pytest.mark.slow
@pytest.mark.ci_slow  # the real Ray search: about 100 s, shared by the module's 7 search tests
def test_best_config_trains(tiny_search, tmp_path):
    best = tiny_search["exp"] / "best.yaml"
    cfg = load_config(best)
    best_row = max((r for r in tiny_search["rows"] if r["status"] == res.COMPLETED), key=lambda r: r["metric"])
    assert cfg.sampler.alpha == pytest.approx(best_row["params"]["sampler.alpha"])
    assert cfg.optim.lr == pytest.approx(best_row["params"]["optim.lr"])
    proc = subprocess.run([sys.executable, "-m", "hybrid_dist.train", "--config", str(best),
                           f"train.output_dir={tmp_path / 'best'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trained to step 30" in proc.stdout and (tmp_path / "best" / "model" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.ci_slow  # the real Ray search: about 100 s, shared by the module's 7 search tests
def test_no_ray_processes_left(tiny_search):
    deadline = time.time() + 60  # ray.shutdown() ends the instance; its actors exit within seconds
    while time.time() < deadline and ray_processes(tiny_search["marker"]):
        time.sleep(2)
    assert not ray_processes(tiny_search["marker"])


def test_publish_directory_is_all_or_nothing(tmp_path, monkeypatch):
    from hybrid_dist.training.reliability import checkpoints
    from hybrid_dist.tune import worker

    source = tmp_path / "local" / "checkpoint-step-00000020"
    source.mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"w" * 1000)
    (source / "trainer_state.json").write_text('{"step": 20}')
    destination = tmp_path / "storage" / "checkpoint-step-00000020"
    destination.mkdir(parents=True)
    (destination / "stale.txt").write_text("from an earlier attempt")

    real_copy2 = shutil.copy2
    copied = []

    def copy_then_die(src, dst, **kw):  # the worker is killed after the first file
        if copied:
            raise KeyboardInterrupt("killed mid-upload")
        copied.append(src)
        return real_copy2(src, dst, **kw)

    monkeypatch.setattr(shutil, "copy2", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        worker.publish_directory(source, destination)
    # the earlier directory is untouched; the half copy is hidden, not a checkpoint-step-* directory
    assert sorted(p.name for p in destination.iterdir()) == ["stale.txt"]
    assert [p.name for p in (tmp_path / "storage").glob("checkpoint-step-*")] == [destination.name]

    monkeypatch.setattr(shutil, "copy2", real_copy2)
    assert worker.publish_directory(source, destination) == destination
    assert sorted(p.name for p in destination.iterdir()) == ["manifest.json", "model.safetensors", "trainer_state.json"]
    assert checkpoints.verify(destination) is None  # sealed like the trainer's own checkpoints
    assert (destination / "model.safetensors").read_bytes() == b"w" * 1000
    assert sorted(p.name for p in (tmp_path / "storage").iterdir()) == [destination.name]  # partial cleaned up
