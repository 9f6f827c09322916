"""Build ``src/r2b/assets/cifar10_default.npz``, the embedded default dataset, from the CIFAR-10
JPEG copy in ``shared/data`` (cifar10-train.tar.gz, cifar10-test.tar.gz; see its README).

Selection is deterministic: for each class (sorted names, CIFAR-10 order) the first
``--train-per-class`` files of ``cifar10/train/<class>/`` and the first ``--test-per-class`` files
of ``cifar10/test/<class>/`` in sorted file-name order (0000.jpg, 0001.jpg, ...). The JPEG bytes
are stored unchanged (no re-encoding), so the asset decodes to exactly the source pixels.

    python scripts/make_default_dataset.py                      # ../shared/data -> the asset
    python scripts/make_default_dataset.py --data DIR --out PATH --train-per-class 500

Running it twice gives byte-identical archives' contents (same arrays; npz/zip timestamps aside).
"""

from __future__ import annotations

import argparse
import hashlib
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "src" / "r2b" / "assets" / "cifar10_default.npz"
ARCHIVES = ("cifar10-train.tar.gz", "cifar10-test.tar.gz")


def unpack(data: Path, into: Path) -> Path:
    """Unpack both archives into ``into``; returns the ``cifar10`` folder."""
    for name in ARCHIVES:
        with tarfile.open(data / name) as tar:
            tar.extractall(into, filter="data")
    return into / "cifar10"


def select(split_dir: Path, per_class: int) -> tuple[list[str], list[str], list[int]]:
    """Classes, chosen relative file names ``<class>/<file>`` and labels."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted(p.name for p in (split_dir / cls).iterdir() if p.suffix == ".jpg")
        if len(names) < per_class:
            raise SystemExit(f"{split_dir / cls} has {len(names)} images, need {per_class}")
        files += [f"{cls}/{n}" for n in names[:per_class]]
        labels += [label] * per_class
    return classes, files, labels


def pack(split_dir: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated JPEG bytes and offsets (N + 1)."""
    blobs = [(split_dir / f).read_bytes() for f in files]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding the archives")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=100)
    args = p.parse_args(argv)
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(args.data, Path(tmp))
        for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
            classes, files, labels = select(root / split, per_class)
            if "classes" in arrays and list(arrays["classes"]) != classes:
                raise SystemExit("train and test class folders differ")
            arrays["classes"] = np.array(classes)
            arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = pack(root / split, files)
            arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)
            arrays[f"{split}_files"] = np.array(files)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode() + arrays[key].tobytes())
    n_train, n_test = len(arrays["train_labels"]), len(arrays["test_labels"])
    print(
        f"wrote {args.out}: {args.out.stat().st_size} bytes, {n_train} train + {n_test} test "
        f"images, {len(arrays['classes'])} classes; content sha256 {digest.hexdigest()}"
    )


if __name__ == "__main__":
    main()
