"""Compiled CPU kernels of the packed engine: sign-and-pack, XOR/popcount convolution, epilogue.

Bit convention (``r2b.packed.bitpack``): a ±1 value is one bit, ``1`` for ``-1`` and ``0`` for
``+1``; channels are packed along 64-bit words, channel ``c`` is bit ``c % 64`` of word ``c // 64``.
For two ±1 vectors ``a, b`` of length ``K`` packed that way (unused tail bits zero in both),

    sum_i a_i * b_i = K - 2 * popcount(a XOR b)

(each differing pair contributes ``-1`` instead of ``+1``). A ``k x k`` binary convolution sums
that over its taps; with padding by ``+1`` the padded taps are zero words, so the padded input is a
zeroed border and ``K = k * k * C`` for every output pixel (Rastegari et al., XNOR-Net, 2016;
the popcount formulation as in Larq Compute Engine, Bannink et al. 2021).

Layouts:

- packed activations ``xp``: ``(N, H + 2p, W + 2p, Kw)`` uint64, ``Kw = ceil(C / 64)``, NHWC with
  the channel words innermost and a zero (``+1``) border of width ``p``.
- packed weights ``wb``: ``(kh * kw * Kw, Opad)`` uint64, row ``(i * kw + j) * Kw + word``,
  output channels innermost (``Opad`` = ``O`` rounded up to 8), so that the inner loop runs over
  output channels in 512-bit vectors: one activation word is broadcast, XOR-ed with 8 weight
  words, popcounted (``VPOPCNTQ`` on AVX-512, a byte-table sequence on AVX2/NEON) and added.
- convolution output: ``(N, O, OH, OW)``, the layout of the PyTorch layers around it.

Blocking: a task is one output row of one image for one block of ``_OB`` output channels
(``prange`` over tasks, so both small and large maps split evenly over the threads); inside it
``_MR`` output pixels share every weight vector load. Integer accumulators are ``int32``.

All kernels are compiled by numba (LLVM) for the host CPU and cached on disk (``cache=True``).
The float epilogue is compiled *without* fast-math: its multiply, PReLU and add are rounded one by
one exactly as PyTorch's ops are, so the packed network reproduces the float network bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

#: Output channels per task (a multiple of 8: one 512-bit vector of uint64 holds 8).
_OB = 64
#: Output pixels per inner tile (they share the weight vector loads).
_MR = 4


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of an unsigned integer: LLVM's ``ctpop``, which vectorises."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


@njit(parallel=True, cache=True)
def pack_signs(y, pad, out):
    """Pack ``sign(y)`` of a float ``(N, C, H, W)`` array into ``out`` ``(N, H+2p, W+2p, Kw)``.

    Bit ``c % 64`` of word ``c // 64`` is ``1`` where ``not (y >= 0)`` (value ``-1``; ``sign(0) =
    +1`` as the training quantizer). Only the interior is written: the border must already be 0.
    """
    n_img, channels, height, width = y.shape
    n_words = out.shape[3]
    for task in prange(n_img * height):
        n = task // height
        h = task - n * height
        row = np.empty(width, np.uint64)
        for word in range(n_words):
            row[:] = 0
            c0 = word * 64
            c1 = min(channels, c0 + 64)
            for c in range(c0, c1):
                shift = np.uint64(c - c0)
                src = y[n, c, h]
                for w in range(width):
                    bit = np.uint64(0) if src[w] >= 0 else np.uint64(1)
                    row[w] |= bit << shift
            dst = out[n, h + pad]
            for w in range(width):
                dst[w + pad, word] = row[w]


@njit(inline="always")
def _conv_row(xp, wb, n, oh, o0, n_out, kh, kw, stride, out_w, acc):
    """Mismatch counts of one output row: ``acc[ow, o] = sum popcount(x XOR w)`` for
    output channels ``o0 .. o0 + n_out`` (``n_out`` a multiple of 8 within ``Opad``)."""
    n_words = xp.shape[3]
    for ow0 in range(0, out_w, _MR):
        # pixels of the tile; past the row end they repeat the last pixel and are not stored
        p0 = ow0
        p1 = min(ow0 + 1, out_w - 1)
        p2 = min(ow0 + 2, out_w - 1)
        p3 = min(ow0 + 3, out_w - 1)
        a0 = acc[0]
        a1 = acc[1]
        a2 = acc[2]
        a3 = acc[3]
        a0[:n_out] = 0
        a1[:n_out] = 0
        a2[:n_out] = 0
        a3[:n_out] = 0
        for i in range(kh):
            src = xp[n, oh * stride + i]
            for j in range(kw):
                c0 = p0 * stride + j
                c1 = p1 * stride + j
                c2 = p2 * stride + j
                c3 = p3 * stride + j
                for word in range(n_words):
                    x0 = src[c0, word]
                    x1 = src[c1, word]
                    x2 = src[c2, word]
                    x3 = src[c3, word]
                    wrow = wb[(i * kw + j) * n_words + word, o0 : o0 + n_out]
                    for o in range(n_out):
                        wv = wrow[o]
                        a0[o] += np.int32(popcount(x0 ^ wv))
                        a1[o] += np.int32(popcount(x1 ^ wv))
                        a2[o] += np.int32(popcount(x2 ^ wv))
                        a3[o] += np.int32(popcount(x3 ^ wv))
        for t in range(min(_MR, out_w - ow0)):
            dst = acc[_MR + ow0 + t]
            srow = acc[t]
            for o in range(n_out):
                dst[o] = srow[o]


def _blocks(n_channels_padded: int) -> tuple[int, int]:
    """(block width, number of blocks) of the output channels."""
    width = min(_OB, n_channels_padded)
    return width, (n_channels_padded + width - 1) // width


@njit(parallel=True, cache=True)
def conv_int(xp, wb, n_out_ch, k_total, kh, kw, stride, out):
    """Integer binary convolution ``out[n, o, oh, ow] = K - 2 * mismatches`` (int32 output).

    Equals ``conv2d(pad(sign(x), +1), sign(W))`` exactly: the integer result of the float graph.
    """
    n_img = xp.shape[0]
    out_h, out_w = out.shape[2], out.shape[3]
    o_pad = wb.shape[1]
    blk = min(_OB, o_pad)
    n_blk = (o_pad + blk - 1) // blk
    for task in prange(n_img * out_h * n_blk):
        b = task % n_blk
        r = task // n_blk
        oh = r % out_h
        n = r // out_h
        o0 = b * blk
        n_o = min(blk, o_pad - o0)
        acc = np.empty((_MR + out_w, blk), np.int32)
        _conv_row(xp, wb, n, oh, o0, n_o, kh, kw, stride, out_w, acc)
        for o in range(min(n_o, n_out_ch - o0)):
            for ow in range(out_w):
                out[n, o0 + o, oh, ow] = k_total - 2 * acc[_MR + ow, o]


@njit(parallel=True, cache=True)
def conv_epilogue(xp, wb, n_out_ch, k_total, kh, kw, stride, alpha, gain, slope, shortcut, out):
    """Binary convolution fused with the half block's float epilogue (float32, no fast-math)::

        c   = float(K - 2 * mismatches)          exact integer
        v   = (c * alpha[o]) * gain[n, o]        weight scale, then learned scale or gate
        out = (v if v > 0 else slope[o] * v) + shortcut[n, o, oh, ow]      PReLU, residual add

    Each product and the add round once, in PyTorch's order, so ``out`` is bit-identical to the
    float half block (``alpha = 1`` when the conv has no weight scale: multiplying by 1 is exact).
    """
    n_img = xp.shape[0]
    out_h, out_w = out.shape[2], out.shape[3]
    o_pad = wb.shape[1]
    blk = min(_OB, o_pad)
    n_blk = (o_pad + blk - 1) // blk
    for task in prange(n_img * out_h * n_blk):
        b = task % n_blk
        r = task // n_blk
        oh = r % out_h
        n = r // out_h
        o0 = b * blk
        n_o = min(blk, o_pad - o0)
        acc = np.empty((_MR + out_w, blk), np.int32)
        _conv_row(xp, wb, n, oh, o0, n_o, kh, kw, stride, out_w, acc)
        for o in range(min(n_o, n_out_ch - o0)):
            oc = o0 + o
            a = alpha[oc]
            g = gain[n, oc]
            s = slope[oc]
            dst = out[n, oc, oh]
            res = shortcut[n, oc, oh]
            for ow in range(out_w):
                v = np.float32(k_total - 2 * acc[_MR + ow, o]) * a
                v = v * g
                if not v > 0:
                    v = s * v
                dst[ow] = v + res[ow]
