"""The splits a training run sees: its configured dataset, limited and split.

- train: the training split limited to ``train_limit`` images (class-balanced, ``limit``), less
  the validation images;
- val: ``val_fraction`` of those images, per class, fixed by the seed (``validation_split``);
  None when ``val_fraction`` is 0;
- test: the test split limited to ``test_limit`` images (class-balanced).

The config is a ``r2b.train.config.DataConfig`` (any object with its fields will do). ``r2b
train`` trains on these splits and ``r2b eval --split`` rebuilds them from a checkpoint's data
record and seed, so both see the same images.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch.utils.data import Dataset

from r2b.data.datasets import build_dataset
from r2b.data.splits import limit, validation_split
from r2b.errors import UserError


class DataSpec(Protocol):
    """The fields of ``DataConfig`` that choose a run's images."""

    name: str
    root: str | None
    download: bool
    image_size: int | None
    in_memory: bool | None
    train_limit: int | None
    test_limit: int | None
    val_fraction: float


class RunSplits(NamedTuple):
    train: Dataset
    val: Dataset | None
    test: Dataset


def _dataset_kw(cfg: DataSpec, seed: int) -> dict:
    return dict(root=cfg.root, download=cfg.download, image_size=cfg.image_size,
                in_memory=cfg.in_memory, seed=seed)  # fmt: skip


def _train_and_val(cfg: DataSpec, seed: int, random_crop: bool = True):
    kw = _dataset_kw(cfg, seed)
    train = build_dataset(cfg.name, split="train", random_crop=random_crop, **kw)
    train, val = validation_split(limit(train, cfg.train_limit), cfg.val_fraction, seed)
    if val is not None and len(val) == 0:
        raise UserError(
            f"data.val_fraction {cfg.val_fraction} leaves no validation images (no class has "
            "two or more); raise data.train_limit or set data.val_fraction to 0"
        )
    return train, val


def load_test(cfg: DataSpec, seed: int = 0) -> Dataset:
    """The test split, limited to ``test_limit`` images (class-balanced)."""
    test = build_dataset(cfg.name, split="test", random_crop=False, **_dataset_kw(cfg, seed))
    return limit(test, cfg.test_limit)


def load_data(cfg: DataSpec, seed: int = 0, random_crop: bool = True) -> RunSplits:
    """(train, validation or None, test) splits of the configured dataset.

    ``train_limit`` picks a class-balanced subset of the training split; ``val_fraction`` of it
    (per class, fixed by ``seed``) becomes the validation split and the rest is trained on.
    """
    train, val = _train_and_val(cfg, seed, random_crop)
    return RunSplits(train, val, load_test(cfg, seed))


def load_split(cfg: DataSpec, split: str, seed: int = 0) -> Dataset:
    """One split as a run saw it: "train" (the images trained on), "val" or "test" (evaluation
    crops throughout: what ``r2b eval`` measures)."""
    if split == "test":
        return load_test(cfg, seed)
    train, val = _train_and_val(cfg, seed, random_crop=False)
    if split == "train":
        return train
    if val is None:
        raise UserError(
            "--split val: this data has no validation split (the run's data.val_fraction is 0, "
            "or --data names other data); use --split test"
        )
    return val
