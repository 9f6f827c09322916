"""Test-split evaluation: top-1 / top-5 accuracy and cross-entropy of a model.

Each process evaluates the samples ``rank, rank + W, rank + 2W, ...`` (W = world size, no padding,
so every test image counts exactly once) and the counts are summed over processes. Images are
normalised (and center-cropped when larger) by the evaluation ``BatchAugment`` on the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from r2b.train.metrics import topk_correct


def eval_batches(
    dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 image batches and labels of this process's share of ``dataset``, in order."""
    indices = torch.arange(rank, len(dataset), world_size)
    if getattr(dataset, "in_memory", False):
        for start in range(0, len(indices), batch_size):
            yield dataset[indices[start : start + batch_size]]
        return
    loader = DataLoader(
        Subset(dataset, indices.tolist()), batch_size=batch_size, num_workers=num_workers
    )
    yield from loader


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast=contextlib.nullcontext,
    channels_last: bool = False,
) -> dict[str, float]:
    """Accuracy (percent) and mean cross-entropy of ``model`` over ``batches``.

    ``reduce_sum`` sums a tensor over processes (e.g. ``fabric.all_reduce(t, reduce_op="sum")``).
    Returns ``{"top1", "top5", "loss", "n"}``; the model is left in eval mode.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # n, top1, top5, loss sum
    for images, labels in batches:
        x = transform(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        logits = logits.float()
        c1, c5 = topk_correct(logits, y)
        loss = F.cross_entropy(logits, y, reduction="sum")
        batch = [torch.tensor(len(y), device=device), c1, c5, loss]
        totals += torch.stack([t.double() for t in batch])
    if reduce_sum is not None:
        totals = reduce_sum(totals)
    n, c1, c5, loss = totals.tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "n": int(n)}
