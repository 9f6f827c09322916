"""Packed layers (r2b.packed.layers) equal their float modules exactly: the binary conv against
the training graph's, the compiled stem tail against PyTorch's BN, PReLU and max-pool."""

import pytest
import torch
from networks import (
    float_binary_conv,
)

from r2b.packed.bitpack import pack_weight
from r2b.packed.layers import PackedBinaryConv2d, PackedStem


@pytest.mark.parametrize(
    "n, c, h, w, o, k, stride, pad, pad_value",
    [
        (1, 13, 9, 9, 21, 3, 1, 1, 1.0),
        (2, 70, 8, 7, 9, 3, 2, 1, 1.0),
        (2, 70, 7, 9, 33, 3, 2, 1, -1.0),
        (1, 130, 5, 6, 17, 3, 1, 1, 1.0),
        (3, 64, 1, 1, 40, 3, 1, 1, 1.0),
        (1, 64, 14, 14, 128, 3, 2, 1, 1.0),
        (2, 5, 6, 6, 3, 1, 1, 0, 1.0),
        (1, 33, 11, 10, 70, 5, 2, 2, -1.0),
    ],
)
def test_packed_conv_equals_float_conv_exactly(n, c, h, w, o, k, stride, pad, pad_value):
    gen = torch.Generator().manual_seed(c * o + k)
    y = torch.randn(n, c, h, w, generator=gen)
    y[0, 0, 0, :2] = 0.0  # sign(0) = +1
    weight = torch.randn(o, c, k, k, generator=gen)
    conv = PackedBinaryConv2d(pack_weight(weight), c, stride, pad, None, pad_value)
    got = conv(y)
    expected = float_binary_conv(y, weight, stride, pad, pad_value)
    assert got.dtype == torch.int32
    assert torch.equal(got, expected.to(torch.int32))


def _stem_parts(channels: int, scales: torch.Tensor, slopes: torch.Tensor):
    """A stem whose conv passes its input through (depthwise 1x1, weight 1: a NaN stays in its
    channel), with BatchNorm scales ``scales`` and PReLU slopes ``slopes``."""
    conv = torch.nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
    bn = torch.nn.BatchNorm2d(channels).eval()
    act = torch.nn.PReLU(channels)
    gen = torch.Generator().manual_seed(channels)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        bn.weight.copy_(scales)
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        act.weight.copy_(slopes)
    return conv, bn, act, torch.nn.MaxPool2d(3, 2, 1)


@pytest.mark.parametrize(
    "scales, slopes, monotone",
    [
        ([0.5, 2.0, 1.0, 3.0], [0.25, 0.5, 1.0, 0.1], True),  # every channel increasing
        ([0.5, -2.0, 1.0, -0.1], [0.25, 0.25, 0.5, 2.0], True),  # two channels decreasing
        ([0.5, 2.0, 1.0, 3.0], [0.25, -0.5, 1.0, 0.1], False),  # a negative slope
        ([0.5, 2.0, 1.0, 3.0], [0.25, 0.5, 0.0, 0.1], False),  # slope 0: 0 * -inf is NaN
        ([0.5, 0.0, 1.0, 3.0], [0.25, 0.25, 1.0, 0.1], False),  # a zero scale
    ],
)
def test_stem_tail_equals_pytorch_with_the_pool_first_or_not(scales, slopes, monotone):
    """The compiled stem tail equals ``pool(PReLU(BN(conv)))``, NaN and infinities included,
    whether it pools before BN and PReLU (every channel monotone) or after."""
    conv, bn, act, pool = _stem_parts(4, torch.tensor(scales), torch.tensor(slopes))
    stem = PackedStem(conv, bn, act, pool)
    assert (stem._sgn.size > 0) is monotone
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 13, 10, generator=gen)
    x[0, 0, 3, 4], x[0, 1, 5, 5], x[1, 2, 0, 0], x[1, 3, 7, 2] = float("nan"), float("inf"), \
        float("-inf"), float("inf")  # fmt: skip
    x[1, 0, 4:7, 2:5] = 0.75  # ties within a window
    with torch.no_grad():
        expected = pool(act(bn(conv(x))))
        got = stem(x)
    assert torch.equal(got.isnan(), expected.isnan()) and got.isnan().any()
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected))
