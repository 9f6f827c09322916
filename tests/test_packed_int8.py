"""int8 float layers (r2b.packed.int8, r2b.packed.calibration): the quantisation rules on known
values, oneDNN's integer products against an int64 oracle, whole packed networks equal to their
fake-quantised reference bit for bit and thread-invariant, and the calibration subset."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from networks import randomise
from torch import nn

from r2b.errors import UserError
from r2b.models import create_model, list_models
from r2b.packed import load, save, to_packed
from r2b.packed.fileformat import PackedFileError, from_parts, read
from r2b.packed.int8 import (
    WEIGHT_LEVELS,
    ActivationRange,
    Dequantize,
    Int8Conv2d,
    Int8Linear,
    fold_batchnorm,
    int8_model,
    int8_reference,
    int8_sites,
    int_mm_exact,
    onednn_available,
    quantize_activations,
    quantize_weight,
)
from r2b.packed.kernels import has_vnni
from r2b.packed.layers import PackedClassifier, PackedDownsample, PackedStem, quantized_input


def test_activation_grid_holds_zero_and_the_range():
    assert ActivationRange(-1.0, 3.0).scale_and_zero_point() == (4 / 255, 64)  # 63.75 -> 64
    assert ActivationRange(0.5, 2.0).scale_and_zero_point() == (2 / 255, 0)  # 0 always on grid
    assert ActivationRange(-2.0, -1.0).scale_and_zero_point() == (2 / 255, 255)
    assert ActivationRange(0.0, 0.0).scale_and_zero_point() == (1.0, 0)


def test_activations_round_half_to_even_and_clamp():
    x = torch.tensor([-10.0, -0.25, 0.25, 0.75, 1.25, 0.5, 200.0])
    q = quantize_activations(x, torch.tensor([2.0]), 3)  # x / 0.5 + 3
    assert q.dtype == torch.uint8
    assert q.tolist() == [0, 3, 3, 5, 5, 4, 255]  # -0.5 -> -0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2


def test_weights_per_channel_symmetric():
    w = torch.tensor([[32.5 / 64, -1.0, 0.25], [2.0, 1.0, -0.02], [0.0, 0.0, 0.0]])
    w_q, scale = quantize_weight(w)
    assert scale.tolist() == [1 / 64, 2 / 64, 1.0]
    assert w_q.tolist() == [[32, -64, 16], [64, 32, -1], [0, 0, 0]]  # 32.5 -> 32, -0.64 -> -1


def test_folded_batchnorm_is_bn_of_conv():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).double()
    bn = randomise(nn.Sequential(nn.BatchNorm2d(5))).double()[0]
    w, b = fold_batchnorm(conv.weight, None, bn)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected = bn(conv(x))
    got = F.conv2d(x, w, b, padding=1)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def _int64_conv(q: torch.Tensor, z: int, w_q: torch.Tensor, stride: int, padding: int):
    """The integer convolution by unfold and an int64 matrix product (padding: q = z)."""
    n, _, h, w = q.shape
    o, _, k, _ = w_q.shape
    centred = F.pad(q.long() - z, [padding] * 4)
    cols = centred.unfold(2, k, stride).unfold(3, k, stride)  # n, c, oh, ow, k, k
    oh, ow = cols.shape[2], cols.shape[3]
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, -1)
    return (cols @ w_q.long().reshape(o, -1).T).permute(0, 3, 1, 2)


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN int8 kernels")
@pytest.mark.parametrize("shape", [
    (1, 3, 64, 7, 2, 3, 30, 0), (2, 3, 8, 3, 1, 1, 9, 128), (2, 64, 128, 1, 1, 0, 7, 255),
    (1, 256, 512, 1, 1, 0, 4, 17),
])  # fmt: skip
def test_int8_conv_is_exact_integer_arithmetic(shape):
    n, cin, cout, k, stride, pad, side, z = shape
    gen = torch.Generator().manual_seed(cin + z)
    conv = Int8Conv2d(nn.Conv2d(cin, cout, k, stride, pad, bias=False))
    levels = WEIGHT_LEVELS
    conv.weight_q.copy_(torch.randint(-levels, levels + 1, conv.weight_q.shape, generator=gen))
    conv.weight_q[0] = levels  # products at the bound: 255 * 64 in every pair of channel 0
    conv.inv_scale.fill_(1.0)
    conv.zero_point.fill_(z)
    q = torch.randint(0, 256, (n, cin, side, side), generator=gen)
    x = (q - z).float()  # scale 1: quantises to q
    expected = _int64_conv(q, z, conv.weight_q, stride, pad)
    assert torch.equal(conv(x).double(), expected.double())
    conv.set_backend("reference")
    assert torch.equal(conv(x).double(), expected.double())


def _int8_stem(cin, cout, k, stride, z, multipliers, slopes, pool, seed):
    """An int8 stem ``Int8Conv2d -> Dequantize -> PReLU [-> max-pool]`` with weights at the
    bounds in channel 0 and random elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    conv = Int8Conv2d(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))
    conv.weight_q.copy_(torch.randint(-WEIGHT_LEVELS, WEIGHT_LEVELS + 1, conv.weight_q.shape,
                                      generator=gen))  # fmt: skip
    conv.weight_q[0] = WEIGHT_LEVELS
    conv.weight_q[1] = -WEIGHT_LEVELS
    conv.inv_scale.fill_(1.0)
    conv.zero_point.fill_(z)
    dequantize = Dequantize(cout)
    dequantize.multiplier.copy_(torch.tensor(multipliers).repeat(cout // len(multipliers)))
    dequantize.bias.copy_(torch.randn(cout, generator=gen))
    act = nn.PReLU(cout)
    with torch.no_grad():
        act.weight.copy_(torch.tensor(slopes).repeat(cout // len(slopes)))
    return conv, dequantize, act, nn.MaxPool2d(3, 2, 1) if pool else None


@pytest.mark.skipif(not has_vnni(), reason="this CPU has no AVX-512 VNNI (the stem's int8 tiles)")
@pytest.mark.parametrize("geometry", [
    (1, 3, 64, 7, 2, 224, 224, 0),  # the ImageNet stem; zero point 0: padding adds nothing
    (2, 3, 16, 3, 1, 17, 11, 255),  # the CIFAR stem shape, one 16-channel block, odd sizes
    (3, 5, 48, 5, 2, 23, 30, 77),  # a window of 25 bytes (7 words), three 16-channel blocks
    (1, 8, 128, 3, 2, 9, 13, 128),  # two 64-channel blocks
])  # fmt: skip
@pytest.mark.parametrize("tail", [
    ([0.25, 0.5, 1.0, 2.0], [0.25, 0.5, 1.0, 0.1], True),  # monotone: pooled first
    ([0.25, -0.5, 1.0, -2.0], [0.25, 0.0, 1.0, 0.1], True),  # slope 0, negative scales: after
    ([0.25, -0.5, 1.0, 2.0], [0.25, 0.5, 1.0, 0.1], False),  # no pool
])  # fmt: skip
def test_vnni_int8_stem_equals_the_int8_conv_and_its_tail(geometry, tail):
    """The one-pass VNNI stem (``kernels.int8_stem``) equals the int8 conv's exact integer sums
    (oneDNN, and the float64 reference) followed by Dequantize, PReLU and the max-pool."""
    n, cin, cout, k, stride, height, width, z = geometry
    multipliers, slopes, pool = tail
    conv, dequantize, act, maxpool = _int8_stem(cin, cout, k, stride, z, multipliers, slopes,
                                                pool, seed=cin + z)  # fmt: skip
    stem = PackedStem(conv, dequantize, act, maxpool)
    assert stem._vnni is not None
    gen = torch.Generator().manual_seed(k)
    q = torch.randint(0, 256, (n, cin, height, width), generator=gen)
    q[0, :, :3] = 255  # the largest products, in the top rows and their padding
    x = (q - z).float()  # scale 1: quantises to q
    with torch.inference_mode():
        got = stem(x)
        conv.set_backend("reference")
        acc = conv(x)
        assert torch.equal(acc.double(), _int64_conv(q, z, conv.weight_q, stride, k // 2).double())
        expected = act(dequantize(acc))
        expected = expected if maxpool is None else maxpool(expected)
        stem._vnni = None  # the oneDNN conv and the compiled tail
        conv.set_backend("onednn")
        unfused = stem(x)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    assert torch.equal(got, unfused)


def _ties(shape, seed):
    """Values whose products with 2.0 land on halves (ties), with some far outside [0, 255]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-600, 1200, shape, generator=gen).float() * 0.25
    x.view(-1)[::7] = 0.5 * torch.randint(-3, 600, x.view(-1)[::7].shape, generator=gen).float()
    return x


@pytest.mark.parametrize("pool", [False, True])
def test_compiled_quantisation_equals_pytorch_ops(pool):
    conv = Int8Conv2d(nn.Conv2d(5, 4, 1, bias=False))
    conv.inv_scale.fill_(2.0)
    conv.zero_point.fill_(7)
    x = _ties((2, 5, 6, 10), seed=3)
    source = F.avg_pool2d(x, 2) if pool else x
    expected = quantize_activations(source, conv.inv_scale, 7)
    got = quantized_input(conv, x, pool=pool)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == torch.uint8
    assert torch.equal(got, expected)
    assert {0, 255} <= set(got.unique().tolist())  # both clamps were reached


@pytest.mark.skipif(not int_mm_exact(), reason="torch._int_mm is missing or inexact here")
def test_downsample_matrix_product_gives_the_int8_conv_sums():
    pool = nn.AvgPool2d(2, 2)
    conv = Int8Conv2d(nn.Conv2d(64, 32, 1, bias=False))
    gen = torch.Generator().manual_seed(5)
    w = torch.randint(-WEIGHT_LEVELS, WEIGHT_LEVELS + 1, conv.weight_q.shape, generator=gen)
    w[0] = WEIGHT_LEVELS  # products at the bound
    conv.weight_q.copy_(w)
    conv.inv_scale.fill_(2.0)
    conv.zero_point.fill_(9)
    dequantize = Dequantize(32)
    shortcut = PackedDownsample(pool, conv, dequantize)
    x = _ties((3, 64, 8, 12), seed=4)
    sums = shortcut.int_mm_sums(x)  # (O, N, P): sum (q - 128) w
    vectors = shortcut.sums_vectors(32)
    conv.set_backend("reference")
    expected = conv(pool(x))  # float64 oracle of sum (q - z) w, rounded once to float32
    acc = sums.double() + torch.from_numpy(vectors["res_c"]).double().view(-1, 1, 1)
    assert torch.equal(acc.reshape(32, 3, 4, 6).permute(1, 0, 2, 3), expected.double())


def test_dequantize_rounds_twice():
    d = Dequantize(2)
    d.multiplier.copy_(torch.tensor([0.1, 3.0]))
    d.bias.copy_(torch.tensor([1.0, -2.0]))
    acc = torch.tensor([[7.0, 5.0]])
    m, b = d.multiplier, d.bias
    assert torch.equal(d(acc), acc * m + b)


def test_sites_are_the_stem_and_downsample_convs_and_the_classifier():
    model = create_model("r2b_resnet18", stage="bnn", stem="imagenet", num_classes=10)
    sites = int8_sites(model)
    assert len(sites) == 5  # the stem conv, three 1x1 downsample convs, the classifier
    for site in sites[:4]:
        assert isinstance(model.get_submodule(site.product), nn.Conv2d)
        assert isinstance(model.get_submodule(site.batchnorm), nn.BatchNorm2d)
    assert sites[4].product == "fc" and sites[4].batchnorm is None
    assert int8_sites(model, classifier=False) == sites[:4]


def _int8_linear(k: int, o: int, z: int, seed: int) -> Int8Linear:
    gen = torch.Generator().manual_seed(seed)
    linear = Int8Linear(nn.Linear(k, o))
    w = torch.randint(-WEIGHT_LEVELS, WEIGHT_LEVELS + 1, linear.weight_q.shape, generator=gen)
    w[0], w[1] = WEIGHT_LEVELS, -WEIGHT_LEVELS  # products at the bounds
    linear.weight_q.copy_(w)
    linear.inv_scale.fill_(1.0)
    linear.zero_point.fill_(z)
    return linear


@pytest.mark.parametrize("k, o, z", [(512, 1000, 0), (512, 10, 131), (96, 7, 255)])
def test_int8_classifier_is_exact_integer_arithmetic(k, o, z):
    linear = _int8_linear(k, o, z, seed=k + z)
    q = torch.randint(0, 256, (5, k), generator=torch.Generator().manual_seed(z))
    q[0] = 255
    x = (q - z).float()  # scale 1: quantises to q
    expected = (q.long() - z) @ linear.weight_q.long().t()  # int64 oracle
    assert torch.equal(linear(x).double(), expected.double())
    linear.set_backend("reference")
    assert torch.equal(linear(x).double(), expected.double())


@pytest.mark.skipif(not int_mm_exact(), reason="torch._int_mm is missing or inexact here")
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("k,o", [(64, 12), (512, 1000)])
def test_packed_classifier_equals_the_int8_classifier(batch, k, o):
    """Batch 1 too: its (1, K) codes must reach ``torch._int_mm`` as a row-major matrix (a
    transposed (K, 1) view has strides (1, 1), which the CPU kernel misreads)."""
    linear = _int8_linear(k, o, 9, seed=1)
    linear.inv_scale.fill_(2.0)
    dequantize = Dequantize(o)
    dequantize.multiplier.uniform_(0.01, 0.1)
    dequantize.bias.uniform_(-1, 1)
    x = _ties((batch, k), seed=6)
    packed = PackedClassifier(linear, dequantize)
    linear.set_backend("reference")
    assert torch.equal(packed(x), dequantize(linear(x)))


def _calibration(size: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)]


@pytest.mark.parametrize("name", list_models(binary=True))
@pytest.mark.parametrize("stem,size", [("imagenet", 64), ("cifar", 32)])
def test_packed_int8_equals_its_reference(name, stem, size):
    model = randomise(create_model(name, stage="bnn", stem=stem, num_classes=10), seed=3)
    calibration = _calibration(size)
    reference = int8_reference(model, calibration)
    packed = to_packed(model, "int8", calibration)
    x = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected, got = reference(x), packed(x)
        exact = to_packed(model)(x)
        one_expected, one = reference(x[:1]), packed(x[:1])  # batch 1 has paths of its own
    assert torch.equal(got, expected)
    assert torch.equal(one, one_expected)
    assert not torch.equal(got, exact)  # the float layers really are quantised
    # the downsample halves dequantised their int8 sums in the kernel (the fast path was taken)
    in_kernel = [i for i, h in enumerate(packed.halves) if h._res_vectors is not None]
    downsampling = [i for i, h in enumerate(packed.halves) if h.shortcut is not None]
    assert in_kernel == (downsampling if int_mm_exact() else [])
    assert isinstance(packed.fc, PackedClassifier) == int_mm_exact()


def test_int8_engine_with_one_pixel_maps_at_batch_1():
    """ImageNet stem at 32 x 32: the last downsample's map is 1 x 1, so at batch 1 its
    ``torch._int_mm`` operand is a (C, 1) matrix (strides (1, 1), the shape that broke the
    classifier's one row); the engine still equals its reference."""
    model = randomise(create_model("r2b_resnet18", stage="bnn", stem="imagenet", num_classes=10),
                      seed=4)  # fmt: skip
    calibration = _calibration(32)
    packed, reference = to_packed(model, "int8", calibration), int8_reference(model, calibration)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        h = packed.stem(x)
        for half in packed.halves:
            h = half(h)
        assert tuple(h.shape[2:]) == (1, 1)
        assert torch.equal(packed(x), reference(x))


def test_int8_file_round_trip(tmp_path):
    model = randomise(create_model("r2b_resnet18", stage="bnn", stem="imagenet", num_classes=10))
    packed = to_packed(model, "int8", _calibration(64))
    size = save(packed, tmp_path / "m.r2b")
    float_size = save(to_packed(model), tmp_path / "f.r2b")
    loaded = load(tmp_path / "m.r2b")
    x = torch.randn(4, 3, 64, 64)
    assert torch.equal(loaded(x), packed(x))
    assert loaded.record.float_layers == "int8" and size < float_size
    header, tensors = read(tmp_path / "m.r2b")
    assert header["int8_classifier"] is True and tensors["fc.0.weight_q"].dtype == np.int8
    assert all(np.abs(t.astype(np.int16)).max() <= WEIGHT_LEVELS
               for k, t in tensors.items() if k.endswith("weight_q"))  # fmt: skip
    stem = next(k for k in tensors if k.endswith("weight_q"))
    tensors[stem] = tensors[stem].copy()
    tensors[stem].flat[0] = 127  # what files made before the +-64 limit could hold
    with pytest.raises(PackedFileError, match="int8 weights beyond"):
        from_parts(header, tensors, "old.r2b")


def test_int8_files_before_the_int8_classifier_still_load(tmp_path):
    """A file written before the classifier was int8 (``float_layers`` int8, no
    ``int8_classifier``, a float ``fc``) runs as its reference with a float classifier."""
    model = randomise(create_model("r2b_resnet18", stage="bnn", stem="cifar", num_classes=10))
    calibration = _calibration(32)
    save(to_packed(model, "int8", calibration), tmp_path / "new.r2b")
    header, tensors = read(tmp_path / "new.r2b")
    del header["int8_classifier"]
    for key in [k for k in tensors if k.startswith("fc.")]:
        del tensors[key]
    tensors["fc.weight"], tensors["fc.bias"] = (t.detach().numpy() for t in model.fc.parameters())
    old = from_parts(header, tensors, "old.r2b")
    expected = int8_model(model, calibration, backend="reference", classifier=False)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert isinstance(old.fc, nn.Linear) and torch.equal(old(x), expected(x))
    header["int8_classifier"] = "yes"
    with pytest.raises(PackedFileError, match="int8_classifier"):
        from_parts(header, tensors, "bad.r2b")


def test_int8_calibration_takes_one_tensor_of_images():
    model = randomise(create_model("r2b_resnet18", stage="bnn", stem="cifar", num_classes=10))
    images = _calibration(32)[0]
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():  # one (N, 3, H, W) tensor is one batch
        assert torch.equal(to_packed(model, "int8", images)(x),
                           to_packed(model, "int8", [images])(x))  # fmt: skip
    with pytest.raises(UserError, match=r"shape \(3, 32, 32\): pass \(N, 3, H, W\)"):
        to_packed(model, "int8", images[0])


def test_int8_needs_calibration_and_a_known_choice():
    model = create_model("r2b_resnet18", stage="bnn", stem="cifar", num_classes=10)
    with pytest.raises(UserError, match="calibration images"):
        to_packed(model, "int8")
    with pytest.raises(UserError, match="float, int8"):
        to_packed(model, "fp16")
    with pytest.raises(UserError, match="needs images"):
        to_packed(model, "int8", [])


def test_int8_engine_does_not_depend_on_threads():
    """Integer products make the int8 stem thread-invariant (PyTorch's float 7x7 conv is not)."""
    model = randomise(create_model("r2b_resnet18", stage="bnn", stem="imagenet", num_classes=10))
    packed = to_packed(model, "int8", _calibration(64))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(packed(x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_calibration_is_a_class_balanced_training_subset():
    from r2b.data.default import read_default
    from r2b.packed.calibration import calibration_batches

    train = read_default("train")
    batches = calibration_batches(train, 100, batch_size=64)
    assert [b.shape[0] for b in batches] == [64, 36]
    assert batches[0].dtype == torch.float32 and abs(float(torch.cat(batches).mean())) < 1.0
    with pytest.raises(UserError, match="--calib-images"):
        calibration_batches(train, 0)


def _pairwise_saturating_mm(shift_second: bool):
    """``torch._int_mm`` as an x86 CPU without VNNI computes it: one operand shifted by 128 to
    uint8, products added in pairs into a saturating int16, the shift taken off at the end."""

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.long(), b.long()
        if shift_second:  # (a (b + 128)) - 128 sum a
            products = a.unsqueeze(2) * (b + 128).unsqueeze(0)
            correction = 128 * a.sum(dim=1, keepdim=True)
        else:  # ((a + 128) b) - 128 sum b
            products = (a + 128).unsqueeze(2) * b.unsqueeze(0)
            correction = 128 * b.sum(dim=0, keepdim=True)
        pairs = products.reshape(a.shape[0], -1, 2, b.shape[1]).sum(dim=2).clamp(-32768, 32767)
        return (pairs.sum(dim=1) - correction).int()

    return mm


@pytest.mark.parametrize("shift_second", [False, True])
def test_int_mm_probe_fails_a_kernel_that_saturates_in_either_order(monkeypatch, shift_second):
    """Shifting the first operand saturates the downsample's order (weights first), shifting the
    second the classifier's (codes first): the probe checks both."""
    import r2b.packed.int8 as int8

    monkeypatch.setattr(int8, "_INT_MM", None)
    monkeypatch.setattr(torch, "_int_mm", _pairwise_saturating_mm(shift_second))
    assert int8.int_mm_exact() is False
    monkeypatch.setattr(int8, "_INT_MM", None)
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.long() @ b.long()).int())
    assert int8.int_mm_exact() is True
