"""CIFAR-10 and CIFAR-100 (r2b.data.cifar) read from small fixtures in their real python-version
files (written at test time), and every way those files can be missing or foreign."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import CIFAR10_NAMES

from r2b.data import (
    InMemoryImageDataset,
    build_dataset,
    num_classes,
)
from r2b.data import cifar as cifar_module
from r2b.errors import UserError


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the python-version files are protocol-2 pickles


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """CIFAR-10's python-version layout: data_batch_1..5, test_batch, batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {"train": [], "test": []}
    for i in range(1, 6):
        data, labels = _cifar_rows(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        written["train"].append((data, labels))
        _dump(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": labels, "data": data,
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        })  # fmt: skip
    data, labels = _cifar_rows(rng, n_test), rng.integers(0, 10, n_test).tolist()
    written["test"].append((data, labels))
    _dump(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
        "filenames": [f"test_{j}.png" for j in range(n_test)],
    })  # fmt: skip
    _dump(folder / "batches.meta", {
        "num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072,
    })  # fmt: skip
    return written


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 1) -> dict:
    """CIFAR-100's python-version layout: train, test, meta (keys as bytes, as py3 would write)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data, fine = _cifar_rows(rng, n), rng.integers(0, 100, n).tolist()
        written[split] = (data, fine)
        _dump(folder / split, {
            b"filenames": [b"x.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine], b"data": data,
        })  # fmt: skip
    _dump(folder / "meta", {
        b"fine_label_names": [f"class_{k:02d}".encode() for k in range(100)],
        b"coarse_label_names": [f"super_{k:02d}".encode() for k in range(20)],
    })  # fmt: skip
    return written


def test_cifar10_reads_the_python_batches(tmp_path):
    written = write_cifar10(tmp_path)
    train = build_dataset("cifar10", root=tmp_path, split="train")
    test = build_dataset("cifar10", root=tmp_path, split="test")
    assert isinstance(train, InMemoryImageDataset)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (6, 3, 32, 32)
    assert train.classes == CIFAR10_NAMES and num_classes(train) == 10
    data = np.concatenate([d for d, _ in written["train"]])
    labels = sum((lab for _, lab in written["train"]), [])
    assert train.targets.tolist() == labels
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32 x 32
    i, c, y, x = 7, 2, 5, 30
    assert int(train.images[i, c, y, x]) == int(data[i, c * 1024 + y * 32 + x])
    image, label = train[i]
    assert image.shape == (3, 32, 32) and label == labels[i]
    assert train.kind == "cifar" and train.mean[0] == pytest.approx(0.4914)


def test_cifar100_uses_fine_labels_and_bytes_keys(tmp_path):
    written = write_cifar100(tmp_path)
    train = build_dataset("cifar100", root=tmp_path, split="train")
    test = build_dataset("cifar100", root=tmp_path, split="test")
    assert len(train) == 12 and len(test) == 5 and num_classes(train) == 100
    assert train.targets.tolist() == written["train"][1]
    assert train.classes[3] == "class_03"
    assert torch.equal(test.images.reshape(5, -1), torch.from_numpy(written["test"][0]))
    assert train.mean[0] == pytest.approx(0.5071)


def test_cifar_missing_root_names_path_and_url(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        build_dataset("cifar10", root=missing)
    msg = str(err.value)
    assert str(missing) in msg and "cifar-10-python.tar.gz" in msg and "\n" not in msg


def test_cifar_missing_files_names_expected_folder(tmp_path):
    with pytest.raises(UserError) as err:
        build_dataset("cifar100", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in msg
    with pytest.raises(UserError, match="needs a data root"):
        build_dataset("cifar10", root=None)


def test_cifar_download_offline_is_a_user_error(tmp_path, monkeypatch):
    # a URL on this machine where nothing listens: the download fails at once, as offline
    spec = dataclasses.replace(cifar_module.CIFAR_SPECS["cifar10"], url="http://127.0.0.1:9/c.tgz")
    monkeypatch.setitem(cifar_module.CIFAR_SPECS, "cifar10", spec)
    with pytest.raises(UserError) as err:
        build_dataset("cifar10", root=tmp_path / "new", download=True)
    msg = str(err.value)
    assert "could not download http://127.0.0.1:9/c.tgz" in msg
    assert str(tmp_path / "new" / "cifar-10-batches-py") in msg


def test_cifar_pickle_with_foreign_code_is_refused(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": Evil(), "labels": []})
    with pytest.raises(UserError, match="not a readable CIFAR file"):
        build_dataset("cifar10", root=tmp_path, split="test")
