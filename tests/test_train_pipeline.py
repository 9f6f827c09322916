"""The staged pipeline end to end on a tiny config (seconds on CPU): run folder, teacher, init."""

import csv
import json
import math

import pytest
import torch

from r2b.errors import UserError
from r2b.train.checkpoint import load_model, read_weights
from r2b.train.config import build_config, load_config
from r2b.train.pipeline import run_pipeline

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"name": "default", "train_limit": 160, "test_limit": 60, "eval_batch_size": 40},
    "runtime": {"accelerator": "cpu", "progress": False, "num_threads": 1},
    "report": {"attention_images": 2},
    "stage_defaults": {
        "model": {"stem": "cifar", "width": 0.125},
        "batch_size": 32,
        "epochs": 2,
        "augment": {"ops": ["crop", "flip"]},
        "schedule": {"kind": "cosine", "warmup_epochs": 0.5},
    },
    "stages": [
        {"name": "real", "model": {"name": "resnet18"}, "epochs": 1},
        {"name": "ban", "model": {"name": "r2b_resnet18", "stage": "ban"}, "teacher": "real",
         "loss": {"kd": 3.0, "att": 1.0}, "augment": {"mixup": 0.2}},
        {"name": "bnn", "model": {"name": "r2b_resnet18", "stage": "bnn"}, "teacher": "ban",
         "init_from": "ban", "loss": {"kd": 0.8},
         "optim": {"lr": 2e-4, "weight_decay": 0, "clip_weights": 1.0}},
    ],
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """run_pipeline sets torch's thread count (runtime.num_threads); restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    lines = []
    results = run_pipeline(build_config(TINY), out, log=lines.append)
    return out, results, lines


def test_run_folder_holds_results_report_and_checkpoints(tiny_run):
    out, results, lines = tiny_run
    for name in ("config.yaml", "results.json", "report.md", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "attention_ban.png").is_file() and (out / "attention_bnn.png").is_file()
    for stage in ("real", "ban", "bnn"):
        for name in ("best.safetensors", "last.safetensors", "state.safetensors", "metrics.csv",
                     "result.json"):  # fmt: skip
            assert (out / stage / name).is_file(), (stage, name)
    saved = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in saved["stages"]] == ["real", "ban", "bnn"]
    for s in saved["stages"]:
        assert 0 <= s["top1"] <= 100 and s["top1"] <= s["top5"] <= 100
    assert "| bnn" in (out / "report.md").read_text()
    assert any("top-1" in line and "bnn" in line for line in lines)  # the final table
    assert load_config(out / "config.yaml") == build_config(TINY)


def test_metrics_have_loss_components_and_flip_ratio_for_binary_weights(tiny_run):
    out, _, _ = tiny_run
    ban = list(csv.DictReader(open(out / "ban" / "metrics.csv")))
    bnn = list(csv.DictReader(open(out / "bnn" / "metrics.csv")))
    assert [r["epoch"] for r in bnn] == ["1", "2"]
    assert float(ban[0]["kd"]) > 0 and float(ban[0]["att"]) > 0
    assert float(bnn[0]["att"]) == 0 and float(bnn[0]["kd"]) > 0
    assert ban[0]["flip_ratio"] == ""
    assert 0 <= float(bnn[1]["flip_ratio"]) < 0.5


def test_student_initialised_from_its_init_stage_and_weights_clipped(tiny_run):
    out, _, _ = tiny_run
    bnn, info = load_model(out / "bnn" / "best.safetensors")
    assert info["stage"] == "bnn" and info["data"]["num_classes"] == 10
    assert bnn.arch["stage"] == "bnn" and bnn.arch["width"] == 0.125
    assert all(m.weight.abs().max() <= 1.0 for m in bnn.binary_convs())
    # the bnn started from ban's best weights: few signs moved in 2 epochs at lr 2e-4
    ban_state, _, _ = read_weights(out / "ban" / "best.safetensors")
    w0 = ban_state["blocks.3.half2.conv.weight"]
    w1 = bnn.blocks[3].half2.conv.weight.detach()
    assert ((w0 >= 0) == (w1 >= 0)).float().mean() > 0.9


def test_resume_of_a_finished_run_trains_nothing_and_a_changed_config_is_refused(
    tiny_run, monkeypatch
):
    """Resuming a finished run must not call the training loop or touch any checkpoint (that two
    runs of one config give the same weights is tested in test_faults.py)."""
    import r2b.train.pipeline as pipeline

    out, results, _ = tiny_run
    weights = {p: p.read_bytes() for p in out.rglob("*.safetensors")}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(pipeline, "train_stage", no_training)
    lines = []
    again = run_pipeline(build_config(TINY), out, resume=True, log=lines.append)
    assert sum("finished earlier, skipped" in line for line in lines) == 3
    assert again["stages"] == results["stages"]
    assert {p: p.read_bytes() for p in out.rglob("*.safetensors")} == weights
    cfg = build_config(TINY, ["stages.bnn.epochs=1"])
    with pytest.raises(UserError, match="differs from the run's saved"):
        run_pipeline(cfg, out, resume=True)
    with pytest.raises(UserError, match="already exists"):
        run_pipeline(build_config(TINY), out)


def test_zero_epoch_stage_evaluates_its_initialisation(tmp_path):
    data = {**TINY, "stages": [dict(TINY["stages"][0], epochs=0)]}
    results = run_pipeline(build_config(data), tmp_path / "r", log=lambda *_: None)
    (stage,) = results["stages"]
    assert stage["best_epoch"] == 0 and stage["top1"] is not None
    assert torch.is_tensor(read_weights(tmp_path / "r" / "real" / "best.safetensors")[0]["fc.bias"])


@pytest.mark.slow
def test_two_processes_under_torchrun_on_cpu(tmp_path):
    """DDP on CPU (gloo): two processes, every test image counted once, only rank 0 writes."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    sets = [
        "stages.*.epochs=1", "data.train_limit=128", "data.test_limit=51",
        "stages.*.model.width=0.125", "runtime.accelerator=cpu", "report.attention_images=0",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "r2b.cli", "train", "--out",
         str(out), *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 processes" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    for stage in results["stages"]:
        correct = stage["top1"] * 51 / 100
        assert abs(correct - round(correct)) < 1e-6  # a whole number of the 51 images


