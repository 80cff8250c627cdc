"""Contrastive losses over the all-gathered pool, one per module."""

from hybrid_dist.losses.infonce import InfoNCELoss
from hybrid_dist.losses.multilingual import MultilingualContrastiveLoss

__all__ = ["InfoNCELoss", "MultilingualContrastiveLoss", "build_loss"]


def build_loss(cfg):
    """The loss a ``LossConfig`` names."""
    if cfg.name == "infonce":
        return InfoNCELoss(cfg.temperature)
    if cfg.name == "multilingual":
        return MultilingualContrastiveLoss(cfg.temperature, cfg.aggregation)
    raise ValueError(f"loss.name must be 'infonce' or 'multilingual', got {cfg.name!r}")
