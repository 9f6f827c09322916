"""int8 float layers for the packed engine: ``to_packed(model, float_layers="int8", ...)``.

A binary network's remaining float compute is its stem convolution, the 1x1 convolutions of the
downsampling shortcuts and the classifier. This module runs all three in int8 with post-training
quantisation; the binary convolutions, gates, shifts and activations stay as the exact engine
runs them.

**The arithmetic** (one definition, shared by the engine and its reference). For a layer with
input ``x`` and folded weights ``W`` (BatchNorm after a conv folded in: ``W' = W * g / sqrt(v + e)``
per output channel, ``b' = beta - mu * g / sqrt(v + e)``):

    s_x, z       per-tensor scale and zero point of the input, from calibration images:
                 [lo, hi] = [min(0, min x), max(0, max x)], s_x = (hi - lo) / 255,
                 z = clamp(round(-lo / s_x), 0, 255)
    q            = clamp(rne(x * (1 / s_x)) + z, 0, 255)       uint8, rne = round half to even
    s_w[o]       = max |W'[o]| / 64,  w_q = rne(W' / s_w[o]) in [-64, 64]   int8, per channel
    acc[o]       = sum_k (q_k - z) * w_q[o, k]                  exact integer (padding: q = z)
    y[o]         = float32(acc[o]) * m[o] + b'[o]               two float32 roundings,
                 m[o] = float32(s_x * s_w[o])

(Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018: asymmetric uint8 activations, symmetric per-channel int8 weights; the
dequantised output stays float32 here because the next step is a float one: the stem's
PReLU/max-pool tail or a residual add.)

**Why weights in [-64, 64].** On an x86 CPU without VNNI (AVX2, or AVX-512 before Cascade Lake),
oneDNN's uint8 x int8 products go through ``vpmaddubsw``, which adds each pair of products into a
saturating int16: with weights up to 127 a pair reaches 2 * 255 * 127 = 64,770 and the sum comes
out wrong (measured on an AVX2 AMD EPYC: the engine then differed from its reference on real
images and lost a point of top-1). With ``|w_q| <= 64`` a pair is at most 2 * 255 * 64 = 32,640
<= 32,767, so the integer sums are exact on every x86 CPU, and a ``.r2b`` file made on a VNNI
machine stays exact on one without (PyTorch's x86 quantisation takes the other bit, from the
activations: ``reduce_range``; an image is 8-bit data, so here the weights give it up).

**Exactness.** ``acc`` is an integer; the engine computes it with oneDNN's int8 convolution
(``torch.ops.onednn.qconv2d_pointwise`` with unit scales and a float32 output: VNNI / AMX on
x86) and converts it to float32 once, correctly rounded. A downsample's 1x1 conv is one
``torch._int_mm`` for the whole batch instead (``r2b.packed.layers.PackedDownsample``):
``sum_k (q_k - 128) w_k`` on int8 operands plus ``(128 - z) sum_k w_k``, the same integer;
``int_mm_exact`` checks that product at its extremes once. On a CPU with AVX-512 VNNI the stem
conv is r2b's own VNNI kernel, fused with the stem's tail (``r2b.packed.kernels.int8_stem``):
``sum_k q_k w_k - z sum_k w_k`` in int32, the same integer again. The classifier (``Int8Linear``, no
BatchNorm: ``b'`` is its bias) is that product too, on the pooled features, and its
``Dequantize`` output is the logits. The reference
(``Int8Conv2d`` with ``backend="reference"``) computes the same integer with a float64
convolution of the integer-valued tensors (exact below 2^53) and rounds it to float32 once. The
scale and bias steps are the same PyTorch elementwise ops in both, so the int8 engine equals
its reference, ``int8_reference(model, calibration)``, bit for bit. The reference is the eval
model with exactly these layers swapped for their quantised forms: a fake-quantised eval graph.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from r2b.errors import UserError

#: backends of the integer product: oneDNN's int8 kernels, or the float64 oracle
BACKENDS = ("onednn", "reference")
#: largest |w_q|: 2 * 255 * 64 fits the int16 pair sums of x86 CPUs without VNNI
WEIGHT_LEVELS = 64


@dataclass(frozen=True)
class ActivationRange:
    """The range ``[lo, hi]`` an input of an int8 layer takes on the calibration images."""

    lo: float
    hi: float

    def scale_and_zero_point(self) -> tuple[float, int]:
        """``(s_x, z)`` of the asymmetric uint8 grid that holds ``[min(0, lo), max(0, hi)]``."""
        lo, hi = min(0.0, self.lo), max(0.0, self.hi)
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        zero_point = int(min(255, max(0, round(-lo / scale))))
        return scale, zero_point


def quantize_activations(x: torch.Tensor, inv_scale: torch.Tensor, zero_point: int) -> torch.Tensor:
    """``clamp(rne(x * inv_scale) + z, 0, 255)`` as uint8 (``torch.round`` rounds half to even;
    the in-place steps and the copy into a uint8 tensor are PyTorch's fastest path for it)."""
    q = torch.mul(x, inv_scale)
    q.round_().add_(zero_point).clamp_(0, 255)
    return torch.empty_like(q, dtype=torch.uint8).copy_(q)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_q, s_w)``: symmetric per-output-channel int8 in ``[-WEIGHT_LEVELS, WEIGHT_LEVELS]``
    (the module docstring says why not 127) and float64 scales."""
    w = weight.detach().double()
    peak = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / WEIGHT_LEVELS, torch.ones_like(peak))
    view = (-1,) + (1,) * (w.dim() - 1)
    w_q = torch.round(w / scale.view(view)).clamp_(-WEIGHT_LEVELS, WEIGHT_LEVELS).to(torch.int8)
    return w_q, scale


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module | None):
    """``(W', b')`` of ``bn(conv(x))`` as one conv, in float64 (eval-mode BatchNorm)."""
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    if bn is None:
        return w, b
    invstd = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = torch.ones_like(invstd) if bn.weight is None else bn.weight.detach().double()
    beta = torch.zeros_like(invstd) if bn.bias is None else bn.bias.detach().double()
    a = gamma * invstd
    view = (-1,) + (1,) * (w.dim() - 1)
    return w * a.view(view), beta + (b - bn.running_mean.double()) * a


class Dequantize(nn.Module):
    """``y = acc * m + b`` per channel (dim 1), two float32 roundings (two PyTorch ops)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("multiplier", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (acc.dim() - 2)
        return acc * self.multiplier.view(view) + self.bias.view(view)


class _Int8Product(nn.Module):
    """An int8 product's state: the int8 weight, the input's quantisation, the backend, and
    ``calibrate`` (which also fills the ``Dequantize`` that follows)."""

    def __init__(self, weight_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("weight_q", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("inv_scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int64))
        self.backend = "onednn"
        self._prepacked = None

    @property
    def in_features(self) -> int:
        return int(self.weight_q[0].numel())

    def set_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}; one of {BACKENDS}")
        self.backend, self._prepacked = backend, None

    def calibrate(self, weight, bias, bn, seen: ActivationRange, dequantize: Dequantize) -> None:
        """Quantise the folded weights and the input range; ``dequantize`` gets ``m`` and ``b'``."""
        folded_w, folded_b = fold_batchnorm(weight, bias, bn)
        w_q, w_scale = quantize_weight(folded_w)
        x_scale, zero_point = seen.scale_and_zero_point()
        self.weight_q.copy_(w_q)
        self.inv_scale.fill_(1.0 / x_scale)
        self.zero_point.fill_(zero_point)
        dequantize.multiplier.copy_((x_scale * w_scale).float())
        dequantize.bias.copy_(folded_b.float())
        self._prepacked = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.integer_sums(self._quantized_input(x))

    def _quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activations(x, self.inv_scale, self._zero_point())

    def _zero_point(self) -> int:
        return int(self.zero_point) if self._prepacked is None else self._prepacked[1]

    def _unit_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.weight_q.shape[0]
        return torch.ones(out), torch.zeros(out, dtype=torch.int64)

    def _onednn_weights(self, prepack) -> tuple:
        """``(prepacked weight, z, unit scales, zero weight points)``, made once per weights."""
        if self._prepacked is None:
            ones, zeros = self._unit_scales()
            z = int(self.zero_point)
            self._prepacked = (prepack(ones, z), z, ones, zeros)
        return self._prepacked


def int_mm_shift(weight_q: torch.Tensor, zero_point: int) -> torch.Tensor:
    """``(128 - z) sum_k w_q[o, k]`` (int32, per output): what turns the product of the weights
    with the shifted codes ``q - 128`` (int8 operands for ``torch._int_mm``) into
    ``sum_k (q_k - z) w_q[o, k]``."""
    w = weight_q.reshape(weight_q.shape[0], -1).to(torch.int32)
    return (128 - zero_point) * w.sum(dim=1, dtype=torch.int32)


class Int8Linear(_Int8Product):
    """``acc = (q(x) - z) w_q^T`` as exact integers in float32: the classifier in int8.

    The fast backend is one ``torch._int_mm`` of the shifted codes ``q - 128`` with the int8
    weights plus ``int_mm_shift`` (in int32, then one rounding to float32, as the reference's
    float64 product is rounded once); without an exact ``_int_mm`` (``int_mm_exact``) it is the
    reference."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(tuple(linear.weight.shape))

    @property
    def out_features(self) -> int:
        return int(self.weight_q.shape[0])

    def integer_sums(self, q: torch.Tensor) -> torch.Tensor:
        """``acc`` (float32, exact integers rounded once) of the quantised input ``q``
        (uint8, ``(N, K)``)."""
        if self.backend == "reference" or not int_mm_exact():
            centred = q.double() - float(self.zero_point)
            return (centred @ self.weight_q.double().t()).float()
        shifted = (q.to(torch.int16) - 128).to(torch.int8)
        return (torch._int_mm(shifted, self.weight_q.t()) + self.shift()).float()

    def shift(self) -> torch.Tensor:
        """``int_mm_shift`` of these weights, made once."""
        if self._prepacked is None:
            self._prepacked = (int_mm_shift(self.weight_q, int(self.zero_point)),
                               int(self.zero_point))  # fmt: skip
        return self._prepacked[0]

    def extra_repr(self) -> str:
        o, k = self.weight_q.shape
        return f"in_features={k}, out_features={o}, backend={self.backend}"


class Int8Conv2d(_Int8Product):
    """``acc = conv(q(x) - z, w_q)`` as exact integers in float32 (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise UserError("int8 float layers support no groups or dilation in a conv")
        if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
            raise UserError("int8 convs need equal strides and paddings in both directions")
        super().__init__(tuple(conv.weight.shape))
        self.stride, self.padding = conv.stride[0], conv.padding[0]

    @property
    def out_channels(self) -> int:
        return int(self.weight_q.shape[0])

    def integer_sums(self, q: torch.Tensor) -> torch.Tensor:
        """``acc`` (float32, exact integers) of the quantised input ``q`` (uint8, any memory
        format); channels-last from oneDNN."""
        if self.backend == "reference":
            centred = q.double() - float(self.zero_point)
            acc = F.conv2d(centred, self.weight_q.double(), stride=self.stride,
                           padding=self.padding)  # fmt: skip
            return acc.float()
        geometry = ([self.stride] * 2, [self.padding] * 2, [1, 1], 1)
        packed, z, ones, zeros = self._onednn_weights(
            lambda ones, z: torch.ops.onednn.qconv_prepack(self.weight_q, ones, 1.0, z,
                                                           *geometry, None)
        )  # fmt: skip
        q = q.contiguous(memory_format=torch.channels_last)
        return torch.ops.onednn.qconv2d_pointwise(
            q, 1.0, z, packed, ones, zeros, None, *geometry, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip

    def extra_repr(self) -> str:
        o, c, kh, kw = self.weight_q.shape
        return f"{c}, {o}, kernel_size=({kh}, {kw}), stride={self.stride}, " \
               f"padding={self.padding}, backend={self.backend}"  # fmt: skip


# ------------------------------------------------------------------ which layers, and the swap


@dataclass(frozen=True)
class Int8Site:
    """One float layer that runs in int8: the module names of the ``Conv2d`` and of the
    BatchNorm after it, under the model; or of the classifier's ``Linear`` (``batchnorm``
    None: the int8 form is ``nn.Sequential(Int8Linear, Dequantize)`` under the same name)."""

    product: str
    batchnorm: str | None = None


def int8_sites(model: nn.Module, classifier: bool = True) -> list[Int8Site]:
    """The stem conv and every downsample shortcut's 1x1 conv, each with the BatchNorm after it,
    and (``classifier``) the classifier, found through the model's description
    (``model.spec()``, ``r2b.models.spec``).

    The classifier is int8 because it is where a forward pass reads a large weight matrix cold
    (512 x 1000: 2 MB in fp32, 0.5 MB in int8): ``benchmarks/bench_float_layers.py`` times the
    engine's int8 classifier against fp32 ``nn.Linear`` with the weights evicted before each
    call. ``.r2b`` files written before hold it in float (``classifier=False``)."""
    spec = model.spec()
    names = {id(m): n for n, m in model.named_modules()}
    sites = []
    stem = list(spec.stem) if isinstance(spec.stem, nn.Sequential) else []
    if len(stem) >= 2 and isinstance(stem[0], nn.Conv2d) and isinstance(stem[1], nn.BatchNorm2d):
        sites.append(Int8Site(names[id(stem[0])], names[id(stem[1])]))
    for half in spec.halves:
        conv = getattr(half.shortcut, "conv", None)
        bn = getattr(half.shortcut, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            sites.append(Int8Site(names[id(conv)], names[id(bn)]))
    if classifier and isinstance(spec.fc, nn.Linear):
        sites.append(Int8Site(names[id(spec.fc)]))
    return sites


def calibration_ranges(
    model: nn.Module, sites: list[Int8Site], images: Iterable[torch.Tensor]
) -> list[ActivationRange]:
    """Each site's input range over ``images`` (batches of normalised ``(N, 3, H, W)`` float
    tensors, or one such tensor) in the eval float model."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise UserError(f"int8 calibration images of shape {tuple(images.shape)}: pass "
                            "(N, 3, H, W) batches of normalised images")  # fmt: skip
        images = [images]
    lows = [float("inf")] * len(sites)
    highs = [float("-inf")] * len(sites)

    def observer(i: int):
        def hook(_module, inputs):
            x = inputs[0]
            lows[i] = min(lows[i], float(x.min()))
            highs[i] = max(highs[i], float(x.max()))

        return hook

    hooks = [model.get_submodule(s.product).register_forward_pre_hook(observer(i))
             for i, s in enumerate(sites)]  # fmt: skip
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.inference_mode():
            for batch in images:
                model(batch.float())
                seen += batch.shape[0]
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not seen:
        raise UserError("int8 calibration needs images; pass at least one batch")
    return [ActivationRange(lo, hi) for lo, hi in zip(lows, highs)]


def int8_structure(model: nn.Module, sites: list[Int8Site]) -> nn.Module:
    """A copy of ``model`` whose sites are int8 layers with empty parameters (the layout a
    ``.r2b`` file's tensors load into): a conv becomes an ``Int8Conv2d`` and its BatchNorm the
    ``Dequantize`` that holds the folded BN."""
    quantized = copy.deepcopy(model).eval()
    for site in sites:
        float_layer = quantized.get_submodule(site.product)
        if site.batchnorm is None:
            classifier = nn.Sequential(
                Int8Linear(float_layer), Dequantize(float_layer.out_features)
            )
            _replace(quantized, site.product, classifier)
            continue
        _replace(quantized, site.product, Int8Conv2d(float_layer))
        _replace(quantized, site.batchnorm, Dequantize(float_layer.out_channels))
    return quantized


def int8_layers(model: nn.Module, site: Int8Site) -> tuple[_Int8Product, Dequantize]:
    """The int8 layer and its ``Dequantize`` of ``site`` in an ``int8_structure`` model."""
    if site.batchnorm is None:
        product, dequantize = model.get_submodule(site.product)
        return product, dequantize
    return model.get_submodule(site.product), model.get_submodule(site.batchnorm)


def int8_model(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    backend: str = "onednn",
    classifier: bool = True,
) -> nn.Module:
    """The eval model with its stem conv, downsample convs and classifier in int8, calibrated on
    ``calibration`` (batches of normalised images). ``backend="reference"`` is the oracle that
    the packed int8 engine equals bit for bit; ``classifier=False`` keeps the classifier float
    (as in ``.r2b`` files written before it was int8)."""
    sites = int8_sites(model, classifier)
    ranges = calibration_ranges(model, sites, calibration)
    quantized = int8_structure(model, sites)
    for site, seen in zip(sites, ranges):
        product, dequantize = int8_layers(quantized, site)
        float_layer = model.get_submodule(site.product)
        bn = None if site.batchnorm is None else model.get_submodule(site.batchnorm)
        with torch.no_grad():
            product.calibrate(float_layer.weight, float_layer.bias, bn, seen, dequantize)
    set_backend(quantized, backend if onednn_available() else "reference")
    return quantized


def int8_reference(model: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """The fake-quantised eval graph that ``to_packed(model, "int8", calibration)`` equals."""
    return int8_model(model, calibration, backend="reference")


def onednn_available() -> bool:
    """Whether this PyTorch runs oneDNN's int8 convolution (x86 builds do); checked once on a
    tiny conv against the float64 oracle, with products at the largest values the quantisation
    gives (uint8 255 times +-WEIGHT_LEVELS: a kernel whose pair sums saturate fails it). Without
    it the engine uses the oracle (exact, slow)."""
    global _ONEDNN
    if _ONEDNN is None:
        conv = Int8Conv2d(nn.Conv2d(4, 3, 3, padding=1, bias=False))
        w = torch.arange(108).reshape(3, 4, 3, 3) % 7 - 3
        w[0], w[1] = WEIGHT_LEVELS, -WEIGHT_LEVELS
        conv.weight_q.copy_(w)
        conv.zero_point.fill_(3)
        x = torch.arange(2 * 4 * 5 * 5, dtype=torch.float32).reshape(2, 4, 5, 5) % 11
        x[0] = 300.0  # quantises to 255
        try:
            fast = conv(x)
            conv.set_backend("reference")
            _ONEDNN = torch.equal(fast, conv(x))
        except (RuntimeError, AttributeError, NotImplementedError):
            _ONEDNN = False
    return _ONEDNN


_ONEDNN: bool | None = None


def int_mm_exact() -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32 matrix product) runs here and is exact
    for the engine's operands: weights in ``[-WEIGHT_LEVELS, WEIGHT_LEVELS]`` times shifted
    activations ``q - 128`` in ``[-128, 127]``, checked once at the extremes against an int64
    product, in both orders the engine uses (weights first: the downsample; codes first, one
    row or several, against column-major weights: the classifier). A kernel that adds pairs of
    products in saturating int16, as x86 CPUs without VNNI do, fails it where it shifts the
    wrong operand: 2 * 128 * 64 fits, 2 * 192 * 128 would not."""
    global _INT_MM
    if _INT_MM is None:
        w = (torch.arange(32 * 64).reshape(32, 64) % 129 - 64).to(torch.int8)
        w[0], w[1] = WEIGHT_LEVELS, -WEIGHT_LEVELS
        codes = (torch.arange(64 * 48).reshape(64, 48) % 256 - 128).to(torch.int8)
        codes[:, 0], codes[:, 1] = -128, 127
        expected = w.long() @ codes.long()
        rows = codes.t().contiguous()  # (48, 64): codes first
        try:
            _INT_MM = (
                torch.equal(torch._int_mm(w, codes).long(), expected)
                and torch.equal(torch._int_mm(rows, w.t()).long(), expected.t())
                and torch.equal(torch._int_mm(rows[:1], w.t()).long(), expected.t()[:1])
            )
        except (RuntimeError, AttributeError, NotImplementedError):
            _INT_MM = False
    return _INT_MM


_INT_MM: bool | None = None


def set_backend(model: nn.Module, backend: str) -> None:
    """Set the integer-product backend of every int8 layer in ``model``."""
    for m in model.modules():
        if isinstance(m, _Int8Product):
            m.set_backend(backend)


def has_int8_layers(model: nn.Module) -> bool:
    return any(isinstance(m, _Int8Product) for m in model.modules())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
