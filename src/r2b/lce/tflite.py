"""A small TFLite flatbuffer writer and reader (the ``flatbuffers`` runtime only, no TensorFlow).

Only the tables the LCE export uses are written, by field slot, from the TFLite schema
(``tensorflow/lite/schema/schema.fbs``, ``file_identifier "TFL3"``, schema version 3)::

    Model          0 version:uint  1 operator_codes  2 subgraphs  3 description  4 buffers
                   6 metadata:[Metadata]
    Metadata       0 name:string  1 buffer:uint
    OperatorCode   0 deprecated_builtin_code:byte  1 custom_code:string  2 version:int = 1
                   3 builtin_code:int
    SubGraph       0 tensors  1 inputs:[int]  2 outputs:[int]  3 operators  4 name:string
    Tensor         0 shape:[int]  1 type:byte  2 buffer:uint  3 name:string
    Buffer         0 data:[ubyte] (force_align: 16)
    Operator       0 opcode_index:uint  1 inputs:[int]  2 outputs:[int]
                   3 builtin_options_type:ubyte  4 builtin_options  5 custom_options:[ubyte]
                   6 custom_options_format:byte (0 = FLEXBUFFERS)

Buffer 0 is the empty sentinel that every tensor without data points at; an optional operand is
the tensor index -1. A builtin's options are one table of the ``BuiltinOptions`` union, named by
its union index (``OPTIONS``). A custom op's options are a flexbuffer (``flatbuffers.flexbuffers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
from flatbuffers import flexbuffers
from flatbuffers.table import Table

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3

#: TensorType enum values (schema.fbs) of the numpy dtypes used here.
TENSOR_TYPES = {np.dtype(np.float32): 0, np.dtype(np.int32): 2}
_DTYPES = {v: k for k, v in TENSOR_TYPES.items()}

#: BuiltinOperator enum values (schema.fbs) of the operators used here.
BUILTIN = {
    "ADD": 0,
    "AVERAGE_POOL_2D": 1,
    "CONV_2D": 3,
    "FULLY_CONNECTED": 9,
    "LOGISTIC": 14,
    "MAX_POOL_2D": 17,
    "MUL": 18,
    "RELU": 19,
    "RESHAPE": 22,
    "CUSTOM": 32,
    "PAD": 34,
    "MEAN": 40,
    "PRELU": 54,
    "PADV2": 60,
}
#: Names of other builtins a file may hold (for reading LCE's own conversions).
BUILTIN_NAMES = {
    2: "CONCATENATION",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    21: "RELU6",
    25: "SOFTMAX",
    28: "TANH",
    39: "TRANSPOSE",
    41: "SUB",
    42: "DIV",
    43: "SQUEEZE",
    45: "STRIDED_SLICE",
    114: "QUANTIZE",
} | {v: k for k, v in BUILTIN.items()}

#: Union index in ``BuiltinOptions`` (schema.fbs) of each options table used here.
OPTIONS = {
    "Conv2DOptions": 1,
    "Pool2DOptions": 5,
    "FullyConnectedOptions": 8,
    "AddOptions": 11,
    "ReshapeOptions": 17,
    "MulOptions": 21,
    "PadOptions": 22,
    "ReducerOptions": 27,
    "PadV2Options": 43,
}
OPTIONS_NAMES = {v: k for k, v in OPTIONS.items()}

#: Fields of each options table: (name, slot, kind, default); kind names the flatbuffers
#: ``Prepend<kind>Slot`` writer ("Int32", "Int8", "Bool"); "IntVector" is a vector of int32.
OPTION_FIELDS = {
    "Conv2DOptions": [
        ("padding", 0, "Int8", 0),
        ("stride_w", 1, "Int32", 0),
        ("stride_h", 2, "Int32", 0),
        ("fused_activation_function", 3, "Int8", 0),
        ("dilation_w_factor", 4, "Int32", 1),
        ("dilation_h_factor", 5, "Int32", 1),
    ],
    "Pool2DOptions": [
        ("padding", 0, "Int8", 0),
        ("stride_w", 1, "Int32", 0),
        ("stride_h", 2, "Int32", 0),
        ("filter_width", 3, "Int32", 0),
        ("filter_height", 4, "Int32", 0),
        ("fused_activation_function", 5, "Int8", 0),
    ],
    "FullyConnectedOptions": [
        ("fused_activation_function", 0, "Int8", 0),
        ("weights_format", 1, "Int8", 0),
        ("keep_num_dims", 2, "Bool", False),
    ],
    "AddOptions": [("fused_activation_function", 0, "Int8", 0)],
    "MulOptions": [("fused_activation_function", 0, "Int8", 0)],
    "ReshapeOptions": [("new_shape", 0, "IntVector", None)],
    "ReducerOptions": [("keep_dims", 0, "Bool", False)],
    "PadOptions": [],
    "PadV2Options": [],
}

#: Padding and ActivationFunctionType enums (schema.fbs).
SAME, VALID = 0, 1
ACT_NONE, ACT_RELU = 0, 1


@dataclass
class Tensor:
    """A tensor of the graph: ``data`` is its constant value (None for activations)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None


