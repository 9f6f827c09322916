"""Learning-rate schedule: linear warm-up, step decay, cosine decay (pure functions of the step)."""

import math

import pytest

from r2b.train.config import ScheduleConfig
from r2b.train.schedule import lr_factor


def test_linear_warmup_then_step_decay():
    cfg = ScheduleConfig(kind="step", warmup_epochs=2, milestones=[4, 6], gamma=0.1)
    spe = 10  # steps per epoch
    assert lr_factor(cfg, 0, spe, 8) == pytest.approx(1 / 20)
    assert lr_factor(cfg, 19, spe, 8) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, spe, 8) == 1.0
    assert lr_factor(cfg, 39, spe, 8) == 1.0
    assert lr_factor(cfg, 40, spe, 8) == pytest.approx(0.1)
    assert lr_factor(cfg, 60, spe, 8) == pytest.approx(0.01)


def test_larq_gamma_option():
    cfg = ScheduleConfig(kind="step", milestones=[1], gamma=0.3)
    assert lr_factor(cfg, 5, 5, 2) == pytest.approx(0.3)


def test_cosine_decays_to_zero_after_warmup():
    cfg = ScheduleConfig(kind="cosine", warmup_epochs=1)
    spe, epochs = 10, 5
    assert lr_factor(cfg, 10, spe, epochs) == pytest.approx(1.0)
    assert lr_factor(cfg, 30, spe, epochs) == pytest.approx(0.5)
    assert lr_factor(cfg, 49, spe, epochs) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3.9 / 4)))
    assert lr_factor(cfg, 50, spe, epochs) == pytest.approx(0.0)


def test_no_warmup_starts_at_full_rate():
    assert lr_factor(ScheduleConfig(), 0, 10, 3) == 1.0
