"""Quantizers: sign with straight-through gradients, as small autograd functions with names.

Forward of every sign quantizer (METHOD.md section 1)::

    q(x) = +1 if x >= 0 else -1          (sign(0) = +1, so the output is always binary)

Backward variants:

- ``ste_sign`` -- clipped straight-through estimator (Hubara et al. 2016; larq's ``ste_sign``):
  ``dq/dx = 1`` where ``|x| <= 1``, else 0.
- ``approx_sign`` -- Bi-Real Net's piecewise-polynomial approximation (Liu et al. 2018, Eq. 4):
  ``dq/dx = 2 - 2|x|`` where ``|x| <= 1``, else 0.

``tanh`` is the real-valued stand-in of the ``fp`` training step (METHOD.md section 2).
Quantizers are looked up by name (``get_quantizer``) so configs and the packed engine can name them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Quantizer = Callable[[torch.Tensor], torch.Tensor]


def _sign(x: torch.Tensor) -> torch.Tensor:
    """Binary sign with sign(0) = +1, in the dtype of ``x``."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class SteSign(torch.autograd.Function):
    """sign(x) forward; gradient passed unchanged where |x| <= 1, zero elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


class ApproxSign(torch.autograd.Function):
    """sign(x) forward; gradient ``(2 - 2|x|)`` where |x| <= 1, zero elsewhere (Bi-Real Net)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (2.0 - 2.0 * x.abs()).clamp_min(0.0)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Binarise ``x`` to {-1, +1} with the clipped straight-through gradient."""
    return SteSign.apply(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Binarise ``x`` to {-1, +1} with Bi-Real Net's approx-sign gradient."""
    return ApproxSign.apply(x)


QUANTIZERS: dict[str, Quantizer] = {
    "ste_sign": ste_sign,
    "approx_sign": approx_sign,
    "tanh": torch.tanh,
}

#: Quantizers whose output is exactly {-1, +1}: a conv over them can run on packed bits.
BINARY_QUANTIZERS = frozenset({"ste_sign", "approx_sign"})


def get_quantizer(name: str | None) -> Quantizer | None:
    """The quantizer registered as ``name``; ``None`` or ``"none"`` means no quantizer."""
    if name is None or name == "none":
        return None
    try:
        return QUANTIZERS[name]
    except KeyError:
        known = ", ".join(sorted(QUANTIZERS))
        raise ValueError(f"unknown quantizer {name!r}; known: {known}, none") from None


def is_binary(name: str | None) -> bool:
    """Whether the quantizer called ``name`` outputs exactly {-1, +1}."""
    return name in BINARY_QUANTIZERS
