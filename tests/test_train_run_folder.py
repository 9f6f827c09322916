"""The run folder: every path a run writes, and the rules for starting or resuming in a folder."""

from pathlib import Path

import pytest

from r2b.errors import UserError
from r2b.train.config import build_config, dump_yaml
from r2b.train.run_folder import RUN_LAYOUT, RunFolder

CONFIG = {
    "name": "r",
    "stages": [
        {"name": "a", "model": {"name": "resnet18"}, "epochs": 1},
        {"name": "b", "model": {"name": "resnet18"}, "epochs": 1},
    ],
}


def test_paths_of_a_run_folder(tmp_path):
    run = RunFolder(str(tmp_path))
    assert run.root == tmp_path and run.config == tmp_path / "config.yaml"
    assert (run.results.name, run.report.name, run.curves.name, run.lock.name) == (
        "results.json", "report.md", "curves.png", "train.lock")  # fmt: skip
    assert run.attention("bnn") == tmp_path / "attention_bnn.png"
    assert run.tensorboard("bnn") == tmp_path / "tb" / "bnn"
    stage = run.stage("bnn")
    assert [p.name for p in (stage.best, stage.last, stage.state, stage.result, stage.metrics)] == [
        "best.safetensors",
        "last.safetensors",
        "state.safetensors",
        "result.json",
        "metrics.csv",
    ]
    assert stage.run == run and not stage.finished() and not stage.resumable()
    assert run.weights("ban") == tmp_path / "ban" / "best.safetensors"
    assert run.weights("/w/x.safetensors") == Path("/w/x.safetensors")
    for name in ("config.yaml", "results.json", "state.safetensors", "train.lock"):
        assert name in RUN_LAYOUT


def test_a_new_run_needs_an_empty_folder_under_a_folder(tmp_path):
    cfg = build_config(CONFIG)
    assert RunFolder(tmp_path / "new").check_use(cfg, resume=False) is False
    (tmp_path / "lock_only").mkdir()
    (tmp_path / "lock_only" / "train.lock").write_text("{}")  # a stale lock holds no files
    assert RunFolder(tmp_path / "lock_only").check_use(cfg, resume=False) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        RunFolder(tmp_path / "file" / "run").check_use(cfg, resume=False)
    with pytest.raises(UserError, match="already exists and is not empty"):
        RunFolder(tmp_path).check_use(cfg, resume=False)


def test_resume_needs_the_saved_config_but_an_unfinished_stages_lr(tmp_path):
    run = RunFolder(tmp_path)
    cfg = build_config(CONFIG)
    with pytest.raises(UserError, match="config.yaml is missing"):
        run.check_use(cfg, resume=True)
    run.config.write_text(dump_yaml(cfg))
    assert run.check_use(cfg, resume=True) is False
    assert run.check_use(build_config(CONFIG, ["runtime.num_threads=1"]), resume=True) is False
    assert run.check_use(build_config(CONFIG, ["stages.b.optim.lr=1e-4"]), resume=True) is True
    run.stage("b").create()
    run.stage("b").result.write_text("{}")
    with pytest.raises(UserError, match=r"differs from the run's saved .*stages\[1\]\.optim\.lr"):
        run.check_use(build_config(CONFIG, ["stages.b.optim.lr=1e-4"]), resume=True)
    with pytest.raises(UserError, match=r"stages\[0\]\.epochs"):
        run.check_use(build_config(CONFIG, ["stages.a.epochs=2"]), resume=True)


def test_resume_may_change_when_the_test_split_is_evaluated(tmp_path):
    """``data.test_every_epoch`` changes no weight, so a resumed run may switch it (the saved
    config stays); the validation split it needs may not change."""
    run = RunFolder(tmp_path)
    run.config.write_text(dump_yaml(build_config(CONFIG, ["data.val_fraction=0.2"])))
    sets = ["data.val_fraction=0.2", "data.test_every_epoch=false"]
    assert run.check_use(build_config(CONFIG, sets), resume=True) is False
    with pytest.raises(UserError, match=r"data\.val_fraction"):
        run.check_use(build_config(CONFIG, ["data.val_fraction=0.3", *sets[1:]]), resume=True)
