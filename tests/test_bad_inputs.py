"""Every bad input of the ``r2b`` command line, one table row each: the command must exit non-zero
with exactly one line on stderr, ``error: ...`` naming the key or flag at fault, print no
traceback, and leave every file it was given (and the folder it runs in) as it was.

Rows run ``r2b.cli.main`` in this process with captured output (an exception other than a
``UserError`` would escape ``main`` and fail the row with its traceback); one row also runs the
real entry point in a subprocess. A few rows need the data loaded or a worker process to start,
and may create their own fresh ``--out`` folder (``trains=True``); nothing else may appear.

Rows about ``r2b summary/export/bench`` check the shared model flags (``r2b.cli_args``) and the
export path; they are cheap (tiny models, one timed run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from r2b.cli import main
from r2b.models import create_model
from r2b.train.checkpoint import save_weights
from r2b.train.config import build_config
from r2b.train.pipeline import run_pipeline

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
TINY_RUN = {
    "name": "tiny",
    "data": {"name": "default", "train_limit": 40, "test_limit": 20},
    "runtime": {"accelerator": "cpu", "progress": False, "num_threads": 1},
    "report": {"attention_images": 0},
    "stages": [{"name": "a", "model": {"name": "resnet18", "stem": "cifar", "width": 0.0625},
                "epochs": 1, "batch_size": 20}],
}  # fmt: skip
# the quick recipe, made tiny, for rows that must get past the config checks
QUICK = ["--set", "stages.*.model.width=0.0625", "--set", "stages.*.epochs=1",
         "--set", "runtime.progress=false", "--set", "runtime.num_threads=1"]  # fmt: skip


@dataclass
class Row:
    """One bad input: ``argv`` ({w} = the prepared folder), the words the error line must hold,
    an optional ``prepare(world, monkeypatch)``, and whether it may create ``{w}/fresh*``."""

    argv: list[str]
    words: list[str]
    prepare: object = None
    trains: bool = False
    marks: list = field(default_factory=list)


def _image(path: Path, value: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path, format="JPEG")


def _images_folder(root: Path, extra: dict[str, bytes | Path]) -> None:
    """train/{a,b}/0..3.jpg and test/{a,b}/0.jpg, plus ``extra`` files of train/b/ (bytes, or a
    Path to link to)."""
    for c, value in (("a", 30), ("b", 220)):
        for k in range(4):
            _image(root / "train" / c / f"{k}.jpg", value + k)
        _image(root / "test" / c / "0.jpg", value)
    for name, content in extra.items():
        target = root / "train" / "b" / name
        if isinstance(content, Path):
            target.symlink_to(content)
        else:
            target.write_bytes(content)


def _rewrite_metadata(src: Path, dst: Path, key: str, value) -> None:
    """Copy a safetensors file with one metadata record replaced (``value`` JSON-encoded)."""
    import safetensors

    with safetensors.safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    meta[key] = value if isinstance(value, str) else json.dumps(value)
    save_file(load_file(str(src)), str(dst), metadata=meta)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder holding everything the rows point at (see each use)."""
    w = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    weights = w / "w.safetensors"
    model = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.0625, stage="bnn")
    save_weights(weights, model, {"data": {"name": "default"}})
    _rewrite_metadata(weights, w / "arch_list.safetensors", "arch", [1, 2])
    _rewrite_metadata(weights, w / "arch_noname.safetensors", "arch", {"width": 1})
    _rewrite_metadata(weights, w / "info_str.safetensors", "info", "not json")
    _rewrite_metadata(weights, w / "data_list.safetensors", "info", {"data": [1]})
    _rewrite_metadata(weights, w / "data_types.safetensors", "info",
                      {"data": {"name": "default", "train_limit": "many"}})  # fmt: skip
    (w / "a_folder.safetensors").mkdir()
    (w / "afile").write_text("a file, not a folder\n")
    (w / "existing").mkdir()
    (w / "existing" / "notes.txt").write_text("someone's work\n")
    (w / "cfgdir").mkdir()
    (w / "rep_list").mkdir()
    (w / "rep_list" / "results.json").write_text("[]")
    (w / "rep_rows").mkdir()
    (w / "rep_rows" / "results.json").write_text(json.dumps({"stages": [1, 2]}))
    _images_folder(w / "imgs_corrupt", {"zz.jpg": b"\xff\xd8 not really a jpeg" * 20})
    _images_folder(w / "imgs_unreadable", {"zz.jpg": Path("/proc/self/mem")})
    _images_folder(w / "imgs", {})
    threads = torch.get_num_threads()
    run_pipeline(build_config(TINY_RUN), w / "run", log=lambda *_: None)
    torch.set_num_threads(threads)
    for name, record in (
        ("run_noprogress", {"optimizer": {}, "rng": {}}),
        ("run_badstep", None),
    ):
        _copy_unfinished(w / "run", w / name)
        state = w / name / "a" / "state.safetensors"
        if record is None:
            import safetensors

            with safetensors.safe_open(str(state), "pt") as f:
                record = json.loads(f.metadata()["state"])
            record["progress"]["step"] = "ten"
        _rewrite_metadata(state, state, "state", record)
    _copy_unfinished(w / "run", w / "locked")
    (w / "locked" / "train.lock").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"})
    )
    return w


