"""The staged pipeline: run a list of stages in order, each one's teacher and initialisation taken
from earlier stages' best checkpoints (docs/method.md section 5; docs/design.md habit 6).

For stage ``i``: build the student from its model config (seeded by (seed, i)); if it has a
teacher, rebuild that stage's network from its ``best.safetensors`` and freeze it; if it
initialises from a stage (or a ``.safetensors`` file), load those weights (names and shapes must
match: ``fp``, ``ban`` and ``bnn`` of one family share their parameter names); then train it
(``r2b.train.loop``). A finished stage leaves ``<stage>/result.json``; a resumed run skips
finished stages and continues the unfinished one from its ``state.safetensors``.

Before anything is written, everything that can be checked is: the config (``validate``), the
run folder (not another run's unless resuming, not locked by a live process, creatable), the
data, and every stage against the data (augmentations that fit its kind, a batch that fits its
size, the image size), so a mistake in the last stage does not surface after hours of training.

With ``data.val_fraction`` > 0 a class-balanced validation split is carved from the training
images (``r2b.data.splits``); each stage's ``best.safetensors`` is its epoch of best validation
top-1, so every teacher and ``init_from`` is chosen on validation data and the test split is only
reported. With 0 (the default) the best epoch is chosen on test top-1, as before.

While it trains, the run holds ``RUN/train.lock`` (``r2b.train.lock``) and SIGTERM/SIGINT stop it
after the current step with a resumable state (``r2b.train.guard``).

Run directory layout: see ``RUN_LAYOUT`` below (and the README). Only rank 0 writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from r2b.data import build_augment, build_dataset, limit, num_classes, validation_split
from r2b.data.memory import InMemoryImageDataset
from r2b.data.seeds import seed_global_rngs
from r2b.errors import RunStopped, UserError
from r2b.models import create_model
from r2b.train.checkpoint import atomic_write, load_model, load_state_into, read_weights
from r2b.train.config import DataConfig, PipelineConfig, StageConfig, dump_yaml, to_dict
from r2b.train.guard import StopSignals, stop_agreed
from r2b.train.lock import LOCK_FILE, RunLock, check_unlocked
from r2b.train.loop import BEST_FILE, StageJob, check_batch_fits, train_stage
from r2b.train.runtime import describe, is_writer, make_fabric, use_channels_last

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
STAGE_RESULT = "result.json"
RUN_LAYOUT = """\
RUN/config.yaml           the resolved config
RUN/results.json          every stage's top-1/top-5 (last and best epoch), times
RUN/report.md, *.png      results table, per-stage curves, teacher-vs-student attention maps
RUN/tb/                   TensorBoard events (when tensorboard is installed)
RUN/<stage>/metrics.csv   one row per epoch: losses, accuracies, lr, flip ratio
RUN/<stage>/best.safetensors, last.safetensors   weights (+ architecture and info metadata)
RUN/<stage>/state.safetensors                    resumable training state
RUN/<stage>/result.json   present once the stage has finished
RUN/train.lock            while a run trains in the folder (pid, host)
"""
#: config keys that ``--resume`` may change in a stage that has not finished (after a diverged
#: loss: resume with a lower learning rate); ``runtime.*`` may always change
RESUME_MAY_CHANGE = re.compile(r"^stages\[(\d+)\]\.optim\.lr$")


# --------------------------------------------------------------------------- run directory


def _check_creatable(run_dir: Path) -> None:
    """The nearest existing folder above ``run_dir`` is a folder (not a file)."""
    for parent in run_dir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"cannot create the run folder {run_dir}: {parent} is a file, not a folder; "
                    "choose another --out"
                )
            return


def _holds_files(run_dir: Path) -> bool:
    return any(p.name != LOCK_FILE for p in run_dir.iterdir())


def check_run_dir(run_dir: Path, cfg: PipelineConfig, resume: bool) -> bool:
    """Refuse to overwrite a run, or to use a folder a live run holds; on ``resume`` require the
    same config as the saved one. Returns whether the saved config is to be rewritten.

    Only ``runtime`` (devices, precision, threads) and, in stages that have not finished, the
    learning rate (``RESUME_MAY_CHANGE``) may differ between a run and its resumption.
    """
    saved = run_dir / CONFIG_FILE
    if run_dir.is_dir():
        check_unlocked(run_dir)
    if not resume:
        if run_dir.exists() and (not run_dir.is_dir() or _holds_files(run_dir)):
            raise UserError(
                f"output directory {run_dir} already exists and is not empty; pass --resume to "
                "continue the run in it, or choose a new --out"
            )
        _check_creatable(run_dir)
        return False
    if not saved.is_file():
        raise UserError(
            f"--resume: {run_dir} holds no run ({CONFIG_FILE} is missing); give the --out "
            "folder of an earlier r2b train, or drop --resume to start a new run"
        )
    from r2b.train.config import load_config

    old = to_dict(load_config(saved))
    new = to_dict(cfg)
    old.pop("runtime"), new.pop("runtime")
    keys = _diff_keys(old, new)
    refused = [k for k in keys if not _may_change(k, cfg, run_dir)]
    if refused:
        raise UserError(
            f"--resume: the config differs from the run's saved {saved} "
            f"(at {', '.join(refused[:3])}); "
            "resume without --config/--set (the saved config is used; --set runtime.* and "
            "an unfinished stage's optim.lr may change) or start a new --out"
        )
    return bool(keys)


def _may_change(key: str, cfg: PipelineConfig, run_dir: Path) -> bool:
    match = RESUME_MAY_CHANGE.match(key)
    if not match or int(match.group(1)) >= len(cfg.stages):
        return False
    return not (run_dir / cfg.stages[int(match.group(1))].name / STAGE_RESULT).is_file()


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _diff_keys(x, y, f"{prefix}[{i}]")
        return out
    return [] if a == b else [prefix or "(root)"]


def write_json(path: Path, data) -> None:
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


# --------------------------------------------------------------------------- data


def _dataset_kw(cfg: DataConfig, seed: int) -> dict:
    return dict(root=cfg.root, download=cfg.download, image_size=cfg.image_size,
                in_memory=cfg.in_memory, seed=seed)  # fmt: skip


def _train_and_val(cfg: DataConfig, seed: int, random_crop: bool = True):
    kw = _dataset_kw(cfg, seed)
    train = build_dataset(cfg.name, split="train", random_crop=random_crop, **kw)
    train, val = validation_split(limit(train, cfg.train_limit), cfg.val_fraction, seed)
    if val is not None and len(val) == 0:
        raise UserError(
            f"data.val_fraction {cfg.val_fraction} leaves no validation images (no class has "
            "two or more); raise data.train_limit or set data.val_fraction to 0"
        )
    return train, val


def load_test(cfg: DataConfig, seed: int = 0):
    """The test split, limited to ``test_limit`` images (class-balanced)."""
    test = build_dataset(cfg.name, split="test", random_crop=False, **_dataset_kw(cfg, seed))
    return limit(test, cfg.test_limit)


def load_data(cfg: DataConfig, seed: int = 0, random_crop: bool = True):
    """(train, validation or None, test) splits of the configured dataset.

    ``train_limit`` picks a class-balanced subset of the training split; ``val_fraction`` of it
    (per class, fixed by ``seed``) becomes the validation split and the rest is trained on.
    """
    train, val = _train_and_val(cfg, seed, random_crop)
    return train, val, load_test(cfg, seed)


def load_split(cfg: DataConfig, split: str, seed: int = 0):
    """One split as a run saw it: "train" (the images trained on), "val" or "test" (evaluation
    crops throughout: what ``r2b eval`` measures)."""
    if split == "test":
        return load_test(cfg, seed)
    train, val = _train_and_val(cfg, seed, random_crop=False)
    if split == "train":
        return train
    if val is None:
        raise UserError(
            "--split val: this data has no validation split (the run's data.val_fraction is 0, "
            "or --data names other data); use --split test"
        )
    return val


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
            aug(_first_images(train_set, 2)[0])
        except ValueError as err:
            raise UserError(
                f"config key stages[{i}].augment.ops (or data.image_size) does not fit the "
                f"{train_set.kind}-kind data: {err}"
            ) from None
    for ds in eval_sets:
        try:
            build_augment(ds, train=False, image_size=image_size)(_first_images(ds, 1)[0])
        except ValueError as err:
            msg = f"config key data.image_size {image_size} does not fit: {err}"
            raise UserError(msg) from None


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


def initialise(model: nn.Module, stage: StageConfig, run_dir: Path) -> None:
    """Load ``stage.init_from`` (an earlier stage's best weights or a file) into ``model``."""
    src = stage.init_from
    path = Path(src) if src.endswith(".safetensors") else run_dir / src / BEST_FILE
    state, arch, _ = read_weights(path)
    load_state_into(model, state, path, arch)


def check_init_files(cfg: PipelineConfig, classes: int) -> None:
    """Fail early (before the run folder exists) on ``init_from`` files that do not fit."""
    for index, stage in enumerate(cfg.stages):
        if stage.init_from is not None and stage.init_from.endswith(".safetensors"):
            model = build_student(stage, index, cfg.seed, classes)
            state, arch, _ = read_weights(stage.init_from)
            load_state_into(model, state, stage.init_from, arch)


# --------------------------------------------------------------------------- results


def stage_result(stage: StageConfig, progress: dict) -> dict:
    """The stage's entry of results.json (accuracies in percent, epochs 1-based)."""
    last = progress["history"][-1] if progress["history"] else {}
    return {
        "name": stage.name,
        "model": stage.model.name,
        "variant": stage.model.stage or "real",
        "teacher": stage.teacher,
        "init_from": stage.init_from,
        "epochs": stage.epochs,
        "top1": last.get("test_top1"),
        "top5": last.get("test_top5"),
        "best_top1": progress["best_top1"],
        "best_top5": progress["best_top5"],
        "best_epoch": progress["best_epoch"],
        "best_val_top1": progress.get("best_val_top1"),
        "selected_on": progress.get("selected_on", "test"),
        "seconds": round(progress["time_s"], 2),
        "dir": stage.name,
    }


def results_table(results: dict) -> str:
    """Plain-text per-stage table printed at the end of ``r2b train``."""
    val = any(r.get("best_val_top1") is not None for r in results["stages"])
    head = (
        f"{'stage':<10} {'model':<14} {'step':<5} {'epochs':>6} {'top-1':>7} {'top-5':>7} "
        f"{'best top-1':>10}" + (f" {'val top-1':>9}" if val else "") + f" {'time':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results["stages"]:
        lines.append(
            f"{r['name']:<10} {r['model']:<14} {r['variant']:<5} {r['epochs']:>6} "
            f"{_pct(r['top1']):>7} {_pct(r['top5']):>7} {_pct(r['best_top1']):>10} "
            + (f"{_pct(r.get('best_val_top1')):>9} " if val else "")
            + f"{r['seconds']:>6.0f}s"
        )
    if val:
        lines.append("best top-1: test top-1 of the epoch of best validation top-1")
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _write_report(run_dir: Path, log) -> None:
    try:
        from r2b.report import write_report
    except ImportError:
        return
    try:
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001  (a failed plot must not lose a finished run)
        log(f"warning: report not written ({type(err).__name__}: {err})")


def _first_images(ds, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8 batch) and labels of a dataset: the first image of each of the first
    ``n`` classes in the order they appear (test splits are often sorted by class)."""
    targets = torch.as_tensor(ds.targets).cpu()
    picked, seen = [], set()
    for i, t in enumerate(targets.tolist()):
        if t not in seen:
            seen.add(t)
            picked.append(i)
            if len(picked) == n:
                break
    chosen = set(picked)
    for i in range(len(ds)):  # fewer classes than n: fill up with further images
        if len(picked) >= min(n, len(ds)):
            break
        if i not in chosen:
            picked.append(i)
    if getattr(ds, "in_memory", False):
        return ds[torch.tensor(picked)]
    items = [ds[i] for i in picked]
    return torch.stack([im for im, _ in items]), torch.tensor([y for _, y in items])


def _plot_attention(run_dir: Path, stage: StageConfig, teacher, test_set, cfg, device, log):
    """Teacher-vs-student attention maps of the stage's best weights on a few test images."""
    n = cfg.report.attention_images
    if teacher is None or n <= 0:
        return
    try:
        from r2b.report import plot_attention
    except ImportError:
        return
    try:
        student, _ = load_model(run_dir / stage.name / BEST_FILE, device)
        images, labels = _first_images(test_set, n)
        x = build_augment(test_set, train=False, image_size=cfg.data.image_size)(images.to(device))
        names = [test_set.classes[int(k)] for k in labels]
        out = run_dir / f"attention_{stage.name}.png"
        plot_attention(teacher, student, x, out, mean=test_set.mean, std=test_set.std, titles=names)
    except Exception as err:  # noqa: BLE001
        log(f"warning: attention plot of {stage.name} not written ({type(err).__name__}: {err})")


# --------------------------------------------------------------------------- the pipeline


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the folder {path} ({err.strerror}); choose a writable --out"
        ) from None


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, resume: bool = False, log=print) -> dict:
    """Train every stage of ``cfg`` into ``run_dir``; returns the results record.

    Raises UserError, before writing anything, when the run directory holds a run and ``resume``
    is False, when another live process trains in it, when the data cannot be found, when a stage
    does not fit the data, or when the devices cannot be set up. During training it raises
    ``TrainingDiverged`` (a loss turned NaN/inf) and ``RunStopped`` (SIGTERM/SIGINT); both leave
    a state that ``resume=True`` continues from.
    """
    run_dir = Path(run_dir)
    rewrite_config = check_run_dir(run_dir, cfg, resume)
    fabric = make_fabric(cfg.runtime)
    writer = is_writer(fabric)
    train_set, val_set, test_set = load_data(cfg.data, cfg.seed)
    preflight(cfg, train_set, [d for d in (val_set, test_set) if d is not None], fabric.world_size)
    check_init_files(cfg, num_classes(train_set))
    lock = None
    try:
        if writer:
            _make_dir(run_dir)
            lock = RunLock(run_dir).acquire()
            if not resume or rewrite_config:
                atomic_write(run_dir / CONFIG_FILE, dump_yaml(cfg).encode())
        fabric.barrier()
        with StopSignals() as stop:
            return _run_stages(cfg, run_dir, fabric, (train_set, val_set, test_set), stop, log)
    finally:
        if lock is not None:
            lock.release()


