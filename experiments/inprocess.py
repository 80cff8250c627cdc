"""Every run of a study in one Python process (``experiments.run --in-process``).

A run is the same ``hybrid_dist.train.run(cfg)`` a subprocess would make, so its numbers are the
subprocess's; what the runs share is what a subprocess would redo each time:

* the interpreter, torch/transformers imports and the CUDA context;
* the parsed training corpus, per data config;
* the pretrained model, loaded once per source and kept on the CPU: each run trains a copy (the
  trainer re-seeds after building its model, so a copy and a fresh load train identically);
* tokenization: the held-out questions and candidates are encoded in the same batches by every
  run, so each batch is tokenized once (a bounded memo of the tokenizer's recent batches);
* the held-out benchmark (memoised by the evaluation itself), and the X->Y matrix, which the
  trainer's own evaluation already computed: no second evaluation for the heatmaps.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import traceback
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path


class MemoTokenizer:
    """A :class:`~hybrid_dist.models.biencoder.PrefixTokenizer` that remembers its last
    ``capacity`` batches (the same texts in the same order give the same tensors)."""

    def __init__(self, inner, capacity: int = 8192):
        self.inner = inner
        self.capacity = capacity
        self.memo: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, texts, kind):
        key = (kind, tuple(texts))
        found = self.memo.get(key)
        if found is not None:
            self.memo.move_to_end(key)
            self.hits += 1
            return dict(found)
        self.misses += 1
        out = self.inner(texts, kind)
        self.memo[key] = out
        if len(self.memo) > self.capacity:
            self.memo.popitem(last=False)
        return dict(out)

    def __getattr__(self, name):  # tokenizer, prefixes, max_length
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getstate__(self):  # DataLoader workers get the tokenizer, not the memo
        return {"inner": self.inner, "capacity": self.capacity, "memo": OrderedDict(), "hits": 0, "misses": 0}

    def __setstate__(self, state):
        self.__dict__.update(state)


class StudySession:
    """What the runs of one process share (see the module docstring)."""

    def __init__(self):
        self.corpora: dict[str, object] = {}
        self.models: dict[str, object] = {}
        self.runs = 0

    def trainer_class(self):
        from hybrid_dist.training.trainer import Trainer

        session = self

        class StudyTrainer(Trainer):
            def _load_corpus(self):
                key = json.dumps(asdict(self.cfg.data), sort_keys=True, default=str)
                if key not in session.corpora:
                    session.corpora[key] = super()._load_corpus()
                return session.corpora[key]

            def _load_pretrained(self, source):
                if not self.cfg.model.name_or_path:  # a scratch model is built per run (per seed)
                    return super()._load_pretrained(source)
                m = self.cfg.model
                key = json.dumps([str(source), m.pooling, m.normalize, m.query_prefix, m.passage_prefix,
                                  m.max_length, m.attn_implementation])
                if key not in session.models:
                    import torch

                    with torch.random.fork_rng(devices=[]):
                        pristine = super()._load_pretrained(source)
                    pristine.text_tokenizer = MemoTokenizer(pristine.text_tokenizer)
                    session.models[key] = pristine
                pristine = session.models[key]
                shared = {id(pristine.tokenizer): pristine.tokenizer, id(pristine.text_tokenizer): pristine.text_tokenizer}
                return copy.deepcopy(pristine, memo=shared)  # weights copied, tokenizer shared

        return StudyTrainer


def _reset_accelerate() -> None:
    """A fresh Accelerator per run, as in a new process (the process group, if any, stays)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def train_in_process(session: StudySession, cfg, log_path: Path):
    """One run: ``(exit code, seconds, LareqaResult of the last evaluation or None)``; stdout and
    stderr go to ``log_path`` as a subprocess's would."""
    from hybrid_dist.train import run

    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    evaluation = None
    with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        print(f"\n# in-process run {session.runs + 1} of this process, started "
              f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}", flush=True)
        try:
            _reset_accelerate()
            code, trainer = run(cfg, session.trainer_class())
            evaluation = getattr(trainer, "last_evaluation", None)
            if trainer is not None:
                trainer.close()
            del trainer
        except Exception:  # noqa: BLE001 - a run's crash is its exit code, as in a subprocess
            traceback.print_exc()
            code = 1
        finally:
            _release_memory()
        print(f"# exit {code} after {time.time() - started:.1f}s", flush=True)
    session.runs += 1
    return code, time.time() - started, evaluation


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_matrix(evaluation, cfg, out_dir: Path) -> None:
    """The trainer's last evaluation as ``eval/results.json`` in ``hybrid_dist.evaluate``'s
    layout (what the subprocess runner gets from a second evaluation)."""
    from hybrid_dist.evaluation import report as rep

    config = {"source": "the trainer's own held-out evaluation (experiments.run --in-process)",
              "part": cfg.eval.part, "split": cfg.data.split, "heldout_fraction": cfg.data.heldout_fraction,
              "languages": cfg.data.languages, "max_length": cfg.model.max_length,
              "candidate_context": cfg.eval.candidate_context, "batch_size": cfg.eval.batch_size}
    report = rep.make_report({"xquad-r": evaluation}, model={"path": cfg.model.name_or_path}, config=config)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep.write_json(report, out_dir / "results.json")
