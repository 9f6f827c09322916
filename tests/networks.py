"""Test helpers shared by the packed-engine tests and the registry's toy-family test: the float
training graph's binary conv (what a packed conv must equal), which binary networks to check
(every registered family with every registered stem, read from the registry when called, so a
family or stem registered later is in the list) and the two bit-for-bit checks of a packed
network against its float model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r2b.layers import RPReLU
from r2b.models import create_model, list_models, list_stems, stem_design
from r2b.packed import to_packed

#: Widths taken in turn by the stems: 0.25 gives 16-channel words, 0.2 13 channels (a tail).
WIDTHS = (0.25, 0.2)
#: The map entering the last stage is at least this side (a 2x2 map: its corners and its pads).
LAST_STAGE_MULTIPLE = 16


def sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def float_binary_conv(y, w, stride, pad, pad_value):
    """The training graph's binary conv: conv2d(pad(sign(y), pad_value), sign(w))."""
    return F.conv2d(F.pad(sign(y), [pad] * 4, value=pad_value), sign(w), stride=stride)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, PReLU slopes and learned scales (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.randn(c, generator=gen) * 0.5 + 1.0)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
            elif isinstance(m, (nn.PReLU, RPReLU)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) - 0.5)
        for name, p in model.named_parameters():
            if name.endswith("scale.scale"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith(("shift.shift", "shift_in", "shift_out")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def small_input_side(stem: str) -> int:
    """A small input side the ``stem``'s network takes with a 2x2 map in its last stage, at
    least 32 (32 for the CIFAR stem, 64 for ImageNet's)."""
    return max(32, LAST_STAGE_MULTIPLE * stem_design(stem).downsampling)


def binary_networks() -> list[tuple[str, str, int, float]]:
    """``(family, stem, input side, width)`` of every registered binary family with every
    registered stem, as the registry holds them now."""
    return [
        (name, stem, small_input_side(stem), WIDTHS[i % len(WIDTHS)])
        for name in list_models(binary=True)
        for i, stem in enumerate(list_stems())
    ]


def check_binary_convs(name: str, stem: str, size: int, width: float) -> None:
    """Every packed binary conv gives the training graph's integer conv of the same input."""
    model = randomise(create_model(name, num_classes=10, stem=stem, width=width))
    packed = to_packed(model)
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0]))
        for m in model.binary_convs()
    ]
    with torch.no_grad():
        model(torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1)))
    for h in hooks:
        h.remove()
    for conv, pconv in zip(model.binary_convs(), packed.binary_convs()):
        y = inputs[conv]
        q = conv._q_input(y)
        p = conv.padding[0]
        expected = F.conv2d(F.pad(q, [p] * 4, value=conv.pad_value), conv.quantized_weight(),
                            stride=conv.stride)  # fmt: skip
        assert torch.equal(pconv(y), expected.to(torch.int32))
        assert torch.equal(pconv.alpha, conv.weight_alpha())


def check_network_logits(name: str, stem: str, size: int, width: float) -> None:
    """The packed network's logits equal the float eval model's bit for bit (batch 256 and 1)."""
    model = randomise(create_model(name, num_classes=10, stem=stem, width=width), seed=2)
    packed = to_packed(model)
    x = torch.randn(256, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    got = packed(x)
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert torch.equal(got, expected)  # in fact bit for bit
    one = packed(x[:1])  # batch 1 takes other PyTorch algorithms in places
    with torch.no_grad():
        assert torch.equal(one, model(x[:1]))
