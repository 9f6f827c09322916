"""Smoke tests of the `r2b` entry point that do not train (the others test train, eval, ...)."""

import json
import subprocess
import sys

from r2b.cli import main


def test_help_lists_subcommands(capsys):
    try:
        main(["-h"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for name in ("summary", "report", "train", "eval"):
        assert name in out


def test_report_rewrites_report_of_a_results_file(tmp_path, capsys):
    results = {
        "title": "t",
        "stages": [
            {"name": "teacher", "model": "resnet18", "variant": "real", "teacher": None,
             "epochs": 1, "top1": 50.0, "top5": 90.0, "best_top1": 50.0, "best_epoch": 1,
             "seconds": 1.0},
        ],
    }  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path)]) == 0
    assert "teacher" in (tmp_path / "report.md").read_text()


def test_report_of_missing_run_is_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "r2b.cli", "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
