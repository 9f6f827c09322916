"""Binary layers: the binary convolution, the learned output scale and the data-driven gate.

A binary layer is the float layer plus quantizer arguments; with no quantizers it *is* the float
layer (docs/design.md habit 2) -- except that a conv with a 1x1 output and no bias runs as one
GEMM over the taps it reads (``_conv``), equal to ``nn.Conv2d`` up to float rounding, and so does
the same net's float baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r2b.quantizers import (
    SIGN_GRADIENTS,
    SIGN_GRADIENTS_INPLACE,
    WeightSignCache,
    _sign,
    get_quantizer,
    is_binary,
    ste_grad_,
    weight_signs,
)


class BinaryConv2d(nn.Conv2d):
    """Conv2d over quantized inputs and weights (docs/method.md sections 1-2).

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
      latent weights become binary (docs/method.md section 5).
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
        self._signs = WeightSignCache()

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._q_input is None and self._q_weight is None:
            if self.bias is None and x.dim() == 4 and _one_pixel(x, self.weight, self.stride,
                                                               self.padding):  # fmt: skip
                return BinaryConvFunction.apply(
                    x, self.weight, self.stride, self.padding, 0.0, None, "real"
                )
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        border = self.pad_value if self._q_input is not None and any(self.padding) else 0.0
        if self.bias is None and self.weight_quantizer in (None, "ste_sign"):
            # sign inputs, sign or real weights, no bias: one node (BinaryConvFunction)
            rule = self.input_quantizer if self.input_quantizer in SIGN_GRADIENTS else None
            if rule is None and self._q_input is not None:
                x = self._q_input(x)
            mode = ("sign_alpha" if self.weight_scale else "sign") if self._q_weight else "real"
            return BinaryConvFunction.apply(
                x, self.weight, self.stride, self.padding, border, rule, mode, self._signs
            )
        # any other quantizer: composed from autograd functions, the same numbers
        w, alpha = self.quantized_weight(), self.weight_alpha()
        if self._q_input is not None:
            x = self._q_input(x)
        if border:  # see BinaryConvFunction: shift so that the padding becomes zero
            x = x - border
            bias = border * w.sum(dim=(1, 2, 3))
            bias = bias if self.bias is None else bias + self.bias
        else:
            bias = self.bias
        y = F.conv2d(x, w, bias, self.stride, self.padding)
        return y if alpha is None else y * alpha.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, input_quantizer={self.input_quantizer}, "
            f"weight_quantizer={self.weight_quantizer}, pad_value={self.pad_value}, "
            f"weight_scale={self.weight_scale}"
        )


def _one_pixel(x: torch.Tensor, w: torch.Tensor, stride, padding) -> tuple[int, int] | None:
    """``(a, b)`` when a convolution of ``x`` has a 1x1 output: it reads input rows ``[0, a)`` and
    columns ``[0, b)`` with kernel rows ``[ph, ph + a)`` and columns ``[pw, pw + b)``; else None.
    """
    (h, wd), (kh, kw) = x.shape[-2:], w.shape[-2:]
    (sh, sw), (ph, pw) = stride, padding
    if (h + 2 * ph - kh) // sh != 0 or (wd + 2 * pw - kw) // sw != 0:
        return None
    return min(kh - ph, h), min(kw - pw, wd)


def _conv(xq, wq, bias, stride, padding, one_pixel):
    """``conv2d`` (zero padding); with a 1x1 output, one GEMM over the taps it reads.

    oneDNN computes a 3x3 convolution of a 1x1 map (ResNet-18's last stage at 32x32 input) for all
    9 taps in its backward pass -- 8 of them on padding -- and was 4-8x slower than the GEMM of the
    centre tap; with sign inputs and weights both are exact integer sums.
    """
    if one_pixel is None:
        return F.conv2d(xq, wq, bias, stride, padding)
    (a, b), (ph, pw) = one_pixel, padding
    x2 = xq[:, :, :a, :b].reshape(xq.shape[0], -1)
    w2 = wq[:, :, ph : ph + a, pw : pw + b].reshape(wq.shape[0], -1)
    y = x2 @ w2.t() if bias is None else torch.addmm(bias, x2, w2.t())
    return y.view(*y.shape, 1, 1)


