"""The issue #9 study (experiments/): arm configs, the run plan, and the table / plot / summary
writer on synthetic results files. Nothing here trains, except the tests marked slow."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_dist.config import flatten as flat
from hybrid_dist.config import load_config, to_dict

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # experiments/ is not an installed package: plain `pytest` needs the root
    sys.path.insert(0, str(REPO))

from experiments import arms as A
from experiments import summarize as S
from experiments.run import config_differences, eval_command, parse_args, train_command


def load_arm(name: str) -> dict:
    return flat(to_dict(load_config(A.ARMS[name].config)))


# ----------------------------------------------------------------------------- configs


def test_every_arm_has_a_config_that_loads():
    files = sorted(p.stem for p in A.CONFIG_DIR.glob("*.yaml"))
    assert files == sorted(A.ARMS)
    assert set(A.STUDY_ARMS) <= set(A.ARMS) and "recommended" not in A.STUDY_ARMS
    for name in A.ARMS:
        load_config(A.ARMS[name].config)  # raises on unknown keys or wrong types


def test_hybrid_arm_has_the_issues_reference_settings():
    c = load_config(A.ARMS["hybrid"].config)
    assert c.model.name_or_path == "offline:multilingual-e5-small"
    assert c.model.max_length == 128 and c.model.pooling == "mean"
    assert c.data.format == "squad_dir" and c.data.path == "../shared/data/xquad-r"
    assert c.data.split == "parity" and c.data.languages is None and c.data.passage_text == "sentence"
    assert c.sampler.batch_size == 128 and c.sampler.mode == "hybrid" and c.sampler.alpha == 0.5
    assert c.train.max_steps == 200 and c.train.seed == 0 and c.train.gradient_accumulation_steps == 1
    assert c.optim.lr == 3e-5 and c.optim.warmup_steps == 20 and c.optim.scheduler == "linear"
    assert c.optim.max_grad_norm == 1.0
    assert c.loss.name == "infonce" and c.loss.temperature == 0.05
    assert c.eval.candidate_context is False and c.eval.part == "heldout"
    assert c.eval.before_training is False and c.eval.after_training is True and c.eval.every_steps == 0


def test_arms_differ_from_hybrid_only_in_their_pinned_fields():
    base = load_arm(A.BASE_ARM)
    for name, arm in A.ARMS.items():
        cfg = load_arm(name)
        for key, value in arm.pinned.items():
            assert cfg[key] == value, (name, key)
        differing = {k for k in cfg if cfg[k] != base[k]} - {"train.output_dir"}
        expected = {k for k, v in arm.pinned.items() if base[k] != v} | set(arm.budget_differs)
        assert differing == expected, name
        assert cfg["train.output_dir"] == f"runs/experiments/{name}"


def test_generated_arm_configs_are_in_sync():
    """Every arm file but the base is generated from hybrid.yaml and ARMS (python -m experiments.arms)."""
    assert A.stale_configs() == []
    assert A.main(["--check"]) == 0


#: experiments/configs/hybrid.yaml before the arm files were generated (commit 2627140), comments left out
OLD_HYBRID_YAML = """\
model: {name_or_path: offline:multilingual-e5-small, pooling: mean, max_length: 128}
data: {format: squad_dir, path: ../shared/data/xquad-r, languages: null, passage_text: sentence, split: parity}
sampler: {mode: hybrid, alpha: 0.5, batch_size: 128, smoothing: 1.0, translations_per_group: 1}
loss: {name: infonce, temperature: 0.05}
optim: {lr: 3.0e-5, weight_decay: 0.01, warmup_steps: 20, scheduler: linear, max_grad_norm: 1.0}
train: {output_dir: runs/experiments/hybrid, max_steps: 200, seed: 0, save_every: 100, keep_last: 1, log_every: 10}
eval: {before_training: false, after_training: true, every_steps: 0, part: heldout, candidate_context: false,
       batch_size: 128}
