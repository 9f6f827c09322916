"""The training loop of one stage, on Lightning Fabric (the one long function, design habit 7).

Per optimiser step ``s``: take a uint8 batch, augment and normalise it on the device
(``r2b.data.BatchAugment``), optionally mix it up, set ``lr = lr_0 * factor(s)``
(``r2b.train.schedule``), compute ``loss = ce*CE + kd*KD + att*L_att``
(``r2b.losses.DistillationObjective``, which owns the frozen teacher), back-propagate through
Fabric (DDP, precision), step the optimiser, and clip the latent binary weights when configured.

Per epoch: evaluate top-1/top-5 on the validation split (when ``data.val_fraction`` > 0) and the
test split, measure the flip ratio of binary weights, and (rank 0) write ``best.safetensors``
(when the selection top-1 improves: validation top-1 when there is a validation split, else test
top-1), ``last.safetensors`` and the resumable ``state.safetensors``, then ``metrics.csv``.

After every step (``r2b.train.guard``): a loss term that is NaN or infinite stops the stage with
``TrainingDiverged`` (nothing of the failed epoch is saved); a SIGTERM/SIGINT received meanwhile
saves a mid-epoch state (below) and ends the run with ``RunStopped``.

Reproducibility: epoch ``e``'s shuffling, augmentation and mix-up are pure functions of
(seed, stage, rank, e), and the state file holds weights, optimiser state, step and RNG states,
so a run killed at any point and resumed from its last state reaches the same weights as an
uninterrupted run (bit for bit on CPU). A state saved in the middle of an epoch (after a stop
signal) also holds, per process, the epoch's augmentation and mix-up generator states, its
partial loss sums and the binary-weight signs at the epoch's start (``extra.*`` tensors) and the
number of batches done (``progress["in_epoch"]``); the epoch then continues at the next batch,
so a stopped and resumed run also ends with the same weights and metrics as an uninterrupted one.
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
from r2b.errors import RunStopped, UserError
from r2b.losses import DistillationObjective
from r2b.train.checkpoint import load_training_state, save_training_state, save_weights
from r2b.train.config import DataConfig, RuntimeConfig, StageConfig
from r2b.train.evaluate import eval_batches, evaluate
from r2b.train.guard import StopSignals, diverged, step_flags, stop_agreed
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
    val_set: object = None  # validation split: selects the best epoch when given
    stop: StopSignals | None = None  # stop signals received (None: never stop early)


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


def steps_per_epoch(n_images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch: full per-process batches of each process's share."""
    per_rank_batch = max(1, batch_size // world_size)
    return -(-n_images // world_size) // per_rank_batch


def check_batch_fits(stage: StageConfig, n_images: int, world_size: int = 1) -> None:
    """``UserError`` when the stage's batch is larger than its training images (no step)."""
    if steps_per_epoch(n_images, stage.batch_size, world_size) == 0:
        raise UserError(
            f"stage {stage.name!r}: batch_size {stage.batch_size} is larger than the "
            f"{n_images} training images; lower stages.{stage.name}.batch_size"
        )


def _new_progress(selected_on: str) -> dict:
    """Progress of a stage that has not started. ``best_score`` is the selection top-1
    (validation or test, ``selected_on``); ``best_top1``/``best_top5`` are the test accuracies
    of that epoch."""
    return {"epoch": 0, "step": 0, "best_top1": -1.0, "best_top5": 0.0, "best_epoch": 0,
            "best_score": -1.0, "best_val_top1": None, "selected_on": selected_on,
            "time_s": 0.0, "history": []}  # fmt: skip


def _progress_bar(job: StageJob, fabric: Fabric, epoch: int, total: int):
    show = fabric.global_rank == 0 and job.runtime.progress and sys.stderr.isatty()
    desc = f"{job.stage.name} {epoch + 1}/{job.stage.epochs}"
    return tqdm(total=total, desc=desc, leave=False, disable=not show, dynamic_ncols=True)


def _gather(fabric: Fabric, t: torch.Tensor) -> torch.Tensor:
    """(world, ...) stack of every process's ``t``, on the CPU: each process fills its own slot
    of a zero tensor and the slots are summed (an all-reduce; Fabric's all_gather warns of a
    deprecated torch function)."""
    if fabric.world_size == 1:
        return t.unsqueeze(0).cpu()
    slots = torch.zeros((fabric.world_size, *t.shape), dtype=t.dtype, device=fabric.device)
    slots[fabric.global_rank] = t.to(fabric.device)
    return fabric.all_reduce(slots, reduce_op="sum").cpu()


def train_stage(fabric: Fabric, job: StageJob, model: nn.Module, teacher: nn.Module | None) -> dict:
    """Train ``model`` for the stage's epochs (resuming from ``state.safetensors`` if present).

    Returns the stage's progress record (history of per-epoch rows, best epoch and accuracy).
    Raises ``TrainingDiverged`` at a non-finite loss and ``RunStopped`` after a stop signal
    (``job.stop``), having saved the state to continue from.
    """
    stage, rank, world = job.stage, fabric.global_rank, fabric.world_size
    writer = rank == 0
    device = fabric.device
    check_batch_fits(stage, len(job.train_set), world)
    per_rank_batch = max(1, stage.batch_size // world)
    loader = build_loader(
        job.train_set, per_rank_batch, train=True, num_workers=job.data.num_workers,
        seed=derive_seed(job.seed, job.index), rank=rank, world_size=world,
        pin_memory=device.type == "cuda" and not _on_device(job.train_set),
    )  # fmt: skip
    n_steps = len(loader)
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
    selected_on = "val" if job.val_set is not None else "test"
    progress, extra = _new_progress(selected_on), {}
    if state_path.is_file():
        progress = load_training_state(state_path, model, optimizer, extra=extra)
        progress.setdefault("best_score", progress.get("best_top1", -1.0))  # older state files
        progress.setdefault("selected_on", "test")
    in_epoch = progress.pop("in_epoch", None)
    signs = weight_signs(model)
    if in_epoch is not None and signs is not None and "signs" in extra:
        signs = extra["signs"].to(device=signs.device, dtype=torch.bool)  # the epoch's start
    kept = (
        f"kept its state after epoch {progress['epoch']}" if progress["epoch"] else
        "has no finished epoch yet (--resume starts it again)"
    )  # fmt: skip
    stop = job.stop or StopSignals()
    tb_dir = job.tb_dir if writer else None
    log = MetricsLog(job.stage_dir / "metrics.csv", progress["history"], tb_dir, stage.name)

    def run_eval(dataset) -> dict:
        return evaluate(
            fmodel, eval_batches(dataset, job.data.eval_batch_size, rank, world,
                                 job.data.num_workers),
            eval_transform, device, reduce_sum=lambda t: fabric.all_reduce(t, reduce_op="sum"),
            autocast=fabric.autocast, channels_last=job.channels_last,
        )  # fmt: skip

    def evaluations() -> dict:
        """Test (and validation) loss, top-1 and top-5 of the model now, as row entries."""
        out = {}
        for split, dataset in (("val", job.val_set), ("test", job.test_set)):
            if dataset is not None:
                ev = run_eval(dataset)
                out.update({f"{split}_loss": ev["loss"], f"{split}_top1": ev["top1"],
                            f"{split}_top5": ev["top5"]})  # fmt: skip
        return out

    def save_epoch(row: dict) -> None:
        """Checkpoints and metrics of a finished epoch (rank 0), best first, state last."""
        info = {**job.info, "epoch": row["epoch"], "top1": row["test_top1"],
                "top5": row["test_top5"], "val_top1": row.get("val_top1"),
                "selected_on": selected_on}  # fmt: skip
        if writer:
            if row["epoch"] == progress["best_epoch"]:
                save_weights(job.stage_dir / BEST_FILE, model, info)
            save_weights(job.stage_dir / LAST_FILE, model, info)
            save_training_state(state_path, model, optimizer, progress)
            log.write_csv()
        fabric.barrier()

    def record(row: dict) -> None:
        log.append(row)  # also appends to progress["history"]
        score = row["val_top1"] if job.val_set is not None else row["test_top1"]
        if score > progress["best_score"]:
            progress.update(best_score=score, best_top1=row["test_top1"],
                            best_top5=row["test_top5"], best_val_top1=row.get("val_top1"),
                            best_epoch=row["epoch"])  # fmt: skip

    def save_stopped(epoch: int, batches: int, sums: torch.Tensor, mix_gen, t0: float) -> None:
        """The state in the middle of ``epoch`` after ``batches`` batches (every process's
        generators and sums are gathered; rank 0 writes)."""
        extra_out = {
            "sums": _gather(fabric, sums),
            "augment_rng": _gather(fabric, augment.generator.get_state()),
            "mixup_rng": _gather(fabric, mix_gen.get_state()),
        }
        if signs is not None:
            extra_out["signs"] = signs
        record_ = {"epoch": epoch, "batches": batches, "world_size": world,
                   "elapsed_s": time.perf_counter() - t0}  # fmt: skip
        if writer:
            save_training_state(
                state_path, model, optimizer, {**progress, "in_epoch": record_}, extra_out
            )
        fabric.barrier()

    def stopped(where: str) -> RunStopped:
        return RunStopped(
            f"{stop.name or 'stop signal'}: stage {stage.name!r} stopped {where} and saved its "
            f"state to {state_path}; continue with: r2b train --out {job.stage_dir.parent} "
            "--resume",
            stop.signum or 15,
        )

    if stage.epochs == 0 and not progress["history"]:
        record({"epoch": 0, "step": 0, **evaluations(), "time_s": 0.0})
        save_epoch(progress["history"][-1])

    for epoch in range(progress["epoch"], stage.epochs):
        t0 = time.perf_counter()
        first = 0
        loader.set_epoch(epoch)
        augment.set_epoch(epoch)
        mix_gen = generator_for(job.seed, job.index, rank, epoch, 1)
        sums = torch.zeros(6, dtype=torch.float64, device=device)  # n, loss, ce, kd, att, correct
        if in_epoch is not None and in_epoch.get("epoch") == epoch:
            first = int(in_epoch["batches"])
            loader.set_epoch(epoch, skip_batches=first)
            t0 -= float(in_epoch.get("elapsed_s", 0.0))
            if in_epoch.get("world_size") == world and "sums" in extra:
                augment.generator.set_state(extra["augment_rng"][rank].clone())
                mix_gen.set_state(extra["mixup_rng"][rank].clone())
                sums = extra["sums"][rank].to(device=device, dtype=torch.float64)
            else:
                job.log(
                    f"[{stage.name}] warning: epoch {epoch + 1} was stopped with "
                    f"{in_epoch.get('world_size')} processes and continues with {world}: its "
                    "remaining batches get new augmentation draws"
                )
            kept = f"kept its state from epoch {epoch + 1}, batch {first}"
        in_epoch = None
        fmodel.train()
        objective.train()
        bar = _progress_bar(job, fabric, epoch, n_steps)
        bar.update(first)
        for i, (images, labels) in enumerate(loader, start=first):
            x = augment(images.to(device, non_blocking=True))
            y = labels.to(device, non_blocking=True)
            if a.mixup > 0:
                x, y = mixup(x, y, a.mixup, job.num_classes, generator=mix_gen)
            if job.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            set_lr(
                optimizer,
                stage.optim.lr,
                lr_factor(stage.schedule, progress["step"], n_steps, stage.epochs),
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
            bad, stop_now = step_flags(fabric, terms, stop.requested)
            if any(bad):
                bar.close()
                log.close()
                raise diverged(
                    stage, epoch + 1, i + 1, n_steps, progress["step"], bad,
                    [float(t) for t in terms], job.stage_dir.parent, kept,
                )  # fmt: skip
            sums += torch.stack(
                [torch.tensor(n, device=device).double()]
                + [t.double() * n for t in terms]
                + [correct.double()]
            )
            if stop_now and i + 1 < n_steps:
                bar.close()
                save_stopped(epoch, i + 1, sums, mix_gen, t0)
                log.close()
                raise stopped(f"at epoch {epoch + 1}, batch {i + 1}/{n_steps}")
            if not bar.disable and (i % 10 == 0 or i == n_steps - 1):
                s = sums.tolist()
                bar.set_postfix(loss=f"{s[1] / s[0]:.3f}", acc=f"{100 * s[5] / s[0]:.1f}%")
            bar.update(1)
        bar.close()
        sums = fabric.all_reduce(sums, reduce_op="sum")
        n, loss, ce, kd, att, correct = sums.tolist()
        evals = evaluations()
        new_signs = weight_signs(model)
        flips, signs = flip_ratio(signs, new_signs), new_signs
        progress["epoch"] = epoch + 1
        progress["time_s"] += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1, "step": progress["step"], "lr": optimizer.param_groups[0]["lr"],
            "loss": loss / n, "ce": ce / n, "kd": kd / n, "att": att / n,
            "train_top1": 100.0 * correct / n, **evals, "flip_ratio": flips,
            "time_s": progress["time_s"],
        }  # fmt: skip
        record(row)
        save_epoch(row)
        kept = f"kept its state after epoch {epoch + 1}"
        if writer:
            job.log(_epoch_line(stage, row))
        if epoch + 1 < stage.epochs and stop_agreed(fabric, stop.requested):
            log.close()
            raise stopped(f"after epoch {epoch + 1}")
    log.close()
    return progress


def _epoch_line(stage: StageConfig, row: dict) -> str:
    parts = [
        f"[{stage.name}] epoch {row['epoch']}/{stage.epochs}",
        f"loss {row['loss']:.3f}",
        f"train {row['train_top1']:.1f}%",
    ]
    if row.get("val_top1") is not None:
        parts.append(f"val top-1 {row['val_top1']:.2f}%")
    parts += [f"test top-1 {row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}%"]
    if row.get("flip_ratio") is not None:
        parts.append(f"flips {100 * row['flip_ratio']:.2f}%")
    parts.append(f"{row['time_s']:.0f}s")
    return "  ".join(parts)
