"""Latency of r2b's LCE export of the ImageNet Real-to-Binary net (224x224, batch 1) in LCE's
interpreter on this machine, beside LCE's own conversion of larq-zoo's RealToBinaryNet when
given (``--larq``, made by benchmarks/lce_ops.py step 1) -> results/lce_latency.json.

x86 runs LCE's portable kernels: these figures are for the record, not for ARM. Each variant
is timed ``--runs`` times after ``--warmup`` runs, on one random input; the load average
before and after is recorded (other jobs on a shared machine slow every figure).

    .venv/bin/python benchmarks/lce_latency.py --larq /tmp/lce-larq-r2b.tflite [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from common import git_commit, machine  # noqa: E402

from r2b.lce import export, runtime  # noqa: E402
from r2b.lce.check import randomize_  # noqa: E402
from r2b.models import create_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq", metavar="TFLITE", help="LCE's own conversion to time beside ours")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--kernels", default="default,indirect")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lce_latency.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = randomize_(create_model("r2b_resnet18", stem="imagenet"), 0).eval()
    ours = "/tmp/lce-r2b-export.tflite"
    info = export(model, ours, input_size=224)
    files = {"r2b export": ours} | ({"LCE conversion of larq-zoo": args.larq} if args.larq else {})
    jobs, labels = [], []
    for label, path in files.items():
        for kernel in args.kernels.split(","):
            for t in args.threads.split(","):
                jobs.append({"tflite": path, "threads": int(t), "kernel": kernel,
                             "time_runs": args.runs, "warmup": args.warmup})  # fmt: skip
                labels.append(label)
    load_before = os.getloadavg()
    reports = runtime.run(jobs)
    load_after = os.getloadavg()
    rows = []
    for label, job, rep in zip(labels, jobs, reports):
        ms = [s * 1e3 for s in rep["seconds"]]
        rows.append({"file": label, "kernel": job["kernel"], "threads": job["threads"],
                     "median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2),
                     "runs_ms": [round(v, 2) for v in ms]})  # fmt: skip
    result = {
        "command": "python benchmarks/lce_latency.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": f"{machine()}; {os.cpu_count()} CPUs, {platform.platform()}",
        "runtime": f"larq-compute-engine {runtime.LCE_VERSION} interpreter (x86: portable "
        "kernels), batch 1, 224x224",
        "load_average_before": load_before,
        "load_average_after": load_after,
        "r2b_file": {"bytes": info["bytes"], "ops": info["ops"]},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(f"{r['file']:28s} {r['kernel']:9s} t={r['threads']}  median {r['median_ms']:7.1f} ms"
              f"  min {r['min_ms']:7.1f} ms")  # fmt: skip
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")


if __name__ == "__main__":
    main()
