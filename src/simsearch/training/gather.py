"""Cross-rank negatives: every process's metric loss sees the embeddings of all processes' batches.

With one batch per process, a P-K batch on each of 8 GPUs would never meet the other 7 batches
as negatives; fast-reid and pytorch-metric-learning (``utils.distributed.DistributedLossWrapper``)
gather them. ``gather_across_ranks`` concatenates the embeddings and labels of all ranks in rank
order, so every rank mines and computes the loss on the same concatenated batch, with gradients
flowing only into its own slice.

Why not PML's wrapper: it wraps the loss and the miner separately (two gathers of the same
embeddings), takes the miner's tuples from outside, and puts the local batch first, so each rank
sees a different order of the same batch (and would fill a cross-batch memory in a different
order). One gather before the miner, the loss and the memory keeps ``LossWrapper`` as it is, makes
every rank's batch, tuples and memory identical, and allows batches of unequal size (a batch loses
its unreadable images).

The gradient scale: every rank computes the same loss L on the concatenated batch but
back-propagates only through its own slice e_r, and DDP averages the parameter gradients over the
W ranks, giving (1/W) sum_r dL/de_r de_r/dθ. So the backward pass multiplies the local slice's
gradient by W, and the average is exactly dL/dθ of one process on the concatenated batch. PML and
fast-reid multiply the loss by W instead; scaling the gradient of the gather gives the same
gradients to the model while the loss keeps its value (the logged loss is the concatenated
batch's) and parameters inside the loss would not be scaled.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_across_ranks", "world_size"]


def world_size() -> int:
    """Processes in the default torch.distributed group; 1 when none is started."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather_sized(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Every rank's ``x`` (rank r's has ``sizes[r]`` rows): padded to the largest, gathered, trimmed."""
    pad = max(sizes) - len(x)
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return [p[:n] for p, n in zip(parts, sizes)]


class _GatherLocalGrad(torch.autograd.Function):
    """All ranks' rows concatenated; backward returns the local slice's gradient times W."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.start, ctx.stop, ctx.scale = sum(sizes[:rank]), sum(sizes[:rank + 1]), len(sizes)
        parts = _all_gather_sized(x.detach(), sizes)
        parts[rank] = x.detach()  # the local rows exactly as given (no round trip through the gather)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.start:ctx.stop] * ctx.scale, None, None


def gather_across_ranks(embeddings: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of all ranks, concatenated in rank order (unchanged with one process).

    Gradients flow to this rank's rows only, scaled by the number of ranks (see the module
    docstring), so DDP's averaging gives the gradient of one process's loss on the whole batch.
    Every rank must call this at the same step; batch sizes may differ between ranks.
    """
    if world_size() == 1:
        return embeddings, labels
    size = torch.tensor([len(embeddings)], device=embeddings.device)
    sizes = [int(s) for s in _all_gather_sized(size, [1] * world_size())]
    rank = dist.get_rank()
    all_labels = _all_gather_sized(labels.to(embeddings.device), sizes)
    all_labels[rank] = labels.to(embeddings.device)
    return _GatherLocalGrad.apply(embeddings, sizes, rank), torch.cat(all_labels)
