"""The staged pipeline: run a list of stages in order, each one's teacher and initialisation taken
from earlier stages' best checkpoints (docs/method.md section 5; docs/design.md habit 6).

For stage ``i``: build the student from its model config (seeded by (seed, i)); if it has a
teacher, rebuild that stage's network from its ``best.safetensors`` and freeze it; if it
initialises from a stage (or a ``.safetensors`` file), load those weights (names and shapes must
match: ``fp``, ``ban`` and ``bnn`` of one family share their parameter names); then train it
(``r2b.train.loop``). A finished stage leaves ``<stage>/result.json``; a resumed run skips
finished stages and continues the unfinished one from its ``state.safetensors``.

Before anything is written, everything that can be checked is: the config (``validate``), the
run folder (not another run's unless resuming, not locked by a live process, creatable: the
rules of ``r2b.train.run_folder``), the data, and every stage against the data (augmentations
that fit its kind, a batch that fits its size, the image size), so a mistake in the last stage
does not surface after hours of training.

With ``data.val_fraction`` > 0 a class-balanced validation split is carved from the training
images (``r2b.data.run_splits``); each stage's ``best.safetensors`` is its epoch of best
validation top-1, so every teacher and ``init_from`` is chosen on validation data and the test
split is only reported. With 0 (the default) the best epoch is chosen on test top-1, as before.

While it trains, the run holds ``RUN/train.lock`` (``r2b.train.lock``) and SIGTERM/SIGINT stop it
after the current step with a resumable state (``r2b.train.guard``).

The files of a run folder: ``r2b.train.run_folder.RUN_LAYOUT`` (and the README). Only rank 0
writes; the report and the plots are ``r2b.report``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from r2b.data import RunSplits, build_augment, first_of_each_class, load_data, num_classes
from r2b.data.memory import InMemoryImageDataset
from r2b.data.seeds import seed_global_rngs
from r2b.errors import RunStopped, UserError
from r2b.io import atomic_write, write_json
from r2b.models import create_model
from r2b.report import plot_stage_attention, results_table, write_report
from r2b.train.checkpoint import load_model, load_state_into, read_weights
from r2b.train.config import PipelineConfig, StageConfig, dump_yaml, to_dict
from r2b.train.guard import StopSignals, stop_agreed
from r2b.train.lock import RunLock, check_unlocked
from r2b.train.loop import StageJob, check_batch_fits, train_stage
from r2b.train.progress import StageResult
from r2b.train.run_folder import RunFolder, StageFolder, names_weights_file
from r2b.train.runtime import describe, is_writer, make_fabric, use_channels_last

# --------------------------------------------------------------------------- checks


def preflight(cfg: PipelineConfig, train_set, eval_sets, world_size: int) -> None:
    """Check every stage against the data before the first one trains: its batch fits the
    training images, its augmentations exist for the data's kind and its image size fits (one
    batch of two images goes through each stage's augmentation and the evaluation transform)."""
    image_size = cfg.data.image_size
    for i, stage in enumerate(cfg.stages):
        check_batch_fits(stage, len(train_set), world_size)
        a = stage.augment
        try:
            aug = build_augment(
                train_set, train=True, augment=a.ops, image_size=image_size, pad=a.pad,
                degrees=a.degrees, jitter=a.jitter,
            )  # fmt: skip
            aug(first_of_each_class(train_set, 2)[0])
        except ValueError as err:
            raise UserError(
                f"config key stages[{i}].augment.ops (or data.image_size) does not fit the "
                f"{train_set.kind}-kind data: {err}"
            ) from None
    for ds in eval_sets:
        try:
            build_augment(ds, train=False, image_size=image_size)(first_of_each_class(ds, 1)[0])
        except ValueError as err:
            msg = f"config key data.image_size {image_size} does not fit: {err}"
            raise UserError(msg) from None


def check_init_files(cfg: PipelineConfig, classes: int) -> None:
    """Fail early (before the run folder exists) on ``init_from`` files that do not fit."""
    for index, stage in enumerate(cfg.stages):
        if stage.init_from is not None and names_weights_file(stage.init_from):
            model = build_student(stage, index, cfg.seed, classes)
            state, arch, _ = read_weights(stage.init_from)
            load_state_into(model, state, stage.init_from, arch)


def _check_folder(folder: RunFolder, cfg: PipelineConfig, resume: bool) -> bool:
    """The folder is free and fits ``resume``; returns whether to rewrite the saved config."""
    if folder.root.is_dir():
        check_unlocked(folder.root)
    return folder.check_use(cfg, resume)


def _to_device(ds, device: torch.device):
    """Hold an in-memory dataset on the GPU (batches are then sliced there)."""
    if device.type != "cpu" and isinstance(ds, InMemoryImageDataset):
        ds.images = ds.images.to(device)
        ds.targets = ds.targets.to(device)
    return ds


