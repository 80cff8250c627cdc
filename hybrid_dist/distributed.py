"""Everything that talks to torch.distributed lives here: rank/world queries and the
all-gather that keeps gradients, so the loss over the gathered pool equals the loss one process
would compute on the whole global batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _uses_nccl() -> bool:
    return dist.get_backend() == "nccl"


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0.

    Backward sums the pool gradient over ranks and hands each rank the slice of its own rows:
    every rank's loss depends on every rank's rows, and with DDP's gradient averaging the result
    is exactly the gradient of the mean loss over the global batch."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        tensor = tensor.contiguous()
        if _uses_nccl():
            out = tensor.new_empty((dist.get_world_size() * tensor.shape[0], *tensor.shape[1:]))
            dist.all_gather_into_tensor(out, tensor)
            return out
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if _uses_nccl():
            out = grad.new_empty((ctx.rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # gloo has no reduce_scatter
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order, differentiable. Every rank must pass the same shape."""
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order, for tensors that carry no gradient (labels, ids)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def comm_device() -> torch.device:
    """Where collectives' tensors must live: the current GPU under NCCL, else the CPU."""
    if is_distributed() and _uses_nccl():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (a collective call)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_strided_rows(local: torch.Tensor, n_total: int) -> torch.Tensor:
    """Rank r holds rows ``r::world`` of an ``n_total``-row array (shards may differ by one row);
    returns every row in the original order, on the CPU. A collective call."""
    if not is_distributed():
        return local.cpu()
    world = world_size()
    max_rows = (n_total + world - 1) // world
    padded = torch.zeros(max_rows, *local.shape[1:], dtype=local.dtype, device=comm_device())
    padded[: len(local)] = local.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty(n_total, *local.shape[1:], dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, n_total, world))].cpu()
    return out


def init_from_env() -> bool:
    """Join the process group a launcher (torchrun, Accelerate, SLURM via torchrun) described in
    the environment, for tools that run outside the trainer; True when this call created it."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------- launching

CPU_PROCESSES_ENV = "HYBRID_DIST_CPU_PROCESSES"  # set it to skip reading the launcher's command line
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def requested_cpu_processes() -> int:
    """How many processes ``accelerate launch --cpu --num_processes N`` asked for, when it
    started only this one: Accelerate 1.x runs multi-process CPU jobs through MPI alone, and
    without an MPI host file it starts a single process. Returns 1 in every other case."""
    import os

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes"):
        return 1
    if any(v in os.environ for v in _RANK_VARIABLES) or "MASTER_ADDR" not in os.environ:
        return 1  # already a rank of a launched group, or a single process was asked for
    if os.environ.get(CPU_PROCESSES_ENV):
        return int(os.environ[CPU_PROCESSES_ENV])
    # Accelerate exports the process count in no variable for this launcher (only
    # ACCELERATE_USE_CPU, MASTER_ADDR/PORT and thread settings), so it is read from the command
    # line of `accelerate launch`, our parent; HYBRID_DIST_CPU_PROCESSES avoids the /proc read
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return 1
    # `accelerate launch ...`, `accelerate-launch ...` or `python -m accelerate.commands.launch ...`
    starts = [i for i, a in enumerate(parent)
              if a == "launch" or a.endswith(("accelerate-launch", "accelerate.commands.launch"))]
    if not starts:
        return 1
    from accelerate.commands.launch import launch_command_parser

    args, _ = launch_command_parser().parse_known_args(parent[starts[0] + 1 :])
    n = args.num_processes
    if n is None and args.config_file:
        from accelerate.commands.config.config_args import load_config_from_file

        n = load_config_from_file(args.config_file).num_processes
    return int(n or 1)


def launch_cpu_workers(num_processes: int, module: str, argv: list[str]) -> int:
    """Run ``python -m module argv`` as ``num_processes`` gloo ranks on this machine (through
    torch.distributed.run, the launcher Accelerate itself uses for GPUs); returns its exit code."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={num_processes}",
           f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
           f"--master_port={os.environ.get('MASTER_PORT', '29500')}", "-m", module, *argv]
    return subprocess.call(cmd)


# ---------------------------------------------------------------------- environment detection


@dataclass(frozen=True)
class LaunchEnvironment:
    """Who started this process and where it sits in the job."""

    launcher: str  # "torchrun" (also Accelerate's GPU launcher), "accelerate", "slurm", "mpi" or "single"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def torch_env(self) -> dict[str, str]:
        """The variables torch.distributed's env:// rendezvous (and Accelerate) read."""
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port),
                "NODE_RANK": str(self.node_rank)}


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ("gpu[01-03,7],login1") as names, the first being the head;
    what `scontrol show hostnames` prints, without needing scontrol."""
    hosts, i, n = [], 0, len(nodelist)
    while i < n:
        j = i
        depth = 0
        while j < n and (depth or nodelist[j] != ","):
            depth += {"[": 1, "]": -1}.get(nodelist[j], 0)
            j += 1
        item, i = nodelist[i:j], j + 1
        if "[" not in item:
            hosts.append(item)
            continue
        prefix, ranges = item.split("[", 1)
        ranges, suffix = ranges.split("]", 1)
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for k in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{str(k).zfill(len(lo))}{suffix}")
    return hosts


def _slurm_port(env) -> int:
    # one port per job, so two jobs sharing a node never collide
    return int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)


def detect_environment(env=None) -> LaunchEnvironment:
    """Read the launcher's variables. Precedence: explicit torch variables (torchrun, Accelerate,
    `accelerate launch` inside `srun`), then a SLURM job step with several tasks (one process per
    task), then MPI, else a single process."""
    import os

    env = os.environ if env is None else env
    slurm_nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else (
            "accelerate" if any(k.startswith("ACCELERATE_") for k in env) else "torchrun")
        world = int(env["WORLD_SIZE"])
        return LaunchEnvironment(
            launcher, int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"])), world,
            int(env.get("NODE_RANK", env.get("GROUP_RANK", env.get("SLURM_NODEID", "0")))),
            int(env.get("NUM_NODES", slurm_nodes if "SLURM_JOB_ID" in env else 1)),
            env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")))
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
        head = expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost"))[0]
        return LaunchEnvironment(
            "slurm", int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0")),
            int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))), int(env.get("SLURM_NODEID", "0")),
            slurm_nodes, env.get("MASTER_ADDR", head), _slurm_port(env))
    for size, rank, local in (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
                              ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID")):
        if int(env.get(size, "1")) > 1:
            return LaunchEnvironment("mpi", int(env[rank]), int(env.get(local, "0")), int(env[size]),
                                     master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                                     master_port=int(env.get("MASTER_PORT", "29500")))
    return LaunchEnvironment("single")


def export_torch_env(launch: LaunchEnvironment | None = None) -> LaunchEnvironment:
    """Make a SLURM task (``srun python -m hybrid_dist.train``, one process per task) look like a
    torchrun rank, so Accelerate and torch.distributed's env:// rendezvous find their variables."""
    import os

    launch = launch or detect_environment()
    if launch.launcher == "slurm":
        os.environ.update(launch.torch_env())
    return launch
