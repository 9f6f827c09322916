"""Stage progress and results as records: JSON of every r2b version read, the current one written
key for key as before."""

import json

import pytest

from r2b.train.config import build_config
from r2b.train.progress import StageProgress, StageResult, StoppedEpoch

#: the progress record of a state file written before the validation split and stop signals
OLD_PROGRESS = {"epoch": 1, "step": 3, "best_top1": 40.0, "best_top5": 90.0, "best_epoch": 1,
                "time_s": 2.5, "history": [{"epoch": 1, "test_top1": 40.0}]}  # fmt: skip
#: a stage's result.json written before the validation split
OLD_RESULT = {"name": "a", "model": "resnet18", "variant": "real", "teacher": None,
              "init_from": None, "epochs": 2, "top1": 41.0, "top5": 91.0, "best_top1": 42.0,
              "best_top5": 92.0, "best_epoch": 1, "seconds": 3.25, "dir": "a"}  # fmt: skip


def test_a_new_stage_has_the_progress_record_of_before():
    assert json.dumps(StageProgress(selected_on="val").to_json()) == json.dumps(
        {
            "epoch": 0,
            "step": 0,
            "best_top1": -1.0,
            "best_top5": 0.0,
            "best_epoch": 0,
            "best_score": -1.0,
            "best_val_top1": None,
            "selected_on": "val",
            "time_s": 0.0,
            "history": [],
        }  # fmt: skip
    )


def test_an_old_progress_record_takes_the_defaults():
    progress = StageProgress.from_json(OLD_PROGRESS)
    assert progress.best_score == 40.0  # chosen on test top-1, as those versions did
    assert progress.selected_on == "test" and progress.best_val_top1 is None
    assert progress.in_epoch is None and progress.history == OLD_PROGRESS["history"]
    record = progress.to_json()
    assert list(record) == [
        "epoch",
        "step",
        "best_top1",
        "best_top5",
        "best_epoch",
        "best_score",
        "best_val_top1",
        "selected_on",
        "time_s",
        "history",
    ]


def test_a_stopped_epoch_round_trips_and_comes_last():
    at = StoppedEpoch(epoch=1, batches=5, world_size=2, elapsed_s=1.5)
    progress = StageProgress(epoch=1, step=15, in_epoch=at)
    record = progress.to_json()
    assert list(record)[-1] == "in_epoch"
    assert record["in_epoch"] == {"epoch": 1, "batches": 5, "world_size": 2, "elapsed_s": 1.5}
    assert StageProgress.from_json(json.loads(json.dumps(record))) == progress


def test_record_epoch_keeps_the_epoch_of_best_score():
    progress = StageProgress(selected_on="val")
    rows = [{"epoch": 1, "test_top1": 50.0, "test_top5": 90.0, "val_top1": 10.0},
            {"epoch": 2, "test_top1": 20.0, "test_top5": 80.0, "val_top1": 30.0},
            {"epoch": 3, "test_top1": 60.0, "test_top5": 95.0, "val_top1": 30.0}]  # fmt: skip
    for row in rows:
        progress.record_epoch(row, row["val_top1"])
    assert (progress.best_epoch, progress.best_score, progress.best_top1) == (2, 30.0, 20.0)
    assert (progress.best_top5, progress.best_val_top1) == (80.0, 30.0)


def test_stage_result_of_a_stage_and_of_an_old_result_file():
    cfg = build_config({"name": "r", "stages": [{"name": "a", "model": {"name": "resnet18"},
                                                 "epochs": 2}]})  # fmt: skip
    progress = StageProgress.from_json(OLD_PROGRESS)
    result = StageResult.of(cfg.stages[0], progress).to_json()
    assert list(result) == list(OLD_RESULT)[:11] + ["best_val_top1", "selected_on", "seconds",
                                                     "dir"]  # fmt: skip
    assert result["top1"] == 40.0 and result["seconds"] == 2.5 and result["variant"] == "real"
    old = StageResult.from_json(OLD_RESULT).to_json()
    assert old == {**OLD_RESULT, "best_val_top1": None, "selected_on": "test"}
    with pytest.raises(TypeError):
        StageResult.from_json({"name": "a"})
