"""Devices, precision and processes through Lightning Fabric (no ``.cuda()`` in the library).

- CPU by default when no GPU is present; GPU with ``bf16-mixed`` when one is (``precision: auto``).
- Several GPUs or nodes: launch the same ``r2b train`` command under ``torchrun``; Fabric reads
  the rank and world size from the environment (``strategy="auto"`` picks DDP).
- Only rank 0 writes files (``is_writer``).
"""

from __future__ import annotations

import os

import torch
from lightning_fabric import Fabric

from r2b.errors import UserError
from r2b.train.config import RuntimeConfig


def _launched_by_torchrun() -> bool:
    return "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ


def _devices(text: int | str):
    if isinstance(text, int):
        return text
    text = str(text).strip()
    if text == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise UserError(
            f"runtime.devices is {text!r}; use auto, a count like 2, or ids like 0,1"
        ) from None


def _gpu_available(accelerator: str) -> bool:
    return accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()


def resolve_precision(cfg: RuntimeConfig) -> str:
    """``auto`` -> ``bf16-mixed`` when training on a GPU, ``32-true`` on CPU."""
    if cfg.precision != "auto":
        return cfg.precision
    if cfg.accelerator == "cpu":
        return "32-true"
    return "bf16-mixed" if _gpu_available(cfg.accelerator) else "32-true"


def make_fabric(cfg: RuntimeConfig) -> Fabric:
    """A launched ``Fabric`` for ``cfg``; sets CPU threads when training on the CPU."""
    if cfg.num_threads is not None:
        torch.set_num_threads(max(1, cfg.num_threads))
    accelerator = cfg.accelerator
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise UserError(
            f"runtime.accelerator is {accelerator} but no CUDA GPU is visible; "
            "use --set runtime.accelerator=auto (or cpu)"
        )
    devices, num_nodes = _devices(cfg.devices), 1
    if _launched_by_torchrun() and devices == "auto":
        # torchrun decides the processes: one device per local process, on every node
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = max(1, int(os.environ["WORLD_SIZE"]) // devices)
    try:
        fabric = Fabric(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy="auto",
            precision=resolve_precision(cfg),
        )
    except (ValueError, RuntimeError, TypeError) as err:
        raise UserError(
            f"cannot set up devices/precision: {err}; check runtime.* in the config"
        ) from None
    fabric.launch()
    fabric.r2b_precision = resolve_precision(cfg)
    if fabric.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
        torch.set_float32_matmul_precision("high")  # TF32 for the float32 parts
    return fabric


def is_writer(fabric: Fabric) -> bool:
    """Whether this process writes files and prints (global rank 0)."""
    return fabric.global_rank == 0


def use_channels_last(cfg: RuntimeConfig, fabric: Fabric) -> bool:
    """channels_last only on GPUs by default (it slows small CPU convs)."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return fabric.device.type == "cuda"


def describe(fabric: Fabric) -> str:
    """One line about where training runs, e.g. ``cpu (2 threads), 32-true, 1 process``."""
    dev = fabric.device
    if dev.type == "cuda":
        where = torch.cuda.get_device_name(dev)
    else:
        policy = os.environ.get("OMP_WAIT_POLICY", "default").lower()
        where = f"{dev.type} ({torch.get_num_threads()} threads, OpenMP wait {policy})"
    procs = fabric.world_size
    nodes = getattr(fabric, "num_nodes", 1)
    extra = f", {nodes} nodes" if nodes > 1 else ""
    precision = getattr(fabric, "r2b_precision", type(fabric.strategy.precision).__name__)
    return f"{where}, {precision}, {procs} process{'es' if procs > 1 else ''}{extra}"
