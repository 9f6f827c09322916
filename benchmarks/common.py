"""Helpers shared by the benchmark scripts: data unpacking, machine and commit descriptions, and
the provenance every results JSON records (command, commit, machine, load average)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHIVE_DIRS = [REPO.parent / "shared" / "data", REPO / ".devdata"]


def unpack_cifar10(target: Path = Path("/tmp/r2b-cifar10")) -> Path:
    """Unpack the CIFAR-10 JPEG archives (../shared/data, or .devdata/ on a device) once.

    Returns the folder holding ``train/`` and ``test/`` class folders.
    """
    root = target / "cifar10"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    for folder in ARCHIVE_DIRS:
        archives = sorted(folder.glob("cifar10-*.tar.gz"))
        if archives:
            break
    else:
        where = " or ".join(str(d) for d in ARCHIVE_DIRS)
        sys.exit(f"error: no cifar10-*.tar.gz in {where}; pass --data DIR (train/ and test/)")
    target.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return root


def machine() -> str:
    """CPU model and torch threads, plus the GPU when there is one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def git_commit() -> str:
    """The checked-out commit, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def provenance(script: str) -> dict:
    """What every results JSON records: the command that wrote it (``python benchmarks/<script>``
    and this process's arguments), the commit, the machine and the 1/5/15-minute load average."""
    return {
        "command": shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "commit": git_commit(),
        "machine": machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
