"""What keeps a run right when something fails, one entry each for the recipe:

- ``checkpointing.Checkpointer``: sealed checkpoints (save), resume with RNG states, final and best model;
- ``preflight``: output directory writable, room for the checkpoints, evaluation data readable;
- ``nonfinite.NonFiniteGuard``: a non-finite loss or gradient skips the step on every rank, bounded;
- ``preemption.PreemptionWatcher``: SIGUSR1/SIGTERM -> checkpoint, exit 75 (requeue);
- ``faults.Faults``: injected failures for the tests (``HYBRID_DIST_FAULT``).

Submodules are imported where used: ``checkpoints`` (files only) loads without torch or Accelerate."""