@dataclass
class Op:
    """An operator: ``code`` is a builtin name (``BUILTIN``) or a custom op's name; ``inputs``
    and ``outputs`` are tensor indices (-1: an omitted optional input)."""

    code: str
    inputs: list[int]
    outputs: list[int]
    options_type: str | None = None
    options: dict = field(default_factory=dict)
    custom_options: bytes | None = None

    @property
    def custom(self) -> bool:
        return self.code not in BUILTIN


@dataclass
class Graph:
    """One subgraph with its tensors and operators in execution order."""

    tensors: list[Tensor] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    name: str = "main"

    def tensor(self, name: str, shape, dtype=np.float32, data: np.ndarray | None = None) -> int:
        """Add a tensor (a constant when ``data`` is given) and return its index."""
        dtype = np.dtype(dtype)
        if data is not None:
            data = np.array(data, dtype=dtype, order="C")
            if tuple(data.shape) != tuple(shape):
                raise ValueError(f"{name}: data shape {data.shape} != {tuple(shape)}")
        self.tensors.append(Tensor(name, tuple(int(s) for s in shape), dtype, data))
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray, dtype=np.float32) -> int:
        data = np.asarray(data, dtype=dtype)
        return self.tensor(name, data.shape, dtype, data)

    def op(self, code: str, inputs, outputs, options_type=None, custom_options=None, **options):
        self.ops.append(
            Op(code, list(inputs), list(outputs), options_type, options, custom_options)
        )
        return self.ops[-1]

    def shape(self, index: int) -> tuple[int, ...]:
        return self.tensors[index].shape


# --------------------------------------------------------------------------- writing


def _int_vector(b: flatbuffers.Builder, values) -> int:
    return b.CreateNumpyVector(np.asarray(list(values), dtype=np.int32))


def _byte_vector(b: flatbuffers.Builder, data: bytes, alignment: int = 16) -> int:
    """A ``[ubyte]`` vector whose first byte is ``alignment``-aligned (schema: force_align 16)."""
    b.StartVector(1, len(data), alignment)
    b.head -= len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return b.EndVector()


