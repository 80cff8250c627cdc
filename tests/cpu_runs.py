"""Starting, and killing, real training runs for the reliability tests: `accelerate launch --cpu`
for several processes (gloo ranks), plain `python -m hybrid_dist.train` for one."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYBRID_DIST_XQUAD_R") or REPO.parent / "shared" / "data" / "xquad-r")
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, out: Path, *overrides: str, launcher: str | None = None) -> list[str]:
    """``launcher``: a file in launchers/ (DeepSpeed on CPU), else plain `accelerate launch --cpu`."""
    args = ["-m", "hybrid_dist.train", "--config", str(REPO / "configs" / "tiny.yaml"), f"train.output_dir={out}",
            f"data.path={DATA}", *overrides]
    if processes == 1 and launcher is None:
        return [sys.executable, *args]
    where = ["--config_file", str(REPO / "launchers" / launcher)] if launcher else ["--cpu"]
    # --main_process_port: accelerate launch would otherwise set MASTER_PORT=29500 whatever the environment says
    return [shutil.which("accelerate") or "accelerate", "launch", *where, "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *args]


def environment(fault: str | None = None) -> dict[str, str]:
    # one thread per rank: a fixed thread count is part of what makes runs bit-identical
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("HYBRID_DIST_FAULT", None)
    if fault:
        env["HYBRID_DIST_FAULT"] = fault
    return env


def run(processes: int, out: Path, *overrides: str, expect: int | None = 0,
        fault: str | None = None, launcher: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(processes, out, *overrides, launcher=launcher), cwd=REPO, env=environment(fault), capture_output=True,
                          text=True, timeout=TIMEOUT)
    if expect is not None:
        assert proc.returncode == expect, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def worker_processes(launcher_pid: int) -> list[psutil.Process]:
    """The training ranks under a launcher: its descendants that torch.distributed.run started."""
    found = []
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if "LOCAL_RANK" in child.environ() and "hybrid_dist.train" in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


def run_until_hung_then_kill(processes: int, out: Path, fault: str, victim: str, *overrides: str) -> dict:
    """Start a run whose ``fault`` makes one rank hang, then ``kill -9`` a rank: the hung one
    (``victim="hung"``) or another (``"peer"``, which is then waiting in a collective). Waits for
    the launcher to tear the rest down. Returns the output, the exit code and who was killed."""
    proc = subprocess.Popen(command(processes, out, *overrides), cwd=REPO, env=environment(fault),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    output, hung_pid, deadline = [], None, time.time() + TIMEOUT
    try:
        while hung_pid is None:
            line = lines.get(timeout=max(1.0, deadline - time.time()))
            assert line is not None, "the run ended before the fault fired:\n" + "".join(output)[-4000:]
            output.append(line)
            if line.startswith("fault injection:"):
                hung_pid = int(line.split("(pid ")[1].split(")")[0])
        workers = worker_processes(proc.pid)
        assert len(workers) == processes and hung_pid in {w.pid for w in workers}, (workers, hung_pid)
        target = hung_pid if victim == "hung" else next(w.pid for w in workers if w.pid != hung_pid)
        os.kill(target, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:  # our own process group: never leave ranks behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    while (line := lines.get(timeout=30)) is not None:
        output.append(line)
    survivors = [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    return {"output": "".join(output), "returncode": proc.returncode, "killed": target, "survivors": survivors}


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def batch_log(out: Path) -> list[tuple[int, str]]:
    import json

    return [(row["step"], row["batch"]) for row in map(json.loads, (out / "batches.jsonl").read_text().splitlines())]
