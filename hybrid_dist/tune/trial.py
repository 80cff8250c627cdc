"""One Tune trial = one distributed training run: the trial function only builds the trial's
training config and drives a Ray Train ``TorchTrainer`` (N workers, each with its resources),
whose reports it forwards to Tune (``TuneReportCallback``). This is Ray's Train V2 pattern for
tuning distributed runs; the ``Tuner(trainer)`` form is deprecated."""

from __future__ import annotations

from typing import Any

from hybrid_dist.config import to_dict
from hybrid_dist.tune.spec import SearchSpec, override


def trial_job(spec: SearchSpec, train_storage: str, work_dir: str) -> dict[str, Any]:
    """Everything a trial needs, as plain data (it travels to the trial actor on any node)."""
    base = spec.training_config()
    every = base.eval.every_steps
    forced = {
        # one report per evaluation, each with a checkpoint at the same step
        "train.save_every": every,
        "eval.before_training": False,  # no callback there, and it costs an evaluation per trial
        "eval.after_training": True,  # the final report
        "eval.metric": spec.metric,  # the trainer's best/ model follows the searched metric
        "train.progress_bar": False,
        "train.resume": None,
        # Ray owns failures and preemption here (FailureConfig restarts from the last Ray
        # checkpoint), and the train loop runs off the main thread, where signals cannot be caught
        "train.preemption_signals": [],
    }
    return {
        "base": to_dict(base),
        "forced": forced,
        "data_path": str(_absolute(base.data.path)),
        "resources": vars(spec.resources).copy(),
        "failure": vars(spec.failure).copy(),
        "keep_checkpoints": spec.keep_checkpoints,
        "train_storage": train_storage,
        "work_dir": work_dir,
    }


def trial_training_config(job: dict, sampled: dict[str, Any]) -> dict:
    """The trial's complete training config (as a dict): base + fixed overrides + sampled values
    + what the search needs of the trainer; the data path made absolute (workers run elsewhere)."""
    from hybrid_dist.tune.spec import config_from_dict

    items = {**sampled, **job["forced"], "data.path": job["data_path"]}
    return to_dict(config_from_dict(job["base"], [override(k, v) for k, v in items.items()]))


def run_trial(config: dict[str, Any], job: dict) -> None:
    """The Tune trainable: ``config`` is the sampled point (training key -> value)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from hybrid_dist.tune.worker import FAULT_MARKER, train_loop_per_worker

    trial_id = ray.tune.get_context().get_trial_id()
    res, failure = job["resources"], job["failure"]
    per_worker = {"CPU": res["cpus_per_worker"]}
    if res["gpus_per_worker"]:
        per_worker["GPU"] = res["gpus_per_worker"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": trial_training_config(job, config),
            "work_dir": f"{job['work_dir']}/{trial_id}",
            "fail_at_step": failure["inject_worker_failure_at_step"],
            "fault_marker": f"{job['work_dir']}/{FAULT_MARKER}",
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=res["num_workers"], use_gpu=bool(res["gpus_per_worker"]), resources_per_worker=per_worker,
            placement_strategy=res["placement_strategy"],
        ),
        run_config=ray.train.RunConfig(
            # a stable name: a restarted trial finds its Train run (and last checkpoint) again
            name=f"train-{trial_id}",
            storage_path=job["train_storage"],
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=failure["worker_max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job["keep_checkpoints"]),
        ),
    )
    trainer.fit()


def _absolute(path: str):
    from pathlib import Path

    p = Path(path).expanduser()
    return p if p.is_absolute() else p.resolve()
