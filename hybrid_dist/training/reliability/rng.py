"""Per-rank random state on resume.

Accelerate's ``load_state`` restores each rank's ``random_states_<rank>.pkl`` but only logs (at
info level) when it cannot, which would silently break an exact resume; ``restore`` reloads the
file itself and fails loudly. A rank with no file (the run now has more processes than the one
that saved) gets a seed derived from (seed, step, rank), so even that resume is reproducible."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from hybrid_dist.training.reliability.checkpoints import CheckpointError


def state_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"random_states_{rank}.pkl"


def restore(checkpoint: Path, rank: int, seed: int, step: int) -> bool:
    """Set python, numpy, torch (and CUDA) RNGs from this rank's saved state; returns False when
    there was none and the rank was reseeded instead."""
    path = state_file(checkpoint, rank)
    if not path.exists():
        reseed(seed, step, rank)
        return False
    try:
        states = torch.load(path, weights_only=False)  # our own file: python/numpy states are pickles
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except Exception as e:  # noqa: BLE001 - any failure here means the resume would not be exact
        raise CheckpointError(f"{path}: cannot restore the random state ({type(e).__name__}: {e})") from None
    return True


def reseed(seed: int, step: int, rank: int) -> None:
    derived = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)  # seeds CUDA too
