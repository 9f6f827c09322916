"""The training loop of one stage, on Lightning Fabric (the only long function, DESIGN.md habit 7).

Per optimiser step ``s``: take a uint8 batch, augment and normalise it on the device
(``r2b.data.BatchAugment``), optionally mix it up, set ``lr = lr_0 * factor(s)``
(``r2b.train.schedule``), compute ``loss = ce*CE + kd*KD + att*L_att``
(``r2b.losses.DistillationObjective``, which owns the frozen teacher), back-propagate through
Fabric (DDP, precision), step the optimiser, and clip the latent binary weights when configured.

Per epoch: evaluate top-1/top-5 on the test split, measure the flip ratio of binary weights, and
(rank 0) write ``best.safetensors`` (when test top-1 improves), ``last.safetensors`` and the
resumable ``state.safetensors``, then ``metrics.csv``.

Reproducibility: epoch ``e``'s shuffling, augmentation and mix-up are pure functions of
(seed, stage, rank, e), and the state file holds weights, optimiser state, step and RNG states,
so a run killed at any point and resumed from its last state reaches the same weights as an
uninterrupted run (bit for bit on CPU).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning_fabric import Fabric
from torch import nn
from tqdm import tqdm

from r2b.data import build_augment, build_loader, mixup
from r2b.data.seeds import derive_seed, generator_for
from r2b.errors import UserError
from r2b.losses import DistillationObjective
from r2b.train.checkpoint import load_training_state, save_training_state, save_weights
from r2b.train.config import DataConfig, RuntimeConfig, StageConfig
from r2b.train.evaluate import eval_batches, evaluate
from r2b.train.metrics import (
    MetricsLog,
    clip_binary_weights,
    flip_ratio,
    topk_correct,
    weight_signs,
)
from r2b.train.schedule import lr_factor, set_lr

STATE_FILE = "state.safetensors"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"


@dataclass
class StageJob:
    """Everything ``train_stage`` needs besides the networks."""

    stage: StageConfig
    index: int  # position in the pipeline (seeds derive from it)
    seed: int
    data: DataConfig
    runtime: RuntimeConfig
    stage_dir: Path
    train_set: object
    test_set: object
    num_classes: int
    info: dict  # JSON-able record stored in the weights files (data, stage, pipeline name)
    tb_dir: Path | None = None
    channels_last: bool = False
    log: Callable[[str], None] = print


def build_optimizer(stage: StageConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (default), AdamW or SGD (Nesterov) over all parameters, with the stage's decay."""
    o = stage.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name in ("adam", "adamw"):
        # fused: one kernel per step instead of ~10 small ops per tensor (CPU: 20 -> 7 ms a step
        # for ResNet-18's 11 M parameters, benchmarks/results/train_speed_imagenet32_fused_adam)
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=True)
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0, weight_decay=o.weight_decay
    )


def _on_device(dataset) -> bool:
    """Whether an in-memory dataset already lives on an accelerator (then nothing is pinned)."""
    images = getattr(dataset, "images", None)
    return images is not None and images.device.type != "cpu"


def _new_progress() -> dict:
    return {"epoch": 0, "step": 0, "best_top1": -1.0, "best_top5": 0.0, "best_epoch": 0,
            "time_s": 0.0, "history": []}  # fmt: skip


def _progress_bar(job: StageJob, fabric: Fabric, epoch: int, total: int):
    show = fabric.global_rank == 0 and job.runtime.progress and sys.stderr.isatty()
    desc = f"{job.stage.name} {epoch + 1}/{job.stage.epochs}"
    return tqdm(total=total, desc=desc, leave=False, disable=not show, dynamic_ncols=True)


