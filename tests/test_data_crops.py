"""Random-resized-crop boxes and the evaluation centre crop (r2b.data.crops)."""

from __future__ import annotations

import torch
from datafiles import image_batch

from r2b.data import (
    BatchAugment,
)
from r2b.data.crops import sample_resized_crops


def test_imagenet_resized_crop_box_and_eval_center_crop():
    x = image_batch(n=3, h=40, w=48)
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