def _run_stages(cfg: PipelineConfig, run_dir: Path, fabric, data, stop: StopSignals, log) -> dict:
    """The stages of ``run_pipeline`` in order, in a prepared (locked) run folder."""
    writer = is_writer(fabric)
    say = log if writer else (lambda *_: None)
    device = fabric.device
    train_set, val_set, test_set = (None if d is None else _to_device(d, device) for d in data)
    classes = num_classes(train_set)
    n_val = 0 if val_set is None else len(val_set)
    val_text = f"{n_val} validation / " if val_set is not None else ""
    say(
        f"r2b train: {cfg.name}, {len(cfg.stages)} stages, {cfg.data.name} data "
        f"({len(train_set)} train / {val_text}{len(test_set)} test images, {classes} classes), "
        f"{describe(fabric)} -> {run_dir}"
    )
    selection = "val" if val_set is not None else "test"
    results = {
        "name": cfg.name, "title": f"r2b training report: {cfg.name}", "seed": cfg.seed,
        "dataset": f"{cfg.data.name} ({len(train_set)} train / {val_text}{len(test_set)} test "
                   f"images, {classes} classes)",
        "data": {"name": cfg.data.name, "num_classes": classes, "train_images": len(train_set),
                 "val_images": n_val, "test_images": len(test_set)},
        "selection": selection,
        "device": describe(fabric), "world_size": fabric.world_size, "stages": [],
    }  # fmt: skip
    data_info = {**to_dict(cfg.data), "seed": cfg.seed, "num_classes": classes,
                 "classes": list(train_set.classes)}  # fmt: skip
    channels_last = use_channels_last(cfg.runtime, fabric)
    for index, stage in enumerate(cfg.stages):
        stage_dir = run_dir / stage.name
        done = stage_dir / STAGE_RESULT
        if done.is_file():
            results["stages"].append(json.loads(done.read_text()))
            say(f"[{stage.name}] finished earlier, skipped")
            continue
        if stop_agreed(fabric, stop.requested):
            raise RunStopped(
                f"{stop.name}: stopped before stage {stage.name!r} (the stages before it are "
                f"finished); continue with: r2b train --out {run_dir} --resume",
                stop.signum,
            )
        if writer:
            _make_dir(stage_dir)
        fabric.barrier()
        model = build_student(stage, index, cfg.seed, classes)
        teacher = None
        if stage.teacher is not None:
            teacher = load_teacher(run_dir / stage.teacher / BEST_FILE, device)
        resuming = (stage_dir / "state.safetensors").is_file()
        if stage.init_from is not None and not resuming:
            initialise(model, stage, run_dir)
        say(_stage_line(stage, resuming))
        job = StageJob(
            stage=stage, index=index, seed=cfg.seed, data=cfg.data, runtime=cfg.runtime,
            stage_dir=stage_dir, train_set=train_set, test_set=test_set, num_classes=classes,
            info={"pipeline": cfg.name, "stage": stage.name, "data": data_info},
            tb_dir=run_dir / "tb" / stage.name, channels_last=channels_last, log=say,
            val_set=val_set, stop=stop,
        )  # fmt: skip
        progress = train_stage(fabric, job, model, teacher)
        result = stage_result(stage, progress)
        results["stages"].append(result)
        if writer:
            write_json(stage_dir / STAGE_RESULT, result)
            write_json(run_dir / RESULTS_FILE, _with_total(results))
            _plot_attention(run_dir, stage, teacher, test_set, cfg, device, say)
        fabric.barrier()
    results = _with_total(results)
    if writer:
        write_json(run_dir / RESULTS_FILE, results)
        _write_report(run_dir, say)
        say("\n" + results_table(results))
        say(f"\nrun folder: {run_dir}  (results.json, report.md, plots)")
    return results


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
