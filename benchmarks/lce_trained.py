"""A trained bnn checkpoint (made by ``r2b train``) exported to LCE and run in LCE's interpreter
on the embedded CIFAR-10 test split (1,000 images): top-1 of LCE and r2b per image, both
accuracies, the flips -> results/lce_trained.json.

    .venv/bin/r2b train --out /tmp/r2b-quick          # the quick recipe (CPU, ~4-5 min)
    .venv/bin/python benchmarks/lce_trained.py /tmp/r2b-quick/bnn/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from common import git_commit, machine  # noqa: E402

from r2b.data.default import read_default  # noqa: E402
from r2b.lce.check import compare  # noqa: E402
from r2b.train.checkpoint import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--note", default="", help="where the checkpoint comes from")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lce_trained.json"))
    args = ap.parse_args()
    model, _ = load_model(args.checkpoint)
    test = read_default("test")
    mean = np.array(test.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(test.std, np.float32).reshape(1, 3, 1, 1)
    import torch

    x = (test.images.float() / 255 - torch.from_numpy(mean)) / torch.from_numpy(std)
    case = {"label": f"{model.arch.get('name')} {args.checkpoint}", "model": model,
            "input_size": x.shape[-1], "inputs": x, "keep_logits": True}  # fmt: skip
    (report,) = compare([case], n_probe=16)
    labels = test.targets.numpy()
    report["accuracy_lce"] = float((report.pop("logits").argmax(1) == labels).mean())
    report["accuracy_r2b"] = float((report.pop("r2b_logits").argmax(1) == labels).mean())
    result = {
        "command": "python benchmarks/lce_trained.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "arch": model.arch,
        "checkpoint_note": args.note,
        "report": report,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
