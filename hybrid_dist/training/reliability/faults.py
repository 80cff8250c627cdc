"""Fault injection: a testing hook for the reliability tests, off unless HYBRID_DIST_FAULT is set.

HYBRID_DIST_FAULT holds comma-separated faults ``KIND@STEP`` or ``KIND@STEP:rRANK`` (one rank
only; without it, every rank). STEP is the optimizer step being computed (1-based, as in
checkpoint names). Kinds:

  nan_loss@S            the loss of step S is NaN
  inf_grad@S            after step S's backward a gradient holds +inf (the loss stays finite)
  hang@S                the rank stops (sleeps) before step S: a hung node, for a test to kill
  hang_in_checkpoint@S  the rank stops while the checkpoint of step S is half written (before
                        its manifest and rename)

A hanging rank prints ``fault injection: rank R (pid P) hangs at KIND@S`` first. Read from the
environment only, never from the config saved with checkpoints, so a resumed run is clean."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass

ENV = "HYBRID_DIST_FAULT"
KINDS = ("nan_loss", "inf_grad", "hang", "hang_in_checkpoint")
_SPEC = re.compile(r"^(?P<kind>[a-z_]+)@(?P<step>\d+)(?::r(?P<rank>\d+))?$")


@dataclass(frozen=True)
class Fault:
    kind: str
    step: int
    rank: int | None = None


def parse(spec: str | None) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        m = _SPEC.match(item)
        if not m or m["kind"] not in KINDS:
            raise ValueError(f"{ENV}: cannot read {item!r}; expected KIND@STEP or KIND@STEP:rRANK, KIND one of {KINDS}")
        faults.append(Fault(m["kind"], int(m["step"]), None if m["rank"] is None else int(m["rank"])))
    return faults


class Faults:
    def __init__(self, rank: int, spec: str | None = None):
        self.rank = rank
        self.faults = parse(os.environ.get(ENV) if spec is None else spec)

    def at(self, kind: str, step: int) -> bool:
        return any(f.kind == kind and f.step == step and f.rank in (None, self.rank) for f in self.faults)

    def hang_if(self, kind: str, step: int) -> None:
        if not self.at(kind, step):
            return
        # a rank hung in C code runs no Python signal handler: the launcher's SIGTERM must end it
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        print(f"fault injection: rank {self.rank} (pid {os.getpid()}) hangs at {kind}@{step}", flush=True)
        sys.stderr.flush()
        while True:
            time.sleep(3600)
