"""A dataset held in memory as one uint8 tensor: small datasets are decoded once.

``images`` is (N, 3, H, W) uint8 (RGB, 0..255, channels first), ``targets`` is (N,) int64.
``ds[i]`` gives ``(image (3, H, W) uint8, label int)``; ``ds[indices]`` with a list or a 1-D
tensor of indices gives a whole batch ``(images (B, 3, H, W) uint8, labels (B,) int64)`` in one
indexing operation, which is what ``build_loader`` uses (no per-sample Python work, no workers).
The tensors may be moved to a GPU (``ds.images = ds.images.to(device)``, same for ``targets``):
batches are then sliced on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class InMemoryImageDataset(Dataset):
    """Images (N, 3, H, W) uint8 and labels (N,) int64 in memory.

    Attributes: ``images``, ``targets``, ``classes`` (class names, label ``k`` is ``classes[k]``),
    ``kind`` ("cifar" or "imagenet": which augmentation recipe fits), ``mean`` and ``std``
    (normalisation constants, see ``r2b.data.stats``), ``name`` and ``split``.
    """

    in_memory = True
    #: augmentations already applied per sample (none: ``BatchAugment`` does them all)
    sample_augment: tuple[str, ...] = ()

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        classes: Sequence[str],
        kind: str,
        mean: Sequence[float],
        std: Sequence[float],
        name: str = "",
        split: str = "",
    ) -> None:
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), not {images.dtype} {images.shape}"
            )
        if targets.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but targets of shape {targets.shape}")
        if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(classes):
            raise ValueError(f"labels outside 0..{len(classes) - 1}")
        self.images = images.contiguous()
        self.targets = targets
        self.classes = list(classes)
        self.kind = kind
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        if isinstance(index, int):
            return self.images[index], int(self.targets[index])
        idx = torch.as_tensor(index, dtype=torch.int64, device=self.images.device)
        return self.images[idx], self.targets[idx.to(self.targets.device)]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return tuple(self.images.shape[-2:])

    def __repr__(self) -> str:
        n, _, h, w = self.images.shape
        return (
            f"InMemoryImageDataset({self.name!r}, split={self.split!r}, {n} images {h}x{w}, "
            f"{len(self.classes)} classes)"
        )
