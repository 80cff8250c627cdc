"""slurm/hybrid.sbatch on a real single-node SLURM cluster (slurmctld + slurmd + munged started
by slurm/local-cluster.sh): a 2-task CPU job trains and checkpoints; a job sent the preemption
signal mid-run checkpoints, requeues itself and finishes from that checkpoint.

Needs root and Debian's slurm-wlm and munge (`slurm/local-cluster.sh install`; .ci/run does it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"
DATA = REPO.parent / "shared" / "data" / "xquad-r"

pytestmark = pytest.mark.skipif(
    shutil.which("slurmctld") is None or os.geteuid() != 0,
    reason="needs root and slurm-wlm + munge (slurm/local-cluster.sh install)")


@pytest.fixture(scope="module")
def slurm_env():
    """The local cluster (slurm/local-cluster.sh's default state directory); reused when a
    developer already runs it, else started here and stopped afterwards."""
    state = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/hybrid-dist-slurm"))
    env = dict(os.environ, SLURM_LOCAL_DIR=str(state))
    pid_file = state / "slurmctld.pid"
    running = pid_file.exists() and subprocess.run(["kill", "-0", pid_file.read_text().strip()]).returncode == 0
    start = subprocess.run([str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=120)
    if start.returncode != 0:
        pytest.fail(f"local SLURM cluster did not start:\n{start.stdout}\n{start.stderr}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    if not running:
        subprocess.run([str(CLUSTER), "stop"], env=env, timeout=60)


def submit(env, name: str, out: Path, overrides: str = "", ntasks: int = 2) -> str:
    job_env = dict(env, CONFIG=str(REPO / "configs" / "tiny.yaml"), OUTPUT_DIR=str(out), OMP_NUM_THREADS="1",
                   OVERRIDES=f"data.path={DATA} {overrides}".strip(), HF_HUB_OFFLINE="1")
    proc = subprocess.run(["sbatch", "--parsable", f"--ntasks={ntasks}", f"--job-name={name}",
                           str(REPO / "slurm" / "hybrid.sbatch")], cwd=REPO, env=job_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_field(env, job: str, field: str) -> str | None:
    proc = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30)
    for token in proc.stdout.split():
        if token.startswith(f"{field}="):
            return token.split("=", 1)[1]
    return None


def wait_done(env, job: str, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(env, job, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    raise TimeoutError(f"job {job} still {job_field(env, job, 'JobState')} after {timeout}s")


def node_state(env) -> str:
    """The single node's state as sinfo prints it (idle, allocated, completing, mixed, ...)."""
    proc = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True, timeout=30)
    return proc.stdout.strip()


def log_of(name: str, job: str) -> str:
    return (REPO / "logs" / f"{name}-{job}.out").read_text()


def test_two_task_job_trains_and_checkpoints(slurm_env, tmp_path):
    out = tmp_path / "run"
    job = submit(slurm_env, "hd-test-train", out)
    assert wait_done(slurm_env, job) == "COMPLETED", log_of("hd-test-train", job)
    log = log_of("hd-test-train", job)
    assert "mode=task nodes=1 tasks=2" in log and "finished with exit code 0" in log
    assert "trained to step 6" in log
    last = out / "checkpoints" / "step-00000006"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 6
    # two ranks, each from SLURM_PROCID, each saved its RNG state
    assert sorted(p.name for p in last.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.ci_slow  # three SLURM jobs and a requeue (about 30 s); the plain 2-task job runs by default
def test_preempted_job_requeues_and_resumes(slurm_env, tmp_path):
    out = tmp_path / "run"
    name = "hd-test-preempt"
    # long enough to be signalled mid-run: a few hundred small steps
    job = submit(slurm_env, name, out, "train.max_steps=240 train.save_every=40 sampler.batch_size=16 "
                                       "model.scratch.hidden_size=64 model.scratch.intermediate_size=128")
    first = out / "checkpoints" / "step-00000040"
    deadline = time.time() + 240
    while not first.exists():
        assert time.time() < deadline, "no checkpoint at step 40"
        assert job_field(slurm_env, job, "JobState") in ("PENDING", "RUNNING"), log_of(name, job)
        time.sleep(0.2)
    # what SLURM sends 120 s before the time limit (#SBATCH --signal=USR1@120), to the job's steps
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_env, check=True, timeout=30)
    # SLURM holds a requeued job for about two minutes before it may start again; a cluster
    # operator's `scontrol update StartTime=now` lifts that wait, and keeps CI short
    deadline = time.time() + 180
    while job_field(slurm_env, job, "Restarts") == "0" or job_field(slurm_env, job, "JobState") != "PENDING":
        assert time.time() < deadline and job_field(slurm_env, job, "JobState") in ("RUNNING", "PENDING", "COMPLETING"), \
            log_of(name, job)
        time.sleep(0.2)
    # That wait exists for a reason: slurmd revoked the first run's credential and refuses to launch
    # a run whose credential is from the same second ("Job credential revoked", the job then ends
    # FAILED). Lift it only once the node has cleaned up the first run, and a second later.
    deadline = time.time() + 120
    while node_state(slurm_env) != "idle":
        assert time.time() < deadline, f"node still {node_state(slurm_env)} after the requeue"
        time.sleep(0.2)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_env, check=True, timeout=30)
    assert wait_done(slurm_env, job, timeout=420) == "COMPLETED", log_of(name, job)

    log = log_of(name, job)
    assert int(job_field(slurm_env, job, "Restarts")) == 1
    assert "preempted (SIGUSR1) at step" in log and f"requeueing job {job}" in log
    assert "[hybrid.sbatch] preempted (exit 75)" in log  # srun task mode: every task's code is 75
    preempted_at = int(log.split("preempted (SIGUSR1) at step ")[1].split(":")[0])
    assert 40 <= preempted_at < 240
    assert f"job {job} restart 1" in log
    assert f"step-{preempted_at:08d}" in log.split(f"job {job} restart 1")[1]  # resumed from it
    assert "trained to step 240" in log and log.rstrip().endswith("finished with exit code 0")
    state = json.loads((out / "checkpoints" / "step-00000240" / "trainer_state.json").read_text())
    assert state["step"] == 240


@pytest.mark.slow
@pytest.mark.timeout(900)  # the job may take 600 s after the cluster start
def test_tune_sbatch_runs_a_search_on_a_ray_cluster_inside_the_job(slurm_env, tmp_path):
    """slurm/tune.sbatch: Ray head started inside the allocation, the CI search (2 trials) run
    against it, best.yaml written, Ray stopped (no Ray process of the job left)."""
    pytest.importorskip("ray")
    name = "hd-test-tune"
    env = dict(slurm_env, SEARCH=str(REPO / "ray_configs" / "tiny-cpu.yaml"), STORAGE=str(tmp_path),
               OVERRIDES="search.num_samples=2")
    proc = subprocess.run(["sbatch", "--parsable", f"--job-name={name}", str(REPO / "slurm" / "tune.sbatch")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    assert wait_done(slurm_env, job, timeout=600) == "COMPLETED", log_of(name, job)[-5000:]
    log = log_of(name, job)
    assert "[tune.sbatch] search finished" in log
    assert (tmp_path / "tiny-cpu" / "best.yaml").exists() and (tmp_path / "tiny-cpu" / "alpha-plot.png").exists()
    leftover = subprocess.run(["pgrep", "-f", f"ray-{job}/"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
