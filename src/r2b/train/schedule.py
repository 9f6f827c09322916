"""Learning-rate schedule as a pure function of the optimiser step (so resuming needs one integer).

With ``s`` the step, ``S`` the steps per epoch, ``e = s / S`` the (fractional) epoch, ``W`` the
warm-up length in epochs and ``E`` the stage's epochs::

    factor(s) = (s + 1) / (W S)                       while s < W S   (linear warm-up)
              = gamma ^ #{m in milestones : m <= e}    kind "step"     (docs/method.md sec. 5)
              = (1 + cos(pi (e - W) / (E - W))) / 2    kind "cosine"

and ``lr(s) = lr * factor(s)``. Warm-up is used in stages with real weights (5 epochs in the
paper's recipes).
"""

from __future__ import annotations

import math

from r2b.train.config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    epoch = step / steps_per_epoch
    if cfg.kind == "step":
        return cfg.gamma ** sum(1 for m in cfg.milestones if m <= epoch)
    span = max(epochs - cfg.warmup_epochs, 1e-12)
    progress = min(max((epoch - cfg.warmup_epochs) / span, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, base_lr: float, factor: float) -> None:
    """Set every parameter group's ``lr`` to ``base_lr * factor``."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor
