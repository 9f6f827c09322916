"""Quantizers: forward and backward values by table (docs/method.md section 1)."""

import pytest
import torch

from r2b.quantizers import approx_sign, get_quantizer, is_binary, ste_sign

X = [-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.5]
SIGN = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
STE_GRAD = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
APPROX_GRAD = [0.0, 0.0, 1.0, 2.0, 1.5, 0.0, 0.0]


@pytest.mark.parametrize(
    "fn, grad", [(ste_sign, STE_GRAD), (approx_sign, APPROX_GRAD)], ids=["ste", "approx"]
)
def test_forward_backward_table(fn, grad):
    x = torch.tensor(X, requires_grad=True)
    y = fn(x)
    assert y.tolist() == SIGN
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == pytest.approx(grad)


def test_backward_scales_incoming_gradient():
    x = torch.tensor([0.5, -0.5], requires_grad=True)
    ste_sign(x).backward(torch.tensor([3.0, -2.0]))
    assert x.grad.tolist() == [3.0, -2.0]


def test_registry():
    assert get_quantizer("ste_sign") is ste_sign
    assert get_quantizer(None) is None and get_quantizer("none") is None
    assert get_quantizer("tanh")(torch.tensor([0.5])).item() == pytest.approx(0.4621, abs=1e-4)
    assert is_binary("approx_sign") and not is_binary("tanh") and not is_binary(None)
    with pytest.raises(ValueError, match="unknown quantizer"):
        get_quantizer("round")


def test_sign_keeps_dtype():
    assert ste_sign(torch.zeros(3, dtype=torch.bfloat16)).dtype == torch.bfloat16


# --------------------------------------------------------------------------- fast kernels


def test_sign_kernel_equals_where_including_negative_zero():
    from r2b.quantizers import _sign

    x = torch.tensor([-3.0, -1e-30, -0.0, 0.0, 1e-30, 2.0] + torch.randn(100).tolist())
    assert torch.equal(_sign(x), torch.where(x >= 0, 1.0, -1.0))
    assert _sign(torch.tensor([-0.0])).item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_ste_mask_is_inclusive_at_one_in_every_dtype(dtype):
    from r2b.quantizers import ste_grad, ste_grad_

    one = torch.ones((), dtype=dtype)
    just_out = torch.nextafter(one, one + 1).item()
    x = torch.tensor([-just_out, -1.0, -0.3, 0.0, 1.0, just_out, 7.0], dtype=dtype)
    g = torch.arange(1, 8, dtype=dtype)
    expected = g * (x.abs() <= 1).to(dtype)
    assert torch.equal(ste_grad(g, x), expected)
    g2 = g.clone()
    assert ste_grad_(g2, x) is g2 and torch.equal(g2, expected)


def test_inplace_approx_gradient_equals_out_of_place():
    from r2b.quantizers import approx_sign_grad, approx_sign_grad_

    x, g = torch.randn(50) * 1.5, torch.randn(50)
    assert torch.equal(approx_sign_grad_(g.clone(), x), approx_sign_grad(g, x))


def test_weight_signs_alpha_and_mask_flag():
    from r2b.quantizers import weight_signs

    torch.manual_seed(0)
    w = torch.rand(4, 3, 3, 3) * 1.8 - 0.9
    s, alpha, masked, nonzero = weight_signs(w, with_alpha=True)
    assert torch.equal(s, torch.where(w >= 0, 1.0, -1.0))
    assert torch.equal(alpha, w.abs().mean(dim=(1, 2, 3)))  # bit for bit: weight_alpha's formula
    assert masked is False and nonzero is True
    w[0, 0, 0, 0], w[1, 0, 0, 0], w[2, 0, 0, 0] = 0.0, -0.0, 1.5  # zeros take the other path
    s, alpha, masked, nonzero = weight_signs(w, with_alpha=False)
    assert torch.equal(s, torch.where(w >= 0, 1.0, -1.0)) and s[1, 0, 0, 0] == 1.0
    assert alpha is None and masked is True and nonzero is False
