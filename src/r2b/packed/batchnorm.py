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

from r2b.layers import LearnedShift
from r2b.packed import kernels
from r2b.packed.int8 import Dequantize
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
    candidates = [(mode, *bn_coefficients(bn, fused)) for mode, fused in (
        (BN_FMA, True), (BN_FMA, False), (BN_MUL_ADD, False), (BN_MUL_ADD, True))]  # fmt: skip
    return _first_exact(bn, probe, candidates, identity)


def probe_affine(module: nn.Module | None, channels: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(mode, a, b)`` with which the kernels compute ``module(x)`` as ``x * a + b`` per channel
    bit for bit, checked on a probe; ``(BN_NONE, 1, 0)`` when they cannot (the engine then calls
    the module itself).

    ``module``: ``None`` (the identity: ``x * 1 + 0``, equal to ``x`` up to the sign of a zero,
    which a sign does not see), an eval-mode ``BatchNorm2d`` (``probe_bn_mode``), a learned
    shift ``x + b`` (``r2b.layers.LearnedShift``: ``fma(x, 1, b)`` rounds ``x + b`` once, as
    the add does), or the ``x * m + b`` of an int8 layer's output (``r2b.packed.int8.Dequantize``,
    two roundings).
    """
    ones, zeros = np.ones(channels, _F32), np.zeros(channels, _F32)
    if module is None:
        return BN_MUL_ADD, ones, zeros
    if isinstance(module, nn.BatchNorm2d):
        return probe_bn_mode(module)
    if isinstance(module, Dequantize) and module.multiplier.shape == (channels,):
        a, b = _np(module.multiplier), _np(module.bias)
        probe = torch.randn(2, channels, 5, 7, generator=torch.Generator().manual_seed(0)) * 1e4
        probe = torch.round(probe)  # the integers an int8 product returns
        return _first_exact(module, probe, [(BN_MUL_ADD, a, b), (BN_FMA, a, b)], (ones, zeros))
    if not isinstance(module, LearnedShift) or module.shift.shape != (channels,):
        return BN_NONE, ones, zeros
    shift = module.shift
    probe = torch.randn(2, channels, 5, 7, generator=torch.Generator().manual_seed(0))
    probe = probe * (shift.detach().float().abs().view(1, -1, 1, 1) + 1)
    b = np.ascontiguousarray(_np(shift))
    return _first_exact(module, probe, [(BN_FMA, ones, b), (BN_MUL_ADD, ones, b)], (ones, zeros))


def _first_exact(module, probe, candidates, identity):
    """The first ``(mode, a, b)`` of ``candidates`` whose kernel output equals ``module(probe)``."""
    with torch.no_grad():
        expected = module(probe).numpy()
    x = probe.numpy()
    for mode, a, b in candidates:
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