def _copy_unfinished(src: Path, dst: Path) -> None:
    """A copy of a finished one-stage run whose stage is not finished (result.json removed)."""
    shutil.copytree(src, dst)
    (dst / "a" / "result.json").unlink()


def _small_bomb_limit(world, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 16x16 images are > 2x the limit


FOLDER = ["--set", "data.name=folder", "--set", "data.image_size=16", *QUICK]
# fmt: off
ROWS = {
    # ----------------------------------------------------------------- train: config values
    "train_limit_0": Row(["train", "--set", "data.train_limit=0"], ["data.train_limit", ">= 1"]),
    "test_limit_neg": Row(["train", "--set", "data.test_limit=-5"], ["data.test_limit"]),
    "augment_unknown": Row(["train", "--set", "stages.bnn.augment.ops=[crop,blur]"],
                           ["stages[3].augment.ops", "'blur'"]),
    "augment_wrong_kind": Row(["train", *QUICK, "--set", "stages.bnn.augment.ops=[jitter]"],
                              ["stages[3].augment.ops", "jitter"]),
    "betas_1": Row(["train", "--set", "stages.*.optim.betas=[0.9,1.0]"], ["stages[0].optim.betas"]),
    "momentum_neg": Row(["train", "--set", "stages.*.optim.name=sgd",
                         "--set", "stages.*.optim.momentum=-0.1"], ["optim.momentum"]),
    "gamma_0": Row(["train", "--set", "stages.*.schedule.gamma=0"], ["stages[0].schedule.gamma"]),
    "lr_nan": Row(["train", "--set", "stages.fp.optim.lr=.nan"], ["stages[1].optim.lr", "nan"]),
    "lr_inf": Row(["train", "--set", "stages.fp.optim.lr=.inf"], ["stages[1].optim.lr", "inf"]),
    "lr_text": Row(["train", "--set", "stages.fp.optim.lr=fast"], ["stages[1].optim.lr"]),
    "image_size_0": Row(["train", "--set", "data.image_size=0"], ["data.image_size"]),
    "image_size_big": Row(["train", *QUICK, "--set", "data.image_size=40"], ["data.image_size"]),
    "num_workers_neg": Row(["train", "--set", "data.num_workers=-1"], ["data.num_workers"]),
    "val_fraction_1": Row(["train", "--set", "data.val_fraction=1"], ["data.val_fraction"]),
    "test_once_no_val": Row(["train", "--set", "data.test_every_epoch=false"],
                            ["data.test_every_epoch", "data.val_fraction"]),
    "data_eval_batch_0": Row(["train", "--set", "data.eval_batch_size=0"],
                             ["data.eval_batch_size"]),
    "dataset_name": Row(["train", "--set", "data.name=mnist"], ["data.name", "cifar10"]),
    "accelerator": Row(["train", "--set", "runtime.accelerator=tpu"], ["runtime.accelerator"]),
    "accelerator_cuda": Row(["train", "--set", "runtime.accelerator=cuda"],
                            ["runtime.accelerator", "no CUDA GPU"], marks=[NO_GPU]),
    "threads_0": Row(["train", "--set", "runtime.num_threads=0"], ["runtime.num_threads"]),
    "seed_neg": Row(["train", "--set", "seed=-1"], ["seed"]),
    "name_slash": Row(["train", "--set", "name=a/b"], ["config key name"]),
    "batch_too_big": Row(["train", *QUICK, "--set", "stages.*.batch_size=100000"],
                         ["stages.teacher.batch_size"]),
    "pad_neg": Row(["train", "--set", "stages.*.augment.pad=-1"], ["stages[0].augment.pad"]),
    "jitter_2": Row(["train", "--set", "stages.*.augment.jitter=2"], ["augment.jitter"]),
    "no_loss": Row(["train", "--set", "stages.teacher.loss.ce=0"], ["stages[0].loss"]),
    "width_0": Row(["train", "--set", "stages.*.model.width=0"], ["stages[0].model.width"]),
    "clip_0": Row(["train", "--set", "stages.bnn.optim.clip_weights=0"], ["clip_weights"]),
    "epochs_text": Row(["train", "--set", "stages.*.epochs=x"], ["stages[0].epochs", "integer"]),
    "unknown_key": Row(["train", "--set", "stages.fp.optimiser.lr=1"], ["stages[1].optimiser"]),
    "set_syntax": Row(["train", "--set", "epochs"], ["--set", "KEY=VALUE"]),
    # ----------------------------------------------------------------- train: files and flags
    "out_under_file": Row(["train", "--out", "{w}/afile/run"], ["afile", "is a file"]),
    "out_not_empty": Row(["train", "--out", "{w}/existing"], ["existing", "--resume"]),
    "config_folder": Row(["train", "--config", "{w}/cfgdir"], ["cfgdir", "is not a file"]),
    "unknown_flag": Row(["train", "--bogus"], ["unrecognized arguments", "--bogus"]),
    "resume_no_out": Row(["train", "--resume"], ["--resume", "--out"]),
    "run_locked": Row(["train", "--out", "{w}/locked", "--resume"], ["in use by process"]),
    "state_no_progress": Row(["train", "--out", "{w}/run_noprogress", "--resume"],
                             ["run_noprogress", "no progress record"]),
    "state_bad_step": Row(["train", "--out", "{w}/run_badstep", "--resume"], ["progress.step"]),
    "resume_other_epochs": Row(["train", "--out", "{w}/run", "--resume", "--set",
                                "stages.a.epochs=3"], ["stages[0].epochs", "differs"]),
    # ----------------------------------------------------------------- train: image files
    "image_corrupt": Row(["train", *FOLDER, "--set", "data.root={w}/imgs_corrupt",
                          "--out", "{w}/fresh"], ["cannot decode image", "zz.jpg"]),
    "image_unreadable": Row(["train", *FOLDER, "--set", "data.root={w}/imgs_unreadable",
                             "--out", "{w}/fresh"], ["cannot read image", "zz.jpg"]),
    "image_bomb": Row(["train", *FOLDER, "--set", "data.root={w}/imgs", "--out", "{w}/fresh"],
                      ["Pillow's limit", "0.jpg"], prepare=_small_bomb_limit),
    "image_corrupt_in_worker": Row(
        ["train", *FOLDER, "--set", "data.root={w}/imgs_corrupt", "--set", "data.in_memory=false",
         "--set", "data.num_workers=1", "--set", "stages.*.batch_size=9", "--out", "{w}/fresh_w"],
        ["cannot decode image", "zz.jpg"], trains=True,
    ),
    # ----------------------------------------------------------------- eval
    "eval_batch_size_0": Row(["eval", "{w}/w.safetensors", "--batch-size", "0"], ["--batch-size"]),
    "eval_batch_neg": Row(["eval", "{w}/w.safetensors", "--batch-size", "-3"], ["--batch-size"]),
    "eval_batch_text": Row(["eval", "{w}/w.safetensors", "--batch-size", "x"],
                           ["--batch-size", "invalid int"]),
    "eval_limit_0": Row(["eval", "{w}/w.safetensors", "--limit", "0"], ["--limit"]),
    "eval_device_gpu": Row(["eval", "{w}/w.safetensors", "--device", "gpu"], ["--device", "GPU"],
                           marks=[NO_GPU]),
    "eval_device_cuda": Row(["eval", "{w}/w.safetensors", "--device", "cuda"], ["--device"],
                            marks=[NO_GPU]),
    "eval_device_tpu": Row(["eval", "{w}/w.safetensors", "--device", "tpu"], ["--device"]),
    "eval_split_val": Row(["eval", "{w}/w.safetensors", "--split", "val"], ["--split val"]),
    "eval_split_bad": Row(["eval", "{w}/w.safetensors", "--split", "dev"], ["--split"]),
    "eval_folder": Row(["eval", "{w}/a_folder.safetensors"], ["is not a file"]),
    "eval_missing": Row(["eval", "{w}/nothing.safetensors"], ["does not exist"]),
    "eval_unreadable": Row(["eval", "/proc/self/mem"], ["cannot read checkpoint"]),
    "eval_not_safetensors": Row(["eval", "{w}/afile"], ["corrupt or truncated"]),
    "eval_arch_list": Row(["eval", "{w}/arch_list.safetensors"], ["'arch' record"]),
    "eval_arch_noname": Row(["eval", "{w}/arch_noname.safetensors"], ["arch.name"]),
    "eval_info_text": Row(["eval", "{w}/info_str.safetensors"], ["'info' record"]),
    "eval_data_list": Row(["eval", "{w}/data_list.safetensors"], ["info.data", "--data"]),
    "eval_data_types": Row(["eval", "{w}/data_types.safetensors"],
                           ["data.train_limit", "--data"]),
    "eval_data_name": Row(["eval", "{w}/w.safetensors", "--data", "nowhere"], ["--data"]),
    "eval_no_checkpoint": Row(["eval"], ["checkpoint", "required"]),
    # ----------------------------------------------------------------- report, top level
    "report_list": Row(["report", "{w}/rep_list"], ["stages"]),
    "report_rows": Row(["report", "{w}/rep_rows"], ["stages"]),
    "unknown_command": Row(["trian"], ["invalid choice", "trian"]),
    # ----------------------------------------------------------------- summary / export / bench
    "summary_width_0": Row(["summary", "resnet18", "--width", "0"], ["--width"]),
    "summary_width_neg": Row(["summary", "resnet18", "--width", "-1"], ["--width"],),
    "summary_classes_neg": Row(["summary", "resnet18", "--num-classes", "-1"], ["--num-classes"],),
    "summary_input_0": Row(["summary", "resnet18", "--input-size", "0"], ["--input-size"],),
    "export_width_0": Row(["export", "r2b_resnet18", "--width", "0", "-o", "{w}/fresh.r2b"],
                          ["--width"]),
    "export_width_neg": Row(["export", "r2b_resnet18", "--width", "-1", "-o", "{w}/fresh.r2b"],
                            ["--width"]),
    "export_out_folder": Row(["export", "r2b_resnet18", "--width", "0.0625", "--stem", "cifar",
                              "-o", "{w}/existing"], [" -o", "existing"]),
    "export_out_under_file": Row(["export", "r2b_resnet18", "--width", "0.0625", "--stem",
                                  "cifar", "-o", "{w}/afile/m.r2b"], [" -o", "afile"],),
    "bench_input_8": Row(["bench", "--input-size", "8", "--runs", "1", "--warmup", "0",
                          "--no-profile", "--omp-wait-policy", "inherit", "--omp-dynamic",
                          "inherit"], ["--input-size"]),
    "bench_batch_0": Row(["bench", "--batch", "0", "--omp-wait-policy", "inherit"], ["--batch"],),
    "bench_classes_neg": Row(["bench", "--num-classes", "-1", "--stem", "cifar", "--input-size",
                              "32", "--runs", "1", "--warmup", "0", "--no-profile",
                              "--omp-wait-policy", "inherit", "--omp-dynamic", "inherit"],
                             ["--num-classes"]),
}
# fmt: on


def snapshot(folder: Path, skip_fresh: bool) -> dict[str, str]:
    """sha256 of every file under ``folder`` (links are not followed), by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if skip_fresh and rel.startswith("fresh"):
            continue
        out[rel] = "link" if p.is_symlink() else (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )  # fmt: skip
    return out


def assert_one_line_error(code: int, stderr: str, words: list[str]) -> str:
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


#: Rows that run only through a real process: a DataLoader worker process started inside the
#: test session left the session crashing later (SIGSEGV in a subprocess call of another test,
#: once OpenVINO had run in between); a user's command is its own process anyway.
OWN_PROCESS = ("image_corrupt_in_worker",)


@pytest.mark.parametrize(
    "name", [pytest.param(k, marks=r.marks, id=k) for k, r in ROWS.items() if k not in OWN_PROCESS]
)  # fmt: skip
def test_bad_input_is_one_line_and_changes_nothing(name, world, monkeypatch, capsys, keep_threads):
    row = ROWS[name]
    monkeypatch.chdir(world)  # `r2b train` without --out would make runs/ here
    if row.prepare is not None:
        row.prepare(world, monkeypatch)
    before = snapshot(world, row.trains)
    argv = [a.replace("{w}", str(world)) for a in row.argv]
    try:
        code = main(argv)
        out, err = capsys.readouterr()
        assert_one_line_error(code, err, row.words)
        assert code == 2
        assert snapshot(world, row.trains) == before
        if not row.trains:
            assert not any(world.glob("fresh*")) and not (world / "runs").exists()
    finally:  # this row's own output (or a failed row's stray run) is not the next row's
        for path in [*world.glob("fresh*"), *world.glob("runs")]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_the_table_is_long_enough():
    """The standard asks for a table of at least 30 bad inputs."""
    assert len(ROWS) >= 30


@pytest.mark.parametrize("name", ["train_limit_0", *OWN_PROCESS])
def test_bad_input_through_the_console_entry_point(name, world):
    """The same rows through a real ``python -m r2b.cli`` process (exit status and stderr)."""
    row = ROWS[name]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    argv = [a.replace("{w}", str(world)) for a in row.argv]
    done = subprocess.run([sys.executable, "-m", "r2b.cli", *argv], capture_output=True,
                          text=True, env=env, cwd=world)  # fmt: skip
    assert_one_line_error(done.returncode, done.stderr, row.words)
    assert done.returncode == 2
