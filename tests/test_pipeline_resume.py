"""Kill a training run with SIGKILL in the middle of an epoch, resume it, and reach exactly the
same final weights as an uninterrupted run with the same seed (CPU, bit for bit)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

TINY = {
    "name": "resume",
    "seed": 7,
    "data": {"name": "default", "train_limit": 160, "test_limit": 40, "eval_batch_size": 40},
    "runtime": {"accelerator": "cpu", "num_threads": 1, "progress": False},
    "report": {"attention_images": 0},
    "stage_defaults": {
        "model": {"stem": "cifar", "width": 0.125},
        "batch_size": 16,  # 160 images: 10 steps an epoch
        "epochs": 2,
        "augment": {"ops": ["crop", "flip"], "mixup": 0.2},
        "schedule": {"kind": "cosine", "warmup_epochs": 0.5},
    },
    "stages": [
        {"name": "ban", "model": {"name": "sb_resnet18", "stage": "ban"}},
        {"name": "bnn", "model": {"name": "sb_resnet18", "stage": "bnn"}, "teacher": "ban",
         "init_from": "ban", "loss": {"kd": 0.8},
         "optim": {"lr": 2e-4, "weight_decay": 0, "clip_weights": 1.0}},
    ],
}  # fmt: skip
STEPS = 10  # optimiser steps per epoch


# Run `r2b train` in a child process that SIGKILLs itself when its optimiser is about to take
# step KILL_AT of the given stage: a kill at an exact point in the middle of an epoch, whatever
# the machine's speed. The training code is not changed: the wrapper counts calls of the
# loop's learning-rate setter, which runs once per optimiser step.
KILLER = """
import os, signal, sys
import r2b.train.loop as loop
stage, kill_at = sys.argv[1], int(sys.argv[2])
calls = {}
real_train_stage, real_set_lr = loop.train_stage, loop.set_lr
def train_stage(fabric, job, model, teacher):
    loop.current = job.stage.name
    return real_train_stage(fabric, job, model, teacher)
def set_lr(*args):
    calls[loop.current] = calls.get(loop.current, 0) + 1
    if loop.current == stage and calls[stage] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_set_lr(*args)
loop.set_lr = set_lr
import r2b.train.pipeline as pipeline
pipeline.train_stage = train_stage
from r2b.cli import main
sys.exit(main(sys.argv[3:]))
"""


def train_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--out", str(out), *extra]


def run_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def r2b(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "r2b.cli", *args], env=run_env(), capture_output=True, text=True,
        **kw,
    )  # fmt: skip


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "bnn" / "last.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The config file and an uninterrupted run of it."""
    root = tmp_path_factory.mktemp("resume")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    ref = root / "ref"
    done = r2b(*train_args(config, ref))
    assert done.returncode == 0, done.stderr
    return config, ref


def resume_and_compare(config: Path, ref: Path, out: Path) -> None:
    # whatever the kill interrupted, every checkpoint in place is whole (written, then renamed)
    for path in out.rglob("*.safetensors"):
        load_file(str(path))
    assert not (out / "bnn" / "result.json").exists(), "the run finished before the kill"
    done = r2b(*train_args(config, out, "--resume"))
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    a, b = final_weights(ref), final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_rows = (ref / "bnn" / "metrics.csv").read_text().splitlines()
    out_rows = (out / "bnn" / "metrics.csv").read_text().splitlines()
    drop_time = [",".join(r.split(",")[:-1]) for r in ref_rows]
    assert drop_time == [",".join(r.split(",")[:-1]) for r in out_rows]


@pytest.mark.parametrize(
    "stage, step",
    [
        ("bnn", STEPS + STEPS // 2),  # stage 2 of 2, middle of epoch 2
        pytest.param("ban", STEPS + 3, marks=pytest.mark.slow),  # stage 1, early in epoch 2
    ],
)
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(reference, tmp_path, stage, step):
    config, ref = reference
    out = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, stage, str(step), *train_args(config, out)],
        env=run_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = out / stage / "state.safetensors"
    assert state.is_file()  # epoch 1 of the stage was saved; epoch 2 was cut in the middle
    resume_and_compare(config, ref, out)


@pytest.mark.slow
def test_sigkill_from_outside_then_resume(reference, tmp_path):
    """The same with an external SIGKILL shortly after the first bnn checkpoint appears."""
    config, ref = reference
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "r2b.cli", *train_args(config, out)], env=run_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    marker = out / "bnn" / "state.safetensors"
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    resume_and_compare(config, ref, out)
