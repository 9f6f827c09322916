"""Op counts against the paper's Table 1 and larq's summary (METHOD.md section 2)."""

import json
from dataclasses import asdict

import pytest

from r2b.cli import main
from r2b.models import create_model
from r2b.summary import summarize


@pytest.fixture(scope="module")
def r2b_totals():
    return summarize(create_model("r2b_resnet18", stage="bnn"), 224).totals


def test_r2b_imagenet_counts(r2b_totals):
    t = r2b_totals
    assert t.binary_params == 10_985_472
    assert abs(t.real_params - 1_001_448) / 1_001_448 < 0.02
    assert t.size_mib == pytest.approx(5.13, abs=0.05)
    assert t.bops == pytest.approx(1.676e9, rel=0.005)
    assert 1.38e8 <= t.flops <= 1.57e8
    assert t.ops == pytest.approx(t.bops / 64 + t.flops)


def test_resnet18_flops_match_paper():
    t = summarize(create_model("resnet18"), 224).totals
    assert t.bops == 0 and t.binary_params == 0
    assert t.flops == pytest.approx(1.826e9, rel=0.02)


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
