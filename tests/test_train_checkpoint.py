"""Checkpoints: safetensors weights and training state, atomic writes, clear errors on bad files."""

import random

import numpy as np
import pytest
import torch

from r2b.errors import UserError
from r2b.models import create_model
from r2b.train.checkpoint import (
    load_model,
    load_state_into,
    load_training_state,
    read_weights,
    save_training_state,
    save_weights,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest and steady on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(stage="ban", name="r2b_resnet18"):
    kw = {"stage": stage} if name != "resnet18" else {}
    return create_model(name, num_classes=10, stem="cifar", width=0.125, **kw)


def test_weights_round_trip_rebuilds_the_architecture(tmp_path):
    torch.manual_seed(0)
    model = tiny("bnn")
    path = tmp_path / "w.safetensors"
    save_weights(path, model, {"epoch": 3, "top1": 50.0})
    loaded, info = load_model(path)
    assert info == {"epoch": 3, "top1": 50.0}
    assert loaded.arch == model.arch
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_ban_checkpoint_initialises_a_bnn_student(tmp_path):
    """fp, ban and bnn share parameter names: a ban checkpoint loads into a bnn model."""
    path = tmp_path / "ban.safetensors"
    save_weights(path, tiny("ban"))
    state, arch, _ = read_weights(path)
    student = tiny("bnn")
    load_state_into(student, state, path, arch)
    assert torch.equal(student.blocks[0].half1.conv.weight, state["blocks.0.half1.conv.weight"])


def test_another_architecture_is_a_user_error(tmp_path):
    path = tmp_path / "real.safetensors"
    save_weights(path, tiny(name="resnet18"))
    state, arch, _ = read_weights(path)
    with pytest.raises(UserError, match="resnet18.*does not fit r2b_resnet18"):
        load_state_into(tiny("ban"), state, path, arch)
    wide = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.25, stage="ban")
    save_weights(path, wide)
    state, arch, _ = read_weights(path)
    with pytest.raises(UserError, match="mis-shaped"):
        load_state_into(tiny("ban"), state, path, arch)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_are_user_errors(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    save_weights(path, tiny())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 7 + b"not a checkpoint at all" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_model(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(UserError, match="not an r2b weights file"):
        load_model(other)


def test_training_state_restores_optimizer_rng_and_progress(tmp_path):
    torch.manual_seed(0)
    model = tiny("bnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    random.seed(5)
    np.random.seed(6)
    path = tmp_path / "state.safetensors"
    save_training_state(path, model, opt, {"epoch": 2, "step": 4, "history": [{"epoch": 1}]})
    expected = (torch.rand(3), random.random(), np.random.rand())

    model2 = tiny("bnn")
    opt2 = torch.optim.Adam(model2.parameters(), lr=5.0)
    progress = load_training_state(path, model2, opt2)
    assert progress == {"epoch": 2, "step": 4, "history": [{"epoch": 1}]}
    after = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])
    # the next steps are identical
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_state_file_is_also_a_weights_file(tmp_path):
    model = tiny("ban")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "state.safetensors"
    save_training_state(path, model, opt, {"epoch": 1, "step": 1, "history": []})
    loaded, _ = load_model(path)
    assert loaded.arch == model.arch
