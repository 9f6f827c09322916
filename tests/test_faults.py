"""Faults a training run must survive (the stop signals are in test_train_loop.py):

- a loss that turns NaN: the stage stops at that step with one line naming stage, epoch, step
  and loss term, exits 3, keeps its last good state, and ``--resume`` with a lower learning rate
  finishes the run;
- a full disk (a file-size limit, as ``ulimit -f`` with SIGXFSZ ignored, in a real process): one
  line, no ``.tmp`` left, every earlier file intact, and the run resumes once there is room;
- a second ``r2b train`` on a folder a live process holds is refused; a dead process's lock is
  taken over;
- two identical runs save identical RNG states (numpy's and Python's generators are seeded).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import torch
import yaml
from safetensors.torch import load_file

from r2b.cli import main
from r2b.train.config import build_config
from r2b.train.lock import RunLock
from r2b.train.pipeline import run_pipeline
from r2b.train.run_folder import LOCK_FILE

ONE_STAGE = {
    "name": "faults",
    "seed": 5,
    "data": {"name": "default", "train_limit": 60, "test_limit": 20, "eval_batch_size": 20},
    "runtime": {"accelerator": "cpu", "progress": False, "num_threads": 1},
    "report": {"attention_images": 0},
    "stages": [{"name": "a", "model": {"name": "resnet18", "stem": "cifar", "width": 0.0625},
                "epochs": 2, "batch_size": 20, "optim": {"lr": 2e-3},
                "augment": {"ops": ["crop", "flip"]}}],
}  # fmt: skip


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """run_pipeline sets torch's thread count (runtime.num_threads); restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but the lock (which only a running process holds)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def one_error_line(stderr: str, *words: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- divergence


class PoisonedObjective:
    """Wraps the loop's ``DistillationObjective``: the ce term of training step ``at`` (1-based,
    counted over the process) is NaN; ``on_fire`` runs when it fires."""

    def __init__(self, real, at: int, on_fire) -> None:
        self.real, self.at, self.on_fire, self.calls = real, at, on_fire, 0

    def __call__(self, *args, **kwargs):
        factory = self

        class Objective(factory.real):
            def forward(self, student, x, target):
                out = super().forward(student, x, target)
                factory.calls += 1
                if factory.calls == factory.at:
                    factory.on_fire()
                    nan = torch.full((), float("nan"))
                    out = {**out, "ce": nan, "loss": out["loss"] * nan}
                return out

        return Objective(*args, **kwargs)