# --------------------------------------------------------------------------- models


def build_student(stage: StageConfig, index: int, seed: int, classes: int) -> nn.Module:
    """The stage's network, initialised from a seed derived from (seed, stage index).

    torch's, numpy's and Python's global generators are all seeded from it, so their states
    (saved in ``state.safetensors``) are the same in two runs of one config.
    """
    seed_global_rngs(seed, index)
    return create_model(stage.model.name, **stage.model.create_kwargs(classes))


def load_teacher(path: Path, device) -> nn.Module:
    """A frozen network rebuilt from a weights file (eval mode, no gradients)."""
    teacher, _ = load_model(path, device)
    teacher.requires_grad_(False)
    return teacher.eval()


def initialise(model: nn.Module, stage: StageConfig, folder: RunFolder) -> None:
    """Load ``stage.init_from`` (an earlier stage's best weights or a file) into ``model``."""
    path = folder.weights(stage.init_from)
    state, arch, _ = read_weights(path)
    load_state_into(model, state, path, arch)


# --------------------------------------------------------------------------- the pipeline


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, resume: bool = False, log=print) -> dict:
    """Train every stage of ``cfg`` into ``run_dir``; returns the results record.

    Raises UserError, before writing anything, when the run directory holds a run and ``resume``
    is False, when another live process trains in it, when the data cannot be found, when a stage
    does not fit the data, or when the devices cannot be set up. During training it raises
    ``TrainingDiverged`` (a loss turned NaN/inf) and ``RunStopped`` (SIGTERM/SIGINT); both leave
    a state that ``resume=True`` continues from.
    """
    folder = RunFolder(run_dir)
    rewrite_config = _check_folder(folder, cfg, resume)
    fabric = make_fabric(cfg.runtime)
    data = load_data(cfg.data, cfg.seed)
    preflight(cfg, data.train, [d for d in (data.val, data.test) if d is not None],
              fabric.world_size)  # fmt: skip
    check_init_files(cfg, num_classes(data.train))
    lock = None
    try:
        if is_writer(fabric):
            folder.create()
            lock = RunLock(folder.root).acquire()
            if not resume or rewrite_config:
                atomic_write(folder.config, dump_yaml(cfg).encode())
        fabric.barrier()
        with StopSignals() as stop:
            return _run_stages(_Run(cfg, folder, fabric, data, stop, log))
    finally:
        if lock is not None:
            lock.release()


@dataclass
class _Run:
    """A run in a prepared (locked) folder: what every step of the stage loop reads."""

    cfg: PipelineConfig
    folder: RunFolder
    fabric: object
    data: RunSplits
    stop: StopSignals
    log: object

    def __post_init__(self) -> None:
        self.writer = is_writer(self.fabric)
        self.data = RunSplits(*(d if d is None else _to_device(d, self.fabric.device)
                                for d in self.data))  # fmt: skip
        self.classes = num_classes(self.data.train)

    def say(self, line: str) -> None:
        """A line for the user (rank 0 only)."""
        if self.writer:
            self.log(line)


def _run_stages(run: _Run) -> dict:
    """The stages of ``run_pipeline`` in order: skip the finished ones, train the others."""
    results = _results_record(run)
    run.say(f"r2b train: {run.cfg.name}, {len(run.cfg.stages)} stages, {run.cfg.data.name} data "
            f"({_images_text(run)}), {describe(run.fabric)} -> {run.folder.root}")  # fmt: skip
    for index, stage in enumerate(run.cfg.stages):
        stage_folder = run.folder.stage(stage.name)
        if stage_folder.finished():
            results["stages"].append(_finished_result(stage_folder))
            run.say(f"[{stage.name}] finished earlier, skipped")
            continue
        _stop_if_asked(run, stage)
        result, teacher = _train_stage(run, index, stage)
        results["stages"].append(result.to_json())
        if run.writer:
            _write_stage_outputs(run, stage, result, results, teacher)
        run.fabric.barrier()
    return _finish(run, results)


def _images_text(run: _Run) -> str:
    train, val, test = run.data
    val_text = f"{len(val)} validation / " if val is not None else ""
    return f"{len(train)} train / {val_text}{len(test)} test images, {run.classes} classes"


def _results_record(run: _Run) -> dict:
    """results.json of a run whose stages are still to come (``stages`` empty)."""
    cfg, (train, val, test), fabric = run.cfg, run.data, run.fabric
    return {
        "name": cfg.name, "title": f"r2b training report: {cfg.name}", "seed": cfg.seed,
        "dataset": f"{cfg.data.name} ({_images_text(run)})",
        "data": {"name": cfg.data.name, "num_classes": run.classes, "train_images": len(train),
                 "val_images": 0 if val is None else len(val), "test_images": len(test)},
        "selection": "val" if val is not None else "test",
        "device": describe(fabric), "world_size": fabric.world_size, "stages": [],
    }  # fmt: skip