def test_bf16_mixed_precision_runs(tmp_path):
    """The GPU default precision (bf16 autocast) on the CPU: every step of Real-to-Binary trains
    one epoch with attention and distillation losses, and gives finite losses."""
    from r2b.train.recipes import quick_config

    sets = [
        "stages.*.epochs=1", "data.train_limit=64", "data.test_limit=40", "stages.*.batch_size=32",
        "stages.*.model.width=0.125", "runtime.precision=bf16-mixed", "runtime.accelerator=cpu",
        "report.attention_images=0", "runtime.progress=false", "runtime.num_threads=1",
    ]  # fmt: skip
    results = run_pipeline(quick_config(sets), tmp_path / "bf16", log=lambda *_: None)
    assert [s["name"] for s in results["stages"]] == ["teacher", "fp", "ban", "bnn"]
    for stage in ("fp", "ban", "bnn"):
        row = next(csv.DictReader(open(tmp_path / "bf16" / stage / "metrics.csv")))
        assert all(math.isfinite(float(row[k])) for k in ("loss", "ce", "kd", "att"))


# --------------------------------------------------------------------------- validation split

SELECT = {  # TINY's runtime, smaller still: 50 training images, 2 steps an epoch
    **TINY,
    "name": "select",
    "data": {"name": "default", "train_limit": 50, "test_limit": 20, "eval_batch_size": 20},
    "report": {"attention_images": 0},
    "stage_defaults": {"model": {"stem": "cifar", "width": 0.0625}, "batch_size": 20,
                       "augment": {"ops": ["flip"]}},
    "stages": [
        {"name": "a", "model": {"name": "resnet18"}, "epochs": 3},
        {"name": "b", "model": {"name": "r2b_resnet18", "stage": "ban"}, "teacher": "a",
         "epochs": 1, "loss": {"kd": 1.0}},
    ],
}  # fmt: skip


@pytest.mark.parametrize("val_fraction, best", [(0.2, 2), (0.0, 3)])
def test_best_checkpoint_and_teacher_are_chosen_on_validation_when_there_is_one(
    tmp_path, monkeypatch, val_fraction, best
):
    """Scripted accuracies where validation and test disagree: with a validation split stage a's
    best epoch (its best.safetensors, and so stage b's teacher) is epoch 2, where validation
    top-1 peaks, and the results report the test top-1 of that epoch; without one (the
    default) it is epoch 3, where test top-1 peaks."""
    import r2b.train.loop as loop
    import r2b.train.pipeline as pipeline

    script = {"val": [10.0, 30.0, 20.0, 50.0], "test": [50.0, 10.0, 60.0, 40.0]}
    calls = {"val": 0, "test": 0}

    def scripted_evaluate(model, dataset, *args, **kwargs):  # dataset: see eval_batches below
        top1 = script[dataset.split][calls[dataset.split]]
        calls[dataset.split] += 1
        return {"top1": top1, "top5": 100.0, "loss": 1.0, "n": len(dataset)}

    teachers = []

    def spy_teacher(path, device):
        teachers.append(read_weights(path)[2]["epoch"])
        return real_load_teacher(path, device)

    real_load_teacher = pipeline.load_teacher
    monkeypatch.setattr(loop, "eval_batches", lambda dataset, *a, **k: dataset)
    monkeypatch.setattr(loop, "evaluate", scripted_evaluate)
    monkeypatch.setattr(pipeline, "load_teacher", spy_teacher)
    cfg = build_config(SELECT, [f"data.val_fraction={val_fraction}"])
    results = run_pipeline(cfg, tmp_path / "run", log=lambda *_: None)
    a = results["stages"][0]
    assert a["best_epoch"] == best and teachers == [best]
    assert a["best_top1"] == script["test"][best - 1]  # the test accuracy of the chosen epoch
    assert read_weights(tmp_path / "run" / "a" / "best.safetensors")[2]["epoch"] == best
    if val_fraction:
        assert a["selected_on"] == "val" and a["best_val_top1"] == 30.0
        assert results["selection"] == "val" and results["data"]["val_images"] == 10
        assert calls == {"val": 4, "test": 4}
    else:
        assert a["selected_on"] == "test" and a["best_val_top1"] is None
        assert results["data"]["val_images"] == 0 and calls == {"val": 0, "test": 4}


