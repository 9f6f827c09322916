"""Compiled CPU kernels of the packed engine: BN-sign-pack, XOR/popcount convolution, epilogues.

Bit convention (``r2b.packed.bitpack``): a ±1 value is one bit, ``1`` for ``-1`` and ``0`` for
``+1``; channels are packed along 64-bit words, channel ``c`` is bit ``c % 64`` of word ``c // 64``.
For two ±1 vectors ``a, b`` of length ``K`` packed that way (unused tail bits zero in both),

    sum_i a_i * b_i = K - 2 * popcount(a XOR b)

(each differing pair contributes ``-1`` instead of ``+1``; XNOR-Net, Rastegari et al. 2016). A
``k x k`` binary convolution sums that over its taps. Padding by ``+1`` is a border of zero words
(padding by ``-1`` a border of all-ones words), so every output has ``K = k * k * C`` products.

Layouts:

- packed activations ``xp``: ``(N, H + 2p, W + 2p, Kw)`` uint64, ``Kw = ceil(C / 64)``, NHWC with
  the channel words innermost and the padding border already in place.
- packed weights ``wt``: ``(ceil(O / 16), kh * kw * Kw, 16)`` uint64: blocks of 16 output channels,
  one row of 16 words per (tap, word) in the order ``(i * kw + j) * Kw + word``.
- float tensors: ``(N, C, H, W)``, the layout of the PyTorch layers around the kernels.

Register tiles (``_tile8``, ``_tile``, ``_tile2``, ``_tile1``): 8, 4, 2 or 1 output pixels of a
row x 16 output channels, accumulated in vector registers of 8 x int64 over all taps. Per (tap,
word) of the 4-pixel tile: 2 weight vector loads, 4 broadcasts, 8 XOR, 8 popcounts (``VPOPCNTQ``
on AVX-512 VPOPCNTDQ; LLVM lowers the same IR to byte-table popcounts on AVX2 and ``CNT`` on
NEON), 8 adds; at the end an in-register transpose stores the counts channel-major (int32). The
tiles are LLVM IR written through numba intrinsics because LLVM's loop vectoriser, left alone,
vectorises the reduction over taps instead and keeps the accumulators in memory.

The int8 stem (``int8_stem``) has tiles of its own (``_make_dot_tile``): 4 or 1 output pixels x
64 or 16 channels in int32 vectors, ``VPDPBUSD`` (AVX-512 VNNI) adding 4 uint8 x int8 products a
lane per instruction over a kernel row's window of ``kw * C`` contiguous input bytes.

Tasks: a task is a group of whole output rows of one image for 64 output channels (one word of
the next layer's packed input); a group holds about ``_ROW_PIXELS`` pixels, fewer when that would
leave less than 4 tasks per thread, so that the float loops run over long contiguous stretches of
NCHW planes and maps of every size still split evenly over the threads.

Float arithmetic is PyTorch's, operation by operation (compiled *without* fast-math, so nothing is
contracted or reordered): BatchNorm in eval mode is ``y = x * a + b`` with PyTorch's per-channel
``a, b`` (``bn_coefficients``), computed as a fused multiply-add or as a product and a sum --
whichever this machine's PyTorch does, found by ``probe_bn_mode``; then ``sign``, PReLU
``v > 0 ? v : w * v``, the scale products and the residual add, each rounded once. The packed
network therefore reproduces the float network bit for bit.

Kernels run as tasks on PyTorch's OpenMP threads (``r2b.packed.parallel``); all are compiled by
numba for the host CPU (LLVM, ``-march`` of this machine) and cached on disk (``cache=True``; the
task loops on first use, see ``worker_address``).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Output channels of a register tile (2 vectors of 8 x uint64).
TILE_O = 16
#: Output pixels of the basic register tile (there are 8-, 2- and 1-pixel tiles too).
TILE_P = 4
#: Output channels per task: one 64-bit word of the next layer's packed input.
TASK_O = 64

#: BatchNorm arithmetic: ``y = x`` (already normalised), ``fma(x, a, b)``, ``x * a + b``.
BN_NONE, BN_FMA, BN_MUL_ADD = 0, 1, 2

_WORKER_SIG = types.void(types.voidptr)


# ------------------------------------------------------------------ launching on OpenMP threads
# A kernel is a C callback (``cfunc``) that takes tasks from an atomic counter; the launcher
# (``njit``) packs its arguments into one int64 array -- scalars as they are, arrays as address
# and shape -- and hands callback and array to ``GOMP_parallel`` of PyTorch's OpenMP runtime
# (``r2b.packed.parallel``). All compiled code lives in this file because numba's disk cache
# tracks only the file that defines a function.

#: Slots of a worker's argument array used by the launcher itself; kernel arguments follow.
ARG_TID_FN, ARG_COUNTER, ARG_N_TASKS = 0, 1, 2


def arg_layout(name: str, fields: list[tuple[str, int]]) -> tuple:
    """The slots of a kernel's argument array, declared once for its launcher and its worker.

    ``fields``: ``(name, ndim)`` in order; an array of ``ndim`` dimensions takes ``1 + ndim``
    slots (address, then its shape), a scalar (``ndim = 0``) one. The result is a named tuple
    of ints (numba reads a global one as compile-time constants): each field's first slot, by
    its upper-case name, and ``SIZE``, the length of the argument array.
    """
    names, slots, slot = [], [], ARG_N_TASKS + 1
    for field, ndim in fields:
        names.append(field.upper())
        slots.append(slot)
        slot += 1 + ndim if ndim else 1
    return namedtuple(name, [*names, "SIZE"])(*slots, slot)


@intrinsic
def _call_parallel(typingctx, par_addr, worker_addr, data_addr, n_threads):
    """``GOMP_parallel(worker, data, n_threads, 0)`` through its address."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        par, worker, data, n_threads = args
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        wty = ir.FunctionType(ir.VoidType(), [i8p])
        pty = ir.FunctionType(ir.VoidType(), [wty.as_pointer(), i8p, i32, i32])
        fn = builder.inttoptr(par, pty.as_pointer())
        builder.call(
            fn,
            [builder.inttoptr(worker, wty.as_pointer()), builder.inttoptr(data, i8p),
             builder.trunc(n_threads, i32), ir.Constant(i32, 0)],
        )  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _call_worker(typingctx, worker_addr, data_addr):
    """``worker(data)`` on the calling thread."""
    sig = types.void(types.intp, types.intp)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        wty = ir.FunctionType(ir.VoidType(), [i8p])
        fn = builder.inttoptr(args[0], wty.as_pointer())
        builder.call(fn, [builder.inttoptr(args[1], i8p)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fetch_add(typingctx, addr):
    """Atomically ``*addr += 1`` on an int64; returns the old value."""
    sig = types.int64(types.intp)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        ptr = builder.inttoptr(args[0], i64.as_pointer())
        return builder.atomic_rmw("add", ptr, ir.Constant(i64, 1), "monotonic")

    return sig, codegen


def _pointer_cast(numba_type):
    @intrinsic
    def cast(typingctx, addr):
        sig = types.CPointer(numba_type)(types.intp)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(numba_type).as_pointer())

        return sig, codegen

    return cast


@intrinsic
def _void_to_int(typingctx, ptr):
    sig = types.intp(types.voidptr)

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], ir.IntType(64))

    return sig, codegen


_as_f32 = _pointer_cast(types.float32)
_as_u64 = _pointer_cast(types.uint64)
_as_i64 = _pointer_cast(types.int64)
_as_i32 = _pointer_cast(types.int32)
_as_u8 = _pointer_cast(types.uint8)


@njit(inline="always")
def _put_array(args, slot, arr):
    """Store ``arr``'s address and shape at ``args[slot:]``; returns the next free slot."""
    args[slot] = arr.ctypes.data
    for d in range(arr.ndim):
        args[slot + 1 + d] = arr.shape[d]
    return slot + 1 + arr.ndim


@njit(inline="always")
def _args_view(data, n):
    return carray(_as_i64(_void_to_int(data)), (n,))


@njit(inline="always")
def _get_f32_1d(args, s):
    return carray(_as_f32(args[s]), (args[s + 1],))


@njit(inline="always")
def _get_f32_2d(args, s):
    return carray(_as_f32(args[s]), (args[s + 1], args[s + 2]))


@njit(inline="always")
def _get_f32_4d(args, s):
    return carray(_as_f32(args[s]), (args[s + 1], args[s + 2], args[s + 3], args[s + 4]))


@njit(inline="always")
def _get_i32_4d(args, s):
    return carray(_as_i32(args[s]), (args[s + 1], args[s + 2], args[s + 3], args[s + 4]))


@njit(inline="always")
def _get_i32_3d(args, s):
    return carray(_as_i32(args[s]), (args[s + 1], args[s + 2], args[s + 3]))


@njit(inline="always")
def _get_u8_4d(args, s):
    return carray(_as_u8(args[s]), (args[s + 1], args[s + 2], args[s + 3], args[s + 4]))


@njit(inline="always")
def _get_u64_3d(args, s):
    return carray(_as_u64(args[s]), (args[s + 1], args[s + 2], args[s + 3]))


