"""``build_dataset``: one entry point for every dataset r2b trains on.

Names (``DATASETS``):

- "default": the embedded CIFAR-10 subset (5,000 train / 1,000 test images, 32 x 32, 10 classes),
  no network and no files needed (``r2b.data.default``).
- "cifar10", "cifar100": the standard python-version files under ``root``
  (``ROOT/cifar-10-batches-py``, ``ROOT/cifar-100-python``), downloaded when ``download=True``
  (``r2b.data.cifar``).
- "folder": a class-folder tree ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (or
  ``ROOT/val/``: ImageNet's layout), e.g. the CIFAR-10 JPEG copy (``ROOT = .../cifar10``) or
  ImageNet (``r2b.data.folder``).
- "imagenet": a "folder" that is always ImageNet-kind: streamed from disk unless ``in_memory`` is
  True, crops of ``image_size`` (224 by default), ImageNet's normalisation.

Every dataset returns ``(image, label)`` with ``image`` a uint8 (3, H, W) RGB tensor (0..255, not
normalised: ``BatchAugment`` normalises on the device) and ``label`` an int, and has
``classes``, ``targets``, ``kind`` ("cifar" | "imagenet"), ``mean``, ``std``, ``image_size``,
``in_memory`` and ``sample_augment``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from r2b.data.cifar import read_cifar
from r2b.data.default import read_default
from r2b.data.folder import read_folder
from r2b.errors import UserError

DATASETS = ("default", "cifar10", "cifar100", "folder", "imagenet")
SPLITS = ("train", "test")


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    download: bool = False,
    image_size: int | None = None,
    in_memory: bool | None = None,
    seed: int = 0,
    random_crop: bool = True,
) -> Dataset:
    """One split ("train" or "test"; "val" is accepted as "test") of dataset ``name``.

    Args:
        name: one of ``DATASETS``.
        root: data folder ("cifar10", "cifar100", "folder", "imagenet"); ignored by "default".
        download: fetch CIFAR when it is missing (needs the network).
        image_size: "folder" only: resize + center-crop every image to this side (in memory), or
            the crop side of streamed data (224 when None). CIFAR and "default" are 32 x 32.
        in_memory: "folder" only: True decodes every image once into memory, False streams from
            disk, None (default) chooses by size (``folder.IN_MEMORY_MAX_BYTES``). CIFAR and
            "default" are always in memory.
        seed, random_crop: streamed "folder" training split only: the per-sample random-resized
            crop is seeded by (seed, epoch, index); ``random_crop=False`` uses the evaluation crop.

    Raises ``UserError`` (one line: what is missing, where to put it) for unknown names or splits,
    missing roots or files, and failed downloads.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    split = "test" if split == "val" else split
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose train or test")
    if name == "default":
        return read_default(split)
    if name in ("cifar10", "cifar100"):
        return read_cifar(name, root, split, download)
    if name == "imagenet":
        return read_folder(root, split, image_size, bool(in_memory), seed, random_crop, "imagenet")
    return read_folder(root, split, image_size, in_memory, seed, random_crop)


def num_classes(dataset: Dataset) -> int:
    """Number of classes of a dataset made by ``build_dataset`` (``len(dataset.classes)``)."""
    return len(dataset.classes)
