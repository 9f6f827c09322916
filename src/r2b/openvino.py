"""OpenVINO export: a fully binary r2b network as an OpenVINO IR whose binary convolutions the CPU
plugin runs as ``BinaryConvolution`` (XNOR + popcount kernels).

    export(model, "model.xml", input_size=224)     # writes model.xml + model.bin
    compiled = compile("model.xml", threads=2)     # f32 precision, latency hint
    logits = run(compiled, x)                      # x: float32 NCHW, normalised as in training

The IR is built with OpenVINO's Python API (``openvino.opset13`` ops, ``ov.Model``,
``ov.save_model``) from the model's own description (``model.spec()``, ``r2b.models.spec``); it
never looks at model or attribute names, so every binary family (strong baseline, Real-to-Binary,
Bi-Real Net, ReActNet) and both stems export the same way. Input: ``float32 [batch, 3, S, S]``
(NCHW), normalised exactly as the training data was (``r2b.data.stats``: mean/std of the
dataset); the IR holds no normalisation. Output: ``logits [batch, classes]``. The batch is static
(the CPU plugin's ``BinaryConvolution`` refuses dynamic shapes: "Doesn't support op with dynamic
shapes", bin_conv.cpp, OpenVINO 2026.4); ``compile(..., batch=N)`` reshapes.

How a binary conv becomes a BinaryConvolution
---------------------------------------------
r2b's binary conv (``r2b.layers.BinaryConv2d``) is ``u = conv(pad(s, p), S_W)`` with
``s = sign(y)``, ``sign(0) = sign(-0.0) = +1`` (``r2b.quantizers._sign``), ``S_W = sign(W)``
(the same sign), pad value ``p`` (+1 by default) and no bias; the block then multiplies by
``alpha = mean|W|`` and the rest of the half block (``r2b.models.spec``).

OpenVINO's common transformation ``ConvToBinaryConv`` (run by the CPU plugin; source
``src/common/transformations/.../conv_to_binary_conv.cpp``) replaces a ``Convolution`` whose input
is a ``FakeQuantize`` with ``levels = 2`` and output range ``(0, 1)`` and whose weights are a
constant of +-1 by ``BinaryConvolution(mode="xnor-popcount", pad_value=-1)`` followed by
``(. + sum W) * 0.5``: exact, since a 0/1 input ``b`` zero-padded is ``(t + 1) / 2`` for the
+-1 input ``t = 2b - 1`` padded with -1. A ``FakeQuantize`` with ``levels = 2`` and
``input_low = input_high = 0`` is the step ``[z > 0]`` (OpenVINO's FakeQuantize-1 spec: ``z <=
input_low`` gives ``output_low``, ``z > input_high`` gives ``output_high``).

The IR feeds that FakeQuantize the NEGATED pre-sign value ``z = -y``, so its bit is
``b = [y < 0]`` and ``s = 1 - 2b`` exactly: ``y >= 0`` (0 and -0.0 included) gives ``b = 0``,
``s = +1``, r2b's ``sign(0) = +1``. The convolution zero-pads ``b``, and a padded ``b = 0`` is a
padded ``s = +1``: r2b's pad value. So, everywhere on the padded map, ``pad(s, +1) =
1 - 2 pad(b, 0)``, and, since every output pixel reads all ``k x k`` taps of the padded map,

    u = conv(pad(s, +1), S_W) = sum(S_W_o) - 2 v,        v = conv(pad(b, 0), S_W)  (the IR's conv)

an identity of integers, exact in float32 (|u| <= C k^2 < 2^24). For another pad value ``p``,
``u`` gains ``(p - 1) conv(m, S_W)``, ``m`` the 0/1 map of the padded positions: a constant map
added after the conv (computed here, exact for integer ``p``). The CPU plugin's own -1 padding
(``pad_value=-1`` above) is the -1 of ``t = 2b - 1 = -s``, i.e. r2b's +1. Checked on the CPU
plugin (tests/test_openvino.py): given the IR's own bits, its binary convs equal r2b's ``u``
exactly, and the compiled model has one ``BinaryConvolution`` per binary conv.

The negation costs nothing: a BatchNorm ``y = a x + beta`` becomes ``-y = (-a) x + (-beta)``
(negation is exact and rounding is symmetric, so this is ``-fl(a x + beta)`` bit for bit); a
learned shift ``y = x + c`` becomes ``(-c) - x``; no ``pre`` becomes ``Negative``. The gate reads
``y``: it reads ``-y`` with its first linear layer negated, ``mean(-y) (-W1)^T = mean(y) W1^T``
exactly. ``a`` and ``beta`` are PyTorch's own (CPU kernel, ``aten/src/ATen/native/cpu/
batch_norm_kernel.cpp``): ``a = w * (1 / sqrt(var + eps))`` in float32, ``beta = b - mean * a``
rounded once; with those, ``fma(x, a, beta)`` reproduced PyTorch 2.14.1's eval BatchNorm bit for
bit on this machine, and so did the CPU plugin's ``-y`` from the same input (tested with one half
block): what differs between the two runtimes is upstream of the BatchNorm.

The weights of a binary conv are stored as ``u1`` bits (OpenVINO's packing, most significant bit
first, as ``np.packbits``; 1 = +1) and ``2 Convert(bits) - 1``; the CPU plugin folds that into the
+-1 constant before ``ConvToBinaryConv`` runs, so the ``.bin`` holds one bit per binary weight.

The float layers
----------------
Stem (conv, BatchNorm as Multiply/Add, PReLU, max-pool), the 1x1 downsample shortcuts (AvgPool,
Convolution, BatchNorm), the gate (ReduceMean, MatMul, ReLU, MatMul, Sigmoid, Multiply),
PReLU/RPReLU, the adds, the global average pool (ReduceMean) and the classifier (MatMul + Add) are
ordinary ops in float32; the conv epilogue ``(sum S_W - 2 v) * alpha * scale`` and a BatchNorm
after the conv (Bi-Real Net, ReActNet) are folded into one per-channel ``v * A + B`` (in float64,
rounded once). These float layers round differently from PyTorch's (other summation orders, FMA),
so a pre-sign value within rounding of 0 can take the other sign: the logits agree to ~1e-6
relative and rarely differ more (measured in tests/test_openvino.py).

Precision: on CPUs with bf16 (AVX512_BF16, AMX) the CPU plugin's default inference precision is
bf16 (so on this machine class, a Sapphire Rapids Xeon), which rounds the float layers to 8 bits
of mantissa: measured on width-0.25 random models, max |diff| / max |logit| 7e-2 to 1e-1 and top-1
equal on 95.3% of 256 inputs (strong baseline, CIFAR stem), against 1e-6 to 1e-2 and 100% in f32.
``compile`` asks for f32; with another tool pass it too (``benchmark_app -infer_precision f32``,
``{"INFERENCE_PRECISION_HINT": "f32"}``). The IR cannot carry it: the CPU plugin ignored an
``INFERENCE_PRECISION_HINT`` in the model's ``runtime_options`` rt_info (OpenVINO 2026.4).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r2b.errors import UserError
from r2b.layers import BinaryConv2d, Gate, LearnedScale, LearnedShift, RPReLU

__all__ = [
    "export", "build", "compile", "run", "layer_types", "check_export", "bn_affine",
    "binary_weight",
]  # fmt: skip

#: what ``pip`` installs for this module
INSTALL_HINT = 'pip install -e ".[openvino]"'
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _ov():
    """``(openvino, openvino.opset13)``, or a one-line ``UserError`` naming the extra to install."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError as err:
        raise UserError(
            f"OpenVINO export needs the openvino package ({err}); install it with {INSTALL_HINT}"
        ) from None
    return ov, ops


