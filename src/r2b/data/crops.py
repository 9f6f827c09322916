"""Random-resized-crop boxes (Szegedy et al. 2015, "Going deeper with convolutions"; the
ImageNet training crop of ResNet and of the paper, docs/method.md section 5).

A box covers a fraction ``s ~ U(scale)`` of the image area with aspect ratio ``r`` drawn
log-uniformly from ``ratio``: ``w = sqrt(s A r)``, ``h = sqrt(s A / r)``, placed uniformly at
random. Up to ``tries`` candidates are drawn and the first that fits is used; when none fits, the
central box of the image clamped to the ratio range is used. Vectorised over ``n`` images of the
same size; randomness comes only from ``generator`` (CPU), so boxes are reproducible.
"""

from __future__ import annotations

import math

import torch


def sample_resized_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    tries: int = 10,
) -> torch.Tensor:
    """``n`` boxes ``(top, left, h, w)`` as an (n, 4) int64 tensor inside a height x width image."""
    area = height * width
    u = torch.rand(n, tries, 4, generator=generator, dtype=torch.float64)
    s = scale[0] + (scale[1] - scale[0]) * u[..., 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    r = torch.exp(log_r)
    w = torch.round(torch.sqrt(s * area * r))
    h = torch.round(torch.sqrt(s * area / r))
    fits = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.int().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp_min(0)
    h, w = h[rows, pick], w[rows, pick]
    top = torch.floor(u[rows, pick, 2] * (height - h + 1))
    left = torch.floor(u[rows, pick, 3] * (width - w + 1))
    fh, fw = _central_box(height, width, ratio)
    fallback = first < 0
    h = torch.where(fallback, float(fh), h)
    w = torch.where(fallback, float(fw), w)
    top = torch.where(fallback, float((height - fh) // 2), top)
    left = torch.where(fallback, float((width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1).long()


def _central_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(h, w) of the largest central box whose aspect ratio lies in ``ratio``."""
    r = width / height
    if r < ratio[0]:
        return round(width / ratio[0]), width
    if r > ratio[1]:
        return height, round(height * ratio[1])
    return height, width
