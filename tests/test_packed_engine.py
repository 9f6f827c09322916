"""The packed engine equals the float training graph: bits, every binary conv, whole networks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from networks import binary_networks, check_binary_convs, check_network_logits, randomise
from torch import nn

from r2b.errors import UserError
from r2b.layers import LearnedShift
from r2b.models import create_model, list_models
from r2b.models.resnet import BinaryResNet18, HalfBlockDesign
from r2b.packed import kernels, to_packed
from r2b.packed.batchnorm import apply_bn, probe_affine, probe_bn_mode
from r2b.packed.bitpack import kernel_layout, pack_bits, pack_weight, unpack_bits, unpack_weight
from r2b.packed.layers import PackedBinaryConv2d
from r2b.packed.parallel import launch_info, openmp_entry_points


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def _float_conv(y, w, stride, pad, pad_value):
    """The training graph's binary conv: conv2d(pad(sign(y), pad_value), sign(w))."""
    return F.conv2d(F.pad(_sign(y), [pad] * 4, value=pad_value), _sign(w), stride=stride)


# ----------------------------------------------------------------------------- bits


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
    assert torch.equal(unpack_weight(bits, 70), _sign(w))
    wt = kernel_layout(bits, 16)
    assert wt.shape == (2, 18, 16)
    assert np.array_equal(wt[1, :, :5], bits[16:].reshape(5, 18).T)
    assert not wt[1, :, 5:].any()


# ----------------------------------------------------------------------------- one conv


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
    expected = _float_conv(y, weight, stride, pad, pad_value)
    assert got.dtype == torch.int32
    assert torch.equal(got, expected.to(torch.int32))


def test_serial_and_threaded_kernels_agree():
    gen = torch.Generator().manual_seed(3)
    y, weight = torch.randn(2, 70, 9, 9, generator=gen), torch.randn(24, 70, 3, 3, generator=gen)
    conv = PackedBinaryConv2d(pack_weight(weight), 70, 1, 1, None)
    xp = conv.pack(y)
    expected = _float_conv(y, weight, 1, 1, 1.0).to(torch.int32).numpy()
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
                           y2, launch)  # fmt: skip
        results.append((out, xp2, y2))
    with torch.no_grad():
        expected = model.blocks[0].half1(x)
    for out, xp2, y2 in results:
        assert np.array_equal(out, expected.numpy())
        assert np.array_equal(xp2, results[0][1]) and np.array_equal(y2, results[0][2])


def test_kernels_use_pytorchs_openmp_runtime():
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch does not run on OpenMP")
    par, tid = openmp_entry_points()
    assert par and tid
    assert launch_info(123)[3] == torch.get_num_threads()


def test_bn_probe_reproduces_pytorch_batchnorm():
    """The probed arithmetic equals PyTorch's BatchNorm bit for bit on inputs other than the
    probe's (odd sizes, large and tiny values), and its ``a`` is ``weight / sqrt(var + eps)``."""
    bn = randomise(nn.Sequential(nn.BatchNorm2d(37)))[0]
    mode, a, b = probe_bn_mode(bn)
    assert mode in (kernels.BN_FMA, kernels.BN_MUL_ADD)
    invstd = 1 / torch.sqrt(bn.running_var + bn.eps)
    assert np.array_equal(a, (invstd * bn.weight).detach().numpy())
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


# ----------------------------------------------------------------------------- networks

#: Every registered binary family with every registered stem (a new family or stem is tested
#: without an edit here; tests/test_toy_family.py runs the same checks on one it registers).
NETWORKS = binary_networks()


@pytest.mark.parametrize("name, stem, size, width", NETWORKS)
def test_every_binary_conv_equals_the_training_graph(name, stem, size, width):
    check_binary_convs(name, stem, size, width)


@pytest.mark.parametrize("name, stem, size, width", NETWORKS)
def test_network_logits_equal_the_float_model(name, stem, size, width):
    check_network_logits(name, stem, size, width)


