"""Image folders in the class-folder layout (``torchvision.datasets.ImageFolder``'s)::

    ROOT/train/<class>/<image>.jpg      training split
    ROOT/test/<class>/<image>.jpg       test split (or ROOT/val/<class>/..., ImageNet's layout)

Classes are the sorted sub-folder names of ``ROOT/train`` (label k = k-th name); the test split
must use the same names. Images: JPEG, PNG, WebP, BMP or GIF (any case), decoded with Pillow to
RGB uint8 (3, H, W) (greyscale and CMYK JPEGs, as ImageNet has a few, become RGB).

Two ways to serve them:

- In memory (small folders such as the CIFAR-10 JPEG copy): all images decoded once into one
  (N, 3, H, W) uint8 tensor (``InMemoryImageDataset``). Without ``image_size`` every image must
  have the same size; with ``image_size = S`` each image is resized so its shorter side is S and
  center-cropped to S x S. Augmentation then runs on whole batches (``r2b.data.augment``).
- Streamed (ImageNet-size folders): ``FolderStream`` decodes one file per ``__getitem__`` in
  DataLoader workers. Training samples get a random-resized crop to S x S (S = ``image_size``,
  224 by default) drawn from a generator seeded by (seed, epoch, index), so a streamed epoch is
  reproducible whatever the number of workers; test samples are resized to shorter side
  round(S / 0.875) and center-cropped to S (the standard ImageNet evaluation crop, 256 -> 224).

``in_memory=None`` chooses: in memory when the decoded images would take at most
``IN_MEMORY_MAX_BYTES``.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from r2b.data.crops import sample_resized_crops
from r2b.data.memory import InMemoryImageDataset
from r2b.data.seeds import generator_for
from r2b.data.stats import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from r2b.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
IN_MEMORY_MAX_BYTES = 4 << 30
#: images up to this many pixels a side are "cifar"-kind (pad-crop, flip, rotate; CIFAR stats)
SMALL_IMAGE_SIDE = 64
DEFAULT_STREAM_SIZE = 224
EVAL_CROP_FRACTION = 0.875


def split_dir(root: str | Path | None, split: str) -> Path:
    """``ROOT/train`` for split "train"; ``ROOT/test`` or else ``ROOT/val`` for "test"/"val"."""
    if root is None:
        raise UserError("the folder dataset needs a root: a folder holding train/ and test/")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist; give a folder holding train/ and test/")
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "no folders"
    want = " or ".join(f"{root / n}/<class>/<image>" for n in names)
    raise UserError(f"no {split} split under {root} (found {found}); expected {want}")


def class_names(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``folder``."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(f"{folder} has no class folders; expected {folder}/<class>/<image>")
    return names


def scan(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files of ``folder/<class>/`` (sorted) and their labels (index into ``classes``)."""
    extra = sorted(set(class_names(folder)) - set(classes))
    if extra:
        raise UserError(f"{folder} has classes not in the training split: {', '.join(extra[:5])}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            continue
        files = sorted(e.name for e in os.scandir(sub) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        paths += [sub / f for f in files]
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}/<class>/")
    return paths, labels


def decode_bytes(data: bytes) -> torch.Tensor:
    """Decode an encoded image (JPEG, PNG, ...) to RGB uint8 (3, H, W) with Pillow."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = np.asarray(img.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


#: what reading or decoding one image file can raise (all become one-line UserErrors)
IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def image_error(path: str | Path, err: Exception) -> UserError:
    """The one-line error for a file that could not be read (permissions, I/O: an ``OSError``
    with an errno), is too large for Pillow (a decompression bomb), or is not a decodable image."""
    if isinstance(err, Image.DecompressionBombError):
        return UserError(
            f"image {path} has more pixels than Pillow's limit ({err}); if the file is genuine, "
            "shrink it, otherwise remove it"
        )
    if isinstance(err, OSError) and err.errno is not None:
        return UserError(f"cannot read image {path} ({err.strerror}); check the file's permissions")
    return UserError(f"cannot decode image {path} ({err}); remove or replace the file")


def decode_file(path: str | Path) -> torch.Tensor:
    """Decode one image file to RGB uint8 (3, H, W)."""
    try:
        return decode_bytes(Path(path).read_bytes())
    except IMAGE_ERRORS as err:
        raise image_error(path, err) from None


def resize_center_crop(img: torch.Tensor, short_side: int, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``short_side`` (antialiased), then center-crop size x size."""
    h, w = img.shape[-2:]
    if min(h, w) != short_side:
        img = TF.resize(img, short_side, antialias=True)
    return TF.center_crop(img, [size, size])


#: kind -> (mean, std) of its normalisation
KIND_STATS = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def infer_kind(side: int) -> str:
    """ "cifar" for images of at most ``SMALL_IMAGE_SIDE`` pixels a side, else "imagenet"."""
    return "cifar" if side <= SMALL_IMAGE_SIDE else "imagenet"


def read_folder(
    root: str | Path | None,
    split: str = "train",
    image_size: int | None = None,
    in_memory: bool | None = None,
    seed: int = 0,
    random_crop: bool = True,
    kind: str | None = None,
) -> Dataset:
    """One split of an image folder, in memory or streamed (see the module docstring).

    ``kind`` ("cifar" | "imagenet") overrides the kind inferred from the image size.
    """
    folder = split_dir(root, split)
    train_dir = split_dir(root, "train") if split != "train" else folder
    classes = class_names(train_dir)
    paths, labels = scan(folder, classes)
    if in_memory is None:
        side = image_size or max(decode_file(paths[0]).shape[-2:])
        in_memory = len(paths) * 3 * side * side <= IN_MEMORY_MAX_BYTES
    name = f"folder:{Path(root).name}"
    if in_memory:
        if kind == "imagenet" and image_size is None:
            image_size = DEFAULT_STREAM_SIZE
        images = _decode_all(paths, image_size)
        kind = kind or infer_kind(max(images.shape[-2:]))
        mean, std = KIND_STATS[kind]
        return InMemoryImageDataset(images, labels, classes, kind, mean, std, name, split)
    size = image_size or DEFAULT_STREAM_SIZE
    train_crop = split == "train" and random_crop
    return FolderStream(paths, labels, classes, size, train_crop, seed, name, split)


def _decode_all(paths: list[Path], image_size: int | None) -> torch.Tensor:
    images = []
    for path in paths:
        img = decode_file(path)
        if image_size is not None:
            img = resize_center_crop(img, image_size, image_size)
        elif images and img.shape != images[0].shape:
            raise UserError(
                f"images differ in size ({path}: {tuple(img.shape[-2:])} vs "
                f"{tuple(images[0].shape[-2:])}); pass image_size (data.image_size) to resize them"
            )
        images.append(img)
    return torch.stack(images)


def crop_resize(img: Image.Image, box_of, size: int) -> np.ndarray:
    """Decode ``img`` and resample the box ``box_of(height, width)`` to size x size RGB (H, W, 3).

    The box is chosen from the header's size before decoding, so a JPEG whose box shrinks by 2x
    or more is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, ``Image.draft``), which
    cuts decoding time several-fold on ImageNet-size photos; the box is rescaled to match. The
    resampling is Pillow's antialiased bilinear resize of the box.
    """
    width, height = img.size
    left, top, right, bottom = box_of(height, width)
    shrink = min(right - left, bottom - top) / size
    if img.format == "JPEG" and shrink >= 2:
        img.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
    sx, sy = img.size[0] / width, img.size[1] / height
    box = (left * sx, top * sy, right * sx, bottom * sy)
    out = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.array(out)


class FolderStream(Dataset):
    """Streamed image folder: ``ds[i]`` decodes file i -> ``(image (3, S, S) uint8, label int)``.

    Training split (``train_crop=True``): random-resized crop (scale 0.08..1, ratio 3/4..4/3,
    ``r2b.data.crops``) seeded by ``(seed, epoch, i)``; ``set_epoch(e)`` (called by the loader)
    changes the epoch. Test split: the central square of 0.875 of the shorter side (= resize to
    S / 0.875, center crop S). Both are decoded and resampled by ``crop_resize``.
    Attributes as ``InMemoryImageDataset``: ``classes``, ``targets``, ``kind`` ("imagenet"),
    ``mean``, ``std``; ``sample_augment`` names the augmentations already done here ("crop").
    """

    in_memory = False
    kind = "imagenet"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        classes: list[str],
        image_size: int = DEFAULT_STREAM_SIZE,
        train_crop: bool = True,
        seed: int = 0,
        name: str = "",
        split: str = "",
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.targets = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = list(classes)
        self.size = int(image_size)
        self.train_crop = train_crop
        self.seed = seed
        self.epoch = 0
        self.name = name
        self.split = split
        self.sample_augment = ("crop",) if train_crop else ()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def crop_box(self, index: int, height: int, width: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in the full image of sample ``index`` for this epoch."""
        if self.train_crop:
            g = generator_for(self.seed, self.epoch, index)
            top, left, h, w = sample_resized_crops(1, height, width, generator=g)[0].tolist()
            return left, top, left + w, top + h
        side = min(height, width) * EVAL_CROP_FRACTION  # resize to S/0.875, center crop S
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                rgb = crop_resize(img, lambda h, w: self.crop_box(index, h, w), self.size)
        except IMAGE_ERRORS as err:
            # in a DataLoader worker this comes back as a UserError with the worker's traceback
            # as its message; UserError keeps only this line (r2b.errors)
            raise image_error(path, err) from None
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), int(self.targets[index])

    def __repr__(self) -> str:
        return (
            f"FolderStream({self.name!r}, split={self.split!r}, {len(self)} images -> "
            f"{self.size}x{self.size}, {len(self.classes)} classes)"
        )
