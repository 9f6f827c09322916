"""Quantizers: forward and backward values by table (METHOD.md section 1)."""

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
