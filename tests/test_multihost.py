"""Training across two hosts: a two-node SLURM cluster on this machine (slurm/local-cluster.sh
multihost-start), each host a network + UTS namespace of its own (node1 10.200.0.1, node2
10.200.0.2, joined by a veth pair), slurmctld on node1 and one slurmd per host. Every rendezvous
and collective below crosses that link: node2's namespace reaches nothing but node1.

1. `sbatch --nodes 2` hybrid.sbatch in node mode (one `accelerate launch` per host, DDP over
   gloo) trains the weights one process trains on the same global batches;
2. the same with the DeepSpeed ZeRO-2 multi-node launcher equals the DDP run;
3. kill -9 of node2's training process: the job fails (no hang), names the lost host and rank,
   and a resubmitted job resumes from the last complete checkpoint to the uninterrupted weights;
4. SIGUSR1 to a task-mode job on both hosts: one checkpoint with both hosts' ranks, requeue, resume;
5. slurm/tune.sbatch: Ray head on node1, a worker on node2, one trial on each host.

Slow (about 8 min here); needs root, `ip netns`, nsenter/unshare and slurm-wlm + munge. The
cluster is stopped and every namespace, link, daemon and /etc/hosts line removed afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"
DATA = Path(os.environ.get("HYBRID_DIST_XQUAD_R") or REPO.parent / "shared" / "data" / "xquad-r")
NETNS = {"node1": "hd-node1", "node2": "hd-node2"}
ADDR = {"node1": "10.200.0.1", "node2": "10.200.0.2"}
# dropout off: one process and several ranks compute the same function
COMMON = f"data.path={DATA} model.scratch.dropout=0.0"
# a lost peer must end the job in about this long, not at SLURM's time limit
COLLECTIVE_TIMEOUT_S = 60


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, slurmd)"
    for tool in ("ip", "nsenter", "unshare", "slurmctld", "slurmd", "munged"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2, util-linux, slurm-wlm + munge: slurm/local-cluster.sh install)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is not available here"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _leftovers() -> list[str]:
    """What the cluster could leave behind: namespaces, links, daemons, /etc/hosts lines, Ray."""
    found = [f"netns {n}" for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
             .stdout.split() if n in NETNS.values()]
    found += [f"link {line.split(':')[1].strip()}" for line in
              subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
              if " hd-v" in line]
    found += [f"/etc/hosts: {line}" for line in Path("/etc/hosts").read_text().splitlines() if "hybrid-dist-multihost" in line]
    state = os.environ.get("SLURM_MULTIHOST_DIR", "/tmp/hybrid-dist-slurm-2host")
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if (("slurmd" in cmd or "slurmctld" in cmd) and state in cmd) or "/tmp/ray-hd-mh-" in cmd:
            found.append(f"process {p.info['pid']}: {cmd[:120]}")
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = dict(os.environ, SLURM_MULTIHOST_DIR=os.environ.get("SLURM_MULTIHOST_DIR", "/tmp/hybrid-dist-slurm-2host"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("HYBRID_DIST_FAULT", None)
    try:
        start = subprocess.run([str(CLUSTER), "multihost-start"], env=env, capture_output=True, text=True, timeout=120)
        assert start.returncode == 0, f"the two-host cluster did not start:\n{start.stdout}\n{start.stderr}"
        env["SLURM_CONF"] = str(Path(env["SLURM_MULTIHOST_DIR"]) / "slurm.conf")
        yield env
    finally:
        subprocess.run([str(CLUSTER), "multihost-stop"], env=env, timeout=120)
        left = _leftovers()
        assert not left, f"the two-host cluster left these behind: {left}"


def on(node: str, *cmd: str, env, **kw) -> subprocess.CompletedProcess:
    """A command on a host (its network namespace; the controller is reachable only from there)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{NETNS[node]}", *cmd], env=env, capture_output=True,
                          text=True, timeout=kw.pop("timeout", 60), **kw)


