"""What stops a stage before its last epoch: a loss that is no longer finite, or a stop signal.

- ``StopSignals``: while it is active (a context manager, main thread only), SIGTERM and SIGINT
  only record that a stop was asked for. The training loop looks after every optimiser step,
  saves a resumable state and ends the run (``r2b.errors.RunStopped``), so a cluster's
  pre-emption costs at most one step and the run continues where it stopped with ``--resume``.
  A second SIGINT (Ctrl-C twice) raises ``KeyboardInterrupt`` at once, without saving.
- ``step_flags``: after each step, whether each loss term is finite and whether any process was
  asked to stop, agreed over all processes (one small all-reduce when there are several; a
  process that stopped alone would leave the others waiting in the next collective).
- ``diverged``: the one-line ``TrainingDiverged`` error naming the stage, epoch, step and loss
  term, and what to try.

A loss that is NaN or infinite stops the stage at that step: nothing of that step or the rest of
its epoch is saved, so the stage's ``state.safetensors`` stays the last good one and ``--resume``
(with a lower learning rate, which ``--resume`` accepts for unfinished stages) continues from it.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from r2b.errors import TrainingDiverged

#: loss terms of ``DistillationObjective``'s output, in the order ``step_flags`` gets them
TERMS = ("loss", "ce", "kd", "att")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Record SIGTERM/SIGINT instead of ending the process (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def step_flags(fabric, terms: list[torch.Tensor], stop: bool) -> tuple[list[bool], bool]:
    """``([term i is not finite, ...], stop)``, each true when it is so on any process."""
    device = terms[0].device
    flags = [(~torch.isfinite(t.detach().float())).any() for t in terms]
    flags.append(torch.tensor(stop, device=device))
    values = torch.stack(flags).float()
    if fabric.world_size > 1:
        values = fabric.all_reduce(values, reduce_op="sum")
    out = [v > 0 for v in values.tolist()]
    return out[:-1], out[-1]


def stop_agreed(fabric, stop: bool) -> bool:
    """Whether any process was asked to stop (for checks outside the step, e.g. after an epoch)."""
    if fabric.world_size == 1:
        return stop
    value = torch.tensor([float(stop)], device=fabric.device)
    return bool(fabric.all_reduce(value, reduce_op="sum").item() > 0)


def diverged(
    stage, epoch: int, batch: int, steps_per_epoch: int, step: int, bad: list[bool],
    values: list[float], run_dir: Path, kept: str,
) -> TrainingDiverged:  # fmt: skip
    """The error of a non-finite loss at a step (``epoch``, ``batch`` 1-based)."""
    # name the weighted term that went wrong; the total only when every term looks finite
    parts = [i for i in range(1, len(TERMS)) if bad[i]] or [0]
    what = ", ".join(f"{TERMS[i]} loss is {values[i]}" for i in parts)
    lower = f"{stage.optim.lr / 2:.3g}"
    return TrainingDiverged(
        f"stage {stage.name!r} diverged at epoch {epoch}, batch {batch}/{steps_per_epoch} "
        f"(step {step} of the stage): the {what}; the stage stopped there and {kept}; try a "
        f"lower learning rate: r2b train --out {run_dir} --resume "
        f"--set stages.{stage.name}.optim.lr={lower}"
    )
