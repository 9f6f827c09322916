"""Export to Larq Compute Engine (LCE): a TFLite flatbuffer with LCE's binary ops, for ARM.

``r2b.lce.export(model, "model.tflite", input_size=224)`` writes a fully binary r2b network
(stage ``bnn``; any family whose model describes itself through ``model.spec()``, see
``r2b.models.spec``) as a TFLite file that LCE's runtime (``lce_benchmark_model``, its C++
interpreter, its Python ``Interpreter``) runs with its hand-written binary kernels. The file is
written with the ``flatbuffers`` runtime (``r2b.lce.tflite``): no TensorFlow is needed.

Input and output
    One float32 NHWC input ``(batch, H, W, 3)``, batch 1 by default, holding the *normalised*
    image -- what r2b's model takes: ``(x / 255 - mean) / std`` per channel (``r2b.data.stats``).
    ``export(..., mean=..., std=...)`` instead prepends ``x * (1 / std) + (-mean / std)`` (a MUL
    and an ADD) so the file takes RGB scaled to [0, 1]. One float32 output: the logits
    ``(batch, classes)`` (no softmax, as r2b's model).

The binary convolution (sources: larq/compute-engine v0.16.0)
    r2b computes ``conv(pad(sign y, +1), sign W) * alpha`` with ``sign(0) = +1``
    (``r2b.layers.BinaryConv2d``). In LCE that is two custom ops:

    - ``LceQuantize`` (no options): float ``(N, H, W, C)`` -> int32 ``(N, H, W, ceil(C/32))``;
      channel ``32 k + j`` goes to bit ``j`` of word ``k``, bit = ``x < 0`` (so +0.0 -> +1, and
      -0.0 -> +1 in the portable kernel; LCE's aarch64 kernel takes the float's sign bit, which
      makes -0.0 a -1 there), unused bits 0 (``core/bitpacking/bitpack.h``,
      ``core/bitpacking/bitpack_aarch64.h``, ``tflite/kernels/quantization.cc``);
    - ``LceBconv2d``, inputs ``(bitpacked input, filter, post_activation_multiplier,
      post_activation_bias, output_threshold)`` (``mlir/ir/lce_ops.td``): the filter is int32
      ``(O, kh, kw, ceil(I/32))``, OHWI bitpacked the same way (``pack_filter``; bit 1 = the
      weight is negative); custom options are a flexbuffer map of ints ``channels_in``,
      ``dilation_height_factor``, ``dilation_width_factor``, ``fused_activation_function``,
      ``pad_values``, ``padding`` (TFLite's SAME 0 / VALID 1), ``stride_height``,
      ``stride_width`` (``mlir/ir/lce_ops.cc``, read in ``tflite/kernels/bconv2d.cc``). With
      ``accum = popcount(x XOR w)`` over the ``K = kh kw I`` taps, its float output is
      ``m (K - 2 accum) + b = m d + b``, ``d`` the +-1 dot product (``core/bconv2d/
      output_transform.h``; bconv2d.cc precomputes ``-m`` and ``b + K m``). Outside the map it
      reads the word 0, i.e. +1 on every channel, when ``pad_values=1`` (``core/bconv2d/
      reference.h``): r2b's +1 padding. ``output_threshold`` is unused (-1) for float output.

    The multiplier and bias fuse what follows the conv up to the first op LCE cannot fuse
    (as LCE's converter fuses a constant MUL/ADD after the conv): ``m = alpha * s * gamma'``,
    ``b = beta'`` for the strong baseline's learned scale ``s`` and Bi-Real's / ReActNet's BN
    after the conv (``gamma' x + beta'``); with Real-to-Binary's gate the conv carries
    ``alpha gamma'`` and the gate is a MUL after it, then ``+ beta'`` an ADD. No fused
    activation (PReLU is not one of LCE's clamps) and no bitpacked output: LCE writes int32
    bits only when a conv feeds the next sign directly, and every r2b half block adds its
    shortcut first.

Padding
    PyTorch pads ``p`` on both sides; TFLite's SAME pads ``floor(t/2)`` before and the rest
    after. Where both read the same taps (stride 1; stride 2 on odd sizes) the op uses SAME;
    where not (stride 2 on even sizes: PyTorch reads one row of padding at the top, SAME one
    at the bottom) an explicit pad op does PyTorch's padding and the op runs VALID: ``PAD`` of
    the bitpacked words with 0 (= +1 on every channel) for a binary conv, ``PAD`` with zeros
    for a float conv, ``PADV2`` with the lowest float for a max-pool. At 224x224 that is the
    stem conv, the stem max-pool and the three stride-2 binary convs.

The other layers, TFLite builtins as LCE's conversion of larq-zoo's RealToBinaryNet has them
    stem conv + BN: CONV_2D with BN folded (``W gamma'``, bias ``beta'``); PReLU: PRELU (slopes
    ``(1, 1, C)``); max-pool: MAX_POOL_2D; BN before the sign: MUL then ADD (a factor of ones or
    a zero bias left out); ReActNet's shifts: ADD; the gate: AVERAGE_POOL_2D over the map ->
    FULLY_CONNECTED (fused RELU) -> FULLY_CONNECTED -> LOGISTIC -> MUL; the downsampling
    shortcut: AVERAGE_POOL_2D 2x2 -> CONV_2D 1x1 with its BN folded; residual: ADD; pool +
    classifier: AVERAGE_POOL_2D over the map -> FULLY_CONNECTED. Eval semantics: BatchNorms
    use their running statistics whatever the model's mode. Identical constants share one
    buffer.

Checks (``r2b.lce.check``; LCE's own interpreter in a second environment, ``r2b.lce.runtime``)
    On random-weight models of the four families and both stems the top-1 of LCE and r2b agree
    on 99.9-100% of the inputs (``benchmarks/results/lce_check.md``); logits differ by ~1e-6 of
    their range except on the ~1% of inputs where a binarised value within float rounding of 0
    (|y| < 4e-7 max|y|) lands on the other side, after which they differ by 1-20%; the binary
    convs give exactly r2b's integer dot products (``bconv_flatbuffer``: bit for bit in all
    three of LCE's x86 kernels).

Sources (github.com/larq/compute-engine at v0.16.0): ``larq_compute_engine/mlir/ir/lce_ops.td``
and ``lce_ops.cc`` (op operands and the options flexbuffer), ``larq_compute_engine/tflite/
kernels/bconv2d.cc`` and ``quantization.cc`` (what the runtime reads and checks),
``larq_compute_engine/core/bconv2d/params.h``, ``output_transform.h`` and ``reference.h`` (the
arithmetic and the padding), ``larq_compute_engine/core/bitpacking/bitpack.h`` (bit order and
sign); the TFLite schema ``tensorflow/lite/schema/schema.fbs`` (``r2b.lce.tflite``); and the
flatbuffer LCE's converter makes of larq-zoo's RealToBinaryNet
(``benchmarks/results/lce_ops.json``).
"""

import importlib

#: public name -> the submodule that defines it (imported on first use, so that
#: ``python -m r2b.lce.runtime`` works without the ``flatbuffers`` package)
_NAMES = {
    "PROBES": "convert", "bconv_flatbuffer": "convert", "export": "convert",
    "pack_filter": "convert", "op_histogram": "tflite", "read": "tflite",
}  # fmt: skip

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"r2b.lce.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'r2b.lce' has no attribute {name!r}")
