"""hybrid-dist: distributed hybrid-batch contrastive training of multilingual dense retrievers."""

__version__ = "0.1.0"