def train_stage(fabric: Fabric, job: StageJob, model: nn.Module, teacher: nn.Module | None) -> dict:
    """Train ``model`` for the stage's epochs (resuming from ``state.safetensors`` if present).

    Returns the stage's progress record (history of per-epoch rows, best epoch and accuracy).
    """
    stage, rank, world = job.stage, fabric.global_rank, fabric.world_size
    writer = rank == 0
    device = fabric.device
    per_rank_batch = max(1, stage.batch_size // world)
    loader = build_loader(
        job.train_set, per_rank_batch, train=True, num_workers=job.data.num_workers,
        seed=derive_seed(job.seed, job.index), rank=rank, world_size=world,
        pin_memory=device.type == "cuda" and not _on_device(job.train_set),
    )  # fmt: skip
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UserError(
            f"stage {stage.name!r}: batch_size {stage.batch_size} is larger than the "
            f"{len(job.train_set)} training images; lower stages.{stage.name}.batch_size"
        )
    a = stage.augment
    augment = build_augment(
        job.train_set, train=True, augment=a.ops, image_size=job.data.image_size,
        seed=derive_seed(job.seed, job.index, rank), pad=a.pad, degrees=a.degrees, jitter=a.jitter,
    )  # fmt: skip
    eval_transform = build_augment(job.test_set, train=False, image_size=job.data.image_size)

    memory_format = torch.channels_last if job.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(stage, model)
    fmodel, optimizer = fabric.setup(model, optimizer)
    fmodel.mark_forward_method("forward_with_features")
    if teacher is not None:
        teacher = teacher.to(device=device, memory_format=memory_format)
    objective = DistillationObjective(
        teacher, ce=stage.loss.ce, kd=stage.loss.kd, att=stage.loss.att,
        att_form=stage.loss.att_form, temperature=stage.loss.temperature,
    )  # fmt: skip

    state_path = job.stage_dir / STATE_FILE
    progress = _new_progress()
    if state_path.is_file():
        progress = load_training_state(state_path, model, optimizer)
    signs = weight_signs(model)
    tb_dir = job.tb_dir if writer else None
    log = MetricsLog(job.stage_dir / "metrics.csv", progress["history"], tb_dir, stage.name)

    def run_eval() -> dict:
        return evaluate(
            fmodel, eval_batches(job.test_set, job.data.eval_batch_size, rank, world,
                                 job.data.num_workers),
            eval_transform, device, reduce_sum=lambda t: fabric.all_reduce(t, reduce_op="sum"),
            autocast=fabric.autocast, channels_last=job.channels_last,
        )  # fmt: skip

    def save_epoch(row: dict) -> None:
        """Checkpoints and metrics of a finished epoch (rank 0), best first, state last."""
        info = {**job.info, "epoch": row["epoch"], "top1": row["test_top1"],
                "top5": row["test_top5"]}  # fmt: skip
        if writer:
            if row["epoch"] == progress["best_epoch"]:
                save_weights(job.stage_dir / BEST_FILE, model, info)
            save_weights(job.stage_dir / LAST_FILE, model, info)
            save_training_state(state_path, model, optimizer, progress)
            log.write_csv()
        fabric.barrier()

    def record(row: dict) -> None:
        log.append(row)  # also appends to progress["history"]
        if row["test_top1"] > progress["best_top1"]:
            progress.update(best_top1=row["test_top1"], best_top5=row["test_top5"],
                            best_epoch=row["epoch"])  # fmt: skip

    if stage.epochs == 0 and not progress["history"]:
        ev = run_eval()
        record({"epoch": 0, "step": 0, "test_loss": ev["loss"], "test_top1": ev["top1"],
                "test_top5": ev["top5"], "time_s": 0.0})  # fmt: skip
        save_epoch(progress["history"][-1])

    for epoch in range(progress["epoch"], stage.epochs):
        t0 = time.perf_counter()
        loader.set_epoch(epoch)
        augment.set_epoch(epoch)
        mix_gen = generator_for(job.seed, job.index, rank, epoch, 1)
        fmodel.train()
        objective.train()
        sums = torch.zeros(6, dtype=torch.float64, device=device)  # n, loss, ce, kd, att, correct
        bar = _progress_bar(job, fabric, epoch, steps_per_epoch)
        for i, (images, labels) in enumerate(loader):
            x = augment(images.to(device, non_blocking=True))
            y = labels.to(device, non_blocking=True)
            if a.mixup > 0:
                x, y = mixup(x, y, a.mixup, job.num_classes, generator=mix_gen)
            if job.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            set_lr(
                optimizer,
                stage.optim.lr,
                lr_factor(stage.schedule, progress["step"], steps_per_epoch, stage.epochs),
            )
            with fabric.autocast():
                out = objective(fmodel, x, y)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(out["loss"])
            optimizer.step()
            if stage.optim.clip_weights is not None:
                clip_binary_weights(model, stage.optim.clip_weights)
            progress["step"] += 1
            n = y.shape[0]
            (correct,) = topk_correct(out["logits"].detach().float(), y, ks=(1,))
            terms = [out["loss"].detach(), out["ce"], out["kd"], out["att"]]
            sums += torch.stack(
                [torch.tensor(n, device=device).double()]
                + [t.double() * n for t in terms]
                + [correct.double()]
            )
            if not bar.disable and (i % 10 == 0 or i == steps_per_epoch - 1):
                s = sums.tolist()
                bar.set_postfix(loss=f"{s[1] / s[0]:.3f}", acc=f"{100 * s[5] / s[0]:.1f}%")
            bar.update(1)
        bar.close()
        sums = fabric.all_reduce(sums, reduce_op="sum")
        n, loss, ce, kd, att, correct = sums.tolist()
        ev = run_eval()
        new_signs = weight_signs(model)
        flips, signs = flip_ratio(signs, new_signs), new_signs
        progress["epoch"] = epoch + 1
        progress["time_s"] += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1, "step": progress["step"], "lr": optimizer.param_groups[0]["lr"],
            "loss": loss / n, "ce": ce / n, "kd": kd / n, "att": att / n,
            "train_top1": 100.0 * correct / n, "test_loss": ev["loss"], "test_top1": ev["top1"],
            "test_top5": ev["top5"], "flip_ratio": flips, "time_s": progress["time_s"],
        }  # fmt: skip
        record(row)
        save_epoch(row)
        if writer:
            job.log(_epoch_line(stage, row))
    log.close()
    return progress


def _epoch_line(stage: StageConfig, row: dict) -> str:
    parts = [
        f"[{stage.name}] epoch {row['epoch']}/{stage.epochs}",
        f"loss {row['loss']:.3f}",
        f"train {row['train_top1']:.1f}%",
        f"test top-1 {row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}%",
    ]
    if row.get("flip_ratio") is not None:
        parts.append(f"flips {100 * row['flip_ratio']:.2f}%")
    parts.append(f"{row['time_s']:.0f}s")
    return "  ".join(parts)