# --------------------------------------------------------------------------- public API


def export(
    model: nn.Module, path: str | Path, input_size: int | None = None, batch: int = 1
) -> dict:
    """Write ``model`` (a fully binary r2b network) as an OpenVINO IR: ``path`` (``.xml``) and the
    ``.bin`` beside it. Returns ``{"xml", "bin", "bytes", "binary_convs", "input_shape"}``.

    ``input_size``: the square input side (default 224 for the ImageNet stem, 32 for CIFAR);
    ``batch``: the static batch of the IR (``compile(..., batch=N)`` changes it). Both files are
    written beside the target under temporary names and renamed into place.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the file to write, e.g. {path / 'model.xml'}")
    if path.suffix != ".xml":
        raise UserError(f"an OpenVINO model is an .xml file (its weights go beside it as .bin), "
                        f"got {path.name}; use e.g. {path.with_suffix('.xml').name}")  # fmt: skip
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"folder {parent} does not exist; create it or choose another -o")
    bin_path = path.with_suffix(".bin")
    if bin_path.is_dir():
        raise UserError(f"{bin_path} is a folder; the weights file cannot be written there")
    ov, _ = _ov()
    ov_model = build(model, input_size, batch)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp / "model.bin", bin_path)
        os.replace(tmp / "model.xml", path)
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror or err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shape = [int(d) for d in ov_model.input(0).get_shape()]
    return {
        "xml": path,
        "bin": bin_path,
        "bytes": path.stat().st_size + bin_path.stat().st_size,
        "binary_convs": len(_spec(model).halves),
        "input_shape": shape,
    }


def build(
    model: nn.Module, input_size: int | None = None, batch: int = 1, taps: tuple[str, ...] = ()
):
    """The ``openvino.Model`` that ``export`` writes (see the module docstring).

    ``taps`` adds outputs per half block, for checking: ``"neg_y"``: ``<name>.neg_y``, the negated
    pre-sign value the FakeQuantize reads (the CPU plugin materialises it anyway, so the compiled
    model computes the same logits bit for bit, checked in the tests); ``"u"``: ``<name>.u`` =
    ``sum S_W - 2 v``, r2b's integer ``conv(pad(sign y, p), sign W)`` as the IR computes it (this
    one changes how the plugin fuses the conv's epilogue, so the float rounding downstream).
    """
    unknown = set(taps) - {"neg_y", "u"}
    if unknown:
        raise ValueError(f"unknown taps {sorted(unknown)}; choose from 'neg_y', 'u'")
    ov, ops = _ov()
    spec = _spec(model)
    _check_binary(model, spec)
    size = _input_size(model, input_size)
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"batch must be a positive integer, got {batch!r}")
    in_ch = _in_channels(spec)
    g = _Graph(ov, ops)
    param = ops.parameter([batch, in_ch, size, size], np.float32, name=INPUT_NAME)
    param.output(0).get_tensor().set_names({INPUT_NAME})
    where, taps_out = f"the stem ({size}x{size} input)", []
    try:  # OpenVINO infers every shape as the graph grows: a size that does not fit fails here
        with torch.no_grad():
            x = g.module(param.output(0), spec.stem, "stem")
            for half in spec.halves:
                h, w = (int(d) for d in x.get_shape()[2:])
                where = f"{half.name} ({h}x{w} input map)"
                x, extra = g.half(x, half, tuple(taps))
                taps_out += extra
            where = "the pool"
            x = g.module(x, spec.pool, "pool")
            x = ops.reshape(x, ops.constant(np.array([0, -1], np.int64)), special_zero=True)
            x = g.module(x, spec.fc, "fc")
    except RuntimeError:
        raise UserError(
            f"input size {size} does not fit this network: at {where} a map becomes empty or the "
            "conv and shortcut sizes differ; choose e.g. a multiple of 32 (ImageNet stem) or of "
            "8 (CIFAR stem)"
        ) from None
    x.get_node().set_friendly_name(OUTPUT_NAME)
    x.get_tensor().set_names({OUTPUT_NAME})
    outputs = [x] + taps_out
    ov_model = ov.Model(outputs, [param], "r2b")
    arch = getattr(model, "arch", None)
    if arch is not None:
        ov_model.set_rt_info(json.dumps(arch, sort_keys=True), ["r2b", "arch"])
    ov_model.set_rt_info(
        f"float32 NCHW [{batch}, {in_ch}, {size}, {size}], normalised as the training data",
        ["r2b", "input"],
    )
    ov_model.set_rt_info("f32", ["r2b", "inference_precision"])
    return ov_model


def compile(
    model: Any,
    threads: int | None = None,
    batch: int | None = None,
    precision: str = "f32",
    device: str = "CPU",
    config: dict | None = None,
):
    """A compiled OpenVINO model, ready to run.

    ``model``: an IR path (``.xml``), an ``openvino.Model``, or an r2b model (built with
    ``build``). ``threads``: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's, all cores);
    ``batch``: reshape the input to this batch first; ``precision``: the inference precision hint
    (f32 by default; see the module docstring on bf16); latency hint, one stream. ``config`` adds
    or overrides OpenVINO properties.
    """
    ov, _ = _ov()
    core = ov.Core()
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise UserError(f"{model} is not an OpenVINO model file (.xml)")
        model = core.read_model(str(model))
    elif isinstance(model, nn.Module):
        model = build(model)
    if batch is not None:
        shape = list(model.input(0).get_partial_shape().to_shape())
        model.reshape({model.input(0): [int(batch), *shape[1:]]})
    cfg = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    cfg.update(config or {})
    return core.compile_model(model, device, cfg)


def run(compiled, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The logits of a compiled model for ``x`` (float32 NCHW with the compiled batch)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return compiled(np.ascontiguousarray(x, dtype=np.float32))[compiled.output(0)]


def layer_types(compiled) -> Counter:
    """How many layers of each type the plugin runs (``layerType`` of the runtime model)."""
    ops = compiled.get_runtime_model().get_ordered_ops()
    return Counter(op.get_rt_info()["layerType"].astype(str) for op in ops)


def check_export(model: nn.Module, path: str | Path, n_inputs: int = 2, seed: int = 0) -> dict:
    """Compile the IR at ``path`` on the CPU (f32) and compare it with ``model`` in eval mode on
    ``n_inputs`` random N(0, 1) inputs: ``{"binary_convolutions", "binary_convs", "max_rel",
    "top1_equal", "n", "summary"}`` (``max_rel`` = max |diff| / max |logit|). The numbers are
    reported, not judged: a pre-sign value within rounding of 0 can flip (module docstring)."""
    ov, _ = _ov()
    compiled = compile(path)
    n_bin = layer_types(compiled).get("BinaryConvolution", 0)
    expected = len(_spec(model).halves)
    shape = [int(d) for d in compiled.input(0).get_shape()]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_inputs, *shape[1:], generator=gen)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(x).numpy()
    finally:
        model.train(was_training)
    got = []
    for i in range(0, n_inputs, shape[0]):
        chunk = x[i : i + shape[0]].numpy()
        padded = np.zeros(shape, np.float32)
        padded[: len(chunk)] = chunk
        got.append(run(compiled, padded)[: len(chunk)])
    got = np.concatenate(got)
    max_rel = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    top1 = int((got.argmax(1) == ref.argmax(1)).sum())
    version = ov.get_version().split("-")[0]
    summary = (
        f"read back by OpenVINO {version} (CPU, f32): {n_bin} BinaryConvolution layers for "
        f"{expected} binary convs; on {n_inputs} random inputs max |diff| / max |logit| = "
        f"{max_rel:.1e}, top-1 equal on {top1}/{n_inputs}"
    )
    if n_bin != expected:
        summary += "; warning: this OpenVINO runs some binary convs as float convolutions"
    return {"binary_convolutions": n_bin, "binary_convs": expected, "max_rel": max_rel,
            "top1_equal": top1, "n": n_inputs, "summary": summary}  # fmt: skip


# --------------------------------------------------------------------------- checks


def _spec(model: nn.Module):
    from r2b.models import list_models

    spec_fn = getattr(model, "spec", None)
    if not callable(spec_fn):
        name = getattr(model, "arch", {}).get("name", type(model).__name__)
        raise UserError(
            f"{name} has no binary description (model.spec()); export a binary model "
            f"({', '.join(list_models(binary=True))}) in stage 'bnn'"
        )
    return spec_fn()


def _check_binary(model: nn.Module, spec) -> None:
    """Every binary conv must be binary on both sides (stage ``bnn``)."""
    convs = spec.binary_convs()
    if not convs or not all(c.is_binary for c in convs):
        stage = getattr(model, "stage", None)
        raise UserError(
            f"only a fully binary model runs on OpenVINO's BinaryConvolution, this one is stage "
            f"{stage!r} (real weights or tanh activations); export the 'bnn' stage"
        )


def _input_size(model: nn.Module, input_size: int | None) -> int:
    if input_size is None:
        from r2b.models import default_input_size

        return default_input_size(getattr(model, "arch", {}))
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise UserError(f"input size must be a positive integer, got {input_size!r}")
    return input_size


def _in_channels(spec) -> int:
    """Input channels: the stem's first convolution's, else the first binary conv's."""
    for m in spec.stem.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return spec.halves[0].conv.in_channels