def _vector_of_tables(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _options_table(b: flatbuffers.Builder, kind: str, values: dict) -> int:
    fields = OPTION_FIELDS[kind]
    unknown = set(values) - {f[0] for f in fields}
    if unknown:
        raise ValueError(f"{kind} has no field(s) {sorted(unknown)}")
    vectors = {
        name: _int_vector(b, values[name])
        for name, _, k, _ in fields
        if k == "IntVector" and values.get(name) is not None
    }
    b.StartObject(len(fields))
    for name, slot, k, default in fields:
        if name not in values:
            continue
        if k == "IntVector":
            if name in vectors:
                b.PrependUOffsetTRelativeSlot(slot, vectors[name], 0)
        else:
            getattr(b, f"Prepend{k}Slot")(slot, values[name], default)
    return b.EndObject()


def _opcode_key(op: Op) -> tuple[int, str | None]:
    return (BUILTIN["CUSTOM"], op.code) if op.custom else (BUILTIN[op.code], None)


def serialize(
    graph: Graph,
    description: str = "",
    metadata: dict[str, bytes] | None = None,
    dedupe: bool = True,
) -> bytes:
    """The TFLite flatbuffer of ``graph``; constants with equal bytes, dtype and shape share one
    buffer when ``dedupe`` (as TensorFlow's converter does).

    A flatbuffer is written back to front, children before the tables that point at them, so
    the steps run in that order: buffers, tensors, operators, the subgraph, operator codes,
    metadata, then the model table (the root)."""
    b = flatbuffers.Builder(1 << 20)
    payloads, tensor_buffer = _tensor_payloads(graph, dedupe)
    meta = list((metadata or {}).items())
    meta_buffers = list(range(len(payloads), len(payloads) + len(meta)))
    payloads += [bytes(raw) for _, raw in meta]
    buffers = [_write_buffer(b, raw) for raw in payloads]
    tensors = [_write_tensor(b, t, buf) for t, buf in zip(graph.tensors, tensor_buffer)]
    codes = _opcode_keys(graph)
    operators = [_write_operator(b, op, codes) for op in graph.ops]
    subgraph = _write_subgraph(b, graph, tensors, operators)
    opcodes = [_write_opcode(b, code, custom_name) for code, custom_name in codes]
    metas = [_write_metadata(b, name, buf) for (name, _), buf in zip(meta, meta_buffers)]
    root = _write_model(b, description, opcodes, subgraph, buffers, metas)
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _tensor_payloads(graph: Graph, dedupe: bool) -> tuple[list[bytes], list[int]]:
    """The buffers' bytes (0: the empty sentinel; one per distinct constant, little-endian) and
    each tensor's buffer index."""
    payloads: list[bytes] = [b""]
    index_of: dict[tuple, int] = {}
    tensor_buffer = []
    for t in graph.tensors:
        if t.data is None:
            tensor_buffer.append(0)
            continue
        raw = t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes()
        key = (raw, t.dtype.str, t.shape) if dedupe else (len(payloads),)
        if key not in index_of:
            index_of[key] = len(payloads)
            payloads.append(raw)
        tensor_buffer.append(index_of[key])
    return payloads, tensor_buffer


def _write_buffer(b: flatbuffers.Builder, raw: bytes) -> int:
    """A ``Buffer`` table; the empty sentinel has no data vector."""
    data = _byte_vector(b, raw) if raw else None
    b.StartObject(3)
    if data is not None:
        b.PrependUOffsetTRelativeSlot(0, data, 0)
    return b.EndObject()


def _write_tensor(b: flatbuffers.Builder, t: Tensor, buf: int) -> int:
    """A ``Tensor`` table: shape, type, buffer index and name."""
    name = b.CreateString(t.name)
    shape = _int_vector(b, t.shape)
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(0, shape, 0)
    b.PrependInt8Slot(1, TENSOR_TYPES[t.dtype], 0)
    b.PrependUint32Slot(2, buf, 0)
    b.PrependUOffsetTRelativeSlot(3, name, 0)
    return b.EndObject()


def _opcode_keys(graph: Graph) -> list[tuple[int, str | None]]:
    """The distinct operator codes in order of first use (an operator refers to its index)."""
    codes: list[tuple[int, str | None]] = []
    for op in graph.ops:
        if _opcode_key(op) not in codes:
            codes.append(_opcode_key(op))
    return codes


def _write_operator(b: flatbuffers.Builder, op: Op, codes: list[tuple[int, str | None]]) -> int:
    """An ``Operator`` table: code index, operands, builtin options or custom options."""
    inputs, outputs = _int_vector(b, op.inputs), _int_vector(b, op.outputs)
    opts = _options_table(b, op.options_type, op.options) if op.options_type else None
    custom = _byte_vector(b, op.custom_options, 4) if op.custom_options else None
    b.StartObject(7)
    b.PrependUint32Slot(0, codes.index(_opcode_key(op)), 0)
    b.PrependUOffsetTRelativeSlot(1, inputs, 0)
    b.PrependUOffsetTRelativeSlot(2, outputs, 0)
    if opts is not None:
        b.PrependUint8Slot(3, OPTIONS[op.options_type], 0)
        b.PrependUOffsetTRelativeSlot(4, opts, 0)
    if custom is not None:
        b.PrependUOffsetTRelativeSlot(5, custom, 0)
    return b.EndObject()


def _write_subgraph(b: flatbuffers.Builder, graph: Graph, tensors: list[int],
                    operators: list[int]) -> int:  # fmt: skip
    """The ``SubGraph`` table: tensors, inputs, outputs, operators and name."""
    sg_name = b.CreateString(graph.name)
    sg_tensors, sg_ops = _vector_of_tables(b, tensors), _vector_of_tables(b, operators)
    sg_in, sg_out = _int_vector(b, graph.inputs), _int_vector(b, graph.outputs)
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, sg_tensors, 0)
    b.PrependUOffsetTRelativeSlot(1, sg_in, 0)
    b.PrependUOffsetTRelativeSlot(2, sg_out, 0)
    b.PrependUOffsetTRelativeSlot(3, sg_ops, 0)
    b.PrependUOffsetTRelativeSlot(4, sg_name, 0)
    return b.EndObject()


