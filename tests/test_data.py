"""Data layer: every dataset kind read from small fixtures in its real on-disk format (written at
test time), the embedded default data, the shared CIFAR-10 JPEG copy (when present), batch
augmentation, mix-up, and loader determinism."""

from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from r2b.data import (
    DATASETS,
    BatchAugment,
    EpochSampler,
    FolderStream,
    InMemoryImageDataset,
    build_augment,
    build_dataset,
    build_loader,
    color_jitter,
    mixup,
    mixup_params,
    num_classes,
)
from r2b.data import cifar as cifar_module
from r2b.data.crops import sample_resized_crops
from r2b.data.default import asset_path
from r2b.data.splits import limit, validation_indices, validation_split
from r2b.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


# --------------------------------------------------------------------------- fixture writers


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


def _jpeg(path: Path, array: np.ndarray) -> None:
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
            _jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", img)
        img = rng.integers(0, 256, size=(56, 72, 3), dtype=np.uint8)
        _jpeg(root / "val" / wnid / f"ILSVRC2012_val_{c:08d}.JPEG", img)


# --------------------------------------------------------------------------- CIFAR


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


# --------------------------------------------------------------------------- folders


def test_imagenet_tree_in_memory_resizes_to_image_size(tmp_path):
    write_imagenet_tree(tmp_path)
    train = build_dataset("folder", root=tmp_path, split="train", image_size=32, in_memory=True)
    val = build_dataset("folder", root=tmp_path, split="test", image_size=32, in_memory=True)
    assert train.images.shape == (9, 3, 32, 32) and val.images.shape == (3, 3, 32, 32)
    assert train.classes == ["n01440764", "n01443537", "n01484850"]
    assert train.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # class k painted channel k at 255: it stays the brightest channel after resizing
    means = train.images.float().mean(dim=(2, 3))
    assert means.argmax(1).tolist() == train.targets.tolist()
    with pytest.raises(UserError, match="differ in size"):
        build_dataset("folder", root=tmp_path, split="train", in_memory=True)


def test_imagenet_tree_streams_reproducible_random_crops(tmp_path):
    write_imagenet_tree(tmp_path)
    train = build_dataset("folder", root=tmp_path, split="train", image_size=24, in_memory=False)
    assert isinstance(train, FolderStream) and train.sample_augment == ("crop",)
    a0, label = train[4]
    assert a0.shape == (3, 24, 24) and a0.dtype == torch.uint8 and label == 1
    assert torch.equal(train[4][0], a0)  # same (seed, epoch, index): same crop
    crops = []
    for epoch in range(1, 6):
        train.set_epoch(epoch)
        crops.append(train[4][0])
    assert any(not torch.equal(c, a0) for c in crops)  # a new crop in other epochs
    val = build_dataset("folder", root=tmp_path, split="val", image_size=24, in_memory=False)
    assert val.sample_augment == () and val[0][0].shape == (3, 24, 24)
    first = val[0][0]
    val.set_epoch(3)
    assert torch.equal(val[0][0], first)  # the evaluation crop does not change with the epoch
    # ...and it is the central square of 0.875 of the shorter side, resampled (at 32 pixels the
    # 49-pixel box of these 72 x 56 images shrinks less than 2x: no reduced-scale decoding)
    val32 = build_dataset("folder", root=tmp_path, split="val", image_size=32, in_memory=False)
    with Image.open(val32.paths[0]) as img:
        w, h = img.size
        side = 0.875 * min(h, w)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        want = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, box=box))
    assert torch.equal(val32[0][0], torch.from_numpy(want.copy()).permute(2, 0, 1))


def test_streamed_crops_of_large_jpegs_decode_at_reduced_scale(tmp_path, monkeypatch):
    from torchvision.transforms.v2 import functional as TF

    from r2b.data.folder import decode_file

    yy, xx = np.mgrid[0:600, 0:800]
    smooth = np.stack([xx * 0.3, yy * 0.4, (xx + yy) * 0.15], -1).astype(np.uint8)
    path = tmp_path / "val" / "a" / "big.JPEG"
    _jpeg(path, smooth)
    stream = FolderStream([path], [0], ["a"], image_size=64, train_crop=False)
    from PIL.JpegImagePlugin import JpegImageFile

    drafts, draft = [], JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    got = stream[0][0]
    assert drafts == [(100, 75)]  # a 525-pixel box shrunk to 64: decoded at 1/8 scale
    left, top, right, bottom = stream.crop_box(0, 600, 800)
    full = decode_file(path)
    want = TF.resized_crop(full, round(top), round(left), round(bottom - top),
                           round(right - left), [64, 64], antialias=True)  # fmt: skip
    assert got.shape == (3, 64, 64) and (got.float() - want.float()).abs().mean() < 3


