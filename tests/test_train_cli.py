"""`r2b train` and `r2b eval` from the command line: seconds-long smoke runs and every bad input.

Each bad input must print one line ``error: ...`` on stderr, exit with status 2, print no
traceback, and leave existing files untouched.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r2b.cli import main
from r2b.models import create_model
from r2b.train.checkpoint import save_weights

SMOKE_SETS = [
    "data.train_limit=64", "data.test_limit=40", "stages.*.epochs=1", "stages.*.batch_size=32",
    "stages.*.model.width=0.125", "report.attention_images=1", "runtime.progress=false",
    "runtime.num_threads=1",  # tiny convolutions: one thread is fastest, and robust to a busy CPU
]  # fmt: skip


def r2b(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_WAIT_POLICY", None)  # r2b train sets it (by re-running itself) when unset
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "r2b.cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """In-process ``r2b train`` sets torch's thread count; restore it afterwards."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class Done:
    """Exit status and output of one in-process ``r2b`` call (like CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run ``r2b.cli.main(argv)`` in this process; much cheaper than a new interpreter."""

    def call(*args: str) -> Done:
        code = main(list(args))
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return call


def assert_user_error(done, *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The default 4-stage recipe, shrunk to seconds with --set, run by the console entry point
    in a fresh directory (so it does not depend on the repository's configs/)."""
    cwd = tmp_path_factory.mktemp("cwd")
    done = r2b("train", *[a for s in SMOKE_SETS for a in ("--set", s)], cwd=cwd)
    assert done.returncode == 0, done.stderr
    (run,) = (cwd / "runs").iterdir()
    return run, done


def test_train_default_recipe_smoke(smoke_run):
    run, done = smoke_run
    assert run.name.startswith("quick-")
    results = json.loads((run / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["teacher", "fp", "ban", "bnn"]
    assert (run / "report.md").is_file() and (run / "curves.png").is_file()
    assert (run / "attention_bnn.png").is_file()
    assert "OpenMP wait passive" in done.stdout.splitlines()[0]  # re-ran itself with the policy
    table = done.stdout[done.stdout.index("stage ") :]
    assert all(name in table for name in ("teacher", "fp", "ban", "bnn"))


def test_eval_prints_top1_top5(smoke_run, capsys):
    run, _ = smoke_run
    ckpt = run / "bnn" / "best.safetensors"
    assert main(["eval", str(ckpt), "--json", "--limit", "50"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 50 and 0 <= res["top1"] <= res["top5"] <= 100
    assert main(["eval", str(ckpt), "--data", "default", "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "(20 images)" in out


def test_resume_of_a_finished_run_changes_nothing(smoke_run, cli):
    run, _ = smoke_run
    before = snapshot(run)
    done = cli("train", "--out", str(run), "--resume")
    assert done.returncode == 0, done.stderr
    assert "finished earlier, skipped" in done.stdout
    after = snapshot(run)
    for name, digest in before.items():
        if name.endswith(".safetensors") or name.endswith(".csv") or name == "config.yaml":
            assert after[name] == digest, name


# --------------------------------------------------------------------------- bad input


def test_missing_config_file(tmp_path):
    """As a real process: exit status 2, one line on stderr, no traceback."""
    assert_user_error(r2b("train", "--config", str(tmp_path / "nope.yaml")), "does not exist")
    assert not (tmp_path / "runs").exists()


def test_unknown_key_and_wrong_type(tmp_path, cli):
    out = tmp_path / "out"
    done = cli("train", "--out", str(out), "--set", "stages.fp.optimiser.lr=1")
    assert_user_error(done, "unknown config key stages[1].optimiser")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"stages": [{"name": "a", "epochs": "many"}]}))
    done = cli("train", "--config", str(cfg), "--out", str(out))
    assert_user_error(done, "stages[0].epochs", "integer", "'many'")
    cfg.write_text(yaml.safe_dump({"stages": [{"name": "a", "learning_rate": 1}]}))
    assert_user_error(cli("train", "--config", str(cfg), "--out", str(out)), "learning_rate")
    assert not out.exists()


def test_missing_data_directory(tmp_path, cli):
    out = tmp_path / "out"
    done = cli("train", "--out", str(out), "--set", "data.name=folder",
               "--set", f"data.root={tmp_path / 'no-data'}")  # fmt: skip
    assert_user_error(done, "no-data")
    assert not out.exists()


def test_output_directory_with_a_run_is_not_overwritten(smoke_run, cli):
    run, _ = smoke_run
    before = snapshot(run)
    assert_user_error(cli("train", "--out", str(run)), "already exists", "--resume")
    assert snapshot(run) == before


def test_resume_needs_a_run(tmp_path, cli):
    assert_user_error(cli("train", "--resume"), "--out")
    (tmp_path / "empty").mkdir()
    assert_user_error(cli("train", "--out", str(tmp_path / "empty"), "--resume"), "no run")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_eval_of_a_damaged_checkpoint(smoke_run, tmp_path, damage, cli):
    run, _ = smoke_run
    data = (run / "bnn" / "best.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\x13" * 4096)
    assert_user_error(cli("eval", str(bad)), "corrupt or truncated", str(bad))
    assert_user_error(cli("eval", str(tmp_path / "missing.safetensors")), "does not exist")


def test_resume_with_a_damaged_training_state(smoke_run, tmp_path, cli):
    """A truncated state.safetensors (not possible through a kill: writes are renamed into
    place) is reported, and nothing in the run folder is changed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run)
    (run / "bnn" / "result.json").unlink()
    state = run / "bnn" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    before = snapshot(run)
    assert_user_error(cli("train", "--out", str(run), "--resume"), "corrupt or truncated")
    assert snapshot(run) == before


def test_checkpoint_of_another_architecture(tmp_path, cli):
    """init_from a weights file of another network: a clear error before any training."""
    other = tmp_path / "real.safetensors"
    save_weights(other, create_model("resnet18", num_classes=10, stem="cifar", width=0.125))
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    sets = SMOKE_SETS + [
        "stages.teacher.model.name=sb_resnet18", "stages.teacher.model.stage=ban",
        f"stages.teacher.init_from={other}",
    ]  # fmt: skip
    done = cli("train", "--out", str(out), *[a for s in sets for a in ("--set", s)])
    assert_user_error(done, "resnet18", "does not fit", "same architecture")
    assert snapshot(tmp_path) == before and not out.exists()


def test_eval_on_data_with_another_number_of_classes(tmp_path, cli):
    ckpt = tmp_path / "w.safetensors"
    save_weights(ckpt, create_model("resnet18", num_classes=100, stem="cifar", width=0.125),
                 {"data": {"name": "default"}})  # fmt: skip
    assert_user_error(cli("eval", str(ckpt)), "100 classes")
