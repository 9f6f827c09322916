"""The staged pipeline: run a list of stages in order, each one's teacher and initialisation taken
from earlier stages' best checkpoints (METHOD.md section 5; DESIGN.md habit 6).

For stage ``i``: build the student from its model config (seeded by (seed, i)); if it has a
teacher, rebuild that stage's network from its ``best.safetensors`` and freeze it; if it
initialises from a stage (or a ``.safetensors`` file), load those weights (names and shapes must
match: ``fp``, ``ban`` and ``bnn`` of one family share their parameter names); then train it
(``r2b.train.loop``). A finished stage leaves ``<stage>/result.json``; a resumed run skips
finished stages and continues the unfinished one from its ``state.safetensors``.

Run directory layout: see ``RUN_LAYOUT`` below (and the README). Only rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from r2b.data import build_augment, build_dataset, num_classes
from r2b.data.memory import InMemoryImageDataset
from r2b.data.seeds import derive_seed
from r2b.errors import UserError
from r2b.models import create_model
from r2b.train.checkpoint import atomic_write, load_model, load_state_into, read_weights
from r2b.train.config import DataConfig, PipelineConfig, StageConfig, dump_yaml, to_dict
from r2b.train.loop import BEST_FILE, StageJob, train_stage
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
"""


# --------------------------------------------------------------------------- run directory


def check_run_dir(run_dir: Path, cfg: PipelineConfig, resume: bool) -> None:
    """Refuse to overwrite a run; on ``resume`` require the same config as the saved one.

    Only ``runtime`` (devices, precision, threads) may differ between a run and its resumption.
    """
    saved = run_dir / CONFIG_FILE
    if not resume:
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UserError(
                f"output directory {run_dir} already exists and is not empty; pass --resume to "
                "continue the run in it, or choose a new --out"
            )
        return
    if not saved.is_file():
        raise UserError(
            f"--resume: {run_dir} holds no run ({CONFIG_FILE} is missing); give the --out "
            "folder of an earlier r2b train, or drop --resume to start a new run"
        )
    from r2b.train.config import load_config

    old = to_dict(load_config(saved))
    new = to_dict(cfg)
    old.pop("runtime"), new.pop("runtime")
    if old != new:
        keys = _diff_keys(old, new)
        raise UserError(
            f"--resume: the config differs from the run's saved {saved} "
            f"(at {', '.join(keys[:3])}); "
            "resume without --config/--set (the saved config is used) or start a new --out"
        )


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


def _limit(ds, n: int | None):
    """A class-balanced subset of the first ``n`` images (round-robin over classes)."""
    if n is None or n >= len(ds):
        return ds
    if not isinstance(ds, InMemoryImageDataset):
        raise UserError("data.train_limit/test_limit need an in-memory dataset; remove the limit")
    targets = ds.targets
    rank = torch.zeros_like(targets)
    for c in targets.unique():
        where = (targets == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    order = sorted(range(len(targets)), key=lambda i: (int(rank[i]), int(targets[i])))
    idx = torch.tensor(sorted(order[:n]))
    return InMemoryImageDataset(
        ds.images[idx], ds.targets[idx], ds.classes, ds.kind, ds.mean, ds.std, ds.name, ds.split
    )


def load_data(cfg: DataConfig, seed: int = 0):
    """(train split, test split) of the configured dataset, limited when asked."""
    kw = dict(root=cfg.root, download=cfg.download, image_size=cfg.image_size,
              in_memory=cfg.in_memory, seed=seed)  # fmt: skip
    train = build_dataset(cfg.name, split="train", **kw)
    test = build_dataset(cfg.name, split="test", random_crop=False, **kw)
    return _limit(train, cfg.train_limit), _limit(test, cfg.test_limit)


def _to_device(ds, device: torch.device):
    """Hold an in-memory dataset on the GPU (batches are then sliced there)."""
    if device.type != "cpu" and isinstance(ds, InMemoryImageDataset):
        ds.images = ds.images.to(device)
        ds.targets = ds.targets.to(device)
    return ds


# --------------------------------------------------------------------------- models


def build_student(stage: StageConfig, index: int, seed: int, classes: int) -> nn.Module:
    """The stage's network, initialised from a seed derived from (seed, stage index)."""
    torch.manual_seed(derive_seed(seed, index))
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
        "seconds": round(progress["time_s"], 2),
        "dir": stage.name,
    }


def results_table(results: dict) -> str:
    """Plain-text per-stage table printed at the end of ``r2b train``."""
    head = f"{'stage':<10} {'model':<14} {'step':<5} {'epochs':>6} {'top-1':>7} {'top-5':>7} " \
           f"{'best top-1':>10} {'time':>7}"  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results["stages"]:
        lines.append(
            f"{r['name']:<10} {r['model']:<14} {r['variant']:<5} {r['epochs']:>6} "
            f"{_pct(r['top1']):>7} {_pct(r['top5']):>7} {_pct(r['best_top1']):>10} "
            f"{r['seconds']:>6.0f}s"
        )
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


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, resume: bool = False, log=print) -> dict:
    """Train every stage of ``cfg`` into ``run_dir``; returns the results record.

    Raises UserError, before writing anything, when the run directory holds a run and ``resume``
    is False, when the data cannot be found, or when the devices cannot be set up.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, cfg, resume)
    fabric = make_fabric(cfg.runtime)
    writer = is_writer(fabric)
    say = log if writer else (lambda *_: None)
    train_set, test_set = load_data(cfg.data, cfg.seed)
    classes = num_classes(train_set)
    check_init_files(cfg, classes)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write(run_dir / CONFIG_FILE, dump_yaml(cfg).encode())
    fabric.barrier()
    device = fabric.device
    train_set, test_set = _to_device(train_set, device), _to_device(test_set, device)
    say(
        f"r2b train: {cfg.name}, {len(cfg.stages)} stages, {cfg.data.name} data "
        f"({len(train_set)} train / {len(test_set)} test images, {classes} classes), "
        f"{describe(fabric)} -> {run_dir}"
    )
    results = {
        "name": cfg.name, "title": f"r2b training report: {cfg.name}", "seed": cfg.seed,
        "dataset": f"{cfg.data.name} ({len(train_set)} train / {len(test_set)} test images, "
                   f"{classes} classes)",
        "data": {"name": cfg.data.name, "num_classes": classes,
                 "train_images": len(train_set), "test_images": len(test_set)},
        "device": describe(fabric), "world_size": fabric.world_size, "stages": [],
    }  # fmt: skip
    data_info = {**to_dict(cfg.data), "num_classes": classes, "classes": list(train_set.classes)}
    channels_last = use_channels_last(cfg.runtime, fabric)
    for index, stage in enumerate(cfg.stages):
        stage_dir = run_dir / stage.name
        done = stage_dir / STAGE_RESULT
        if done.is_file():
            results["stages"].append(json.loads(done.read_text()))
            say(f"[{stage.name}] finished earlier, skipped")
            continue
        if writer:
            stage_dir.mkdir(exist_ok=True)
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
