"""The embedded default dataset (r2b.data.default) and the shared CIFAR-10 JPEG copy (when present)
it was drawn from."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from datafiles import CIFAR10_NAMES

from r2b.data import (
    DATASETS,
    build_dataset,
)
from r2b.data.default import asset_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_default_dataset_is_embedded_balanced_and_small():
    train = build_dataset("default", split="train")
    test = build_dataset("default", split="test")
    assert train.images.shape == (5000, 3, 32, 32) and test.images.shape == (1000, 3, 32, 32)
    assert torch.bincount(train.targets).tolist() == [500] * 10
    assert torch.bincount(test.targets).tolist() == [100] * 10
    assert train.classes == CIFAR10_NAMES == test.classes
    assert asset_path().stat().st_size < 3_000_000  # MB-sized, shipped in the wheel
    # real photos: channel means near CIFAR-10's, a spread of pixel values
    means = train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(train.mean), atol=0.03)
    assert train.images.float().std() > 50
    assert set(DATASETS) == {"default", "cifar10", "cifar100", "folder", "imagenet"}


def _extract_some(archive: Path, into: Path, per_class: int) -> None:
    """Extract an archive of the shared copy, only the first ``per_class`` files of each class."""
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile() or int(Path(member.name).stem) < per_class:
                tar.extract(member, into, filter="data")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} absent")
def test_shared_cifar10_jpeg_folder_and_default_match_it(tmp_path):
    _extract_some(SHARED_DATA / "cifar10-train.tar.gz", tmp_path, per_class=20)
    _extract_some(SHARED_DATA / "cifar10-test.tar.gz", tmp_path, per_class=100)
    root = tmp_path / "cifar10"
    train = build_dataset("folder", root=root, split="train")
    test = build_dataset("folder", root=root, split="test")
    assert train.classes == CIFAR10_NAMES and train.kind == "cifar"
    assert train.images.shape == (200, 3, 32, 32)
    assert test.images.shape == (1000, 3, 32, 32)
    assert torch.bincount(test.targets).tolist() == [100] * 10
    # the embedded default data is these very files: train <class>/0000..0499, test 0000..0099
    default_train = build_dataset("default", split="train")
    default_test = build_dataset("default", split="test")
    assert torch.equal(default_train.images[500:520], train.images[20:40])  # automobile 0..19
    assert torch.equal(default_test.images, test.images)
