"""Launch environment detection with each launcher's variables (as those launchers set them)."""

from __future__ import annotations

import pytest

from hybrid_dist.distributed import LaunchEnvironment, detect_environment, expand_nodelist


def test_single_process():
    assert detect_environment({}) == LaunchEnvironment("single")
    # a one-task SLURM job is a single process too
    assert detect_environment({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1",
                               "SLURM_PROCID": "0"}).launcher == "single"


def test_torchrun():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "2"}
    assert detect_environment(env) == LaunchEnvironment("torchrun", 3, 1, 4, 1, 1, "10.0.0.1", 29400)


def test_accelerate_cpu_ranks():
    env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29501",
           "ACCELERATE_USE_CPU": "true", "ACCELERATE_MIXED_PRECISION": "no"}
    got = detect_environment(env)
    assert (got.launcher, got.rank, got.world_size, got.master_port) == ("accelerate", 1, 2, 29501)


def test_slurm_task_per_process():
    env = {"SLURM_JOB_ID": "12345", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "16", "SLURM_PROCID": "13",
           "SLURM_LOCALID": "5", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    got = detect_environment(env)
    assert got == LaunchEnvironment("slurm", 13, 5, 16, 1, 2, "gpu07", 20000 + 12345 % 20000)
    assert got.torch_env() == {"RANK": "13", "LOCAL_RANK": "5", "WORLD_SIZE": "16", "MASTER_ADDR": "gpu07",
                               "MASTER_PORT": "32345", "NODE_RANK": "1"}
    # an explicit MASTER_ADDR/PORT (exported by slurm/hybrid.sbatch) wins
    env.update(MASTER_ADDR="gpu08", MASTER_PORT="4000")
    assert (detect_environment(env).master_addr, detect_environment(env).master_port) == ("gpu08", 4000)


def test_accelerate_launch_inside_srun_uses_torch_variables():
    """One `accelerate launch` per node under srun: its workers carry both SLURM's variables (one
    task per node) and torch's; torch's describe the process."""
    env = {"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_NODEID": "1",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]",
           "RANK": "11", "LOCAL_RANK": "3", "WORLD_SIZE": "16", "MASTER_ADDR": "n1", "MASTER_PORT": "20009",
           "ACCELERATE_MIXED_PRECISION": "bf16"}
    got = detect_environment(env)
    assert (got.launcher, got.rank, got.local_rank, got.world_size, got.node_rank, got.num_nodes) == (
        "accelerate", 11, 3, 16, 1, 2)


def test_mpi():
    env = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    got = detect_environment(env)
    assert (got.launcher, got.rank, got.world_size) == ("mpi", 2, 4)


@pytest.mark.parametrize("nodelist, hosts", [
    ("vm", ["vm"]),
    ("gpu[01-03,7]", ["gpu01", "gpu02", "gpu03", "gpu7"]),
    ("a[8-10]-ib,login1", ["a8-ib", "a9-ib", "a10-ib", "login1"]),
    ("n[001-002],m[1,3]", ["n001", "n002", "m1", "m3"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_cpu_process_count_from_the_environment_without_reading_the_parent(monkeypatch):
    from hybrid_dist import distributed

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("HYBRID_DIST_CPU_PROCESSES", "3")
    assert distributed.requested_cpu_processes() == 3
    monkeypatch.delenv("HYBRID_DIST_CPU_PROCESSES")
    # pytest's parent is no `accelerate launch`: one process
    assert distributed.requested_cpu_processes() == 1
    monkeypatch.setenv("RANK", "0")  # already a rank of a launched group
    monkeypatch.setenv("HYBRID_DIST_CPU_PROCESSES", "3")
    assert distributed.requested_cpu_processes() == 1
