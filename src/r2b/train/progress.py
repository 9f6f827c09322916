"""What a stage has done: its progress while it trains, and its result once it has finished.

- ``StageProgress``: epochs and optimiser steps done, the best epoch so far and its accuracies,
  the training time and the per-epoch history (the rows of ``metrics.csv``). It is saved in
  ``state.safetensors`` (the ``progress`` record, ``r2b.train.checkpoint``) after every epoch.
  ``best_score`` is the top-1 the best epoch is chosen on (``selected_on``: validation top-1 with
  a validation split, else test top-1); ``best_top1`` / ``best_top5`` are the test accuracies of
  that epoch, ``best_val_top1`` its validation top-1 (None without a validation split).
- ``StoppedEpoch``: where a stage stopped in the middle of an epoch (after a stop signal): the
  epoch (0-based), the batches done, the number of processes and the seconds the epoch had run.
  Saved with the progress as ``in_epoch``; absent after a finished epoch.
- ``StageResult``: a finished stage's entry of ``results.json`` and its ``<stage>/result.json``
  (accuracies in percent, epochs 1-based).

``from_json`` reads the records every version of r2b wrote: files of older versions lack keys
(state files before the validation split: ``best_score``, ``best_val_top1``, ``selected_on``;
before stop signals: ``in_epoch``; results before the validation split: ``best_val_top1``,
``selected_on``); the missing ones take the defaults of the dataclass fields below, the only
place that states them. ``to_json`` writes every key, in the order of the fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from r2b.train.config import StageConfig


def _known(cls, record: dict) -> dict:
    """The entries of ``record`` that are fields of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in record.items() if k in names}


@dataclass
class StoppedEpoch:
    """The point in an epoch where a stage stopped (see the module docstring)."""

    epoch: int | None = None
    batches: int = 0
    world_size: int | None = None
    elapsed_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> StoppedEpoch:
        return cls(**_known(cls, record))


@dataclass
class StageProgress:
    """A stage's progress (see the module docstring); a stage that has not started has the
    defaults."""

    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    best_top5: float = 0.0
    best_epoch: int = 0
    best_score: float | None = None  # None: the file predates it, and it is best_top1
    best_val_top1: float | None = None
    selected_on: str = "test"
    time_s: float = 0.0
    history: list[dict] = field(default_factory=list)
    in_epoch: StoppedEpoch | None = None

    def __post_init__(self) -> None:
        if self.best_score is None:
            self.best_score = self.best_top1

    def record_epoch(self, row: dict, score: float) -> None:
        """Make the epoch of ``row`` the best one when its selection top-1 ``score`` beats the
        best so far (``row`` is already in ``history``)."""
        if score > self.best_score:
            self.best_score = score
            self.best_top1 = row.get("test_top1")  # None until tested (data.test_every_epoch)
            self.best_top5 = row.get("test_top5")
            self.best_val_top1 = row.get("val_top1")
            self.best_epoch = row["epoch"]

    def to_json(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "in_epoch"}
        if self.in_epoch is not None:
            record["in_epoch"] = self.in_epoch.to_json()
        return record

    @classmethod
    def from_json(cls, record: dict) -> StageProgress:
        known = _known(cls, record)
        if known.get("in_epoch") is not None:
            known["in_epoch"] = StoppedEpoch.from_json(known["in_epoch"])
        return cls(**known)


@dataclass(kw_only=True)
class StageResult:
    """A finished stage's record (see the module docstring)."""

    name: str
    model: str
    variant: str  # the model's stage ("fp", "ban", "bnn") or "real"
    teacher: str | None
    init_from: str | None
    epochs: int
    top1: float | None  # test accuracies after the last epoch
    top5: float | None
    best_top1: float  # test accuracies of the best epoch
    best_top5: float
    best_epoch: int
    best_val_top1: float | None = None
    selected_on: str = "test"
    seconds: float  # training time
    dir: str  # the stage's folder, relative to the run folder

    @classmethod
    def of(cls, stage: StageConfig, progress: StageProgress) -> StageResult:
        """The result of ``stage`` when it has made ``progress``."""
        last = progress.history[-1] if progress.history else {}
        return cls(
            name=stage.name, model=stage.model.name, variant=stage.model.stage or "real",
            teacher=stage.teacher, init_from=stage.init_from, epochs=stage.epochs,
            top1=last.get("test_top1"), top5=last.get("test_top5"),
            best_top1=progress.best_top1, best_top5=progress.best_top5,
            best_epoch=progress.best_epoch, best_val_top1=progress.best_val_top1,
            selected_on=progress.selected_on, seconds=round(progress.time_s, 2), dir=stage.name,
        )  # fmt: skip

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> StageResult:
        """Raises ``TypeError`` when a key without a default is missing."""
        return cls(**_known(cls, record))
