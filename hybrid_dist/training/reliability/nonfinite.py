"""Non-finite losses and gradients: skip the step, count how many in a row, stop past a limit;
and the check that keeps non-finite weights out of checkpoints."""

from __future__ import annotations

import math

import torch

from hybrid_dist.training.reliability.collective import ReportedError


class TrainingDiverged(ReportedError):
    pass


class NonFiniteSteps:
    """``limit`` (train.max_bad_steps) skipped steps in a row are tolerated; one more stops
    training. A finite step resets the run."""

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"train.max_bad_steps must be >= 0, got {limit}")
        self.limit = limit
        self.in_a_row = 0
        self.total = 0
        self.first_in_row: int | None = None

    def ok(self) -> None:
        self.in_a_row, self.first_in_row = 0, None

    def skipped(self, step: int, loss: float, grad_norm: float) -> str:
        """Record a skipped step; returns the log line, or raises ``TrainingDiverged``."""
        self.in_a_row += 1
        self.total += 1
        self.first_in_row = self.first_in_row or step
        what = f"step {step}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'} " \
               f"(loss {loss:.4g}, grad norm {grad_norm:.4g})"
        if self.in_a_row > self.limit:
            steps = f"steps {self.first_in_row}-{step}" if self.in_a_row > 1 else f"step {step}"
            raise TrainingDiverged(
                f"{what}: {self.in_a_row} non-finite step(s) in a row ({steps}), more than "
                f"train.max_bad_steps={self.limit}; stopping. The weights are those of the last good step; the "
                f"newest checkpoint holds no NaN. Lower optim.lr or inspect those steps' batches in batches.jsonl")
        return f"{what}; optimizer step skipped ({self.in_a_row} in a row, train.max_bad_steps={self.limit})"


class NonFiniteGuard:
    """The step's one decision, taken alike on every rank (or DDP's replicas drift): update, or
    skip a step whose loss or gradient is not finite somewhere, within ``train.max_bad_steps``."""

    def __init__(self, accelerator, limit: int):
        self.accelerator = accelerator
        self.steps = NonFiniteSteps(limit)

    @property
    def total(self) -> int:
        return self.steps.total

    def ok(self) -> None:
        self.steps.ok()

    def finite_everywhere(self, step: int, loss: torch.Tensor, grad_norm: float) -> bool:
        """One small all-reduce; counts a skipped step (raising ``TrainingDiverged`` past the limit)."""
        acc = self.accelerator
        # under fp16 an inf gradient is the GradScaler's routine overflow, not a bad step
        grad_ok = math.isfinite(grad_norm) or acc.scaler is not None
        local = torch.tensor([0.0 if grad_ok and torch.isfinite(loss).item() else 1.0, float(loss)], device=acc.device)
        bad, loss_sum = acc.reduce(local, "sum").tolist()
        if not bad:
            self.steps.ok()
            return True
        message = self.steps.skipped(step, loss_sum / acc.num_processes, grad_norm)  # raises past the limit
        acc.print(message)
        acc.log({"train/skipped_steps": self.steps.total}, step=step)
        return False


def nonfinite_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Names of parameters (and optimizer state tensors) holding NaN or inf."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for param, state in optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                    bad.append(f"optimizer state {key} of {names.get(id(param), '?')}")
    return bad
