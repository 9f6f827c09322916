"""The registry (r2b.models.registry): the families it lists, models rebuilt from their ``arch``
records, and the model facts it owns: a family and a stem registered here, in the registry and
with the model module's generic blocks only, go through every consumer without an edit there.

The toy family combines half-block parts no registered family does (ReActNet's learned shift
before the sign, the strong baseline's learned scale, RPReLU before the shortcut add); the toy
stem is a 5x5 stride-2 conv without a max-pool. Both exist only inside the ``toy`` fixture
(``temporary_registrations``), so the rest of the session sees the registry as shipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
import yaml
from networks import binary_networks, check_binary_convs, check_network_logits, randomise

from r2b.cli import main
from r2b.models import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_STEM,
    STEMS,
    StemDesign,
    create_model,
    input_size_problem,
    list_models,
    list_stems,
    model_from_arch,
    register_model,
    register_stem,
    temporary_registrations,
)
from r2b.models.resnet import BinaryResNet18, HalfBlockDesign
from r2b.packed import load, save, to_packed
from r2b.summary import summarize

#: the families as shipped, read before the toy fixture registers one
BINARY = list_models(binary=True)
TOY = "toy_resnet18"
TOY_STEM = StemDesign("toy5x5", kernel=5, stride=2, max_pool=False, input_size=32)
TOY_DESIGN = HalfBlockDesign(pre="shift", scaling="scale", post_bn=False, act="rprelu")


def toy_resnet18(
    num_classes: int = 1000, stem: str = DEFAULT_STEM, width: float = 1.0, stage: str = "bnn",
    **options,
) -> BinaryResNet18:  # fmt: skip
    """A binary ResNet-18 whose half blocks are ``RPReLU(scale * conv(sign(x + b))) + x``."""
    return BinaryResNet18(num_classes, stem, width, stage, design=TOY_DESIGN, **options)


@pytest.fixture
def toy():
    """The toy family and the toy stem, registered for one test and unregistered after it."""
    with temporary_registrations():
        register_stem(TOY_STEM)
        register_model(TOY, binary=True)(toy_resnet18)
        yield


def _toy_model(width: float = 0.25, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomise(create_model(TOY, num_classes=10, stem=TOY_STEM.name, width=width), seed)


def test_the_combination_is_new():
    """No registered family builds the toy's half block (else the test would prove less)."""
    for name in list_models(binary=True):
        half = create_model(name, stem="cifar", width=0.125).blocks[0].half1
        act = type(getattr(half, "act", None)).__name__
        assert (hasattr(half, "shift"), hasattr(half, "scale"), act) != (True, True, "RPReLU"), name


def test_registration_is_undone_after_the_block():
    before = (list_models(), list_stems())
    with temporary_registrations():
        register_stem(TOY_STEM)
        register_model(TOY)(toy_resnet18)
        assert TOY in list_models(binary=True) and TOY_STEM.name in STEMS
    assert (list_models(), list_stems()) == before
    assert TOY_STEM.name not in STEMS and TOY_STEM.name not in DEFAULT_INPUT_SIZE


def test_the_registry_answers_for_the_toy(toy):
    assert TOY in list_models(binary=True) and TOY not in list_models(binary=False)
    assert TOY_STEM.name in STEMS and DEFAULT_INPUT_SIZE[TOY_STEM.name] == 32
    assert input_size_problem(TOY_STEM.name, 48) is None  # 24 after the stem: a multiple of 8
    assert "multiple of 16, e.g. 48" in input_size_problem(TOY_STEM.name, 40)
    model = create_model(TOY, stem=TOY_STEM.name, width=0.125)
    assert model.stem[0].kernel_size == (5, 5) and len(model.stem) == 3  # conv, BN, PReLU
    feats = model.forward_with_features(torch.randn(2, 3, 32, 32))[1]
    assert [f.shape[-1] for f in feats] == [16, 16, 8, 8, 4, 4, 2, 2]


