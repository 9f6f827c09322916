"""Stop a training run in the middle of an epoch — SIGKILL (nothing saved since the last epoch),
or SIGTERM/SIGINT (the step finishes and a mid-epoch state is saved) — resume it, and reach
exactly the same final weights and metrics as an uninterrupted run with the same seed (CPU, bit
for bit). While a run trains, its folder is locked against a second ``r2b train``; a killed
run's stale lock is taken over by the resumed one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors
import torch
import yaml
from safetensors.torch import load_file

from r2b.cli import main
from r2b.train.run_folder import LOCK_FILE

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


# Run `r2b train` in a child process that stops itself when its optimiser is about to take step
# AT of the given stage: at an exact point in the middle of an epoch, whatever the machine's
# speed. MODE "kill": SIGKILL itself there. MODE "pause:DIR": touch DIR/at_step and wait until
# DIR/go exists (the test sends its signal from outside meanwhile). The training code is not
# changed: the wrapper counts calls of the loop's learning-rate setter, once per optimiser step.
HOOK = """
import os, signal, sys, time
from pathlib import Path
import r2b.train.loop as loop
mode, stage, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = {}
real_train_stage, real_set_lr = loop.train_stage, loop.set_lr
def train_stage(fabric, job, model, teacher):
    loop.current = job.stage.name
    return real_train_stage(fabric, job, model, teacher)
def set_lr(*args):
    calls[loop.current] = calls.get(loop.current, 0) + 1
    if loop.current == stage and calls[stage] == at:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sync = Path(mode.split(":", 1)[1])
        (sync / "at_step").touch()
        while not (sync / "go").exists():
            time.sleep(0.01)
    return real_set_lr(*args)
loop.set_lr = set_lr
import r2b.train.pipeline as pipeline
pipeline.train_stage = train_stage
from r2b.cli import main
sys.exit(main(sys.argv[4:]))
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
        [sys.executable, "-c", HOOK, "kill", stage, str(step), *train_args(config, out)],
        env=run_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = out / stage / "state.safetensors"
    assert state.is_file()  # epoch 1 of the stage was saved; epoch 2 was cut in the middle
    holder = json.loads((out / LOCK_FILE).read_text())["pid"]  # a killed run keeps its lock,
    with pytest.raises(ProcessLookupError):  # held by a process that no longer runs...
        os.kill(holder, 0)
    resume_and_compare(config, ref, out)  # ...which the resumed run takes over
    assert not (out / LOCK_FILE).exists()


