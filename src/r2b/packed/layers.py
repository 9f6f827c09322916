"""Packed layers: the binary convolution on bits, the half block around it, the stem.

``PackedBinaryConv2d`` holds ``sign(W)`` as bits (``r2b.packed.bitpack``) plus the float weight
scale ``alpha`` (``mean|W|`` per output channel, kept from the latent weights; the bits alone have
lost it). ``PackedHalfBlock`` is a binary half block as its model describes it
(``r2b.models.spec.HalfBlockSpec``)::

    y   = pre(x)                                  compiled: BN, learned shift or identity
    g   = gate(y) | learned scale | 1             PyTorch module
    c   = K - 2 popcount(pack(sign y) XOR bits)    compiled (exact integer)
    v   = post((c * alpha) * g)                    compiled epilogue: BN after the conv or none
    out = act(v) + shortcut(x) | act(v + shortcut(x))   compiled; act PReLU, RPReLU or none

The pre step, sign and packing of block ``i + 1`` run inside block ``i``'s kernel, on the rows
it has just written. What has a reduction in it (the gate's average pool and linear layers, the
downsample's 1x1 conv, the stem conv, the head) is computed by the float model's own modules, so
the packed network equals the float one bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r2b.errors import UserError
from r2b.layers import RPReLU
from r2b.models.spec import HalfBlockSpec
from r2b.packed import kernels
from r2b.packed.batchnorm import probe_affine
from r2b.packed.bitpack import kernel_layout, n_words, pack_bits
from r2b.packed.int8 import Dequantize, Int8Conv2d, Int8Linear, int_mm_exact
from r2b.packed.kernels import (
    BN_NONE,
    Q_CNHW_S8,
    Q_NHWC_U8,
    Q_PADDED_U8,
    RES_DEQUANT,
    RES_PLAIN,
)
from r2b.packed.parallel import kernel_threads, launch_info

_NO_F32_1D = np.zeros(1, np.float32)
_NO_F32_4D = np.zeros((1, 1, 1, 1), np.float32)
_NO_U64_4D = np.zeros((1, 1, 1, 1), np.uint64)
_NO_I32_3D = np.zeros((1, 1, 1), np.int32)


_LAUNCH: dict[tuple[str, int], tuple] = {}


def _launch(name: str) -> tuple[int, int, int, int, int]:
    """Launch arguments of kernel ``name`` for the current thread count (cached)."""
    threads = kernel_threads()
    key = (name, threads)
    info = _LAUNCH.get(key)
    if info is None:
        info = _LAUNCH[key] = launch_info(kernels.worker_address(name), threads)
    return info


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
        self._wt = kernel_layout(self.bits, kernels.TILE_O)
        self.has_alpha = alpha is not None
        ones = torch.ones(out_ch)
        self.register_buffer("alpha", (ones if alpha is None else alpha.detach()).float().cpu())
        self._alpha = self.alpha.numpy()
        # the packed value of a padded pixel: all channels +1 (zero words) or all -1
        self._pad_word = pack_bits(np.full(in_channels, pad_value < 0))
        self._geo = np.array([out_ch, self.k_total, kh, kw, stride], np.int64)

    @property
    def k_total(self) -> int:
        """Number of ±1 products per output: ``kh * kw * C``."""
        return self.kernel_size[0] * self.kernel_size[1] * self.in_channels

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        kh, kw = self.kernel_size
        p, s = self.padding, self.stride
        return (height + 2 * p - kh) // s + 1, (width + 2 * p - kw) // s + 1

    def packed_buffer(self, n: int, height: int, width: int) -> np.ndarray:
        """A packed input ``(N, H+2p, W+2p, Kw)`` whose border holds the padding value."""
        p = self.padding
        shape = (n, height + 2 * p, width + 2 * p, self._pad_word.shape[0])
        if self.pad_value > 0:
            return np.zeros(shape, dtype=np.uint64)
        xp = np.empty(shape, dtype=np.uint64)
        xp[...] = self._pad_word
        return xp

    def pack(self, y: torch.Tensor) -> np.ndarray:
        """``sign(y)`` of a float ``(N, C, H, W)`` tensor, packed and padded."""
        n, c, h, w = y.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        xp = self.packed_buffer(n, h, w)
        kernels.bn_pack(_f32(y), BN_NONE, _NO_F32_1D, _NO_F32_1D, self.padding, xp, 0,
                        _NO_F32_4D, _launch("bn_pack"))  # fmt: skip
        return xp

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """The integer convolution ``(N, O, OH, OW)`` int32 -- the float graph's conv of the ±1
        values, before ``alpha``."""
        xp = self.pack(y)
        oh, ow = self.output_size(y.shape[2], y.shape[3])
        out = np.empty((y.shape[0], self.out_channels, oh, ow), dtype=np.int32)
        kernels.conv_int(xp, self._wt, self._geo, out, _launch("conv_int"))
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, pad_value={self.pad_value}, "
            f"alpha={self.has_alpha}"
        )


class PackedHalfBlock(nn.Module):
    """A binary half block (``r2b.models.spec.HalfBlockSpec``) with its conv on bits.

    ``pre``, ``gate``, ``post``, ``act`` and ``shortcut`` are the float model's modules in eval
    mode (``None`` where the block has none), ``scale`` its learned scale tensor or ``None``.
    What the compiled epilogue reproduces exactly -- a per-channel affine ``pre`` or ``post``
    (BatchNorm, learned shift), PReLU / RPReLU -- runs there; any other module makes the block
    run its float parts in PyTorch around the integer conv (``fused`` is then False), which is
    still exact, only slower.
    """

    def __init__(
        self,
        conv: PackedBinaryConv2d,
        pre: nn.Module | None = None,
        scale: torch.Tensor | None = None,
        gate: nn.Module | None = None,
        post: nn.Module | None = None,
        act: nn.Module | None = None,
        act_after_add: bool = False,
        shortcut: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv, self.pre, self.gate, self.post = conv, pre, gate, post
        self.act, self.act_after_add, self.shortcut = act, bool(act_after_add), shortcut
        out_ch = conv.out_channels
        scale = torch.ones(out_ch) if scale is None else scale
        self.register_buffer("scale", scale.detach().float().cpu().reshape(out_ch))
        self.bn_mode, self._bn_a, self._bn_b = probe_affine(pre, conv.in_channels)
        post_mode, self._post_a, self._post_b = probe_affine(post, out_ch)
        act_kind, self._act_vectors = _activation(act, out_ch)
        self.fused = act_kind is not None and (post is None or post_mode != BN_NONE)
        self._flags = (post_mode if post is not None else BN_NONE, act_kind or 0,
                       int(self.act_after_add))  # fmt: skip
        # an int8 downsample's integer sums are dequantised in the kernel (no float pass)
        self._res_vectors = None
        if self.fused and isinstance(shortcut, PackedDownsample):
            self._res_vectors = shortcut.sums_vectors(out_ch)
        self._statics: dict = {}
        self._scales: dict[int, torch.Tensor] = {}
        self._gate_weights = _gate_weights(self.gate)

    @classmethod
    def from_spec(cls, spec, conv: PackedBinaryConv2d, frozen) -> PackedHalfBlock:
        """The packed block of a ``HalfBlockSpec``; ``frozen(m)`` copies a module for inference."""
        return cls(
            conv, pre=frozen(spec.pre), scale=frozen(spec.scale), gate=frozen(spec.gate),
            post=frozen(spec.post), act=frozen(spec.act), act_after_add=spec.act_after_add,
            shortcut=packed_shortcut(frozen(spec.shortcut)),
        )  # fmt: skip

    def _static(self, nxt: PackedHalfBlock | None) -> np.ndarray:
        """The constant arguments of this block's kernel when followed by ``nxt`` (fused)."""
        key = None if nxt is None else (id(nxt), nxt.bn_mode)
        if key not in self._statics:
            conv = self.conv
            if nxt is None:
                fused, bn_a, bn_b = (0, BN_NONE, 0, 0), _NO_F32_1D, _NO_F32_1D
            else:
                write_y = int(nxt.gate is not None)
                fused = (1, nxt.bn_mode, nxt.conv.padding, write_y)
                bn_a, bn_b = nxt._bn_a, nxt._bn_b
            res_mode = RES_PLAIN if self._res_vectors is None else RES_DEQUANT
            res = self._res_vectors or dict(res_c=_NO_F32_1D, res_m=_NO_F32_1D, res_b=_NO_F32_1D)
            vectors = dict(alpha=conv._alpha, post_a=self._post_a, post_b=self._post_b,
                           bn_a=bn_a, bn_b=bn_b, **self._act_vectors, **res)  # fmt: skip
            flags = np.array([*self._flags, *fused, res_mode], np.int64)
            static = kernels.half_static(conv._wt, conv._geo, vectors, flags)
            self._statics[key] = (static, vectors)  # the arrays stay alive with it
        return self._statics[key][0]

    def prepare(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None]:
        """Packed ``sign(pre(x))`` and, when the gate needs it, ``pre(x)`` itself."""
        n, c, h, w = x.shape
        xp = self.conv.packed_buffer(n, h, w)
        y = torch.empty_like(x) if self.gate is not None else None
        if self.bn_mode == BN_NONE:
            y = self.pre(x).contiguous()
            src, a, b = y, _NO_F32_1D, _NO_F32_1D
        else:
            src, a, b = x, self._bn_a, self._bn_b
        y_np = _NO_F32_4D if (y is None or self.bn_mode == BN_NONE) else y.numpy()
        write_y = int(y is not None and self.bn_mode != BN_NONE)
        kernels.bn_pack(_f32(src), self.bn_mode, a, b, self.conv.padding, xp, write_y, y_np,
                        _launch("bn_pack"))  # fmt: skip
        return xp, y

    def run(
        self,
        x: torch.Tensor,
        xp: np.ndarray,
        y: torch.Tensor | None,
        nxt: PackedHalfBlock | None = None,
    ) -> tuple[torch.Tensor, np.ndarray | None, torch.Tensor | None]:
        """This block's output from its input ``x`` and ``prepare(x)``; with the next block
        ``nxt``, also the next block's ``prepare(out)`` (fused into the same kernel)."""
        gain, shortcut = self.float_parts(x, y)
        if not self.fused:
            out = self.unfused_part(x, xp, y, shortcut)
            return (out, None, None) if nxt is None else (out, *nxt.prepare(out))
        return self.binary_part(x, xp, gain, shortcut, nxt)

    def float_parts(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The PyTorch side: per-image channel gain ``(N, O)`` (gate of ``y``, the learned
        scale, or 1) and the shortcut ``(N, O, OH, OW)`` (for an int8 downsample in a fused
        block: its ``(O, N, OH * OW)`` int32 sums, which the kernel dequantises)."""
        n = x.shape[0]
        if self._gate_weights is not None:
            w1, w2 = self._gate_weights
            gain = torch.sigmoid(F.linear(F.relu(F.linear(y.mean(dim=(2, 3)), w1)), w2))
        elif self.gate is not None:
            gain = self.gate(y).reshape(n, -1)
        else:
            gain = self._scales.get(n)
            if gain is None:
                gain = self._scales[n] = self.scale.expand(n, -1).contiguous()
        if self.shortcut is None:
            return gain, x
        if self._res_vectors is not None:
            return gain, self.shortcut.int_mm_sums(x)
        return gain, self.shortcut(x)

    def binary_part(
        self,
        x: torch.Tensor,
        xp: np.ndarray,
        gain: torch.Tensor,
        shortcut: torch.Tensor,
        nxt: PackedHalfBlock | None = None,
    ) -> tuple[torch.Tensor, np.ndarray | None, torch.Tensor | None]:
        """The compiled side: binary conv, epilogue and (fused) the next block's pre + pack."""
        n = x.shape[0]
        conv = self.conv
        oh, ow = conv.output_size(x.shape[2], x.shape[3])
        out = torch.empty((n, conv.out_channels, oh, ow), dtype=torch.float32)
        fuse = nxt is not None and nxt.bn_mode != BN_NONE
        xp2, y2 = _NO_U64_4D, None
        if fuse:
            xp2 = nxt.conv.packed_buffer(n, oh, ow)
            y2 = torch.empty_like(out) if nxt.gate is not None else None
        sums = _NO_I32_3D
        if self._res_vectors is not None:  # an int8 downsample's (O, N, OH * OW) sums
            sums, shortcut = shortcut.numpy(), None
        kernels.half_block(
            self._static(nxt if fuse else None), xp, _f32(gain),
            _NO_F32_4D if shortcut is None else _f32(shortcut), out.numpy(), xp2,
            _NO_F32_4D if y2 is None else y2.numpy(), sums, _launch("half_block"),
        )  # fmt: skip
        if nxt is None:
            return out, None, None
        if not fuse:
            xp2, y2 = nxt.prepare(out)
        return out, xp2, y2

    def unfused_part(
        self, x: torch.Tensor, xp: np.ndarray, y: torch.Tensor | None, shortcut: torch.Tensor
    ) -> torch.Tensor:
        """The block around the integer conv in PyTorch, in the float model's order (for a
        ``post`` or ``act`` the epilogue cannot reproduce)."""
        oh, ow = self.conv.output_size(x.shape[2], x.shape[3])
        counts = np.empty((x.shape[0], self.conv.out_channels, oh, ow), dtype=np.int32)
        kernels.conv_int(xp, self.conv._wt, self.conv._geo, counts, _launch("conv_int"))
        c = torch.from_numpy(counts).float()
        if self.conv.has_alpha:
            c = c * self.conv.alpha.view(1, -1, 1, 1)
        parts = HalfBlockSpec("", self.pre, None, self.scale, self.gate, self.post, self.act,
                              self.act_after_add, self.shortcut)  # fmt: skip
        return parts.after_conv(c, y, shortcut).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, y = self.prepare(x)
        return self.run(x, xp, y)[0]


def _directions(bn_mode: int, bn_a: np.ndarray, bn_b: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Per channel, +1 where ``PReLU(BN(x))`` increases with ``x`` (BN scale ``a > 0`` or no
    BN) and -1 where it decreases (``a < 0``), so that the stem's max-pool can be taken before
    them (``kernels.stem_tail``); empty when some channel is neither or could turn an infinite
    ``x`` into NaN where PyTorch's order would not: a scale of 0, a PReLU slope that is not
    positive (``0 * -inf``), a coefficient that is not finite."""
    a = np.ones_like(slope) if bn_mode == BN_NONE else bn_a
    finite = all(np.all(np.isfinite(v)) for v in (a, slope)) and (
        bn_mode == BN_NONE or np.all(np.isfinite(bn_b)))  # fmt: skip
    if not (finite and np.all(slope > 0) and np.all(a != 0)):
        return np.zeros(0, np.float32)
    return np.where(a > 0, 1.0, -1.0).astype(np.float32)


def _activation(act: nn.Module | None, channels: int) -> tuple[int | None, dict]:
    """The epilogue's activation kind and per-channel ``slope``, ``shift_in``, ``shift_out``
    for ``act`` (``None``, a PReLU, an ``RPReLU``); kind ``None`` for a module it cannot run."""
    zeros = np.zeros(channels, np.float32)
    ones = np.ones(channels, np.float32)
    if act is None:
        return kernels.ACT_NONE, dict(slope=ones, shift_in=zeros, shift_out=zeros)
    weight = getattr(act, "weight", None)
    if not isinstance(act, (nn.PReLU, RPReLU)) or weight.numel() not in (1, channels):
        return None, dict(slope=ones, shift_in=zeros, shift_out=zeros)
    slope = np.ascontiguousarray(weight.detach().float().expand(channels).numpy())
    if isinstance(act, nn.PReLU):
        return kernels.ACT_PRELU, dict(slope=slope, shift_in=zeros, shift_out=zeros)
    shifts = {k: np.ascontiguousarray(getattr(act, k).detach().float().numpy())
              for k in ("shift_in", "shift_out")}  # fmt: skip
    return kernels.ACT_RPRELU, dict(slope=slope, **shifts)


class PackedStem(nn.Module):
    """The float stem ``conv -> BN [-> PReLU] [-> max-pool]`` with BN, PReLU and pool compiled.

    The conv runs in PyTorch. Its channels-last variant is several times faster on CPU but is not
    always the same arithmetic (PyTorch picks other algorithms for some shapes), so for each input
    shape and thread count the first call runs both and keeps channels-last only when the outputs
    are bit-identical.

    An int8 stem (``Int8Conv2d -> Dequantize``) on a CPU with AVX-512 VNNI runs as one compiled
    pass instead (``kernels.int8_stem``): quantisation into a padded buffer, then per task the
    conv rows its pool windows need (exact integer sums, converted to float32 once) and the same
    tail, so the ``(N, H, W, C)`` float conv output never goes to memory. Elsewhere oneDNN's
    int8 conv gives the same integers.
    """

    def __init__(
        self, conv: nn.Conv2d, bn: nn.Module, act: nn.PReLU | None, pool: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv, self.bn, self.act, self.pool = conv, bn, act, pool
        channels = conv.out_channels
        # no activation: slope 1, and ``v > 0 ? v : 1 * v`` is ``v``
        slope = torch.ones(channels) if act is None else act.weight.detach().float()
        self._slope = np.ascontiguousarray(slope.expand(channels).numpy())
        self.bn_mode, self._bn_a, self._bn_b = probe_affine(bn, channels)
        self._sgn = _directions(self.bn_mode, self._bn_a, self._bn_b, self._slope)
        self._pool = _pool_params(pool)
        self._channels_last_exact: dict[tuple, bool] = {}
        self._tiles: dict[int, tuple[np.ndarray, ...]] = {}
        self._vnni = _vnni_weights(conv) if self.bn_mode != BN_NONE and self._pool else None

    def _tiled(self, width: int) -> tuple[np.ndarray, ...]:
        """BN coefficients, PReLU slopes and directions repeated along an input row of
        ``width`` pixels."""
        if width not in self._tiles:
            self._tiles[width] = tuple(
                np.ascontiguousarray(np.tile(v, width))
                for v in (self._bn_a, self._bn_b, self._slope, self._sgn)
            )
        return self._tiles[width]

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.conv, Int8Conv2d):
            return self.conv.integer_sums(quantized_input(self.conv, x))
        key = (tuple(x.shape), torch.get_num_threads())
        exact = self._channels_last_exact.get(key)
        if exact is False:
            return self.conv(x)
        fast = self.conv(x.contiguous(memory_format=torch.channels_last))
        if exact is None:
            reference = self.conv(x)
            self._channels_last_exact[key] = exact = torch.equal(fast, reference)
            if not exact:
                return reference
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._vnni is not None:
            return self._int8_forward(x)
        c = self._conv(x)
        if self.bn_mode == BN_NONE or self._pool is None:
            out = self.bn(c) if self.act is None else self.act(self.bn(c))
            return (out if self.pool is None else self.pool(out)).contiguous()
        nhwc = c.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            nhwc = nhwc.contiguous()
        n, h, w = nhwc.shape[:3]
        out = torch.empty((n, nhwc.shape[3], *_pooled_size(h, w, self._pool)), dtype=torch.float32)
        pool = np.array(self._pool, np.int64)
        a, b, slope, sgn = self._tiled(w)
        kernels.stem_tail(nhwc.numpy(), self.bn_mode, a, b, slope, sgn, pool, out.numpy(),
                          _launch("stem_tail"))  # fmt: skip
        return out

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 stem as one compiled pass (``kernels.int8_stem``) after the quantisation:
        the same integer sums as ``Int8Conv2d.integer_sums``, then the same tail."""
        conv, (wt, corr, q_len) = self.conv, self._vnni
        n, c, h, w = x.shape
        kh, kw = conv.weight_q.shape[2:]
        p, s = conv.padding, conv.stride
        conv_h, conv_w = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
        # 3 bytes of slack a row: the tiles read 4 bytes at a time
        border = np.full((n, h + 2 * p, (w + 2 * p) * c + 3, 1), int(conv.zero_point), np.uint8)
        qp = _quantize_codes(conv, x, False, Q_PADDED_U8, out=border)
        out = torch.empty((n, conv.out_channels, *_pooled_size(conv_h, conv_w, self._pool)),
                          dtype=torch.float32)  # fmt: skip
        geo = np.array([kh, q_len, s, c, conv_h, conv_w], np.int64)
        a, b, slope, sgn = self._tiled(conv_w)
        pool = np.array(self._pool, np.int64)
        kernels.int8_stem(qp[..., 0], wt, corr, geo, self.bn_mode, a, b, slope, sgn, pool,
                          out.numpy(), _launch("int8_stem"))  # fmt: skip
        return out


def _pooled_size(height: int, width: int, pool: tuple[int, int, int]) -> tuple[int, int]:
    """The output size of the stem's max-pool ``(kernel, stride, padding)`` (kernel 0: none)."""
    k, s, p = pool
    if not k:
        return height, width
    return (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1


def _vnni_weights(conv: nn.Module) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(wt, corr, q_len)`` of ``kernels.int8_stem`` for an int8 conv on a CPU with VNNI
    (``None`` otherwise, or for the reference backend, or output channels not a multiple of
    16): kernel row ``i``'s window of ``kw * C`` bytes as ``q_len = ceil(kw * C / 4)`` words of
    4 int8 weights, in blocks of 64 (else 16) output channels, and ``corr = z * sum w_q``."""
    if not isinstance(conv, Int8Conv2d) or conv.backend == "reference" or not kernels.has_vnni():
        return None
    out_ch, channels, kh, kw = conv.weight_q.shape
    if out_ch % kernels.DOT_LANES:
        return None
    q_len = -(-kw * channels // 4)
    window = torch.zeros(out_ch, kh, 4 * q_len, dtype=torch.int8)
    # byte j * C + c of a row's window: tap j, channel c
    window[:, :, : kw * channels] = conv.weight_q.permute(0, 2, 3, 1).reshape(out_ch, kh, -1)
    block = 64 if out_ch % 64 == 0 else kernels.DOT_LANES
    words = window.reshape(out_ch // block, block, kh * q_len, 4).permute(0, 2, 1, 3)
    wt = np.ascontiguousarray(words.contiguous().numpy().view(np.int32)[..., 0])
    corr = int(conv.zero_point) * conv.weight_q.sum(dim=(1, 2, 3), dtype=torch.int32)
    return wt, corr.numpy(), q_len


class PackedDownsample(nn.Module):
    """The downsampling shortcut ``AvgPool 2x2/2 -> 1x1 conv -> BN`` with a compiled pool.

    PyTorch's NCHW average pool is slow on CPU; the compiled one sums in PyTorch's order and
    divides by 4, which a probe at construction confirms bit for bit (else the module's pool is
    used). The conv and BN are the float model's modules; in an int8 engine they are an
    ``Int8Conv2d`` and its ``Dequantize``: one compiled pass pools and quantises, and for a
    1x1 conv one ``torch._int_mm`` of the whole batch gives the integer sums
    (``int_mm_sums``), which a fused half block dequantises in its kernel (``sums_vectors``).
    """

    def __init__(self, pool: nn.Module, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.pool, self.conv, self.bn = pool, conv, bn
        probe = torch.randn(2, 3, 6, 10, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.compiled_pool = torch.equal(self._pool(probe), pool(probe))
        self._matrix = self._correction = None
        if self.compiled_pool and _is_pointwise(conv) and int_mm_exact():
            w = conv.weight_q.reshape(conv.out_channels, -1)
            self._matrix = w.contiguous()
            # sum_k (q - z) w = sum_k (q - 128) w + (128 - z) sum_k w
            shift = 128 - int(conv.zero_point)
            self._correction = (shift * w.long().sum(dim=1)).float().numpy()

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = torch.empty((n, c, h // 2, w // 2), dtype=torch.float32)
        kernels.avg_pool2(_f32(x), out.numpy(), _launch("avg_pool2"))
        return out

    def sums_vectors(self, channels: int) -> dict | None:
        """``res_c``, ``res_m``, ``res_b`` with which a half block's kernel turns
        ``int_mm_sums`` into this shortcut (``r2b.packed.kernels.RES_DEQUANT``); ``None`` when
        this shortcut has no such sums (a float one, or a conv that is not 1x1)."""
        bn = self.bn
        if self._matrix is None or not isinstance(bn, Dequantize):
            return None
        if bn.multiplier.shape != (channels,):
            return None
        m, b = (np.ascontiguousarray(v.detach().float().numpy()) for v in (bn.multiplier, bn.bias))
        return dict(res_c=self._correction, res_m=m, res_b=b)

    def int_mm_sums(self, x: torch.Tensor) -> torch.Tensor:
        """``(O, N, OH * OW)`` int32: ``sum_k (q - 128) w`` of the pooled, quantised ``x``, one
        matrix product for the batch (``sums_vectors`` adds the rest of the integer sums)."""
        n, c, h, w = x.shape
        q = _quantize_codes(self.conv, x, True, Q_CNHW_S8)
        shifted = torch.from_numpy(q).view(torch.int8).reshape(c, -1)
        return torch._int_mm(self._matrix, shifted).reshape(-1, n, (h // 2) * (w // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.conv, Int8Conv2d) and self.compiled_pool:
            return self.bn(self.conv.integer_sums(quantized_input(self.conv, x, pool=True)))
        pooled = self._pool(x) if self.compiled_pool else self.pool(x)
        return self.bn(self.conv(pooled))


class PackedClassifier(nn.Module):
    """The int8 classifier ``Int8Linear -> Dequantize`` with its input quantised in one
    compiled pass (``kernels.quantize_u8``, the codes ``q - 128``) and its integer sums from one
    ``torch._int_mm`` of the batch: the same integers as ``Int8Linear.integer_sums``, rounded
    to float32 once, then its ``Dequantize``."""

    def __init__(self, linear: Int8Linear, dequantize: Dequantize) -> None:
        super().__init__()
        self.linear, self.dequantize = linear, dequantize
        self._shift = linear.shift()
        self._weight_t = linear.weight_q.t()  # (K, O) column-major: _int_mm's fast layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape
        codes = _quantize_codes(self.linear, x.reshape(n, k, 1, 1), False, Q_CNHW_S8)
        flat = torch.from_numpy(codes).view(torch.int8)
        # (N, K); one row as a plain (1, K) matrix: the transposed view of (K, 1) has strides
        # (1, 1), which torch._int_mm's CPU kernel misreads (garbage logits at batch 1)
        shifted = flat.reshape(1, k) if n == 1 else flat.reshape(k, n).t()
        sums = torch._int_mm(shifted, self._weight_t).add_(self._shift)
        return self.dequantize(sums.float())


def packed_classifier(fc: nn.Module) -> nn.Module:
    """``PackedClassifier`` for an int8 classifier when ``torch._int_mm`` is exact here; any
    other classifier as it is."""
    layers = list(fc) if isinstance(fc, nn.Sequential) else []
    fast = len(layers) == 2 and isinstance(layers[0], Int8Linear)
    if fast and layers[0].backend != "reference" and int_mm_exact():
        return PackedClassifier(*layers)
    return fc


def _is_pointwise(conv: nn.Module) -> bool:
    """An int8 1x1 conv with stride 1 and no padding: a matrix product."""
    return (isinstance(conv, Int8Conv2d) and tuple(conv.weight_q.shape[2:]) == (1, 1)
            and conv.stride == 1 and conv.padding == 0)  # fmt: skip


def quantized_input(conv: Int8Conv2d, x: torch.Tensor, pool: bool = False) -> torch.Tensor:
    """``conv``'s uint8 input from float ``x`` (of its 2 x 2 average pool when ``pool``), in one
    compiled pass, channels-last: equal to ``conv._quantized_input`` (``r2b.packed.int8.
    quantize_activations``) of the same values."""
    return torch.from_numpy(_quantize_codes(conv, x, pool, Q_NHWC_U8)).permute(0, 3, 1, 2)


def _quantize_codes(
    conv: nn.Module, x: torch.Tensor, pool: bool, layout: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``kernels.quantize_u8`` of ``x`` with the int8 layer ``conv``'s scale and zero point:
    ``(N, OH, OW, C)`` uint8 (``Q_NHWC_U8``) or ``(C, N, OH, OW)`` int8 bits of ``q - 128``
    (``Q_CNHW_S8``), a new array; or into ``out``, the padded rows of ``Q_PADDED_U8``."""
    n, c, h, w = x.shape
    oh, ow = (h // 2, w // 2) if pool else (h, w)
    shape = (n, oh, ow, c) if layout == Q_NHWC_U8 else (c, n, oh, ow)
    q = np.empty(shape, np.uint8) if out is None else out
    inv_scale = conv.inv_scale.detach().float().numpy()
    kernels.quantize_u8(_f32(x), int(pool), inv_scale, int(conv.zero_point), layout, q,
                        _launch("quantize_u8"))  # fmt: skip
    return q


def packed_shortcut(shortcut: nn.Module | None) -> nn.Module | None:
    """``PackedDownsample`` for a ``pool -> conv -> bn`` shortcut with a plain 2x2/2 average
    pool; any other shortcut is kept as it is."""
    pool = getattr(shortcut, "pool", None)
    if (
        isinstance(pool, nn.AvgPool2d)
        and pool.kernel_size in (2, (2, 2))
        and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0))
        and not pool.ceil_mode
        and pool.divisor_override is None
        and hasattr(shortcut, "conv")
        and hasattr(shortcut, "bn")
    ):
        return PackedDownsample(pool, shortcut.conv, shortcut.bn)
    return shortcut


def _gate_weights(gate: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W1, W2)`` when ``gate(y)`` is ``sigmoid(W2 relu(W1 mean_hw(y)))`` computed by the same
    PyTorch ops as its functional form (checked on a probe), so the engine can call those ops
    directly and skip the module calls; else ``None``."""
    fc1, fc2 = getattr(gate, "fc1", None), getattr(gate, "fc2", None)
    if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
        return None
    if fc1.bias is not None or fc2.bias is not None:
        return None
    w1, w2 = fc1.weight.detach(), fc2.weight.detach()
    probe = torch.randn(2, fc1.in_features, 3, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = gate(probe).reshape(2, -1)
        got = torch.sigmoid(F.linear(F.relu(F.linear(probe.mean(dim=(2, 3)), w1)), w2))
    return (w1, w2) if torch.equal(expected, got) else None


def _pool_params(pool: nn.Module | None) -> tuple[int, int, int] | None:
    """``(kernel, stride, padding)`` of a plain square max-pool, ``(0, 1, 0)`` for none, or
    ``None`` when the compiled stem cannot reproduce it."""
    if pool is None or isinstance(pool, nn.Identity):
        return (0, 1, 0)
    if not isinstance(pool, nn.MaxPool2d) or pool.ceil_mode or pool.return_indices:
        return None
    k, s, p, d = (pool.kernel_size, pool.stride, pool.padding, pool.dilation)
    if not all(isinstance(v, int) for v in (k, s, p, d)) or d != 1:
        return None
    return (k, s, p)


def _f32(t: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy view (or copy) of a CPU tensor."""
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    return t.contiguous().numpy()
