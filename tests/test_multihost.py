"""Training across two hosts: a two-node SLURM cluster on this machine (slurm/local-cluster.sh
multihost-start), each host a network + UTS namespace of its own (node1 10.200.0.1, node2
10.200.0.2, joined by a veth pair), slurmctld on node1 and one slurmd per host. Every rendezvous
and collective below crosses that link: node2's namespace reaches nothing but node1.

1. `sbatch --nodes 2` hybrid.sbatch in node mode (one `accelerate launch` per host, DDP over
   gloo) trains the weights one process trains on the same global batches;
2. the same with the DeepSpeed ZeRO-2 multi-node launcher, two processes per host, equals the DDP run;
3. kill -9 of node2's training process: the job fails (no hang), names the lost host and rank,
   and a resubmitted job resumes from the last complete checkpoint to the uninterrupted weights;
   a rank on node2 that hangs with its connections open ends the job after train.collective_timeout_s;
4. SIGUSR1 to a task-mode job on both hosts: one checkpoint with both hosts' ranks, requeue, resume;
5. slurm/tune.sbatch: Ray head on node1, a worker on node2, one trial on each host.

Slow (about 8 min here); needs root, `ip netns`, nsenter/unshare and slurm-wlm + munge. The
cluster is stopped and every namespace, link, daemon and /etc/hosts line removed afterwards."""

from __future__ import annotations

import json
import os
import re
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


pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200),  # a cluster start, jobs and a requeue
              pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


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
        # job logs of this session only: the job ids start at 1 again with every new cluster, and
        # hybrid.sbatch appends to logs/%x-%j.out
        env["HD_TEST_LOGS"] = str(tmp_path_factory.mktemp("joblogs"))
        yield env
    finally:
        subprocess.run([str(CLUSTER), "multihost-stop"], env=env, timeout=120)
        left = _leftovers()
        assert not left, f"the two-host cluster left these behind: {left}"


