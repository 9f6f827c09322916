"""Eval-mode BatchNorm as PyTorch computes it, so that compiled kernels can fuse it exactly.

PyTorch's CPU BatchNorm in eval mode (``batch_norm_cpu_collect_linear_and_constant_terms`` and
the vectorised ``batch_norm_cpu`` kernel, ATen ``Normalization.cpp``) computes per channel::

    invstd = 1 / sqrt(running_var + eps)        float32
    a      = invstd * weight
    b      = bias - running_mean * a            (one rounding with FMA, two without)
    y      = x * a + b                          (one rounding with FMA, two without)

Whether the products are fused depends on how that PyTorch binary was compiled for this CPU, so
``probe_bn_mode`` runs the module and the kernel on the same probe tensor and keeps the variant
that agrees bit for bit; when none does (other builds, BN without running statistics), it returns
``BN_NONE`` and the engine calls the module itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from r2b.packed import kernels
from r2b.packed.kernels import BN_FMA, BN_MUL_ADD, BN_NONE
from r2b.packed.parallel import launch_info

_F32 = np.float32


def bn_coefficients(bn: nn.BatchNorm2d, fused_shift: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(a, b)`` of ``y = x * a + b``; ``fused_shift``: ``b`` rounded once (FMA)."""
    var = bn.running_var.detach().float().cpu().numpy()
    mean = bn.running_mean.detach().float().cpu().numpy()
    channels = var.shape[0]
    weight = np.ones(channels, _F32) if bn.weight is None else _np(bn.weight)
    bias = np.zeros(channels, _F32) if bn.bias is None else _np(bn.bias)
    invstd = _F32(1.0) / np.sqrt(var + _F32(bn.eps))
    a = (invstd * weight).astype(_F32)
    if fused_shift:
        # bias - mean * a with one rounding: the float64 product of two float32 values is exact
        b = (bias.astype(np.float64) - mean.astype(np.float64) * a.astype(np.float64)).astype(_F32)
    else:
        b = (bias - (mean * a).astype(_F32)).astype(_F32)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def probe_bn_mode(bn: nn.Module) -> tuple[int, np.ndarray, np.ndarray]:
    """``(mode, a, b)`` that reproduce ``bn`` (eval mode) exactly, or ``(BN_NONE, 1, 0)``."""
    channels = bn.num_features
    identity = (np.ones(channels, _F32), np.zeros(channels, _F32))
    if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_var is None:
        return BN_NONE, *identity
    gen = torch.Generator().manual_seed(0)
    # sizes cover PyTorch's vectorised body and scalar tail; magnitudes span the statistics
    probe = torch.randn(2, channels, 5, 7, generator=gen)
    scale = bn.running_var.detach().float().sqrt().clamp_min(1e-3).view(1, -1, 1, 1)
    probe = probe * scale * 3 + bn.running_mean.detach().float().view(1, -1, 1, 1)
    with torch.no_grad():
        expected = bn(probe).numpy()
    x = probe.numpy()
    for mode, fused_shift in ((BN_FMA, True), (BN_FMA, False), (BN_MUL_ADD, False),
                              (BN_MUL_ADD, True)):  # fmt: skip
        a, b = bn_coefficients(bn, fused_shift)
        if np.array_equal(apply_bn(x, mode, a, b), expected):
            return mode, a, b
    return BN_NONE, *identity


def apply_bn(x: np.ndarray, mode: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``BN(x)`` of a ``(N, C, H, W)`` float32 array through the compiled kernel."""
    n, c, h, w = x.shape
    xp = np.zeros((n, h, w, (c + 63) // 64), np.uint64)
    y = np.empty_like(x)
    launch = launch_info(kernels.worker_address("bn_pack"))
    kernels.bn_pack(np.ascontiguousarray(x), mode, a, b, 0, xp, 1, y, launch)
    return y


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(_F32)
