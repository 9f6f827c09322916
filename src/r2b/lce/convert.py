"""Translate a binary network's description (``model.spec()``) into a TFLite graph with LCE's
binary ops (the math and the sources: ``r2b.lce``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from r2b.errors import UserError
from r2b.layers import BinaryConv2d, Gate, LearnedShift, RPReLU
from r2b.lce.tflite import ACT_NONE, ACT_RELU, SAME, VALID, Graph, flexbuffer_map, serialize
from r2b.models.spec import BinaryNetSpec, HalfBlockSpec

#: The float32 value the ImageNet stem's max-pool padding uses (-inf would do; this is finite).
POOL_PAD = float(np.finfo(np.float32).min)

BITS = 32  # LCE bitpacks 32 channels into one int32 word

#: What ``probes`` can add to a file's outputs, per half block: its input ``x``, the sign's input
#: ``y``, LCE's bitpacked ``sign(y)`` (int32 words) and the binary conv's output ``conv`` (before
#: the gate).
PROBES = ("x", "y", "bits", "conv")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _bias(b) -> np.ndarray:
    """``b`` in float32 with -0.0 made +0.0: ``t + b`` is then never -0.0 (IEEE: a sum is -0.0
    only when both terms are), so a sign after it never meets a negative zero."""
    return np.asarray(b, np.float32) + np.float32(0.0)


def pack_filter(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """LCE's bitpacked filter of a conv weight ``(O, I, kh, kw)``: int32 ``(O, kh, kw,
    ceil(I/32))`` (OHWI), channel ``32 k + j`` in bit ``j`` of word ``k``, bit 1 = negative
    (``w < 0``; so sign(0) = +1), the unused bits of the last word 0."""
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    o, i, kh, kw = w.shape
    bits = np.transpose(w < 0, (0, 2, 3, 1))
    words = -(-i // BITS)
    bits = np.concatenate([bits, np.zeros((o, kh, kw, words * BITS - i), bool)], axis=3)
    packed = np.packbits(bits, axis=3, bitorder="little")  # bytes, lowest channel first
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32).view(np.int32)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as ``x * m + b`` (float64): ``m = gamma / sqrt(var + eps)``,
    ``b = beta - mean * m`` (running statistics; no affine: gamma 1, beta 0)."""
    if bn.running_mean is None or bn.running_var is None:
        raise UserError("a BatchNorm without running statistics cannot be exported")
    var, mean = _np(bn.running_var), _np(bn.running_mean)
    gamma = _np(bn.weight) if bn.weight is not None else np.ones_like(mean)
    beta = _np(bn.bias) if bn.bias is not None else np.zeros_like(mean)
    m = gamma / np.sqrt(var + bn.eps)
    return m, beta - mean * m


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SizeError(Exception):
    """The network does not fit the requested input size: a layer would get an empty map, or a
    residual add would join maps of two sizes (a stride-2 conv and a 2x2 pool of an odd size)."""