def _conv_backward(grad_y, xq, wq, with_bias, stride, padding, one_pixel, mask):
    """``(dL/dxq, dL/dwq, dL/dbias)`` of ``_conv`` (None where ``mask`` says not needed)."""
    if one_pixel is None:
        return torch.ops.aten.convolution_backward(
            grad_y, xq, wq, [wq.shape[0]] if with_bias else None, stride, padding, (1, 1),
            False, (0, 0), 1, mask,
        )  # fmt: skip
    (a, b), (ph, pw) = one_pixel, padding
    g = grad_y.reshape(grad_y.shape[0], -1)
    grad_x = grad_w = grad_bias = None
    if mask[0]:
        w2 = wq[:, :, ph : ph + a, pw : pw + b].reshape(wq.shape[0], -1)
        gx = (g @ w2).view(xq.shape[0], xq.shape[1], a, b)
        if (a, b) == tuple(xq.shape[-2:]):
            grad_x = gx
        else:
            grad_x = xq.new_zeros(xq.shape)
            grad_x[:, :, :a, :b] = gx
    if mask[1]:
        x2 = xq[:, :, :a, :b].reshape(xq.shape[0], -1)
        grad_w = wq.new_zeros(wq.shape)
        grad_w[:, :, ph : ph + a, pw : pw + b] = (g.t() @ x2).view(wq.shape[0], -1, a, b)
    if mask[2]:
        grad_bias = g.sum(dim=0)
    return grad_x, grad_w, grad_bias


