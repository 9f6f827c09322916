"""Binary layers: oracles against the float conv (DESIGN.md habit 8)."""

import torch
import torch.nn.functional as F
from torch import nn

from r2b.layers import BinaryConv2d, Gate, LearnedScale


def _sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def test_without_quantizers_it_is_the_float_conv():
    torch.manual_seed(0)
    ref = nn.Conv2d(5, 7, 3, 2, 1, bias=True)
    conv = BinaryConv2d(5, 7, 3, 2, 1, bias=True)
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 9, 9)
    assert torch.equal(conv(x), ref(x))


def test_binary_conv_equals_float_conv_on_signs_with_plus_one_padding():
    torch.manual_seed(0)
    conv = BinaryConv2d(6, 4, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign")
    x = torch.randn(3, 6, 8, 8)
    expected = F.conv2d(F.pad(_sign(x), (1, 1, 1, 1), value=1.0), _sign(conv.weight))
    assert torch.equal(conv(x), expected)
    # every output is an integer of the parity of the number of taps (6*9 = 54)
    assert torch.all(conv(x) % 2 == 0)


def test_pad_value_is_configurable_and_differs_from_zero_padding():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 5, 5)
    minus = BinaryConv2d(3, 2, 3, 1, 1, input_quantizer="ste_sign", pad_value=-1.0)
    expected = F.conv2d(F.pad(_sign(x), (1, 1, 1, 1), value=-1.0), minus.weight)
    assert torch.allclose(minus(x), expected)
    zero = F.conv2d(_sign(x), minus.weight, padding=1)
    assert not torch.allclose(minus(x), zero)


def test_weight_scale_is_mean_abs_per_output_channel():
    torch.manual_seed(2)
    conv = BinaryConv2d(
        4, 3, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale=True
    )
    x = torch.randn(2, 4, 6, 6)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3))
    expected = F.conv2d(F.pad(_sign(x), (1,) * 4, value=1.0), _sign(conv.weight))
    assert torch.allclose(conv(x), expected * alpha.view(1, -1, 1, 1))
    assert conv.is_binary


def test_gradients_reach_latent_weights_and_inputs():
    conv = BinaryConv2d(3, 2, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign")
    nn.init.uniform_(conv.weight, -0.5, 0.5)
    x = (torch.rand(1, 3, 5, 5) - 0.5).requires_grad_()
    conv(x).sum().backward()
    assert conv.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_learned_scale_and_gate():
    s = LearnedScale(3)
    with torch.no_grad():
        s.scale.copy_(torch.tensor([1.0, 2.0, -1.0]))
    x = torch.ones(1, 3, 2, 2)
    assert s(x)[0, :, 0, 0].tolist() == [1.0, 2.0, -1.0]
    gate = Gate(16, 8, reduction=8)
    assert gate.fc1.out_features == 2 and gate.fc1.bias is None
    y = torch.randn(4, 16, 5, 5)
    g = gate(y)
    assert g.shape == (4, 8, 1, 1) and torch.all((g > 0) & (g < 1))
    direct = torch.sigmoid(gate.fc2.weight @ torch.relu(gate.fc1.weight @ y.mean((2, 3)).T)).T
    assert torch.allclose(g[:, :, 0, 0], direct, atol=1e-6)
