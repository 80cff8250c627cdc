"""Zero-shot evaluation: LAReQA-style answer-sentence retrieval (XQuAD-R, MLQA-R) with language
bias, ad-hoc retrieval benchmarks (BEIR, MIRACL, MS MARCO), dense search, reports.

The training loop uses :func:`evaluate_xquad_r` (held-out articles) and
:func:`format_results_table`; the CLI is ``python -m hybrid_dist.evaluate``. See
``docs/evaluation.md``."""

from __future__ import annotations

from hybrid_dist.evaluation.encode import encode_texts, model_fingerprint
from hybrid_dist.evaluation.ir import IRDataset, IRResult, evaluate_ir, load_beir, load_miracl, load_msmarco
from hybrid_dist.evaluation.lareqa import (
    MLQA_R_LANGUAGES,
    XQUAD_R_LANGUAGES,
    LareqaBenchmark,
    LareqaResult,
    build_lareqa,
    evaluate_lareqa,
    evaluate_mlqa_r,
    evaluate_xquad_r,
    load_lareqa,
    score_lareqa,
)
from hybrid_dist.evaluation.metrics import language_bias, rank_metrics, trec_evaluate
from hybrid_dist.evaluation.mlqa import build_mlqa_r, write_squad_dir
from hybrid_dist.evaluation.report import (
    compare_reports,
    format_detail_table,
    format_results_table,
    is_better,
    load_report,
    make_report,
    metric_direction,
    plot_heatmap,
    write_json,
)
from hybrid_dist.evaluation.search import DenseIndex

__all__ = [
    "DenseIndex",
    "IRDataset",
    "IRResult",
    "LareqaBenchmark",
    "LareqaResult",
    "MLQA_R_LANGUAGES",
    "XQUAD_R_LANGUAGES",
    "build_lareqa",
    "build_mlqa_r",
    "compare_reports",
    "encode_texts",
    "evaluate_ir",
    "evaluate_lareqa",
    "evaluate_mlqa_r",
    "evaluate_xquad_r",
    "format_detail_table",
    "format_results_table",
    "is_better",
    "language_bias",
    "load_beir",
    "load_lareqa",
    "load_miracl",
    "load_msmarco",
    "load_report",
    "make_report",
    "metric_direction",
    "model_fingerprint",
    "plot_heatmap",
    "rank_metrics",
    "score_lareqa",
    "trec_evaluate",
    "write_json",
    "write_squad_dir",
]
