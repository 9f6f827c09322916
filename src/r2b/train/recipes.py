"""The built-in default recipe: what ``r2b train`` runs with no arguments.

It is kept in the package (not read from the repository's ``configs/``), so the default run works
from any directory after a plain install; ``configs/quick.yaml`` is the same text (a test checks).
"""

from __future__ import annotations

import yaml

from r2b.train.config import PipelineConfig, build_config

QUICK_YAML = """\
# The quick Real-to-Binary run: `r2b train` with no arguments.
# The four steps of docs/method.md section 5 (real teacher -> fp -> ban -> bnn) at CPU scale: a
# CIFAR-stem ResNet-18 family at width 0.25 on the embedded CIFAR-10 subset (5,000 train /
# 1,000 test images), 3-8 epochs per stage: about 390 CPU-seconds in all. Measured on 2 cores:
# 6.2 min wall while one other job shared them, 8.7 min with three or four others.
# Differences from the paper's CIFAR recipe, all for the short schedule: few epochs, cosine
# decay instead of steps, no rotation/mix-up, short warm-up.
name: quick
seed: 0
data:
  name: default
stage_defaults:
  model: {stem: cifar, width: 0.25}
  batch_size: 64
  optim: {name: adam, lr: 2.0e-3, weight_decay: 1.0e-5}
  schedule: {kind: cosine, warmup_epochs: 0.25}
  augment: {ops: [crop, flip]}
stages:
  - name: teacher          # step 0: real ResNet-18, cross-entropy only
    model: {name: resnet18}
    epochs: 8
  - name: fp               # step 1: tanh activations, real weights, gate
    model: {name: r2b_resnet18, stage: fp}
    teacher: teacher
    epochs: 4
    loss: {ce: 1.0, kd: 3.0, att: 3.0, att_form: paper}
  - name: ban              # step 2: binary activations, real weights
    model: {name: r2b_resnet18, stage: ban}
    teacher: fp
    init_from: fp
    epochs: 4
    loss: {ce: 1.0, kd: 3.0, att: 3.0, att_form: paper}
  - name: bnn              # step 3: binary activations and weights
    model: {name: r2b_resnet18, stage: bnn}
    teacher: ban
    init_from: ban
    epochs: 3
    loss: {ce: 1.0, kd: 0.8}
    optim: {lr: 4.0e-4, weight_decay: 0.0, clip_weights: 1.0}
    schedule: {warmup_epochs: 0}
"""


def quick_config(overrides: list[str] | None = None) -> PipelineConfig:
    """The built-in quick recipe, with ``--set`` overrides applied."""
    return build_config(yaml.safe_load(QUICK_YAML), overrides)