def _one_pixel_weight_grad(grad_y, xq, wq, padding, one_pixel, shift, per_weight, dtype):
    """``dL/dW = shift_o + s * per_weight_o`` everywhere (either may be None), plus ``G^T x`` on
    the taps a 1x1-output convolution reads: one weight-sized pass instead of three."""
    (a, b), (ph, pw) = one_pixel, padding
    rows = (-1, 1, 1, 1)
    if per_weight is not None:
        base = torch.zeros((), dtype=dtype) if shift is None else shift.to(dtype).view(rows)
        grad_w = torch.addcmul(base, wq.to(dtype), per_weight.to(dtype).view(rows))
    elif shift is not None:
        grad_w = shift.to(dtype).view(rows).expand(wq.shape).clone()
    else:
        grad_w = torch.zeros(wq.shape, dtype=dtype, device=wq.device)
    g = grad_y.reshape(grad_y.shape[0], -1)
    x2 = xq[:, :, :a, :b].reshape(xq.shape[0], -1)
    grad_w[:, :, ph : ph + a, pw : pw + b] += (g.t() @ x2).view(wq.shape[0], -1, a, b).to(dtype)
    return grad_w


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of ``x`` runs in: autocast's (e.g. bfloat16) where autocast is on
    for ``x``'s device, else ``x``'s own. Custom autograd functions cast to it explicitly, since
    their backward runs outside autocast."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class BinaryConvFunction(torch.autograd.Function):
    """One autograd node for a binary convolution:
    ``y = conv(pad(q_a(x), v), q_w(W)) * alpha`` (no bias).

    Arguments after ``x, W``: ``stride``, ``padding``, ``v`` (the pad value of the quantized
    input; 0 pads with zeros), ``rule`` (``"ste_sign"``/``"approx_sign"``: sign ``x`` here with
    that gradient; None: ``x`` is used as given) and ``mode``: ``"real"`` weights, ``"sign"``, or
    ``"sign_alpha"``, which multiplies output channel ``o`` by ``alpha_o = mean|W_o|``; ``signs``
    (optional) is the layer's ``WeightSignCache``, which keeps ``sign(W)`` in one buffer.

    Padding by a shift: ``conv(pad(q, v), W) = conv(pad(q - v, 0), W) + v sum(W_o)``, since
    every output pixel sees all taps, and ``q - v`` is 0 exactly where the padding is. So the
    convolution pads with zeros, which convolution kernels (oneDNN) skip -- a 3x3 conv of a 1x1
    map touches only its centre tap -- while an explicitly padded input costs every tap (binary
    convs were 1.5-3x slower than float ones on 4x4 to 1x1 maps); ``v sum(W_o)`` is the conv's
    bias, added in its epilogue; and ``q - v = 2 [x >= 0] - 1 - v`` costs what the sign costs.
    With sign inputs and weights everything is an exact integer, so ``y`` equals the explicitly
    padded convolution bit for bit; with real weights it equals it up to float rounding.
    ``alpha`` then multiplies in place: the same rounding as ``u * alpha``, which the packed
    engine reproduces.

    Backward, with ``u = y / alpha`` and ``G = dL/dy``: ``dL/du = alpha G`` and
    ``dL/dalpha_o = sum_nhw G u``, both on the weight side when the weights are the smaller tensor
    (``conv_T(alpha G, s) = conv_T(G, alpha s)``; ``sum_nhw G u = sum_ck (sum_nhw G q) s +
    bias_o sum_nhw G``, from the weight and bias gradients of the convolution), else on the
    output side (``u`` recovered from ``y``; kept only if some ``alpha_o = 0``). ATen's
    convolution backward gives fresh ``dL/dq_a``, ``dL/dq_w`` and ``dL/dbias`` buffers, and
    everything else is written into them: the STE of ``x``; for ``W``: ``v dL/dbias`` broadcast
    over the weights of each output channel, the STE mask (only when some ``|W| > 1``, see
    ``weight_signs``) and, with ``s = sign(W)`` and ``n`` weights per output channel,
    ``s * dL/dalpha / n`` (``d|W|/dW = sign(W)``, with the forward's ``sign(0) = +1`` as the
    subgradient at 0, where autograd's ``abs`` uses 0). No weight-sized temporaries: the weight
    side of a ResNet-18 is 11 M values, and on CPU each fresh buffer costs about as much as the
    arithmetic.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, v, rule, mode, signs=None):
        dtype = compute_dtype(x)
        if rule is not None:
            xq = _sign(x, shift=v)
        else:
            xq = x - v if v else x
        if mode == "real":
            wq, alpha, masked, nonzero = weight, None, False, False
        else:
            get = signs.get if signs is not None else weight_signs
            wq, alpha, masked, nonzero = get(weight, mode == "sign_alpha")
        bias = (v * wq.sum(dim=(1, 2, 3))).to(dtype) if v else None
        xq, wq = xq.to(dtype), wq.to(dtype)
        one_pixel = _one_pixel(xq, wq, stride, padding)
        y = _conv(xq, wq, bias, stride, padding, one_pixel)
        # alpha's backward works on the weights or on the output, whichever is smaller
        on_weights = wq.numel() <= y.numel()
        kept = None
        if alpha is not None:
            a = alpha.view(1, -1, 1, 1)
            if on_weights or nonzero:
                kept = None if on_weights else y
                y.mul_(a)  # on the output side, u = y / alpha: no second buffer
            else:  # some alpha_o is 0: keep u
                kept, y = y, (y * a).to(y.dtype)
        ctx.save_for_backward(x, xq, weight, wq, alpha, bias, kept)
        ctx.config = (stride, padding, v, rule, masked, on_weights, nonzero, one_pixel)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, xq, weight, wq, alpha, bias, kept = ctx.saved_tensors
        stride, padding, v, rule, masked, on_weights, nonzero, one_pixel = ctx.config
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_y = grad_y.to(xq.dtype)  # under autocast the incoming gradient may be float32
        w_eff = wq
        if alpha is not None:
            a = alpha.view(-1, 1, 1, 1)
            if on_weights:  # conv_T(alpha G, s) = conv_T(G, alpha s)
                w_eff = (wq * a).to(wq.dtype)
            else:
                if need_w:  # dL/dalpha_o = sum_nhw G u
                    grad_alpha = (grad_y * kept).sum(dim=(0, 2, 3), dtype=alpha.dtype)
                    if nonzero:  # kept is y = u alpha
                        grad_alpha = grad_alpha / alpha
                grad_y = (grad_y * a.view(1, -1, 1, 1)).to(xq.dtype)
        # 1x1 output, no mask, alpha on the output side: dL/dW is a per-row term everywhere plus
        # the GEMM's gradient on the taps read; built in one pass (see _one_pixel_weight_grad)
        compact = need_w and one_pixel is not None and not masked
        compact = compact and not (alpha is not None and on_weights)
        grad_x, grad_w, grad_bias = _conv_backward(
            grad_y, xq, w_eff, bool(v), stride, padding, one_pixel,
            [need_x, need_w and not compact, need_w and bool(v)],
        )  # fmt: skip
        if need_x:
            grad_x = grad_x.to(x.dtype)
            if rule is not None:
                grad_x = SIGN_GRADIENTS_INPLACE[rule](grad_x, x)
        if compact:
            per_weight = None
            if alpha is not None:
                per_weight = grad_alpha / (weight.numel() // weight.shape[0])
            shift = v * grad_bias if v else None
            grad_w = _one_pixel_weight_grad(
                grad_y, xq, wq, padding, one_pixel, shift, per_weight, weight.dtype
            )
        elif need_w:
            grad_w = grad_w.to(weight.dtype)
            if alpha is not None and on_weights:
                # grad_w = sum G q so far: sum_nhw G u = sum_k grad_w s + bias * sum_nhw G
                grad_alpha = (grad_w * wq).sum(dim=(1, 2, 3), dtype=alpha.dtype)
                if v:
                    grad_alpha += bias * grad_bias
            if v:
                grad_w.add_(grad_bias.view(-1, 1, 1, 1), alpha=v)
            if alpha is not None and on_weights:
                grad_w.mul_(a)
            if masked:
                grad_w = ste_grad_(grad_w, weight)
            if alpha is not None:
                per_weight = grad_alpha / (weight.numel() // weight.shape[0])
                grad_w.addcmul_(wq, per_weight.view(-1, 1, 1, 1))
        return grad_x, grad_w, None, None, None, None, None, None


class ChannelPReLU(torch.autograd.Function):
    """``PReLU`` with one slope per channel (dim 1), same forward as ``torch.prelu``.

    Backward in vectorised kernels (ATen's fused PReLU backward is a scalar loop on CPU, the
    costliest op of a small binary ResNet's training step): with ``m = dL/dy * 1[x > 0]``::

        dL/dx = lerp(dL/dy, m, 1 - a) = a dL/dy + (1 - a) m,    dL/da_c = sum dL/dy * min(x, 0)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.prelu(x, weight.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)  # under autocast the gradient may arrive as float32
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if d != 1]
            grad_w = torch.clamp_max(x, 0).mul_(grad_out).sum(dim=dims, dtype=weight.dtype)
        if ctx.needs_input_grad[0]:
            shape = [1, -1] + [1] * (x.dim() - 2)
            m = torch.ops.aten.threshold_backward(grad_out, x, 0)
            grad_x = torch.lerp(grad_out, m, (1 - weight).view(shape).to(x.dtype), out=m)
        return grad_x, grad_w


