"""Image folders (r2b.data.folder) in the class-folder layout, read from small JPEG and PNG trees
written at test time: held in memory or streamed with per-sample crops, and their errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from datafiles import jpeg, write_imagenet_tree
from PIL import Image

from r2b.data import (
    FolderStream,
    build_augment,
    build_dataset,
)
from r2b.errors import UserError


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
    jpeg(path, smooth)
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