def test_fallback_paths_stay_exact():
    """BN through the PyTorch module (no fused BN) and no weight scale."""
    model = randomise(create_model("r2b_resnet18", num_classes=5, stem="cifar", width=0.125,
                                    weight_scale=False))  # fmt: skip
    packed = to_packed(model)
    for half in packed.halves:
        half.bn_mode = kernels.BN_NONE
    packed.stem.bn_mode = kernels.BN_NONE
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


class _Offset(nn.Module):
    """A layer kind the compiled epilogue does not know: ``x + 0.5``."""

    def forward(self, x):
        return x + 0.5


@pytest.mark.parametrize("name", list_models(binary=True))
def test_every_family_is_fused_and_an_unknown_layer_falls_back_exactly(name):
    """Each registered family runs every half block in the compiled epilogue; a post or an
    activation the epilogue cannot reproduce runs in PyTorch around the integer conv, still
    bit for bit."""
    model = randomise(create_model(name, num_classes=5, stem="cifar", width=0.125), seed=4)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert all(h.fused for h in to_packed(model).halves)
    for half in (model.blocks[1].half2, model.blocks[2].half1):
        if hasattr(half, "post_bn"):
            half.post_bn = nn.Sequential(half.post_bn, _Offset())
        else:
            half.act = _Offset()
    packed = to_packed(model)
    assert [h.fused for h in packed.halves].count(False) == 2
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))
        assert torch.equal(model.spec().forward(x), model(x))


@pytest.mark.parametrize("design", [
    HalfBlockDesign(pre="shift", scaling="scale", post_bn=True, act="prelu", act_after_add=True),
    HalfBlockDesign(pre="bn", scaling="gate", post_bn=True, act="rprelu"),
    HalfBlockDesign(pre="none", scaling="none", post_bn=False, act="rprelu", act_after_add=True),
])  # fmt: skip
def test_a_new_combination_of_block_parts_packs_exactly(design):
    """A network whose half blocks combine the parts in a way no registered family does packs
    through its description alone, fused, bit for bit."""
    model = randomise(BinaryResNet18(7, "imagenet", 0.125, "bnn", design=design), seed=6)
    packed = to_packed(model)
    assert all(h.fused for h in packed.halves)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


def test_to_packed_leaves_the_model_alone_and_is_inference_only():
    model = randomise(create_model("sb_resnet18", num_classes=3, stem="cifar", width=0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed = to_packed(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="inference-only"):
        packed.train()


@pytest.mark.parametrize("name, stage", [("r2b_resnet18", "ban"), ("sb_resnet18", "fp")])
def test_stages_that_are_not_fully_binary_are_refused(name, stage):
    model = create_model(name, num_classes=3, stem="cifar", width=0.125, stage=stage)
    with pytest.raises(UserError, match="stage 'bnn'|export the 'bnn' stage"):
        to_packed(model)
    with pytest.raises(UserError, match="no binary convolutions"):
        to_packed(create_model("resnet18", num_classes=3, stem="cifar", width=0.125))


def test_reused_buffers_give_each_call_its_own_answer():
    """Launches are prepared once per input shape and thread and their buffers reused: calls
    with other inputs, other shapes in between, and two threads at once stay exact."""
    import threading

    model = randomise(create_model("r2b_resnet18", num_classes=5, stem="cifar", width=0.125))
    packed = to_packed(model)
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randn(2, 3, 32, 32, generator=gen) for _ in range(3)] + [torch.randn(1, 3, 64, 64)]
    with torch.no_grad():
        expected = [model(x) for x in xs]
    first = packed(xs[0])
    for x, e in zip(xs + xs, expected + expected):
        assert torch.equal(packed(x), e)
    assert torch.equal(first, expected[0])  # an earlier result is not overwritten
    results = {}

    def work(i):
        results[i] = [packed(xs[i % 3]) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        assert all(torch.equal(o, expected[i % 3]) for o in outs)
