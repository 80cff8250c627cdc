"""One rank of the gathered-loss equivalence check, run by ``torch.distributed.run`` from
test_losses_distributed.py (a real launcher and real gloo process group, not a simulation).

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/dist_loss_worker.py MODEL_DIR LOSS DTYPE OUT"""

from __future__ import annotations

import gc
import sys

import torch

from hybrid_dist.losses import InfoNCELoss, MultilingualContrastiveLoss
from hybrid_dist.models.biencoder import BiEncoder

WORLD = 2
PER_RANK = 4
NEGATIVES_PER_PAIR = 2
# rank 0 holds groups 0..3 and rank 1 holds their translations: every multilingual positive
# beyond the query's own passage lives on the other rank
GROUPS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def make_loss(name: str):
    return InfoNCELoss(0.05) if name == "infonce" else MultilingualContrastiveLoss(0.05, name.split("-")[1])


def make_inputs(vocab_size: int):
    """Queries, passages and hard negatives of the whole global batch, padded to fixed lengths."""
    g = torch.Generator().manual_seed(123)
    n = WORLD * PER_RANK

    def features(rows, max_len):
        ids = torch.randint(5, vocab_size, (rows, max_len), generator=g)
        lengths = torch.randint(3, max_len + 1, (rows,), generator=g)
        mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
        return {"input_ids": ids * mask, "attention_mask": mask}

    return features(n, 12), features(n, 20), features(n * NEGATIVES_PER_PAIR, 20)


def rows(features, start, stop):
    return {k: v[start:stop] for k, v in features.items()}


def compute(model, loss_fn, q, p, n, groups):
    return loss_fn(model(**q), model(**p), model(**n), groups, groups)


def load_model(model_dir: str, dtype: torch.dtype) -> BiEncoder:
    return BiEncoder.from_pretrained(model_dir).to(dtype)


def main(model_dir: str, loss_name: str, dtype_name: str, out_file: str, chunk_size: str = "0") -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(load_model(model_dir, DTYPES[dtype_name]))
    q, p, n = make_inputs(model.module.tokenizer.vocab_size)
    a, b = rank * PER_RANK, (rank + 1) * PER_RANK
    k = NEGATIVES_PER_PAIR
    inputs = [rows(q, a, b), rows(p, a, b), rows(n, a * k, b * k)]
    if int(chunk_size):  # gradient cache: chunked re-encoding, DDP syncing only the last backward
        from hybrid_dist.training.gradcache import cached_backward

        loss = cached_backward(model, make_loss(loss_name), inputs, (GROUPS[a:b], GROUPS[a:b]), int(chunk_size),
                               no_sync=model.no_sync)
    else:
        loss = compute(model, make_loss(loss_name), *inputs, GROUPS[a:b])
        loss.backward()  # DDP averages the gradients over ranks
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        grads = {name: prm.grad for name, prm in model.module.named_parameters()}
        torch.save({"loss": total / WORLD, "grads": grads}, out_file)
    # Free DDP before the process group: a Reducer that drops the last reference to a gloo group
    # destroys it while holding the GIL, which can deadlock with gloo's worker threads.
    del model
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:6])