def _plan_dim(n: int, k: int, s: int, p: int) -> tuple[str, int, int, int]:
    """How to express PyTorch's padding ``p`` (both sides) of one spatial dim in TFLite:
    ``(mode, before, after, out)`` with mode VALID (no padding read), SAME (TFLite's own padding
    reads the same taps: same output size and ``p`` before) or PAD (an explicit pad op of
    ``before``/``after`` rows, then VALID). ``after`` is the padding PyTorch actually reads."""
    out = (n + 2 * p - k) // s + 1
    if n < 1 or out < 1:
        raise SizeError()
    after = max(0, (out - 1) * s + k - n - p)
    if p == 0:
        return "VALID", 0, 0, out
    same_out = -(-n // s)
    total = max((same_out - 1) * s + k - n, 0)
    if same_out == out and total // 2 == p and total - p == after:
        return "SAME", p, after, out
    return "PAD", p, after, out


def _plan(shape, k, s, p) -> tuple[str, list[list[int]], tuple[int, int]]:
    """``_plan_dim`` for H and W of an NHWC ``shape``: (mode, NHWC paddings, (out_h, out_w))."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(s), _pair(p)
    dims = [_plan_dim(shape[1], kh, sh, ph), _plan_dim(shape[2], kw, sw, pw)]
    modes = {d[0] for d in dims}
    mode = modes.pop() if len(modes) == 1 else "PAD"  # SAME in one dim, VALID in the other: PAD
    pads = [[0, 0], [dims[0][1], dims[0][2]], [dims[1][1], dims[1][2]], [0, 0]]
    return mode, pads, (dims[0][3], dims[1][3])


class _Translator:
    """Writes the ops of one network into a ``Graph``; every method takes and returns tensor
    indices of NHWC float32 activations (``bconv`` reads float and writes float)."""

    def __init__(self, batch: int, probes, dry: bool = False) -> None:
        self.g = Graph()
        self.dry = dry  # shapes only: the bitpacked filters are left zero
        self.batch = batch
        self.kinds = set(PROBES if probes is True else (probes or ()))
        if self.kinds - set(PROBES):
            raise ValueError(f"unknown probe kinds {sorted(self.kinds - set(PROBES))}")
        self.probes: list[tuple[str, int]] = []
        self.padded_bconvs = 0

    # ---- helpers
    def act(self, name: str, shape, dtype=np.float32) -> int:
        return self.g.tensor(name, shape, dtype)

    def probe(self, name: str, t: int) -> None:
        if name.rsplit("/", 1)[1] in self.kinds:
            self.probes.append((name, t))

    def binary(self, code: str, a: int, b: int, name: str) -> int:
        sa, sb = self.g.shape(a), self.g.shape(b)
        if code == "ADD" and self.g.tensors[b].data is None and sa != sb:  # residual adds
            raise SizeError(f"{name} would add maps of {sa[1]}x{sa[2]} and {sb[1]}x{sb[2]}")
        out = self.act(name, sa)
        self.g.op(code, [a, b], [out], f"{code.title()}Options", fused_activation_function=0)
        return out

    def affine(self, x: int, m: np.ndarray | None, b: np.ndarray | None, name: str) -> int:
        """``x * m + b`` per channel as MUL and ADD; a factor of ones or a zero bias is left out
        (what TensorFlow's converter folds away)."""
        if m is not None and not np.all(m == 1):
            x = self.binary("MUL", x, self.g.const(f"{name}/mul", m), f"{name}/scaled")
        if b is not None and not np.all(b == 0):
            x = self.binary("ADD", x, self.g.const(f"{name}/add", _bias(b)), f"{name}/shifted")
        return x

    def pad(self, x: int, pads, name: str, value: float | None = None) -> int:
        shape = self.g.shape(x)
        out_shape = [s + a + b for s, (a, b) in zip(shape, pads)]
        out = self.act(f"{name}/padded", out_shape, self.g.tensors[x].dtype)
        paddings = self.g.const(f"{name}/paddings", np.array(pads), np.int32)
        if value is None:
            self.g.op("PAD", [x, paddings], [out], "PadOptions")
        else:
            c = self.g.const(f"{name}/pad_value", np.array(value, np.float32))
            self.g.op("PADV2", [x, paddings, c], [out], "PadV2Options")
        return out

    # ---- float layers
    def conv2d(self, x: int, conv: nn.Conv2d, name: str, bn: nn.BatchNorm2d | None = None) -> int:
        """CONV_2D (filter OHWI) with a following BatchNorm folded in: ``W m``, ``b m + b_bn``."""
        if conv.groups != 1 or _pair(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
            raise UserError(
                f"{name}: only plain convolutions (no groups, dilation or "
                "non-zero padding mode) can be exported to LCE"
            )
        if isinstance(conv.padding, str):
            raise UserError(f"{name}: padding {conv.padding!r} is not supported; use numbers")
        w = _np(conv.weight)
        bias = _np(conv.bias) if conv.bias is not None else np.zeros(w.shape[0])
        if bn is not None:
            m, b = bn_affine(bn)
            w, bias = w * m[:, None, None, None], bias * m + b
        mode, pads, (oh, ow) = _plan(self.g.shape(x), conv.kernel_size, conv.stride, conv.padding)
        if mode == "PAD":
            x = self.pad(x, pads, name)
        (sh, sw) = _pair(conv.stride)
        out = self.act(f"{name}/out", (self.batch, oh, ow, w.shape[0]))
        wt = self.g.const(f"{name}/filter", np.transpose(w, (0, 2, 3, 1)))
        bt = self.g.const(f"{name}/bias", _bias(bias))
        self.g.op(
            "CONV_2D",
            [x, wt, bt],
            [out],
            "Conv2DOptions",
            padding=SAME if mode == "SAME" else VALID,
            stride_w=sw,
            stride_h=sh,
            fused_activation_function=ACT_NONE,
        )
        return out

    def pool2d(self, x: int, m: nn.Module, name: str) -> int:
        k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
        is_max = isinstance(m, nn.MaxPool2d)
        if m.ceil_mode or (is_max and _pair(m.dilation) != (1, 1)):
            raise UserError(f"{name}: pools with ceil_mode or dilation cannot be exported")
        if not is_max and (p != (0, 0) or m.divisor_override):
            raise UserError(f"{name}: average pools with padding cannot be exported to LCE")
        mode, pads, (oh, ow) = _plan(self.g.shape(x), k, s, p)
        if mode == "PAD":
            x = self.pad(x, pads, name, POOL_PAD)
        out = self.act(f"{name}/out", (self.batch, oh, ow, self.g.shape(x)[3]))
        code = "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D"
        self.g.op(
            code,
            [x],
            [out],
            "Pool2DOptions",
            padding=SAME if mode == "SAME" else VALID,
            stride_w=s[1],
            stride_h=s[0],
            filter_width=k[1],
            filter_height=k[0],
        )
        return out

    def global_pool(self, x: int, name: str) -> int:
        """Mean over H and W as AVERAGE_POOL_2D with the whole map as its window (as LCE's
        conversion of a Keras GlobalAveragePooling2D): ``(N, 1, 1, C)``."""
        n, h, w, c = self.g.shape(x)
        out = self.act(f"{name}/out", (n, 1, 1, c))
        self.g.op(
            "AVERAGE_POOL_2D",
            [x],
            [out],
            "Pool2DOptions",
            padding=VALID,
            stride_w=w,
            stride_h=h,
            filter_width=w,
            filter_height=h,
        )
        return out

    def fc(self, x: int, w: np.ndarray, b: np.ndarray | None, name: str, relu=False) -> int:
        out = self.act(f"{name}/out", (self.batch, w.shape[0]))
        bias = -1 if b is None else self.g.const(f"{name}/bias", _bias(b))
        self.g.op(
            "FULLY_CONNECTED",
            [x, self.g.const(f"{name}/weights", w), bias],
            [out],
            "FullyConnectedOptions",
            fused_activation_function=ACT_RELU if relu else 0,
        )
        return out

    def prelu(self, x: int, slope: torch.Tensor, name: str) -> int:
        c = self.g.shape(x)[3]
        a = _np(slope).reshape(-1)
        a = np.broadcast_to(a, (c,)) if a.size == 1 else a
        out = self.act(f"{name}/out", self.g.shape(x))
        self.g.op("PRELU", [x, self.g.const(f"{name}/alpha", a.reshape(1, 1, c))], [out])
        return out

    def activation(self, x: int, act: nn.Module, name: str) -> int:
        if isinstance(act, RPReLU):
            x = self.affine(x, None, _np(act.shift_in), f"{name}/shift_in")
            x = self.prelu(x, act.weight, name)
            return self.affine(x, None, _np(act.shift_out), f"{name}/shift_out")
        if isinstance(act, nn.PReLU):
            return self.prelu(x, act.weight, name)
        raise UserError(
            f"{name}: activation {type(act).__name__} cannot be exported to LCE "
            "(PReLU, RPReLU or none)"
        )

    def sequence(self, x: int, modules: list[nn.Module], name: str) -> int:
        """Float modules in order; a Conv2d followed by a BatchNorm2d becomes one CONV_2D."""
        i = 0
        while i < len(modules):
            m, sub = modules[i], f"{name}.{i}"
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            if isinstance(m, BinaryConv2d):
                raise UserError(f"{sub}: a binary conv outside a half block cannot be exported")
            if isinstance(m, nn.Conv2d):
                bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
                x = self.conv2d(x, m, sub, bn)
                i += 2 if bn is not None else 1
                continue
            if isinstance(m, nn.BatchNorm2d):
                x = self.affine(x, *bn_affine(m), sub)
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                x = self.pool2d(x, m, sub)
            elif isinstance(m, (nn.PReLU, RPReLU)):
                x = self.activation(x, m, sub)
            elif isinstance(m, nn.Sequential):
                x = self.sequence(x, list(m), sub)
            elif not isinstance(m, nn.Identity):
                x = self.sequence(x, _children_in_order(m, sub), sub)
            i += 1
        return x

    # ---- the binary conv
    def bconv(
        self, y: int, conv: BinaryConv2d, mul: np.ndarray, bias: np.ndarray, name: str
    ) -> int:
        """LceQuantize -> [PAD] -> LceBconv2d: ``mul * conv(sign y, sign W) + bias``."""
        if conv.groups != 1 or _pair(conv.dilation) != (1, 1):
            raise UserError(f"{name}: binary convs with groups or dilation cannot be exported")
        n, h, w, c = self.g.shape(y)
        words = -(-c // BITS)
        q = self.act(f"{name}/quantized", (n, h, w, words), np.int32)
        self.g.op("LceQuantize", [y], [q])
        self.probe(f"{name}/bits", q)
        mode, pads, (oh, ow) = _plan((n, h, w, c), conv.kernel_size, conv.stride, conv.padding)
        pad_value = conv.pad_value
        if mode != "VALID" and pad_value not in (0.0, 1.0):
            raise UserError(
                f"{name}: pad_value {pad_value:g} cannot be expressed in LCE, which "
                "pads binary convs with +1 (pad_values=1) or 0"
            )
        if mode == "PAD":
            if pad_value != 1.0:
                raise UserError(
                    f"{name}: zero padding at this input size needs TFLite's SAME "
                    "geometry (odd sizes); use pad_value=1"
                )
            q = self.pad(q, pads, name)  # int32 zeros: bit 0 = +1 on every channel
            self.padded_bconvs += 1
        sh, sw = _pair(conv.stride)
        o, _, kh, kw = conv.weight.shape
        filt = np.zeros((o, kh, kw, words), np.int32) if self.dry else pack_filter(conv.weight)
        out = self.act(f"{name}/out", (n, oh, ow, o))
        opts = flexbuffer_map(
            {
                "channels_in": c,
                "dilation_height_factor": 1,
                "dilation_width_factor": 1,
                "fused_activation_function": ACT_NONE,
                "pad_values": 1 if pad_value == 1.0 else 0,
                "padding": SAME if mode == "SAME" else VALID,
                "stride_height": sh,
                "stride_width": sw,
            }
        )
        inputs = [
            q,
            self.g.const(f"{name}/filter", filt, np.int32),
            self.g.const(f"{name}/post_activation_multiplier", mul),
            self.g.const(f"{name}/post_activation_bias", _bias(bias)),
            -1,
        ]
        self.g.op("LceBconv2d", inputs, [out], custom_options=opts)
        return out

    def half(self, x: int, half: HalfBlockSpec) -> int:
        name = half.name
        conv = half.conv
        if not conv.is_binary:
            raise UserError(f"{name}: the conv is not binary (stage 'bnn' only)")
        self.probe(f"{name}/x", x)
        pre = half.pre
        if pre is None:
            y = x
        elif isinstance(pre, nn.BatchNorm2d):
            y = self.affine(x, *bn_affine(pre), f"{name}/pre")
        elif isinstance(pre, LearnedShift):
            y = self.affine(x, None, _np(pre.shift), f"{name}/pre")
        else:
            raise UserError(
                f"{name}: {type(pre).__name__} before the sign cannot be exported "
                "(BatchNorm2d, LearnedShift or none)"
            )
        self.probe(f"{name}/y", y)
        o = conv.out_channels
        alpha = None if self.dry else conv.weight_alpha()
        mul = _np(alpha) if alpha is not None else np.ones(o)
        add = _np(conv.bias) * mul if conv.bias is not None else np.zeros(o)
        post_m, post_b = bn_affine(half.post) if half.post is not None else (np.ones(o), None)
        if half.post is not None and not isinstance(half.post, nn.BatchNorm2d):
            raise UserError(
                f"{name}: {type(half.post).__name__} after the conv cannot be "
                "exported (BatchNorm2d or none)"
            )
        if half.gate is None:
            if half.scale is not None:
                s = _np(half.scale).reshape(-1)
                mul, add = mul * s, add * s
            mul, add = mul * post_m, add * post_m + (0.0 if post_b is None else post_b)
            c = self.bconv(y, conv, mul, add, name)
        else:  # (u g) m + b = (u m) g + b: m goes into the multiplier, b after the gate
            c = self.bconv(y, conv, mul * post_m, add * post_m, name)
            self.probe(f"{name}/conv", c)
            c = self.binary("MUL", c, self.gate(y, half.gate, f"{name}/gate"), f"{name}/gated")
            c = self.affine(c, None, post_b, f"{name}/post")
        if half.gate is None:
            self.probe(f"{name}/conv", c)
        s = (
            x
            if half.shortcut is None
            else self.sequence(
                x, _children_in_order(half.shortcut, f"{name}/shortcut"), f"{name}/shortcut"
            )
        )
        if half.act is None:
            return self.binary("ADD", c, s, f"{name}/out")
        if half.act_after_add:
            return self.activation(self.binary("ADD", c, s, f"{name}/sum"), half.act, f"{name}/act")
        return self.binary("ADD", self.activation(c, half.act, f"{name}/act"), s, f"{name}/out")

    def gate(self, y: int, gate: nn.Module, name: str) -> int:
        """Real-to-Binary's gate ``sigmoid(W2 relu(W1 mean_hw(y)))`` as AVERAGE_POOL_2D ->
        FULLY_CONNECTED (fused RELU) -> FULLY_CONNECTED -> LOGISTIC, shape ``(N, C)`` (a
        RESHAPE to ``(N, 1, 1, C)`` when N > 1, for MUL's broadcasting)."""
        if not isinstance(gate, Gate) or gate.fc1.bias is not None or gate.fc2.bias is not None:
            raise UserError(f"{name}: {type(gate).__name__} cannot be exported (r2b's Gate)")
        p = self.global_pool(y, name)
        h = self.fc(p, _np(gate.fc1.weight), None, f"{name}/fc1", relu=True)
        g = self.fc(h, _np(gate.fc2.weight), None, f"{name}/fc2")
        out = self.act(f"{name}/sigmoid", self.g.shape(g))
        self.g.op("LOGISTIC", [g], [out])
        if self.batch > 1:
            n, c = self.g.shape(out)
            r = self.act(f"{name}/reshaped", (n, 1, 1, c))
            shape = self.g.const(f"{name}/shape", np.array([n, 1, 1, c]), np.int32)
            self.g.op("RESHAPE", [out, shape], [r], "ReshapeOptions", new_shape=[n, 1, 1, c])
            out = r
        return out


def _children_in_order(m: nn.Module, name: str) -> list[nn.Module]:
    """The children of a real module that is a pipeline of them (r2b's ``Downsample``: pool ->
    conv -> BN, registered in that order); anything else cannot be expressed."""
    from r2b.models.resnet import Downsample

    if isinstance(m, nn.Sequential):
        return list(m)
    if isinstance(m, Downsample):
        return [m.pool, m.conv, m.bn]
    raise UserError(f"{name}: layer {type(m).__name__} cannot be exported to LCE")


def model_spec(model: nn.Module) -> BinaryNetSpec:
    """The model's description, or a ``UserError`` unless it is a fully binary network."""
    if not callable(getattr(model, "spec", None)):
        name = getattr(model, "arch", {}).get("name", type(model).__name__)
        raise UserError(f"{name} has no binary convolutions; export a binary model (stage 'bnn')")
    spec = model.spec()
    stage = getattr(model, "stage", None)
    if stage not in (None, "bnn") or not all(c.is_binary for c in spec.binary_convs()):
        raise UserError(
            f"only a fully binary model exports to LCE, this one is stage {stage!r} "
            "(real weights or tanh activations); export the 'bnn' stage"
        )
    return spec


def _input_hw(input_size) -> tuple[int, int]:
    try:
        h, w = _pair(input_size)
    except (TypeError, ValueError, IndexError):
        raise UserError(f"input size {input_size!r} is not a size; give N or (H, W)") from None
    if h < 1 or w < 1:
        raise UserError(f"input size {input_size!r} must be positive")
    return h, w


def translate(
    model: nn.Module,
    input_size,
    batch_size: int = 1,
    probes: bool | tuple[str, ...] = False,
    mean=None,
    std=None,
) -> tuple[Graph, _Translator]:
    """The TFLite graph of a fully binary r2b model (see ``r2b.lce.export``)."""
    spec = model_spec(model)
    h, w = _input_hw(input_size)
    if batch_size < 1:
        raise UserError("batch size must be at least 1")
    pool = spec.pool
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or _pair(pool.output_size) != (1, 1):
        raise UserError("the network's pool cannot be exported (AdaptiveAvgPool2d(1) only)")
    c_in = next(m for m in spec.stem.modules() if isinstance(m, nn.Conv2d)).in_channels
    try:
        tr = _build(spec, (batch_size, h, w, c_in), probes, mean, std)
    except SizeError as err:
        detail = f" ({err})" if str(err) else " (a layer gets an empty map)"
        raise UserError(
            f"input size {h}x{w} does not fit this network{detail}; "
            f"{_sizes_that_fit(spec, c_in, h)}"
        ) from None
    return tr.g, tr


def _build(spec: BinaryNetSpec, input_shape, probes=False, mean=None, std=None,
           dry=False) -> _Translator:  # fmt: skip
    """Write the graph; raises ``SizeError`` where a layer does not fit ``input_shape``."""
    tr = _Translator(input_shape[0], probes, dry)
    x = tr.act("input", input_shape)
    tr.g.inputs = [x]
    c_in = input_shape[3]
    if mean is not None or std is not None:
        m = 1.0 / np.asarray(std if std is not None else [1.0] * c_in, np.float64)
        b = -np.asarray(mean if mean is not None else [0.0] * c_in, np.float64) * m
        x = tr.affine(x, m, b, "normalize")
    x = tr.sequence(x, list(spec.stem), "stem")
    for half in spec.halves:
        x = tr.half(x, half)
    x = tr.global_pool(x, "pool")
    fc = spec.fc
    logits = tr.fc(x, _np(fc.weight), _np(fc.bias) if fc.bias is not None else None, "fc")
    tr.g.tensors[logits].name = "logits"
    tr.g.outputs = [logits] + [t for _, t in tr.probes]
    return tr


def _sizes_that_fit(spec: BinaryNetSpec, channels: int, near: int) -> str:
    """Which square input sizes the network takes: the smallest, and the next one above
    ``near`` (every downsampling half block needs an even map: its stride-2 conv and its 2x2
    average-pool shortcut must give the same size)."""

    def fits(n: int) -> bool:
        try:
            _build(spec, (1, n, n, channels), dry=True)
            return True
        except SizeError:
            return False

    smallest = next((n for n in range(1, 1025) if fits(n)), None)
    if smallest is None:
        return "no size up to 1024 fits"
    above = next((n for n in range(max(near, smallest), near + 257) if fits(n)), None)
    text = f"the smallest that fits is {smallest}"
    return text + (f", the next one from {near} up is {above}" if above and near > smallest else "")


def export(
    model: nn.Module,
    path,
    input_size=224,
    *,
    batch_size: int = 1,
    mean=None,
    std=None,
    probes: bool | tuple[str, ...] = False,
) -> dict:
    """Write ``model`` (a fully binary r2b network, stage ``bnn``) as a TFLite flatbuffer with
    LCE's binary ops to ``path``; see ``r2b.lce`` for what it contains. Returns ``{"path",
    "bytes", "ops" (histogram), "input_shape", "output_shape", "padded_bconvs", "probes"}``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the file to write, e.g. {path}/model.tflite")
    if not path.parent.exists():
        raise UserError(f"folder {path.parent} does not exist; create it or choose another path")
    graph, tr = translate(model, input_size, batch_size, probes, mean, std)
    meta = {"r2b_arch": json.dumps(getattr(model, "arch", {}), default=str).encode()}
    from r2b import __version__

    data = serialize(graph, f"r2b {__version__} r2b.lce.export", meta)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    hist: dict[str, int] = {}
    for op in graph.ops:
        hist[op.code] = hist.get(op.code, 0) + 1
    return {
        "path": str(path),
        "bytes": len(data),
        "mib": round(len(data) / 2**20, 3),
        "ops": dict(sorted(hist.items())),
        "input_shape": list(graph.shape(graph.inputs[0])),
        "output_shape": list(graph.shape(graph.outputs[0])),
        "padded_bconvs": tr.padded_bconvs,
        "probes": [n for n, _ in tr.probes],
    }


def bconv_flatbuffer(conv: BinaryConv2d, input_hw, channels_last_batch: int = 1) -> bytes:
    """A TFLite file holding only ``LceQuantize -> [PAD] -> LceBconv2d`` of ``conv`` with
    multiplier 1 and bias 0, so its float output is LCE's integer dot product
    ``conv(pad(sign y, +1), sign W)`` itself (input: float NHWC ``y``)."""
    h, w = _input_hw(input_hw)
    tr = _Translator(channels_last_batch, False)
    y = tr.act("input", (channels_last_batch, h, w, conv.in_channels))
    o = conv.out_channels
    out = tr.bconv(y, conv, np.ones(o), np.zeros(o), "conv")
    tr.g.inputs, tr.g.outputs = [y], [out]
    return serialize(tr.g, "r2b binary conv")
