"""Binary layers: the binary convolution, the learned output scale and the data-driven gate.

A binary layer is the float layer plus quantizer arguments; with no quantizers it *is* the float
layer (DESIGN.md habit 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r2b.quantizers import get_quantizer, is_binary


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._q_input is None:
            y = F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding)
        else:
            x = self._q_input(x)
            ph, pw = self.padding
            if ph or pw:
                x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
            y = F.conv2d(x, self.quantized_weight(), self.bias, self.stride, 0)
        alpha = self.weight_alpha()
        if alpha is not None:
            y = y * alpha.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, input_quantizer={self.input_quantizer}, "
            f"weight_quantizer={self.weight_quantizer}, pad_value={self.pad_value}, "
            f"weight_scale={self.weight_scale}"
        )


class LearnedScale(nn.Module):
    """Learned per-output-channel scale of the strong baseline: ``y_c = s_c * x_c``.

    XNOR-Net++ style (Bulat & Tzimiropoulos 2019) as the paper's strong baseline uses it
    (METHOD.md section 2, step 4 [choice: per channel]). Initialised to 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


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
