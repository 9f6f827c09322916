"""Deterministic, resumable loaders: epoch e's order is a pure function of (seed, e).

``EpochSampler`` yields the indices of one epoch: ``randperm(n)`` drawn from a generator seeded
with ``derive_seed(seed, epoch)`` when shuffling, else ``0..n-1``; sharded for distributed
training as ``DistributedSampler`` does (pad by repeating the head of the order to a multiple of
``world_size`` — or cut to one when ``drop_last`` — then take every ``world_size``-th index from
``rank``). ``set_epoch(e)`` picks the epoch, so a run resumed at the start of epoch e sees the
same order as an uninterrupted run.

``build_loader`` returns an ``EpochLoader`` (a ``torch.utils.data.DataLoader``) yielding
``(images uint8 (B, 3, H, W), labels int64 (B,))``:

- in-memory datasets: whole batches are sliced out of the image tensor in one indexing operation
  in the main process (``num_workers`` is ignored; workers would only add copies); when the
  dataset's tensors were moved to a GPU the batches come out on the GPU;
- streamed datasets (``FolderStream``): per-sample decoding in ``num_workers`` worker processes
  (not persistent, so each epoch's workers see the dataset's current epoch), default collation.

Call ``loader.set_epoch(e)`` before iterating epoch e (``set_epoch(e, skip_batches=k)``
starts at its batch k, for a stage stopped mid-epoch): it sets the sampler's epoch and the
dataset's (streamed random crops are seeded by (seed, epoch, index)). For multi-process training
pass ``rank`` and ``world_size`` here; with Lightning Fabric use
``fabric.setup_dataloaders(loader, use_distributed_sampler=False)`` or move batches yourself.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from r2b.data.seeds import generator_for


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The index order of epoch ``epoch``: a pure function of (n, seed, epoch, shuffle)."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=generator_for(seed, epoch))


class EpochSampler(Sampler[int]):
    """Indices of one epoch, reproducible from (seed, epoch), sharded by (rank, world_size)."""

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Pick the epoch; ``start`` skips the first indices of this rank's share (a stage
        stopped in the middle of an epoch continues there)."""
        self.epoch = int(epoch)
        self.start = int(start)

    def _shard_len(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)

    def __len__(self) -> int:
        return max(self._shard_len() - self.start, 0)

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        total = self._shard_len() * self.world_size
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        return iter(order[:total][self.rank :: self.world_size][self.start :].tolist())


class _Batches(Dataset):
    """Adapter: item ``i`` of the batch sampler (a list of indices) -> one whole batch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, indices: list[int]):
        return self.dataset[indices]

    def __len__(self) -> int:
        return len(self.dataset)


class EpochLoader(DataLoader):
    """A ``DataLoader`` with ``set_epoch(e)``; see the module docstring. Made by ``build_loader``.

    Attributes: ``epoch_sampler`` (the ``EpochSampler``), ``source`` (the dataset),
    ``batch_size_`` (images per batch).
    """

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Iterate epoch ``epoch`` next, from its batch ``skip_batches`` on (0: all of it)."""
        self.epoch_sampler.set_epoch(epoch, skip_batches * self.batch_size_)
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> EpochLoader:
    """Loader over ``dataset``: shuffled when ``train``; ``drop_last`` defaults to ``train``.

    Each rank gets ``len(dataset) / world_size`` samples (rounded as ``EpochSampler``), in batches
    of ``batch_size`` (the per-process batch).
    """
    drop_last = train if drop_last is None else drop_last
    sampler = EpochSampler(len(dataset), train, seed, rank, world_size, drop_last=False)
    if getattr(dataset, "in_memory", False):
        batches = BatchSampler(sampler, batch_size, drop_last)
        on_cpu = dataset.images.device.type == "cpu"  # GPU-held images need no pinning
        loader = EpochLoader(
            _Batches(dataset), batch_size=None, sampler=batches, num_workers=0,
            pin_memory=pin_memory and on_cpu,
        )  # fmt: skip
    else:
        loader = EpochLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            drop_last=drop_last, pin_memory=pin_memory, persistent_workers=False,
        )  # fmt: skip
    loader.epoch_sampler = sampler
    loader.source = dataset
    loader.batch_size_ = batch_size
    return loader
