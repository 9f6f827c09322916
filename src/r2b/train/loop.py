"""The training loop of one stage, on Lightning Fabric.

``train_stage`` runs a ``StageTraining``: set up (loader, augmentation, model and optimiser under
Fabric, objective, saved progress), then per epoch start a pass over the batches (or continue a
stopped one), train its steps, end it (sums over processes, evaluation, flip ratio), record the
epoch's row and save. The progress is a ``StageProgress`` (``r2b.train.progress``); the loss
sums of a pass are ``RunningSums``.

Per optimiser step ``s``: take a uint8 batch, augment and normalise it on the device
(``r2b.data.BatchAugment``), optionally mix it up, set ``lr = lr_0 * factor(s)``
(``r2b.train.schedule``), compute ``loss = ce*CE + kd*KD + att*L_att``
(``r2b.losses.DistillationObjective``, which owns the frozen teacher), back-propagate through
Fabric (DDP, precision), step the optimiser, and clip the latent binary weights when configured.

Per epoch: evaluate top-1/top-5 on the validation split (when ``data.val_fraction`` > 0) and the
test split, measure the flip ratio of binary weights, and (rank 0) write ``best.safetensors``
(when the selection top-1 improves: validation top-1 when there is a validation split, else test
top-1), ``last.safetensors`` and the resumable ``state.safetensors``, then ``metrics.csv``.
With ``data.test_every_epoch: false`` (which needs a validation split) the test split is
evaluated only twice a stage: after the last epoch, and once the stage is done on the selected
(best) epoch's weights, whose row then gets its test figures (``_test_selected``); evaluating a
10,000-image test split every epoch roughly doubled the epochs of a 2,000-image training set.

After every step (``r2b.train.guard``): a loss term that is NaN or infinite stops the stage with
``TrainingDiverged`` (nothing of the failed epoch is saved); a SIGTERM/SIGINT received meanwhile
saves a mid-epoch state (below) and ends the run with ``RunStopped``.

Reproducibility: epoch ``e``'s shuffling, augmentation and mix-up are pure functions of
(seed, stage, rank, e), and the state file holds weights, optimiser state, step and RNG states,
so a run killed at any point and resumed from its last state reaches the same weights as an
uninterrupted run (bit for bit on CPU). A state saved in the middle of an epoch (after a stop
signal) also holds, per process, the epoch's augmentation and mix-up generator states, its
partial loss sums and the binary-weight signs at the epoch's start (``extra.*`` tensors) and the
number of batches done (``StageProgress.in_epoch``); the epoch then continues at the next batch,
so a stopped and resumed run also ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from lightning_fabric import Fabric
from torch import nn
from tqdm import tqdm

from r2b.data import build_augment, build_loader, mixup
from r2b.data.seeds import derive_seed, generator_for
from r2b.errors import RunStopped, UserError
from r2b.losses import DistillationObjective
from r2b.train.checkpoint import (
    load_state_into,
    load_training_state,
    read_weights,
    save_training_state,
    save_weights,
)
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
from r2b.train.progress import StageProgress, StoppedEpoch
from r2b.train.run_folder import StageFolder
from r2b.train.schedule import lr_factor, set_lr


@dataclass
class StageJob:
    """Everything ``train_stage`` needs besides the networks."""

    stage: StageConfig
    index: int  # position in the pipeline (seeds derive from it)
    seed: int
    data: DataConfig
    runtime: RuntimeConfig
    folder: StageFolder  # RUN/<stage>/
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


@dataclass
class RunningSums:
    """Sums over the batches of an epoch on one process: the samples, the loss and its ce, kd
    and att terms (each a batch mean times the batch's samples) and the top-1 hits. Divided by
    the samples they are the epoch's means (``means``); summed over processes (``summed``),
    those of the whole epoch. Saved in a mid-epoch state as one float64 tensor (``values``,
    entries in ``FIELDS`` order)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("n", "loss", "ce", "kd", "att", "correct")
    values: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> RunningSums:
        return cls(torch.zeros(len(cls.FIELDS), dtype=torch.float64, device=device))

    def add(self, n: int, terms: list[torch.Tensor], correct: torch.Tensor) -> None:
        """Add a batch of ``n`` samples: its loss ``terms`` (loss, ce, kd, att) and hits."""
        self.values += torch.stack(
            [torch.tensor(n, device=self.values.device).double()]
            + [t.double() * n for t in terms]
            + [correct.double()]
        )

    def summed(self, fabric: Fabric) -> RunningSums:
        return RunningSums(fabric.all_reduce(self.values, reduce_op="sum"))

    def means(self) -> dict[str, float]:
        """The epoch's columns of ``metrics.csv``: mean loss terms and training top-1 (%)."""
        n, loss, ce, kd, att, correct = self.values.tolist()
        return {"loss": loss / n, "ce": ce / n, "kd": kd / n, "att": att / n,
                "train_top1": 100.0 * correct / n}  # fmt: skip


@dataclass
class EpochPass:
    """One pass over an epoch's batches: where it starts (``first``: batches a stopped pass
    did already), when it started, its mix-up generator and its running sums."""

    epoch: int  # 0-based
    started: float  # time.perf_counter() at the start (earlier for a continued pass)
    mix_gen: torch.Generator
    sums: RunningSums
    first: int = 0


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


def train_stage(
    fabric: Fabric, job: StageJob, model: nn.Module, teacher: nn.Module | None
) -> StageProgress:
    """Train ``model`` for the stage's epochs (resuming from ``state.safetensors`` if present).

    Returns the stage's progress (history of per-epoch rows, best epoch and accuracy).
    Raises ``TrainingDiverged`` at a non-finite loss and ``RunStopped`` after a stop signal
    (``job.stop``), having saved the state to continue from.
    """
    return StageTraining(fabric, job, model, teacher).run()


class StageTraining:
    """One stage's training, step by step: set up (data, model, objective, saved progress),
    then per epoch start (or continue) a pass, train its batches, end it (evaluate), record and
    save it."""

    def __init__(
        self, fabric: Fabric, job: StageJob, model: nn.Module, teacher: nn.Module | None
    ) -> None:
        self.fabric, self.job, self.stage = fabric, job, job.stage
        self.rank, self.world, self.device = fabric.global_rank, fabric.world_size, fabric.device
        self.writer = self.rank == 0
        self.selected_on = "val" if job.val_set is not None else "test"
        check_batch_fits(self.stage, len(job.train_set), self.world)
        self.loader = self._build_loader()
        self.n_steps = len(self.loader)
        self.augment, self.eval_transform = self._build_transforms()
        self.model, self.fmodel, self.optimizer = self._set_up_model(model)
        self.objective = self._build_objective(teacher)
        self.progress, self.extra = self._load_progress()
        self.stopped_at, self.progress.in_epoch = self.progress.in_epoch, None
        self.signs = self._start_signs()
        done = self.progress.epoch
        self.kept = (
            f"kept its state after epoch {done}" if done else
            "has no finished epoch yet (--resume starts it again)"
        )  # fmt: skip
        self.stop = job.stop or StopSignals()
        tb_dir = job.tb_dir if self.writer else None
        self.log = MetricsLog(job.folder.metrics, self.progress.history, tb_dir, self.stage.name)

    # ----------------------------------------------------------------------- set-up

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.job.channels_last else torch.contiguous_format

    def _build_loader(self):
        job = self.job
        return build_loader(
            job.train_set, max(1, self.stage.batch_size // self.world), train=True,
            num_workers=job.data.num_workers, seed=derive_seed(job.seed, job.index),
            rank=self.rank, world_size=self.world,
            pin_memory=self.device.type == "cuda" and not _on_device(job.train_set),
        )  # fmt: skip

    def _build_transforms(self):
        """(training augmentation seeded per process, evaluation transform)."""
        job, a, size = self.job, self.stage.augment, self.job.data.image_size
        augment = build_augment(
            job.train_set, train=True, augment=a.ops, image_size=size,
            seed=derive_seed(job.seed, job.index, self.rank), pad=a.pad, degrees=a.degrees,
            jitter=a.jitter,
        )  # fmt: skip
        return augment, build_augment(job.test_set, train=False, image_size=size)

    def _set_up_model(self, model: nn.Module):
        """(model, Fabric-wrapped model, optimiser), in the configured memory format."""
        model = model.to(memory_format=self.memory_format)
        optimizer = build_optimizer(self.stage, model)
        fmodel, optimizer = self.fabric.setup(model, optimizer)
        fmodel.mark_forward_method("forward_with_features")
        return model, fmodel, optimizer

    def _build_objective(self, teacher: nn.Module | None) -> DistillationObjective:
        if teacher is not None:
            teacher = teacher.to(device=self.device, memory_format=self.memory_format)
        loss = self.stage.loss
        return DistillationObjective(
            teacher, ce=loss.ce, kd=loss.kd, att=loss.att, att_form=loss.att_form,
            temperature=loss.temperature,
        )  # fmt: skip

    def _load_progress(self) -> tuple[StageProgress, dict[str, torch.Tensor]]:
        """The saved progress (and extra tensors) when the stage has a state file, else none."""
        extra: dict[str, torch.Tensor] = {}
        state = self.job.folder.state
        if not state.is_file():
            return StageProgress(selected_on=self.selected_on), extra
        record = load_training_state(state, self.model, self.optimizer, extra=extra)
        return StageProgress.from_json(record), extra

    def _start_signs(self) -> torch.Tensor | None:
        """Binary-weight signs at the start of the epoch to train (saved by a stopped pass)."""
        signs = weight_signs(self.model)
        if self.stopped_at is not None and signs is not None and "signs" in self.extra:
            signs = self.extra["signs"].to(device=signs.device, dtype=torch.bool)
        return signs

    # ----------------------------------------------------------------------- epochs

    def run(self) -> StageProgress:
        if self.stage.epochs == 0 and not self.progress.history:
            row = {"epoch": 0, "step": 0, **self._evaluations(final=True), "time_s": 0.0}
            self._record(row)
            self._save_epoch(row)
        for epoch in range(self.progress.epoch, self.stage.epochs):
            self._train_epoch(epoch)
        self._test_selected()
        self.log.close()
        return self.progress

    def _train_epoch(self, epoch: int) -> None:
        """Train, evaluate, record and save one epoch; then stop if a stop signal came."""
        run = self._start_pass(epoch)
        self._train_batches(run)
        row = self._end_pass(run)
        self._record(row)
        self._save_epoch(row)
        self.kept = f"kept its state after epoch {epoch + 1}"
        if self.writer:
            self.job.log(_epoch_line(self.stage, row))
        if epoch + 1 < self.stage.epochs and stop_agreed(self.fabric, self.stop.requested):
            self.log.close()
            raise self._stopped(f"after epoch {epoch + 1}")

    def _start_pass(self, epoch: int) -> EpochPass:
        started = time.perf_counter()
        self.loader.set_epoch(epoch)
        self.augment.set_epoch(epoch)
        job = self.job
        mix_gen = generator_for(job.seed, job.index, self.rank, epoch, 1)
        run = EpochPass(epoch, started, mix_gen, RunningSums.zeros(self.device))
        if self.stopped_at is not None and self.stopped_at.epoch == epoch:
            self._continue_stopped_pass(run, self.stopped_at)
        self.stopped_at = None
        return run

    def _continue_stopped_pass(self, run: EpochPass, at: StoppedEpoch) -> None:
        """Skip the batches a stopped pass did; restore its generators and sums when it ran
        with as many processes."""
        run.first = int(at.batches)
        self.loader.set_epoch(run.epoch, skip_batches=run.first)
        run.started -= float(at.elapsed_s)
        if at.world_size == self.world and "sums" in self.extra:
            self.augment.generator.set_state(self.extra["augment_rng"][self.rank].clone())
            run.mix_gen.set_state(self.extra["mixup_rng"][self.rank].clone())
            sums = self.extra["sums"][self.rank].to(device=self.device, dtype=torch.float64)
            run.sums = RunningSums(sums)
        else:
            self.job.log(
                f"[{self.stage.name}] warning: epoch {run.epoch + 1} was stopped with "
                f"{at.world_size} processes and continues with {self.world}: its "
                "remaining batches get new augmentation draws"
            )
        self.kept = f"kept its state from epoch {run.epoch + 1}, batch {run.first}"

    def _train_batches(self, run: EpochPass) -> None:
        """The pass's optimiser steps; after each: stop at a non-finite loss or a stop signal."""
        self.fmodel.train()
        self.objective.train()
        bar = _progress_bar(self.job, self.fabric, run.epoch, self.n_steps)
        bar.update(run.first)
        for i, (images, labels) in enumerate(self.loader, start=run.first):
            out, y = self._step(run, images, labels)
            (correct,) = topk_correct(out["logits"].detach().float(), y, ks=(1,))
            terms = [out["loss"].detach(), out["ce"], out["kd"], out["att"]]
            bad, stop_now = step_flags(self.fabric, terms, self.stop.requested)
            if any(bad):
                bar.close()
                self._diverged(run, i + 1, bad, terms)
            run.sums.add(y.shape[0], terms, correct)
            if stop_now and i + 1 < self.n_steps:
                bar.close()
                self._stop_in_pass(run, i + 1)
            if not bar.disable and (i % 10 == 0 or i == self.n_steps - 1):
                m = run.sums.means()
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['train_top1']:.1f}%")
            bar.update(1)
        bar.close()

    def _step(self, run: EpochPass, images: torch.Tensor, labels: torch.Tensor):
        """One optimiser step on a batch: (the objective's output, the batch's targets)."""
        stage, device = self.stage, self.device
        x = self.augment(images.to(device, non_blocking=True))
        y = labels.to(device, non_blocking=True)
        if stage.augment.mixup > 0:
            x, y = mixup(x, y, stage.augment.mixup, self.job.num_classes, generator=run.mix_gen)
        if self.job.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        factor = lr_factor(stage.schedule, self.progress.step, self.n_steps, stage.epochs)
        set_lr(self.optimizer, stage.optim.lr, factor)
        with self.fabric.autocast():
            out = self.objective(self.fmodel, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(out["loss"])
        self.optimizer.step()
        if stage.optim.clip_weights is not None:
            clip_binary_weights(self.model, stage.optim.clip_weights)
        self.progress.step += 1
        return out, y

    def _end_pass(self, run: EpochPass) -> dict:
        """The epoch's row of ``metrics.csv``: its sums over every process, evaluations, flip
        ratio; the progress counts the epoch."""
        sums = run.sums.summed(self.fabric)
        evals = self._evaluations(final=run.epoch + 1 == self.stage.epochs)
        new_signs = weight_signs(self.model)
        flips, self.signs = flip_ratio(self.signs, new_signs), new_signs
        self.progress.epoch = run.epoch + 1
        self.progress.time_s += time.perf_counter() - run.started
        return {
            "epoch": run.epoch + 1, "step": self.progress.step,
            "lr": self.optimizer.param_groups[0]["lr"], **sums.means(), **evals,
            "flip_ratio": flips, "time_s": self.progress.time_s,
        }  # fmt: skip

    # ----------------------------------------------------------------------- evaluation

    def _evaluate(self, dataset) -> dict:
        job, fabric = self.job, self.fabric
        batches = eval_batches(
            dataset, job.data.eval_batch_size, self.rank, self.world, job.data.num_workers
        )
        return evaluate(
            self.fmodel, batches, self.eval_transform, self.device,
            reduce_sum=lambda t: fabric.all_reduce(t, reduce_op="sum"),
            autocast=fabric.autocast, channels_last=job.channels_last,
        )  # fmt: skip

    def _evaluations(self, final: bool) -> dict:
        """Validation and test loss, top-1 and top-5 of the model now, as row entries; test only
        after the ``final`` epoch when the test split is not evaluated every epoch."""
        test = self.job.data.test_every_epoch or final or self.job.val_set is None
        out = {}
        for split, dataset in (
            ("val", self.job.val_set),
            ("test", self.job.test_set if test else None),
        ):
            if dataset is not None:
                out.update(_split_entries(split, self._evaluate(dataset)))
        return out

    def _test_selected(self) -> None:
        """The selected epoch's test figures when its row has none (``data.test_every_epoch:
        false``): evaluate ``best.safetensors``' weights on test, fill its row, re-save it and the
        state; the model keeps the last epoch's weights. Resumable: it runs until it is saved."""
        best = next(
            (r for r in self.progress.history if r["epoch"] == self.progress.best_epoch), None
        )
        if best is None or best.get("test_top1") is not None:
            return
        folder = self.job.folder
        last = {k: v.clone() for k, v in self.model.state_dict().items()}
        load_state_into(self.model, read_weights(folder.best)[0], folder.best)
        best.update(_split_entries("test", self._evaluate(self.job.test_set)))
        self.progress.best_top1, self.progress.best_top5 = best["test_top1"], best["test_top5"]
        if self.writer:  # best first (its weights are loaded), then the state (the last epoch's)
            save_weights(folder.best, self.model, self._info(best))
            self.model.load_state_dict(last)
            save_training_state(folder.state, self.model, self.optimizer, self.progress.to_json())
            self.log.write_csv()
            self.job.log(f"[{self.stage.name}] selected epoch {best['epoch']}: test top-1 "
                         f"{best['test_top1']:.2f}% top-5 {best['test_top5']:.2f}%")  # fmt: skip
        else:
            self.model.load_state_dict(last)
        self.fabric.barrier()

    # ----------------------------------------------------------------------- saving

    def _record(self, row: dict) -> None:
        self.log.append(row)  # also appends to progress.history
        score = row["val_top1"] if self.job.val_set is not None else row["test_top1"]
        self.progress.record_epoch(row, score)

    def _save_epoch(self, row: dict) -> None:
        """Checkpoints and metrics of a finished epoch (rank 0), best first, state last."""
        folder, info = self.job.folder, self._info(row)
        if self.writer:
            if row["epoch"] == self.progress.best_epoch:
                save_weights(folder.best, self.model, info)
            save_weights(folder.last, self.model, info)
            save_training_state(folder.state, self.model, self.optimizer, self.progress.to_json())
            self.log.write_csv()
        self.fabric.barrier()

    def _info(self, row: dict) -> dict:
        """The ``info`` record of a weights file saved after the epoch of ``row``."""
        return {**self.job.info, "epoch": row["epoch"], "top1": row.get("test_top1"),
                "top5": row.get("test_top5"), "val_top1": row.get("val_top1"),
                "selected_on": self.selected_on}  # fmt: skip

    def _save_stopped_pass(self, run: EpochPass, batches: int) -> None:
        """The state in the middle of the pass after ``batches`` batches (every process's
        generators and sums are gathered; rank 0 writes)."""
        fabric = self.fabric
        extra = {
            "sums": _gather(fabric, run.sums.values),
            "augment_rng": _gather(fabric, self.augment.generator.get_state()),
            "mixup_rng": _gather(fabric, run.mix_gen.get_state()),
        }
        if self.signs is not None:
            extra["signs"] = self.signs
        at = StoppedEpoch(epoch=run.epoch, batches=batches, world_size=self.world,
                          elapsed_s=time.perf_counter() - run.started)  # fmt: skip
        if self.writer:
            progress = replace(self.progress, in_epoch=at).to_json()
            save_training_state(self.job.folder.state, self.model, self.optimizer, progress, extra)
        fabric.barrier()

    # ----------------------------------------------------------------------- stopping

    def _diverged(self, run: EpochPass, batch: int, bad: list[bool], terms) -> None:
        self.log.close()
        raise diverged(
            self.stage, run.epoch + 1, batch, self.n_steps, self.progress.step, bad,
            [float(t) for t in terms], self.job.folder.run.root, self.kept,
        )  # fmt: skip

    def _stop_in_pass(self, run: EpochPass, batch: int) -> None:
        self._save_stopped_pass(run, batch)
        self.log.close()
        raise self._stopped(f"at epoch {run.epoch + 1}, batch {batch}/{self.n_steps}")

    def _stopped(self, where: str) -> RunStopped:
        stop = self.stop
        return RunStopped(
            f"{stop.name or 'stop signal'}: stage {self.stage.name!r} stopped {where} and saved "
            f"its state to {self.job.folder.state}; continue with: r2b train --out "
            f"{self.job.folder.run.root} --resume",
            stop.signum or 15,
        )


def _split_entries(split: str, ev: dict) -> dict:
    """``{split}_loss``, ``{split}_top1``, ``{split}_top5`` row entries of an evaluation."""
    return {f"{split}_loss": ev["loss"], f"{split}_top1": ev["top1"], f"{split}_top5": ev["top5"]}


def _epoch_line(stage: StageConfig, row: dict) -> str:
    parts = [
        f"[{stage.name}] epoch {row['epoch']}/{stage.epochs}",
        f"loss {row['loss']:.3f}",
        f"train {row['train_top1']:.1f}%",
    ]
    if row.get("val_top1") is not None:
        parts.append(f"val top-1 {row['val_top1']:.2f}%")
    if row.get("test_top1") is not None:
        parts.append(f"test top-1 {row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}%")
    if row.get("flip_ratio") is not None:
        parts.append(f"flips {100 * row['flip_ratio']:.2f}%")
    parts.append(f"{row['time_s']:.0f}s")
    return "  ".join(parts)
