"""CIFAR-10 and CIFAR-100 from their standard "python version" files (Krizhevsky 2009).

On-disk layout (what ``tar xzf cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` gives,
the same that ``torchvision.datasets.CIFAR10/100`` reads)::

    ROOT/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    ROOT/cifar-100-python/train, test, meta

Each file is a pickled dict: ``data`` uint8 (N, 3072) rows of R, G, B planes of 32 x 32 pixels,
labels under ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100), class names in the meta file
under ``label_names`` / ``fine_label_names``. The files are read with a restricted unpickler that
only rebuilds numpy arrays (no other code can run while loading). ``download=True`` fetches and
unpacks the archive (torchvision's downloader, which checks the archive's MD5).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from r2b.data.memory import InMemoryImageDataset
from r2b.data.stats import MEAN_STD
from r2b.errors import UserError


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives on disk and on the web."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str
    labels_key: str
    url: str
    archive: str
    md5: str


CIFAR_SPECS = {
    "cifar10": CifarSpec(
        "CIFAR-10", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        "batches.meta", "label_names", "labels",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": CifarSpec(
        "CIFAR-100", "cifar-100-python", ("train",), ("test",),
        "meta", "fine_label_names", "fine_labels",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
}  # fmt: skip

#: (module, name) pairs the CIFAR pickles may reference: numpy array reconstruction only.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    """Load one CIFAR file; keys are returned as ``str`` whatever the pickle stored."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror}); check its permissions") from None
    with f:
        try:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
            msg = f"{path} is not a readable CIFAR file ({err}); unpack it again"
            raise UserError(msg) from err
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR file (expected a dict); unpack it again")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _where_to_put(spec: CifarSpec, root: Path) -> str:
    return (
        f"put {spec.title} at {root / spec.folder}/ (download {spec.url} and unpack it into "
        f"{root}), or pass download=True (--set data.download=true) when online"
    )


def cifar_folder(name: str, root: str | Path | None, download: bool = False) -> Path:
    """The folder holding the CIFAR files under ``root``, downloading them when asked."""
    spec = CIFAR_SPECS[name]
    if root is None:
        raise UserError(f"{spec.title} needs a data root; {_where_to_put(spec, Path('ROOT'))}")
    root = Path(root).expanduser()
    if not root.is_dir() and not download:
        raise UserError(f"data root {root} does not exist; {_where_to_put(spec, root)}")
    folder = root / spec.folder
    needed = (*spec.train_files, *spec.test_files, spec.meta_file)
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download:
        _download(spec, root)
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        lacks = ", ".join(missing)
        raise UserError(
            f"{spec.title} not found: {folder} lacks {lacks}; {_where_to_put(spec, root)}"
        )
    return folder


def _download(spec: CifarSpec, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(spec.url, str(root), filename=spec.archive, md5=spec.md5)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise UserError(
            f"could not download {spec.url} ({type(err).__name__}: {err}); offline? "
            f"{_where_to_put(spec, root)}"
        ) from err


def read_cifar(
    name: str, root: str | Path | None, split: str = "train", download: bool = False
) -> InMemoryImageDataset:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels), one split,
    as an ``InMemoryImageDataset`` of (N, 3, 32, 32) uint8 images."""
    spec = CIFAR_SPECS[name]
    folder = cifar_folder(name, root, download)
    files = spec.train_files if split == "train" else spec.test_files
    datas, labels = [], []
    for fname in files:
        entry = _load_pickle(folder / fname)
        data = np.asarray(entry.get("data"))
        targets = entry.get(spec.labels_key)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{folder / fname}: 'data' is not uint8 (N, 3072); unpack it again")
        if targets is None or len(targets) != len(data):
            raise UserError(f"{folder / fname}: '{spec.labels_key}' missing or of wrong length")
        datas.append(data)
        labels.extend(int(t) for t in targets)
    names = _load_pickle(folder / spec.meta_file).get(spec.names_key)
    if names is None:
        raise UserError(f"{folder / spec.meta_file} has no '{spec.names_key}'; unpack it again")
    classes = [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in names]
    images = torch.from_numpy(np.concatenate(datas).reshape(-1, 3, 32, 32))
    mean, std = MEAN_STD[name]
    try:
        return InMemoryImageDataset(images, labels, classes, "cifar", mean, std, name, split)
    except ValueError as err:
        raise UserError(f"{folder}: {err}; unpack the archive again") from err
