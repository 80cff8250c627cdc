"""How the trainer drives the backend a launcher chose: DDP / single process / FSDP through
Accelerate's usual loop, DeepSpeed (ZeRO-2/3) through its engine.

The trainer's step is the same under each: backward passes (several per step with gradient
accumulation or the gradient cache), then one update. What differs is who synchronises,
clips and steps, which this module hides."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from hybrid_dist.distributed import all_true
from hybrid_dist.training.reliability.nonfinite import TrainingDiverged


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def build_accelerator(collective_timeout_s: float | None = None, **kwargs) -> Accelerator:
    """An Accelerator for the launcher's backend on GPUs or on this machine's CPU.

    ``collective_timeout_s``: how long a rank waits in a collective (and the rendezvous) for a
    peer before it fails; ``None`` keeps torch's default (30 min for gloo, 10 for NCCL).

    Without CUDA, Accelerate's ``cpu=True`` runs DDP over gloo but silently drops a DeepSpeed
    plugin; DeepSpeed has a CPU accelerator of its own, so under a DeepSpeed launcher the process
    group is created by DeepSpeed over gloo instead (``cpu=False`` plus ``backend="gloo"``)."""
    cuda = torch.cuda.is_available()
    # the training config's accumulation steps win: Accelerate would let a launcher's value (env,
    # e.g. a DeepSpeed config's gradient_accumulation_steps) silently replace them
    steps = str(kwargs.get("gradient_accumulation_steps", 1))
    launcher_steps = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if launcher_steps not in (None, steps):
        print(f"launcher gradient_accumulation_steps={launcher_steps} ignored: "
              f"train.gradient_accumulation_steps={steps} applies", flush=True)
    os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = steps
    group = {} if collective_timeout_s is None else {"timeout": timedelta(seconds=collective_timeout_s)}
    if not cuda and _env_flag("ACCELERATE_USE_DEEPSPEED"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # Accelerate hands these to deepspeed.init_distributed as well (backend and timeout)
        return Accelerator(cpu=False, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo", **group)], **kwargs)
    if not cuda and _env_flag("ACCELERATE_USE_FSDP"):
        raise ValueError(
            "FSDP needs GPUs: Accelerate enables its FSDP plugin only on accelerator devices (this machine has "
            "no CUDA). Use a DDP or DeepSpeed launcher on CPU, or run the FSDP launcher on a GPU node.")
    handlers = [InitProcessGroupKwargs(**group)] if group else []
    return Accelerator(cpu=not cuda, kwargs_handlers=handlers, **kwargs)  # any launcher (torchrun, SLURM) then runs gloo on CPU


def accelerator_for(train, project_dir) -> Accelerator:
    """The run's Accelerator from ``cfg.train``: accumulation, precision, determinism, TensorBoard."""
    if train.deterministic:
        # bit-identical reruns and resumes (same hardware, same thread count); cuBLAS needs its workspace fixed
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return build_accelerator(collective_timeout_s=train.collective_timeout_s,
                             gradient_accumulation_steps=train.gradient_accumulation_steps,
                             mixed_precision=resolve_mixed_precision(train.mixed_precision),
                             log_with="tensorboard", project_dir=str(project_dir))


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def prepare(accelerator: Accelerator, model: torch.nn.Module, optimizer, max_grad_norm: float,
            micro_batch_rows: int) -> tuple[torch.nn.Module, object, StepDriver]:
    """Wrap model and optimizer for the launcher's backend; the driver that steps them."""
    configure_deepspeed(accelerator, max_grad_norm, micro_batch_rows)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, StepDriver(accelerator, model)


