"""What a run reports while it trains: TensorBoard scalars, a progress bar, and one line per step
in ``batches.jsonl`` naming the global batch it trained on (so resumes can be audited)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hybrid_dist.config import flatten

BATCH_LOG = "batches.jsonl"


class TrainingLog:
    def __init__(self, accelerator, cfg, out: Path, start_step: int):
        self.accelerator, self.cfg = accelerator, cfg
        self.modes = Counter()  # step modes: mono, cross, xx, multilingual
        self.batch_log = None
        if accelerator.is_main_process and cfg.train.log_batches:
            # a resumed run appends (replayed steps appear twice), a fresh one starts the log anew
            self.batch_log = open(out / BATCH_LOG, "a" if start_step else "w", encoding="utf-8")
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(cfg).items()}
        accelerator.init_trackers("tensorboard", config=hparams)
        self.progress = None
        if accelerator.is_main_process and cfg.train.progress_bar:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=cfg.train.max_steps, initial=start_step, desc="train", unit="step")

    def step(self, step: int, micro_batches, loss, scheduler, grad_norm: float) -> None:
        mode = micro_batches[0].mode
        self.modes[mode] += 1
        if self.batch_log is not None:
            self.batch_log.write(json.dumps({"step": step, "mode": mode, "batch": micro_batches[0].batch_digest}) + "\n")
            self.batch_log.flush()
        t = self.cfg.train
        if step % t.log_every == 0 or step == t.max_steps:
            mean_loss = self.accelerator.reduce(loss.detach().reshape(1), "mean").item()
            self.accelerator.log({
                "train/loss": mean_loss,
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": grad_norm,
                "train/mono_fraction": self.modes["mono"] / max(1, sum(self.modes.values())),
                "train/batch_is_mono": float(mode == "mono"),
            }, step=step)
            if self.progress is not None:
                self.progress.set_postfix(loss=f"{mean_loss:.4f}", mode=mode)
        if self.progress is not None:
            self.progress.update(1)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.batch_log is not None:
            self.batch_log.close()
            self.batch_log = None
