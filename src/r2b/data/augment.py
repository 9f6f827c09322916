"""Batch-level data augmentation on uint8 image batches, on any device (docs/method.md section 5).

The loader yields uint8 (N, 3, H, W) batches; ``BatchAugment`` turns one into a normalised float
batch in a few vectorised tensor operations, on the device the batch is on (on 2 CPU cores,
per-sample PIL transforms in workers would be the bottleneck). All geometric operations of one
sample are composed into one affine map and applied with a single ``grid_sample`` (bilinear, zero
fill outside the image, i.e. black before normalisation, as torchvision pads and rotates).

Recipes (``augment`` names; ``DEFAULT_AUGMENT[kind]`` is the paper's):

- kind "cifar" (paper: random crop with padding 4, horizontal flip, rotation +-15 deg):
    "crop"    translate by (dy, dx), each uniform in {-pad..pad}: the same as zero-padding by
              ``pad`` and cropping H x W at a uniformly random offset;
    "flip"    mirror left-right with probability 1/2;
    "rotate"  rotate by an angle uniform in [-degrees, degrees] about the image center.
- kind "imagenet" (paper: random-resized crop, flip, colour jitter):
    "crop"    random-resized crop (``r2b.data.crops``: area 8-100 %, ratio 3/4-4/3) resampled to
              ``image_size``; skipped when the dataset already cropped each sample
              (``dataset.sample_augment``, streamed folders);
    "flip"    as above;
    "jitter"  brightness, contrast and saturation factors each uniform in [1 - j, 1 + j]
              (j = ``jitter``, 0.4 as torchvision's ImageNet recipes), applied in that order on
              [0, 1] images and clamped; hue is not jittered [choice].
- Evaluation (``train=False``): center crop to ``image_size`` when the images are larger, then
  normalise.

Output: ``(x / 255 - mean) / std`` per channel, float32 (N, 3, S, S).

Sample order inside one affine map: crop, then flip, then rotation (torchvision's order in the
usual CIFAR recipe). In normalised coordinates (``affine_grid``, ``align_corners=False``) output
point ``q`` samples the input at ``p = t + F R^-1 q`` (crop translation ``t``, flip ``F``,
rotation ``R``); rotation is done in pixel units so non-square images are not sheared.
Integer translations and flips land exactly on pixel centers, so crop and flip copy pixels
exactly.

Randomness comes from a CPU ``torch.Generator``; ``set_epoch(e)`` reseeds it from (seed, e), so
the augmentation of a resumed epoch repeats exactly. Mix-up (Zhang et al. 2018) is ``mixup``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from r2b.data.crops import sample_resized_crops
from r2b.data.seeds import derive_seed

KINDS = ("cifar", "imagenet")
AUGMENTS = {"cifar": ("crop", "flip", "rotate"), "imagenet": ("crop", "flip", "jitter")}
#: the paper's training augmentation per kind (mix-up is separate: ``mixup``)
DEFAULT_AUGMENT = {"cifar": ("crop", "flip", "rotate"), "imagenet": ("crop", "flip", "jitter")}


class BatchAugment:
    """Augment and normalise uint8 batches: ``aug(x_uint8) -> float (N, 3, S, S)``.

    Args:
        kind: "cifar" or "imagenet" (which recipe, see the module docstring).
        train: False gives the evaluation transform (center crop + normalise).
        augment: names of the augmentations to apply (subset of ``AUGMENTS[kind]``); None means
            ``DEFAULT_AUGMENT[kind]``; ignored when ``train`` is False.
        image_size: output side S; None keeps the input size (kind "cifar") and is required for
            an "imagenet" crop of in-memory data.
        mean, std: per-channel normalisation of [0, 1] images.
        pad: crop translation range in pixels (cifar). degrees: rotation range (cifar).
        scale, ratio: random-resized-crop area and aspect ranges (imagenet).
        jitter: colour-jitter strength (imagenet).
        skip: augmentations already applied per sample (``dataset.sample_augment``).
        seed: seed of the generator; ``set_epoch(e)`` reseeds it from (seed, e).
    """

    def __init__(
        self,
        kind: str = "cifar",
        train: bool = True,
        augment: Iterable[str] | None = None,
        image_size: int | None = None,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        pad: int = 4,
        degrees: float = 15.0,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: float = 0.4,
        skip: Iterable[str] = (),
        seed: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown augmentation kind {kind!r}; choose one of {KINDS}")
        ops = tuple(DEFAULT_AUGMENT[kind] if augment is None else augment) if train else ()
        unknown = sorted(set(ops) - set(AUGMENTS[kind]))
        if unknown:
            raise ValueError(
                f"unknown {kind} augmentation {', '.join(unknown)}; "
                f"choose from {', '.join(AUGMENTS[kind])}"
            )
        self.kind, self.train = kind, train
        self.ops = tuple(op for op in ops if op not in set(skip))
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.pad, self.degrees = pad, degrees
        self.scale, self.ratio, self.jitter = scale, ratio, jitter
        self.seed = seed
        self.generator = torch.Generator().manual_seed(derive_seed(seed, 0))

    def set_epoch(self, epoch: int) -> None:
        """Reseed from (seed, epoch): epoch e's augmentation is a pure function of (seed, e)."""
        self.generator.manual_seed(derive_seed(self.seed, epoch))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch (N, 3, H, W), got {tuple(x.shape)}")
        params = self.sample(x.shape[0], x.shape[-2], x.shape[-1])
        return self.apply(x, params)

    # ----------------------------------------------------------------- parameters

    def sample(self, n: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """Random parameters for ``n`` images of ``height`` x ``width`` (CPU tensors).

        Keys (present when the op is on): "shift" (n, 2) int (dy, dx) pixels; "box" (n, 4) int
        (top, left, h, w); "flip" (n,) bool; "angle" (n,) degrees; "jitter" (n, 3) factors.
        """
        g, p = self.generator, {}
        if "crop" in self.ops and self.kind == "cifar":
            p["shift"] = torch.randint(-self.pad, self.pad + 1, (n, 2), generator=g)
        if "crop" in self.ops and self.kind == "imagenet":
            p["box"] = sample_resized_crops(n, height, width, self.scale, self.ratio, g)
        if "flip" in self.ops:
            p["flip"] = torch.rand(n, generator=g) < 0.5
        if "rotate" in self.ops:
            p["angle"] = (torch.rand(n, generator=g) * 2 - 1) * self.degrees
        if "jitter" in self.ops:
            p["jitter"] = 1 + (torch.rand(n, 3, generator=g) * 2 - 1) * self.jitter
        return p

    # ----------------------------------------------------------------- application

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply given parameters (from ``sample``) to a uint8 or [0, 255] float batch."""
        x = x.float() / 255.0
        n, _, h, w = x.shape
        out_h, out_w = self._output_size(h, w, params)
        if any(k in params for k in ("shift", "box", "flip", "angle")):
            theta = self._theta(n, h, w, params).to(x.device)
            grid = F.affine_grid(theta, [n, 3, out_h, out_w], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        elif (out_h, out_w) != (h, w):
            top, left = (h - out_h) // 2, (w - out_w) // 2
            x = x[..., top : top + out_h, left : left + out_w]
        if "jitter" in params:
            x = color_jitter(x, params["jitter"].to(x.device))
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _output_size(self, h: int, w: int, params: dict) -> tuple[int, int]:
        if self.image_size is None:
            if "box" in params:
                raise ValueError("an imagenet random-resized crop needs image_size")
            return h, w
        s = self.image_size
        if "box" not in params and (s > h or s > w):
            raise ValueError(f"image_size {s} is larger than the {h}x{w} input")
        return s, s

    def _theta(self, n: int, h: int, w: int, params: dict) -> torch.Tensor:
        """(n, 2, 3) affine maps from output to input normalised coordinates."""
        out_h, out_w = self._output_size(h, w, params)
        a = torch.eye(2, dtype=torch.float64).repeat(n, 1, 1)
        t = torch.zeros(n, 2, dtype=torch.float64)  # (x, y)
        if "box" in params:
            top, left, bh, bw = params["box"].double().unbind(1)
            a[:, 0, 0], a[:, 1, 1] = bw / w, bh / h
            t[:, 0], t[:, 1] = (2 * left + bw) / w - 1, (2 * top + bh) / h - 1
        else:  # center crop to the output size (no-op when sizes match), plus the shift
            a[:, 0, 0], a[:, 1, 1] = out_w / w, out_h / h
        if "shift" in params:
            dy, dx = params["shift"].double().unbind(1)
            t[:, 0] += 2 * dx / w
            t[:, 1] += 2 * dy / h
        if "flip" in params:
            a[:, :, 0] *= torch.where(params["flip"], -1.0, 1.0).double().unsqueeze(1)
        if "angle" in params:
            a = a @ _rotation(params["angle"].double(), out_h, out_w)
        return torch.cat([a, t.unsqueeze(2)], dim=2).float()


def _rotation(degrees: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, 2, 2) inverse rotation in normalised output coordinates: S^-1 R(-angle) S with
    S = diag(w/2, h/2) converting normalised to pixel units."""
    rad = degrees * (math.pi / 180)
    c, s = torch.cos(rad), torch.sin(rad)
    r = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)
    sx = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    return r * sx.view(1, 1, 2) / sx.view(1, 2, 1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Per-image brightness, contrast, saturation on [0, 1] images (N, 3, H, W).

    factors (N, 3) = (b, c, s). brightness: x b; contrast: blend with the image's mean grey
    level, m + c (x - m); saturation: blend with its grey image, g + s (x - g), grey =
    0.299 R + 0.587 G + 0.114 B (ITU-R 601 luma, as torchvision). Clamped to [0, 1] after each.
    """
    b, c, s = (f.view(-1, 1, 1, 1).to(x.dtype) for f in factors.unbind(1))
    x = (x * b).clamp(0, 1)
    m = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (m + c * (x - m)).clamp(0, 1)
    g = _grey(x)
    return (g + s * (x - g)).clamp(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def build_augment(
    dataset,
    train: bool,
    augment: Iterable[str] | None = None,
    image_size: int | None = None,
    seed: int = 0,
    **options,
) -> BatchAugment:
    """``BatchAugment`` fitted to ``dataset``: its ``kind``, ``mean``/``std`` and the augmentations
    it already applies per sample (``sample_augment``). ``image_size`` defaults to the dataset's
    image side. ``options`` go to ``BatchAugment`` (pad, degrees, scale, ratio, jitter)."""
    if image_size is None:
        image_size = min(dataset.image_size)
    return BatchAugment(
        kind=dataset.kind, train=train, augment=augment, image_size=image_size,
        mean=dataset.mean, std=dataset.std, skip=getattr(dataset, "sample_augment", ()),
        seed=seed, **options,
    )  # fmt: skip


def mixup_params(
    n: int, alpha: float, generator: torch.Generator | None = None
) -> tuple[float, torch.Tensor]:
    """Mixing weight ``lam ~ Beta(alpha, alpha)`` and the partner permutation (CPU, int64).

    ``lam`` comes from numpy's Beta sampler seeded by a draw from ``generator``, so mix-up is
    reproducible from the torch generator alone. alpha <= 0 gives lam = 1 (no mixing).
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    perm = torch.randperm(n, generator=generator)
    if alpha <= 0:
        return 1.0, perm
    return float(np.random.default_rng(seed).beta(alpha, alpha)), perm


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix-up (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization")::

        x_mixed = lam x + (1 - lam) x[perm],   targets = lam onehot(y) + (1 - lam) onehot(y)[perm]

    with one ``lam ~ Beta(alpha, alpha)`` per batch and a random permutation ``perm`` pairing
    each image with a partner (``mixup_params``; ``generator`` is a CPU generator). ``x`` is a
    float batch (after ``BatchAugment``); ``y`` int labels (N,) or soft targets (N, K). Returns
    ``(x_mixed, targets)``, targets (N, K) float32 whose rows sum to 1 (for
    ``r2b.losses.cross_entropy`` / ``DistillationObjective``, which accept soft targets).
    """
    if not x.dtype.is_floating_point:
        raise TypeError(f"mixup needs a float batch (apply BatchAugment first), got {x.dtype}")
    lam, perm = mixup_params(x.shape[0], alpha, generator)
    perm = perm.to(x.device)
    if y.dtype.is_floating_point:
        soft = y.float()
    else:
        soft = F.one_hot(y.long(), num_classes).float()
    return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]