def _finished_result(folder: StageFolder) -> dict:
    """The record of a stage that finished earlier (its result.json, of any r2b version)."""
    try:
        return StageResult.from_json(json.loads(folder.result.read_text())).to_json()
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as err:
        raise UserError(
            f"{folder.result} is not a stage result ({type(err).__name__}); delete it to "
            "train that stage again"
        ) from None


def _stop_if_asked(run: _Run, stage: StageConfig) -> None:
    if stop_agreed(run.fabric, run.stop.requested):
        raise RunStopped(
            f"{run.stop.name}: stopped before stage {stage.name!r} (the stages before it are "
            f"finished); continue with: r2b train --out {run.folder.root} --resume",
            run.stop.signum,
        )


def _train_stage(run: _Run, index: int, stage: StageConfig):
    """Build the stage's student (and teacher), train it: (its result, the teacher or None)."""
    cfg, folder = run.cfg, run.folder
    stage_folder = folder.stage(stage.name)
    if run.writer:
        stage_folder.create()
    run.fabric.barrier()
    model = build_student(stage, index, cfg.seed, run.classes)
    teacher = None
    if stage.teacher is not None:
        teacher = load_teacher(folder.stage(stage.teacher).best, run.fabric.device)
    resuming = stage_folder.resumable()
    if stage.init_from is not None and not resuming:
        initialise(model, stage, folder)
    run.say(_stage_line(stage, resuming))
    progress = train_stage(run.fabric, _job(run, index, stage), model, teacher)
    return StageResult.of(stage, progress), teacher


def _job(run: _Run, index: int, stage: StageConfig) -> StageJob:
    cfg, (train, val, test) = run.cfg, run.data
    data_info = {**to_dict(cfg.data), "seed": cfg.seed, "num_classes": run.classes,
                 "classes": list(train.classes)}  # fmt: skip
    info = {"pipeline": cfg.name, "stage": stage.name, "data": data_info}
    return StageJob(
        stage=stage, index=index, seed=cfg.seed, data=cfg.data, runtime=cfg.runtime,
        folder=run.folder.stage(stage.name), train_set=train, test_set=test,
        num_classes=run.classes, info=info, tb_dir=run.folder.tensorboard(stage.name),
        channels_last=use_channels_last(cfg.runtime, run.fabric), log=run.say, val_set=val,
        stop=run.stop,
    )  # fmt: skip


def _write_stage_outputs(run: _Run, stage, result: StageResult, results: dict, teacher) -> None:
    """A finished stage's result.json, the results so far, its attention figure."""
    write_json(run.folder.stage(stage.name).result, result.to_json())
    write_json(run.folder.results, _with_total(results))
    n = run.cfg.report.attention_images
    if teacher is not None and n > 0:
        _best_effort(
            f"attention plot of {stage.name}", run.say, plot_stage_attention, run.folder.root,
            stage.name, teacher, run.data.test, n, run.cfg.data.image_size, run.fabric.device,
        )  # fmt: skip


def _finish(run: _Run, results: dict) -> dict:
    """results.json with the total time, report.md, and the table printed."""
    results = _with_total(results)
    if run.writer:
        write_json(run.folder.results, results)
        _best_effort("report", run.say, write_report, run.folder.root)
        run.say("\n" + results_table(results, markdown=False))
        files = f"{run.folder.results.name}, {run.folder.report.name}, plots"
        run.say(f"\nrun folder: {run.folder.root}  ({files})")
    return results


def _best_effort(what: str, say, write, *args) -> None:
    """``write(*args)``; a failure is a warning line (a failed plot must not lose a finished
    run)."""
    try:
        write(*args)
    except Exception as err:  # noqa: BLE001
        say(f"warning: {what} not written ({type(err).__name__}: {err})")


def _with_total(results: dict) -> dict:
    total = sum(r["seconds"] for r in results["stages"])
    return {**results, "total_time_s": round(total, 2)}


def _stage_line(stage: StageConfig, resuming: bool) -> str:
    m = stage.model
    what = f"{m.name}" + (f" ({m.stage})" if m.stage else "")
    extra = [f"teacher {stage.teacher}"] if stage.teacher else []
    if stage.init_from:
        extra.append(f"init from {stage.init_from}")
    verb = "resuming" if resuming else "training"
    return f"[{stage.name}] {verb} {what}, {stage.epochs} epochs" + (
        f", {', '.join(extra)}" if extra else ""
    )
