"""Bit packing of ±1 tensors along channels into 64-bit words.

Convention (shared by the kernels and the file format): value ``-1`` is bit ``1``, value ``+1`` is
bit ``0``; channel ``c`` is bit ``c % 64`` (least significant first) of word ``c // 64``, words
little-endian. Tail bits past the last channel are ``0`` in activations and weights alike, so they
never count as a mismatch in ``popcount(x XOR w)``.

Weights are stored canonically as ``(O, kh, kw, Kw)`` words (one row of taps per output channel,
as a conv weight ``(O, C, kh, kw)`` with ``C`` packed); the kernels use
``(ceil(O / 16), kh * kw * Kw, 16)``: blocks of 16 output channels, channels innermost.
"""

from __future__ import annotations

import numpy as np
import torch

WORD_BITS = 64


def n_words(channels: int) -> int:
    """64-bit words holding ``channels`` bits: ``ceil(channels / 64)``."""
    return (channels + WORD_BITS - 1) // WORD_BITS


def pack_bits(negative: np.ndarray) -> np.ndarray:
    """Pack a boolean array along its last axis (``True`` = value -1) into uint64 words."""
    negative = np.asarray(negative, dtype=bool)
    channels = negative.shape[-1]
    padded = n_words(channels) * WORD_BITS
    if padded != channels:
        pad = np.zeros(negative.shape[:-1] + (padded - channels,), dtype=bool)
        negative = np.concatenate([negative, pad], axis=-1)
    packed = np.packbits(negative, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of ``pack_bits``: a boolean array whose last axis has ``channels`` entries."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")
    return bits[..., :channels].astype(bool)


def pack_weight(weight: torch.Tensor) -> np.ndarray:
    """Canonical bits ``(O, kh, kw, Kw)`` of ``sign(weight)`` for a conv weight ``(O, C, kh, kw)``.

    ``sign(0) = +1``, as the training quantizer (``x >= 0`` is ``+1``; anything else is ``-1``).
    """
    w = weight.detach().cpu().float().permute(0, 2, 3, 1).numpy()
    return pack_bits(~(w >= 0))


def unpack_weight(bits: np.ndarray, channels: int) -> torch.Tensor:
    """The ±1 float weight ``(O, C, kh, kw)`` that canonical ``bits`` encode."""
    negative = unpack_bits(bits, channels)
    signs = np.where(negative, np.float32(-1.0), np.float32(1.0))
    return torch.from_numpy(np.ascontiguousarray(signs.transpose(0, 3, 1, 2)))


def kernel_layout(bits: np.ndarray, block: int = 16) -> np.ndarray:
    """Canonical ``(O, kh, kw, Kw)`` bits -> the kernels' ``(ceil(O / block), kh*kw*Kw, block)``.

    Output channels are grouped in blocks of ``block``; a block's rows (one per tap and word, in
    the order ``(i * kw + j) * Kw + word``) are contiguous. Padding channels of the last block are
    zero and their results are never stored.
    """
    out_ch = bits.shape[0]
    n_blocks = -(-out_ch // block)
    rows = np.zeros((n_blocks * block, int(np.prod(bits.shape[1:]))), dtype=np.uint64)
    rows[:out_ch] = bits.reshape(out_ch, -1)
    return np.ascontiguousarray(rows.reshape(n_blocks, block, -1).transpose(0, 2, 1))
