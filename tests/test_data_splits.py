"""Subsets of a dataset (r2b.data.splits): class-balanced limits and the validation split."""

from __future__ import annotations

import torch
from datafiles import write_imagenet_tree

from r2b.data import (
    FolderStream,
    build_dataset,
)
from r2b.data.splits import limit, validation_indices, validation_split


def test_limit_takes_the_first_images_of_every_class_in_turn():
    ds = build_dataset("default", split="test")  # 100 images a class
    sub = limit(ds, 25)  # 2 rounds over the 10 classes, then classes 0-4 once more
    assert torch.bincount(sub.targets).tolist() == [3] * 5 + [2] * 5
    for c in range(10):
        first = (ds.targets == c).nonzero().flatten()[: 3 if c < 5 else 2]
        assert torch.equal(sub.images[sub.targets == c], ds.images[first])
    assert limit(ds, None) is ds and limit(ds, 5000) is ds


def test_validation_split_is_class_balanced_disjoint_and_fixed_by_the_seed():
    ds = build_dataset("default", split="test")
    train, val = validation_split(ds, 0.1, seed=3)
    assert torch.bincount(val.targets).tolist() == [10] * 10 and val.split == "val"
    assert torch.bincount(train.targets).tolist() == [90] * 10 and train.split == "train"
    idx = validation_indices(ds.targets, 0.1, seed=3)
    rest = torch.tensor(sorted(set(range(1000)) - set(idx.tolist())))
    assert torch.equal(val.images, ds.images[idx]) and torch.equal(train.images, ds.images[rest])
    assert torch.equal(validation_indices(ds.targets, 0.1, seed=3), idx)  # fixed by the seed
    assert not torch.equal(validation_indices(ds.targets, 0.1, seed=4), idx)
    per_class = [idx[ds.targets[idx] == c] for c in range(10)]
    assert any(p.max() - p.min() > 50 for p in per_class)  # drawn across the class, not a prefix
    assert validation_split(ds, 0.0, seed=3) == (ds, None)
    # every class with two or more images gives at least one and keeps at least one
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    assert validation_indices(labels, 0.01, 0).tolist() in ([1, 3], [1, 4], [1, 5], [2, 3],
                                                            [2, 4], [2, 5])  # fmt: skip
    assert len(validation_indices(labels, 0.99, 0)) == 3


def test_validation_split_of_a_streamed_folder_uses_evaluation_crops(tmp_path):
    write_imagenet_tree(tmp_path)
    stream = build_dataset("folder", root=tmp_path, split="train", image_size=16, in_memory=False)
    train, val = validation_split(stream, 0.34, seed=0)  # one image of each class's three
    assert len(val) == 3 and len(train) == 6 and val.sample_augment == ()
    assert train.sample_augment == ("crop",)
    assert sorted(val.targets.tolist()) == [0, 1, 2]
    assert set(val.paths).isdisjoint(train.paths) and len(set(val.paths + train.paths)) == 9
    single = FolderStream([val.paths[0]], [0], stream.classes, 16, train_crop=False)
    assert torch.equal(val[0][0], single[0][0])
