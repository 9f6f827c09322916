"""Op counts against the paper's Table 1 and larq's summary (docs/method.md section 2)."""

import json
from dataclasses import asdict

import pytest

from r2b.cli import main
from r2b.models import create_model
from r2b.summary import summarize


@pytest.fixture(scope="module")
def r2b_totals():
    return summarize(create_model("r2b_resnet18", stage="bnn"), 224).totals


#: (C_in, C_out, output side) of the 16 binary 3x3 convs of a ResNet-18 at 224x224.
HALVES_224 = (
    [(64, 64, 56)] * 4
    + [(64, 128, 28)]
    + [(128, 128, 28)] * 3
    + [(128, 256, 14)]
    + [(256, 256, 14)] * 3
    + [(256, 512, 7)]
    + [(512, 512, 7)] * 3
)
#: Real MACs every binary family shares: the 7x7/2 stem, three 1x1 downsample convs, the classifier.
SHARED_FLOPS = (
    7 * 7 * 3 * 64 * 112 * 112
    + 64 * 128 * 28**2
    + 128 * 256 * 14**2
    + 256 * 512 * 7**2
    + 512 * 1000
)


def test_r2b_imagenet_counts(r2b_totals):
    """Real-to-Bin at 224x224, counted by hand from the architecture and against larq's summary
    of RealToBinaryNet (10,985,472 binary + 1,001,448 real parameters, 5.13 MiB, 138.1 M MACs)."""
    t = r2b_totals
    assert t.binary_params == sum(9 * c_in * c_out for c_in, c_out, _ in HALVES_224) == 10_985_472
    assert t.real_params == 1_001_448
    assert t.bops == sum(9 * c_in * c_out * side**2 for c_in, c_out, side in HALVES_224)
    assert round(t.bops / 1e6) == 1676  # paper Table 1: 1.676e9
    gates = sum(c_in * (c_in // 8) + (c_in // 8) * c_out for c_in, c_out, _ in HALVES_224)
    assert t.flops == SHARED_FLOPS + gates == 138_087_936
    assert round(t.flops / 1e5) == 1381  # larq: 138.1 M
    assert t.size_mib == (t.binary_params / 8 + 4 * t.real_params) / 2**20
    assert round(t.size_mib, 2) == 5.13
    assert t.ops == t.bops / 64 + t.flops


@pytest.mark.parametrize("name", ["sb_resnet18", "bireal_resnet18", "reactnet_resnet18"])
def test_other_families_share_the_binary_ops(name):
    """Bi-Real Net's 16 binary convs are Real-to-Bin's: Table 1's 1.676e9 BOPs; without a gate
    their real MACs are the shared stem, shortcuts and classifier."""
    t = summarize(create_model(name, stage="bnn"), 224).totals
    assert t.bops == sum(9 * c_in * c_out * side**2 for c_in, c_out, side in HALVES_224)
    assert round(t.bops / 1e6) == 1676
    assert t.flops == SHARED_FLOPS
    assert t.binary_params == 10_985_472


def test_resnet18_flops_match_paper():
    t = summarize(create_model("resnet18"), 224).totals
    assert t.bops == 0 and t.binary_params == 0
    convs = sum(9 * c_in * c_out * side**2 for c_in, c_out, side in HALVES_224)
    assert t.flops == convs + SHARED_FLOPS == 1_814_073_344  # the same layers, all real
    # paper Table 1: 1.826e9, which counts element-wise work (BN, additions) too
    assert 0.99 < t.flops / 1.826e9 < 1.0


def test_ban_stage_has_no_binary_ops():
    t = summarize(create_model("sb_resnet18", stage="ban", stem="cifar", width=0.25), 32).totals
    assert t.bops == 0 and t.binary_params == 0


def test_rows_add_up():
    s = summarize(create_model("sb_resnet18", stem="cifar", width=0.25, num_classes=10), 32)
    assert sum(r.bops for r in s.rows) == s.totals.bops
    assert sum(r.binary_params for r in s.rows) == s.totals.binary_params
    assert sum(r.real_params for r in s.rows) == s.totals.real_params
    assert len([r for r in s.rows if r.bops]) == 16


def test_cli_json(capsys):
    assert main(["summary", "r2b_resnet18", "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert set(totals) == {
        "binary_params", "real_params", "size_mib", "float_size_mib", "bops", "flops", "ops",
    }  # fmt: skip
    assert totals["binary_params"] == 10_985_472


def test_cli_table_and_errors(capsys):
    assert main(["summary", "sb_resnet18", "--stem", "cifar", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.half1.conv" in out and "BOPs" in out
    assert main(["summary", "no_such_model"]) == 2
    assert "neither a model name" in capsys.readouterr().err


def test_cli_summary_of_a_checkpoint(tmp_path, capsys):
    from r2b.train.checkpoint import save_weights

    model = create_model("sb_resnet18", stem="cifar", width=0.25, num_classes=10, stage="bnn")
    path = tmp_path / "w.safetensors"
    save_weights(path, model)
    assert main(["summary", str(path), "--input-size", "32", "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals == asdict(summarize(model, 32).totals)
