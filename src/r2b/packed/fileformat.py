"""The ``.r2b`` file: a packed model with its architecture, validated on load.

Layout (all integers little-endian)::

    offset 0    magic    8 bytes  b"R2BPACK\\0"
            8   version  uint32   FORMAT_VERSION
           12   length   uint32   of the header
           16   header   UTF-8 JSON (below), then zero padding to a multiple of 8
            D   data     the tensors, each at an 8-byte aligned offset from D
      end - 4   crc32    uint32   zlib CRC-32 of every byte before it

Header::

    {"format": "r2b.packed", "version": 1, "producer": "r2b <version>",
     "arch": {...},                        # create_model(name, **kwargs) of the float model
     "binary_convs": [{"name": "blocks.0.half1.conv", "in_channels": 64, "out_channels": 64,
                       "kernel_size": [3, 3], "stride": 1, "padding": 1, "pad_value": 1.0,
                       "bits": "blocks.0.half1.conv.bits", "alpha": "blocks.0.half1.conv.alpha"}],
     "tensors": {"<name>": {"dtype": "float32", "shape": [...], "offset": 0, "nbytes": 256}},
     "data_nbytes": 5000000}

Binary convolutions are stored as their sign bits, canonical ``(O, kh, kw, ceil(C / 64))`` uint64
words (``r2b.packed.bitpack``), plus ``alpha = mean|W|`` per output channel when the model scales
by it; every other tensor of the float model's ``state_dict`` (stem, BatchNorms with their running
statistics, PReLU slopes, scales, gates, shortcuts, classifier) is stored as it is. BatchNorm's
``num_batches_tracked`` counters are left out (inference does not use them).

``load`` checks magic, version, sizes, checksum, header and tensor table before it builds anything,
and reports any defect as one ``PackedFileError`` naming the file and what to do.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from r2b.errors import UserError
from r2b.packed.engine import PackedConv, PackedResNet, assemble, to_packed

MAGIC = b"R2BPACK\0"
FORMAT = "r2b.packed"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")
_CRC = struct.Struct("<I")
_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
           "int64": np.int64, "uint64": np.uint64}  # fmt: skip


class PackedFileError(UserError):
    """A ``.r2b`` file that is missing, truncated, corrupt or of another format version."""


def save(model: torch.nn.Module, path: str | Path) -> int:
    """Write a ``PackedResNet`` (or a fully binary float model, packed first) to ``path``,
    through a temporary file and a rename; returns the file size in bytes."""
    from r2b.train.checkpoint import atomic_write

    data = to_bytes(model)
    atomic_write(path, data)
    return len(data)


def to_bytes(model: torch.nn.Module) -> bytes:
    """The ``.r2b`` bytes of a ``PackedResNet`` or of a fully binary float model."""
    packed = model if isinstance(model, PackedResNet) else to_packed(model)
    record = packed.record
    if not record.arch:
        raise UserError("the model has no .arch record; build it with r2b.models.create_model")
    tensors: dict[str, np.ndarray] = {}
    convs = []
    for name, conv in record.binary_convs:
        tensors[f"{name}.bits"] = conv.bits
        alpha = None
        if conv.alpha is not None:
            alpha = f"{name}.alpha"
            tensors[alpha] = conv.alpha.numpy().astype(np.float32)
        convs.append({
            "name": name, "in_channels": conv.in_channels,
            "out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
            "stride": conv.stride, "padding": conv.padding,
            "pad_value": conv.pad_value, "bits": f"{name}.bits", "alpha": alpha,
        })  # fmt: skip
    for key, value in record.tensors.items():
        tensors[key] = value.contiguous().numpy()
    return _encode({"arch": record.arch, "binary_convs": convs}, tensors)


def _encode(header: dict, tensors: dict[str, np.ndarray]) -> bytes:
    from r2b import __version__

    table, chunks, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = arr.dtype.name
        if dtype not in _DTYPES:
            raise ValueError(f"cannot store {name} of dtype {dtype}")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        table[name] = {"dtype": dtype, "shape": list(arr.shape), "offset": offset,
                       "nbytes": len(raw)}  # fmt: skip
        pad = -len(raw) % 8
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    full = {"format": FORMAT, "version": FORMAT_VERSION, "producer": f"r2b {__version__}",
            **header, "tensors": table, "data_nbytes": offset}  # fmt: skip
    head = json.dumps(full, separators=(",", ":")).encode()
    head += b" " * (-(_PREFIX.size + len(head)) % 8)
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + b"".join(chunks)
    return body + _CRC.pack(zlib.crc32(body))


def read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(header, tensors)`` of a ``.r2b`` file, validated (``PackedFileError`` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"packed model {path} does not exist; check the path")
    return decode(path.read_bytes(), str(path))


def decode(data: bytes, source: str = "<bytes>") -> tuple[dict, dict[str, np.ndarray]]:
    """Validate and split the bytes of a ``.r2b`` file into ``(header, tensors)``."""

    def fail(what: str) -> PackedFileError:
        return PackedFileError(
            f"packed model {source} is {what}; export it again with `r2b export`"
        )

    if len(data) < _PREFIX.size + _CRC.size:
        if not MAGIC.startswith(data[: len(MAGIC)]):
            raise fail("not an r2b packed model (bad magic bytes)")
        raise fail(f"truncated ({len(data)} bytes)")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise fail("not an r2b packed model (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise PackedFileError(
            f"packed model {source} has format version {version}, this r2b reads version "
            f"{FORMAT_VERSION}; export it again with this r2b (`r2b export`)"
        )
    data_start = _PREFIX.size + head_len
    if data_start + _CRC.size > len(data):
        raise fail(f"truncated ({len(data)} bytes, header alone needs {data_start})")
    try:
        header = json.loads(data[_PREFIX.size : data_start])
        need = data_start + int(header["data_nbytes"]) + _CRC.size
    except (ValueError, KeyError, TypeError):
        header, need = None, None
    if need is not None and len(data) < need:
        raise fail(f"truncated ({len(data)} of {need} bytes)")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if header is None or need != len(data) or zlib.crc32(data[: -_CRC.size]) != crc:
        raise fail("corrupt (checksum or size mismatch)")
    if header.get("format") != FORMAT or not isinstance(header.get("tensors"), dict):
        raise fail("corrupt (no tensor table)")
    tensors = {}
    body = memoryview(data)[data_start : len(data) - _CRC.size]
    for name, entry in header["tensors"].items():
        try:
            dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            shape = tuple(int(s) for s in entry["shape"])
            start, nbytes = int(entry["offset"]), int(entry["nbytes"])
            ok = nbytes == int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            ok = ok and 0 <= start and start + nbytes <= len(body)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise fail(f"corrupt (bad table entry for {name!r})")
        arr = np.frombuffer(body[start : start + nbytes], dtype=dtype).reshape(shape)
        tensors[name] = arr.astype(dtype.newbyteorder("="), copy=True)
    return header, tensors


def load(path: str | Path) -> PackedResNet:
    """Read and validate a ``.r2b`` file and build its ``PackedResNet``."""
    header, tensors = read(path)
    return from_parts(header, tensors, str(path))


def from_parts(header: dict, tensors: dict[str, np.ndarray], source: str) -> PackedResNet:
    """The ``PackedResNet`` of a decoded header and tensor table."""
    from r2b.models import model_from_arch

    def fail(what: str) -> PackedFileError:
        return PackedFileError(f"packed model {source} is {what}; export it again")

    arch = header.get("arch")
    if not isinstance(arch, dict) or "name" not in arch:
        raise fail("missing its architecture")
    try:
        model = model_from_arch(arch)
    except ValueError as err:
        raise fail(f"of an architecture this r2b cannot build ({err})") from None
    binary = {id(m) for m in getattr(model, "binary_convs", list)()}
    names = {n: m for n, m in model.named_modules() if id(m) in binary}
    specs = header.get("binary_convs") or []
    if [s.get("name") for s in specs] != list(names):
        raise fail("inconsistent (its binary convolutions do not match the architecture)")
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.rsplit(".", 1)[0] in names and key.endswith(".weight"):
            continue
        if key not in tensors or tuple(tensors[key].shape) != tuple(value.shape):
            raise fail(f"inconsistent (tensor {key!r} missing or mis-shaped)")
        state[key] = torch.from_numpy(tensors[key])
    model.load_state_dict(state, strict=False)
    model.eval()
    convs = []
    for spec in specs:
        conv = names[spec["name"]]
        bits = tensors.get(spec["bits"])
        expected = (conv.out_channels, *conv.kernel_size, -(-conv.in_channels // 64))
        if bits is None or bits.dtype != np.uint64 or tuple(bits.shape) != expected:
            raise fail(f"inconsistent (bits of {spec['name']!r})")
        alpha = tensors.get(spec["alpha"]) if spec.get("alpha") else None
        if spec.get("alpha") and (alpha is None or alpha.shape != (conv.out_channels,)):
            raise fail(f"inconsistent (alpha of {spec['name']!r})")
        convs.append(PackedConv(
            bits=bits, in_channels=conv.in_channels, stride=conv.stride[0],
            padding=conv.padding[0], pad_value=float(spec.get("pad_value", 1.0)),
            alpha=None if alpha is None else torch.from_numpy(alpha),
        ))  # fmt: skip
    return assemble(model, convs)
