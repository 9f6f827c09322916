"""r2b's LCE export against r2b itself in LCE's interpreter: every binary family, both stems,
random weights and BatchNorm statistics (``r2b.lce.check.compare``) -> results/lce_check.json
and .md.

    .venv/bin/python benchmarks/lce_check.py [--inputs 1024] [--width 0.25] [--kernel default]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from common import git_commit, machine  # noqa: E402

from r2b.lce.check import compare, randomize_  # noqa: E402
from r2b.models import create_model, list_models  # noqa: E402

COLUMNS = [
    ("label", "model / stem"), ("inputs", "inputs"), ("top1_agree", "top-1 equal"),
    ("rel_max_diff", "max diff / max logit"), ("inputs_with_flips", "inputs with a flip"),
    ("rel_max_diff_without_flips", "max diff, other inputs"),
    ("flips_end_to_end", "flipped values"), ("first_flip_max_rel", "first flip |y|/max|y|"),
    ("bconv_exact", "binary convs exact"),
    ("r2b_batch1_rel_max_diff", "r2b vs itself: max diff"),
    ("r2b_batch1_inputs_over_1e-4", "r2b vs itself: inputs > 1e-4"),
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1024)
    ap.add_argument("--probe", type=int, default=16, help="inputs with every probe")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--kernel", default="default", choices=["default", "reference", "indirect"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lce_check"))
    args = ap.parse_args()
    cases = []
    for i, name in enumerate(list_models(binary=True)):
        for j, (stem, size) in enumerate([("cifar", 32), ("imagenet", 64)]):
            torch.manual_seed(100 + 10 * i + j)
            model = create_model(name, stem=stem, width=args.width, num_classes=10)
            cases.append({"label": f"{name}/{stem}", "input_size": size,
                          "model": randomize_(model, 100 + 10 * i + j).eval()})  # fmt: skip
    t0 = time.time()
    reports = compare(cases, args.inputs, args.probe, seed=1, kernel=args.kernel, baseline=True)
    result = {
        "command": "python benchmarks/lce_check.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "seconds": round(time.time() - t0, 1),
        "width": args.width,
        "reports": reports,
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in reports:
        cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"`{result['command']}` (commit {result['commit'][:10]}, {result['machine']}, "
            f"load {result['load_average'][0]:.1f}):\n\n" + "\n".join(lines) + "\n")  # fmt: skip
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
