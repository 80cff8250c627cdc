"""Checks whose failure on one rank must stop every rank, so that no rank waits forever at a
barrier for one that failed."""

from __future__ import annotations

from collections.abc import Callable


class ReportedError(RuntimeError):
    """A failure whose message is complete for the user: shown as it is, on every rank."""


def collective_check(accelerator, check: Callable[[], None], main_only: bool = False,
                     error: type[Exception] = ReportedError) -> None:
    """Run ``check`` (on the main process or on every rank) and raise its failure as ``error`` on
    every rank. No collective may run inside ``check``: this call's gather is its barrier."""
    from accelerate.utils import gather_object

    problem = None
    if accelerator.is_main_process or not main_only:
        try:
            check()
        except ReportedError as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001 - I/O failures come as OSError or RuntimeError (torch.save)
            problem = f"rank {accelerator.process_index}: {type(e).__name__}: {e}"
    problems = [p for p in gather_object([problem]) if p]
    if problems:
        raise error(problems[0])
