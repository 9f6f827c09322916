"""Smoke tests of `r2b export` and `r2b bench` (seconds each, CPU)."""

import json

import pytest
import torch

from r2b.cli import main
from r2b.models import create_model
from r2b.packed import load

#: keep the test session's OpenMP settings (no re-run of the command)
INHERIT = ["--omp-wait-policy", "inherit", "--omp-dynamic", "inherit"]


def test_export_from_a_model_name_then_bench_json(tmp_path, capsys):
    out = tmp_path / "tiny.r2b"
    args = ["export", "r2b_resnet18", "--stem", "cifar", "--width", "0.125", "--num-classes",
            "10", "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "logits identical" in capsys.readouterr().out
    assert load(out).arch["width"] == 0.125
    assert main(["bench", str(out), "--runs", "2", "--warmup", "1", "--threads", "1",
                 *INHERIT, "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["packed_ms"] > 0 and result["float_ms"] > 0
    # the run is the one asked for: the file's CIFAR stem at its default input, 2 timed runs
    assert (result["input_size"], result["batch"], result["runs"], result["threads"]) == (
        32,
        1,
        2,
        1,
    )
    assert len(result["profile"]["halves"]) == 16
    assert result["peak_gbmacs_per_s"]["measured"] > 0


def test_bench_text_report(capsys):
    args = ["bench", "sb_resnet18", "--stem", "cifar", "--num-classes", "10", "--input-size",
            "16", "--runs", "2", "--warmup", "1", *INHERIT]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "speedup" in text and "G bMAC/s" in text


def test_export_of_a_checkpoint_and_refusal_of_a_real_stage(tmp_path, capsys):
    from r2b.train.checkpoint import save_weights

    bnn = create_model("sb_resnet18", num_classes=4, stem="cifar", width=0.125, stage="bnn")
    save_weights(tmp_path / "bnn.safetensors", bnn)
    assert main(["export", str(tmp_path / "bnn.safetensors"), "-o", str(tmp_path / "b.r2b")]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "b.r2b")(x), bnn.eval()(x))
    capsys.readouterr()
    ban = create_model("sb_resnet18", num_classes=4, stem="cifar", width=0.125, stage="ban")
    save_weights(tmp_path / "ban.safetensors", ban)
    code = main(["export", str(tmp_path / "ban.safetensors"), "-o", str(tmp_path / "x.r2b")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "'bnn'" in err and not (tmp_path / "x.r2b").exists()


def test_bench_of_a_missing_or_damaged_file(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "none.r2b"), *INHERIT]) == 2
    err = capsys.readouterr().err
    assert "neither a model name (" in err and "nor a .r2b file" in err
    bad = tmp_path / "bad.r2b"
    bad.write_bytes(b"R2BPACK\0garbage")
    assert main(["bench", str(bad), *INHERIT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: packed model") and err.count("\n") == 1


def test_bench_reruns_itself_with_the_wait_policy(tmp_path):
    """The default (passive) policy is applied by running the command anew, as a user would."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_DYNAMIC")}
    cmd = [sys.executable, "-m", "r2b.cli", "bench", "sb_resnet18", "--stem", "cifar",
           "--num-classes", "10", "--input-size", "8", "--runs", "1", "--warmup", "0",
           "--no-profile", "--json"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["omp_wait_policy"] == "PASSIVE" and result["omp_dynamic"] == "TRUE"


@pytest.mark.parametrize("command", ["export", "bench"])
def test_a_real_valued_model_name_is_refused_by_the_registry(tmp_path, capsys, command):
    """The registry says resnet18 is not a binary family; the error names the ones that are."""
    argv = [
        command,
        "resnet18",
        *(
            ["-o", str(tmp_path / "x.r2b")]
            if command == "export"
            else ["--runs", "1", "--warmup", "0", "--no-profile", *INHERIT]
        ),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"resnet18 is real-valued; {command} a binary family (" in err and "sb_resnet18" in err
