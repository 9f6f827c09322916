"""Writing files so that a crash or a full disk never leaves half of one.

Every write goes to ``<name>.tmp`` in the same folder, is flushed to disk, then ``os.replace``-d
over the target, so a killed process leaves either the old file or the new one, never half. A
write that fails (disk full, file-size limit, read-only folder) removes its ``.tmp`` and raises a
``UserError`` naming the file and what to do; the file it was to replace is left as it was.

- ``atomic_write(path, data)``: bytes.
- ``write_json(path, data)``: a JSON document, indented by two spaces, with a final newline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

from r2b.errors import UserError


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half file).

    On failure (``OSError``: no space, file too large, permission) the temporary file is removed
    and a ``UserError`` names the file and the reason; an older ``path`` stays untouched.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        kept = f"; the previous {path.name} is unchanged" if path.is_file() else ""
        raise UserError(
            f"cannot write {path} ({err.strerror or err}); {_write_advice(err)}{kept}"
        ) from None


def write_json(path: str | Path, data) -> None:
    """``data`` as indented JSON (and a final newline), written atomically."""
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def _write_advice(err: OSError) -> str:
    """What to do about a failed write, by its errno."""
    if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "free disk space (or raise the file-size limit) or write to another folder"
    if err.errno == errno.EISDIR:
        return "that is a folder: give a file name, or another output path"
    if err.errno in (errno.ENOTDIR, errno.ENOENT):
        return "a part of the path is not an existing folder: choose another output path"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable: choose another output path"
    return "check the output folder, or choose another one"
