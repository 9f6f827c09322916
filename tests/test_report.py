"""Report layer: the Markdown results table, the curves and attention PNGs, report.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from r2b.errors import UserError
from r2b.models import create_model
from r2b.report import (
    TABLE_COLUMNS,
    plot_attention,
    plot_curves,
    read_metrics,
    results_table,
    write_report,
)

STAGES = [
    {"name": "teacher", "model": "resnet18", "variant": "real", "teacher": None, "epochs": 3,
     "top1": 71.5, "top5": 97.25, "best_top1": 72.0, "best_epoch": 2, "seconds": 42.0},
    {"name": "step1", "model": "r2b_resnet18", "variant": "fp", "teacher": "teacher",
     "epochs": 3, "top1": 65.125, "top5": 95.0, "best_top1": 65.125, "best_epoch": 3,
     "best_top5": 95.5, "seconds": 4000.0},
    {"name": "step3", "model": "r2b_resnet18", "variant": "bnn", "teacher": "step1", "epochs": 2},
]  # fmt: skip
COLUMNS = "epoch,step,train_loss,ce,kd,att,test_top1,test_top5,lr,flip_ratio"


def _write_metrics(path: Path, epochs: int, start_acc: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [COLUMNS, f"0,0,,,,,{start_acc},{start_acc + 30},,"]
    for e in range(1, epochs + 1):
        loss = 2.0 / e
        lines.append(f"{e},{e * 10},{loss},{loss},0.1,0.05,{start_acc + 10 * e},90,0.001,")
    path.write_text("\n".join(lines) + "\n")
    return path


def _png_size(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_results_table_rows_values_and_alignment():
    table = results_table({"stages": STAGES})
    lines = table.splitlines()
    assert len(lines) == 2 + len(STAGES)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(TABLE_COLUMNS)
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width
    assert set(lines[1]) <= {"|", "-", ":"} and lines[1].count(":") == 5  # numbers right-aligned
    teacher = [c.strip() for c in lines[2].strip("|").split("|")]
    assert teacher == ["teacher", "resnet18", "real", "-", "3", "72.00 (ep 2)", "97.25", "71.50",
                       "42.0 s"]  # fmt: skip
    step1 = [c.strip() for c in lines[3].strip("|").split("|")]
    assert step1[5:] == ["65.12 (ep 3)", "95.50", "65.12", "1.11 h"]  # top-5 at the best epoch
    unfinished = [c.strip() for c in lines[4].strip("|").split("|")]
    assert unfinished[3] == "step1" and unfinished[5:] == ["-", "-", "-", "-"]
    with pytest.raises(ValueError):
        results_table({"rows": []})


def test_results_table_has_a_validation_column_when_stages_were_chosen_on_one():
    stages = [dict(STAGES[0], best_val_top1=68.25, selected_on="val"), STAGES[2]]
    lines = results_table({"stages": stages}).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[5:7] == ["best top-1", "val top-1"] and len(header) == len(TABLE_COLUMNS) + 1
    teacher = [c.strip() for c in lines[2].strip("|").split("|")]
    assert teacher[5:7] == ["72.00 (ep 2)", "68.25"]
    assert [c.strip() for c in lines[3].strip("|").split("|")][6] == "-"
    assert "val top-1" not in results_table({"stages": STAGES})


TEXT_STAGES = [
    {"name": "teacher", "model": "resnet18", "variant": "real", "epochs": 3, "top1": 71.5,
     "top5": 97.25, "best_top1": 72.0, "best_val_top1": None, "seconds": 42.4},
    {"name": "a_very_long_stage", "model": "reactnet_resnet18_x", "variant": "bnn", "epochs": 12,
     "top1": None, "top5": None, "best_top1": -1.0, "seconds": 1234567.8},
]  # fmt: skip


def test_the_plain_text_table_r2b_train_prints_is_unchanged():
    """The table at the end of ``r2b train``, character for character as the pipeline printed it
    before the report owned it (a cell wider than its column widens only its own row)."""
    text = results_table({"stages": TEXT_STAGES}, markdown=False)
    assert text == (
        "stage      model          step  epochs   top-1   top-5 best top-1    time\n"
        + "-" * 73
        + "\n"
        "teacher    resnet18       real       3   71.50   97.25      72.00     42s\n"
        "a_very_long_stage reactnet_resnet18_x bnn       12       -       -      -1.00 1234568s"
    )
    stages = [dict(TEXT_STAGES[0], best_val_top1=70.125), TEXT_STAGES[1]]
    assert results_table({"stages": stages}, markdown=False) == (
        "stage      model          step  epochs   top-1   top-5 best top-1 val top-1    time\n"
        + "-" * 83
        + "\n"
        "teacher    resnet18       real       3   71.50   97.25      72.00     70.12     42s\n"
        "a_very_long_stage reactnet_resnet18_x bnn       12       -       -      -1.00         - "
        "1234568s\n"
        "best top-1: test top-1 of the epoch of best validation top-1"
    )


def test_plot_curves_writes_a_png_with_both_panels(tmp_path):
    paths = {
        "teacher": _write_metrics(tmp_path / "teacher" / "metrics.csv", 4, 20.0),
        "step1": _write_metrics(tmp_path / "step1" / "metrics.csv", 3, 15.0),
    }
    m = read_metrics(paths["teacher"])
    assert m["epoch"] == [0, 1, 2, 3, 4] and m["train_loss"][0] != m["train_loss"][0]  # NaN
    out = plot_curves(paths, tmp_path / "curves.png")
    w, h = _png_size(out)
    assert w > 2 * h * 0.9 and w >= 1000  # two panels side by side at 120 dpi


def test_plot_attention_teacher_vs_student(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("resnet18", num_classes=10, stem="cifar", width=0.125)
    student = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.125, stage="fp")
    student.train()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = plot_attention(teacher, student, images, tmp_path / "attention.png",
                         points=(1, 4, 7), mean=(0.5,) * 3, std=(0.25,) * 3,
                         titles=["cat", "dog", "ship"])  # fmt: skip
    w, h = _png_size(out)
    assert w > h  # 7 columns, 3 rows
    assert student.training and teacher.training  # train/eval mode restored
    normalised = (images.float() / 255 - 0.5) / 0.25
    out2 = plot_attention(teacher, student, normalised[:1], tmp_path / "one.png")
    assert _png_size(out2)[0] > 0
    with pytest.raises(ValueError):
        plot_attention(teacher, student, images[:0], tmp_path / "none.png")


def test_write_report_links_table_and_figures(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run / "teacher" / "metrics.csv", 3, 20.0)
    _write_metrics(run / "step1" / "metrics.csv", 3, 10.0)
    (run / "results.json").write_text(json.dumps({"stages": STAGES, "dataset": "default"}))
    (run / "config.yaml").write_text("name: test\n")
    Image.new("RGB", (10, 10)).save(run / "attention.png")
    report = write_report(run)
    text = report.read_text()
    assert report == run / "report.md"
    assert results_table({"stages": STAGES}) in text
    assert "![training curves](curves.png)" in text and "![attention](attention.png)" in text
    assert "[config.yaml](config.yaml)" in text and "(teacher/metrics.csv)" in text
    assert "dataset: default" in text and "chosen on the test split" in text
    _png_size(run / "curves.png")
    assert not list(run.glob("*.tmp"))


def test_write_report_missing_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="results.json not found"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        write_report(tmp_path)
