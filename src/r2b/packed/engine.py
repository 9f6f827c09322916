"""The whole-network packed engine: ``to_packed(model)`` and ``PackedResNet``.

``to_packed`` turns a fully binary (``stage="bnn"``) ``BinaryResNet18`` -- strong baseline or
Real-to-Binary, either stem -- into a ``PackedResNet``: the 16 binary convolutions hold
``sign(W)`` as bits and run as XOR + popcount kernels; the stem, BatchNorms, gates, downsample
shortcuts, pool and classifier are copies of the float model's modules in eval mode. The result
equals the eval-mode float model bit for bit (see ``r2b.packed.layers``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from r2b.errors import UserError
from r2b.packed.bitpack import pack_weight
from r2b.packed.layers import PackedBinaryConv2d, PackedHalfBlock, PackedStem, packed_shortcut


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
        self.record: dict = {}
        self.eval()

    def binary_convs(self) -> list[PackedBinaryConv2d]:
        """The packed binary convolutions in order."""
        return [h.conv for h in self.halves]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise UserError("the packed engine runs on the CPU; pass a CPU tensor (x.cpu())")
        with torch.inference_mode():
            x = self.stem(x.to(torch.float32).contiguous())
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


def check_packable(model: nn.Module) -> None:
    """Raise a ``UserError`` unless ``model`` is a binary ResNet-18 whose convs are all binary."""
    needed = ("stem", "blocks", "pool", "fc")
    if not all(hasattr(model, a) for a in needed) or not hasattr(model, "binary_convs"):
        name = getattr(model, "arch", {}).get("name", type(model).__name__)
        raise UserError(
            f"{name} has no binary convolutions to pack; export a binary model "
            "(sb_resnet18 or r2b_resnet18, stage 'bnn')"
        )
    stage = getattr(model, "stage", None)
    convs = model.binary_convs()
    if stage != "bnn" or not all(c.is_binary for c in convs):
        raise UserError(
            f"only a fully binary model packs into bits, this one is stage {stage!r} "
            "(real weights or tanh activations); export the 'bnn' stage"
        )


def pack_conv(conv: nn.Module) -> dict:
    """What a packed conv needs from a float ``BinaryConv2d``: bits, alpha and geometry."""
    if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        raise UserError("packed convs support no bias, groups or dilation; export a r2b model")
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        raise UserError("packed convs need equal strides and paddings in both directions")
    alpha = conv.weight_alpha()
    return {
        "bits": pack_weight(conv.weight),
        "in_channels": conv.in_channels,
        "stride": conv.stride[0],
        "padding": conv.padding[0],
        "alpha": None if alpha is None else alpha.detach().float().clone(),
        "pad_value": conv.pad_value,
    }


def to_packed(model: nn.Module) -> PackedResNet:
    """The packed inference engine of a trained fully binary ResNet-18 (the model is not changed).

    Raises ``UserError`` for a model that is not fully binary (stages ``fp`` and ``ban``).
    """
    check_packable(model)
    with torch.no_grad():
        convs = [pack_conv(c) for c in model.binary_convs()]
    return assemble(model, convs)


def assemble(model: nn.Module, convs: list[dict]) -> PackedResNet:
    """A ``PackedResNet`` from the float modules of ``model`` and packed convs (``pack_conv``)."""
    halves_f = [h for block in model.blocks for h in (block.half1, block.half2)]
    if len(halves_f) != len(convs):
        raise ValueError(f"{len(convs)} packed convs for {len(halves_f)} half blocks")
    halves = []
    for half, spec in zip(halves_f, convs):
        conv = PackedBinaryConv2d(**spec)
        scaling = half.gate if hasattr(half, "gate") else half.scale.scale
        shortcut = None if isinstance(half.shortcut, nn.Identity) else half.shortcut
        shortcut = packed_shortcut(_frozen(shortcut))
        halves.append(
            PackedHalfBlock(_frozen(half.bn), conv, _frozen(scaling), _frozen(half.act), shortcut)
        )
    arch = getattr(model, "arch", {})
    stem = _packed_stem(_frozen(model.stem))
    packed = PackedResNet(arch, stem, halves, _frozen(model.pool), _frozen(model.fc))
    packed.record = _export_record(model, convs)
    return packed


def _export_record(model: nn.Module, convs: list[dict]) -> dict:
    """What the file format stores: the binary convs (name, geometry, bits, alpha) and every
    other tensor of the float model's ``state_dict`` (``num_batches_tracked`` left out)."""
    names = {id(m): n for n, m in model.named_modules()}
    binary = []
    for conv, spec in zip(model.binary_convs(), convs):
        binary.append({"name": names[id(conv)], "out_channels": int(spec["bits"].shape[0]),
                       "kernel_size": list(spec["bits"].shape[1:3]), **spec})  # fmt: skip
    skip = {f"{b['name']}.weight" for b in binary}
    real = {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if k not in skip and not k.endswith("num_batches_tracked")
    }
    return {"arch": dict(getattr(model, "arch", {})), "binary_convs": binary, "tensors": real}


def _packed_stem(stem: nn.Sequential) -> nn.Module:
    """``PackedStem`` for the model's ``conv, BN, PReLU[, max-pool]``; other stems stay as
    they are."""
    layers = list(stem)
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.PReLU)
    if len(layers) in (3, 4) and all(isinstance(m, k) for m, k in zip(layers, kinds)):
        return PackedStem(*layers[:3], layers[3] if len(layers) == 4 else None)
    return stem


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