"""
#: how each hand-written arm file of that commit differed from it
OLD_ARM_DIFFERENCES = {
    "zero-shot": {"train.max_steps": 0, "eval.before_training": True, "eval.after_training": False},
    "xx-mono": {"sampler.mode": "mono"},
    "xy-cross": {"sampler.mode": "cross"},
    "hybrid": {},
    "multilingual": {"sampler.mode": "multilingual"},
    "hybrid-mlloss": {"sampler.translations_per_group": 2, "loss.name": "multilingual"},
    "recommended": {"sampler.batch_size": 256, "sampler.translations_per_group": 4, "loss.name": "multilingual"},
}


def test_arm_configs_resolve_as_the_hand_written_files_did(tmp_path):
    """Generating the arm files changed no setting: each resolves to the Config its hand-written
    file gave, so finished runs of a study still match (experiments.run compares their configs)."""
    old = tmp_path / "hybrid.yaml"
    old.write_text(OLD_HYBRID_YAML)
    assert set(OLD_ARM_DIFFERENCES) == set(A.ARMS)
    for name, changes in OLD_ARM_DIFFERENCES.items():
        overrides = [f"{k}={json.dumps(v)}" for k, v in {**changes, "train.output_dir": f"runs/experiments/{name}"}.items()]
        assert to_dict(load_config(A.ARMS[name].config)) == to_dict(load_config(old, overrides)), name


def test_arm_specific_settings():
    assert load_arm("zero-shot")["train.max_steps"] == 0
    assert load_arm("zero-shot")["eval.before_training"] is True
    assert load_arm("xx-mono")["sampler.mode"] == "mono"
    assert load_arm("xy-cross")["sampler.mode"] == "cross"
    assert load_arm("multilingual")["sampler.mode"] == "multilingual"
    ml = load_arm("hybrid-mlloss")
    assert ml["loss.name"] == "multilingual" and ml["sampler.alpha"] == 0.5
    # the multilingual loss needs translations of a question in the same batch
    assert ml["sampler.translations_per_group"] >= 2
    rec = load_arm("recommended")
    assert rec["loss.name"] == "multilingual" and rec["sampler.batch_size"] > 128
    assert rec["sampler.batch_size"] % rec["sampler.translations_per_group"] == 0


def test_multilingual_loss_arms_build_a_sampler(xquad_corpus):
    """The sampler accepts the arms' settings: k translations per question in X-Y steps, one pair
    per question in X-X-mono steps (one language cannot hold translations)."""
    from hybrid_dist.data.sampler import GlobalBatchSampler

    for name in ("hybrid-mlloss", "recommended"):
        s = load_config(A.ARMS[name].config).sampler
        sampler = GlobalBatchSampler(xquad_corpus, s.batch_size, s.mode, s.alpha, s.smoothing, 0,
                                     s.translations_per_group)
        modes = set()
        for step in range(6):
            batch = sampler.batch(step)
            groups = [p.group for p in batch.pairs]
            assert len(batch.pairs) == s.batch_size
            k = 1 if batch.mode == "mono" else s.translations_per_group
            assert all(groups.count(g) == k for g in set(groups))
            modes.add(batch.mode)
        assert modes == {"mono", "cross"}


# ----------------------------------------------------------------------------- plan


def _with_overrides(spec: A.RunSpec) -> dict:
    return flat(to_dict(load_config(spec.config, list(spec.overrides))))


def test_plan_gives_every_arm_the_same_budget_and_seeds(tmp_path):
    specs, sweep = A.plan(tmp_path, A.STUDY_ARMS, [0, 1, 2], A.SWEEP_ALPHAS, "gpu")
    by_name: dict[str, list[int]] = {}
    for s in specs:
        by_name.setdefault(s.name, []).append(s.seed)
    assert by_name["zero-shot"] == [0]  # no training: seed-independent, evaluated once
    for name in ["xx-mono", "xy-cross", "hybrid", "multilingual", "hybrid-mlloss",
                 "alpha-0", "alpha-0.25", "alpha-0.75", "alpha-1"]:
        assert by_name[name] == [0, 1, 2], name
    assert (0.5, "hybrid") in sweep and len(sweep) == 5  # 0.5 reuses the hybrid arm's runs
    budget = ("sampler.batch_size", "optim.lr", "optim.warmup_steps", "optim.max_grad_norm", "loss.temperature",
              "model.max_length", "data.split", "data.languages", "eval.candidate_context", "model.name_or_path")
    trained = [s for s in specs if s.name != "zero-shot"]
    cfgs = [_with_overrides(s) for s in trained]
    for key in budget + ("train.max_steps",):
        assert len({json.dumps(c[key]) for c in cfgs}) == 1, key
    for s, c in zip(trained, cfgs):
        assert c["train.seed"] == s.seed and c["train.output_dir"] == str(s.dir(tmp_path))
        if s.alpha is not None:
            assert c["sampler.alpha"] == s.alpha and c["sampler.mode"] == "hybrid"


def test_overrides_never_change_what_defines_an_arm(tmp_path):
    specs, _ = A.plan(tmp_path, ["zero-shot", "xx-mono"], [0], [], "cpu",
                      ["train.max_steps=5", "sampler.mode=cross"])
    zero, mono = (_with_overrides(s) for s in specs)
    assert zero["train.max_steps"] == 0 and mono["train.max_steps"] == 5
    assert mono["sampler.mode"] == "mono"
    assert mono["data.languages"] == ["en", "de", "es", "ar", "zh"] and mono["model.max_length"] == 64


def test_cpu_preset_scales_the_recommended_batch(tmp_path):
    specs, _ = A.plan(tmp_path, ["hybrid", "recommended"], [0], [], "cpu")
    hyb, rec = (_with_overrides(s) for s in specs)
    assert rec["sampler.batch_size"] == 2 * hyb["sampler.batch_size"] == 32


def test_plan_rejects_unknown_arms_and_alphas(tmp_path):
    with pytest.raises(ValueError, match="unknown arm"):
        A.plan(tmp_path, ["mono"], [0], [], "gpu")
    with pytest.raises(ValueError, match="outside"):
        A.plan(tmp_path, ["hybrid"], [0], [1.5], "gpu")


def test_command_line_and_commands(tmp_path):
    args = parse_args(["--out", str(tmp_path), "--arms", "all,recommended", "--size", "cpu", "--no-sweep"])
    assert args.arm_list == A.STUDY_ARMS + ["recommended"] and args.seeds == [0, 1] and args.alphas == []
    spec = A.plan(tmp_path, ["hybrid"], [0], [], "cpu")[0][0]
    cmd = train_command("accelerate launch --num_processes 2", spec)
    assert cmd[:4] == ["accelerate", "launch", "--num_processes", "2"]
    assert cmd[4:7] == ["-m", "hybrid_dist.train", "--config"] and cmd[-4:] == list(spec.overrides[-4:])
    ev = eval_command(load_config(spec.config, list(spec.overrides)), tmp_path / "model", tmp_path / "eval")
    assert ev[ev.index("--languages") + 1] == "en,de,es,ar,zh" and ev[ev.index("--max-length") + 1] == "64"
    assert "--candidate-context" not in ev


def test_config_differences_ignore_only_paths_and_logging():
    a = to_dict(load_config(A.ARMS["hybrid"].config))
    b = to_dict(load_config(A.ARMS["hybrid"].config, ["train.output_dir=elsewhere", "train.progress_bar=false"]))
    assert config_differences(a, b) == []
    c = to_dict(load_config(A.ARMS["hybrid"].config, ["sampler.alpha=0.25"]))
    assert len(config_differences(a, c)) == 1 and "sampler.alpha" in config_differences(a, c)[0]


# ----------------------------------------------------------------------------- writer

LANGS = ["de", "en", "zh"]
METRIC_KEYS = [f"{fam}_{m}" for fam in ("mono", "cross", "multi") for m in ("map", "map@20", "r@1", "r@10")]


def synthetic_summary(base: float, bias: float, gap: float) -> dict:
    s = {k: round(base + 0.01 * i, 6) for i, k in enumerate(METRIC_KEYS)}
    s["bias_max_rank_distance"], s["bias_same_minus_other"] = bias, gap
    return s


def write_run(out: Path, name: str, seed: int, summary: dict, alpha: float = 0.5, trained: bool = True,
              matrix_shift: float | None = None) -> Path:
    d = A.run_dir(out, name, seed)
    d.mkdir(parents=True)
    cfg = to_dict(load_config(A.ARMS["hybrid"].config, [f"sampler.alpha={alpha}", f"train.seed={seed}"]))
    key = "step 200 (fine-tuned)" if trained else "step 0 (before training)"
    results = {"step 0 (before training)": synthetic_summary(0.1, 999, -999)} if trained else {}
    results[key] = summary
    (d / "results.json").write_text(json.dumps({"config": cfg, "results": results}))
    arm = name if name in A.ARMS else "hybrid"
    (d / "run.json").write_text(json.dumps({"name": name, "arm": arm, "seed": seed, "wall_s": 10.0 + seed}))
    if matrix_shift is not None:
        matrix = {m: {x: {y: round(0.5 + matrix_shift + 0.1 * (x == y), 3) for y in LANGS} for x in LANGS}
                  for m in ("map", "map@20", "r@1", "r@10")}
        result = {"kind": "lareqa", "benchmark": "xquad-r", "languages": LANGS, "summary": summary,
                  "matrix": matrix, "multi": {m: {x: 0.3 for x in LANGS} for m in matrix}}
        (d / "eval").mkdir()
        (d / "eval" / "results.json").write_text(json.dumps({"format": "hybrid_dist.eval/1",
                                                              "results": {"xquad-r": result}}))
    return d


def test_stats_mean_and_sample_std():
    st = S.stats([0.8, 0.9, 1.0])
    assert st["n"] == 3 and math.isclose(st["mean"], 0.9) and math.isclose(st["std"], 0.1)
    one = S.stats([0.5])
    assert one["mean"] == 0.5 and one["std"] is None
    assert S.format_stat(st, "mono_map") == "0.900 ± 0.100"
    assert S.format_stat(S.stats([190.0, 200.0]), "bias_max_rank_distance") == "195 ± 7"
    assert S.format_stat(one, "multi_map") == "0.500"


def test_final_summary_picks_the_last_fine_tuned_entry():
    res = {"results": {"step 0 (before training)": {"a": 0}, "step 100": {"a": 1}, "step 9 (fine-tuned)": {"a": 2},
                       "step 200 (fine-tuned)": {"a": 3}}}
    assert S.final_summary(res) == ("step 200 (fine-tuned)", {"a": 3})
    assert S.final_summary({"results": {"step 0 (before training)": {"a": 0}}})[1] == {"a": 0}
    with pytest.raises(ValueError):
        S.final_summary({"results": {}})


def test_writer_tables_plots_and_summary_from_results_files(tmp_path):
    out = tmp_path / "study"
    write_run(out, "zero-shot", 0, synthetic_summary(0.30, 631.0, -190.0), trained=False, matrix_shift=0.0)
    # mono: multi_map 0.52 / 0.54 / 0.56 -> 0.54 ± 0.02; hybrid: 0.60 / 0.64 -> 0.62 ± 0.028284
    for seed, base in enumerate([0.40, 0.42, 0.44]):
        write_run(out, "xx-mono", seed, synthetic_summary(base, 200.0 + 10 * seed, -50.0),
                  alpha=0.5, matrix_shift=0.1 if seed == 0 else None)
    for seed, base in enumerate([0.48, 0.52]):
        write_run(out, "hybrid", seed, synthetic_summary(base, 170.0 + 20 * seed, -20.0 - seed),
                  matrix_shift=0.2 if seed == 0 else None)
    for alpha in (0.0, 1.0):
        for seed in (0, 1):
            write_run(out, A.alpha_label(alpha), seed, synthetic_summary(0.3 + 0.1 * alpha + 0.02 * seed, 300.0, -30.0),
                      alpha=alpha)
    # an interrupted run (no results.json) is ignored
    A.run_dir(out, "xy-cross", 0).mkdir(parents=True)

    (out / "heatmap_xy-cross.png").write_bytes(b"stale: a previous best arm's")
    summary = S.write_outputs(out, header="synthetic")
    assert not (out / "heatmap_xy-cross.png").exists()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["best_arm"] == summary["best_arm"] == "hybrid"
    arms = on_disk["arms"]
    assert list(arms) == ["zero-shot", "xx-mono", "hybrid"]
    mono = arms["xx-mono"]["metrics"]
    assert arms["xx-mono"]["seeds"] == [0, 1, 2]
    assert math.isclose(mono["multi_map"]["mean"], 0.40 + 0.01 * 8 + 0.02)
    assert math.isclose(mono["multi_map"]["std"], 0.02)
    assert math.isclose(mono["bias_max_rank_distance"]["mean"], 210.0)
    assert math.isclose(mono["bias_max_rank_distance"]["std"], 10.0)
    hyb = arms["hybrid"]["metrics"]
    assert math.isclose(hyb["mono_map"]["mean"], 0.50) and math.isclose(hyb["mono_map"]["std"], math.sqrt(0.0008))
    assert math.isclose(hyb["bias_same_minus_other"]["mean"], -20.5)
    assert arms["zero-shot"]["metrics"]["mono_map"]["std"] is None
    assert math.isclose(arms["xx-mono"]["wall_s"]["mean"], 11.0)
    # sweep: alpha 0, 0.5 (the hybrid arm) and 1, sorted
    sweep = on_disk["alpha_sweep"]
    assert [(p["alpha"], p["run"]) for p in sweep] == [(0.0, "alpha-0"), (0.5, "hybrid"), (1.0, "alpha-1")]
    assert math.isclose(sweep[2]["metrics"]["mono_map"]["mean"], 0.41)
    assert math.isclose(sweep[2]["metrics"]["mono_map"]["std"], math.sqrt(0.0002))
    # the heatmap evaluation agrees with the trainer's (the synthetic files share the summary)
    assert on_disk["heatmap_eval_vs_trainer_max_abs_diff"]["hybrid/seed0"] == 0.0
    assert set(on_disk["heatmaps"]) == {"zero-shot", "hybrid"}

    table = (out / "table.md").read_text()
    assert table.startswith("synthetic\n")
    row = next(line for line in table.splitlines() if line.startswith("| xx-mono |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["xx-mono", "0, 1, 2", "0.420 ± 0.020", "0.460 ± 0.020", "0.500 ± 0.020", "210 ± 10",
                         "-50 ± 0"]
    zrow = next(line for line in table.splitlines() if line.startswith("| zero-shot |"))
    assert "| 0.300 |" in zrow and "±" not in zrow and "| 631 |" in zrow
    recall = [line for line in table.splitlines() if line.startswith("| hybrid |")][1]
    assert recall.split("|")[3].strip() == f"{0.50 + 0.02:.3f} ± {math.sqrt(0.0008):.3f}"  # mono R@1
    assert "| 1 |" in table and "**hybrid**" in table

    for png in ("alpha_sweep.png", "heatmap_zero-shot.png", "heatmap_hybrid.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_summarize_command_rebuilds_from_disk(tmp_path):
    out = tmp_path / "s"
    write_run(out, "zero-shot", 0, synthetic_summary(0.3, 600.0, -180.0), trained=False)
    write_run(out, "hybrid", 0, synthetic_summary(0.5, 170.0, -20.0))
    write_run(out, A.alpha_label(1.0), 0, synthetic_summary(0.4, 200.0, -30.0), alpha=1.0)
    # the runner's record of the newest invocation: size, device, and the sweep (here alpha 1 only)
    (out / "invocations.json").write_text(json.dumps([{
        "size": "cpu", "overrides": ["train.max_steps=5"], "command": "python -m experiments.run ...",
        "device": {"summary": "CPU only: test"}, "sweep": [[1.0, "alpha-1"]]}]))
    proc = subprocess.run([sys.executable, "-m", "experiments.summarize", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "| hybrid | 0 | 0.500 |" in proc.stdout
    table = (out / "table.md").read_text()
    assert table.startswith("Study `s`: size preset `cpu` (**CPU preset") and "`train.max_steps=5`" in table
    summary = json.loads((out / "summary.json").read_text())
    assert [p["run"] for p in summary["alpha_sweep"]] == ["alpha-1"] and summary["size"] == "cpu"
    assert (out / "alpha_sweep.png").exists()


def test_runner_reuses_finished_runs_and_refuses_other_configs(tmp_path, xquad_dir, monkeypatch, capsys):
    """The runner itself, without training: every planned run already has its results.json."""
    from experiments.run import main as run_main

    monkeypatch.chdir(REPO)  # the configs' data path is relative to the repository root
    out = tmp_path / "study"
    argv = ["--out", str(out), "--size", "cpu", "--arms", "zero-shot,hybrid", "--seeds", "0", "--no-sweep"]
    specs, _ = A.plan(out, ["zero-shot", "hybrid"], [0], [], "cpu")
    for spec, base in zip(specs, (0.3, 0.5)):
        d = spec.dir(out)
        d.mkdir(parents=True)
        key = "step 30 (fine-tuned)" if A.ARMS[spec.arm].trains else "step 0 (before training)"
        cfg = to_dict(load_config(spec.config, list(spec.overrides)))
        (d / "results.json").write_text(json.dumps({"config": cfg, "results": {key: synthetic_summary(base, 100, -9)}}))
    assert run_main(argv) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 2
    run_md = (out / "RUN.md").read_text()
    assert "**Not the study.**" in run_md and "0 ran, 2 skipped" in run_md and "--size cpu" in run_md
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"zero-shot", "hybrid"} and summary["alpha_sweep"] == []
    assert summary["size"] == "cpu" and summary["device"]["summary"]

    hybrid = specs[1].dir(out) / "results.json"
    doc = json.loads(hybrid.read_text())
    doc["config"]["sampler"]["alpha"] = 0.25
    hybrid.write_text(json.dumps(doc))
    assert run_main(argv) == 2
    assert "sampler.alpha" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end (trains)


@pytest.mark.slow
@pytest.mark.timeout(2500)  # its subprocesses may take 1,800 + 600 s
def test_runner_end_to_end_tiny(tmp_path, xquad_dir):
    """Two arms, one seed, 2 steps on the CPU preset with the real model; then a second call
    skips both runs."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "experiments.run", "--out", str(out), "--size", "cpu", "--arms", "zero-shot,xx-mono",
           "--seeds", "0", "--no-sweep", "train.max_steps=2", "data.languages=[en,de]"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"zero-shot", "xx-mono"}
    assert all(v is not None and v < 1e-6 for v in summary["heatmap_eval_vs_trainer_max_abs_diff"].values())
    assert not (A.run_dir(out, "xx-mono", 0) / "model").exists()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 2
    assert "Invocation 2" in (out / "RUN.md").read_text()


