"""Calibration images for int8 float layers (``to_packed(model, "int8", calibration)``).

Post-training quantisation needs the ranges the quantised layers' inputs take on real data
(``r2b.packed.int8.calibration_ranges``), so calibration uses training images, never the split
that accuracy is reported on: a class-balanced subset of ``n`` images of the split the model
was trained on (``r2b.data.limit``), normalised and center-cropped exactly as for evaluation
(the evaluation ``BatchAugment``).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from r2b.errors import UserError

#: ``--calib-images`` default: enough for stable min/max ranges of three layer kinds
DEFAULT_CALIBRATION_IMAGES = 512


def calibration_batches(
    dataset: Dataset, n: int, image_size: int | None = None, batch_size: int = 64
) -> list[torch.Tensor]:
    """Normalised ``(B, 3, H, W)`` float batches of a class-balanced subset of ``n`` images."""
    from r2b.data import build_augment, limit
    from r2b.train.evaluate import eval_batches

    if n < 1:
        raise UserError(f"--calib-images is {n}; give 1 or more training images")
    subset = limit(dataset, min(n, len(dataset)))
    transform = build_augment(subset, train=False, image_size=image_size)
    with torch.no_grad():
        return [transform(images) for images, _ in eval_batches(subset, batch_size)]


def random_calibration(n: int, input_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` standard-normal images (what a normalised image roughly is): for a model with random
    weights, whose int8 engine is only timed, never scored."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [min(64, n - i) for i in range(0, n, 64)]
    return [torch.randn(b, 3, input_size, input_size, generator=gen) for b in sizes]
