"""Reports (JSON, Markdown table, heatmap, comparison) and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_dist.data.records import DataError
from hybrid_dist.evaluate import main
from hybrid_dist.evaluation import (
    compare_reports,
    evaluate_lareqa,
    format_results_table,
    is_better,
    load_lareqa,
    load_report,
    make_report,
    metric_direction,
    plot_heatmap,
    write_json,
)
from toy_eval import HashingEncoder, tiny_biencoder, write_toy_lareqa

XQUAD_R = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xquad-r"
needs_xquad_r = pytest.mark.skipif(not (XQUAD_R / "en.json").exists(), reason=f"XQuAD-R not found at {XQUAD_R}")


def test_results_table_paper_layout():
    rows = {
        "mE5-small (zero-shot)": {"mono_map": 0.8371, "cross_map": 0.7004, "multi_map": 0.3431,
                                  "bias_max_rank_distance": 631.2, "mono_r@1": 0.7},
        "hybrid sampling": {"mono_map": 0.85, "cross_map": 0.8, "multi_map": float("nan"),
                            "bias_max_rank_distance": 5.25, "mlqa-r/mono_map": 0.7, "mlqa-r/cross_map": 0.6,
                            "mlqa-r/multi_map": 0.5, "mlqa-r/bias_max_rank_distance": 42.0},
    }
    table = format_results_table(rows)
    lines = table.splitlines()
    assert lines[0] == ("| Model / sampling | XQuAD-R Mono | XQuAD-R Cross | XQuAD-R Multi | XQuAD-R Bias ↓ "
                        "| MLQA-R Mono | MLQA-R Cross | MLQA-R Multi | MLQA-R Bias ↓ |")
    assert lines[2] == "| mE5-small (zero-shot) | 0.837 | 0.700 | 0.343 | 631 | – | – | – | – |"
    assert lines[3] == "| hybrid sampling | 0.850 | 0.800 | – | 5.2 | 0.700 | 0.600 | 0.500 | 42 |"
    assert len(lines) == 4


def test_checkpoint_selection_direction():
    assert metric_direction("mono_map") == "max" and metric_direction("xquad-r/bias_max_rank_distance") == "min"
    assert is_better("multi_map", 0.5, 0.4) and not is_better("multi_map", 0.3, 0.4)
    assert is_better("bias_max_rank_distance", 100.0, 600.0)
    assert is_better("bias_same_minus_other", -3.0, 10.0)
    assert is_better("cross_map", 0.1, None) and not is_better("cross_map", float("nan"), 0.1)


@pytest.fixture()
def two_results(tmp_path):
    bench = load_lareqa(write_toy_lareqa(tmp_path / "toy"), part="all", name="xquad-r")
    a = evaluate_lareqa(HashingEncoder(dim=8, seed=0), bench)
    b = evaluate_lareqa(HashingEncoder(dim=8, seed=5), bench)
    return a, b


def test_json_round_trip_heatmap_and_compare(tmp_path, two_results):
    a, b = two_results
    ra = make_report({"xquad-r": a}, model={"path": "model-a", "fingerprint": "fa"}, config={"part": "all"})
    rb = make_report({"xquad-r": b}, model={"path": "model-b", "fingerprint": "fb"})
    pa, pb = write_json(ra, tmp_path / "a.json"), write_json(rb, tmp_path / "b.json")
    loaded = load_report(pa)
    assert loaded["results"]["xquad-r"]["summary"] == pytest.approx(a.summary)
    assert loaded["results"]["xquad-r"]["n_settings"] == 4 and loaded["model"]["fingerprint"] == "fa"
    png = plot_heatmap(loaded["results"]["xquad-r"], tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = compare_reports(loaded, load_report(pb), "A", "B")
    assert "## xquad-r" in text and "| mono_map |" in text and "Largest X→Y mAP changes" in text
    assert main(["compare", str(pa), str(pb), "--out", str(tmp_path / "cmp.md")]) == 0
    assert (tmp_path / "cmp.md").read_text().startswith(f"# {pa} vs {pb}")
    # a bare result dict is accepted too; garbage is a DataError naming the file
    (tmp_path / "bare.json").write_text(json.dumps(ra["results"]["xquad-r"]))
    assert list(load_report(tmp_path / "bare.json")["results"]) == ["xquad-r"]
    (tmp_path / "bad.json").write_text('{"results": ')
    with pytest.raises(DataError, match=r"bad\.json: line 1 column \d+: invalid JSON"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(DataError, match=r"other\.json: field 'results': missing"):
        load_report(tmp_path / "other.json")


@needs_xquad_r
def test_cli_end_to_end(tmp_path, capsys):
    model = tiny_biencoder(["the quick brown fox", "der schnelle braune fuchs"], hidden=32, layers=2)
    model.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "tiny"), "--benchmark", "xquad-r", "--data", str(XQUAD_R),
            "--languages", "en,de,es", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--batch-size", "128"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Model / sampling | XQuAD-R Mono |" in printed and "| tiny |" in printed
    report = json.loads((out / "results.json").read_text())
    r = report["results"]["xquad-r"]
    assert r["n_settings"] == 9 and r["config"]["part"] == "heldout" and r["config"]["split"]["strategy"] == "parity"
    assert report["model"]["fingerprint"] == r["config"]["model_fingerprint"]
    assert report["config"]["languages"] == "en,de,es" and report["config"]["candidate_context"] is False
    assert set(r["matrix"]["map"]) == {"de", "en", "es"} and set(r["timings"]) >= {"encode_s", "score_s"}
    assert (out / "heatmap-xquad-r.png").read_bytes()[:4] == b"\x89PNG"
    assert "X→Y mAP" in (out / "results.md").read_text()
    cached = len(list((tmp_path / "cache").rglob("*.npy")))
    assert cached == 2
    # the second run reads the cached embeddings and gives the same numbers
    assert main(argv + ["--output-dir", str(tmp_path / "out2")]) == 0
    r2 = json.loads((tmp_path / "out2" / "results.json").read_text())["results"]["xquad-r"]
    assert r2["summary"] == pytest.approx(r["summary"])
    assert main(["table", str(out / "results.json"), str(tmp_path / "out2" / "results.json"),
                 "--labels", "first,second"]) == 0
    assert "| second |" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    model = tiny_biencoder(["a few words"], hidden=32, layers=1)
    model.save_pretrained(tmp_path / "tiny")
    data = tmp_path / "data"
    data.mkdir()
    (data / "en.json").write_text('{"data": [{"title": "T", "paragraphs": [{"context": "x"}]}]}')
    rc = main(["--model", str(tmp_path / "tiny"), "--benchmark", "xquad-r", "--data", str(data),
               "--part", "all", "--output-dir", str(tmp_path / "o"), "--no-cache", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "en.json: data[0].paragraphs[0]: field 'qas': missing" in err
    assert main(["--model", str(tmp_path / "tiny"), "--benchmark", "beir", "--no-progress"]) == 2
    assert "needs --data" in capsys.readouterr().err
