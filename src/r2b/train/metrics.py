"""Training metrics: top-k accuracy, the flip ratio of binary weights, and the per-epoch log.

- top-k: a sample counts as correct when its label is among the ``k`` largest logits (for
  soft mix-up targets, the label is the target's arg-max).
- Flip ratio of an epoch: the fraction of binary-conv weight signs ``sign(W)`` (sign(0) = +1)
  that differ from the previous epoch's, over all binary convs with a weight quantizer. The usual
  health signal of binary training (Helwegen et al. 2019, "Latent weights do not exist"): near 0
  the weights are frozen, a large ratio late in training means they oscillate.
- ``MetricsLog`` keeps one row per epoch; ``metrics.csv`` is rewritten from the rows after every
  epoch (so it always matches the last checkpoint); TensorBoard scalars are added when the
  ``tensorboard`` package is installed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from torch import nn

from r2b.io import atomic_write
from r2b.layers import BinaryConv2d

COLUMNS = (
    "epoch", "step", "lr", "loss", "ce", "kd", "att", "train_top1",
    "val_loss", "val_top1", "val_top5",  # empty without a validation split (data.val_fraction)
    "test_loss", "test_top1", "test_top5", "flip_ratio", "time_s",
)  # fmt: skip


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is in the top-k logits, for each k (capped at #classes)."""
    if target.dtype.is_floating_point:
        target = target.argmax(dim=1)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == target.view(-1, 1)
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def weight_binary_convs(model: nn.Module) -> list[BinaryConv2d]:
    """Convolutions whose weights are binarised (a weight quantizer is set)."""
    return [m for m in model.modules() if isinstance(m, BinaryConv2d) and m.weight_quantizer]


def weight_signs(model: nn.Module) -> torch.Tensor | None:
    """Signs of all binarised weights as one flat bool tensor (True = +1), or None if none."""
    convs = weight_binary_convs(model)
    if not convs:
        return None
    return torch.cat([(m.weight.detach() >= 0).flatten() for m in convs])


def flip_ratio(previous: torch.Tensor | None, current: torch.Tensor | None) -> float | None:
    """Fraction of signs that changed between two ``weight_signs`` snapshots."""
    if previous is None or current is None:
        return None
    return int((previous != current).sum()) / max(current.numel(), 1)


def clip_binary_weights(model: nn.Module, bound: float) -> None:
    """Clamp latent weights of binarised convs to [-bound, bound] (larq's clip in the bnn step)."""
    with torch.no_grad():
        for m in weight_binary_convs(model):
            m.weight.clamp_(-bound, bound)


class MetricsLog:
    """Per-epoch rows of one stage, written to ``metrics.csv`` and (optionally) TensorBoard."""

    def __init__(self, path: str | Path, rows: list[dict] | None = None, tb_dir=None, tag=""):
        self.path = Path(path)
        self.rows = rows if rows is not None else []  # shared with the caller's list
        self.tag = tag
        self.writer = _tensorboard(tb_dir, purge_step=self.rows[-1]["step"] if self.rows else None)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.writer is not None:
            for key in COLUMNS[2:]:
                if row.get(key) is not None:
                    self.writer.add_scalar(f"{self.tag}/{key}", row[key], row["step"])
            self.writer.flush()

    def write_csv(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in self.rows:
            w.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        atomic_write(self.path, buf.getvalue().encode())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _tensorboard(log_dir, purge_step=None):
    """A TensorBoard ``SummaryWriter`` when tensorboard is installed and a folder is given."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)
