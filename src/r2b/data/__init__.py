"""Datasets, loaders and batch augmentation for r2b (docs/method.md section 5).

Typical use (the trainer's)::

    from r2b.data import build_dataset, build_loader, build_augment, mixup, num_classes

    train_set = build_dataset("default", split="train")        # or "cifar10", root=..., etc.
    test_set = build_dataset("default", split="test")
    loader = build_loader(train_set, batch_size=128, train=True, num_workers=0, seed=0)
    aug = build_augment(train_set, train=True, augment=["crop", "flip", "rotate"], seed=0)
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)                                 # order = f(seed, epoch)
        aug.set_epoch(epoch)                                    # augmentation = f(seed, epoch)
        for images, labels in loader:                           # uint8 (B,3,H,W), int64 (B,)
            x = aug(images.to(device, non_blocking=True))       # float, normalised, on device
            y = labels.to(device)
            x, y = mixup(x, y, alpha=0.2, num_classes=num_classes(train_set), generator=g)

API (details in each module):

- ``DATASETS`` ("default", "cifar10", "cifar100", "folder", "imagenet"),
  ``build_dataset(name, root=None, split="train", download=False, image_size=None,
  in_memory=None, seed=0, random_crop=True)``, ``num_classes(dataset)`` (``r2b.data.datasets``):
  items are ``(uint8 (3, H, W), int)``; datasets have ``classes``, ``targets``, ``kind``,
  ``mean``, ``std``, ``image_size``, ``in_memory``, ``sample_augment``.
- ``build_loader(dataset, batch_size, train, num_workers=0, seed=0, drop_last=None, rank=0,
  world_size=1, pin_memory=False) -> EpochLoader`` with ``set_epoch(e)``; ``EpochSampler``,
  ``epoch_order`` (``r2b.data.loader``).
- ``BatchAugment``, ``build_augment(dataset, train, augment=None, image_size=None, seed=0,
  **options)``, ``DEFAULT_AUGMENT``, ``mixup(x, y, alpha, num_classes, generator=None)``,
  ``mixup_params``, ``color_jitter`` (``r2b.data.augment``).
- ``limit(dataset, n)`` (class-balanced subset), ``validation_split(dataset, fraction, seed)``
  -> ``(train, val)`` (class-balanced, fixed by the seed), ``take``, ``first_of_each_class``
  (``r2b.data.splits``).
- ``load_data(data_config, seed)`` -> ``RunSplits(train, val, test)``: the splits a training run
  sees (limited, validation carved out); ``load_split(data_config, "train"|"val"|"test", seed)``,
  ``load_test`` (``r2b.data.run_splits``).
- Normalisation constants ``CIFAR_MEAN``, ``CIFAR_STD``, ``CIFAR100_MEAN``, ``CIFAR100_STD``,
  ``IMAGENET_MEAN``, ``IMAGENET_STD``, ``MEAN_STD`` (``r2b.data.stats``).
"""

from r2b.data.augment import (
    AUGMENTS,
    DEFAULT_AUGMENT,
    BatchAugment,
    build_augment,
    color_jitter,
    mixup,
    mixup_params,
)
from r2b.data.datasets import DATASETS, build_dataset, num_classes
from r2b.data.folder import FolderStream
from r2b.data.loader import EpochLoader, EpochSampler, build_loader, epoch_order
from r2b.data.memory import InMemoryImageDataset
from r2b.data.run_splits import RunSplits, load_data, load_split, load_test
from r2b.data.splits import first_of_each_class, limit, take, validation_split
from r2b.data.stats import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_STD,
)

__all__ = [
    "AUGMENTS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "DEFAULT_AUGMENT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEAN_STD",
    "BatchAugment",
    "EpochLoader",
    "EpochSampler",
    "FolderStream",
    "InMemoryImageDataset",
    "RunSplits",
    "build_augment",
    "build_dataset",
    "build_loader",
    "color_jitter",
    "epoch_order",
    "first_of_each_class",
    "limit",
    "load_data",
    "load_split",
    "load_test",
    "mixup",
    "mixup_params",
    "num_classes",
    "take",
    "validation_split",
]
