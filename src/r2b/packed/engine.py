"""The whole-network packed engine: ``to_packed(model)`` and ``PackedResNet``.

``to_packed`` turns a fully binary (``stage="bnn"``) network that describes itself through
``model.spec()`` (``r2b.models.spec``: the strong baseline, Real-to-Binary, Bi-Real Net, ReActNet,
either stem, or any network built from the same half blocks) into a ``PackedResNet``: the binary
convolutions hold ``sign(W)`` as bits and run as XOR + popcount kernels; the stem, BatchNorms,
gates, shifts, activations, downsample shortcuts, pool and classifier are copies of the float
model's modules in eval mode. The result equals the eval-mode float model bit for bit (see
``r2b.packed.layers``). The engine reads only the description: no model names, no attribute
names.

``to_packed(model, float_layers="int8", calibration=batches)`` also runs the stem conv, the
downsample 1x1 convs and the classifier in int8 (``r2b.packed.int8``); that engine equals
``r2b.packed.int8.int8_reference(model, batches)``, a fake-quantised eval graph, bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from r2b.errors import UserError
from r2b.models.spec import BinaryNetSpec
from r2b.packed.bitpack import pack_weight
from r2b.packed.int8 import Dequantize, Int8Conv2d, Int8Linear, has_int8_layers, int8_model
from r2b.packed.layers import PackedBinaryConv2d, PackedHalfBlock, PackedStem, packed_classifier
from r2b.packed.threads import ThreadPolicy


@dataclass(frozen=True)
class PackedConv:
    """What a packed binary conv holds (``PackedBinaryConv2d``'s arguments): ``sign(W)`` as
    canonical ``(O, kh, kw, ceil(C / 64))`` uint64 words, the geometry, the ``(O,)`` weight scale
    ``alpha`` (``None`` without one) and the +-1 pad value of its quantised input."""

    bits: np.ndarray
    in_channels: int
    stride: int
    padding: int
    alpha: torch.Tensor | None
    pad_value: float = 1.0

    @property
    def out_channels(self) -> int:
        return int(self.bits.shape[0])

    @property
    def kernel_size(self) -> list[int]:
        return [int(k) for k in self.bits.shape[1:3]]

    def layer(self) -> PackedBinaryConv2d:
        """The packed layer."""
        return PackedBinaryConv2d(self.bits, self.in_channels, self.stride, self.padding,
                                  self.alpha, self.pad_value)  # fmt: skip


@dataclass(frozen=True)
class PackedRecord:
    """What ``r2b.packed.save`` writes: the ``arch`` the float model was built from, its binary
    convs by module name (``(name, PackedConv)``) and every other tensor of its ``state_dict``
    (``num_batches_tracked`` left out)."""

    arch: dict = field(default_factory=dict)
    binary_convs: tuple[tuple[str, PackedConv], ...] = ()
    tensors: dict = field(default_factory=dict)
    #: ``"float"``, or ``"int8"`` when the stem and downsample convs (and the classifier, see
    #: ``int8_classifier``) are int8 layers
    float_layers: str = "float"
    #: with ``"int8"``: whether the classifier is int8 too (files before it: float)
    int8_classifier: bool = False


class PackedResNet(nn.Module):
    """Inference-only binary ResNet-18 on packed bits; ``arch`` rebuilds the float model."""

    def __init__(
        self,
        arch: dict,
        stem: nn.Module,
        halves: list[PackedHalfBlock],
        pool: nn.Module,
        fc: nn.Module,
    ) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.stem, self.pool, self.fc = stem, pool, fc
        self.halves = nn.ModuleList(halves)
        #: what ``r2b.packed.save`` writes (set by ``assemble``)
        self.record = PackedRecord()
        #: the kernels' thread count per pass (``r2b.packed.threads``); ``None``: always
        #: PyTorch's setting
        self.thread_policy: ThreadPolicy | None = ThreadPolicy()
        self.eval()

    def binary_convs(self) -> list[PackedBinaryConv2d]:
        """The packed binary convolutions in order."""
        return [h.conv for h in self.halves]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise UserError("the packed engine runs on the CPU; pass a CPU tensor (x.cpu())")
        with torch.inference_mode():
            x = x.to(torch.float32).contiguous()
            if self.thread_policy is None:
                return self._forward(x)
            top = torch.get_num_threads()
            return self.thread_policy.run(tuple(x.shape), top, lambda: self._forward(x))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        halves = list(self.halves)
        xp, y = halves[0].prepare(x)
        for i, half in enumerate(halves):
            nxt = halves[i + 1] if i + 1 < len(halves) else None
            x, xp, y = half.run(x, xp, y, nxt)
        return self.fc(torch.flatten(self.pool(x), 1))

    def train(self, mode: bool = True) -> PackedResNet:
        if mode:
            raise UserError("a packed model is inference-only; train the float model instead")
        return super().train(False)


def check_packable(model: nn.Module) -> BinaryNetSpec:
    """Raise a ``UserError`` unless ``model`` describes itself as a binary network
    (``spec()``, ``r2b.models.spec``) whose convolutions are all binary (stage ``bnn``)."""
    if not callable(getattr(model, "spec", None)):
        name = getattr(model, "arch", {}).get("name", type(model).__name__)
        raise UserError(
            f"{name} has no binary convolutions to pack; export a binary model "
            "(r2b summary --list names them; stage 'bnn')"
        )
    stage = getattr(model, "stage", None)
    spec = model.spec()
    convs = spec.binary_convs()
    if stage != "bnn" or not all(c.is_binary for c in convs):
        raise UserError(
            f"only a fully binary model packs into bits, this one is stage {stage!r} "
            "(real weights or tanh activations); export the 'bnn' stage"
        )
    return spec


def pack_conv(conv: nn.Module) -> PackedConv:
    """What a packed conv needs from a float ``BinaryConv2d``: bits, alpha and geometry."""
    if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        raise UserError("packed convs support no bias, groups or dilation; export a r2b model")
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        raise UserError("packed convs need equal strides and paddings in both directions")
    alpha = conv.weight_alpha()
    return PackedConv(
        bits=pack_weight(conv.weight),
        in_channels=conv.in_channels,
        stride=conv.stride[0],
        padding=conv.padding[0],
        alpha=None if alpha is None else alpha.detach().float().clone(),
        pad_value=conv.pad_value,
    )


#: ``to_packed``'s ``float_layers`` choices
FLOAT_LAYERS = ("float", "int8")


def to_packed(model: nn.Module, float_layers: str = "float", calibration=None) -> PackedResNet:
    """The packed inference engine of a trained fully binary network (the model is not changed).

    ``float_layers="int8"``: the stem conv, the downsample convs and the classifier in int8,
    scales from ``calibration`` (an iterable of normalised ``(N, 3, H, W)`` image batches, or
    one such tensor; post-training quantisation, ``r2b.packed.int8``). Raises ``UserError`` for
    a model that is not fully binary (stages ``fp`` and ``ban``).
    """
    if float_layers not in FLOAT_LAYERS:
        raise UserError(f"float_layers {float_layers!r}: choose one of {', '.join(FLOAT_LAYERS)}")
    check_packable(model)
    if float_layers == "int8":
        if calibration is None:
            raise UserError("float_layers='int8' needs calibration images (a few hundred "
                            "training images, normalised as for evaluation)")  # fmt: skip
        model = int8_model(model, calibration)
    spec = check_packable(model)
    with torch.no_grad():
        convs = [pack_conv(c) for c in spec.binary_convs()]
    return assemble(model, convs, spec)


def assemble(
    model: nn.Module, convs: list[PackedConv], spec: BinaryNetSpec | None = None
) -> PackedResNet:
    """A ``PackedResNet`` from the description of ``model`` (``spec``, else ``model.spec()``)
    and packed convs (``pack_conv``): every part but the binary convs is a frozen copy of the
    model's module."""
    spec = spec or model.spec()
    if len(spec.halves) != len(convs):
        raise ValueError(f"{len(convs)} packed convs for {len(spec.halves)} half blocks")
    halves = [
        PackedHalfBlock.from_spec(half, conv.layer(), _frozen)
        for half, conv in zip(spec.halves, convs)
    ]
    arch = getattr(model, "arch", {})
    stem = _packed_stem(_frozen(spec.stem))
    packed = PackedResNet(
        arch, stem, halves, _frozen(spec.pool), packed_classifier(_frozen(spec.fc))
    )
    packed.record = _export_record(model, spec.binary_convs(), convs)
    return packed


def _export_record(model: nn.Module, binary_convs: list, convs: list[PackedConv]) -> PackedRecord:
    """The binary convs by module name and every other tensor of the float model's
    ``state_dict`` (``num_batches_tracked`` left out)."""
    names = {id(m): n for n, m in model.named_modules()}
    binary = tuple((names[id(c)], p) for c, p in zip(binary_convs, convs))
    skip = {f"{name}.weight" for name, _ in binary}
    real = {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if k not in skip and not k.endswith("num_batches_tracked")
    }
    kind = "int8" if has_int8_layers(model) else "float"
    int8_classifier = any(isinstance(m, Int8Linear) for m in model.modules())
    return PackedRecord(dict(getattr(model, "arch", {})), binary, real, kind, int8_classifier)


def _packed_stem(stem: nn.Sequential) -> nn.Module:
    """``PackedStem`` for a ``conv, BN[, PReLU][, max-pool]`` stem (or its int8 form, ``Int8Conv2d,
    Dequantize, ...``); other stems stay as they are."""
    layers = list(stem)
    if len(layers) < 2 or not isinstance(layers[0], (nn.Conv2d, Int8Conv2d)):
        return stem
    if not isinstance(layers[1], (nn.BatchNorm2d, Dequantize)):
        return stem
    rest = layers[2:]
    act = rest.pop(0) if rest and isinstance(rest[0], nn.PReLU) else None
    pool = rest.pop(0) if rest and isinstance(rest[0], nn.MaxPool2d) else None
    if rest:
        return stem
    return PackedStem(layers[0], layers[1], act, pool)


def _frozen(m):
    """An eval-mode, gradient-free copy of a module (tensors are detached copies)."""
    if m is None:
        return None
    if isinstance(m, torch.Tensor):
        return m.detach().clone()
    m = copy.deepcopy(m).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
