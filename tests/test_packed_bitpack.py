"""Bit packing (r2b.packed.bitpack): round trips of ±1 tensors and the kernels' weight layout."""

import numpy as np
import pytest
import torch
from networks import sign

from r2b.packed.bitpack import kernel_layout, pack_bits, pack_weight, unpack_bits, unpack_weight


@pytest.mark.parametrize("channels", [1, 13, 64, 65, 130])
def test_pack_bits_round_trip_and_zero_tail(channels):
    rng = np.random.default_rng(channels)
    neg = rng.random((3, channels)) < 0.5
    words = pack_bits(neg)
    assert words.dtype == np.uint64 and words.shape == (3, -(-channels // 64))
    assert np.array_equal(unpack_bits(words, channels), neg)
    assert not unpack_bits(words, words.shape[1] * 64)[:, channels:].any()  # zero tail bits
    assert int(words[0, 0]) & 1 == int(neg[0, 0])  # channel 0 is the least significant bit


def test_pack_weight_round_trip_and_layout():
    w = torch.randn(21, 70, 3, 3)
    w[0, 0, 0, 0] = 0.0  # sign(0) = +1
    bits = pack_weight(w)
    assert bits.shape == (21, 3, 3, 2)
    assert torch.equal(unpack_weight(bits, 70), sign(w))
    wt = kernel_layout(bits, 16)
    assert wt.shape == (2, 18, 16)
    assert np.array_equal(wt[1, :, :5], bits[16:].reshape(5, 18).T)
    assert not wt[1, :, 5:].any()
