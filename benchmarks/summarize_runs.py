"""Table of per-stage accuracy of one or more run folders, finished or not.

    python benchmarks/summarize_runs.py RUN [RUN ...] [--md OUT.md]

Reads each stage's ``metrics.csv`` (so stages cut short count too) and prints a Markdown table:
run, stage, epochs done, last-epoch test top-1/top-5, seconds (the stage's training time up to its
last finished epoch: ``time_s`` is cumulative). For runs cut off by a time limit
(e.g. a GPU lease), this is how their partial figures are reported.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

from r2b.train.run_folder import RunFolder


def stage_rows(run: Path) -> list[dict]:
    """One row per stage of the run's config that has at least one finished epoch."""
    folder = RunFolder(run)
    cfg = yaml.safe_load(folder.config.read_text())
    rows = []
    for stage in cfg["stages"]:
        metrics = folder.stage(stage["name"]).metrics
        if not metrics.is_file():
            continue
        epochs = list(csv.DictReader(metrics.open()))
        if not epochs:
            continue
        last = epochs[-1]
        rows.append({
            "run": run.name,
            "stage": stage["name"],
            "att": stage["loss"]["att"],
            "epochs": f"{len(epochs)}/{stage['epochs']}",
            "top1": float(last["test_top1"]),
            "top5": float(last["test_top5"]),
            "seconds": float(last["time_s"]),  # time_s is the stage's training time so far
        })  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| run | stage | attention weight | epochs done | top-1 | top-5 | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['stage']} | {r['att']:g} | {r['epochs']} | {r['top1']:.2f} | "
            f"{r['top5']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--md", type=Path, default=None, help="also write the table to this file")
    args = p.parse_args()
    text = markdown([row for run in args.runs for row in stage_rows(run)])
    print(text, end="")
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