def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``torch.prelu(x, weight)`` for a per-channel ``weight`` of shape ``(C,)``, with the faster
    backward of ``ChannelPReLU``; a single shared slope goes to ``torch.prelu`` itself."""
    if weight.numel() == 1 or x.dim() < 2:
        return torch.prelu(x, weight)
    return ChannelPReLU.apply(x, weight)


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same parameter, same forward values) with ``ChannelPReLU``'s backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prelu(x, self.weight)


class LearnedScale(nn.Module):
    """Learned per-output-channel scale of the strong baseline: ``y_c = s_c * x_c``.

    XNOR-Net++ style (Bulat & Tzimiropoulos 2019) as the paper's strong baseline uses it
    (docs/method.md section 2, step 4 [choice: per channel]). Initialised to 1.
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
    """Data-driven channel re-scaling of Real-to-Binary (paper Sec. 4.2; docs/method.md section 3).

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


class LearnedShift(nn.Module):
    """Learned per-channel shift ``y_c = x_c + b_c`` (initialised to 0).

    Before a sign it is ReActNet's RSign (Liu et al., ECCV 2020, Eq. 1): ``sign(x - alpha_c)``
    with a learned threshold, written as ``sign(x + b_c)``, ``b = -alpha``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.view(1, -1, 1, 1)


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al., ECCV 2020, Eq. 3): a PReLU between two learned shifts,

    ``y_c = PReLU_c(x_c + gamma_c) + zeta_c``  (``gamma = shift_in``, ``zeta = shift_out``),

    computed as three roundings: the add, the PReLU (``v > 0 ? v : a_c v``), the add. Slopes start
    at 0.25 (PyTorch's PReLU), shifts at 0.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.weight = nn.Parameter(torch.full((channels,), 0.25))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = prelu(x + self.shift_in.view(1, -1, 1, 1), self.weight)
        return v + self.shift_out.view(1, -1, 1, 1)
