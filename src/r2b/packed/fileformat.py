"""The ``.r2b`` file: a packed model with its architecture, validated on load.

Since format version 2 a ``.r2b`` file is a safetensors file (the container r2b's checkpoints use;
https://github.com/huggingface/safetensors, ``docs/format``): an 8-byte little-endian header
length, a JSON header naming each tensor's dtype, shape and byte range, then the tensor bytes.
Its ``__metadata__`` (strings only) has one entry, ``"r2b"``, a JSON object (one key, so that
the bytes do not depend on the order safetensors writes its metadata in)::

    {"format": "r2b.packed", "version": 2, "producer": "r2b <version>",
     "crc32": "0123abcd",       # CRC-32 (zlib) of the tensors' bytes in the order of their names
     "model": {"arch": {...},   # create_model(name, **kwargs) of the float model
               "binary_convs": [{"name": "blocks.0.half1.conv", "in_channels": 64,
                                 "out_channels": 64, "kernel_size": [3, 3], "stride": 1,
                                 "padding": 1, "pad_value": 1.0, "bits": "blocks.0.half1.conv.bits",
                                 "alpha": "blocks.0.half1.conv.alpha"}]}}

Binary convolutions are stored as their sign bits, canonical ``(O, kh, kw, ceil(C / 64))`` uint64
words (``r2b.packed.bitpack``), plus ``alpha = mean|W|`` per output channel when the model scales
by it; every other tensor of the float model's ``state_dict`` (stem, BatchNorms with their running
statistics, PReLU slopes, scales, gates, shifts, shortcuts, classifier) is stored as it is.
BatchNorm's ``num_batches_tracked`` counters are left out (inference does not use them).

An engine with int8 float layers (``to_packed(model, "int8", calibration)``) adds
``"float_layers": "int8"`` to ``"model"``; its tensors are then those of the int8 structure
(``r2b.packed.int8.int8_structure``: ``weight_q`` int8, ``inv_scale``, ``zero_point``, and the
``Dequantize`` ``multiplier`` / ``bias`` in place of the folded BatchNorms), and
``"int8_classifier": true`` when the classifier is int8 too (``fc.0`` its ``Int8Linear``,
``fc.1`` its ``Dequantize``; int8 files without the key hold a float classifier). Without
``"float_layers"`` the float layers are float (every file written before int8 mode).

Why safetensors and not a container of r2b's own (format 1, r2b 0.1): it is the format the
checkpoints already use, it stores uint64 words and string metadata, every framework and viewer
reads it, and it cannot execute code; safetensors has no checksum, so the CRC-32 in the metadata
keeps the one thing the old container added. A format 1 file (magic ``R2BPACK``) gets one line
saying how to re-export it.

``load`` checks the container, the metadata, the checksum and the tensor table before it builds
anything, and reports any defect as one ``PackedFileError`` naming the file and what to do.
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

FORMAT = "r2b.packed"
FORMAT_VERSION = 2
#: The first bytes of a format 1 file (r2b 0.1's own container).
LEGACY_MAGIC = b"R2BPACK\0"
_LENGTH = struct.Struct("<Q")


class PackedFileError(UserError):
    """A ``.r2b`` file that is missing, truncated, corrupt or of another format version."""


def save(model: torch.nn.Module, path: str | Path) -> int:
    """Write a ``PackedResNet`` (or a fully binary float model, packed first) to ``path``,
    through a temporary file and a rename; returns the file size in bytes."""
    from r2b.io import atomic_write

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
    header = {"arch": record.arch, "binary_convs": convs}
    if record.float_layers != "float":
        header["float_layers"] = record.float_layers  # absent: float (files before int8 mode)
    if record.int8_classifier:
        header["int8_classifier"] = True  # absent: a float classifier (files before it)
    return _encode(header, tensors)


def _encode(header: dict, tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save as st_save

    from r2b import __version__

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    record = {"format": FORMAT, "version": FORMAT_VERSION, "producer": f"r2b {__version__}",
              "crc32": _crc(tensors), "model": header}  # fmt: skip
    return st_save(tensors, metadata={"r2b": json.dumps(record, separators=(",", ":"))})


def _crc(tensors: dict[str, np.ndarray]) -> str:
    """CRC-32 of the tensors' bytes in the order of their names, as 8 hex digits."""
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(np.ascontiguousarray(tensors[name]).view(np.uint8).data, crc)
    return f"{crc:08x}"


def read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(header, tensors)`` of a ``.r2b`` file, validated (``PackedFileError`` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"packed model {path} does not exist; check the path")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PackedFileError(
            f"cannot read packed model {path} ({err.strerror or err}); check its permissions"
        ) from None
    return decode(data, str(path))