def test_validation_split_end_to_end_and_r2b_eval_of_it(tmp_path, capsys):
    """A real run with data.val_fraction: the split is held out of training (40 of 50 images
    trained on), metrics.csv has validation columns, and ``r2b eval --split val`` of the best
    checkpoint measures the very images and accuracy the run selected on."""
    from r2b.cli import main

    data = {**SELECT, "stages": [SELECT["stages"][0]]}
    out = tmp_path / "run"
    results = run_pipeline(build_config(data, ["data.val_fraction=0.2"]), out, log=print)
    assert "40 train / 10 validation / 20 test images" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "a" / "metrics.csv")))
    val = [float(r["val_top1"]) for r in rows]
    (a,) = results["stages"]
    assert a["best_epoch"] == val.index(max(val)) + 1 and a["best_val_top1"] == max(val)
    best = str(out / "a" / "best.safetensors")
    assert main(["eval", best, "--split", "val", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 10 and res["top1"] == max(val)
    assert main(["eval", best, "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 40
    assert "validation top-1" in (out / "report.md").read_text()


def test_test_split_evaluated_only_after_the_last_epoch_and_on_the_selected_one(
    tmp_path, monkeypatch
):
    """``data.test_every_epoch: false``: scripted validation accuracies make epoch 2 of stage a
    the selected one; the test split is evaluated twice for stage a, after its last epoch (on the
    last weights) and then on the selected epoch's weights (best.safetensors), whose figures fill
    its metrics.csv row, best.safetensors' info and the results; other rows have no test cells."""
    import r2b.train.loop as loop

    val = iter([10.0, 30.0, 20.0, 15.0])  # stage a: 3 epochs, stage b: 1
    test = iter([40.0, 60.0, 55.0])  # a after epoch 3, a on epoch 2, b after epoch 1
    seen = []  # (split, the evaluated weights)

    def scripted_evaluate(model, dataset, *args, **kwargs):  # dataset: see eval_batches below
        seen.append((dataset.split, {k: v.clone() for k, v in model.state_dict().items()}))
        top1 = next(val if dataset.split == "val" else test)
        return {"top1": top1, "top5": 100.0, "loss": 1.0, "n": len(dataset)}

    monkeypatch.setattr(loop, "eval_batches", lambda dataset, *a, **k: dataset)
    monkeypatch.setattr(loop, "evaluate", scripted_evaluate)
    cfg = build_config(SELECT, ["data.val_fraction=0.2", "data.test_every_epoch=false"])
    results = run_pipeline(cfg, tmp_path / "run", log=lambda *_: None)
    assert [split for split, _ in seen] == ["val", "val", "val", "test", "test", "val", "test"]
    a = results["stages"][0]
    assert (a["best_epoch"], a["best_val_top1"], a["best_top1"], a["top1"]) == (2, 30.0, 60.0, 40.0)
    folder = tmp_path / "run" / "a"
    best, _, best_info = read_weights(folder / "best.safetensors")
    last, _, _ = read_weights(folder / "last.safetensors")
    for (_, evaluated), expected in ((seen[3], last), (seen[4], best)):
        assert evaluated.keys() == expected.keys()
        assert all(torch.equal(evaluated[k], expected[k]) for k in expected)
    assert not all(torch.equal(best[k], last[k]) for k in best)
    assert (best_info["epoch"], best_info["top1"], best_info["val_top1"]) == (2, 60.0, 30.0)
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [r["test_top1"] for r in rows] == ["", "60", "40"]
    assert results["stages"][1]["best_top1"] == results["stages"][1]["top1"] == 55.0


def test_test_every_epoch_false_needs_a_validation_split():
    with pytest.raises(UserError, match="data.test_every_epoch is false.*data.val_fraction"):
        build_config(SELECT, ["data.test_every_epoch=false"])
