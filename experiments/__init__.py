"""Issue #9: the controlled study of batch sampling strategies (zero-shot, X-X mono, X-Y cross,
hybrid, multilingual, hybrid + multilingual loss) and the alpha sweep, on XQuAD-R held-out
articles. ``python -m experiments.run --help``; see experiments/README.md."""
