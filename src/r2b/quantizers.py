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

Speed (the training step of a binary net is mostly these element-wise passes; see
``benchmarks/bench_train_speed.py``): every function here is one or two vectorised ATen kernels
per pass, no boolean intermediates (``torch.where`` and bool->float casts are scalar loops on CPU):

- sign is ``2 (x >= 0) - 1`` computed in one buffer; it equals ``where(x >= 0, 1, -1)`` bit for
  bit (``-0.0`` gives ``+1``);
- the clipped STE mask is ATen's ``hardtanh_backward`` with the bounds moved one ulp outwards:
  it passes the gradient where ``-b < x < b``, ``b = nextafter(1, 2)`` in the dtype of ``x``,
  which for values of that dtype is exactly ``|x| <= 1``;
- ``sign_scaled_weight`` returns ``sign(W)``, ``alpha = mean|W|`` (and the tap sums of the
  border correction) from one autograd node whose backward is two kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Quantizer = Callable[[torch.Tensor], torch.Tensor]

_BOUNDS: dict[torch.dtype, float] = {}


def _sign(x: torch.Tensor) -> torch.Tensor:
    """Binary sign with sign(0) = sign(-0.0) = +1, in the dtype of ``x``.

    ``b = (x >= 0)`` written as 0/1 in ``x``'s dtype, then ``-1 + 2 b b`` in place: one buffer,
    two vectorised kernels (``torch.where`` would be a scalar loop on CPU).
    """
    out = torch.empty_like(x)
    torch.ge(x, 0, out=out)
    return torch.addcmul(out.new_full((), -1.0), out, out, value=2, out=out)


def _ste_bound(dtype: torch.dtype) -> float:
    """``nextafter(1, 2)`` in ``dtype``: the open interval (-b, b) holds exactly [-1, 1]."""
    if dtype not in _BOUNDS:
        one = torch.ones((), dtype=dtype)
        _BOUNDS[dtype] = float(torch.nextafter(one, one + 1))
    return _BOUNDS[dtype]


def ste_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Clipped straight-through gradient: ``grad`` where ``|x| <= 1``, 0 elsewhere (one kernel)."""
    b = _ste_bound(x.dtype)
    return torch.ops.aten.hardtanh_backward(grad, x, -b, b)


def approx_sign_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bi-Real Net's gradient: ``grad * max(0, 2 - 2|x|)``."""
    return grad * (2.0 - 2.0 * x.abs()).clamp_min(0.0)


#: Backward rule of each sign quantizer: (incoming gradient, quantizer input) -> input gradient.
SIGN_GRADIENTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ste_sign": ste_grad,
    "approx_sign": approx_sign_grad,
}


class SteSign(torch.autograd.Function):
    """sign(x) forward; gradient passed unchanged where |x| <= 1, zero elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return ste_grad(grad_output, x)


class ApproxSign(torch.autograd.Function):
    """sign(x) forward; gradient ``(2 - 2|x|)`` where |x| <= 1, zero elsewhere (Bi-Real Net)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return approx_sign_grad(grad_output, x)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Binarise ``x`` to {-1, +1} with the clipped straight-through gradient."""
    return SteSign.apply(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Binarise ``x`` to {-1, +1} with Bi-Real Net's approx-sign gradient."""
    return ApproxSign.apply(x)


# --------------------------------------------------------------------------- fused forms


class SignScaledWeight(torch.autograd.Function):
    """``(s, alpha, taps)``: ``s = sign(W)``, ``alpha_o = mean(|W_o|)`` over all but the first
    dim, and (if asked for, else an empty tensor) ``taps = sum_c s[:, c]`` (keepdim), the per-tap
    channel sums that ``r2b.layers.border_correction`` needs.

    The weight side of a binary conv in one node. With ``n`` weights per output channel and
    incoming gradients ``G_s``, ``g_alpha``, ``G_taps``::

        dL/dW = (G_s + G_taps) * 1[|W| <= 1]  +  s * g_alpha / n

    (STE through the sign, ``G_taps`` broadcast over channels; ``d|W|/dW = sign(W)``, taking the
    forward's ``sign(0) = +1`` as the subgradient at 0, where autograd's ``abs`` uses 0). When
    every ``|W| <= 1`` -- always in the ``bnn`` stage, whose latent weights are clipped -- the mask
    is skipped (checked on CPU with the same read as the zero check below; elsewhere the mask is
    always applied).
    ``alpha`` is the same expression as ``BinaryConv2d.weight_alpha``, so they agree bit for bit.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, tap_sums: bool) -> tuple[torch.Tensor, ...]:
        a = w.abs()
        alpha = a.mean(dim=tuple(range(1, w.dim())))
        smallest, largest = torch.aminmax(a)
        ctx.masked = w.device.type != "cpu" or bool(largest > 1)
        if w.device.type == "cpu" and bool(smallest > 0):
            # no zero weight: copysign(1, w) is sign(w) (it would give -1 for -0.0); one kernel,
            # into the buffer of |w|, which is no longer needed
            s = torch.copysign(a.new_ones(()), w, out=a)
        else:
            s = _sign(w)
        taps = s.sum(dim=1, keepdim=True) if tap_sums else s.new_empty(0)
        ctx.save_for_backward(w, s)
        return s, alpha, taps

    @staticmethod
    def backward(ctx, grad_s, grad_alpha, grad_taps):
        w, s = ctx.saved_tensors
        grad = torch.zeros_like(w) if grad_s is None else grad_s
        if grad_taps is not None and grad_taps.numel():
            grad = grad + grad_taps
        if ctx.masked:
            grad = ste_grad(grad, w)
        if grad_alpha is not None:
            per_weight = (grad_alpha / (w.numel() // w.shape[0])).view(-1, *([1] * (w.dim() - 1)))
            if grad is grad_s:
                grad = torch.addcmul(grad, s, per_weight)
            else:
                grad.addcmul_(s, per_weight)
        return grad, None


def sign_scaled_weight(
    w: torch.Tensor, tap_sums: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ste_sign(W), mean|W| per output channel, channel sums of the signs or empty)`` as one
    autograd node (``SignScaledWeight``)."""
    return SignScaledWeight.apply(w, tap_sums)


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
