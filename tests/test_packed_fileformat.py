"""The .r2b file: round trip, size, and one clear error for every kind of damage."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from r2b.errors import UserError
from r2b.models import create_model
from r2b.packed import PackedFileError, load, save, to_packed
from r2b.packed.fileformat import FORMAT_VERSION, LEGACY_MAGIC


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.2).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("packed") / "small.r2b"
    save(model, path)
    return model, path


def test_round_trip_is_exact(small):
    model, path = small
    packed = load(path)
    assert packed.arch == model.arch
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))
    # saving the loaded model gives the same bytes
    again = path.with_name("again.r2b")
    save(packed, again)
    assert again.read_bytes() == path.read_bytes()


def test_imagenet_real_to_binary_fits_in_5_2_mib(tmp_path):
    model = create_model("r2b_resnet18").eval()
    size = save(to_packed(model), tmp_path / "r2b.r2b")
    assert size == (tmp_path / "r2b.r2b").stat().st_size
    assert size <= 5.2 * 2**20  # larq's summary: 5.13 MiB; float: 45.7 MiB


def _damaged(path, tmp_path, data):
    bad = tmp_path / "bad.r2b"
    bad.write_bytes(data)
    with pytest.raises(PackedFileError) as info:
        load(bad)
    assert isinstance(info.value, UserError)
    assert str(bad) in str(info.value)
    return str(info.value)


def test_truncated_file(small, tmp_path):
    _, path = small
    data = path.read_bytes()
    for cut in (0, 5, 20, 1000, len(data) - 1):
        assert "truncated" in _damaged(path, tmp_path, data[:cut])


def test_corrupt_byte(small, tmp_path):
    _, path = small
    data = bytearray(path.read_bytes())
    for at in (40, len(data) // 2, len(data) - 10):
        flipped = bytearray(data)
        flipped[at] ^= 0x10
        assert "corrupt" in _damaged(path, tmp_path, bytes(flipped))


def _record(data: bytes) -> dict:
    """The r2b record in a ``.r2b`` file's safetensors metadata."""
    (length,) = struct.unpack_from("<Q", data)
    return json.loads(json.loads(data[8 : 8 + length])["__metadata__"]["r2b"])


def _with_metadata(data: bytes, raw: str | None = None, **changes) -> bytes:
    """The same safetensors file with entries of its r2b record changed (or the raw string)."""
    (length,) = struct.unpack_from("<Q", data)
    table = json.loads(data[8 : 8 + length])
    table["__metadata__"]["r2b"] = (
        raw if raw is not None else json.dumps({**_record(data), **changes})
    )
    head = json.dumps(table).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data[8 + length :]


def test_wrong_version_legacy_container_and_other_files(small, tmp_path):
    _, path = small
    data = path.read_bytes()
    message = _damaged(path, tmp_path, _with_metadata(data, version=FORMAT_VERSION + 1))
    assert f"version {FORMAT_VERSION + 1}" in message and "export it again" in message
    legacy = _damaged(path, tmp_path, LEGACY_MAGIC + data[8:])
    assert "r2b 0.1's container" in legacy and "r2b export CHECKPOINT" in legacy
    assert "not an r2b packed model" in _damaged(path, tmp_path, b"PK\x03\x04" + bytes(99))
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, plain)
    assert "without r2b's metadata" in _damaged(path, tmp_path, plain.read_bytes())
    # the file is a plain safetensors file any reader opens
    from safetensors.numpy import load as st_load

    assert "blocks.0.half1.conv.bits" in st_load(data)


def test_mistyped_records_are_one_line(small, tmp_path):
    _, path = small
    data = path.read_bytes()
    model = _record(data)["model"]
    for entry in ("not a dict", {"name": 3}, {**model["binary_convs"][0], "pad_value": "one"}):
        broken = dict(model, binary_convs=[entry] + model["binary_convs"][1:])
        message = _damaged(path, tmp_path, _with_metadata(data, model=broken))
        assert "missing or mistyped" in message
    assert "not a JSON record" in _damaged(path, tmp_path, _with_metadata(data, raw="{not json"))
    assert "corrupt" in _damaged(path, tmp_path, _with_metadata(data, model="a string"))


def test_missing_file(tmp_path):
    with pytest.raises(PackedFileError, match="does not exist"):
        load(tmp_path / "nope.r2b")