@njit(inline="always")
def _get_u64_4d(args, s):
    return carray(_as_u64(args[s]), (args[s + 1], args[s + 2], args[s + 3], args[s + 4]))


@njit(inline="always")
def _next_task(args):
    """The next task index for this thread (``>= n_tasks`` when none is left)."""
    return _fetch_add(args.ctypes.data + 8 * ARG_COUNTER)


@njit(inline="always")
def _run_parallel(args, n_tasks, launch, work_ns):
    """Run the worker ``launch[2]`` over ``n_tasks`` tasks on ``launch[3]`` OpenMP threads, or on
    the calling thread when the estimated single-thread time ``work_ns`` is below ``launch[4]``
    (waking sleeping threads costs more than such a kernel gains from them).

    Returns the final task counter (at least ``n_tasks``).
    """
    par, tid, worker, n_threads, min_parallel_ns = launch
    args[ARG_TID_FN] = tid  # reserved: omp_get_thread_num, for kernels that need it
    args[ARG_COUNTER] = 0
    args[ARG_N_TASKS] = n_tasks
    n_threads = min(n_threads, n_tasks)
    if par != 0 and n_threads > 1 and work_ns >= min_parallel_ns:
        _call_parallel(par, worker, args.ctypes.data, n_threads)
    else:
        _call_worker(worker, args.ctypes.data)
    # A use of ``args`` after the call: numba frees an array after its last use, and the workers
    # read it through a raw address that numba does not track.
    return args[ARG_COUNTER]


# ------------------------------------------------------------------ intrinsics


