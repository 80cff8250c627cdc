"""What sealing a checkpoint with SHA-256 checksums costs: a real Accelerate checkpoint of a model
(weights, AdamW moments after one step, scheduler, RNG states) is written, sealed (fsync + one
checksum read of every file) and verified (one checksum read), each timed; repeated ``--repeats``
times, medians printed as a Markdown row.

    python benchmarks/checkpoint_checksums.py --model ~/.cache/hybrid_dist/models/multilingual-e5-small

``--cold`` drops the page cache before verifying (root only), as a resume after a reboot sees it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybrid_dist.training.reliability import checkpoints as ckpt  # noqa: E402


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Hugging Face model directory or hub id")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each verification")
    args = parser.parse_args(argv)

    from accelerate import Accelerator
    from transformers import AutoModel

    acc = Accelerator(cpu=not torch.cuda.is_available())
    model = AutoModel.from_pretrained(args.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(scheduler)
    ids = torch.randint(5, 1000, (2, 16), device=acc.device)
    model(input_ids=ids).last_hidden_state.mean().backward()
    optimizer.step()  # AdamW moments exist: the checkpoint has its real size
    params = sum(p.numel() for p in model.parameters())

    root = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    write_s, seal_s, verify_s, sizes = [], [], [], []
    cold = False
    for i in range(args.repeats):
        tmp, final = ckpt.tmp_dir(root, i), ckpt.step_dir(root, i)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        acc.save_state(str(tmp))
        (tmp / ckpt.STATE_FILE).write_text("{}")
        t1 = time.perf_counter()
        ckpt.publish(tmp, final)
        t2 = time.perf_counter()
        if args.cold:
            cold = drop_page_cache()
        t3 = time.perf_counter()
        assert ckpt.verify(final) is None
        t4 = time.perf_counter()
        write_s.append(t1 - t0)
        seal_s.append(t2 - t1)
        verify_s.append(t4 - t3)
        sizes.append(sum(p.stat().st_size for p in final.rglob("*") if p.is_file()))
        shutil.rmtree(final)
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)

    size = statistics.median(sizes)
    seal, verify, write = statistics.median(seal_s), statistics.median(verify_s), statistics.median(write_s)
    print(f"model: {args.model} ({params / 1e6:.1f} M parameters); checkpoint {size / 2**20:,.0f} MiB; "
          f"device {acc.device}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"medians of {args.repeats}")
    print("| checkpoint | write (save_state) | seal (fsync + SHA-256 read) | verify (SHA-256 read"
          f"{', cold cache' if cold else ', warm cache'}) | SHA-256 throughput |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {size / 2**20:,.0f} MiB | {write:.2f} s | {seal:.2f} s | {verify:.2f} s | "
          f"{size / 2**20 / verify:,.0f} MiB/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