def _metrics(out: Path) -> dict:
    runs = json.loads((out / "summary.json").read_text())["runs"]
    return {(r["name"], r["seed"]): r["summary"] for r in runs}


@pytest.mark.slow
@pytest.mark.ci_slow  # about 100 s
@pytest.mark.timeout(1900)  # two runner subprocesses of up to 900 s each
def test_in_process_runner_gives_the_subprocess_runners_numbers(tmp_path, xquad_dir):
    """Three runs (zero-shot, then two trained arms from the same pretrained weights, dropout on)
    with each runner: every held-out metric and the X->Y matrix agree within 1e-6, so sharing
    the model, data and tokenization across runs changes nothing. Prints the wall-time ratio."""
    import time

    from conftest import tiny_bert_dir

    model = tiny_bert_dir(tmp_path / "tiny", dropout=0.1)
    common = ["--size", "cpu", "--arms", "zero-shot,xx-mono,hybrid", "--seeds", "0", "--no-sweep",
              f"model.name_or_path={model}", f"data.path={xquad_dir}", "data.languages=[en,de]", "model.max_length=32",
              "train.max_steps=3", "optim.warmup_steps=1", "sampler.batch_size=8", "eval.batch_size=256"]
    walls = {}
    for name, extra in (("subprocess", []), ("in-process", ["--in-process"])):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "experiments.run", "--out", str(tmp_path / name), *extra, *common],
                              cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
        walls[name] = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = _metrics(tmp_path / "subprocess"), _metrics(tmp_path / "in-process")
    assert set(a) == set(b) == {("zero-shot", 0), ("xx-mono", 0), ("hybrid", 0)}
    for key in a:
        assert a[key].keys() == b[key].keys()
        for metric, value in a[key].items():
            assert value == pytest.approx(b[key][metric], abs=1e-6), (key, metric)
    assert a[("xx-mono", 0)]["multi_map"] != a[("zero-shot", 0)]["multi_map"]  # training changed the model
    for name in ("xx-mono", "hybrid"):
        ma = json.loads((A.run_dir(tmp_path / "subprocess", name, 0) / "eval" / "results.json").read_text())
        mb = json.loads((A.run_dir(tmp_path / "in-process", name, 0) / "eval" / "results.json").read_text())
        xa, xb = ma["results"]["xquad-r"]["matrix"]["map"], mb["results"]["xquad-r"]["matrix"]["map"]
        assert all(xa[x][y] == pytest.approx(xb[x][y], abs=1e-6) for x in xa for y in xa[x])
        # the in-process runs wrote no model or checkpoint (train.save_final=false)
        d = A.run_dir(tmp_path / "in-process", name, 0)
        assert not (d / "model").exists() and not (d / "checkpoints").exists()
    print(f"\nwall time: subprocess runner {walls['subprocess']:.1f}s, in-process {walls['in-process']:.1f}s, "
          f"ratio {walls['subprocess'] / walls['in-process']:.2f}")
