"""Binary layers: the binary convolution, the learned output scale and the data-driven gate.

A binary layer is the float layer plus quantizer arguments; with no quantizers it *is* the float
layer (DESIGN.md habit 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r2b.quantizers import get_quantizer, is_binary, sign_scaled_weight


class BinaryConv2d(nn.Conv2d):
    """Conv2d over quantized inputs and weights (METHOD.md sections 1-2).

    ``y = conv(pad(q_a(x), value=pad_value), q_w(W)) * alpha``

    - ``input_quantizer`` ``q_a`` (e.g. ``"ste_sign"``, ``"tanh"``) and ``weight_quantizer`` ``q_w``
      are quantizer names (``r2b.quantizers``); ``None`` leaves that side real.
    - Padding: when the input is quantized, the quantized input is padded with the constant
      ``pad_value`` (default ``+1``) instead of zero, so every tap of a binary conv sees a binary
      value and the bitpacked engine reproduces it exactly (zero is not a binary value).
      Without an input quantizer the conv pads with zeros, exactly as ``nn.Conv2d``.
    - ``weight_scale``: with a weight quantizer, multiply output channel ``o`` by
      ``alpha_o = mean(|W_o|)``, XNOR-Net's analytic scale (Rastegari et al. 2016; the alpha of
      the paper's Eq. 3). It keeps the layer's output at the scale of the real-weight conv when
      latent weights become binary (METHOD.md section 5).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        input_quantizer: str | None = None,
        weight_quantizer: str | None = None,
        pad_value: float = 1.0,
        weight_scale: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.input_quantizer = input_quantizer
        self.weight_quantizer = weight_quantizer
        self.pad_value = float(pad_value)
        self.weight_scale = bool(weight_scale and weight_quantizer is not None)
        self._q_input = get_quantizer(input_quantizer)
        self._q_weight = get_quantizer(weight_quantizer)

    @property
    def is_binary(self) -> bool:
        """True when both inputs and weights are exactly {-1, +1} (an XNOR/popcount conv)."""
        return is_binary(self.input_quantizer) and is_binary(self.weight_quantizer)

    def quantized_weight(self) -> torch.Tensor:
        """``q_w(W)``: the weights the convolution multiplies with."""
        return self.weight if self._q_weight is None else self._q_weight(self.weight)

    def weight_alpha(self) -> torch.Tensor | None:
        """Per-output-channel ``mean|W|``, shape ``(O,)``, if ``weight_scale`` is on; else None."""
        if not self.weight_scale:
            return None
        return self.weight.abs().mean(dim=(1, 2, 3))

    def forward_unscaled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(conv(pad(q_a(x), pad_value), q_w(W)), alpha)``: the output before ``alpha``.

        ``forward`` multiplies the two; ``HalfBlock`` hands them to ``scale_channels`` instead,
        which applies ``alpha`` and the gate (or learned scale) in one node.
        """
        border = self._q_input is not None and self.pad_value != 0.0 and any(self.padding)
        if self.weight_scale and self.weight_quantizer == "ste_sign":
            w, alpha, taps = sign_scaled_weight(self.weight, tap_sums=border)
        else:
            w, alpha = self.quantized_weight(), self.weight_alpha()
            taps = w.sum(dim=1, keepdim=True) if border else None
        if self._q_input is not None:
            x = self._q_input(x)
        y = F.conv2d(x, w, self.bias, self.stride, self.padding)
        if border:  # the conv padded q(x) with zeros; add what pad_value brings (exact for signs)
            y = y.add_(
                border_correction(taps, x.shape[-2:], self.stride, self.padding, self.pad_value)
            )
        return y, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, alpha = self.forward_unscaled(x)
        return y if alpha is None else y * alpha.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, input_quantizer={self.input_quantizer}, "
            f"weight_quantizer={self.weight_quantizer}, pad_value={self.pad_value}, "
            f"weight_scale={self.weight_scale}"
        )


def border_correction(
    taps: torch.Tensor,
    in_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    value: float,
) -> torch.Tensor:
    """What padding with ``value`` instead of zero adds to a convolution, shape ``(1, O, Ho, Wo)``.

    ``conv(pad(x, value), W) = conv(pad(x, 0), W) + B`` with ``B = conv(border, taps)``, where
    ``taps = sum_c W[:, c]`` (shape ``(O, 1, kh, kw)``) and ``border`` is one one-channel image of
    the padded size holding ``value`` on the padding and ``0`` inside: the taps that fall on the
    border see ``value`` whatever ``x`` is, so ``B`` depends only on the weights and the geometry.

    Why not pad explicitly: convolution kernels (oneDNN) skip implicit zero padding -- a 3x3 conv
    of a 1x1 map touches only the centre tap -- but compute every tap of an explicitly padded
    input, which made binary convs 1.5-3x slower than float ones on 4x4 to 1x1 maps. With sign
    weights and inputs both terms are exact integers, so the sum equals the explicitly padded
    convolution bit for bit; with real weights it equals it up to float rounding.
    """
    (h, wd), (ph, pw) = in_size, padding
    border = taps.new_full((1, 1, h + 2 * ph, wd + 2 * pw), value)
    border[:, :, ph : ph + h, pw : pw + wd] = 0.0
    return F.conv2d(border, taps, None, stride)


class ChannelScales(torch.autograd.Function):
    """``(c * alpha) * g``: a conv output times its weight scale, then its gate or learned scale.

    ``c``: ``(N, C, H, W)``; ``alpha``: ``(C,)``; ``g``: ``(N, C, 1, 1)`` or ``(1, C, 1, 1)``.
    The forward keeps this rounding order (the packed engine reproduces it) in one output buffer.
    Backward, with ``P_nc = sum_hw dL/dout * c``::

        dL/dc = dL/dout * (alpha g),   dL/dg = alpha P,   dL/dalpha = sum_n g P

    (summed over ``n`` where ``g`` has batch size 1): two activation-sized passes instead of the
    four of two chained autograd multiplications.
    """

    @staticmethod
    def forward(ctx, c: torch.Tensor, alpha: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a = alpha.view(1, -1, 1, 1)
        ctx.save_for_backward(c, a, g)
        return torch.mul(c, a).mul_(g)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        c, a, g = ctx.saved_tensors
        need_c, need_alpha, need_g = ctx.needs_input_grad
        grad_c = grad_alpha = grad_g = None
        if need_c:
            grad_c = grad_out * (a * g)
        if need_alpha or need_g:
            p = (grad_out * c).sum(dim=(2, 3), keepdim=True)
            if need_g:
                grad_g = (p * a).sum(dim=0, keepdim=True) if g.shape[0] == 1 else p * a
            if need_alpha:
                grad_alpha = (p * g).sum(dim=(0, 2, 3))
        return grad_c, grad_alpha, grad_g


def scale_channels(c: torch.Tensor, alpha: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
    """``(c * alpha) * g`` per channel (``ChannelScales``); ``c * g`` when ``alpha`` is None."""
    return c * g if alpha is None else ChannelScales.apply(c, alpha, g)


class ChannelPReLU(torch.autograd.Function):
    """``PReLU`` with one slope per channel (dim 1), same forward as ``torch.prelu``.

    Backward in vectorised kernels (ATen's fused PReLU backward is a scalar loop on CPU, the
    costliest op of a small binary ResNet's training step): with ``m = dL/dy * 1[x > 0]``::

        dL/dx = lerp(dL/dy, m, 1 - a) = a dL/dy + (1 - a) m,    dL/da_c = sum dL/dy * min(x, 0)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if d != 1]
            grad_w = torch.clamp_max(x, 0).mul_(grad_out).sum(dim=dims)
        if ctx.needs_input_grad[0]:
            shape = [1, -1] + [1] * (x.dim() - 2)
            m = torch.ops.aten.threshold_backward(grad_out, x, 0)
            grad_x = torch.lerp(grad_out, m, (1 - weight).view(shape), out=m)
        return grad_x, grad_w


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``torch.prelu(x, weight)`` for a per-channel ``weight`` of shape ``(C,)``, with the faster
    backward of ``ChannelPReLU``; a single shared slope goes to ``torch.prelu`` itself."""
    if weight.numel() == 1 or x.dim() < 2:
        return torch.prelu(x, weight)
    return ChannelPReLU.apply(x, weight)


class LearnedScale(nn.Module):
    """Learned per-output-channel scale of the strong baseline: ``y_c = s_c * x_c``.

    XNOR-Net++ style (Bulat & Tzimiropoulos 2019) as the paper's strong baseline uses it
    (METHOD.md section 2, step 4 [choice: per channel]). Initialised to 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def factor(self) -> torch.Tensor:
        """The scale as a ``(1, C, 1, 1)`` tensor."""
        return self.scale.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor()


class Gate(nn.Module):
    """Data-driven channel re-scaling of Real-to-Binary (paper Sec. 4.2; METHOD.md section 3).

    ``G(y) = sigmoid(W2 relu(W1 avgpool(y)))`` with ``W1: C_in -> C_in/r``, ``W2: C_in/r -> C_out``,
    no biases, ``r = 8``. ``y`` is the real-valued BatchNorm output of the half block (the tensor
    right before sign); the result, shape ``(N, C_out, 1, 1)``, multiplies the binary conv output.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, in_channels // reduction)
        self.fc1 = nn.Linear(in_channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, out_channels, bias=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean(dim=(2, 3))))))
        return g[:, :, None, None]
