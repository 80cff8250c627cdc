"""Zero-shot evaluation CLI.

    python -m hybrid_dist.evaluate --model DIR --benchmark xquad-r --data PATH [--part all]
    python -m hybrid_dist.evaluate --model DIR --benchmark xquad-r --data X --benchmark mlqa-r --data M
    python -m hybrid_dist.evaluate --model DIR --benchmark beir --data scifact/
    python -m hybrid_dist.evaluate --model DIR --benchmark miracl --miracl-languages sw,te [--data ROOT]
    python -m hybrid_dist.evaluate --model DIR --benchmark msmarco --data msmarco-passage/
    torchrun --nproc_per_node 2 -m hybrid_dist.evaluate ...        (corpus encoding sharded over ranks)

    python -m hybrid_dist.evaluate compare A.json B.json [--out cmp.md]
    python -m hybrid_dist.evaluate table A.json B.json [--labels a,b]
    python -m hybrid_dist.evaluate build-mlqa-r --mlqa MLQA_V1/test --out mlqa-r/

Writes ``results.json`` (every number, the config and the model it came from), ``results.md``
(paper-layout table, details, X->Y matrix) and ``heatmap-<benchmark>.png`` into
``--output-dir`` (default ``outputs/eval/<model name>``), and prints the Markdown.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from hybrid_dist import atomic, distributed

log = logging.getLogger("hybrid_dist.evaluate")

LAREQA_BENCHMARKS = ("xquad-r", "mlqa-r")
IR_BENCHMARKS = ("beir", "miracl", "msmarco")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hybrid_dist.evaluate",
        description="Zero-shot evaluation of a bi-encoder (subcommands: compare, table, build-mlqa-r).",
    )
    p.add_argument("--model", required=True, help="model directory (ours or sentence-transformers) or hub id")
    p.add_argument("--benchmark", action="append", required=True, choices=LAREQA_BENCHMARKS + IR_BENCHMARKS,
                   help="benchmark to run; repeat together with --data for several")
    p.add_argument("--data", action="append", default=[],
                   help="data path for each --benchmark, in the same order (miracl: optional, else the HF hub)")
    p.add_argument("--output-dir", type=Path, default=None, help="default outputs/eval/<model name>")
    p.add_argument("--label", default=None, help="row label in the Markdown table (default: model name)")
    p.add_argument("--part", default="heldout", choices=("heldout", "train", "all"),
                   help="LAReQA benchmarks: which part of the article split to evaluate (default heldout)")
    p.add_argument("--split", default="parity", choices=("parity", "hash", "none"), help="article split strategy")
    p.add_argument("--heldout-fraction", type=float, default=0.5, help="for --split hash")
    p.add_argument("--languages", default=None, help="LAReQA: comma-separated languages (default: all files)")
    p.add_argument("--seen-languages", default=None,
                   help="XQuAD-R, a language hold-out: the comma-separated languages the model was trained on; adds "
                        "the seen/unseen cells (docs/evaluation.md)")
    p.add_argument("--candidate-context", action="store_true",
                   help="LAReQA: encode each candidate sentence together with its paragraph")
    p.add_argument("--mlqa-split", default="test", choices=("test", "dev"))
    p.add_argument("--beir-split", default="test")
    p.add_argument("--miracl-languages", default=None, help="MIRACL: comma-separated languages")
    p.add_argument("--miracl-split", default="dev")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None, help="override the model's maximum sequence length")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--index", default="auto", choices=("auto", "flat", "torch", "hnsw", "ivf"),
                   help="IR benchmarks: search index (auto: exact, IVF above --approximate-threshold)")
    p.add_argument("--approximate-threshold", type=int, default=2_000_000)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="embedding cache (default ~/.cache/hybrid_dist/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    p.add_argument("--no-heatmap", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_eval(argv: list[str]) -> int:
    args = eval_parser().parse_args(argv)
    data = list(args.data)
    benches = list(args.benchmark)
    if len(data) < len(benches):
        # miracl may go without a path (the HF hub); every other benchmark needs one
        data = data + [None] * (len(benches) - len(data))
    elif len(data) > len(benches):
        print(f"error: {len(data)} --data for {len(benches)} --benchmark", file=sys.stderr)
        return 2
    for b, d in zip(benches, data):
        if d is None and b != "miracl":
            print(f"error: --benchmark {b} needs --data PATH", file=sys.stderr)
            return 2

    import torch

    from hybrid_dist.data.split import ArticleSplit
    from hybrid_dist.evaluation import report as rep
    from hybrid_dist.evaluation.encode import DEFAULT_CACHE_DIR, model_fingerprint, rank_and_world
    from hybrid_dist.evaluation.ir import evaluate_ir, load_beir, load_miracl, load_msmarco
    from hybrid_dist.evaluation.lareqa import evaluate_mlqa_r, evaluate_xquad_r
    from hybrid_dist.evaluation.search import resolve_device
    from hybrid_dist.models.biencoder import BiEncoder

    started_dist = distributed.init_from_env()
    rank, world = rank_and_world()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    model = BiEncoder.from_pretrained(args.model, max_length=args.max_length).to(device)
    model.eval()
    t_loaded = time.perf_counter()
    fingerprint = model_fingerprint(model)
    cache_dir = None if args.no_cache else (args.cache_dir or DEFAULT_CACHE_DIR)
    show = not args.no_progress and rank == 0
    split = ArticleSplit(args.split, args.heldout_fraction)
    languages = _csv(args.languages)
    name = Path(args.model).name or str(args.model)
    out_dir = args.output_dir or Path("outputs") / "eval" / name
    results = {}
    for bench, path in zip(benches, data):
        log.info("evaluating %s on %s (%s)", name, bench, path)
        if bench in LAREQA_BENCHMARKS:
            kw = dict(split=split, part=args.part, languages=languages, candidate_context=args.candidate_context,
                      batch_size=args.batch_size, show_progress=show, cache_dir=cache_dir, device=str(device),
                      shard_across_ranks=world > 1)
            if bench == "xquad-r":
                r = evaluate_xquad_r(model, path, seen_languages=_csv(args.seen_languages), **kw)
            else:
                r = evaluate_mlqa_r(model, path, mlqa_split=args.mlqa_split, **kw)
            r.config["model_fingerprint"] = fingerprint
            results[bench] = r
            continue
        kw = dict(batch_size=args.batch_size, show_progress=show, cache_dir=cache_dir, index_type=args.index,
                  device=str(device), approximate_threshold=args.approximate_threshold, fingerprint=fingerprint,
                  shard_across_ranks=world > 1)
        if bench == "beir":
            ds = load_beir(path, args.beir_split)
            results[ds.name] = evaluate_ir(model, ds, **kw)
        elif bench == "msmarco":
            results["msmarco-dev"] = evaluate_ir(model, load_msmarco(path), **kw)
        else:
            langs = _csv(args.miracl_languages)
            if not langs:
                print("error: --benchmark miracl needs --miracl-languages", file=sys.stderr)
                return 2
            for lang in langs:
                ds = load_miracl(path, lang, args.miracl_split)
                results[ds.name] = evaluate_ir(model, ds, **kw)
    t_end = time.perf_counter()
    if rank == 0:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        config.update({"world_size": world, "device": str(device), "torch_threads": torch.get_num_threads()})
        model_info = {"path": str(args.model), "resolved": str(Path(args.model).resolve()) if Path(args.model).exists() else None,
                      "fingerprint": fingerprint, "max_length": model.max_length, "pooling": model.pooling,
                      "prefixes": model.prefixes}
        report = rep.make_report(results, model=model_info, config=config,
                                 timings={"load_model_s": t_loaded - t_start, "total_s": t_end - t_start})
        out_dir.mkdir(parents=True, exist_ok=True)
        rep.write_json(report, out_dir / "results.json")
        markdown = render_markdown(report, args.label or name)
        atomic.write_text(out_dir / "results.md", markdown + "\n")
        if not args.no_heatmap:
            for bench, r in report["results"].items():
                if r.get("kind") == "lareqa":
                    try:
                        rep.plot_heatmap(r, out_dir / f"heatmap-{bench.replace('/', '_')}.png")
                    except ImportError as e:  # matplotlib is the [plots] extra: the results stand without it
                        print(f"no heatmap: {e}", file=sys.stderr)
                        break
        print(markdown)
        print(f"\nwrote {out_dir / 'results.json'} ({t_end - t_start:.1f}s)")
    if started_dist:
        distributed.shutdown()
    return 0


def render_markdown(report: dict, label: str) -> str:
    from hybrid_dist.evaluation import report as rep

    parts = []
    flat = rep.flat_summary(report)
    lareqa = {b: r for b, r in report["results"].items() if r.get("kind") == "lareqa"}
    if lareqa:
        parts += ["## LAReQA (mAP; bias = max rank distance in the multilingual pool, lower is better)", "",
                  rep.format_results_table({label: flat}), ""]
        for b, r in lareqa.items():
            cfg = r.get("config", {})
            parts += [f"### {rep.BENCHMARK_TITLES.get(b, b)} ({cfg.get('part')} articles: "
                      f"{r['counts'].get('articles')}, pool {r['counts'].get('pool')} candidates, "
                      f"{r.get('n_settings')} X→Y settings; {r['timings'].get('total_s', 0):.1f}s)", "",
                      rep.format_detail_table(r["summary"]), "", "X→Y mAP (rows: question language):", "",
                      rep.format_matrix_table(r, "map"), ""]
            if r.get("groups"):
                parts += ["Language hold-out cells (evaluation/holdout.py):", "", rep.format_cells_table(r["groups"]), ""]
    if any(r.get("kind") == "ir" for r in report["results"].values()):
        parts += ["## Retrieval", "", rep.format_ir_table({label: flat}), ""]
    return "\n".join(parts).rstrip()


def run_compare(argv: list[str]) -> int:
    from hybrid_dist.evaluation import report as rep

    p = argparse.ArgumentParser(prog="python -m hybrid_dist.evaluate compare",
                                description="Compare two evaluation result files.")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--labels", default=None, help="two comma-separated labels (default: file names)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    labels = _csv(args.labels) or [str(args.a), str(args.b)]
    text = rep.compare_reports(rep.load_report(args.a), rep.load_report(args.b), labels[0], labels[1])
    print(text)
    if args.out:
        atomic.write_text(args.out, text + "\n")
    return 0


def run_table(argv: list[str]) -> int:
    from hybrid_dist.evaluation import report as rep

    p = argparse.ArgumentParser(prog="python -m hybrid_dist.evaluate table",
                                description="Paper-layout Markdown table over several result files.")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--labels", default=None, help="comma-separated row labels (default: model names)")
    args = p.parse_args(argv)
    labels = _csv(args.labels) or []
    rows = {}
    for i, f in enumerate(args.files):
        r = rep.load_report(f)
        label = labels[i] if i < len(labels) else (Path(r.get("model", {}).get("path") or f.stem).name or f.stem)
        while label in rows:
            label += "'"
        rows[label] = rep.flat_summary(r)
    print(rep.format_results_table(rows))
    ir = rep.format_ir_table(rows)
    if ir.count("|") > 6:
        print()
        print(ir)
    return 0


def run_build_mlqa(argv: list[str]) -> int:
    from hybrid_dist.evaluation.mlqa import MLQA_LANGUAGES, build_mlqa_r, write_squad_dir

    p = argparse.ArgumentParser(prog="python -m hybrid_dist.evaluate build-mlqa-r",
                                description="Build MLQA-R (XQuAD-R layout) from the official MLQA v1 files.")
    p.add_argument("--mlqa", type=Path, required=True, help="MLQA_V1 directory, or its test/ or dev/ folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="test", choices=("test", "dev"))
    p.add_argument("--languages", default=",".join(MLQA_LANGUAGES))
    args = p.parse_args(argv)
    parsed = build_mlqa_r(args.mlqa, _csv(args.languages), args.split)
    write_squad_dir(parsed, args.out)
    for lang, arts in parsed.items():
        n_q = sum(len(p.questions) for a in arts for p in a.paragraphs)
        n_s = sum(len(p.sentences) for a in arts for p in a.paragraphs)
        print(f"{lang}: {len(arts)} articles, {n_q} questions, {n_s} candidate sentences")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from hybrid_dist.data.records import DataError

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"compare": run_compare, "table": run_table, "build-mlqa-r": run_build_mlqa}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return run_eval(argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
