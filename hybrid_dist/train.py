"""``accelerate launch -m hybrid_dist.train --config configs/demo.yaml [key=value ...]``

Trains, checkpoints, saves the model, evaluates on held-out articles and prints a results table.
Plain ``python -m hybrid_dist.train`` runs it in a single process."""

from __future__ import annotations

import argparse
import sys

from hybrid_dist.config import ConfigError, load_config
from hybrid_dist.data.records import DataError

BAD_INPUT = 2  # config, data, output directory, checkpoint to resume: found before training (or at a held-out evaluation)
STOPPED = 3  # training stopped: non-finite steps past train.max_bad_steps, or a checkpoint could not be written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hybrid_dist.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to anything it leaves out")
    parser.add_argument("--resume", help="shorthand for train.resume=...: 'auto' or a checkpoint directory")
    parser.add_argument("--print-batches", type=int, metavar="N",
                        help="print the first N global batches as JSON lines and exit (no model, no training)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sampler.alpha=0.25 optim.lr=1e-5")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from hybrid_dist import distributed

    distributed.export_torch_env()  # a SLURM task (srun, one process per task) becomes a torch rank
    workers = distributed.requested_cpu_processes()
    previewing = any(a.startswith("--print-batches") for a in (sys.argv[1:] if argv is None else argv))
    if workers > 1 and not previewing:
        return distributed.launch_cpu_workers(workers, "hybrid_dist.train", sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_batches is not None:
        from hybrid_dist.data.preview import print_batches

        try:
            print_batches(cfg, args.print_batches)
        except (DataError, ValueError) as e:
            return _error(e, BAD_INPUT)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            sys.stderr.close()
        return 0
    code, _ = run(cfg)
    return code


def _main_as_rank(argv: list[str] | None = None) -> int:
    """``main``, recording this rank's exit code for ``hybrid-dist-launch`` (launchers drop it)."""
    import os

    from hybrid_dist.launch import CONTROL_ENV, PREEMPTED, record_exit

    code = main(argv)
    if distributed_rank_process():
        record_exit(code)
        if code == PREEMPTED and os.environ.get(CONTROL_ENV):
            # the wrapper reports 75 from the record; a clean exit keeps the launchers from
            # printing a failure for what is a planned stop
            return 0
    return code


def distributed_rank_process() -> bool:
    """A training rank, not the process that started CPU ranks for ``accelerate launch --cpu``."""
    from hybrid_dist import distributed

    return distributed.requested_cpu_processes() <= 1

def run(cfg, trainer_class=None):
    """Train and evaluate one config in this process: ``(exit code, trainer or None)``, the exit
    codes :func:`main` returns (also what an in-process study records per run)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from hybrid_dist.training.reliability.checkpoints import CheckpointError, ResumeError
    from hybrid_dist.training.reliability.nonfinite import TrainingDiverged
    from hybrid_dist.training.reliability.preflight import PreflightError
    from hybrid_dist.training.trainer import Trainer

    try:
        trainer = (trainer_class or Trainer)(cfg).setup()
    except (DataError, PreflightError, ResumeError, ValueError, ImportError, OSError) as e:
        return _error(e, BAD_INPUT), None
    try:
        results = trainer.fit()
    except (DataError, ResumeError) as e:
        return _error(e, BAD_INPUT), trainer
    except (TrainingDiverged, CheckpointError) as e:
        return _error(e, STOPPED), trainer
    if trainer.preempted:
        from hybrid_dist.training.reliability.preemption import PREEMPTED_EXIT_CODE

        return PREEMPTED_EXIT_CODE, trainer
    if trainer.accelerator.is_main_process and results:
        from hybrid_dist.evaluation import format_results_table

        print()
        print(format_results_table(results))
        labels = list(trainer.language_groups)
        if len(labels) >= 2:  # a language hold-out: first (zero-shot) vs last evaluation, per cell
            from hybrid_dist.evaluation.report import format_holdout_table

            groups = trainer.language_groups
            print()
            print(format_holdout_table(groups[labels[0]], groups[labels[-1]], labels=(labels[0], labels[-1])))
        print(f"\nresults: {trainer.out / 'results.json'}")
    return 0, trainer


def _error(e: Exception, code: int) -> int:
    """One line per rank on stderr, no traceback: the message names what to fix."""
    import os

    rank = os.environ.get("RANK", "0")
    print(f"error{'' if rank == '0' else f' (rank {rank})'}: {e}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(_main_as_rank())
