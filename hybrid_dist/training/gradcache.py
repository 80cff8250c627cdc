"""Gradient cache: a contrastive loss over a global batch larger than activation memory allows.

1. Embed every chunk of the batch without a graph, remembering the RNG state each chunk started
   from (dropout).
2. Compute the loss over the embeddings (the pool all-gathered across ranks, with gradients) and
   backpropagate it to the embeddings only.
3. Re-encode chunk by chunk with a graph, replaying each chunk's RNG state so dropout draws the
   same masks, and backpropagate the cached embedding gradient through it.

The parameter gradients equal those of one backward through the whole batch with the same
dropout masks; peak activation memory is one chunk's. Under DDP only the last re-encoding
synchronises gradients (the others run under ``no_sync``), so gradients are reduced once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from hybrid_dist.training.length_groups import sort_by_length, split_trimmed, unsort

Features = dict[str, torch.Tensor]


@dataclass
class RngState:
    """CPU and (when used) CUDA generator states at the start of one chunk's forward."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> "RngState":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state, then put the generators back where they were, so the
        replay does not shift the random stream of whatever comes next."""
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def embed_without_graph(encode: Callable[..., torch.Tensor], features: Features, chunk_size: int
                        ) -> tuple[torch.Tensor, list[Features], list[RngState], torch.Tensor]:
    """Embeddings in batch order, plus the length-sorted trimmed chunks they came from (each
    chunk's padding is only what its own rows need), each chunk's RNG state, and the sort order."""
    ordered, order = sort_by_length(features)
    parts, states, embeddings = split_trimmed(ordered, chunk_size), [], []
    with torch.no_grad():
        for part in parts:
            states.append(RngState.capture())
            embeddings.append(encode(**part))
    return unsort(torch.cat(embeddings), order), parts, states, order


def cached_backward(
    encode: Callable[..., torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    inputs: list[Features | None],
    loss_args: tuple,
    chunk_size: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    backward_allowed: Callable[[torch.Tensor], bool] = lambda loss: True,
) -> torch.Tensor:
    """Gradient-cached ``loss_fn(*embeddings(inputs), *loss_args).backward()``; returns the loss.

    ``encode(**features)`` is the (possibly DDP-wrapped) model; ``inputs`` are the tokenized
    queries, passages and optional negatives, in the order ``loss_fn`` takes their embeddings.
    ``backward`` is e.g. ``accelerator.backward``; ``no_sync`` e.g.
    ``lambda: accelerator.no_sync(model)``: every re-encoding but the last runs inside it.
    ``backward_allowed(loss)`` False: return the loss without any backward (a non-finite loss).
    """
    if chunk_size < 1:
        raise ValueError(f"train.grad_cache_chunk_size must be at least 1, got {chunk_size}")
    cached = [None if f is None else embed_without_graph(encode, f, chunk_size) for f in inputs]
    leaves = [None if c is None else c[0].detach().requires_grad_() for c in cached]
    loss = loss_fn(*leaves, *loss_args)
    if not backward_allowed(loss):
        return loss.detach()
    # the loss's own backward: through the all-gather to this rank's embeddings, no parameters
    loss.backward()
    # each chunk's slice of its leaf's gradient: the gradient put in the chunks' (length-sorted)
    # row order once per input, then cut at the chunk boundaries
    work = []
    for c, leaf in zip(cached, leaves):
        if c is not None:
            _, parts, states, order = c
            grads = leaf.grad[order].split([part["input_ids"].shape[0] for part in parts])
            work += zip(parts, states, grads)
    for i, (part, state, grad) in enumerate(work):
        last = i == len(work) - 1
        with (contextlib.nullcontext() if last else no_sync()), state.replay():
            emb = encode(**part)
            # d(surrogate)/d(params) = grad . d(emb)/d(params): the chain rule through the cache
            backward(torch.dot(emb.flatten(), grad.flatten().to(emb.dtype)))
    return loss.detach()
