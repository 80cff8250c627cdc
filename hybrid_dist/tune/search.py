"""Runs a search: connects to Ray (a local instance, a running cluster, or Ray Client), builds the
Tuner (search algorithm, ASHA on the reported held-out metric, trial resources and fault
tolerance) and runs or resumes it."""

from __future__ import annotations

import os
from pathlib import Path

from hybrid_dist.tune.spec import SearchSpec, param_space
from hybrid_dist.tune.trial import run_trial, trial_job

# Ray Train V2 is the default from Ray 2.5x; set it for older 2.4x releases that still need it
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

#: variables every Ray worker process gets: one BLAS thread per training process (the trial's
#: CPUs are the parallelism), quiet tokenizers, no hub access
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
              "RAY_TRAIN_V2_ENABLED": "1"}


def is_remote(storage: str) -> bool:
    return "://" in storage


def experiment_paths(spec: SearchSpec, name: str | None = None) -> dict[str, str]:
    """Where the Tune experiment, the Train runs, the trainers' work dirs and the results go."""
    name = name or spec.name
    storage = spec.storage_path if is_remote(spec.storage_path) else str(Path(spec.storage_path).expanduser().resolve())
    experiment = f"{storage.rstrip('/')}/{name}"
    local_results = experiment if not is_remote(storage) else str(Path("runs/tune").resolve() / name)
    work = spec.work_dir or (f"{experiment}/trials" if not is_remote(storage) else f"/tmp/hybrid_dist_tune/{name}")
    return {"name": name, "storage": storage, "experiment": experiment,
            "train_storage": f"{experiment}/train-runs", "work_dir": str(work), "results": local_results}


def connect(address: str, num_cpus: float | None = None, num_gpus: float | None = None) -> None:
    """``local``: start a Ray instance in this process; ``auto``: the running cluster on this node
    (``ray start`` on SLURM, or the autoscaler's head); ``ray://host:10001``: Ray Client."""
    import ray

    env = dict(WORKER_ENV)
    # Ray Train reaches the state API from inside the cluster and, with no address, finds it by
    # looking for a Ray instance on the node: with two instances there (another user's, a second
    # search) that fails, and the workers of trials that ASHA stopped are never freed. Every
    # process of this job therefore gets this cluster's address.
    if address == "local":
        port = _free_port()
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env={"env_vars": env}, include_dashboard=True,
                 dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=True)
    else:
        if address != "auto" and not address.startswith("ray://"):
            env["RAY_ADDRESS"] = address
        ray.init(address=address, runtime_env={"env_vars": env})
    if not address.startswith("ray://"):
        require_state_api()


def require_state_api(attempts: int = 10, wait_s: float = 2.0) -> None:
    """Stop early on a cluster without the dashboard. Ray Train finds the workers of a trial that
    ASHA stopped through the dashboard's state API and frees them. Without that API they stay
    reserved, and every later trial waits for workers forever."""
    import time

    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address  # this cluster, even when others run on the node
    for _ in range(attempts):
        try:
            list_actors(address=gcs, limit=1, timeout=10, raise_on_missing_output=False)
            return
        except Exception:  # noqa: BLE001  (RayStateApiException or a connection error while it starts)
            time.sleep(wait_s)
    ray.shutdown()
    raise RuntimeError(
        "the Ray cluster has no dashboard (its state API does not answer): Ray Train could not free the "
        "workers of trials that ASHA stops, and the search would hang. Start Ray with the dashboard "
        "(`ray start` without --include-dashboard=false; pip install 'ray[default]')."
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_searcher(spec: SearchSpec):
    """Grid/random: Tune's BasicVariantGenerator (seeded, so a search samples the same points
    again); Optuna's TPE or BayesOpt otherwise. Concurrency is capped by max_concurrent_trials."""
    algorithm, metric, mode, seed = spec.search.algorithm, spec.metric, spec.metric_mode, spec.search.seed
    if algorithm in ("grid", "random"):
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=spec.search.max_concurrent_trials)
    if algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode=mode, sampler=optuna.samplers.TPESampler(seed=seed))
    from ray.tune.search.bayesopt import BayesOptSearch

    return BayesOptSearch(metric=metric, mode=mode, random_state=seed)


def build_scheduler(spec: SearchSpec, max_steps: int, every_steps: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="step",  # training steps, the budget (a restored trial reports the same steps again)
        max_t=max_steps,
        grace_period=spec.scheduler.grace_period or every_steps,
        reduction_factor=spec.scheduler.reduction_factor,
        brackets=spec.scheduler.brackets,
    )


def build_tuner(spec: SearchSpec, paths: dict[str, str]):
    import ray.tune

    base = spec.training_config()
    job = trial_job(spec, paths["train_storage"], paths["work_dir"])
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, job=job), {"CPU": spec.resources.trial_driver_cpus},
    )
    searcher = build_searcher(spec)
    tune_config = ray.tune.TuneConfig(
        metric=spec.metric, mode=spec.metric_mode,
        search_alg=searcher,
        scheduler=build_scheduler(spec, base.train.max_steps, base.eval.every_steps),
        num_samples=spec.search.num_samples,
        # BasicVariantGenerator caps itself; Tune wraps the other searchers in a ConcurrencyLimiter
        max_concurrent_trials=None if spec.search.algorithm in ("grid", "random")
        else spec.search.max_concurrent_trials or None,
    )
    run_config = ray.tune.RunConfig(
        name=paths["name"], storage_path=paths["storage"],
        failure_config=ray.tune.FailureConfig(max_failures=spec.failure.trial_max_failures),
        verbose=1,
    )
    return ray.tune.Tuner(trainable, param_space=param_space(spec), tune_config=tune_config, run_config=run_config)


def restore_tuner(spec: SearchSpec, paths: dict[str, str]):
    """Continue an interrupted search: finished trials stay, unfinished and errored ones resume
    (their Train runs restart from their last Ray checkpoint)."""
    import ray.tune

    job = trial_job(spec, paths["train_storage"], paths["work_dir"])
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, job=job), {"CPU": spec.resources.trial_driver_cpus},
    )
    return ray.tune.Tuner.restore(paths["experiment"], trainable=trainable, resume_unfinished=True,
                                  resume_errored=True, param_space=param_space(spec))


def run_search(spec: SearchSpec, paths: dict[str, str], resume: bool = False):
    import ray.tune

    if resume and ray.tune.Tuner.can_restore(paths["experiment"]):
        tuner = restore_tuner(spec, paths)
    else:
        tuner = build_tuner(spec, paths)
    return tuner.fit()