# --------------------------------------------------------------------------- graph


def _f32(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    return np.ascontiguousarray(np.asarray(t, dtype=np.float64).astype(np.float32))


def _channels(t) -> np.ndarray:
    """A per-channel vector as a ``(1, C, 1, 1)`` float32 array."""
    return _f32(t).reshape(1, -1, 1, 1)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """``(a, beta)`` (float32, shape ``(C,)``) with ``BN(x) = a x + beta`` in eval mode, as
    PyTorch's CPU kernel computes them: ``a = w * (1 / sqrt(var + eps))`` in float32,
    ``beta = b - mean * a`` rounded once (see the module docstring)."""
    if not bn.track_running_stats or bn.running_var is None:
        raise UserError("a BatchNorm without running statistics cannot be exported")
    var = bn.running_var.detach().float()
    invstd = 1.0 / torch.sqrt(var + bn.eps)
    a = invstd if bn.weight is None else bn.weight.detach().float() * invstd
    b = torch.zeros_like(a) if bn.bias is None else bn.bias.detach().float()
    beta = b.double() - bn.running_mean.detach().double() * a.double()
    return a.numpy().astype(np.float32), beta.float().numpy()


def binary_weight(conv: BinaryConv2d) -> torch.Tensor:
    """``sign(W)`` exactly as the conv multiplies with it (+-1, float32)."""
    w = conv.quantized_weight().detach().float()
    if not bool(((w == 1) | (w == -1)).all()):
        raise UserError(f"binary conv weights are not +-1 (weight quantizer "
                        f"{conv.weight_quantizer!r}); export the 'bnn' stage")  # fmt: skip
    return w


class _Graph:
    """Emits OpenVINO ops for the pieces of a ``BinaryNetSpec``."""

    def __init__(self, ov, ops) -> None:
        self.ov, self.ops = ov, ops

    def const(self, array, dtype=np.float32):
        return self.ops.constant(np.ascontiguousarray(np.asarray(array, dtype=dtype)))

    def affine(self, x, a, b, name: str | None = None):
        """``x * a + b`` per channel (either may be None)."""
        ops = self.ops
        if a is not None:
            x = ops.multiply(x, self.const(a)).output(0)
        if b is not None:
            x = ops.add(x, self.const(b)).output(0)
        if name:
            x.get_node().set_friendly_name(name)
        return x

    # ---------------------------------------------------------------- float modules

    def module(self, x, m: nn.Module, name: str):
        """An ordinary float module applied to ``x``; anything else is a ``UserError``."""
        ops = self.ops
        if isinstance(m, nn.Sequential):
            for i, sub in enumerate(m):
                x = self.module(x, sub, f"{name}.{i}")
            return x
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, BinaryConv2d) and (m.input_quantizer or m.weight_quantizer):
            raise UserError(f"{name}: a binary conv outside a half block cannot be exported")
        if isinstance(m, nn.Conv2d):
            return self.conv(x, m, name)
        if isinstance(m, nn.BatchNorm2d):
            a, beta = bn_affine(m)
            return self.affine(x, a.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1), name)
        if isinstance(m, nn.PReLU):  # r2b.layers.PReLU too: same parameter, same forward
            y = ops.prelu(x, self.const(_f32(m.weight).reshape(-1))).output(0)
            y.get_node().set_friendly_name(name)
            return y
        if isinstance(m, RPReLU):
            x = self.affine(x, None, _channels(m.shift_in))
            x = ops.prelu(x, self.const(_f32(m.weight).reshape(-1))).output(0)
            return self.affine(x, None, _channels(m.shift_out), name)
        if isinstance(m, LearnedShift):
            return self.affine(x, None, _channels(m.shift), name)
        if isinstance(m, LearnedScale):
            return self.affine(x, _channels(m.scale), None, name)
        if isinstance(m, nn.ReLU):
            return ops.relu(x).output(0)
        if isinstance(m, nn.MaxPool2d):
            return self.max_pool(x, m, name)
        if isinstance(m, nn.AvgPool2d):
            return self.avg_pool(x, m, name)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if tuple(_pair(m.output_size)) != (1, 1):
                raise UserError(f"{name}: adaptive average pool to {m.output_size} is not "
                                "supported (only to 1x1)")  # fmt: skip
            return ops.reduce_mean(x, self.const([2, 3], np.int64), keep_dims=True).output(0)
        if isinstance(m, nn.Linear):
            y = ops.matmul(x, self.const(_f32(m.weight)), False, True).output(0)
            if m.bias is not None:
                y = ops.add(y, self.const(_f32(m.bias))).output(0)
            y.get_node().set_friendly_name(name)
            return y
        from r2b.models.resnet import Downsample

        if isinstance(m, Downsample):
            x = self.module(x, m.pool, f"{name}.pool")
            x = self.module(x, m.conv, f"{name}.conv")
            return self.module(x, m.bn, f"{name}.bn")
        raise UserError(f"{name}: cannot express a {type(m).__name__} in the OpenVINO export")

    def conv(self, x, m: nn.Conv2d, name: str):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UserError(f"{name}: only explicit zero padding is supported, got padding "
                            f"{m.padding!r} ({m.padding_mode})")  # fmt: skip
        ops, w = self.ops, _f32(m.weight)
        args = (list(m.stride), list(m.padding), list(m.padding), list(m.dilation))
        if m.groups == 1:
            y = ops.convolution(x, self.const(w), *args).output(0)
        else:
            g = m.groups
            w = w.reshape(g, w.shape[0] // g, *w.shape[1:])
            y = ops.group_convolution(x, self.const(w), *args).output(0)
        y.get_node().set_friendly_name(name)
        if m.bias is not None:
            y = self.affine(y, None, _channels(m.bias))
        return y

    def max_pool(self, x, m: nn.MaxPool2d, name: str):
        if m.ceil_mode or m.return_indices:
            raise UserError(f"{name}: max-pool with ceil_mode or indices is not supported")
        k, s, p, d = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding,
                                          m.dilation))  # fmt: skip
        y = self.ops.max_pool(x, s, d, p, p, k, "floor").output(0)
        y.get_node().set_friendly_name(name)
        return y

    def avg_pool(self, x, m: nn.AvgPool2d, name: str):
        if m.ceil_mode or m.divisor_override is not None:
            raise UserError(f"{name}: average pool with ceil_mode or divisor_override is not "
                            "supported")  # fmt: skip
        k, s, p = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
        y = self.ops.avg_pool(x, s, p, p, k, not m.count_include_pad, "floor").output(0)
        y.get_node().set_friendly_name(name)
        return y

    # ---------------------------------------------------------------- binary half block

    def neg_pre(self, x, pre: nn.Module | None, name: str):
        """``-pre(x)``, computed so that it is the exact negation (see the module docstring)."""
        ops = self.ops
        if pre is None:
            y = ops.negative(x).output(0)
        elif isinstance(pre, nn.BatchNorm2d):
            a, beta = bn_affine(pre)
            y = self.affine(x, -a.reshape(1, -1, 1, 1), -beta.reshape(1, -1, 1, 1))
        elif isinstance(pre, LearnedShift):
            y = ops.subtract(self.const(-_channels(pre.shift)), x).output(0)
        else:
            raise UserError(f"{name}: cannot express a {type(pre).__name__} before the sign")
        y.get_node().set_friendly_name(f"{name}.neg_y")
        return y

    def binary_conv(self, bits, conv: BinaryConv2d, name: str):
        """``v = conv(pad(b, 0), sign W)`` as FakeQuantize-fed Convolution of +-1 weights stored
        as ``u1`` bits; returns ``(v, S_W)``."""
        ov, ops = self.ov, self.ops
        if conv.groups != 1:
            raise UserError(f"{name}: grouped binary convs have no BinaryConvolution form")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UserError(f"{name}: binary conv padding {conv.padding!r} is not supported")
        sw = binary_weight(conv)
        packed = np.packbits((sw.numpy() > 0).astype(np.uint8).ravel())
        tensor = ov.Tensor(ov.Type.u1, ov.Shape(list(sw.shape)))
        tensor.data[:] = packed
        w01 = ops.convert(ov.op.Constant(tensor), ov.Type.f32)
        w = ops.subtract(ops.multiply(w01, self.const(2.0)), self.const(1.0))
        args = (list(conv.stride), list(conv.padding), list(conv.padding), list(conv.dilation))
        v = ops.convolution(bits, w, *args).output(0)
        v.get_node().set_friendly_name(f"{name}.conv")
        return v, sw

    def half(self, x, half, taps: tuple[str, ...]):
        """One ``HalfBlockSpec`` (``r2b.models.spec``) applied to ``x``; returns ``(out, taps)``."""
        ops, name, conv = self.ops, half.name, half.conv
        neg_y = self.neg_pre(x, half.pre, name)
        zero, one = self.const(np.zeros((1, 1, 1, 1))), self.const(np.ones((1, 1, 1, 1)))
        bits = ops.fake_quantize(neg_y, zero, zero, zero, one, 2).output(0)  # [y < 0]
        bits.get_node().set_friendly_name(f"{name}.sign")
        v, sw = self.binary_conv(bits, conv, name)
        # u = base - 2 v; base = sum S_W (+ (p - 1) conv(pad mask, S_W)) (+ bias)
        base = sw.double().sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        p = float(conv.pad_value)
        if p != 1.0 and any(conv.padding):
            in_shape = [int(d) for d in x.get_shape()]
            mask = F.pad(torch.zeros(1, *in_shape[1:], dtype=torch.float64),
                         _torch_pad(conv.padding), value=1.0)  # fmt: skip
            base = base + (p - 1.0) * F.conv2d(mask, sw.double(), stride=conv.stride,
                                               dilation=conv.dilation)  # fmt: skip
        if conv.bias is not None:
            base = base + conv.bias.detach().double().view(1, -1, 1, 1)
        scale = torch.full_like(base[:, :, :1, :1], -2.0)  # multiplies v
        alpha = conv.weight_alpha()
        mult = torch.ones_like(scale)
        if alpha is not None:
            mult = alpha.detach().double().view(1, -1, 1, 1)
        if half.gate is None and half.scale is not None:
            mult = mult * half.scale.detach().double().view(1, -1, 1, 1)
        post = half.post
        if post is not None and not isinstance(post, nn.BatchNorm2d):
            raise UserError(f"{name}: cannot express a {type(post).__name__} after the conv")
        post_ab = None
        if post is not None:
            a2, b2 = (torch.from_numpy(t).double().view(1, -1, 1, 1) for t in bn_affine(post))
            post_ab = (a2, b2)
        if half.gate is None and post_ab is not None:  # fold the post BN too
            a2, b2 = post_ab
            c = self.affine(v, _f32(scale * mult * a2), _f32(base * mult * a2 + b2), name)
        else:
            c = self.affine(v, _f32(scale * mult), _f32(base * mult), name)
            if half.gate is not None:
                c = ops.multiply(c, self.gate(neg_y, half.gate, name)).output(0)
            if post_ab is not None:
                c = self.affine(c, _f32(post_ab[0]), _f32(post_ab[1]), f"{name}.post")
        s = x if half.shortcut is None else self.module(x, half.shortcut, f"{name}.shortcut")
        if half.act is None:
            out = ops.add(c, s).output(0)
        elif half.act_after_add:
            out = self.module(ops.add(c, s).output(0), half.act, f"{name}.act")
        else:
            out = ops.add(self.module(c, half.act, f"{name}.act"), s).output(0)
        out.get_node().set_friendly_name(f"{name}.out")
        extra = []
        for tap in taps:
            tensor = neg_y if tap == "neg_y" else self.affine(v, np.full((1, 1, 1, 1), -2.0),
                                                               _f32(base))  # fmt: skip
            r = ops.result(tensor)
            r.output(0).get_tensor().set_names({f"{name}.{tap}"})
            extra.append(r.output(0))
        return out, extra

    def gate(self, neg_y, gate: nn.Module, name: str):
        """``Gate(y)`` from ``-y``: ReduceMean, MatMul (-W1), ReLU, MatMul (W2), Sigmoid, shape
        ``(N, C_out, 1, 1)`` (``r2b.layers.Gate``)."""
        if not isinstance(gate, Gate):
            raise UserError(f"{name}: cannot express a {type(gate).__name__} gate")
        ops = self.ops
        m = ops.reduce_mean(neg_y, self.const([2, 3], np.int64), keep_dims=False).output(0)
        h = ops.matmul(m, self.const(-_f32(gate.fc1.weight)), False, True).output(0)
        if gate.fc1.bias is not None:
            h = ops.add(h, self.const(_f32(gate.fc1.bias))).output(0)
        h = ops.relu(h).output(0)
        z = ops.matmul(h, self.const(_f32(gate.fc2.weight)), False, True).output(0)
        if gate.fc2.bias is not None:
            z = ops.add(z, self.const(_f32(gate.fc2.bias))).output(0)
        g = ops.sigmoid(z).output(0)
        g = ops.unsqueeze(g, self.const([2, 3], np.int64)).output(0)
        g.get_node().set_friendly_name(f"{name}.gate")
        return g


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _torch_pad(padding) -> tuple[int, int, int, int]:
    ph, pw = _pair(padding)
    return (pw, pw, ph, ph)
