"""Test helpers shared by the data tests: small image fixtures written at test time in their real
on-disk format (an ImageNet-style class-folder tree of JPEGs), CIFAR-10's class names and
random uint8 image batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: CIFAR-10's class names, in label order.
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def jpeg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def write_imagenet_tree(root: Path, classes=("n01440764", "n01443537", "n01484850")) -> None:
    """ImageNet's layout: train/<wnid>/<wnid>_<k>.JPEG and val/<wnid>/*.JPEG, mixed sizes."""
    rng = np.random.default_rng(2)
    sizes = [(40, 60), (64, 48), (50, 50)]
    for c, wnid in enumerate(classes):
        for k, (h, w) in enumerate(sizes):
            img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            img[..., c] = 255  # class colour, survives resizing
            jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", img)
        img = rng.integers(0, 256, size=(56, 72, 3), dtype=np.uint8)
        jpeg(root / "val" / wnid / f"ILSVRC2012_val_{c:08d}.JPEG", img)


def image_batch(n=6, h=32, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
