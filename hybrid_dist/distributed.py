"""Everything that talks to torch.distributed lives here: rank/world queries and the
all-gather that keeps gradients, so the loss over the gathered pool equals the loss one process
would compute on the whole global batch."""

from __future__ import annotations

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
