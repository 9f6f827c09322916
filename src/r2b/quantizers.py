"""Quantizers: sign with straight-through gradients, as small autograd functions with names.

Forward of every sign quantizer (docs/method.md section 1)::

    q(x) = +1 if x >= 0 else -1          (sign(0) = +1, so the output is always binary)

Backward variants:

- ``ste_sign`` -- clipped straight-through estimator (Hubara et al. 2016; larq's ``ste_sign``):
  ``dq/dx = 1`` where ``|x| <= 1``, else 0.
- ``approx_sign`` -- Bi-Real Net's piecewise-polynomial approximation (Liu et al. 2018, Eq. 4):
  ``dq/dx = 2 - 2|x|`` where ``|x| <= 1``, else 0.

``tanh`` is the real-valued stand-in of the ``fp`` training step (docs/method.md section 2).
Quantizers are looked up by name (``get_quantizer``) so configs and the packed engine can name them.

Speed (the training step of a binary net is mostly these element-wise passes; see
``benchmarks/bench_train_speed.py``): every function here is one or two vectorised ATen kernels
per pass, no boolean intermediates (``torch.where`` and bool->float casts are scalar loops on CPU):

- sign is ``2 (x >= 0) - 1`` computed in one buffer; it equals ``where(x >= 0, 1, -1)`` bit for
  bit (``-0.0`` gives ``+1``);
- the clipped STE mask is ATen's ``hardtanh_backward`` with the bounds moved one ulp outwards:
  it passes the gradient where ``-b < x < b``, ``b = nextafter(1, 2)`` in the dtype of ``x``,
  which for values of that dtype is exactly ``|x| <= 1``;
- ``weight_signs`` gives ``sign(W)`` and ``alpha = mean|W|`` in three reads of ``W``; the
  binary convolution (``r2b.layers.BinaryConvFunction``) owns their backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Quantizer = Callable[[torch.Tensor], torch.Tensor]

_BOUNDS: dict[torch.dtype, float] = {}


def _sign(x: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    """Binary sign with sign(0) = sign(-0.0) = +1, in the dtype of ``x``, minus ``shift``.

    ``b = (x >= 0)`` written as 0/1 in ``x``'s dtype, then ``2 b b - 1 - shift`` in place: one
    buffer, two vectorised kernels (``torch.where`` would be a scalar loop on CPU). Exact: the
    values are small integers (or ``+-1 - shift``) whatever ``shift`` is.
    """
    out = torch.empty_like(x)
    torch.ge(x, 0, out=out)
    return torch.addcmul(out.new_full((), -1.0 - shift), out, out, value=2, out=out)


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


def ste_grad_(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``ste_grad`` written into ``grad`` (which the caller owns)."""
    b = _ste_bound(x.dtype)
    return torch.ops.aten.hardtanh_backward.grad_input(grad, x, -b, b, grad_input=grad)


def approx_sign_grad_(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``approx_sign_grad`` written into ``grad`` (which the caller owns)."""
    return grad.mul_((2.0 - 2.0 * x.abs()).clamp_min_(0.0))


#: In-place forms of ``SIGN_GRADIENTS``, for backward passes that own the gradient buffer.
SIGN_GRADIENTS_INPLACE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ste_sign": ste_grad_,
    "approx_sign": approx_sign_grad_,
}


class WeightSignCache:
    """Keeps one layer's ``weight_signs`` result and its buffer between training steps.

    Writing ``sign(W)`` into a fresh weight-sized tensor every step costs more than the sign
    itself on CPU: the allocator hands large blocks back to the OS and each new one page-faults
    (11.2 M weights of a ResNet-18 took ~12 ms a step on a 2-vCPU EPYC, most of the gap between a
    bnn and a float training step). The cache refills the same buffer in place when ``W``
    changed (its version counter moves with every optimiser step, clip or load), and returns the
    stored result unchanged while ``W`` is the same (several forwards before one backward). A graph
    that still holds the old signs after ``W`` changed fails loudly at backward, as it would for
    ``W`` itself. Not used in inference mode, whose tensors cannot be saved for backward.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: tuple | None = None

    def get(self, w: torch.Tensor, with_alpha: bool) -> tuple:
        if torch.is_inference_mode_enabled():
            return weight_signs(w, with_alpha)
        key = (w.data_ptr(), w._version, w.shape, w.dtype, w.device, with_alpha)
        if key == self.key:
            return self.value
        old = self.value[0] if self.value is not None else None
        if old is not None and (old.shape, old.dtype, old.device) != key[2:5]:
            old = None  # the layer's weight changed shape, dtype or device: a new buffer
        self.value = weight_signs(w, with_alpha, out=old)
        self.key = key
        return self.value


def weight_signs(
    w: torch.Tensor, with_alpha: bool, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, bool, bool]:
    """``(sign(W), alpha, masked, nonzero)`` for the weight side of a binary conv (no autograd).

    ``alpha_o = mean(|W_o|)`` over all but the first dim (None unless ``with_alpha``): the same
    expression as ``BinaryConv2d.weight_alpha``, so the two agree bit for bit. ``masked`` says
    whether the clipped STE mask ``1[|W| <= 1]`` can differ from all ones: False when every
    ``|W| <= 1`` -- always in the ``bnn`` stage, whose latent weights are clipped. ``nonzero``:
    no weight is zero (so no ``alpha_o`` is 0 either). Both come from one read of ``|W|`` on CPU;
    elsewhere they are the safe answers (True, False) without a device sync. Without a zero,
    ``copysign(1, W)`` is ``sign(W)`` (it would give -1 for ``-0.0``) and is written into the
    buffer of ``|W|`` (``out`` when given, else a new one).
    """
    a = w.abs() if out is None else torch.abs(w, out=out)
    alpha = a.mean(dim=tuple(range(1, w.dim()))) if with_alpha else None
    if w.device.type != "cpu":
        return _sign(w), alpha, True, False
    smallest, largest = (v.item() for v in torch.aminmax(a))
    nonzero = smallest > 0
    s = torch.copysign(a.new_ones(()), w, out=a) if nonzero else _sign(w)
    return s, alpha, largest > 1, nonzero


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