def in_epoch_record(state: Path) -> dict | None:
    with safetensors.safe_open(str(state), "pt") as f:
        return json.loads(f.metadata()["state"])["progress"].get("in_epoch")


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGTERM", "SIGINT"],
)
def test_stop_signal_mid_epoch_saves_state_and_resume_gives_identical_weights(
    reference, tmp_path, sig, capsys
):
    """A signal from outside while a step runs: the step finishes, the state of the middle of
    the epoch is saved, the process ends at once with 128 + signal; meanwhile the run folder is
    locked against a second r2b train; --resume then ends with the uninterrupted run's weights."""
    config, ref = reference
    out, sync = tmp_path / "stopped", tmp_path / "sync"
    sync.mkdir()
    at = STEPS + STEPS // 2  # bnn, epoch 2, batch 5
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOK, f"pause:{sync}", "bnn", str(at), *train_args(config, out)],
        env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (sync / "at_step").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the run never reached the step"
            time.sleep(0.02)
        assert main(["train", "--out", str(out), "--resume"]) == 2  # a second r2b train
        err = capsys.readouterr().err
        assert f"in use by process {proc.pid}" in err and len(err.strip().splitlines()) == 1
        proc.send_signal(sig)
        sent = time.monotonic()
        (sync / "go").touch()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - sent < 60  # one step and one save, not the rest of the run
    assert proc.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    name = signal.Signals(sig).name
    assert lines[0].startswith(f"stopped: {name}: stage 'bnn' stopped at epoch 2, batch 5/10")
    assert f"--out {out} --resume" in lines[0]
    assert in_epoch_record(out / "bnn" / "state.safetensors")["batches"] == 5
    assert not (out / LOCK_FILE).exists()
    resume_and_compare(config, ref, out)
    assert in_epoch_record(out / "bnn" / "state.safetensors") is None


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


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_both_ranks_at_one_batch_and_resumes_identically(tmp_path):
    """DDP on CPU (gloo): torchrun forwards SIGTERM to its two workers, which agree (all-reduce)
    on the batch to stop after, save one state holding both ranks' generators, and resume under
    torchrun to the uninterrupted run's weights. (torchrun itself then exits 1 with its own
    SignalException traceback: that part is torchrun's.)"""
    import shutil

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    data = {
        **TINY,
        "data": {**TINY["data"], "train_limit": 320},
        "stages": [{"name": "a", "model": {"name": "sb_resnet18", "stage": "ban"}, "epochs": 5}],
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))

    def torchrun_cmd(*args: str) -> list[str]:
        return [torchrun, "--standalone", "--nproc_per_node=2", "-m", "r2b.cli", *args]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(torchrun_cmd(*args), env=run_env(), capture_output=True, text=True)

    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run(*train_args(config, ref)).returncode == 0
    cmd = torchrun_cmd(*train_args(config, out))
    proc = subprocess.Popen(cmd, env=run_env(), stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "a" / "state.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped: SIGTERM")]
    assert len(stopped) == 2 and stopped[0] == stopped[1], stderr[-3000:]  # one batch, both
    assert not (out / "a" / "result.json").exists()
    resumed = run(*train_args(config, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(ref / "a" / "last.safetensors"))
    b = load_file(str(out / "a" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- older run folders

OLD_FORMAT = {  # test_train_pipeline.py's smallest run: 50 images, 2 steps an epoch
    **TINY,
    "name": "old",
    "data": {"name": "default", "train_limit": 50, "test_limit": 20, "eval_batch_size": 20},
    "stage_defaults": {"model": {"stem": "cifar", "width": 0.0625}, "batch_size": 20,
                       "augment": {"ops": ["flip"], "mixup": 0.2}},
    "stages": [
        {"name": "a", "model": {"name": "resnet18"}, "epochs": 1},
        {"name": "b", "model": {"name": "r2b_resnet18", "stage": "ban"}, "teacher": "a",
         "epochs": 2, "loss": {"kd": 1.0}},
    ],
}  # fmt: skip
#: the progress keys of a state file and the result keys of a result.json written before the
#: validation split and the stop signals (commit 7a1f783)
OLD_PROGRESS_KEYS = ("epoch", "step", "best_top1", "best_top5", "best_epoch", "time_s", "history")
OLD_RESULT_KEYS = ("name", "model", "variant", "teacher", "init_from", "epochs", "top1", "top5",
                   "best_top1", "best_top5", "best_epoch", "seconds", "dir")  # fmt: skip


class AfterFirstEpoch(Exception):
    """Ends a run in-process once stage b has saved its first epoch (as a kill would)."""


def end_after_b_epoch_1(line: str) -> None:
    if line.startswith("[b] epoch 1/2"):
        raise AfterFirstEpoch


def write_the_old_way(run: Path) -> None:
    """Rewrite the finished stage's result.json and the unfinished one's state file with the
    records older versions wrote (fewer keys; tensors and the rest of the record as they are)."""
    from safetensors.torch import save_file

    result = json.loads((run / "a" / "result.json").read_text())
    old_result = {k: result[k] for k in OLD_RESULT_KEYS}
    (run / "a" / "result.json").write_text(json.dumps(old_result, indent=2) + "\n")
    state = run / "b" / "state.safetensors"
    with safetensors.safe_open(str(state), "pt") as f:
        metadata = f.metadata()
    record = json.loads(metadata["state"])
    record["progress"] = {k: record["progress"][k] for k in OLD_PROGRESS_KEYS}
    save_file(load_file(str(state)), str(state), metadata={**metadata, "state": json.dumps(record)})


def test_a_run_folder_of_the_old_format_resumes_as_the_current_one(tmp_path):
    """A run stopped after stage b's first epoch, copied twice: one copy's records rewritten as
    older versions wrote them. Both resume, and end with the same weights, metrics and results."""
    import shutil

    from r2b.train.config import build_config
    from r2b.train.pipeline import run_pipeline

    cfg = build_config(OLD_FORMAT)
    stopped = tmp_path / "stopped"
    with pytest.raises(AfterFirstEpoch):
        run_pipeline(cfg, stopped, log=end_after_b_epoch_1)
    assert (stopped / "a" / "result.json").is_file()
    assert (stopped / "b" / "state.safetensors").is_file()
    assert not (stopped / "b" / "result.json").exists()
    current, old = tmp_path / "current", tmp_path / "old"
    shutil.copytree(stopped, current)
    shutil.copytree(stopped, old)
    write_the_old_way(old)
    outcomes = []
    for run in (current, old):
        lines = []
        results = run_pipeline(cfg, run, resume=True, log=lines.append)
        assert "[a] finished earlier, skipped" in lines and "[b] resuming" in lines[2]
        outcomes.append(results)
    a, b = (load_file(str(run / "b" / "last.safetensors")) for run in (current, old))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [(run / "b" / "metrics.csv").read_text().splitlines() for run in (current, old)]
    assert [r.rsplit(",", 1)[0] for r in rows[0]] == [r.rsplit(",", 1)[0] for r in rows[1]]
    untimed = [[{k: v for k, v in s.items() if k != "seconds"} for s in r["stages"]]
               for r in outcomes]  # fmt: skip
    assert untimed[0] == untimed[1]
    assert outcomes[1]["stages"][0]["selected_on"] == "test"  # the old result's default
    with safetensors.safe_open(str(old / "b" / "state.safetensors"), "pt") as f:
        progress = json.loads(f.metadata()["state"])["progress"]
    assert progress["best_score"] == progress["best_top1"] and progress["selected_on"] == "test"