def configure_deepspeed(accelerator: Accelerator, max_grad_norm: float, micro_batch_rows: int) -> None:
    """Make the DeepSpeed config agree with the training config before ``prepare``: clipping is
    DeepSpeed's own (optim.max_grad_norm), and the batch-size fields only feed its logging."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["gradient_clipping"] = float(max_grad_norm) if max_grad_norm else 0.0
    ds["train_micro_batch_size_per_gpu"] = micro_batch_rows
    ds["gradient_accumulation_steps"] = accelerator.gradient_accumulation_steps
    ds["train_batch_size"] = micro_batch_rows * accelerator.gradient_accumulation_steps * accelerator.num_processes
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW, as under DDP
    ds.setdefault("steps_per_print", 10**9)


class StepDriver:
    """Backward passes and the update for one optimizer step."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module):
        self.accelerator = accelerator
        self.model = model
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        self._deferred_sync = False
        if self.deepspeed:
            # the engine steps the optimizer (update()), so torch never sees the wrapped optimizer's
            # step() before the scheduler's and warns about an order that is in fact right
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")

    @property
    def zero_stage(self) -> int:
        if not self.deepspeed:
            return 0
        return int(self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))

    @property
    def engine(self):
        return self.accelerator.deepspeed_engine_wrapped.engine

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Backward passes inside this block accumulate without synchronising (all but the last
        of the gradient cache's re-encodings)."""
        if not self.deepspeed:
            return self.accelerator.no_sync(self.model)
        return self._deepspeed_no_sync()

    @contextlib.contextmanager
    def _deepspeed_no_sync(self):
        self._deferred_sync = True
        try:
            yield
        finally:
            self._deferred_sync = False

    def backward(self, loss: torch.Tensor) -> None:
        if not self.deepspeed:
            self.accelerator.backward(loss)
            return
        # Accelerate's DeepSpeed backward would also step the engine after every call at a sync
        # boundary, i.e. once per gradient-cache chunk; here every backward goes through the engine
        # (which scales by 1/accumulation steps and reduces ZeRO partitions: no 'gradient computed
        # twice') and the engine steps once, in update()
        boundary = self.accelerator.sync_gradients and not self._deferred_sync
        self.engine.set_gradient_accumulation_boundary(is_boundary=boundary)
        self.engine.backward(loss)

    def backward_allowed(self, loss: torch.Tensor, allowed: bool = True) -> bool:
        """DeepSpeed steps inside its engine, past the point where a NaN gradient could still be
        dropped: under it a non-finite loss (on any rank) stops the backward itself."""
        if self.deepspeed and allowed:
            return all_true(bool(torch.isfinite(loss).item()))
        return allowed

    @property
    def gradients_editable(self) -> bool:
        """Gradients are plain ``.grad`` tensors between backward and update (not DeepSpeed's buffers)."""
        return not self.deepspeed

    def finish(self, optimizer, loss: torch.Tensor, loss_ok: bool, step: int, guard, max_grad_norm: float) -> float:
        """At the step's sync boundary: clip, then update on every rank or skip on every rank
        (``guard``: the non-finite decision). Returns the global gradient norm."""
        grad_norm = self.clip_grad_norm(max_grad_norm)
        if not self.deepspeed:
            if guard.finite_everywhere(step, loss, grad_norm):
                self.update(optimizer)
            else:
                self.discard(optimizer)
            return grad_norm
        if not loss_ok:
            guard.finite_everywhere(step, loss, grad_norm)  # counts the skip (or stops)
            self.discard(optimizer)
            return grad_norm
        grad_norm = self.update(optimizer)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(
                f"step {step}: non-finite gradient (norm {grad_norm}) under DeepSpeed, which has "
                "already applied it; stopping. Resume from the last checkpoint (it holds no NaN) "
                "with a lower optim.lr")
        guard.ok()
        return grad_norm

    def zero_grad(self, optimizer) -> None:
        if not self.deepspeed:
            optimizer.zero_grad(set_to_none=True)  # the DeepSpeed engine zeroes its own in step()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip (DDP/FSDP) and return the global gradient norm; under DeepSpeed the engine clips
        inside ``update`` and the norm is known only afterwards (NaN here)."""
        if self.deepspeed:
            return float("nan")
        return float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm or math.inf))

    def update(self, optimizer) -> float:
        """Apply the step; returns DeepSpeed's gradient norm (NaN under DDP: see clip_grad_norm)."""
        if not self.deepspeed:
            optimizer.step()
            return float("nan")
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def discard(self, optimizer) -> None:
        """Drop the step's gradients without updating."""
        if not self.deepspeed:
            if self.accelerator.scaler is not None:
                self.accelerator.scaler.update()  # fp16: close the scaler's unscale/step cycle, back its scale off
            return
        self.engine.zero_grad()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights for saving (a collective call under ZeRO-3, where each rank
        holds a shard); None where the unwrapped module already holds them."""
        if self.zero_stage == 3:
            return self.accelerator.get_state_dict(self.model)
        return None

    @property
    def forward_is_collective(self) -> bool:
        """ZeRO-3 gathers each layer's weights from every rank at every forward: all ranks must run
        the same forwards (evaluation cannot shard texts unevenly across ranks)."""
        return self.zero_stage == 3