def decode(data: bytes, source: str = "<bytes>") -> tuple[dict, dict[str, np.ndarray]]:
    """Validate and split the bytes of a ``.r2b`` file into ``(header, tensors)``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    def fail(what: str) -> PackedFileError:
        return PackedFileError(
            f"packed model {source} is {what}; export it again with `r2b export`"
        )

    if data.startswith(LEGACY_MAGIC):
        raise PackedFileError(
            f"packed model {source} is in r2b 0.1's container (format 1); export it again from "
            "its checkpoint with this r2b (`r2b export CHECKPOINT -o FILE`)"
        )
    metadata, need = _container_header(data, fail)
    if len(data) < need:
        raise fail(f"truncated ({len(data)} of {need} bytes)")
    if "r2b" not in metadata:
        raise fail("not an r2b packed model (a safetensors file without r2b's metadata)")
    try:
        record = json.loads(metadata["r2b"])
        version = record["version"]
    except (ValueError, KeyError, TypeError):
        raise fail("corrupt (its r2b metadata is not a JSON record)") from None
    if record.get("format") != FORMAT:
        raise fail("not an r2b packed model (a safetensors file without r2b's metadata)")
    if version != FORMAT_VERSION:
        raise PackedFileError(
            f"packed model {source} has format version {version}, this r2b reads "
            f"version {FORMAT_VERSION}; export it again with this r2b (`r2b export`)"
        )
    try:
        tensors = st_load(data)
    except SafetensorError as err:
        raise fail(f"corrupt ({err})") from None
    if len(data) != need or _crc(tensors) != record.get("crc32"):
        raise fail("corrupt (checksum or size mismatch)")
    header = record.get("model")
    if not isinstance(header, dict) or not isinstance(header.get("binary_convs"), list):
        raise fail("corrupt (no binary convolution table)")
    return header, {k: np.array(v) for k, v in tensors.items()}  # writable copies


def _container_header(data: bytes, fail) -> tuple[dict, int]:
    """The safetensors ``__metadata__`` and the size the header says the file has."""
    if len(data) < _LENGTH.size:
        raise fail(f"truncated ({len(data)} bytes)")
    (length,) = _LENGTH.unpack_from(data)
    if length > 100_000_000 or data[_LENGTH.size : _LENGTH.size + 1] not in (b"{", b""):
        raise fail("not an r2b packed model (no safetensors header)")
    if len(data) < _LENGTH.size + length:
        raise fail(f"truncated ({len(data)} bytes, header alone needs {_LENGTH.size + length})")
    try:
        table = json.loads(data[_LENGTH.size : _LENGTH.size + length])
        ends = [int(v["data_offsets"][1]) for k, v in table.items() if k != "__metadata__"]
        metadata = table.get("__metadata__") or {}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise fail("not an r2b packed model (no safetensors header)") from None
    if not isinstance(metadata, dict):
        raise fail("corrupt (metadata is not a table)")
    return metadata, _LENGTH.size + length + max(ends, default=0)


def load(path: str | Path) -> PackedResNet:
    """Read and validate a ``.r2b`` file and build its ``PackedResNet``."""
    header, tensors = read(path)
    return from_parts(header, tensors, str(path))


def from_parts(header: dict, tensors: dict[str, np.ndarray], source: str) -> PackedResNet:
    """The ``PackedResNet`` of a decoded header and tensor table."""
    from r2b.models import model_from_arch
    from r2b.packed.int8 import (
        WEIGHT_LEVELS,
        int8_sites,
        int8_structure,
        onednn_available,
        set_backend,
    )

    def fail(what: str) -> PackedFileError:
        return PackedFileError(f"packed model {source} is {what}; export it again")

    arch = header.get("arch")
    if not isinstance(arch, dict) or "name" not in arch:
        raise fail("missing its architecture")
    try:
        model = model_from_arch(arch)
    except ValueError as err:
        raise fail(f"of an architecture this r2b cannot build ({err})") from None
    float_layers = header.get("float_layers", "float")
    if float_layers not in ("float", "int8"):
        raise fail(f"of float layers {float_layers!r} that this r2b cannot run (float or int8)")
    int8_classifier = header.get("int8_classifier", False)
    if not isinstance(int8_classifier, bool) or (int8_classifier and float_layers != "int8"):
        raise fail("inconsistent (int8_classifier is not true or false, or without int8 layers)")
    if float_layers == "int8":
        model = int8_structure(model, int8_sites(model, classifier=int8_classifier))
        set_backend(model, "onednn" if onednn_available() else "reference")
    binary = {id(m) for m in getattr(model, "binary_convs", list)()}
    names = {n: m for n, m in model.named_modules() if id(m) in binary}
    specs = header.get("binary_convs") or []
    if not all(_conv_entry_ok(s) for s in specs):
        raise fail("inconsistent (a binary convolution entry has missing or mistyped fields)")
    if [s["name"] for s in specs] != list(names):
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
        if (
            key.endswith("weight_q")
            and int(np.abs(tensors[key].astype(np.int16)).max()) > WEIGHT_LEVELS
        ):
            raise fail(
                f"of int8 weights beyond +-{WEIGHT_LEVELS} (files written before that limit "
                "held up to +-127, which x86 CPUs without VNNI do not multiply exactly)"
            )
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


def _conv_entry_ok(entry: object) -> bool:
    """A ``binary_convs`` entry with the fields ``from_parts`` reads, of the right types."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("bits"), str)
        and (entry.get("alpha") is None or isinstance(entry.get("alpha"), str))
        and isinstance(entry.get("pad_value", 1.0), (int, float))
        and not isinstance(entry.get("pad_value", 1.0), bool)
    )