def test_streamed_loader_same_batches_with_and_without_workers(tmp_path):
    write_imagenet_tree(tmp_path)
    train = build_dataset("folder", root=tmp_path, split="train", image_size=16, in_memory=False)

    def epoch(num_workers):
        loader = build_loader(train, batch_size=4, train=True, num_workers=num_workers, seed=3)
        loader.set_epoch(2)
        return list(loader)

    main, workers = epoch(0), epoch(2)
    assert len(main) == 2  # 9 images, batches of 4, last one dropped
    for (xa, ya), (xb, yb) in zip(main, workers):
        assert xa.shape == (4, 3, 16, 16) and xa.dtype == torch.uint8
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_imagenet_name_streams_a_folder_with_imagenet_statistics(tmp_path):
    write_imagenet_tree(tmp_path)
    val = build_dataset("imagenet", root=tmp_path, split="val", image_size=24)
    assert isinstance(val, FolderStream) and val.mean == (0.485, 0.456, 0.406)
    small = build_dataset("imagenet", root=tmp_path, split="train", in_memory=True, image_size=32)
    assert small.in_memory and small.kind == "imagenet" and small.std == (0.229, 0.224, 0.225)
    assert build_augment(small, train=True).ops == ("crop", "flip", "jitter")


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset("folder", root=tmp_path / "missing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        build_dataset("folder", root=tmp_path, split="test")
    assert "test" in str(err.value) and "val" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="no images"):
        build_dataset("folder", root=tmp_path, split="train")
    with pytest.raises(UserError, match="unknown dataset"):
        build_dataset("imagenet21k")


def test_folder_size_decides_memory_or_stream(tmp_path, monkeypatch):
    from r2b.data import folder

    write_imagenet_tree(tmp_path)
    small = build_dataset("folder", root=tmp_path, split="test", image_size=32)
    assert small.in_memory
    monkeypatch.setattr(folder, "IN_MEMORY_MAX_BYTES", 100)
    assert not build_dataset("folder", root=tmp_path, split="test", image_size=32).in_memory


# --------------------------------------------------------------------------- default + shared data


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


# --------------------------------------------------------------------------- augmentation


def _batch(n=6, h=32, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def test_crop_is_pad_and_crop_at_the_sampled_offset():
    x = _batch()
    aug = BatchAugment("cifar", augment=["crop"], pad=4)
    params = aug.sample(6, 32, 32)
    out = aug.apply(x, params)
    assert out.shape == x.shape
    padded = F.pad(x.float() / 255, [4, 4, 4, 4])
    for i, (dy, dx) in enumerate(params["shift"].tolist()):
        want = padded[i, :, 4 + dy : 36 + dy, 4 + dx : 36 + dx]
        assert torch.allclose(out[i], want, atol=1e-6)
    assert params["shift"].abs().max() <= 4


def test_flip_is_a_mirror_and_normalisation_is_exact():
    x = _batch()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    aug = BatchAugment("cifar", augment=["flip"], mean=mean, std=std)
    flip = torch.tensor([True, False, True, False, False, True])
    out = aug.apply(x, {"flip": flip})
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    want = (torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).float() / 255 - m) / s
    assert torch.allclose(out, want, atol=1e-5)


def test_rotation_by_90_degrees_is_rot90_and_small_angles_stay_in_range():
    x = _batch(n=2)
    aug = BatchAugment("cifar", augment=["rotate"])
    out = aug.apply(x, {"angle": torch.tensor([90.0, 0.0])})
    r = out[0] * 255
    assert torch.allclose(r, torch.rot90(x[0].float(), 1, (1, 2)), atol=1e-3) or torch.allclose(
        r, torch.rot90(x[0].float(), -1, (1, 2)), atol=1e-3
    )
    assert torch.allclose(out[1] * 255, x[1].float(), atol=1e-3)
    angles = aug.sample(1000, 32, 32)["angle"]
    assert angles.abs().max() <= 15 and angles.std() > 5


def test_random_crops_from_the_generator_repeat_per_epoch():
    x = _batch(n=16)
    aug = BatchAugment("cifar", seed=5)
    aug.set_epoch(3)
    a = aug(x)
    aug.set_epoch(4)
    b = aug(x)
    aug.set_epoch(3)
    assert torch.equal(aug(x), a) and not torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == x.shape


