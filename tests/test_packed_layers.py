"""A packed binary conv (r2b.packed.layers) equals the training graph's binary conv exactly."""

import pytest
import torch
from networks import (
    float_binary_conv,
)

from r2b.packed.bitpack import pack_weight
from r2b.packed.layers import PackedBinaryConv2d


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