def on(node: str, *cmd: str, env, **kw) -> subprocess.CompletedProcess:
    """A command on a host (its network namespace; the controller is reachable only from there)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{NETNS[node]}", *cmd], env=env, capture_output=True,
                          text=True, timeout=kw.pop("timeout", 60), **kw)


LOGS: dict[str, Path] = {}  # job name -> its log directory


def submit(env, script: str, name: str, *sbatch_args: str, **job_env: str) -> str:
    LOGS[name] = Path(env["HD_TEST_LOGS"])
    proc = on("node1", "sbatch", "--parsable", f"--job-name={name}", f"--output={LOGS[name]}/%x-%j.out",
              *sbatch_args, str(REPO / "slurm" / script), env=dict(env, **job_env), cwd=REPO)
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
    hosts = on("node1", "sinfo", "-N", "-o", "%N %T %E", env=env).stdout
    raise TimeoutError(f"job {job} still {job_field(env, job, 'JobState')} (reason {job_field(env, job, 'Reason')}) "
                       f"after {timeout}s; hosts:\n{hosts}\n{log_of(name, job)[-3000:]}")


def log_of(name: str, job: str) -> str:
    path = LOGS[name] / f"{name}-{job}.out"
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
def ddp_two_hosts(cluster, tmp_path_factory) -> dict:
    """The tiny config as a DDP job on both hosts, and (at the same time, to save a minute) in one
    plain process on the same global batches: the oracle."""
    base = tmp_path_factory.mktemp("ddp")
    single = subprocess.Popen([sys.executable, "-m", "hybrid_dist.train", "--config", str(REPO / "configs" / "tiny.yaml"),
                               f"train.output_dir={base / 'single'}", *COMMON.split()], cwd=REPO, env=cluster,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        name = "hd-mh-ddp"
        job = train_job(cluster, name, base / "ddp")
        assert wait_done(cluster, job, name) == "COMPLETED", log_of(name, job)[-5000:]
        single_out, _ = single.communicate(timeout=300)
    finally:
        if single.poll() is None:
            single.kill()
            single.wait()
    assert single.returncode == 0, single_out[-4000:]
    return {"out": base / "ddp", "log": log_of(name, job), "single": weights(base / "single")}


# ---------------------------------------------------------------- 1, 2: DDP and ZeRO-2 across hosts


def test_ddp_node_mode_across_two_hosts_equals_one_process(ddp_two_hosts):
    out, log = ddp_two_hosts["out"], ddp_two_hosts["log"]
    # the head is node1, which resolves to its namespace address (not localhost)
    assert "mode=node nodes=2" in log and "head=node1:" in log and f"({ADDR['node1']})" in log
    assert "finished with exit code 0" in log
    last = out / "checkpoints" / "step-00000006"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 6
    # one rank per host, each saved its RNG state
    assert sorted(p.name for p in last.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert_same_weights(weights(out), ddp_two_hosts["single"])


def test_deepspeed_zero2_across_two_hosts_equals_ddp(cluster, ddp_two_hosts, tmp_path):
    """Two processes per host here (4 ranks, 2 pairs each): ranks on the same host and across hosts."""
    out, name = tmp_path / "run", "hd-mh-zero2"
    job = train_job(cluster, name, out, LAUNCHER="launchers/zero2-multinode.yaml", GPUS_PER_NODE="2")
    assert wait_done(cluster, job, name) == "COMPLETED", log_of(name, job)[-5000:]
    assert "mode=node nodes=2 tasks=2 gpus/node=2" in log_of(name, job)
    # DeepSpeed's own checkpoint: one optimizer shard per rank
    shards = sorted(p.name for p in (out / "checkpoints" / "step-00000006").rglob("*optim_states.pt"))
    assert len(shards) == 4, shards
    assert_same_weights(weights(out), weights(ddp_two_hosts["out"]))


# ---------------------------------------------------------------- 3: a lost node


def test_killed_node_ends_the_job_and_a_resubmitted_job_resumes_to_the_same_weights(cluster, ddp_two_hosts, tmp_path):
    """Rank 1 (node2) stops before step 5 (after the checkpoint of step 3), rank 0 waits for it in
    a collective; then every training process on node2 is killed with SIGKILL."""
    out, name = tmp_path / "run", "hd-mh-nodefail"
    job = train_job(cluster, name, out, HYBRID_DIST_FAULT="hang@5:r1")
    deadline = time.time() + 240
    while "fault injection: rank 1" not in log_of(name, job):
        assert time.time() < deadline and job_field(cluster, job, "JobState") in ("PENDING", "RUNNING"), \
            log_of(name, job)[-4000:]
        time.sleep(0.5)
    victims, survivors = training_ranks("node2"), training_ranks("node1")
    assert len(victims) == 1 and len(survivors) == 1, (victims, survivors)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # the job fails by itself, long before its 10-minute limit (FAILED, not TIMEOUT)
    assert wait_done(cluster, job, name, timeout=240) == "FAILED", log_of(name, job)[-4000:]
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in survivors)
    log = log_of(name, job)
    # the surviving rank saw the peer on node2 go away; the job's last words name host and rank
    assert f"Connection closed by peer [{ADDR['node2']}]" in log
    summary = next(line for line in log.splitlines() if line.startswith("[hybrid.sbatch] training failed"))
    assert "node2: task 1" in summary and "host node2" in summary and "rank 1" in summary and "SIGKILL" in summary, summary
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003"]

    # resubmitted without the fault: resumes from step 3 and ends where the uninterrupted run ended
    name = "hd-mh-resubmit"
    job = train_job(cluster, name, out)
    assert wait_done(cluster, job, name) == "COMPLETED", log_of(name, job)[-5000:]
    log = log_of(name, job)
    assert "resumed from" in log and "step-00000003" in log
    assert_same_weights(weights(out), weights(ddp_two_hosts["out"]), rtol=1e-5, atol=1e-6)


def test_silently_hung_node_ends_the_job_after_the_collective_timeout(cluster, tmp_path):
    """node2's rank stops before step 5 and keeps its connections open (a host that froze, not
    one that died): node1's rank gives up after train.collective_timeout_s, not at the time limit."""
    out, name = tmp_path / "run", "hd-mh-hung"
    job = train_job(cluster, name, out, overrides="train.collective_timeout_s=15", HYBRID_DIST_FAULT="hang@5:r1")
    assert wait_done(cluster, job, name, timeout=240) == "FAILED", log_of(name, job)[-4000:]
    log = log_of(name, job)
    assert "fault injection: rank 1" in log
    assert "Timed out waiting 15000ms" in log  # gloo, on node1's rank: the configured timeout applied
    summary = next(line for line in log.splitlines() if line.startswith("[hybrid.sbatch] training failed"))
    assert "host node1, rank 0" in summary, summary  # the rank that timed out; srun then stopped node2
    assert training_ranks("node1") == [] and training_ranks("node2") == []


# ---------------------------------------------------------------- 4: preemption across hosts


