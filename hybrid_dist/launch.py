"""``hybrid-dist-launch [--] LAUNCHER ...``: run any launcher (``accelerate launch``, ``torchrun``,
``python -m hybrid_dist.train``) so that the job ends with the trainer's exit code and a
preemption signal reaches the training ranks, not the launcher.

Launchers cannot pass a rank's exit code on: ``torchrun`` exits 1 when any worker fails and
``accelerate launch`` 1 (or 143 on SIGTERM, after killing its workers 5 s later). A scheduler
then cannot tell preemption (75: requeue) from a bad config (2) or a crash. Here:

- the ranks register their pids and, on exit, their exit codes in a control directory
  (``HYBRID_DIST_CONTROL_DIR``, which the launchers pass through to every rank);
- SIGUSR1 / SIGTERM sent to this process go to the registered ranks only, which checkpoint at the
  next step and exit 75 (before any rank registered, the launcher gets the signal: nothing to save);
- the exit code is 75 if any rank was preempted, else the code every rank agreed on (2, 3), else
  the launcher's (a crashed rank writes no code).

The launcher itself starts with SIGUSR1 ignored (the ranks install their own handler), as in
slurm/hybrid.sbatch: SLURM's ``--signal=USR1@120`` reaches every process of the job step."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTROL_ENV = "HYBRID_DIST_CONTROL_DIR"
PREEMPTED = 75
POLL_S = 0.2


# ---------------------------------------------------------------------- the ranks' side


def _rank_file(suffix: str) -> Path | None:
    control = os.environ.get(CONTROL_ENV)
    if not control:
        return None
    # the host keeps a node's wrapper off another node's ranks where the directory is shared
    return Path(control) / f"rank-{os.environ.get('RANK', '0')}.{socket.gethostname()}.{suffix}"


def register_rank() -> None:
    """Called by a training rank once its signal handlers are installed."""
    path = _rank_file("pid")
    if path is not None:
        path.write_text(str(os.getpid()))


def record_exit(code: int) -> None:
    """Called by a training rank with the exit code it is about to return."""
    path = _rank_file("exit")
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(code))
        os.replace(tmp, path)


# ---------------------------------------------------------------------- the wrapper


def _read(directory: Path, suffix: str) -> dict[str, int]:
    host = socket.gethostname()
    found = {}
    for path in directory.glob(f"rank-*.{host}.{suffix}"):
        try:
            found[path.name.split(".")[0]] = int(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def job_exit_code(launcher_code: int, rank_codes: dict[str, int]) -> int:
    """75 if any rank was preempted; else the code all ranks agreed on; else the launcher's."""
    codes = set(rank_codes.values())
    if PREEMPTED in codes:
        return PREEMPTED
    if len(codes) == 1 and launcher_code != 0:
        return codes.pop()
    return launcher_code


def run(command: list[str], signals: list[str]) -> int:
    control = Path(tempfile.mkdtemp(prefix="hybrid-dist-launch-"))
    env = {**os.environ, CONTROL_ENV: str(control)}
    preemption = [getattr(signal, name) for name in signals]
    pending: list[int] = []

    def ignore_usr1() -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    child = subprocess.Popen(command, env=env, preexec_fn=ignore_usr1)
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in preemption}
    forwarded: set[tuple[int, int]] = set()
    try:
        while child.poll() is None:
            if pending:
                sig = pending.pop(0)
                ranks = _read(control, "pid")
                if not ranks:  # nothing to checkpoint yet: stop the launcher as the signal asked
                    print(f"hybrid-dist-launch: {signal.Signals(sig).name} before training started; "
                          "passing it to the launcher", file=sys.stderr, flush=True)
                    child.send_signal(sig)
                for pid in ranks.values():
                    if (pid, sig) not in forwarded:
                        forwarded.add((pid, sig))
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
            time.sleep(POLL_S)
        rank_codes = _read(control, "exit")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            child.kill()
        shutil.rmtree(control, ignore_errors=True)
    code = job_exit_code(child.returncode, rank_codes)
    if code != child.returncode:
        shown = ", ".join(f"{rank} {c}" for rank, c in sorted(rank_codes.items()))
        why = "preempted: checkpoint written, resume with train.resume=auto" if code == PREEMPTED else "the ranks' code"
        print(f"hybrid-dist-launch: the launcher exited {child.returncode}; ranks exited ({shown}): exit {code} ({why})",
              file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hybrid-dist-launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", default="SIGUSR1,SIGTERM",
                        help="signals passed to the training ranks as preemption (default: SIGUSR1,SIGTERM)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the launcher command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no launcher command given, e.g. hybrid-dist-launch accelerate launch -m hybrid_dist.train ...")
    names = [s.strip() for s in args.signals.split(",") if s.strip()]
    for name in names:
        if not isinstance(getattr(signal, name, None), signal.Signals):
            parser.error(f"--signals: unknown signal {name!r}")
    return run(command, names)


if __name__ == "__main__":
    sys.exit(main())