def test_summary_counts_the_toy(toy, capsys):
    """``r2b summary`` takes the new name and stem as flags and counts at the stem's input side."""
    argv = ["summary", TOY, "--stem", TOY_STEM.name, "--width", "0.25", "--num-classes", "10"]
    assert main([*argv, "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    model = create_model(TOY, stem=TOY_STEM.name, width=0.25, num_classes=10)
    summary = summarize(model, 32)
    assert totals == asdict(summary.totals)
    (stem_conv,) = [r for r in summary.rows if r.name == "stem.0"]
    assert stem_conv.flops == 16 * 16 * 16 * 3 * 5 * 5  # 16x16 map, 16 channels, 5x5x3 taps
    assert main(argv) == 0 and "BOPs" in capsys.readouterr().out


@pytest.mark.parametrize("stem", ["cifar", TOY_STEM.name])
def test_one_training_step_and_its_checkpoint_export(toy, tmp_path, capsys, stem):
    """``r2b train`` one step on the embedded data, then ``r2b export`` of its checkpoint."""
    config = {
        "name": "toy", "seed": 0,
        "data": {"name": "default", "train_limit": 32, "test_limit": 32, "eval_batch_size": 32},
        "runtime": {"accelerator": "cpu", "progress": False, "num_threads": 1},
        "report": {"attention_images": 1},
        "stages": [{"name": "bnn", "epochs": 1, "batch_size": 32,
                    "model": {"name": TOY, "stage": "bnn", "stem": stem, "width": 0.125}}],
    }  # fmt: skip
    path, out = tmp_path / "toy.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    try:
        code = main(["train", "--config", str(path), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["bnn"]
    capsys.readouterr()
    packed_file = tmp_path / "toy.r2b"
    assert main(["export", str(out / "bnn" / "best.safetensors"), "-o", str(packed_file)]) == 0
    assert "logits identical to the float model" in capsys.readouterr().out
    assert load(packed_file).arch["name"] == TOY


def test_export_to_r2b_is_bit_for_bit(toy, tmp_path, capsys):
    """``to_packed`` / ``.r2b`` round trip, and ``r2b export`` of the name with random weights."""
    model = _toy_model()
    packed = to_packed(model)
    save(packed, tmp_path / "toy.r2b")
    again = load(tmp_path / "toy.r2b")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(packed(x), expected) and torch.equal(again(x), expected)
    argv = ["export", TOY, "--stem", TOY_STEM.name, "--width", "0.125", "-o",
            str(tmp_path / "named.r2b")]  # fmt: skip
    assert main(argv) == 0
    assert "logits identical to the float model" in capsys.readouterr().out


def test_the_registry_iterating_packed_checks_include_the_toy(toy):
    """test_packed_engine.py's per-network checks, on every row the toy family or stem adds."""
    rows = [r for r in binary_networks() if TOY in r or TOY_STEM.name in r]
    assert (TOY, TOY_STEM.name, 32, rows[0][3]) in rows
    assert len(rows) == len(list_stems()) + len(list_models(binary=True)) - 1
    for row in rows:
        check_binary_convs(*row)
        check_network_logits(*row)


def test_lce_export(toy, tmp_path):
    pytest.importorskip("flatbuffers", reason="r2b.lce needs the [lce] extra (flatbuffers)")
    from r2b.lce import export

    info = export(_toy_model(), tmp_path / "toy.tflite", input_size=32)
    assert info["ops"]["LceBconv2d"] == 16
    assert info["input_shape"] == [1, 32, 32, 3]


def test_lce_interpreter_agrees(toy):
    """The exported toy in LCE's own interpreter agrees with r2b (skips without that venv)."""
    pytest.importorskip("flatbuffers", reason="r2b.lce needs the [lce] extra (flatbuffers)")
    from r2b.lce.check import compare
    from r2b.lce.runtime import LceUnavailable, ensure_venv

    try:
        python = ensure_venv()
    except LceUnavailable as err:
        pytest.skip(f"LCE's interpreter is not available here: {err}")
    case = {"label": "toy", "input_size": 32, "model": _toy_model(width=0.125)}
    (report,) = compare([case], n_inputs=64, n_probe=4, python=python)
    assert report["bconv_exact"] and report["top1_agree"] >= 0.95


def test_openvino_export(toy, tmp_path):
    pytest.importorskip("openvino", reason='OpenVINO is not installed: pip install ".[openvino]"')
    from r2b import openvino as r2b_openvino

    model = _toy_model()
    info = r2b_openvino.export(model, tmp_path / "toy.xml")
    assert info["binary_convs"] == 16 and info["input_shape"][-1] == 32  # the stem's default
    check = r2b_openvino.check_export(model, info["xml"], n_inputs=64)
    assert check["binary_convolutions"] == 16 and check["top1_equal"] >= 60


def test_registry_lists_the_families():
    assert set(BINARY) == {"sb_resnet18", "r2b_resnet18", "bireal_resnet18", "reactnet_resnet18"}
    assert list_models(binary=False) == ["resnet18"]
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg")


def test_model_from_arch_rebuilds_and_names_bad_records():
    model = create_model("reactnet_resnet18", stem="cifar", width=0.125, num_classes=3)
    again = model_from_arch(model.arch)
    assert again.arch == model.arch
    assert list(again.state_dict()) == list(model.state_dict())
    for bad, match in (([], "not a dict"), ({"stem": "cifar"}, "not a dict"),
                       ({"name": "vgg"}, "unknown model"),
                       ({"name": "sb_resnet18", "depth": 50}, "no such arguments")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            model_from_arch(bad)
