"""Exported files in LCE's own interpreter (larq-compute-engine 0.16.0, in a second venv built
once by ``r2b.lce.runtime.ensure_venv``; these tests skip, saying why, where it cannot be built).
"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("flatbuffers", reason="r2b.lce needs the [lce] extra (flatbuffers)")

from r2b.layers import BinaryConv2d
from r2b.lce import bconv_flatbuffer, export
from r2b.lce.check import binary_dots, compare, randomize_
from r2b.lce.runtime import LceUnavailable, ensure_venv, run
from r2b.models import create_model, list_models


@pytest.fixture(scope="module")
def lce_python():
    try:
        return ensure_venv()
    except LceUnavailable as err:
        pytest.skip(f"LCE's interpreter is not available here: {err}")


def _conv(c_in, c_out, stride, gen, pad_value=1.0):
    conv = BinaryConv2d(
        c_in, c_out, 3, stride, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign",
        weight_scale=True, pad_value=pad_value,
    )  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.weight[0, : c_in // 2] = 0.0  # sign(0) = +1 for weights too
        conv.weight[-1, : c_in // 2] = -0.0
    return conv


@pytest.mark.parametrize("kernel", ["default", "reference", "indirect"])
def test_binary_conv_is_exact(tmp_path, lce_python, kernel):
    """LceQuantize + LceBconv2d as exported, with multiplier 1, give r2b's integer dot products
    bit for bit: one-padding, the bitpacked layout (channels not a multiple of 32 too), stride 2
    on even sizes (explicit PAD) and odd ones (SAME), sign(0) = sign(-0.0) = +1, and r2b's
    zero padding (pad_value=0) as LCE's pad_values=0 where TFLite's SAME geometry fits."""
    gen = torch.Generator().manual_seed(0)
    jobs, expected = [], []
    geometries = [(16, 24, 1, 9, 1.0), (40, 64, 2, 8, 1.0), (64, 32, 2, 7, 1.0),
                  (33, 5, 1, 5, 1.0), (32, 16, 1, 6, 0.0), (64, 8, 2, 7, 0.0)]  # fmt: skip
    for c_in, c_out, stride, hw, pad_value in geometries:  # pad_value 0: LCE's zero padding
        conv = _conv(c_in, c_out, stride, gen, pad_value)
        y = torch.randn(6, c_in, hw, hw, generator=gen)
        y[0, :, 0, :] = 0.0
        y[1, :, :, 0] = -0.0
        path = tmp_path / f"c{c_in}_{stride}_{hw}_{pad_value:g}.tflite"
        path.write_bytes(bconv_flatbuffer(conv, hw))
        jobs.append(
            {"tflite": str(path), "inputs": y.permute(0, 2, 3, 1).numpy(), "kernel": kernel}
        )
        expected.append(binary_dots(y, conv).permute(0, 2, 3, 1).numpy())
    for want, got in zip(expected, run(jobs, lce_python)):
        np.testing.assert_array_equal(got["outputs"][0], want)


def test_every_family_and_stem_matches_r2b(lce_python):
    """256 random inputs per model, random weights and BatchNorm statistics, width 0.25: the
    figures of ``r2b.lce.check.compare`` (benchmarks/lce_check.py records them at scale)."""
    cases = []
    for i, name in enumerate(list_models(binary=True)):
        for j, (stem, size) in enumerate([("cifar", 32), ("imagenet", 64)]):
            torch.manual_seed(10 * i + j)
            model = create_model(name, stem=stem, width=0.25, num_classes=10)
            cases.append({"label": f"{name}/{stem}", "input_size": size,
                          "model": randomize_(model, 10 * i + j).eval()})  # fmt: skip
    reports = compare(cases, n_inputs=256, n_probe=8, python=lce_python)
    for r in reports:
        print(json.dumps({k: v for k, v in r.items() if k != "ops"}))
    for r in reports:
        assert r["inputs"] >= 256
        assert r["top1_agree"] >= 0.99, r["label"]
        assert r["probes_leave_logits"], r["label"]
        # the binary convs compute r2b's integer dot products exactly
        assert r["bconv_exact"] and r["bconv_max_dot_error"] < 0.01, r["label"]
        # given the same block input, only rounding-level values flip
        assert r["one_step_flip_max_rel"] <= 1e-5, r["label"]
        # end to end: a few inputs flip a binarised value, each first at a value within
        # rounding of 0; the other inputs' logits agree to float rounding
        assert r["inputs_with_flips"] <= 0.05 * r["inputs"], r["label"]
        assert r["first_flip_max_rel"] <= 1e-5, r["label"]
        assert r["rel_max_diff_without_flips"] <= 1e-4, r["label"]
        if r["inputs_with_flips"] == 0:
            assert r["rel_max_diff"] <= 1e-2, r["label"]


def test_full_size_real_to_binary(tmp_path, lce_python):
    """The ImageNet Real-to-Binary net at width 1, 224x224: LCE's binary ops, as many as LCE's
    own conversion of larq-zoo's RealToBinaryNet has (16 + 16), only ops LCE's runtime has
    (it loads and runs the file), at most 5.5 MiB."""
    torch.manual_seed(0)
    model = randomize_(create_model("r2b_resnet18", stem="imagenet"), 0).eval()
    info = export(model, tmp_path / "r2b.tflite", input_size=224)
    assert info["ops"]["LceQuantize"] == 16 and info["ops"]["LceBconv2d"] == 16
    assert info["bytes"] <= 5.5 * 2**20
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    (got,) = run([{"tflite": info["path"], "inputs": x.permute(0, 2, 3, 1).numpy()}], lce_python)
    with torch.no_grad():
        want = model(x).numpy()
    out = got["outputs"][0]
    assert out.shape == (2, 1000)
    assert (out.argmax(1) == want.argmax(1)).all()
    assert np.abs(out - want).max() / np.abs(want).max() <= 1e-2


TRAINED = {
    "name": "lce",
    "seed": 1,
    "data": {"name": "default", "train_limit": 500, "eval_batch_size": 250},
    "runtime": {"accelerator": "cpu", "progress": False, "num_threads": 1},
    "report": {"attention_images": 1},
    "stage_defaults": {"model": {"stem": "cifar", "width": 0.25}, "batch_size": 50, "epochs": 1},
    "stages": [
        {"name": "real", "model": {"name": "resnet18"}},
        {"name": "ban", "model": {"name": "r2b_resnet18", "stage": "ban"}, "teacher": "real",
         "loss": {"kd": 3.0, "att": 3.0}},
        {"name": "bnn", "model": {"name": "r2b_resnet18", "stage": "bnn"}, "teacher": "ban",
         "init_from": "ban", "loss": {"kd": 0.8},
         "optim": {"lr": 4e-4, "weight_decay": 0, "clip_weights": 1.0}},
    ],
}  # fmt: skip


@pytest.mark.slow
def test_trained_checkpoint_on_test_images(tmp_path, lce_python):
    """A bnn checkpoint made by r2b's pipeline (a short run), exported and run in LCE on the
    1,000 embedded CIFAR-10 test images, normalised as in training."""
    from r2b.data.default import read_default
    from r2b.train.checkpoint import load_model
    from r2b.train.config import build_config
    from r2b.train.pipeline import run_pipeline

    threads = torch.get_num_threads()
    try:
        run_pipeline(build_config(TRAINED), tmp_path / "run", log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    model, _ = load_model(tmp_path / "run" / "bnn" / "best.safetensors")
    test = read_default("test")
    mean = torch.tensor(test.mean).view(1, 3, 1, 1)
    std = torch.tensor(test.std).view(1, 3, 1, 1)
    x = (test.images.float() / 255 - mean) / std
    case = {"label": "trained", "model": model, "input_size": 32, "inputs": x,
            "keep_logits": True}  # fmt: skip
    (r,) = compare([case], n_probe=8, python=lce_python)
    print(json.dumps({k: v for k, v in r.items() if k not in ("ops", "logits", "r2b_logits")}))
    labels = test.targets.numpy()
    acc_lce, acc_r2b = ((r[k].argmax(1) == labels).mean() for k in ("logits", "r2b_logits"))
    print(f"accuracy: LCE {acc_lce:.3f}, r2b {acc_r2b:.3f}")
    assert r["top1_agree"] >= 0.99 and abs(acc_lce - acc_r2b) <= 0.01
    assert r["bconv_exact"] and r["first_flip_max_rel"] <= 1e-5
    assert r["rel_max_diff_without_flips"] <= 1e-4
