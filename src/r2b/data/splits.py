"""Subsets of a dataset: class-balanced limits and the validation split carved from training data.

- ``limit(ds, n)``: the first ``n`` images of a round-robin over classes (image 0 of every class,
  then image 1 of every class, ...), in the dataset's order: a class-balanced subset that does
  not depend on any seed (``data.train_limit`` / ``data.test_limit``).
- ``validation_split(ds, fraction, seed)``: ``(train, val)`` where ``val`` holds
  ``round(fraction * n_c)`` images of each class ``c`` (at least 1 and at most ``n_c - 1`` when
  the class has two or more), drawn by a permutation seeded by ``(seed, VAL_SPLIT_KEY, c)``, and
  ``train`` the rest; both keep the dataset's order. So the split is class-balanced (every class
  gives the same fraction), disjoint, and fixed by the seed: a resumed run, ``r2b eval --split
  val`` and every stage of a pipeline see the same images.
- ``first_of_each_class(ds, n)``: ``n`` images and labels, the first image of each of the first
  ``n`` classes (a few examples to check a transform on, or to plot).

Both work on in-memory datasets (the images are indexed) and on streamed folders (the file list is
indexed); a validation subset of a streamed training folder uses the evaluation crop, not random
crops, so its accuracy is measured as the test split's is.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from r2b.data.folder import FolderStream
from r2b.data.memory import InMemoryImageDataset
from r2b.data.seeds import generator_for

#: second component of the validation split's seed key (so it shares no stream with shuffling)
VAL_SPLIT_KEY = 0x5A11


def take(ds: Dataset, indices: torch.Tensor, split: str | None = None) -> Dataset:
    """The samples ``indices`` (1-D int tensor) of ``ds`` as a dataset of the same kind.

    A streamed subset named ``split="val"`` (or "test") uses the evaluation crop.
    """
    idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
    split = ds.split if split is None else split
    if isinstance(ds, InMemoryImageDataset):
        dev = ds.images.device
        return InMemoryImageDataset(
            ds.images[idx.to(dev)], ds.targets[idx.to(ds.targets.device)], ds.classes, ds.kind,
            ds.mean, ds.std, ds.name, split,
        )  # fmt: skip
    if isinstance(ds, FolderStream):
        train_crop = ds.train_crop and split == "train"
        return FolderStream(
            [ds.paths[i] for i in idx.tolist()], ds.targets[idx].tolist(), ds.classes, ds.size,
            train_crop, ds.seed, ds.name, split,
        )  # fmt: skip
    raise TypeError(f"cannot take a subset of {type(ds).__name__}")


def balanced_order(targets: torch.Tensor) -> torch.Tensor:
    """Indices in round-robin order over classes: the k-th image of every class before any
    (k+1)-th, classes in label order, images of a class in the dataset's order."""
    targets = torch.as_tensor(targets).cpu()
    rank = torch.zeros_like(targets)
    for c in targets.unique():
        where = (targets == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    # sort by (rank within class, label); both are small non-negative integers
    key = rank * (int(targets.max()) + 1 if len(targets) else 1) + targets
    return torch.sort(key, stable=True).indices


def limit(ds: Dataset, n: int | None) -> Dataset:
    """A class-balanced subset of ``n`` images (see the module docstring); ``ds`` if n is None or
    at least its size."""
    if n is None or n >= len(ds):
        return ds
    chosen = balanced_order(ds.targets)[:n]
    return take(ds, torch.sort(chosen).values)


def validation_indices(targets: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of the validation images of a training split (see the module docstring)."""
    targets = torch.as_tensor(targets).cpu()
    picked = []
    for c in targets.unique().tolist():
        where = (targets == c).nonzero().flatten()
        n = len(where)
        if n < 2:
            continue
        k = min(max(round(fraction * n), 1), n - 1)
        order = torch.randperm(n, generator=generator_for(seed, VAL_SPLIT_KEY, c))
        picked.append(where[order[:k]])
    if not picked:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(picked)).values


def validation_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """``(train, val)``: ``val`` carved from ``ds`` class by class (None when ``fraction`` is 0)."""
    if fraction <= 0:
        return ds, None
    val_idx = validation_indices(ds.targets, fraction, seed)
    keep = torch.ones(len(ds), dtype=torch.bool)
    keep[val_idx] = False
    return take(ds, keep.nonzero().flatten(), "train"), take(ds, val_idx, "val")


def first_of_each_class(ds: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8 batch) and labels of a dataset: the first image of each of the first
    ``n`` classes in the order they appear (test splits are often sorted by class)."""
    targets = torch.as_tensor(ds.targets).cpu()
    picked, seen = [], set()
    for i, t in enumerate(targets.tolist()):
        if t not in seen:
            seen.add(t)
            picked.append(i)
            if len(picked) == n:
                break
    chosen = set(picked)
    for i in range(len(ds)):  # fewer classes than n: fill up with further images
        if len(picked) >= min(n, len(ds)):
            break
        if i not in chosen:
            picked.append(i)
    if getattr(ds, "in_memory", False):
        return ds[torch.tensor(picked)]
    items = [ds[i] for i in picked]
    return torch.stack([im for im, _ in items]), torch.tensor([y for _, y in items])
