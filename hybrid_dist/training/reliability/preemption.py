"""Preemption: a signal (SLURM's ``--signal=USR1@120`` before the time limit, SIGTERM on
preemption or ``scancel``) asks the trainer to checkpoint and leave at the next step boundary.

The signal may reach only some ranks, or reach them during different steps, so the decision is
collective: every rank reports its flag each step and all stop after the same step."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from hybrid_dist import atomic, distributed

# EX_TEMPFAIL: "try again later". slurm/hybrid.sbatch requeues the job on this exit code.
PREEMPTED_EXIT_CODE = 75
DEFAULT_SIGNALS = ("SIGUSR1", "SIGTERM")
PREEMPTED_FILE = "PREEMPTED"


class PreemptionWatcher:
    def __init__(self, signal_names: tuple[str, ...] | list[str] = DEFAULT_SIGNALS):
        self.received: str | None = None
        self._previous = {}
        for name in signal_names:
            sig = getattr(signal, name, None)
            if sig is None:
                raise ValueError(f"train.preemption_signals: unknown signal {name!r}")
            self._previous[sig] = signal.signal(sig, self._on_signal)
        from hybrid_dist.launch import register_rank

        register_rank()  # under hybrid-dist-launch: the signals it receives now come here

    def _on_signal(self, signum, frame) -> None:
        # only set a flag: checkpointing inside a signal handler could interrupt a collective
        self.received = signal.Signals(signum).name

    def should_stop(self) -> bool:
        """True on every rank when any rank has received a signal. A collective call."""
        if not distributed.is_distributed():
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else 1], device=distributed.comm_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def record(self, accelerator, out: Path, step: int) -> None:
        """After the checkpoint of ``step``: the job script's evidence (exit codes can be lost when a
        launcher kills the slower ranks); slurm/hybrid.sbatch requeues when it finds this file."""
        signal_name = self.received or "signal on another rank"
        if accelerator.is_main_process:
            atomic.write_json(out / PREEMPTED_FILE, {"step": step, "signal": signal_name})
        accelerator.print(f"preempted ({signal_name}) at step {step}: checkpoint written; resume with train.resume=auto")

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