def submit(env, script: str, name: str, *sbatch_args: str, **job_env: str) -> str:
    proc = on("node1", "sbatch", "--parsable", f"--job-name={name}", *sbatch_args, str(REPO / "slurm" / script),
              env=dict(env, **job_env), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def train_job(env, name: str, out: Path, *sbatch_args: str, overrides: str = "", **job_env: str) -> str:
    """hybrid.sbatch on both hosts; node mode (one `accelerate launch` per host) unless MODE says otherwise."""
    defaults = dict(CONFIG=str(REPO / "configs" / "tiny.yaml"), OUTPUT_DIR=str(out), MODE="node", GPUS_PER_NODE="1",
                    LAUNCH_ARGS="--mixed_precision no --dynamo_backend no",
                    OVERRIDES=f"{COMMON} train.collective_timeout_s={COLLECTIVE_TIMEOUT_S} {overrides}".strip())
    # --time: a job that hung instead of failing would end TIMEOUT, not FAILED
    return submit(env, "hybrid.sbatch", name, "--nodes=2", "--ntasks-per-node=1", "--time=10", *sbatch_args,
                  **{**defaults, **job_env})


def job_field(env, job: str, field: str) -> str | None:
    for token in on("node1", "scontrol", "show", "job", job, env=env).stdout.split():
        if token.startswith(f"{field}="):
            return token.split("=", 1)[1]
    return None


def wait_done(env, job: str, name: str, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(env, job, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    raise TimeoutError(f"job {job} still {job_field(env, job, 'JobState')} after {timeout}s:\n{log_of(name, job)[-3000:]}")


def log_of(name: str, job: str) -> str:
    path = REPO / "logs" / f"{name}-{job}.out"
    return path.read_text() if path.exists() else ""


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def assert_same_weights(got: dict, want: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """tests/test_train_cpu.py's oracle: every parameter moved identically (float32 sums in
    another order; 1e-4 / 1e-5 as there)."""
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=k)


def host_pids(node: str, needle: str) -> list[int]:
    """Processes running on a host (its network namespace) whose command line contains ``needle``."""
    pids = subprocess.run(["ip", "netns", "pids", NETNS[node]], capture_output=True, text=True).stdout.split()
    found = []
    for pid in map(int, pids):
        try:
            if needle in " ".join(psutil.Process(pid).cmdline()):
                found.append(pid)
        except psutil.Error:
            continue
    return found


def training_ranks(node: str) -> list[int]:
    """The training processes on a host: the ranks torchrun started (they have LOCAL_RANK)."""
    ranks = []
    for pid in host_pids(node, "hybrid_dist.train"):
        try:
            if "LOCAL_RANK" in psutil.Process(pid).environ():
                ranks.append(pid)
        except psutil.Error:
            continue
    return ranks


# ---------------------------------------------------------------- reference runs


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict:
    """The tiny config in one plain process: the global batches the two hosts share."""
    out = tmp_path_factory.mktemp("single") / "run"
    proc = subprocess.run([sys.executable, "-m", "hybrid_dist.train", "--config", str(REPO / "configs" / "tiny.yaml"),
                           f"train.output_dir={out}", *COMMON.split()], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                                                PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return weights(out)


@pytest.fixture(scope="module")
def ddp_two_hosts(cluster, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    name = "hd-mh-ddp"
    job = train_job(cluster, name, out)
    assert wait_done(cluster, job, name) == "COMPLETED", log_of(name, job)[-5000:]
    return out, log_of(name, job)


# ---------------------------------------------------------------- 1, 2: DDP and ZeRO-2 across hosts


def test_ddp_node_mode_across_two_hosts_equals_one_process(ddp_two_hosts, single_process):
    out, log = ddp_two_hosts
    # the head is node1, which resolves to its namespace address (not localhost)
    assert "mode=node nodes=2" in log and f"head=node1:" in log and f"({ADDR['node1']})" in log
    assert "finished with exit code 0" in log
    last = out / "checkpoints" / "step-00000006"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 6
    # one rank per host, each saved its RNG state
    assert sorted(p.name for p in last.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert_same_weights(weights(out), single_process)


def test_deepspeed_zero2_across_two_hosts_equals_ddp(cluster, ddp_two_hosts, tmp_path):
    out, name = tmp_path / "run", "hd-mh-zero2"
    job = train_job(cluster, name, out, LAUNCHER="launchers/zero2-multinode.yaml")
    assert wait_done(cluster, job, name) == "COMPLETED", log_of(name, job)[-5000:]
    # DeepSpeed's own checkpoint: one optimizer shard per rank, i.e. per host
    shards = sorted(p.name for p in (out / "checkpoints" / "step-00000006").rglob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert_same_weights(weights(out), weights(ddp_two_hosts[0]))
