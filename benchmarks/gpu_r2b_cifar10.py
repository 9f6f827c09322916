"""Real-to-Bin at full width on CIFAR-10 on one GPU, in about 8 minutes: images/s and accuracy.

    python benchmarks/gpu_r2b_cifar10.py                  # 4 stages x --epochs, bf16 on the GPU
    python benchmarks/gpu_r2b_cifar10.py --epochs 4 --out /tmp/run

Runs ``configs/cifar10/r2b.yaml`` (real ResNet-18 -> fp -> ban -> bnn, width 1.0) with a schedule
short enough for the time budget: ``--epochs`` per stage, cosine decay, 1 warm-up epoch,
crop + flip, no mix-up, batch ``--batch``. Writes ``gpu_r2b_cifar10.json`` and ``.md`` under
``--results``: per stage top-1/top-5, seconds, training images/s; the device, command, commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

from common import REPO, provenance, unpack_cifar10

from r2b.train.run_folder import RunFolder, StageFolder

CONFIG = REPO / "configs" / "cifar10" / "r2b.yaml"


def overrides(args, data: Path) -> list[str]:
    sets = [
        f"data.root={data}",
        f"stages.*.epochs={args.epochs}",
        f"stages.*.batch_size={args.batch}",
        "stages.*.schedule.kind=cosine",
        "stages.*.schedule.milestones=[]",
        "stages.*.augment.ops=[crop, flip]",
        "stages.*.augment.mixup=0.0",
        "stages.teacher.schedule.warmup_epochs=1",
        "stages.fp.schedule.warmup_epochs=1",
        "stages.ban.schedule.warmup_epochs=1",
        "data.eval_batch_size=2000",
        "runtime.progress=false",
    ]
    return sets + args.set


def train_images_per_s(stage: StageFolder, n_train: int) -> float | None:
    """Images/s of a stage from its metrics.csv: the sum of the epochs' ``train_s`` when logged,
    else the last row's ``time_s`` (the stage's running total, evaluation included: a lower
    bound). Before this fix the running totals were summed, understating images/s ~(E+1)/2x."""
    rows = list(csv.DictReader(stage.metrics.open()))
    if rows and rows[0].get("train_s"):
        seconds = sum(float(r["train_s"]) for r in rows if r.get("train_s"))
    else:
        seconds = float(rows[-1]["time_s"]) if rows and rows[-1].get("time_s") else 0.0
    return n_train * len(rows) / seconds if seconds else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("/tmp/r2b-gpu-run"))
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    data = args.data or unpack_cifar10()
    cmd = [
        sys.executable,
        "-m",
        "r2b.cli",
        "train",
        "--config",
        str(CONFIG),
        "--out",
        str(args.out),
    ]
    cmd += [a for s in overrides(args, data) for a in ("--set", s)]
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    run = RunFolder(args.out)
    res = json.loads(run.results.read_text())
    n_train = res["data"]["train_images"]
    stages = []
    for s in res["stages"]:
        ips = train_images_per_s(run.stage(s["dir"]), n_train)
        stages.append({k: s[k] for k in ("name", "variant", "epochs", "top1", "top5", "seconds")})
        stages[-1]["train_images_per_s"] = round(ips, 1) if ips else None
    record = {
        "benchmark": "gpu_r2b_cifar10",
        **provenance("gpu_r2b_cifar10.py"),
        "device": res.get("device"),
        "train_images": n_train,
        "total_seconds": res.get("total_time_s"),
        "stages": stages,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu_r2b_cifar10.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"Real-to-Bin, CIFAR-10, width 1.0, {args.epochs} epochs/stage, batch {args.batch}; "
        f"{record['machine']}; total {record['total_seconds']} s",
        f"Command: `{record['command']}` · commit {record['commit'][:10]}",
        "",
        "| stage | variant | top-1 | top-5 | seconds | train img/s |",
        "|---|---|---|---|---|---|",
    ]
    for s in stages:
        lines.append(
            f"| {s['name']} | {s['variant']} | {s['top1']:.2f} | {s['top5']:.2f} | "
            f"{s['seconds']:.0f} | {s['train_images_per_s']} |"
        )
    (args.results / "gpu_r2b_cifar10.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