def test_nan_loss_stops_the_stage_keeps_the_last_good_state_and_resume_continues(
    tmp_path, monkeypatch, capsys
):
    import r2b.train.loop as loop

    config = write_config(tmp_path / "c.yaml", ONE_STAGE)
    run = tmp_path / "run"
    state = run / "a" / "state.safetensors"
    seen = {}
    poison = PoisonedObjective(loop.DistillationObjective, at=5,  # epoch 2, batch 2 of 3
                               on_fire=lambda: seen.update(before=digests(run)))  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(loop, "DistillationObjective", poison)
        code = main(["train", "--config", str(config), "--out", str(run)])
    line = one_error_line(
        capsys.readouterr().err, "stage 'a' diverged at epoch 2, batch 2/3", "(step 5 of",
        "ce loss is nan", "kept its state after epoch 1", f"--out {run} --resume",
        "--set stages.a.optim.lr=0.001",
    )  # fmt: skip
    assert code == 3 and line.startswith("error: ")
    # nothing of the diverged epoch was written: the folder is as it was before the NaN step
    assert digests(run) == seen["before"]
    assert state.is_file() and not (run / "a" / "result.json").exists()
    assert not list(run.rglob("*.tmp")) and not (run / LOCK_FILE).exists()

    code = main(["train", "--out", str(run), "--resume", "--set", "stages.a.optim.lr=0.001"])
    assert code == 0, capsys.readouterr().err
    rows = (run / "a" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header, epoch 1 (lr 2e-3 schedule), epoch 2 (lr 1e-3)
    assert yaml.safe_load((run / "config.yaml").read_text())["stages"][0]["optim"]["lr"] == 1e-3
    assert json.loads((run / "a" / "result.json").read_text())["epochs"] == 2


def test_a_learning_rate_that_explodes_is_caught_at_its_first_bad_step(tmp_path, capsys):
    """No injection: Adam at lr 1e30 overflows the weights, the next step's loss is not finite."""
    config = write_config(tmp_path / "c.yaml", ONE_STAGE)
    run = tmp_path / "run"
    code = main(["train", "--config", str(config), "--out", str(run),
                 "--set", "stages.a.optim.lr=1e30"])  # fmt: skip
    line = one_error_line(capsys.readouterr().err, "stage 'a' diverged at epoch 1", "loss is")
    assert code == 3 and "has no finished epoch yet" in line
    assert not (run / "a" / "state.safetensors").exists()


# --------------------------------------------------------------------------- full disk


def _file_size_limit(limit: int):
    def preexec() -> None:  # in the child: ulimit -f, and writes past it fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return preexec


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_a_full_disk_leaves_no_tmp_and_every_earlier_file_intact(tmp_path):
    """Epoch 1 is trained; epoch 2 is resumed in a process that may not write files over 64 KiB
    (the weights are ~180 KiB): its first checkpoint write fails."""
    data = {**ONE_STAGE, "stages": [{**ONE_STAGE["stages"][0], "epochs": 1}]}
    run = tmp_path / "run"
    run_pipeline(build_config(data), run, log=lambda *_: None)
    (run / "a" / "result.json").unlink()  # the run has one more epoch to go
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["stages"][0]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    before = digests(run)
    argv = [sys.executable, "-m", "r2b.cli", "train", "--out", str(run), "--resume"]
    full = subprocess.run(argv, capture_output=True, text=True, env=_env(),
                          preexec_fn=_file_size_limit(64 << 10))  # fmt: skip
    assert full.returncode == 2, full.stderr
    line = one_error_line(full.stderr, "error: cannot write", "File too large", "free disk space")
    assert ".safetensors" in line
    assert not list(run.rglob("*.tmp")) and not (run / LOCK_FILE).exists()
    assert digests(run) == before  # the previous checkpoints, metrics, config: untouched
    run_pipeline(build_config(saved), run, resume=True, log=lambda *_: None)  # room again
    assert len((run / "a" / "metrics.csv").read_text().splitlines()) == 3


# --------------------------------------------------------------------------- run-folder lock


def test_a_live_lock_is_refused_and_a_dead_ones_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "earlier"}
        (run / LOCK_FILE).write_text(json.dumps(record))
        with pytest.raises(Exception, match=f"in use by process {sleeper.pid}"):
            RunLock(run).acquire()
        config = write_config(tmp_path / "c.yaml", ONE_STAGE)
        assert main(["train", "--config", str(config), "--out", str(run)]) == 2
        one_error_line(capsys.readouterr().err, f"in use by process {sleeper.pid}", LOCK_FILE)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its lock is stale, and a new run takes it over (and removes it at the end)
    lock = RunLock(run).acquire()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run / LOCK_FILE).exists()
    (run / LOCK_FILE).write_text("garbled")  # an unreadable lock holds nothing either
    RunLock(run).acquire().release()


# --------------------------------------------------------------------------- RNG states


def test_two_identical_runs_save_identical_weights_and_rng_states(tmp_path):
    """numpy's and Python's global generators are seeded per stage, so the states saved in
    state.safetensors repeat (they differed between two runs before they were seeded)."""
    data = {**ONE_STAGE, "stages": [{**ONE_STAGE["stages"][0], "epochs": 1}]}
    states = []
    for name in ("one", "two"):
        import numpy as np

        np.random.rand(3)  # the global generators are wherever earlier code left them
        run_pipeline(build_config(data), tmp_path / name, log=lambda *_: None)
        path = tmp_path / name / "a" / "state.safetensors"
        with safetensors.safe_open(str(path), "pt") as f:
            record = json.loads(f.metadata()["state"])
        states.append((load_file(str(path)), record["rng"]))
    (t1, r1), (t2, r2) = states
    assert t1.keys() == t2.keys() and "rng.numpy" in t1
    for key in t1:
        assert torch.equal(t1[key], t2[key]), key
    assert r1 == r2
