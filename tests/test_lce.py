"""r2b.lce without LCE itself: the file's structure, the bit layout and errors (padding plans are
in test_lce_convert.py, the flatbuffer writer in test_lce_tflite.py, the checks in LCE's
interpreter in test_lce_check.py)."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("flatbuffers", reason="r2b.lce needs the [lce] extra (flatbuffers)")

from r2b.errors import UserError
from r2b.lce import PROBES, export, pack_filter, read
from r2b.lce.check import randomize_
from r2b.lce.convert import bn_affine
from r2b.lce.tflite import op_histogram
from r2b.models import create_model, list_models
from r2b.quantizers import weight_signs

FAMILIES = list_models(binary=True)
STEMS = [("cifar", 32), ("imagenet", 64)]
#: every op an exported file may hold: LCE's two binary ops and TFLite builtins of LCE 0.16
ALLOWED = {
    "LceQuantize", "LceBconv2d", "ADD", "AVERAGE_POOL_2D", "CONV_2D", "FULLY_CONNECTED",
    "LOGISTIC", "MAX_POOL_2D", "MUL", "PAD", "PADV2", "PRELU", "RESHAPE",
}  # fmt: skip


def _model(name, stem, seed=0, **kw):
    torch.manual_seed(seed)
    model = create_model(name, stem=stem, width=0.25, num_classes=10, **kw)
    return randomize_(model, seed).eval()


def test_families_are_the_registered_binary_ones():
    assert set(FAMILIES) == {"sb_resnet18", "r2b_resnet18", "bireal_resnet18", "reactnet_resnet18"}


def test_pack_filter_layout_and_sign_convention():
    w = torch.randn(3, 40, 3, 3, generator=torch.Generator().manual_seed(0))
    w[0, :5] = 0.0
    w[1, :5] = -0.0
    packed = pack_filter(w)
    assert packed.dtype == np.int32 and packed.shape == (3, 3, 3, 2)  # OHWI, ceil(40/32) words
    words = packed.view(np.uint32).astype(np.int64)
    bits = (words[..., None] >> np.arange(32)) & 1  # bit j of word k: channel 32 k + j
    bits = bits.reshape(3, 3, 3, 64)
    assert not bits[..., 40:].any()  # unused bits are 0
    signs = weight_signs(w, False)[0].permute(0, 2, 3, 1).numpy()  # r2b's sign(W), sign(0) = +1
    np.testing.assert_array_equal(1 - 2 * bits[..., :40], signs)


@pytest.mark.parametrize("stem, size", STEMS)
@pytest.mark.parametrize("name", FAMILIES)
def test_exported_file_structure(tmp_path, name, stem, size):
    model = _model(name, stem)
    info = export(model, tmp_path / "m.tflite", input_size=size)
    data = (tmp_path / "m.tflite").read_bytes()
    assert info["bytes"] == len(data) and data[4:8] == b"TFL3"
    assert info["ops"] == op_histogram(data)
    assert info["ops"]["LceQuantize"] == 16 and info["ops"]["LceBconv2d"] == 16
    assert set(info["ops"]) <= ALLOWED
    g = read(data)
    assert g["tensors"][g["inputs"][0]]["shape"] == (1, size, size, 3)
    assert g["tensors"][g["outputs"][0]]["shape"] == (1, 10)
    assert json.loads(g["metadata"]["r2b_arch"])["name"] == name
    spec = model.spec()
    bconvs = [op for op in g["ops"] if op["code"] == "LceBconv2d"]
    for half, op in zip(spec.halves, bconvs):
        conv = half.conv
        opts = op["options"]
        assert opts["channels_in"] == conv.in_channels and opts["pad_values"] == 1
        assert opts["stride_height"] == opts["stride_width"] == conv.stride[0]
        assert opts["fused_activation_function"] == 0 and opts["dilation_height_factor"] == 1
        q, filt, mul, bias, thr = (g["tensors"][i] if i >= 0 else None for i in op["inputs"])
        assert thr is None and q["dtype"] == np.int32
        np.testing.assert_array_equal(filt["data"], pack_filter(conv.weight))
        m = conv.weight_alpha().detach().double().numpy()
        if half.scale is not None and half.gate is None:
            m = m * half.scale.detach().double().numpy()
        if half.post is not None:
            m = m * bn_affine(half.post)[0]
        np.testing.assert_allclose(mul["data"], m, rtol=1e-6)
        assert (bias["data"] != 0).any() == (half.post is not None)


def test_gate_batch_and_normalisation_options(tmp_path):
    model = _model("r2b_resnet18", "cifar")
    info = export(model, tmp_path / "b.tflite", input_size=32, batch_size=2)
    assert info["input_shape"] == [2, 32, 32, 3] and info["output_shape"] == [2, 10]
    assert info["ops"]["RESHAPE"] == 16  # (N, C) gate -> (N, 1, 1, C) for MUL's broadcasting
    plain = export(model, tmp_path / "p.tflite", input_size=32)
    normed = export(model, tmp_path / "n.tflite", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert normed["ops"]["MUL"] == plain["ops"]["MUL"] + 1
    assert normed["ops"]["ADD"] == plain["ops"]["ADD"] + 1
    g = read((tmp_path / "n.tflite").read_bytes())
    first = g["ops"][0]
    assert first["code"] == "MUL"
    np.testing.assert_allclose(g["tensors"][first["inputs"][1]]["data"], [4.0] * 3)


def test_probes_add_outputs_only(tmp_path):
    model = _model("sb_resnet18", "cifar")
    plain = export(model, tmp_path / "p.tflite", input_size=32)
    probed = export(model, tmp_path / "q.tflite", input_size=32, probes=True)
    assert plain["ops"] == probed["ops"] and plain["probes"] == []
    assert len(probed["probes"]) == 16 * len(PROBES)
    g = read((tmp_path / "q.tflite").read_bytes())
    assert len(g["outputs"]) == 1 + 16 * len(PROBES)


def test_not_bnn_is_one_line_error(tmp_path):
    for stage in ("fp", "ban"):
        model = create_model("r2b_resnet18", stem="cifar", width=0.25, stage=stage).eval()
        with pytest.raises(UserError, match=f"stage '{stage}'.*export the 'bnn' stage"):
            export(model, tmp_path / "m.tflite", input_size=32)
    with pytest.raises(UserError, match="no binary convolutions"):
        export(create_model("resnet18", stem="cifar", width=0.25), tmp_path / "r.tflite", 32)
    assert not (tmp_path / "m.tflite").exists()


def test_input_size_and_path_errors(tmp_path):
    model = _model("sb_resnet18", "imagenet")
    with pytest.raises(UserError, match=r"16x16 does not fit .* empty map.* smallest .* is 29"):
        export(model, tmp_path / "m.tflite", input_size=16)
    export(model, tmp_path / "m.tflite", input_size=29)  # 29 -> 15 -> 8 -> 4 -> 2 -> 1
    with pytest.raises(UserError, match=r"34x34 .* maps of 5x5 and 4x4.* from 34 up is 61") as e:
        export(model, tmp_path / "m.tflite", input_size=34)  # 34 -> 17 -> 9: odd at stride 2
    assert "\n" not in str(e.value)
    for bad in (0, "big", (32, -1)):
        with pytest.raises(UserError, match="input size"):
            export(model, tmp_path / "m.tflite", input_size=bad)
    with pytest.raises(UserError, match="is a directory"):
        export(model, tmp_path, input_size=64)
    with pytest.raises(UserError, match="does not exist"):
        export(model, tmp_path / "no" / "m.tflite", input_size=64)


def test_pad_value_lce_cannot_express(tmp_path):
    model = _model("sb_resnet18", "cifar", pad_value=-1.0)
    with pytest.raises(UserError, match="pad_value -1"):
        export(model, tmp_path / "m.tflite", input_size=32)
