"""Binary layers: oracles against the float conv (docs/design.md habit 8)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from r2b.layers import (
    BinaryConv2d,
    Gate,
    LearnedScale,
    PReLU,
    prelu,
)
from r2b.quantizers import WeightSignCache


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


# --------------------------------------------------------------------------- fused training path


def _reference_conv(x, weight, iq, wq, scale, pad_value, stride):
    """The binary conv composed from plain autograd ops: explicit padding, STE by hand."""
    q_in = {"ste_sign": lambda t: _ste(t), "approx_sign": lambda t: _approx(t), "tanh": torch.tanh}
    xq = q_in[iq](x) if iq else x
    w = _ste(weight) if wq else weight
    if iq:
        y = F.conv2d(F.pad(xq, (1, 1, 1, 1), value=pad_value), w, None, stride)
    else:
        y = F.conv2d(xq, w, None, stride, 1)
    return y * weight.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1) if scale else y


def _ste(t):
    mask = (t.abs() <= 1).to(t.dtype)
    return (_sign(t) - t * mask).detach() + t * mask


def _approx(t):
    surrogate = torch.where(t.abs() <= 1, 2 * t - t * t.abs(), torch.sign(t))
    return (_sign(t) - surrogate).detach() + surrogate


CASES = [
    # input q, weight q, alpha, pad value, stride, map size
    ("ste_sign", "ste_sign", True, 1.0, 1, 5),
    ("ste_sign", "ste_sign", True, 1.0, 2, 6),
    ("ste_sign", "ste_sign", True, -1.0, 1, 1),
    ("ste_sign", "ste_sign", True, 1.0, 2, 2),
    ("ste_sign", "ste_sign", False, 1.0, 1, 4),
    ("approx_sign", "ste_sign", True, 1.0, 1, 3),
    ("ste_sign", None, False, 1.0, 1, 5),
    ("ste_sign", None, False, 1.0, 2, 1),
    ("tanh", None, False, 1.0, 1, 4),
    ("ste_sign", "ste_sign", True, 0.0, 1, 4),
]


def _check_against_reference(conv, x, reference_args, exact, w_atol):
    """``conv(x)`` equals ``_reference_conv`` (bit for bit if ``exact``), and so do the gradients
    of ``x`` and of the weights; returns ``conv(x)``."""
    x_ref = x.detach().clone().requires_grad_()
    w_ref = conv.weight.detach().clone().requires_grad_()
    y, y_ref = conv(x), _reference_conv(x_ref, w_ref, *reference_args)
    if exact:
        assert torch.equal(y, y_ref)
    else:
        assert torch.allclose(y, y_ref, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert torch.allclose(conv.weight.grad, w_ref.grad, atol=w_atol)
    return y


@pytest.mark.parametrize("iq, wq, scale, pad_value, stride, size", CASES)
def test_fused_conv_matches_the_composed_reference(iq, wq, scale, pad_value, stride, size):
    torch.manual_seed(3)
    conv = BinaryConv2d(
        5, 4, 3, stride, 1, input_quantizer=iq, weight_quantizer=wq, pad_value=pad_value,
        weight_scale=scale,
    )  # fmt: skip
    with torch.no_grad():
        conv.weight.uniform_(-1.3, 1.3)  # some |W| > 1: the STE mask path
    x = (torch.randn(3, 5, size, size) * 1.5).requires_grad_()
    exact = iq != "tanh" and wq  # binary: bit for bit
    _check_against_reference(conv, x, (iq, wq, scale, pad_value, stride), exact, w_atol=1e-5)


def test_fused_conv_skips_the_mask_when_weights_are_clipped():
    torch.manual_seed(4)
    conv = BinaryConv2d(
        3, 2, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale=True
    )
    with torch.no_grad():
        conv.weight.uniform_(-1.0, 1.0)
        conv.weight[0, 0, 0, 0] = 1.0  # on the bound: inside the mask
    x = torch.randn(2, 3, 4, 4)
    w_ref = conv.weight.detach().clone().requires_grad_()
    conv(x).sum().backward()
    _reference_conv(x, w_ref, "ste_sign", "ste_sign", True, 1.0, 1).sum().backward()
    assert torch.allclose(conv.weight.grad, w_ref.grad, atol=1e-5)


def test_prelu_matches_torch():
    torch.manual_seed(6)
    x = torch.randn(2, 3, 4, 4).requires_grad_()
    w = torch.tensor([0.25, -0.5, 1.5]).requires_grad_()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y, y2 = prelu(x, w), torch.prelu(x2, w2)
    assert torch.equal(y, y2)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    assert torch.allclose(x.grad, x2.grad) and torch.allclose(w.grad, w2.grad, atol=1e-5)
    module = PReLU(3)
    assert isinstance(module, nn.PReLU) and torch.equal(module(x), F.prelu(x, module.weight))


@pytest.mark.parametrize("size", [4, 1])  # alpha's gradient on the weight / the output side
def test_fused_conv_with_an_all_zero_output_channel(size):
    # alpha_0 = 0: the output of channel 0 is 0 and its alpha gradient needs the unscaled sum
    torch.manual_seed(7)
    conv = BinaryConv2d(
        3, 2, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale=True
    )
    with torch.no_grad():
        conv.weight.uniform_(-1.0, 1.0)
        conv.weight[0] = 0.0
    x = torch.randn(2, 3, size, size)
    w_ref = conv.weight.detach().clone().requires_grad_()
    y, y_ref = conv(x), _reference_conv(x, w_ref, "ste_sign", "ste_sign", True, 1.0, 1)
    assert torch.equal(y, y_ref) and not y[:, 0].any()
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    # autograd's abs has subgradient 0 at W = 0 where ours uses sign(0) = +1: compare channel 1,
    # and channel 0 against d/dW = STE part + sign(0) * dL/dalpha / n by hand
    assert torch.allclose(conv.weight.grad[1], w_ref.grad[1], atol=1e-5)
    u = F.conv2d(F.pad(_sign(x), (1, 1, 1, 1), value=1.0), _sign(w_ref.detach()))
    grad_alpha0 = (g[:, 0] * u[:, 0]).sum()
    assert torch.allclose(conv.weight.grad[0], w_ref.grad[0] + grad_alpha0 / 27, atol=1e-4)


@pytest.mark.parametrize("iq, wq, scale", [
    ("ste_sign", "ste_sign", True), ("ste_sign", "ste_sign", False), ("ste_sign", None, False),
    (None, None, False),
])  # fmt: skip
@pytest.mark.parametrize("size, stride", [(1, 1), (2, 2)])
def test_one_pixel_outputs_match_the_composed_reference(iq, wq, scale, size, stride):
    """A 1x1 output runs as a GEMM over the taps it reads (clipped weights: no STE mask)."""
    torch.manual_seed(8)
    conv = BinaryConv2d(
        6, 40, 3, stride, 1, input_quantizer=iq, weight_quantizer=wq, weight_scale=scale
    )
    with torch.no_grad():
        conv.weight.uniform_(-1.0, 1.0)
    x = (torch.randn(3, 6, size, size) * 1.5).requires_grad_()
    y = _check_against_reference(conv, x, (iq, wq, scale, 1.0, stride), iq and wq, w_atol=1e-4)
    assert y.shape == (3, 40, 1, 1)


def _bnn_conv(seed: int) -> BinaryConv2d:
    torch.manual_seed(seed)
    return BinaryConv2d(
        4, 6, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign", weight_scale=True
    )


def test_sign_buffer_is_reused_and_follows_every_weight_update():
    conv = _bnn_conv(5)
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    x = torch.randn(2, 4, 6, 6)
    buffers = set()
    for _ in range(3):
        x_step = x.clone().requires_grad_()
        args = ("ste_sign", "ste_sign", True, 1.0, 1)
        _check_against_reference(conv, x_step, args, exact=True, w_atol=1e-5)
        buffers.add(conv._signs.value[0].data_ptr())
        assert torch.equal(conv._signs.value[0], _sign(conv.weight.detach()))
        opt.step()  # large steps: signs flip between iterations
        opt.zero_grad()
        with torch.no_grad():
            conv.weight.clamp_(-1, 1)
    assert len(buffers) == 1


def test_two_forwards_before_one_backward_match_two_fresh_layers():
    conv, twin = _bnn_conv(6), _bnn_conv(6)
    x1, x2 = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    (conv(x1).square().sum() + conv(x2).sum()).backward()
    twin(x1).square().sum().backward()
    twin._signs = WeightSignCache()  # no cache between the twin's two graphs
    twin(x2).sum().backward()
    assert torch.allclose(conv.weight.grad, twin.weight.grad, atol=1e-5)


def test_inference_mode_then_training_step():
    conv = _bnn_conv(7)
    x = torch.randn(2, 4, 5, 5)
    with torch.inference_mode():
        y_inf = conv(x)
    y = conv(x)
    y.sum().backward()
    assert torch.equal(y.detach(), y_inf) and conv.weight.grad is not None
