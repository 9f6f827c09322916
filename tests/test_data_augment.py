"""Batch augmentation and mix-up on uint8 batches (r2b.data.augment), on the CPU and on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datafiles import image_batch, write_imagenet_tree

from r2b.data import (
    BatchAugment,
    build_augment,
    build_dataset,
    color_jitter,
    mixup,
    mixup_params,
)


def test_crop_is_pad_and_crop_at_the_sampled_offset():
    x = image_batch()
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
    x = image_batch()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    aug = BatchAugment("cifar", augment=["flip"], mean=mean, std=std)
    flip = torch.tensor([True, False, True, False, False, True])
    out = aug.apply(x, {"flip": flip})
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    want = (torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).float() / 255 - m) / s
    assert torch.allclose(out, want, atol=1e-5)


def test_rotation_by_90_degrees_is_rot90_and_small_angles_stay_in_range():
    x = image_batch(n=2)
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
    x = image_batch(n=16)
    aug = BatchAugment("cifar", seed=5)
    aug.set_epoch(3)
    a = aug(x)
    aug.set_epoch(4)
    b = aug(x)
    aug.set_epoch(3)
    assert torch.equal(aug(x), a) and not torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == x.shape


def test_color_jitter_identity_and_brightness():
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(color_jitter(x, torch.ones(4, 3)), x, atol=1e-6)
    dark = color_jitter(x, torch.tensor([[0.5, 1.0, 1.0]] * 4))
    assert torch.allclose(dark, x * 0.5, atol=1e-6)
    grey = color_jitter(x, torch.tensor([[1.0, 1.0, 0.0]] * 4))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    out = BatchAugment("imagenet", augment=["jitter"], image_size=8)(image_batch(h=8, w=8))
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
        mixup(image_batch(), y[:6], 0.2, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_augment_and_mixup_on_cuda_match_cpu():
    x = image_batch(n=32)
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
