"""The CIFAR-10 recipe runs end to end on the real CIFAR-10 JPEG copy in ../shared/data."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ARCHIVES = sorted(SHARED.glob("cifar10-*.tar.gz"))

pytestmark = pytest.mark.skipif(
    not ARCHIVES, reason=f"no CIFAR-10 archives in {SHARED} (only CI and dev machines have them)"
)


def test_cifar10_r2b_recipe_on_shared_data(tmp_path):
    for archive in ARCHIVES:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path, filter="data")
    out = tmp_path / "run"
    sets = [
        f"data.root={tmp_path / 'cifar10'}",
        "data.train_limit=256",
        "data.test_limit=200",
        "stages.*.epochs=1",
        "stages.*.batch_size=64",
        "stages.*.model.width=0.125",
        "runtime.progress=false",
    ]
    cmd = [sys.executable, "-m", "r2b.cli", "train", "--config", "configs/cifar10/r2b.yaml"]
    cmd += [a for s in sets for a in ("--set", s)] + ["--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["teacher", "fp", "ban", "bnn"]
    assert results["data"]["train_images"] == 256 and results["data"]["test_images"] == 200
    assert all(0 <= s["top1"] <= 100 for s in results["stages"])
    assert (out / "report.md").is_file()
