"""The embedded default dataset: a small class-balanced subset of CIFAR-10, shipped in the package.

``r2b/assets/cifar10_default.npz`` holds, per split ("train", "test"), the original JPEG files of
the CIFAR-10 JPEG copy (see ``r2b/assets/README.md`` for source, counts and how it was built by
``scripts/make_default_dataset.py``): ``<split>_jpeg`` (all files' bytes concatenated, uint8),
``<split>_offsets`` (int64, N + 1; file i is ``jpeg[offsets[i]:offsets[i+1]]``),
``<split>_labels`` (uint8), ``<split>_files`` (source names ``<class>/NNNN.jpg``) and ``classes``.
Everything is a plain array (loaded with ``allow_pickle=False``). Decoding all 6,000 images with
Pillow takes about 0.4 s; the decoded splits are cached per process.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import torch

from r2b.data.folder import decode_bytes
from r2b.data.memory import InMemoryImageDataset
from r2b.data.stats import CIFAR10_MEAN, CIFAR10_STD

ASSET_NAME = "cifar10_default.npz"
SPLITS = ("train", "test")


def asset_path():
    """Path (a ``Traversable``) of the embedded archive inside the installed package."""
    return resources.files("r2b") / "assets" / ASSET_NAME


def read_default(split: str = "train") -> InMemoryImageDataset:
    """One split of the embedded default dataset, (N, 3, 32, 32) uint8 in memory."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels, classes = _decoded(split)
    return InMemoryImageDataset(
        images.clone(), labels.clone(), classes, "cifar", CIFAR10_MEAN, CIFAR10_STD, "default",
        split,
    )  # fmt: skip


@functools.cache
def _decoded(split: str) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    with asset_path().open("rb") as f, np.load(f, allow_pickle=False) as npz:
        blob = npz[f"{split}_jpeg"].tobytes()
        offsets = npz[f"{split}_offsets"].tolist()
        labels = torch.from_numpy(npz[f"{split}_labels"].astype(np.int64))
        classes = tuple(str(c) for c in npz["classes"])
    images = [decode_bytes(blob[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    return torch.stack(images), labels, classes
