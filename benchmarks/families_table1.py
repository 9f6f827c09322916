"""Every binary family's size and operations at 224x224 beside the paper's Table 1.

    python benchmarks/families_table1.py

Counts each registered binary family (stage ``bnn``, ImageNet stem, width 1, 1000 classes) with
``r2b.summary`` and writes ``benchmarks/results/families_table1.{json,md}`` with the command,
commit and machine. What is counted (``r2b.summary``): binary parameters are the weights of the
16 binary convs; real parameters every other trainable one; BOPs the binary multiply-accumulates;
FLOPs the real multiply-accumulates of convolutions and linear layers (stem, 1x1 downsample
shortcuts, gates, classifier) -- larq's convention. The paper's Table 1 counts some element-wise
work in its FLOPs too, so its FLOPs column is larger; its BOPs count the same thing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from common import provenance

from r2b.models import create_model, list_models
from r2b.summary import summarize

RESULTS = Path(__file__).resolve().parent / "results"

#: Martinez et al. 2020, Table 1: (BOPs, FLOPs) at 224x224.
PAPER_TABLE1 = {
    "BNN": (1.695e9, 1.314e8),
    "XNOR-Net": (1.695e9, 1.333e8),
    "double skip": (1.695e9, 1.351e8),
    "Bi-Real": (1.676e9, 1.544e8),
    "Real-to-Bin": (1.676e9, 1.564e8),
}
#: The paper's row that each r2b family corresponds to (the strong baseline has no row).
PAPER_ROW = {"bireal_resnet18": "Bi-Real", "r2b_resnet18": "Real-to-Bin"}


def count() -> list[dict]:
    """Totals of every registered binary family."""
    rows = []
    for name in list_models(binary=True):
        totals = summarize(create_model(name, stage="bnn"), 224).totals
        rows.append({"model": name, "paper_row": PAPER_ROW.get(name), **asdict(totals)})
    return rows


def markdown(result: dict) -> str:
    lines = [
        "Binary families at 224x224 (ImageNet stem, width 1, 1000 classes, stage bnn), counted by "
        "`r2b.summary`; FLOPs = real multiply-accumulates of convs and linear layers (larq's "
        "convention), the paper's Table 1 counts some element-wise work too.",
        f"Command: `{result['command']}` · commit {result['commit'][:10]}",
        "",
        "| model | binary params | real params | MiB | BOPs | FLOPs | paper row: BOPs / FLOPs |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        paper = result["paper_table1"].get(r["paper_row"] or "")
        ref = f"{r['paper_row']}: {paper[0]:.4g} / {paper[1]:.4g}" if paper else ""
        lines.append(
            f"| {r['model']} | {r['binary_params']:,} | {r['real_params']:,} | "
            f"{r['size_mib']:.2f} | {r['bops']:.4g} | {r['flops']:.4g} | {ref} |"
        )
    others = ", ".join(f"{k} {v[0]:.4g} / {v[1]:.4g}" for k, v in result["paper_table1"].items()
                       if k not in PAPER_ROW.values())  # fmt: skip
    lines += ["", f"Paper rows without an r2b family: {others}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    result = {
        "benchmark": "families_table1",
        **provenance("families_table1.py"),
        "input_size": 224,
        "paper_table1": PAPER_TABLE1,
        "rows": count(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "families_table1.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "families_table1.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