@pytest.mark.parametrize("mode", ["task", "node"])
def test_preempted_job_checkpoints_on_both_hosts_requeues_and_resumes(cluster, tmp_path, mode):
    """hybrid.sbatch sent SIGUSR1, as SLURM does before the time limit, in task mode (one `srun`
    task per host, ranks from SLURM_PROCID) and node mode (one `hybrid-dist-launch accelerate
    launch` per host): one checkpoint holding both hosts' ranks, the step ends with exit 75 (node
    mode: through the wrapper, as accelerate launch cannot pass it on), a requeue, and the requeued
    job finishes from that checkpoint."""
    out, name = tmp_path / "run", f"hd-mh-preempt-{mode}"
    job = train_job(cluster, name, out, MODE=mode,
                    overrides="train.max_steps=240 train.save_every=40 sampler.batch_size=16 "
                              "model.scratch.hidden_size=64 model.scratch.intermediate_size=128")
    first = out / "checkpoints" / "step-00000040"
    deadline = time.time() + 240
    while not first.exists():
        assert time.time() < deadline, "no checkpoint at step 40"
        assert job_field(cluster, job, "JobState") in ("PENDING", "RUNNING"), log_of(name, job)[-4000:]
        time.sleep(0.2)
    # both ranks run, one per host
    assert len(host_pids("node1", "hybrid_dist.train")) >= 1 and len(host_pids("node2", "hybrid_dist.train")) >= 1
    on("node1", "scancel", "--signal=USR1", job, env=cluster, check=True)
    deadline = time.time() + 180
    while job_field(cluster, job, "Restarts") == "0" or job_field(cluster, job, "JobState") != "PENDING":
        assert time.time() < deadline and job_field(cluster, job, "JobState") in ("RUNNING", "PENDING", "COMPLETING"), \
            log_of(name, job)[-4000:]
        time.sleep(0.2)
    # the preemption checkpoint holds both hosts' ranks (rank 0 on node1, rank 1 on node2); looked
    # at now, before the resumed run's newer checkpoints may rotate it out
    preempted_at = int(log_of(name, job).split("preempted (SIGUSR1) at step ")[1].split(":")[0])
    sealed = out / "checkpoints" / f"step-{preempted_at:08d}"
    assert sorted(p.name for p in sealed.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    # as in tests/test_slurm.py: lift SLURM's requeue hold only once both hosts cleaned up the first run
    deadline = time.time() + 120
    while on("node1", "sinfo", "--noheader", "-N", "--format=%T", env=cluster).stdout.split() != ["idle", "idle"]:
        assert time.time() < deadline, "hosts not idle after the requeue"
        time.sleep(0.2)
    time.sleep(2)
    on("node1", "scontrol", "update", f"JobId={job}", "StartTime=now", env=cluster, check=True)
    assert wait_done(cluster, job, name, timeout=420) == "COMPLETED", log_of(name, job)[-4000:]

    log = log_of(name, job)
    assert int(job_field(cluster, job, "Restarts")) == 1
    assert f"mode={mode} nodes=2" in log
    # srun --kill-on-bad-exit ends the slower host's rank once the faster one exits 75, so that
    # rank's 75 may come back as 143; hybrid.sbatch requeues on the trainer's marker either way
    assert re.search(r"\[hybrid\.sbatch\] preempted \(exit (75|143)\): checkpoint written; requeueing", log)
    assert log.count("Exited with exit code 75") >= 1  # at least one rank ended with the preemption code
    # once per host: each host's first rank reports (Accelerate prints on local main processes),
    # both at the same step, and only in the first run
    assert re.findall(r"preempted \(SIGUSR1\) at step (\d+)", log) == [str(preempted_at)] * 2
    assert log.count(f"requeueing job {job}") == 1
    assert 40 <= preempted_at < 240
    resumed_part = log.split(f"job {job} restart 1")[1]
    assert f"step-{preempted_at:08d}" in resumed_part and "trained to step 240" in resumed_part
    state = json.loads((out / "checkpoints" / "step-00000240" / "trainer_state.json").read_text())
    assert state["step"] == 240


# ---------------------------------------------------------------- 5: Ray across hosts


def test_tune_sbatch_runs_one_trial_on_each_host(cluster, tmp_path):
    """slurm/tune.sbatch on the two-host allocation: Ray's head on node1, a worker on node2. Each
    trial needs 1.75 of a host's 2 CPUs (2 Train workers x 0.75 + 0.25 for the trial) and runs
    whole on one host (STRICT_PACK), so two concurrent trials must use both hosts."""
    pytest.importorskip("ray")
    name = "hd-mh-tune"
    ray_tmp = f"/tmp/ray-hd-mh-{os.getpid()}"  # what _leftovers() looks for
    job = submit(cluster, "tune.sbatch", name, "--nodes=2", SEARCH=str(REPO / "ray_configs" / "tiny-cpu.yaml"),
                 STORAGE=str(tmp_path), RAY_TMPDIR=ray_tmp,
                 OVERRIDES="search.num_samples=2 search.max_concurrent_trials=2 resources.cpus_per_worker=0.75 "
                           "resources.placement_strategy=STRICT_PACK overrides.train.max_steps=20")
    assert wait_done(cluster, job, name, timeout=420) == "COMPLETED", log_of(name, job)[-5000:]
    log = log_of(name, job)
    assert f"head node1 ({ADDR['node1']}:" in log and "[tune.sbatch] search finished" in log
    search = tmp_path / "tiny-cpu"
    assert (search / "best.yaml").exists()
    # Tune stamps every reported result with the host and address of the process that ran the trial
    where = {}
    for result in search.glob("run_trial_*/result.json"):
        last = json.loads(result.read_text().splitlines()[-1])
        where[last["trial_id"]] = (last["hostname"], last["node_ip"])
    assert sorted(where.values()) == [("node1", ADDR["node1"]), ("node2", ADDR["node2"])], where
    # both trials trained (their rows in the search's table)
    rows = json.loads((search / "trials.json").read_text())
    rows = rows["trials"] if isinstance(rows, dict) else rows
    assert sorted(r["trial_id"] for r in rows) == sorted(where) and all(r["step"] >= 10 for r in rows), rows
    # Ray stopped on both hosts
    left = [pid for node in NETNS for pid in host_pids(node, "ray")]
    assert not left, [" ".join(psutil.Process(p).cmdline())[:200] for p in left if psutil.pid_exists(p)]