def _write_opcode(b: flatbuffers.Builder, code: int, custom_name: str | None) -> int:
    """An ``OperatorCode`` table (the deprecated byte code capped at 127, as the schema asks)."""
    name = b.CreateString(custom_name) if custom_name else None
    b.StartObject(4)
    b.PrependInt8Slot(0, min(code, 127), 0)
    if name is not None:
        b.PrependUOffsetTRelativeSlot(1, name, 0)
    b.PrependInt32Slot(2, 1, 1)
    b.PrependInt32Slot(3, code, 0)
    return b.EndObject()


def _write_metadata(b: flatbuffers.Builder, name: str, buf: int) -> int:
    """A ``Metadata`` table: its name and the buffer holding its bytes."""
    s = b.CreateString(name)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, s, 0)
    b.PrependUint32Slot(1, buf, 0)
    return b.EndObject()


def _write_model(b: flatbuffers.Builder, description: str, opcodes: list[int], subgraph: int,
                 buffers: list[int], metas: list[int]) -> int:  # fmt: skip
    """The root ``Model`` table (schema version, codes, the one subgraph, buffers, metadata)."""
    desc = b.CreateString(description)
    v_codes, v_subgraphs = _vector_of_tables(b, opcodes), _vector_of_tables(b, [subgraph])
    v_buffers = _vector_of_tables(b, buffers)
    v_meta = _vector_of_tables(b, metas) if metas else None
    b.StartObject(8)
    b.PrependUint32Slot(0, SCHEMA_VERSION, 0)
    b.PrependUOffsetTRelativeSlot(1, v_codes, 0)
    b.PrependUOffsetTRelativeSlot(2, v_subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(3, desc, 0)
    b.PrependUOffsetTRelativeSlot(4, v_buffers, 0)
    if v_meta is not None:
        b.PrependUOffsetTRelativeSlot(6, v_meta, 0)
    return b.EndObject()


def flexbuffer_map(values: dict[str, int]) -> bytes:
    """A flexbuffer map of integers (the custom options of LCE's ops)."""
    return bytes(flexbuffers.Dumps({k: int(v) for k, v in values.items()}))


# --------------------------------------------------------------------------- reading


class _T:
    """Field access on one flatbuffer table by slot number."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.t = Table(buf, pos)

    def _off(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)

    def scalar(self, slot: int, flags, default):
        o = self._off(slot)
        return self.t.Get(flags, o + self.t.Pos) if o else default

    def table(self, slot: int) -> _T | None:
        o = self._off(slot)
        return _T(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot: int) -> list[_T]:
        o = self._off(slot)
        if not o:
            return []
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return [_T(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(n)]

    def array(self, slot: int, dtype) -> np.ndarray | None:
        o = self._off(slot)
        if not o:
            return None
        dtype = np.dtype(dtype).newbyteorder("<")
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return np.frombuffer(self.t.Bytes, dtype, n, start)

    def string(self, slot: int) -> str | None:
        o = self._off(slot)
        return self.t.String(o + self.t.Pos).decode() if o else None


def _read_options(kind: str, t: _T) -> dict:
    from flatbuffers import number_types as N

    out = {}
    for name, slot, k, default in OPTION_FIELDS.get(kind, []):
        if k == "IntVector":
            a = t.array(slot, np.int32)
            out[name] = None if a is None else [int(v) for v in a]
        else:
            flags = {"Int8": N.Int8Flags, "Int32": N.Int32Flags, "Bool": N.BoolFlags}[k]
            out[name] = t.scalar(slot, flags, default)
    return out


def read(data: bytes) -> dict:
    """Parse a TFLite flatbuffer into plain Python: ``{"description", "metadata", "inputs",
    "outputs", "tensors": [{name, shape, dtype, data}], "ops": [{code, inputs, outputs,
    options}]}`` (``data``: the constant's numpy array, or None; ``options``: the builtin
    options table or the custom op's flexbuffer as a dict)."""
    from flatbuffers import number_types as N

    data = bytes(data)
    if data[4:8] != FILE_IDENTIFIER:
        raise ValueError("not a TFLite flatbuffer (no TFL3 file identifier)")
    model = _T(data, flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, data, 0))
    buffers = [bt.array(0, np.uint8) for bt in model.tables(4)]
    codes = []
    for oc in model.tables(1):
        code = max(oc.scalar(0, N.Int8Flags, 0), oc.scalar(3, N.Int32Flags, 0))
        custom = oc.string(1)
        codes.append(
            custom if code == BUILTIN["CUSTOM"] and custom else BUILTIN_NAMES.get(code, code)
        )
    (sg,) = model.tables(2)[:1]
    tensors = []
    for tt in sg.tables(0):
        shape = tuple(int(s) for s in tt.array(0, np.int32))
        dtype = _DTYPES.get(tt.scalar(1, N.Int8Flags, 0))
        raw = buffers[tt.scalar(2, N.Uint32Flags, 0)]
        value = None
        if raw is not None and raw.size and dtype is not None:
            value = np.frombuffer(raw.tobytes(), dtype.newbyteorder("<")).reshape(shape)
        tensors.append({"name": tt.string(3), "shape": shape, "dtype": dtype, "data": value})
    ops = []
    for ot in sg.tables(3):
        code = codes[ot.scalar(0, N.Uint32Flags, 0)]
        kind = OPTIONS_NAMES.get(ot.scalar(3, N.Uint8Flags, 0))
        options = {}
        if kind is not None:
            options = _read_options(kind, ot.table(4))
        custom = ot.array(5, np.uint8)
        if custom is not None and custom.size:
            options = dict(flexbuffers.Loads(custom.tobytes()))
        ops.append(
            {
                "code": code,
                "inputs": [int(i) for i in ot.array(1, np.int32)],
                "outputs": [int(i) for i in ot.array(2, np.int32)],
                "options": options,
            }
        )
    metadata = {}
    for mt in model.tables(6):
        raw = buffers[mt.scalar(1, N.Uint32Flags, 0)]
        metadata[mt.string(0)] = b"" if raw is None else raw.tobytes()
    return {
        "version": model.scalar(0, N.Uint32Flags, 0),
        "description": model.string(3),
        "metadata": metadata,
        "inputs": [int(i) for i in sg.array(1, np.int32)],
        "outputs": [int(i) for i in sg.array(2, np.int32)],
        "tensors": tensors,
        "ops": ops,
    }


def op_histogram(data: bytes) -> dict[str, int]:
    """``{op name: count}`` of a TFLite flatbuffer, sorted by name (custom ops by their name)."""
    hist: dict[str, int] = {}
    for op in read(data)["ops"]:
        hist[str(op["code"])] = hist.get(str(op["code"]), 0) + 1
    return dict(sorted(hist.items()))