def test_imagenet_resized_crop_box_and_eval_center_crop():
    x = _batch(n=3, h=40, w=48)
    aug = BatchAugment("imagenet", augment=["crop"], image_size=20)
    whole = torch.tensor([[0, 0, 40, 48]] * 3)
    out = aug.apply(x, {"box": torch.tensor([[10, 12, 20, 20]] * 3)})
    assert torch.allclose(out * 255, x[:, :, 10:30, 12:32].float(), atol=1e-3)  # 1:1 box
    assert aug.apply(x, {"box": whole}).shape == (3, 3, 20, 20)
    boxes = sample_resized_crops(500, 40, 48, generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (
        (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 48).all()
    )
    area = (h * w).float() / (40 * 48)
    assert area.min() >= 0.05 and area.max() <= 1.0 and area.std() > 0.1
    ev = BatchAugment("imagenet", train=False, image_size=32)
    assert torch.allclose(ev(x) * 255, x[:, :, 4:36, 8:40].float(), atol=1e-3)


def test_color_jitter_identity_and_brightness():
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(color_jitter(x, torch.ones(4, 3)), x, atol=1e-6)
    dark = color_jitter(x, torch.tensor([[0.5, 1.0, 1.0]] * 4))
    assert torch.allclose(dark, x * 0.5, atol=1e-6)
    grey = color_jitter(x, torch.tensor([[1.0, 1.0, 0.0]] * 4))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    out = BatchAugment("imagenet", augment=["jitter"], image_size=8)(_batch(h=8, w=8))
    assert out.shape == (6, 3, 8, 8) and torch.isfinite(out).all()


def test_build_augment_skips_crops_done_per_sample(tmp_path):
    write_imagenet_tree(tmp_path)
    stream = build_dataset("folder", root=tmp_path, split="train", image_size=16, in_memory=False)
    aug = build_augment(stream, train=True)
    assert aug.ops == ("flip", "jitter") and aug.image_size == 16
    memory = build_dataset("default", split="train")
    aug = build_augment(memory, train=True)
    assert aug.ops == ("crop", "flip", "rotate") and aug.kind == "cifar"
    assert build_augment(memory, train=False).ops == ()
    with pytest.raises(ValueError, match="unknown cifar augmentation"):
        build_augment(memory, train=True, augment=["jitter"])


# --------------------------------------------------------------------------- mix-up


def test_mixup_mixes_the_permuted_pairs_and_targets_sum_to_one():
    x = torch.randn(8, 3, 4, 4)
    y = torch.arange(8) % 5
    lam, perm = mixup_params(8, 0.4, torch.Generator().manual_seed(11))
    xm, t = mixup(x, y, 0.4, 5, torch.Generator().manual_seed(11))
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm], atol=1e-6)
    assert torch.allclose(t.sum(1), torch.ones(8))
    for i in range(8):
        want = torch.zeros(5)
        want[y[i]] += lam
        want[y[perm[i]]] += 1 - lam
        assert torch.allclose(t[i], want, atol=1e-6)
    xi, ti = mixup(x, y, 0.0, 5, torch.Generator().manual_seed(1))
    assert torch.equal(xi, x) and torch.equal(ti, F.one_hot(y, 5).float())
    lams = [mixup_params(2, 0.2, torch.Generator().manual_seed(s))[0] for s in range(200)]
    assert 0.3 < float(np.mean(lams)) < 0.7  # Beta(a, a) is symmetric about 1/2
    with pytest.raises(TypeError):
        mixup(_batch(), y[:6], 0.2, 5)


# --------------------------------------------------------------------------- loaders


def test_epoch_order_is_a_function_of_seed_and_epoch():
    ds = build_dataset("default", split="test")
    loader = build_loader(ds, batch_size=64, train=True, seed=7)
    assert len(loader) == 1000 // 64

    def labels(ld, epoch):
        ld.set_epoch(epoch)
        return torch.cat([y for _, y in ld])

    e2 = labels(loader, 2)
    resumed = build_loader(ds, batch_size=64, train=True, seed=7)  # a new process, say
    assert torch.equal(labels(resumed, 2), e2)
    assert not torch.equal(labels(loader, 3), e2)
    assert not torch.equal(labels(build_loader(ds, 64, True, seed=8), 2), e2)
    x, y = next(iter(loader))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    test_loader = build_loader(ds, batch_size=300, train=False)
    batches = list(test_loader)
    assert [len(b[1]) for b in batches] == [300, 300, 300, 100]
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.targets)


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


def test_sampler_shards_cover_every_index_once():
    shards = []
    for rank in range(3):
        s = EpochSampler(10, shuffle=True, seed=1, rank=rank, world_size=3)
        s.set_epoch(4)
        shards.append(list(s))
    assert [len(s) for s in shards] == [4, 4, 4]
    flat = sum(shards, [])
    assert set(flat) == set(range(10)) and len(flat) == 12  # padded with 2 repeats
    one = EpochSampler(10, shuffle=True, seed=1)
    one.set_epoch(4)
    assert sorted(one) == list(range(10))


def test_png_bytes_decode_in_folders(tmp_path):
    for c in ("a", "b"):
        for split in ("train", "test"):
            img = Image.fromarray(np.full((8, 8, 3), 40 if c == "a" else 200, np.uint8))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "0.png").write_bytes(buf.getvalue())
    ds = build_dataset("folder", root=tmp_path, split="test")
    assert ds.images.shape == (2, 3, 8, 8)
    assert ds.images[0].max() == 40 and ds.images[1].min() == 200


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_augment_and_mixup_on_cuda_match_cpu():
    x = _batch(n=32)
    for aug in (
        BatchAugment("cifar", seed=3, mean=(0.5,) * 3, std=(0.25,) * 3),
        BatchAugment("imagenet", image_size=24, seed=3),
    ):
        aug.set_epoch(1)
        cpu = aug(x)
        aug.set_epoch(1)
        gpu = aug(x.cuda())
        assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    y = torch.arange(32) % 10
    xm, t = mixup(x.float().cuda(), y.cuda(), 0.2, 10, torch.Generator().manual_seed(0))
    xc, tc = mixup(x.float(), y, 0.2, 10, torch.Generator().manual_seed(0))
    assert xm.is_cuda and torch.allclose(xm.cpu(), xc) and torch.allclose(t.cpu(), tc)
