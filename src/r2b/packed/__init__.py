"""Bitpacked inference: binary convolutions as XOR + popcount on 64-bit words (CPU).

- ``to_packed(model)``: a fully binary ResNet-18 -> ``PackedResNet`` (bit-exact to the float model)
- ``save(model, path)`` / ``load(path)``: the ``.r2b`` file (format in ``r2b.packed.fileformat``)
"""

from r2b.packed.engine import PackedResNet, to_packed
from r2b.packed.fileformat import PackedFileError, load, save

__all__ = ["PackedFileError", "PackedResNet", "load", "save", "to_packed"]
