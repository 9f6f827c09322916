"""The compiled kernels (r2b.packed.kernels) give the same answer serial and on 2 or 3 threads."""

import numpy as np
import torch
from networks import (
    float_binary_conv,
    randomise,
)

from r2b.models import create_model
from r2b.packed import kernels, to_packed
from r2b.packed.bitpack import pack_weight
from r2b.packed.layers import PackedBinaryConv2d
from r2b.packed.parallel import openmp_entry_points


def test_serial_and_threaded_kernels_agree():
    gen = torch.Generator().manual_seed(3)
    y, weight = torch.randn(2, 70, 9, 9, generator=gen), torch.randn(24, 70, 3, 3, generator=gen)
    conv = PackedBinaryConv2d(pack_weight(weight), 70, 1, 1, None)
    xp = conv.pack(y)
    expected = float_binary_conv(y, weight, 1, 1, 1.0).to(torch.int32).numpy()
    address = kernels.worker_address("conv_int")
    par, tid = openmp_entry_points()
    for launch in [(0, 0, address, 1, 0), (par, tid, address, 2, 0), (par, tid, address, 3, 0)]:
        out = np.zeros((2, 24, 9, 9), np.int32)
        kernels.conv_int(xp, conv._wt, conv._geo, out, launch)
        assert np.array_equal(out, expected), launch


def test_threaded_half_block_equals_serial():
    """The fused kernel (conv, epilogue, next BN + pack) gives the same bits on 1, 2, 3 threads."""
    model = randomise(create_model("r2b_resnet18", num_classes=5, stem="cifar", width=0.25))
    packed = to_packed(model)
    x = torch.randn(3, 16, 32, 32)
    first, second = packed.halves[0], packed.halves[1]
    xp, y = first.prepare(x)
    gain, shortcut = first.float_parts(x, y)
    address = kernels.worker_address("half_block")
    par, tid = openmp_entry_points()
    results = []
    for launch in [(0, 0, address, 1, 0), (par, tid, address, 2, 0), (par, tid, address, 3, 0)]:
        out = np.zeros((3, 16, 32, 32), np.float32)
        xp2 = second.conv.packed_buffer(3, 32, 32)
        y2 = np.zeros_like(out)
        kernels.half_block(first._static(second), xp, gain.numpy(), shortcut.numpy(), out, xp2,
                           y2, np.zeros((1, 1, 1), np.int32), launch)  # fmt: skip
        results.append((out, xp2, y2))
    with torch.no_grad():
        expected = model.blocks[0].half1(x)
    for out, xp2, y2 in results:
        assert np.array_equal(out, expected.numpy())
        assert np.array_equal(xp2, results[0][1]) and np.array_equal(y2, results[0][2])
