"""Eval-mode BatchNorm as PyTorch computes it (r2b.packed.batchnorm): the probes of a module."""

import numpy as np
import torch
from networks import randomise
from torch import nn

from r2b.layers import LearnedShift
from r2b.packed import kernels
from r2b.packed.batchnorm import apply_bn, probe_affine, probe_bn_mode


def test_bn_probe_reproduces_pytorch_batchnorm():
    """The probed arithmetic equals PyTorch's BatchNorm bit for bit on inputs other than the
    probe's (odd sizes, large and tiny values), and its ``a`` is ``weight / sqrt(var + eps)``."""
    bn = randomise(nn.Sequential(nn.BatchNorm2d(37)))[0]
    mode, a, b = probe_bn_mode(bn)
    assert mode in (kernels.BN_FMA, kernels.BN_MUL_ADD)
    # ATen computes invstd per channel with scalar IEEE sqrt and division (each correctly
    # rounded), as numpy's float32 ops do; torch's vectorised ``1 / torch.sqrt`` is not correctly
    # rounded on every CPU (1 ulp off in 6 of these 37 channels on an AVX2 AMD EPYC)
    var = (bn.running_var.detach().numpy() + np.float32(bn.eps)).astype(np.float32)
    invstd = np.float32(1) / np.sqrt(var)
    assert np.array_equal(a, invstd * bn.weight.detach().numpy())
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 37, 9, 11, generator=gen) * torch.logspace(-3, 3, 11)
    with torch.no_grad():
        expected = bn(x).numpy()
    assert np.array_equal(apply_bn(x.numpy(), mode, a, b), expected)
    no_stats = nn.BatchNorm2d(5, track_running_stats=False).eval()
    assert probe_bn_mode(no_stats)[0] == kernels.BN_NONE


def test_affine_probe_of_a_learned_shift_and_of_no_module():
    """RSign's shift ``x + b`` and the identity run in the kernels as ``x * a + b`` exactly."""
    shift = LearnedShift(19)
    with torch.no_grad():
        shift.shift.copy_(torch.randn(19, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(2, 19, 7, 5, generator=torch.Generator().manual_seed(1)) * 10
    mode, a, b = probe_affine(shift, 19)
    assert mode != kernels.BN_NONE and np.array_equal(a, np.ones(19, np.float32))
    with torch.no_grad():
        assert np.array_equal(apply_bn(x.numpy(), mode, a, b), shift(x).numpy())
    mode, a, b = probe_affine(None, 19)
    assert np.array_equal(apply_bn(x.numpy(), mode, a, b), x.numpy())
    assert probe_affine(nn.ReLU(), 19)[0] == kernels.BN_NONE  # not an affine it knows