@intrinsic
def _fma(typingctx, x, a, b):
    """``x * a + b`` rounded once (LLVM ``fma``; vectorisable)."""
    if not all(isinstance(t, types.Float) for t in (x, a, b)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return x(x, a, b), codegen


def _accumulate_taps(builder, vec, n_pix, n_vec, xbase, xrow, wbase, kh, q_len, load_x, combine):
    """The loop both register tiles share: ``n_pix * n_vec`` zeroed accumulator vectors, then for
    each kernel row ``i < kh`` and word ``q < q_len`` the ``n_vec`` weight vectors at
    ``wbase + (i * q_len + q) * width`` (``width = lanes * n_vec``), each pixel's input
    ``load_x(row i of x, t, q)`` broadcast to every lane, and ``acc = combine(acc, x, w)``.
    Returns the accumulators' slots, pixel-major (``t * n_vec + v``)."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    lanes = vec.count
    width = lanes * n_vec
    splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
    w_align = vec.element.width // 8
    slots = []
    for _ in range(n_pix * n_vec):
        slot = cgutils.alloca_once(builder, vec)
        builder.store(ir.Constant(vec, [0] * lanes), slot)
        slots.append(slot)
    w_row = builder.mul(q_len, ir.Constant(i64, width))
    with cgutils.for_range(builder, kh) as row_loop:
        xi = builder.gep(xbase, [builder.mul(row_loop.index, xrow)])
        wi = builder.gep(wbase, [builder.mul(row_loop.index, w_row)])
        with cgutils.for_range(builder, q_len) as loop:
            q = loop.index
            wq = builder.gep(wi, [builder.mul(q, ir.Constant(i64, width))])
            wv = []
            for v in range(n_vec):
                ptr = builder.bitcast(builder.gep(wq, [ir.Constant(i64, lanes * v)]),
                                      vec.as_pointer())  # fmt: skip
                wv.append(builder.load(ptr, align=w_align))
            for t in range(n_pix):
                xv = builder.insert_element(ir.Constant(vec, ir.Undefined), load_x(xi, t, q),
                                            ir.Constant(i32, 0))  # fmt: skip
                xv = builder.shuffle_vector(xv, ir.Constant(vec, ir.Undefined), splat)
                for v in range(n_vec):
                    slot = slots[t * n_vec + v]
                    builder.store(combine(builder.load(slot), xv, wv[v]), slot)
    return slots


def _make_tile(n_pix: int, n_vec: int):
    """A numba intrinsic ``tile(xaddr, xpix, xrow, waddr, kh, q_len, out_addr, out_stride)``.

    Mismatch counts of ``n_pix`` pixels x ``8 * n_vec`` output channels::

        out[o * out_stride + t] = sum_{i < kh, q < q_len}
            popcount(x[xaddr + t*xpix + i*xrow + q] XOR w[waddr + (i*q_len + q) * 8*n_vec + o])

    (``x``, ``w``: uint64 words from byte addresses ``xaddr``, ``waddr``, strides in words;
    ``out``: int32 from byte address ``out_addr``, channel-major so that the float epilogue reads
    contiguous pixels; the 8 x ``n_pix`` transpose happens in registers).
    """
    lanes = 8

    def codegen(context, builder, signature, args):
        xaddr, xpix, xrow, waddr, kh, q_len, out_addr, out_stride = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(i64, lanes)
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec]), "llvm.ctpop.v8i64"
        )
        xbase = builder.inttoptr(xaddr, i64.as_pointer())
        wbase = builder.inttoptr(waddr, i64.as_pointer())
        obase = builder.inttoptr(out_addr, i32.as_pointer())

        def load_x(xi, t, q):  # word q of pixel t: words apart
            off = builder.add(builder.mul(ir.Constant(i64, t), xpix), q)
            return builder.load(builder.gep(xi, [off]), align=8)

        def mismatches(acc, xv, wv):
            return builder.add(acc, builder.call(ctpop, [builder.xor(xv, wv)]))

        slots = _accumulate_taps(builder, vec, n_pix, n_vec, xbase, xrow, wbase, kh, q_len,
                                 load_x, mismatches)  # fmt: skip
        v32 = ir.VectorType(i32, lanes)
        for v in range(n_vec):
            counts = [builder.trunc(builder.load(slots[t * n_vec + v]), v32) for t in range(n_pix)]
            if n_pix in (2, 4, 8):
                # pixel-major [p0: ch0..7 | p1: ch0..7 | ...] -> channel-major rows of n_pix
                while len(counts) > 1:
                    size = 2 * counts[0].type.count
                    mask = ir.Constant(ir.VectorType(i32, size), list(range(size)))
                    counts = [builder.shuffle_vector(counts[k], counts[k + 1], mask)
                              for k in range(0, len(counts), 2)]  # fmt: skip
                allc = counts[0]
                total = lanes * n_pix
                order = [t * lanes + o for o in range(lanes) for t in range(n_pix)]
                allc = builder.shuffle_vector(allc, allc, ir.Constant(ir.VectorType(i32, total),
                                                                      order))  # fmt: skip
                chunk = ir.VectorType(i32, n_pix)
                for o in range(lanes):
                    part = builder.shuffle_vector(allc, allc, ir.Constant(
                        chunk, list(range(n_pix * o, n_pix * o + n_pix))))  # fmt: skip
                    row = builder.mul(ir.Constant(i64, v * lanes + o), out_stride)
                    ptr = builder.bitcast(builder.gep(obase, [row]), chunk.as_pointer())
                    builder.store(part, ptr, align=4)
            else:
                for t in range(n_pix):
                    for o in range(lanes):
                        row = builder.mul(ir.Constant(i64, v * lanes + o), out_stride)
                        ptr = builder.gep(obase, [builder.add(row, ir.Constant(i64, t))])
                        builder.store(builder.extract_element(counts[t], ir.Constant(i32, o)),
                                      ptr)  # fmt: skip
        return context.get_dummy_value()

    def typer(typingctx, xaddr, xpix, xrow, waddr, kh, q_len, out_addr, out_stride):
        sig = types.void(*([types.intp] * 8))
        return sig, codegen

    return intrinsic(typer)


_tile8 = _make_tile(8, TILE_O // 8)
_tile = _make_tile(TILE_P, TILE_O // 8)
_tile2 = _make_tile(2, TILE_O // 8)
_tile1 = _make_tile(1, TILE_O // 8)


#: Output channels of an int8 register vector (16 x int32 lanes).
DOT_LANES = 16


def _make_dot_tile(n_pix: int, n_vec: int):
    """A numba intrinsic ``tile(xaddr, xpix, xrow, waddr, kh, q_len, out_addr, out_pix, corr)``
    of an int8 convolution with AVX-512 VNNI (``VPDPBUSD``: 4 uint8 x int8 products summed
    into each int32 lane), ``n_pix`` output pixels x ``16 * n_vec`` output channels::

        acc[t, o] = sum_{i < kh, q < q_len} dot4(x[xaddr + t*xpix + i*xrow + 4q],
                                                w[waddr + (i*q_len + q) * 16*n_vec + o])
        out[t * out_pix + o] = float32(acc[t, o] - corr[o])

    (``x``: the uint8 input, byte address and byte strides, read 4 bytes at a time at any
    alignment; ``w``: int32 words of 4 int8 weights; ``dot4`` the sum of the 4 byte products;
    ``out``: float32 pixel-major rows, ``out_pix`` floats apart; ``corr``: int32 per channel).
    Only on a CPU with AVX-512 VNNI (``has_vnni``): LLVM cannot lower the instruction elsewhere.
    """
    lanes = DOT_LANES

    def codegen(context, builder, signature, args):
        xaddr, xpix, xrow, waddr, kh, q_len, out_addr, out_pix, corr_addr = args
        i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
        vec, fvec = ir.VectorType(i32, lanes), ir.VectorType(f32, lanes)
        dot = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), "llvm.x86.avx512.vpdpbusd.512"
        )
        xbase = builder.inttoptr(xaddr, i8.as_pointer())
        wbase = builder.inttoptr(waddr, i32.as_pointer())
        obase = builder.inttoptr(out_addr, f32.as_pointer())
        cbase = builder.inttoptr(corr_addr, i32.as_pointer())

        def vector_at(base, offset, vtype):
            ptr = builder.gep(base, [offset])
            return builder.bitcast(ptr, vtype.as_pointer())

        def load_x(xi, t, q):  # bytes 4q .. 4q + 3 of pixel t's window: bytes apart
            off = builder.add(builder.mul(ir.Constant(i64, t), xpix),
                              builder.mul(q, ir.Constant(i64, 4)))  # fmt: skip
            return builder.load(vector_at(xi, off, i32), align=1)

        def products(acc, xv, wv):
            return builder.call(dot, [acc, xv, wv])

        slots = _accumulate_taps(builder, vec, n_pix, n_vec, xbase, xrow, wbase, kh, q_len,
                                 load_x, products)  # fmt: skip
        corr = [builder.load(vector_at(cbase, ir.Constant(i64, lanes * v), vec), align=4)
                for v in range(n_vec)]  # fmt: skip
        for t in range(n_pix):
            row = builder.mul(ir.Constant(i64, t), out_pix)
            for v in range(n_vec):
                acc = builder.sub(builder.load(slots[t * n_vec + v]), corr[v])
                dst = vector_at(obase, builder.add(row, ir.Constant(i64, lanes * v)), fvec)
                builder.store(builder.sitofp(acc, fvec), dst, align=4)
        return context.get_dummy_value()

    def typer(typingctx, xaddr, xpix, xrow, waddr, kh, q_len, out_addr, out_pix, corr):
        return types.void(*([types.intp] * 9)), codegen

    return intrinsic(typer)


#: int8 tiles: 4 or 1 pixels x 64 (4 vectors) or 16 (1 vector) output channels.
_dot4x4 = _make_dot_tile(4, 4)
_dot1x4 = _make_dot_tile(1, 4)
_dot4x1 = _make_dot_tile(4, 1)
_dot1x1 = _make_dot_tile(1, 1)


def has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI (what the int8 tiles are written in), as LLVM sees it."""
    from llvmlite import binding

    return bool(binding.get_host_cpu_features().get("avx512vnni", False))


# ------------------------------------------------------------------ shared pieces

#: Output pixels a task aims at (whole output rows), so that the float loops run long.
_ROW_PIXELS = 128


@njit(inline="always")
def _rows_per_task(out_h, out_w, n_other, n_threads):
    """Output rows per task: about ``_ROW_PIXELS`` pixels, fewer when that would leave less
    than 4 tasks per thread (``n_other`` = images x channel blocks)."""
    group = max(1, min(out_h, (_ROW_PIXELS + out_w - 1) // out_w))
    while group > 1 and n_other * ((out_h + group - 1) // group) < 4 * n_threads:
        group = (group + 1) // 2 if group > 2 else 1
    return group


@njit(inline="always")
def _plane(arr, n, c, start, length):
    """Elements ``start .. start + length`` of plane ``(n, c)`` of a C-contiguous 4-D float32
    array, as a 1-D view (channel planes are contiguous in NCHW)."""
    base = ((n * arr.shape[1] + c) * arr.shape[2] * arr.shape[3] + start) * 4
    return carray(_as_f32(arr.ctypes.data + base), (length,))


@njit(inline="always")
def _bn_sign(src, mode, a, b, shift, bits, y, write_y):
    """``v = BN(src)`` (arithmetic ``mode``); ``bits |= (v < 0) << shift``; ``y = v`` if asked.

    ``v < 0`` is ``not v >= 0`` (sign(0) = +1, as the training quantizer). One loop per case, so
    that each is a plain vector loop.
    """
    one, zero = np.uint64(1), np.uint64(0)
    n = src.shape[0]
    if mode == BN_FMA:
        if write_y:
            for i in range(n):
                v = _fma(src[i], a, b)
                y[i] = v
                bits[i] |= (zero if v >= 0 else one) << shift
        else:
            for i in range(n):
                v = _fma(src[i], a, b)
                bits[i] |= (zero if v >= 0 else one) << shift
    elif mode == BN_MUL_ADD:
        if write_y:
            for i in range(n):
                v = src[i] * a + b
                y[i] = v
                bits[i] |= (zero if v >= 0 else one) << shift
        else:
            for i in range(n):
                v = src[i] * a + b
                bits[i] |= (zero if v >= 0 else one) << shift
    else:
        for i in range(n):
            bits[i] |= (zero if src[i] >= 0 else one) << shift


@njit(inline="always")
def _bn_channels(src, mode, a, b, dst):
    """``dst = BN(src)`` along channels (per-element coefficients ``a``, ``b``)."""
    if mode == BN_FMA:
        for c in range(src.shape[0]):
            dst[c] = _fma(src[c], a[c], b[c])
    elif mode == BN_MUL_ADD:
        for c in range(src.shape[0]):
            dst[c] = src[c] * a[c] + b[c]
    else:
        for c in range(src.shape[0]):
            dst[c] = src[c]


@njit(inline="always")
def _scatter_bits(bits, xp, n, oh0, oh1, out_w, pad, word):
    """Word ``word`` of the packed pixels of rows ``oh0 .. oh1`` from ``bits`` (row-major)."""
    for oh in range(oh0, oh1):
        dst = xp[n, oh + pad]
        src = bits[(oh - oh0) * out_w :]
        for ow in range(out_w):
            dst[ow + pad, word] = src[ow]


@njit(inline="always")
def _mismatch_rows(xp, wt, n, oh0, oh1, blk0, n_blk, kh, kw, stride, out_w, rows):
    """Mismatch counts of output rows ``oh0 .. oh1`` of image ``n`` for the 16-channel weight
    blocks ``blk0 .. blk0 + n_blk``: ``rows[b * 16 + o, (oh - oh0) * out_w + ow]`` (int32)."""
    hp, wp, n_words = xp.shape[1], xp.shape[2], xp.shape[3]
    q_len = kw * n_words
    xrow = wp * n_words
    xpix = stride * n_words
    r_stride = rows.shape[1]
    n8 = out_w // 8 * 8
    n4 = n8 + (out_w - n8) // 4 * 4
    n2 = n4 + (out_w - n4) // 2 * 2
    for b in range(n_blk):
        w_addr = wt.ctypes.data + 8 * ((blk0 + b) * wt.shape[1] * TILE_O)
        for oh in range(oh0, oh1):
            x0 = xp.ctypes.data + 8 * ((n * hp + oh * stride) * wp * n_words)
            r0 = rows.ctypes.data + 4 * (b * TILE_O * r_stride + (oh - oh0) * out_w)
            # pixels in tiles of 8, then at most one of 4, 2 and 1
            for ow in range(0, n8, 8):
                _tile8(x0 + 8 * ow * xpix, xpix, xrow, w_addr, kh, q_len, r0 + 4 * ow, r_stride)
            for ow in range(n8, n4, 4):
                _tile(x0 + 8 * ow * xpix, xpix, xrow, w_addr, kh, q_len, r0 + 4 * ow, r_stride)
            for ow in range(n4, n2, 2):
                _tile2(x0 + 8 * ow * xpix, xpix, xrow, w_addr, kh, q_len, r0 + 4 * ow, r_stride)
            for ow in range(n2, out_w):
                _tile1(x0 + 8 * ow * xpix, xpix, xrow, w_addr, kh, q_len, r0 + 4 * ow, r_stride)


@njit(inline="always")
def _task_block(task, n_task_o, n_groups, group, out_h, out_w):
    """``(n, channel block, first row, end row)`` of a task."""
    tb = task % n_task_o
    r = task // n_task_o
    g = r % n_groups
    n = r // n_groups
    oh0 = g * group
    return n, tb, oh0, min(out_h, oh0 + group)


# ------------------------------------------------------------------ BN + sign + pack


@njit(cache=True)
def _bn_pack_task(task, x, mode, bn_a, bn_b, pad, xp, write_y, y, group):
    """Rows ``oh0 .. oh1`` of image ``n``: ``y = BN(x)``, sign bits into ``xp`` (and ``y``)."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    n_groups = (height + group - 1) // group
    n, _, h0, h1 = _task_block(task, 1, n_groups, group, height, width)
    npix = (h1 - h0) * width
    bits = np.empty(npix, np.uint64)
    for word in range(xp.shape[3]):
        bits[:] = 0
        c0 = word * 64
        for c in range(c0, min(channels, c0 + 64)):
            src = _plane(x, n, c, h0 * width, npix)
            dst = _plane(y, n, c, h0 * width, npix) if write_y else src
            _bn_sign(src, mode, bn_a[c], bn_b[c], np.uint64(c - c0), bits, dst, write_y)
        _scatter_bits(bits, xp, n, h0, h1, width, pad, word)


#: Arguments of ``bn_pack``.
BnPackArgs = arg_layout("BnPackArgs", [
    ("x", 4), ("bn_a", 1), ("bn_b", 1), ("xp", 4), ("y", 4),
    ("mode", 0), ("pad", 0), ("write_y", 0), ("group", 0),
])  # fmt: skip


def _bn_pack_worker(data):
    A = BnPackArgs
    args = _args_view(data, A.SIZE)
    x = _get_f32_4d(args, A.X)
    bn_a = _get_f32_1d(args, A.BN_A)
    bn_b = _get_f32_1d(args, A.BN_B)
    xp = _get_u64_4d(args, A.XP)
    y = _get_f32_4d(args, A.Y)
    mode, pad, write_y, group = args[A.MODE], args[A.PAD], args[A.WRITE_Y], args[A.GROUP]
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        _bn_pack_task(task, x, mode, bn_a, bn_b, pad, xp, write_y, y, group)
        task = _next_task(args)


@njit(cache=True, nogil=True)
def bn_pack(x, mode, bn_a, bn_b, pad, xp, write_y, y, launch):
    """``xp[n, h+p, w+p]`` = sign bits of ``y = BN(x)`` over channels; ``y`` written if asked.

    ``x``, ``y``: ``(N, C, H, W)`` float32; ``xp``: ``(N, H+2p, W+2p, Kw)`` uint64 whose border
    already holds the padding; ``mode``: ``BN_NONE`` / ``BN_FMA`` / ``BN_MUL_ADD``.
    """
    A = BnPackArgs
    args = np.empty(A.SIZE, np.int64)
    _put_array(args, A.X, x)
    _put_array(args, A.BN_A, bn_a)
    _put_array(args, A.BN_B, bn_b)
    _put_array(args, A.XP, xp)
    _put_array(args, A.Y, y)
    group = _rows_per_task(x.shape[2], x.shape[3], x.shape[0], launch[3])
    args[A.MODE], args[A.PAD], args[A.WRITE_Y], args[A.GROUP] = mode, pad, write_y, group
    _run_parallel(args, x.shape[0] * ((x.shape[2] + group - 1) // group), launch, x.size // 4)


# ------------------------------------------------------------------ integer conv


@njit(cache=True)
def _task_mismatches(task, xp, wt, kh, kw, stride, group, out_h, out_w):
    """The mismatch counts of one task: image ``n``, output rows ``oh0 .. oh1``, channel task
    ``tb`` = weight blocks ``blk0 .. blk0 + n_blk``; ``rows`` is (channels, pixels)."""
    per_task = TASK_O // TILE_O
    n_task_o = (wt.shape[0] + per_task - 1) // per_task
    n_groups = (out_h + group - 1) // group
    n, tb, oh0, oh1 = _task_block(task, n_task_o, n_groups, group, out_h, out_w)
    blk0 = tb * per_task
    n_blk = min(per_task, wt.shape[0] - blk0)
    npix = (oh1 - oh0) * out_w
    rows = np.empty((n_blk * TILE_O, npix), np.int32)
    _mismatch_rows(xp, wt, n, oh0, oh1, blk0, n_blk, kh, kw, stride, out_w, rows)
    return n, tb, oh0, oh1, blk0, n_blk, npix, rows


@njit(cache=True)
def _conv_int_task(task, xp, wt, geo, out):
    k_total, kh, kw, stride, group = geo[1], geo[2], geo[3], geo[4], geo[5]
    n_out_ch, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    n, tb, oh0, oh1, blk0, n_blk, npix, rows = _task_mismatches(
        task, xp, wt, kh, kw, stride, group, out_h, out_w
    )
    o0 = blk0 * TILE_O
    for o in range(min(n_blk * TILE_O, n_out_ch - o0)):
        dst = out[n, o0 + o].reshape(out_h * out_w)[oh0 * out_w : oh1 * out_w]
        src = rows[o]
        for i in range(npix):
            dst[i] = k_total - 2 * src[i]


#: The conv's geometry: consecutive scalar slots ``(n_out_ch, K, kh, kw, stride, rows per task)``.
_GEOMETRY = [("n_out_ch", 0), ("k_total", 0), ("kh", 0), ("kw", 0), ("stride", 0), ("group", 0)]

#: Arguments of ``conv_int``.
ConvIntArgs = arg_layout("ConvIntArgs", [("xp", 4), ("wt", 3), ("out", 4), *_GEOMETRY])


def _conv_int_worker(data):
    A = ConvIntArgs
    args = _args_view(data, A.SIZE)
    xp = _get_u64_4d(args, A.XP)
    wt = _get_u64_3d(args, A.WT)
    out = _get_i32_4d(args, A.OUT)
    geo = args[A.N_OUT_CH : A.GROUP + 1]
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        _conv_int_task(task, xp, wt, geo, out)
        task = _next_task(args)


@njit(cache=True, nogil=True)
def conv_int(xp, wt, geo, out, launch):
    """Integer binary convolution ``out[n, o, oh, ow] = K - 2 * mismatches`` (int32 output).

    ``geo = (n_out_ch, K, kh, kw, stride)``. Equals ``conv2d(pad(sign(x), pad_value), sign(W))``
    of the float graph exactly.
    """
    A = ConvIntArgs
    args = np.empty(A.SIZE, np.int64)
    _put_array(args, A.XP, xp)
    _put_array(args, A.WT, wt)
    _put_array(args, A.OUT, out)
    n_task_o = (wt.shape[0] * TILE_O + TASK_O - 1) // TASK_O
    group = _rows_per_task(out.shape[2], out.shape[3], out.shape[0] * n_task_o, launch[3])
    args[A.N_OUT_CH : A.GROUP] = geo[:5]
    args[A.GROUP] = group
    n_groups = (out.shape[2] + group - 1) // group
    macs = out.size * geo[1]
    _run_parallel(args, out.shape[0] * n_groups * n_task_o, launch, macs // 1500 + out.size // 4)


# ------------------------------------------------------------------ half block


#: Epilogue activations: none, PReLU ``v > 0 ? v : a v``, RPReLU ``PReLU(v + gamma) + zeta``.
ACT_NONE, ACT_PRELU, ACT_RPRELU = 0, 1, 2

#: Arguments of ``half_block``. Per layer (``half_static``): weights, geometry, the epilogue's
#: per-channel vectors and flags, the next block's pre-sign affine; per call: the tensors.
HalfArgs = arg_layout("HalfArgs", [
    ("wt", 3), ("alpha", 1), ("slope", 1), ("post_a", 1), ("post_b", 1), ("shift_in", 1),
    ("shift_out", 1), ("bn_a", 1), ("bn_b", 1), ("res_c", 1), ("res_m", 1), ("res_b", 1),
    *_GEOMETRY,
    ("post_mode", 0), ("act", 0), ("act_after_add", 0),
    ("fuse", 0), ("bn_mode", 0), ("pad2", 0), ("write_y", 0), ("res_mode", 0),
    ("xp", 4), ("gain", 2), ("shortcut", 4), ("out", 4), ("xp2", 4), ("y2", 4), ("sums", 3),
])  # fmt: skip

#: The epilogue (post, act, act_after_add), the fused next block (fuse, bn mode, pad, write_y)
#: and the shortcut's form (``res_mode``): consecutive scalar slots of ``HalfArgs``.
_HALF_FLAGS = (int(HalfArgs.POST_MODE), int(HalfArgs.RES_MODE) + 1)

#: The shortcut the epilogue adds: the ``(N, O, OH, OW)`` float32 ``shortcut`` as it is, or
#: ``sums``, the ``(O, N, OH * OW)`` int32 sums of an int8 1x1 conv, which with the per-channel
#: integer ``c[o]`` are its exact integer sums ``acc``, dequantised in the kernel as
#: ``r2b.packed.int8.Dequantize`` does: ``float(acc) * m[o] + b[o]`` (``float(sums) + c`` is
#: ``float(acc)`` exactly: integers below 2^24).
RES_PLAIN, RES_DEQUANT = 0, 1


@njit(inline="always")
def _affine(dst, mode, a, b):
    """``dst = dst * a + b`` in place, as ``fma`` (``BN_FMA``) or a product and a sum."""
    if mode == BN_FMA:
        for i in range(dst.shape[0]):
            dst[i] = _fma(dst[i], a, b)
    elif mode == BN_MUL_ADD:
        for i in range(dst.shape[0]):
            dst[i] = dst[i] * a + b


@njit(inline="always")
def _activate(dst, act, gamma, slope, zeta):
    """PReLU (``act = ACT_PRELU``) or RPReLU (``ACT_RPRELU``) in place, one rounding a step."""
    if act == ACT_RPRELU:
        for i in range(dst.shape[0]):
            dst[i] = dst[i] + gamma
    if act != ACT_NONE:
        for i in range(dst.shape[0]):
            v = dst[i]
            if not v > 0:
                v = slope * v
            dst[i] = v
    if act == ACT_RPRELU:
        for i in range(dst.shape[0]):
            dst[i] = dst[i] + zeta


@njit(inline="always")
def _epilogue(src, k_total, a, g, s, res, dst, flags, pa, pb, gamma, zeta):
    """``dst`` = the half block's output from the mismatch counts ``src`` of one channel::

        v   = (float(K - 2 src) * alpha) * gain            gain: scale, gate or 1
        v   = post(v)                                      post BN: fma or mul-add (or none)
        out = act(v) + res   |   act(v + res)              act_after_add

    The strong-baseline / Real-to-Binary case (no post, PReLU before the add) is one loop.
    """
    post_mode, act, after = flags[0], flags[1], flags[2]
    npix = src.shape[0]
    if post_mode == BN_NONE and act == ACT_PRELU and not after:
        for i in range(npix):
            v = np.float32(k_total - 2 * src[i]) * a
            v = v * g
            if not v > 0:
                v = s * v
            dst[i] = v + res[i]
        return
    for i in range(npix):
        v = np.float32(k_total - 2 * src[i]) * a
        dst[i] = v * g
    _affine(dst, post_mode, pa, pb)
    if not after:
        _activate(dst, act, gamma, s, zeta)
    for i in range(npix):
        dst[i] = dst[i] + res[i]
    if after:
        _activate(dst, act, gamma, s, zeta)


@njit(cache=True)
def _half_task(task, xp, wt, geo, vecs, gain, shortcut, out, flags, xp2, y2, sums):
    """Rows ``oh0 .. oh1`` x 64 channels of a half block, and of the next block's packed input.

    ``geo = (n_out_ch, K, kh, kw, stride, rows per task)``; ``vecs``: the per-channel vectors
    ``(alpha, slope, post_a, post_b, shift_in, shift_out, bn_a, bn_b, res_c, res_m, res_b)``;
    ``flags = (post mode, act, act_after_add, fuse, bn mode, pad, write_y, res_mode)``.
    """
    alpha, slope, post_a, post_b, shift_in, shift_out, bn_a, bn_b, res_c, res_m, res_b = vecs
    k_total, kh, kw, stride, group = geo[1], geo[2], geo[3], geo[4], geo[5]
    fuse, mode, pad2, write_y, res_mode = flags[3], flags[4], flags[5], flags[6], flags[7]
    n_out_ch, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    n, tb, oh0, oh1, blk0, n_blk, npix, rows = _task_mismatches(
        task, xp, wt, kh, kw, stride, group, out_h, out_w
    )
    bits = np.zeros(npix, np.uint64)
    o0 = blk0 * TILE_O
    dequantised = np.empty(npix if res_mode == RES_DEQUANT else 0, np.float32)
    for o in range(min(n_blk * TILE_O, n_out_ch - o0)):
        oc = o0 + o
        dst = _plane(out, n, oc, oh0 * out_w, npix)
        if res_mode == RES_DEQUANT:
            res = dequantised
            src = sums[oc, n, oh0 * out_w : oh0 * out_w + npix]
            c, m, b = res_c[oc], res_m[oc], res_b[oc]
            for i in range(npix):
                res[i] = (np.float32(src[i]) + c) * m + b
        else:
            res = _plane(shortcut, n, oc, oh0 * out_w, npix)
        _epilogue(rows[o], k_total, alpha[oc], gain[n, oc], slope[oc], res, dst, flags,
                  post_a[oc], post_b[oc], shift_in[oc], shift_out[oc])  # fmt: skip
        if fuse:
            ydst = _plane(y2, n, oc, oh0 * out_w, npix) if write_y else dst
            _bn_sign(dst, mode, bn_a[oc], bn_b[oc], np.uint64(o), bits, ydst, write_y)
    if fuse:
        _scatter_bits(bits, xp2, n, oh0, oh1, out_w, pad2, tb)


def _half_worker(data):
    A = HalfArgs
    args = _args_view(data, A.SIZE)
    xp = _get_u64_4d(args, A.XP)
    wt = _get_u64_3d(args, A.WT)
    vecs = (
        _get_f32_1d(args, A.ALPHA), _get_f32_1d(args, A.SLOPE),
        _get_f32_1d(args, A.POST_A), _get_f32_1d(args, A.POST_B),
        _get_f32_1d(args, A.SHIFT_IN), _get_f32_1d(args, A.SHIFT_OUT),
        _get_f32_1d(args, A.BN_A), _get_f32_1d(args, A.BN_B),
        _get_f32_1d(args, A.RES_C), _get_f32_1d(args, A.RES_M), _get_f32_1d(args, A.RES_B),
    )  # fmt: skip
    gain = _get_f32_2d(args, A.GAIN)
    shortcut = _get_f32_4d(args, A.SHORTCUT)
    out = _get_f32_4d(args, A.OUT)
    xp2 = _get_u64_4d(args, A.XP2)
    y2 = _get_f32_4d(args, A.Y2)
    sums = _get_i32_3d(args, A.SUMS)
    geo = args[A.N_OUT_CH : A.GROUP + 1]
    flags = args[_HALF_FLAGS[0] : _HALF_FLAGS[1]]
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        _half_task(task, xp, wt, geo, vecs, gain, shortcut, out, flags, xp2, y2, sums)
        task = _next_task(args)


def half_static(wt, geo, vectors: dict, flags) -> np.ndarray:
    """The per-layer part of ``half_block``'s arguments, packed once (the arrays must outlive
    it): weights ``wt``, ``geo = (n_out_ch, K, kh, kw, stride)``, the per-channel float32
    ``vectors`` by ``HalfArgs`` name (``alpha``, ``slope``, ``post_a``, ``post_b``,
    ``shift_in``, ``shift_out``, ``bn_a``, ``bn_b``, ``res_c``, ``res_m``, ``res_b``) and
    ``flags = (post
    mode, act, act_after_add, fuse, bn mode, pad, write_y, res_mode)``."""
    args = np.zeros(HalfArgs.SIZE, np.int64)
    arrays = [(HalfArgs.WT, wt)] + [(getattr(HalfArgs, k.upper()), v) for k, v in vectors.items()]
    for slot, arr in arrays:
        assert arr.flags.c_contiguous
        args[slot] = arr.ctypes.data
        args[slot + 1 : slot + 1 + arr.ndim] = arr.shape
    args[HalfArgs.N_OUT_CH : HalfArgs.GROUP] = geo[:5]
    args[_HALF_FLAGS[0] : _HALF_FLAGS[1]] = flags
    return args


@njit(cache=True, nogil=True)
def half_block(static, xp, gain, shortcut, out, xp2, y2, sums, launch):
    """Binary conv fused with the half block's float epilogue and the next block's pre + pack::

        c   = float(K - 2 * mismatches)          exact integer
        v   = (c * alpha[o]) * gain[n, o]        weight scale, then learned scale, gate or 1
        v   = post(v)                            BatchNorm after the conv (or none)
        out = act(v) + shortcut  |  act(v + shortcut)   PReLU / RPReLU / none (``_epilogue``)
                                                 (shortcut = sums * res_m + res_b when
                                                 res_mode: an int8 conv's integer sums)
        if fuse:  xp2 <- sign bits of y2 = pre_next(out)   (y2 written if write_y)

    ``static``: the layer's constant arguments (``half_static``). ``alpha = 1`` when the conv has
    no weight scale, ``gain = 1`` when it has no scaling: multiplying by 1 is exact.
    """
    A = HalfArgs
    args = static.copy()
    _put_array(args, A.XP, xp)
    _put_array(args, A.GAIN, gain)
    _put_array(args, A.SHORTCUT, shortcut)
    _put_array(args, A.OUT, out)
    _put_array(args, A.XP2, xp2)
    _put_array(args, A.Y2, y2)
    _put_array(args, A.SUMS, sums)
    n_task_o = (args[A.WT + 1] * TILE_O + TASK_O - 1) // TASK_O
    group = _rows_per_task(out.shape[2], out.shape[3], out.shape[0] * n_task_o, launch[3])
    args[A.GROUP] = group
    n_groups = (out.shape[2] + group - 1) // group
    macs = out.size * args[A.K_TOTAL]
    _run_parallel(args, out.shape[0] * n_groups * n_task_o, launch, macs // 1500 + out.size // 4)


# ------------------------------------------------------------------ stem tail


@njit(inline="always")
def _nan_max(v, m):
    """``max(v, m)`` as PyTorch's max-pool scan takes it: a NaN wins."""
    return v if (v > m) | (v != v) else m


@njit(cache=True)
def _stem_task(task, conv, mode, bn_a, bn_b, slope, sgn, pool, out):
    """Output row ``oh`` of image ``n``: ``maxpool(PReLU(BN(conv)))`` (NHWC in, NCHW out;
    ``_stem_row``)."""
    out_h = out.shape[2]
    n = task // out_h
    _stem_row(conv, n, conv.shape[1], task - n * out_h, mode, bn_a, bn_b, slope, sgn, pool, out,
              n)  # fmt: skip


@njit(cache=True)
def _stem_row(rows, n_src, height, oh, mode, bn_a, bn_b, slope, sgn, pool, out, n):
    """Output row ``oh`` of image ``n`` of ``out`` (NCHW): ``maxpool(PReLU(BN(conv)))`` of the
    stem conv's rows, conv row ``h`` (``0 <= h < height``) held channels-last in
    ``rows[n_src, h % R]``, ``R = rows.shape[1]`` (the whole conv output, ``R = height``, or a
    ring of the last ``R`` rows).

    ``pool = (kernel, stride, padding)``; kernel 0 means no pooling. ``bn_a``, ``bn_b``,
    ``slope`` are the per-channel coefficients tiled along one input row (``W * C``), so that
    every loop runs over a whole contiguous row. The max of the window is taken rows first, then
    columns: the same maximum as PyTorch's scan (NaN propagates too). With a pool and ``sgn``
    (the tiled direction of each channel, +-1; empty: not every channel is monotone) the max is
    taken before BN and PReLU (``_stem_row_monotone``).
    """
    if pool[0] > 0 and sgn.shape[0] > 0:
        _stem_row_monotone(rows, n_src, height, oh, mode, bn_a, bn_b, slope, sgn, pool, out,
                           n)  # fmt: skip
        return
    width, channels = rows.shape[2], rows.shape[3]
    out_w = out.shape[3]
    k, s, p = pool[0], pool[1], pool[2]
    if k == 0:
        k, s, p = 1, 1, 0
    row_len = width * channels
    act = np.empty(row_len, np.float32)
    vmax = np.full(row_len, -np.inf, np.float32)
    for i in range(k):
        h = oh * s - p + i
        if h < 0 or h >= height:
            continue
        _bn_channels(_conv_row(rows, n_src, h % rows.shape[1]), mode, bn_a, bn_b, act)
        for j in range(row_len):
            v = act[j]
            vmax[j] = _nan_max(v if v > 0 else slope[j] * v, vmax[j])
    best = _pool_columns(vmax, width, channels, out_w, k, s, p)
    _store_channels_first(best, out, n, oh)


@njit(inline="always")
def _conv_row(conv, n, h):
    """Row ``h`` of image ``n`` of the NHWC float32 ``conv``, as a 1-D view of ``W * C``."""
    row_len = conv.shape[2] * conv.shape[3]
    return carray(_as_f32(conv.ctypes.data + 4 * (n * conv.shape[1] + h) * row_len), (row_len,))


@njit(inline="always")
def _pool_columns(rows_max, width, channels, out_w, k, s, p):
    """The max-pool's column step: per output column and channel, the NaN-winning max over the
    ``k`` input columns of ``rows_max`` (a row of ``width * channels``, already the max over
    the window's rows)."""
    best = np.full(out_w * channels, -np.inf, np.float32)
    for ow in range(out_w):
        ob = ow * channels
        for j in range(k):
            w = ow * s - p + j
            if w < 0 or w >= width:
                continue
            wb = w * channels
            for c in range(channels):
                best[ob + c] = _nan_max(rows_max[wb + c], best[ob + c])
    return best


@njit(inline="always")
def _store_channels_first(row, out, n, oh):
    """Row ``oh`` of image ``n`` of NCHW ``out`` from ``row``, the same row channels-last."""
    channels, out_w = out.shape[1], out.shape[3]
    for c in range(channels):
        dst = _plane(out, n, c, oh * out_w, out_w)
        for ow in range(out_w):
            dst[ow] = row[ow * channels + c]


@njit(cache=True)
def _stem_row_monotone(rows, n_src, height, oh, mode, bn_a, bn_b, slope, sgn, pool, out, n):
    """``_stem_row`` when every channel's ``f(x) = PReLU(BN(x))`` is monotone: the max-pool is
    taken on the conv output and ``f`` applied to the 1 in ``k * k`` values it keeps.

    For a non-decreasing ``f`` (BN scale ``a > 0`` or no BN, PReLU slope ``>= 0``),
    ``max_i f(x_i) = f(max_i x_i)``; for a non-increasing one (``a < 0``) it is
    ``f(min_i x_i)``, taken as ``-max_i(-x_i)`` with ``sgn = -1`` (negation is exact). Each
    float step of ``f`` (a product, a sum or an fma with a fixed operand, the select of PReLU) is
    monotone after rounding too, so the values equal the pool of ``f`` exactly; a NaN still
    wins. Only the sign of a zero can differ where the window holds both ``+0`` and ``-0``
    images of ``f`` (the scan keeps the first): equal values, which no later step tells apart
    but by that sign.
    """
    width, channels = rows.shape[2], rows.shape[3]
    out_w = out.shape[3]
    k, s, p = pool[0], pool[1], pool[2]
    row_len = width * channels
    vmax = np.full(row_len, -np.inf, np.float32)
    for i in range(k):
        h = oh * s - p + i
        if h < 0 or h >= height:
            continue
        src = _conv_row(rows, n_src, h % rows.shape[1])
        for j in range(row_len):
            vmax[j] = _nan_max(src[j] * sgn[j], vmax[j])
    best = _pool_columns(vmax, width, channels, out_w, k, s, p)
    row_out = out_w * channels
    for j in range(row_out):
        best[j] = best[j] * sgn[j]
    _bn_channels(best, mode, bn_a[:row_out], bn_b[:row_out], best)
    for j in range(row_out):
        v = best[j]
        best[j] = v if v > 0 else slope[j] * v
    _store_channels_first(best, out, n, oh)


#: The stem tail's arguments, the same run of slots in ``stem_tail`` and ``int8_stem``.
_TAIL_FIELDS = [
    ("bn_a", 1), ("bn_b", 1), ("slope", 1), ("sgn", 1), ("out", 4),
    ("mode", 0), ("pool_k", 0), ("pool_s", 0), ("pool_p", 0),
]  # fmt: skip
#: Their slots relative to the first (``_put_tail`` / ``_get_tail`` add a layout's ``BN_A``).
_TAIL = arg_layout("TailArgs", _TAIL_FIELDS)
_T0 = _TAIL.BN_A

#: Arguments of ``stem_tail``.
StemArgs = arg_layout("StemArgs", [("conv", 4), *_TAIL_FIELDS])


@njit(inline="always")
def _put_tail(args, at, mode, bn_a, bn_b, slope, sgn, pool, out):
    """The stem tail's arguments into ``args`` from slot ``at`` (a layout's ``BN_A``)."""
    _put_array(args, at + _TAIL.BN_A - _T0, bn_a)
    _put_array(args, at + _TAIL.BN_B - _T0, bn_b)
    _put_array(args, at + _TAIL.SLOPE - _T0, slope)
    _put_array(args, at + _TAIL.SGN - _T0, sgn)
    _put_array(args, at + _TAIL.OUT - _T0, out)
    args[at + _TAIL.MODE - _T0] = mode
    args[at + _TAIL.POOL_K - _T0 : at + _TAIL.POOL_P - _T0 + 1] = pool


@njit(inline="always")
def _get_tail(args, at):
    """``(mode, bn_a, bn_b, slope, sgn, pool, out)`` written by ``_put_tail`` at slot ``at``."""
    return (
        args[at + _TAIL.MODE - _T0],
        _get_f32_1d(args, at + _TAIL.BN_A - _T0),
        _get_f32_1d(args, at + _TAIL.BN_B - _T0),
        _get_f32_1d(args, at + _TAIL.SLOPE - _T0),
        _get_f32_1d(args, at + _TAIL.SGN - _T0),
        args[at + _TAIL.POOL_K - _T0 : at + _TAIL.POOL_P - _T0 + 1],
        _get_f32_4d(args, at + _TAIL.OUT - _T0),
    )


def _stem_worker(data):
    A = StemArgs
    args = _args_view(data, A.SIZE)
    conv = _get_f32_4d(args, A.CONV)
    mode, bn_a, bn_b, slope, sgn, pool, out = _get_tail(args, A.BN_A)
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        _stem_task(task, conv, mode, bn_a, bn_b, slope, sgn, pool, out)
        task = _next_task(args)


@njit(cache=True, nogil=True)
def stem_tail(conv, mode, bn_a, bn_b, slope, sgn, pool, out, launch):
    """``out = maxpool(PReLU(BN(conv)))``: ``conv`` ``(N, H, W, C)`` (channels-last), ``out``
    ``(N, C, OH, OW)``; ``pool = (kernel, stride, padding)`` of a max-pool (kernel 0: none);
    ``bn_a``, ``bn_b``, ``slope``: per-channel coefficients tiled ``W`` times (length ``W * C``);
    ``sgn``: each channel's direction (+1 where ``PReLU(BN(x))`` never decreases in ``x``, -1
    where it never increases) tiled the same way, or empty when some channel is neither.
    """
    A = StemArgs
    args = np.empty(A.SIZE, np.int64)
    _put_array(args, A.CONV, conv)
    _put_tail(args, A.BN_A, mode, bn_a, bn_b, slope, sgn, pool, out)
    _run_parallel(args, out.shape[0] * out.shape[2], launch, conv.size // 2)


# ------------------------------------------------------------------ int8 stem (VNNI)


@njit(inline="always")
def _int8_conv_row(qp, n, h, wt, corr, geo, dst):
    """Conv row ``h`` of image ``n`` (``_dot*`` tiles): ``float32(acc)`` of every output pixel
    and channel into ``dst``, a channels-last row (``conv_w * O`` float32)."""
    kh, q_len, stride, channels, conv_w = geo[0], geo[1], geo[2], geo[3], geo[5]
    row_bytes = qp.shape[2]
    n_blocks, width = wt.shape[0], wt.shape[2]
    out_ch = n_blocks * width
    x0 = qp.ctypes.data + (n * qp.shape[1] + h * stride) * row_bytes
    xpix = stride * channels
    n4 = conv_w // 4 * 4
    for b in range(n_blocks):
        w_addr = wt.ctypes.data + 4 * b * wt.shape[1] * width
        c_addr = corr.ctypes.data + 4 * b * width
        o_addr = dst.ctypes.data + 4 * b * width
        for ow in range(0, n4, 4):
            if width == 64:
                _dot4x4(x0 + ow * xpix, xpix, row_bytes, w_addr, kh, q_len,
                        o_addr + 4 * ow * out_ch, out_ch, c_addr)  # fmt: skip
            else:
                _dot4x1(x0 + ow * xpix, xpix, row_bytes, w_addr, kh, q_len,
                        o_addr + 4 * ow * out_ch, out_ch, c_addr)  # fmt: skip
        for ow in range(n4, conv_w):
            if width == 64:
                _dot1x4(x0 + ow * xpix, xpix, row_bytes, w_addr, kh, q_len,
                        o_addr + 4 * ow * out_ch, out_ch, c_addr)  # fmt: skip
            else:
                _dot1x1(x0 + ow * xpix, xpix, row_bytes, w_addr, kh, q_len,
                        o_addr + 4 * ow * out_ch, out_ch, c_addr)  # fmt: skip


@njit(cache=True)
def _int8_stem_task(task, qp, wt, corr, geo, mode, bn_a, bn_b, slope, sgn, pool, out):
    """Output rows ``r0 .. r1`` of image ``n``: for each, the conv rows of its pool window not yet
    computed (``_int8_conv_row``) into a ring of ``k`` rows (the window's height), then
    ``_stem_row`` on the ring."""
    conv_h, conv_w, group = geo[4], geo[5], geo[6]
    out_h = out.shape[2]
    n_groups = (out_h + group - 1) // group
    n = task // n_groups
    r0 = (task - n * n_groups) * group
    r1 = min(out_h, r0 + group)
    k, s, p = (pool[0], pool[1], pool[2]) if pool[0] > 0 else (1, 1, 0)
    ring = np.empty((1, k, conv_w, wt.shape[0] * wt.shape[2]), np.float32)
    computed = 0  # rows below this one are done (or not needed)
    for oh in range(r0, r1):
        lo, hi = max(0, oh * s - p), min(conv_h, oh * s - p + k)
        for h in range(max(computed, lo), hi):
            _int8_conv_row(qp, n, h, wt, corr, geo, ring[0, h % k])
        computed = max(computed, hi)
        _stem_row(ring, 0, conv_h, oh, mode, bn_a, bn_b, slope, sgn, pool, out, n)


#: Arguments of ``int8_stem``.
Int8StemArgs = arg_layout("Int8StemArgs", [
    ("qp", 3), ("wt", 3), ("corr", 1), *_TAIL_FIELDS,
    ("kh", 0), ("q_len", 0), ("stride", 0), ("channels", 0), ("conv_h", 0), ("conv_w", 0),
    ("group", 0),
])  # fmt: skip


def _int8_stem_worker(data):
    A = Int8StemArgs
    args = _args_view(data, A.SIZE)
    qp = carray(_as_u8(args[A.QP]), (args[A.QP + 1], args[A.QP + 2], args[A.QP + 3]))
    wt = _get_i32_3d(args, A.WT)
    corr = carray(_as_i32(args[A.CORR]), (args[A.CORR + 1],))
    mode, bn_a, bn_b, slope, sgn, pool, out = _get_tail(args, A.BN_A)
    geo = args[A.KH : A.GROUP + 1]
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        _int8_stem_task(task, qp, wt, corr, geo, mode, bn_a, bn_b, slope, sgn, pool, out)
        task = _next_task(args)


@njit(cache=True, nogil=True)
def int8_stem(qp, wt, corr, geo, mode, bn_a, bn_b, slope, sgn, pool, out, launch):
    """The int8 stem in one pass: ``out = maxpool(PReLU(BN(float32(acc))))`` with ``acc`` the
    exact integer sums of an int8 conv (VNNI tiles, ``_make_dot_tile``); only where
    ``has_vnni()``.

    ``qp``: ``(N, Hp, row_bytes)`` uint8, the quantised input channels-last (pixel ``w``,
    channel ``c`` at byte ``w * C + c``), the padding border already holding the zero point
    ``z``, and at least 3 bytes of slack at the end of each row (tiles read 4 bytes at a
    time). ``wt``: ``(O / L, kh * q_len, L)`` int32, ``L`` = 64 or 16 output channels a block,
    ``q_len = ceil(kw * C / 4)``: word ``q`` of kernel row ``i`` holds the weights of window
    bytes ``4q .. 4q + 3`` of that row (``j * C + c`` for tap ``j``, channel ``c``; 0 past
    ``kw * C``). ``corr[o] = z * sum(w_q[o])``, so that ``acc = sum q w - corr`` is
    ``sum (q - z) w`` (a padded ``q = z`` adds 0). ``geo = (kh, q_len, stride, C, conv_h,
    conv_w)``; the tail's arguments are ``stem_tail``'s (tiled ``conv_w`` times).
    """
    A = Int8StemArgs
    args = np.empty(A.SIZE, np.int64)
    _put_array(args, A.QP, qp)
    _put_array(args, A.WT, wt)
    _put_array(args, A.CORR, corr)
    _put_tail(args, A.BN_A, mode, bn_a, bn_b, slope, sgn, pool, out)
    args[A.KH : A.CONV_W + 1] = geo
    out_h = out.shape[2]
    group = 4
    while group > 1 and out.shape[0] * ((out_h + group - 1) // group) < 4 * launch[3]:
        group //= 2
    args[A.GROUP] = group
    n_tasks = out.shape[0] * ((out_h + group - 1) // group)
    macs = out.shape[0] * geo[4] * geo[5] * wt.shape[0] * wt.shape[2] * geo[0] * geo[1] * 4
    _run_parallel(args, n_tasks, launch, macs // 200)


# ------------------------------------------------------------------ average pool


@njit(inline="always")
def _avg_pool_row(plane, width, oh, row):
    """Output row ``oh`` of a 2 x 2 / 2 average pool of one plane (``width`` columns), summed in
    PyTorch's order, ``((x00 + x01) + x10) + x11``, then divided by 4."""
    top = plane[2 * oh * width :]
    bottom = plane[(2 * oh + 1) * width :]
    for ow in range(row.shape[0]):
        total = np.float32(0.0) + top[2 * ow]
        total = total + top[2 * ow + 1]
        total = total + bottom[2 * ow]
        total = total + bottom[2 * ow + 1]
        row[ow] = total / np.float32(4.0)


@njit(cache=True)
def _avg_pool_task(task, x, out):
    """Plane ``(n, c)``: 2 x 2 average, summed in PyTorch's order then divided by 4."""
    n = task // x.shape[1]
    c = task - n * x.shape[1]
    width = x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    src = _plane(x, n, c, 0, x.shape[2] * width)
    dst = _plane(out, n, c, 0, out_h * out_w)
    for oh in range(out_h):
        _avg_pool_row(src, width, oh, dst[oh * out_w : (oh + 1) * out_w])


#: Arguments of ``avg_pool2``.
AvgPoolArgs = arg_layout("AvgPoolArgs", [("x", 4), ("out", 4)])


def _avg_pool_worker(data):
    A = AvgPoolArgs
    args = _args_view(data, A.SIZE)
    x = _get_f32_4d(args, A.X)
    out = _get_f32_4d(args, A.OUT)
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        _avg_pool_task(task, x, out)
        task = _next_task(args)


@njit(cache=True, nogil=True)
def avg_pool2(x, out, launch):
    """``out = AvgPool2d(2, 2)(x)`` for ``(N, C, H, W)`` float32, bit-identical to PyTorch's
    CPU kernel (``((x00 + x01) + x10) + x11`` then ``/ 4``)."""
    A = AvgPoolArgs
    args = np.empty(A.SIZE, np.int64)
    _put_array(args, A.X, x)
    _put_array(args, A.OUT, out)
    _run_parallel(args, x.shape[0] * x.shape[1], launch, x.size // 8)


# ------------------------------------------------------------------ int8 input quantisation


#: Layouts of ``quantize_u8``'s output: ``(N, OH, OW, C)`` uint8 ``q`` (channels-last, for
#: oneDNN's int8 conv), ``(C, N, OH, OW)`` int8 ``q - 128`` (the right operand of one
#: ``torch._int_mm`` that makes a 1x1 conv of the whole batch), or the padded rows of
#: ``int8_stem``: ``(N, OH + 2p, row_bytes, 1)`` uint8, pixel ``ow`` channel ``c`` of row ``oh``
#: at ``[n, oh + p, (ow + p) * C + c]``, ``p = (out.shape[1] - OH) // 2`` (the border is left as
#: it is: the caller fills it with the zero point).
Q_NHWC_U8, Q_CNHW_S8, Q_PADDED_U8 = 0, 1, 2


#: ``(v + 1.5 * 2^23) - 1.5 * 2^23`` rounds a float32 ``|v| < 2^22`` to an integer, half to even
#: (the sum lands where float32's spacing is 1); larger ``|v|`` stay as large, which the clamp
#: after it sends to 0 or 255 as it does the exact rounding. A vector add, not a libm call.
_ROUNDING_MAGIC = np.float32(12582912.0)


@njit(inline="always")
def _quantize(v, inv, z):
    """``clamp(rne(v * inv) + z, 0, 255)``: ``r2b.packed.int8.quantize_activations``."""
    q = ((v * inv + _ROUNDING_MAGIC) - _ROUNDING_MAGIC) + z
    return np.float32(0.0) if q < 0 else (np.float32(255.0) if q > 255 else q)


#: Channels a task of ``_quantize_planes_task``.
_QUANTIZE_PLANES = 16


@njit(cache=True)
def _quantize_planes_task(task, x, pool, inv_scale, zero_point, out):
    """Planes ``(n, c0 .. c0 + _QUANTIZE_PLANES)`` of ``x`` (NCHW float32; of its 2 x 2
    average pool when ``pool``) quantised (``_quantize``) into ``out[c, n]`` as the int8 bits
    of ``q - 128`` (``Q_CNHW_S8``): whole planes a task, so that the small maps of the late
    downsamples cost one loop a channel, not one a row and channel."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    blocks = (channels + _QUANTIZE_PLANES - 1) // _QUANTIZE_PLANES
    n = task // blocks
    c0 = (task - n * blocks) * _QUANTIZE_PLANES
    out_h, out_w = out.shape[2], out.shape[3]
    z = np.float32(zero_point)
    inv = inv_scale[0]
    values = np.empty(out_w, np.float32)
    for c in range(c0, min(c0 + _QUANTIZE_PLANES, channels)):
        plane = _plane(x, n, c, 0, height * width)
        for oh in range(out_h):
            if pool:
                _avg_pool_row(plane, width, oh, values)
            else:
                values[:] = plane[oh * width : oh * width + out_w]
            row = out[c, n, oh]
            for ow in range(out_w):
                row[ow] = np.uint8(np.int32(_quantize(values[ow], inv, z)) ^ 128)


@njit(cache=True)
def _quantize_task(task, x, pool, inv_scale, zero_point, layout, out):
    """Output row ``oh`` of image ``n``, every channel: that row of ``x`` (NCHW float32; of its
    2 x 2 average pool when ``pool``) quantised (``_quantize``) into ``out`` (``layout``)."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_h = height // 2 if pool else height
    out_w = width // 2 if pool else width
    n = task // out_h
    oh = task - n * out_h
    z = np.float32(zero_point)
    inv = inv_scale[0]
    values = np.empty(out_w, np.float32)
    codes = np.empty((channels, out_w), np.uint8)
    for c in range(channels):
        plane = _plane(x, n, c, 0, height * width)
        if pool:
            _avg_pool_row(plane, width, oh, values)
        else:
            values[:] = plane[oh * width : oh * width + out_w]
        row = out[c, n, oh] if layout == Q_CNHW_S8 else codes[c]
        flip = 128 if layout == Q_CNHW_S8 else 0  # q - 128 as int8 bits: q ^ 128
        for ow in range(out_w):
            row[ow] = np.uint8(np.int32(_quantize(values[ow], inv, z)) ^ flip)
    if layout == Q_CNHW_S8:
        return
    # the row's first pixel: (N, OH, OW, C), or inside the padding border of the padded rows
    pad = (out.shape[1] - out_h) // 2 if layout == Q_PADDED_U8 else 0
    row_len = out.shape[2] * out.shape[3]
    start = (n * out.shape[1] + oh + pad) * row_len + pad * channels
    dst = carray(_as_u8(out.ctypes.data + start), (out_w, channels))
    for ow in range(out_w):
        for c in range(channels):
            dst[ow, c] = codes[c, ow]


#: Arguments of ``quantize_u8``.
QuantizeArgs = arg_layout("QuantizeArgs", [
    ("x", 4), ("inv_scale", 1), ("out", 4), ("pool", 0), ("zero_point", 0), ("layout", 0),
])  # fmt: skip


def _quantize_worker(data):
    A = QuantizeArgs
    args = _args_view(data, A.SIZE)
    x = _get_f32_4d(args, A.X)
    inv_scale = _get_f32_1d(args, A.INV_SCALE)
    out = _get_u8_4d(args, A.OUT)
    pool, zero_point, layout = args[A.POOL], args[A.ZERO_POINT], args[A.LAYOUT]
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        if layout == Q_CNHW_S8:
            _quantize_planes_task(task, x, pool, inv_scale, zero_point, out)
        else:
            _quantize_task(task, x, pool, inv_scale, zero_point, layout, out)
        task = _next_task(args)


@njit(cache=True, nogil=True)
def quantize_u8(x, pool, inv_scale, zero_point, layout, out, launch):
    """``out`` = the int8 input quantisation ``q`` of ``x`` (``(N, C, H, W)`` float32), or of
    ``AvgPool2d(2, 2)(x)`` when ``pool`` (the pool bit-identical to ``avg_pool2``), in one
    pass: ``(N, OH, OW, C)`` ``q`` (``Q_NHWC_U8``; what an int8 conv's ``_quantized_input``
    and ``contiguous(memory_format=channels_last)`` give) or ``(C, N, OH, OW)`` ``q - 128``
    as int8 bits (``Q_CNHW_S8``), or into the padded rows of ``int8_stem`` (``Q_PADDED_U8``).
    ``inv_scale``: ``(1,)`` float32."""
    A = QuantizeArgs
    args = np.empty(A.SIZE, np.int64)
    _put_array(args, A.X, x)
    _put_array(args, A.INV_SCALE, inv_scale)
    _put_array(args, A.OUT, out)
    args[A.POOL] = pool
    args[A.ZERO_POINT] = zero_point
    args[A.LAYOUT] = layout
    out_h = x.shape[2] // 2 if pool else x.shape[2]
    blocks = (x.shape[1] + _QUANTIZE_PLANES - 1) // _QUANTIZE_PLANES
    n_tasks = x.shape[0] * (blocks if layout == Q_CNHW_S8 else out_h)
    _run_parallel(args, n_tasks, launch, x.size // 4)


# ------------------------------------------------------------------ in-cache peak


@njit(cache=True)
def _peak_task(reps):
    """``reps`` register tiles over L1-resident data: the kernel's in-cache ceiling."""
    q_len = 64
    x = np.arange(TILE_P * q_len).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    w = np.arange(q_len * TILE_O).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    acc = np.zeros((TILE_O, TILE_P), np.int32)
    total = 0
    for _ in range(reps):
        _tile(x.ctypes.data, q_len, 0, w.ctypes.data, 1, q_len, acc.ctypes.data, TILE_P)
        total += acc[0, 0]
    return total + x[0] + w[0]


#: Arguments of ``peak``: the repetitions, then one result slot per task modulo 4.
PeakArgs = arg_layout("PeakArgs", [("reps", 0), ("r0", 0), ("r1", 0), ("r2", 0), ("r3", 0)])


def _peak_worker(data):
    A = PeakArgs
    args = _args_view(data, A.SIZE)
    n_tasks = args[ARG_N_TASKS]
    task = _next_task(args)
    while task < n_tasks:
        args[A.R0 + task % 4] = _peak_task(args[A.REPS])
        task = _next_task(args)


@njit(cache=True, nogil=True)
def peak(reps, n_tasks, launch):
    """Run ``n_tasks`` tasks of ``reps`` tiles (``TILE_P * 64 * TILE_O * 64`` binary MACs each)."""
    A = PeakArgs
    args = np.zeros(A.SIZE, np.int64)
    args[A.REPS] = reps
    _run_parallel(args, n_tasks, launch, 1 << 30)
    return args[A.R0]


#: Task loops of the kernels, compiled to C callbacks on first use (``worker_address``).
_WORKERS = {
    "bn_pack": _bn_pack_worker,
    "conv_int": _conv_int_worker,
    "half_block": _half_worker,
    "stem_tail": _stem_worker,
    "int8_stem": _int8_stem_worker,
    "avg_pool2": _avg_pool_worker,
    "quantize_u8": _quantize_worker,
    "peak": _peak_worker,
}


_COMPILED: dict = {}


def worker_address(name: str) -> int:
    """C address of the task loop of kernel ``name`` (compiled, or loaded from the disk cache,
    on first use; the compiled callback is kept alive here)."""
    callback = _COMPILED.get(name)
    if callback is None:
        callback = _COMPILED[name] = cfunc(_WORKER_SIG, cache=True)(_WORKERS[name])
    return callback.address
