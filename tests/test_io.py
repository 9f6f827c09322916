"""r2b.io: atomic writes (whole files or none, a one-line error naming the file) and JSON."""

import json

import pytest

from r2b.errors import UserError
from r2b.io import atomic_write, write_json


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")
    atomic_write(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_tmp(tmp_path, monkeypatch):
    """A disk that fills up while a checkpoint is written: one-line UserError naming the file,
    the .tmp removed, the previous file byte for byte as it was."""
    import errno
    import os

    path = tmp_path / "last.safetensors"
    atomic_write(path, b"the previous checkpoint")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError) as err:
        atomic_write(path, b"x" * 1000)
    msg = str(err.value)
    assert str(path) in msg and "No space left" in msg and "free disk space" in msg
    assert "previous last.safetensors is unchanged" in msg and "\n" not in msg
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_write_json_is_indented_with_a_final_newline(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": [1, None], "b": "x"})
    assert path.read_text() == '{\n  "a": [\n    1,\n    null\n  ],\n  "b": "x"\n}\n'
    assert json.loads(path.read_text()) == {"a": [1, None], "b": "x"}
