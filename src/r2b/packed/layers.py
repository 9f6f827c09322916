"""Packed layers: the binary convolution on bits and the half block around it.

``PackedBinaryConv2d`` holds ``sign(W)`` as bits (``r2b.packed.bitpack``) plus the float weight
scale ``alpha`` (``mean|W|`` per output channel, kept from the latent weights; the bits alone have
lost it). ``PackedHalfBlock`` is the binary ``HalfBlock`` of ``r2b.models.resnet``::

    y   = BN(x)                                   PyTorch (same op as the float model)
    g   = gate(y) | learned scale                  PyTorch
    c   = K - 2 popcount(pack(y) XOR bits)         compiled kernel (exact integer)
    out = PReLU((c * alpha) * g) + shortcut(x)     compiled epilogue, PyTorch's rounding order

The real layers stay PyTorch modules, so what has a reduction in it (BN statistics folded by
PyTorch, the gate's average pool, the downsample 1x1 conv) is computed by the very same code as in
the float model, and the packed network equals the float one bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from r2b.errors import UserError
from r2b.packed import kernels
from r2b.packed.bitpack import kernel_layout, n_words, pack_bits


class PackedBinaryConv2d(nn.Module):
    """``conv2d(pad(sign(y), pad_value), sign(W), stride)`` on bits (XOR + popcount).

    ``bits``: canonical ``(O, kh, kw, Kw)`` uint64 words of ``sign(W)``; ``alpha``: ``(O,)``
    float32 weight scale or ``None``; ``pad_value`` must be ``+1`` or ``-1`` (a binary value).
    """

    def __init__(
        self,
        bits: np.ndarray,
        in_channels: int,
        stride: int,
        padding: int,
        alpha: torch.Tensor | None,
        pad_value: float = 1.0,
    ) -> None:
        super().__init__()
        if pad_value not in (1.0, -1.0):
            raise UserError(
                f"a packed binary conv pads with +1 or -1, not {pad_value}; "
                "train with pad_value=1.0 (the default) to export"
            )
        out_ch, kh, kw, words = bits.shape
        if words != n_words(in_channels):
            raise ValueError(f"{words} words cannot hold {in_channels} input channels")
        self.in_channels, self.out_channels = in_channels, out_ch
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.pad_value = float(pad_value)
        self.bits = np.ascontiguousarray(bits, dtype=np.uint64)
        self._wb = kernel_layout(self.bits)
        self.has_alpha = alpha is not None
        ones = torch.ones(out_ch)
        self.register_buffer("alpha", (ones if alpha is None else alpha.detach()).float().cpu())
        # the packed value of a padded pixel: all channels +1 (zero words) or all -1
        self._pad_word = pack_bits(np.full(in_channels, pad_value < 0))

    @property
    def k_total(self) -> int:
        """Number of ±1 products per output: ``kh * kw * C``."""
        return self.kernel_size[0] * self.kernel_size[1] * self.in_channels

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        kh, kw = self.kernel_size
        p, s = self.padding, self.stride
        return (height + 2 * p - kh) // s + 1, (width + 2 * p - kw) // s + 1

    def pack(self, y: torch.Tensor) -> np.ndarray:
        """``sign(y)`` of a float ``(N, C, H, W)`` tensor, packed and padded: ``(N, H+2p, W+2p,
        Kw)`` uint64."""
        n, c, h, w = y.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        p = self.padding
        shape = (n, h + 2 * p, w + 2 * p, self._pad_word.shape[0])
        if self.pad_value > 0:
            xp = np.zeros(shape, dtype=np.uint64)
        else:
            xp = np.empty(shape, dtype=np.uint64)
            xp[...] = self._pad_word
        kernels.pack_signs(_f32(y), p, xp)
        return xp

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """The integer convolution ``(N, O, OH, OW)`` int32 -- the float graph's conv of the ±1
        values, before ``alpha``."""
        xp = self.pack(y)
        oh, ow = self.output_size(y.shape[2], y.shape[3])
        out = np.empty((y.shape[0], self.out_channels, oh, ow), dtype=np.int32)
        kh, kw = self.kernel_size
        kernels.conv_int(xp, self._wb, self.out_channels, self.k_total, kh, kw, self.stride, out)
        return torch.from_numpy(out)

    def fused(
        self, y: torch.Tensor, gain: torch.Tensor, slope: torch.Tensor, shortcut: torch.Tensor
    ) -> torch.Tensor:
        """``PReLU((conv * alpha) * gain) + shortcut`` in one pass (see ``kernels.conv_epilogue``).

        ``gain``: ``(N, O)``; ``slope``: ``(O,)`` PReLU weights; ``shortcut``: ``(N, O, OH, OW)``.
        """
        xp = self.pack(y)
        oh, ow = self.output_size(y.shape[2], y.shape[3])
        out = torch.empty((y.shape[0], self.out_channels, oh, ow), dtype=torch.float32)
        kh, kw = self.kernel_size
        kernels.conv_epilogue(
            xp, self._wb, self.out_channels, self.k_total, kh, kw, self.stride,
            _f32(self.alpha), _f32(gain), _f32(slope), _f32(shortcut), out.numpy(),
        )  # fmt: skip
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, pad_value={self.pad_value}, "
            f"alpha={self.has_alpha}"
        )


class PackedHalfBlock(nn.Module):
    """A binary half block with its conv on bits (see the module docstring).

    ``scaling`` is a ``(O,)`` learned scale tensor (strong baseline) or a ``Gate`` module
    (Real-to-Binary); ``bn``, ``act`` (PReLU) and ``shortcut`` (``None`` for identity) are the
    float model's modules.
    """

    def __init__(
        self,
        bn: nn.Module,
        conv: PackedBinaryConv2d,
        scaling: torch.Tensor | nn.Module,
        act: nn.PReLU,
        shortcut: nn.Module | None,
    ) -> None:
        super().__init__()
        self.bn, self.conv, self.act, self.shortcut = bn, conv, act, shortcut
        if isinstance(scaling, nn.Module):
            self.gate, self.scale = scaling, None
        else:
            self.gate = None
            self.register_buffer("scale", scaling.detach().float().cpu())
        if act.weight.numel() not in (1, conv.out_channels):
            raise ValueError("PReLU needs one slope or one per output channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        n = x.shape[0]
        if self.gate is not None:
            gain = self.gate(y).reshape(n, -1)
        else:
            gain = self.scale.expand(n, -1)
        slope = self.act.weight.expand(self.conv.out_channels)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.conv.fused(y, gain, slope, shortcut)


def _f32(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy view (or copy) of a CPU tensor."""
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())
