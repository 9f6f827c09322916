"""CPU-scale evidence: the paper's central claims on real CIFAR-10, from one command.

    python benchmarks/run_c10_mini.py                 # 2 seeds, CPU, resumes where it stopped
    python benchmarks/run_c10_mini.py --parallel 2    # seeds side by side (a GPU machine)
    python benchmarks/run_c10_mini.py --pipeline families   # the Bi-Real Net and ReActNet rows

Each seed is one ``r2b train`` pipeline (benchmarks/c10_mini/pipeline.yaml) in
``--runs/seed<S>``; a killed benchmark continues with ``--resume`` on the next call, stage by
stage and epoch by epoch. When every seed has finished it writes, from the runs' results.json:

- ``benchmarks/results/c10_mini.json``  per row, per stage, per seed: top-1/top-5, seconds, with
  the exact command, git commit and machine;
- ``benchmarks/results/c10_mini.md``    the table (mean +- half-range over seeds) beside the
  paper's CIFAR-100 numbers, with each binary row's gap to the real net;
- ``benchmarks/results/c10_mini.png``   per-stage accuracies of every row.

Data: ``--data`` is a folder with train/ and test/ class folders; by default the CIFAR-10 JPEG
archives of ../shared/data are unpacked into /tmp/r2b-cifar10 once (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import git_commit, machine, unpack_cifar10

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"

#: Table rows: (label, stages in order, paper CIFAR-100 stage-1 -> stage-2 top-1 of Table 3).
ROWS = [
    ("real ResNet-18", ["teacher"], (78.3,)),
    ("strong baseline (SB)", ["sb_ban", "sb_bnn"], (72.1, 69.6)),
    ("SB, compute-matched (15 epochs)", ["sb15_ban", "sb15_bnn"], ()),
    ("SB + attention + KD", ["akd_ban", "akd_bnn"], (75.4, 73.9)),
    ("SB + progressive teacher-student", ["pts_fp", "pts_ban", "pts_bnn"], (75.7, 74.6)),
    ("Real-to-Bin", ["r2b_fp", "r2b_ban", "r2b_bnn"], (76.5, 76.2)),
]

#: The other binary families (issue 11), one pipeline with its own teacher (same seed and recipe):
#: no CIFAR-100 figures in the Real-to-Bin paper; their ImageNet top-1 are in the README.
FAMILY_ROWS = [
    ("real ResNet-18", ["teacher"], (78.3,)),
    ("Bi-Real Net", ["bireal_fp", "bireal_bnn"], ()),
    ("ReActNet", ["react_ban", "react_bnn"], ()),
]

#: The converged protocol (issue 12): 500 images a class, N = 30 epochs a stage, SB also at 2N.
CONVERGED_ROWS = [
    ("real ResNet-18", ["teacher"], (78.3,)),
    ("strong baseline (SB), N epochs", ["sb_ban", "sb_bnn"], (72.1, 69.6)),
    ("strong baseline (SB), 2N epochs", ["sb2n_ban", "sb2n_bnn"], ()),
    ("Real-to-Bin", ["r2b_fp", "r2b_ban", "r2b_bnn"], (76.5, 76.2)),
]

#: ``--pipeline``: (config, rows, results name).
PIPELINES = {
    "table3": (HERE / "c10_mini" / "pipeline.yaml", ROWS, "c10_mini"),
    "families": (HERE / "c10_mini" / "families.yaml", FAMILY_ROWS, "c10_mini_families"),
    "converged": (HERE / "c10_mini" / "converged.yaml", CONVERGED_ROWS, "c10_converged"),
}


def train_command(
    seed: int, run_dir: Path, data: Path, extra: list[str], config: Path = PIPELINES["table3"][0]
) -> list[str]:
    """The ``r2b train`` call for one seed: a new run, or ``--resume`` of a started one."""
    cmd = [sys.executable, "-m", "r2b.cli", "train", "--out", str(run_dir)]
    if (run_dir / "config.yaml").is_file():
        return cmd + ["--resume"]
    sets = [f"seed={seed}", f"data.root={data}", *extra]
    return cmd + ["--config", str(config)] + [a for s in sets for a in ("--set", s)]


def run_seeds(args, data: Path) -> None:
    """Train every seed, ``args.parallel`` at a time; each logs to ``seed<S>.log``."""
    pending = list(args.seeds)
    running: list[tuple[int, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            run_dir = args.runs / f"seed{seed}"
            cmd = train_command(seed, run_dir, data, args.set, args.config)
            print("$", shlex.join(cmd), flush=True)
            log = open(args.runs / f"seed{seed}.log", "a")
            running.append((seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for seed, proc in list(running):
            if proc.poll() is not None:
                running.remove((seed, proc))
                print(f"seed {seed}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    sys.exit(f"error: seed {seed} failed; see {args.runs}/seed{seed}.log")


def collect(args) -> dict:
    """Per row, per stage, per seed results from the runs' results.json files."""
    per_seed = {}
    for seed in args.seeds:
        res = json.loads((args.runs / f"seed{seed}" / "results.json").read_text())
        per_seed[seed] = {s["name"]: s for s in res["stages"]}
    rows = []
    for label, stages, paper in args.rows:
        rows.append({
            "row": label,
            "paper_cifar100_top1": list(paper),
            "stages": [
                {
                    "stage": name,
                    "variant": per_seed[args.seeds[0]][name].get("variant"),
                    "top1": [per_seed[s][name]["top1"] for s in args.seeds],
                    "top5": [per_seed[s][name]["top5"] for s in args.seeds],
                    "best_top1": [per_seed[s][name]["best_top1"] for s in args.seeds],
                    "seconds": [per_seed[s][name]["seconds"] for s in args.seeds],
                }
                for name in stages
            ],
        })  # fmt: skip
    return {
        "benchmark": "c10_mini",
        "config": str(args.config.relative_to(REPO)),
        "command": args.command,
        "commit": git_commit(),
        "machine": machine(),
        "seeds": args.seeds,
        "metric": "top-1/top-5 (%) on the CIFAR-10 test split after each stage's last epoch",
        "device": json.loads((args.runs / f"seed{args.seeds[0]}" / "results.json").read_text()).get(
            "device"
        ),
        "rows": rows,
    }


def _mean_spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.2f} ± {half:.2f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _training_seconds(result: dict) -> list[float]:
    """Each seed's training time: the sum of its stages' seconds."""
    stages = [s for row in result["rows"] for s in row["stages"]]
    return [sum(s["seconds"][i] for s in stages) for i in range(len(result["seeds"]))]


def markdown(result: dict) -> str:
    """The results table: every stage's top-1, the final stage's gap to the real net."""
    real = _mean(result["rows"][0]["stages"][0]["top1"])
    lines = [
        f"CIFAR-10 (35k train JPEGs, full test split), CIFAR-stem ResNet-18 width 0.25, "
        f"seeds {result['seeds']}; top-1 % after the last epoch, mean ± half-range.",
        f"Command: `{result['command']}` · commit {result['commit'][:10]} · {result['machine']}",
        "",
        "| row | fp | ban | bnn (final) | final − real | paper C-100 (stage 1 → 2) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cells = {s["variant"]: _mean_spread(s["top1"]) for s in row["stages"]}
        final = _mean(row["stages"][-1]["top1"])
        paper = " → ".join(f"{p:.1f}" for p in row["paper_cifar100_top1"]) or "—"
        if row["stages"][0]["variant"] == "real":
            lines.append(f"| {row['row']} | {cells['real']} (real) | | | | {paper} |")
            continue
        lines.append(
            f"| {row['row']} | {cells.get('fp', '')} | {cells.get('ban', '')} | "
            f"{cells.get('bnn', '')} | {final - real:+.2f} | {paper} |"
        )
    by_row = {r["row"]: _mean(r["stages"][-1]["top1"]) for r in result["rows"]}
    if "Real-to-Bin" in by_row and "strong baseline (SB)" in by_row:
        gap = by_row["Real-to-Bin"] - by_row["strong baseline (SB)"]
        lines += ["", f"Real-to-Bin bnn − strong baseline bnn: **{gap:+.2f}** points of top-1."]
    hours = [h / 3600 for h in _training_seconds(result)]
    lines.append(
        "Training time per seed (sum of its stages, seeds side by side): "
        + ", ".join(f"{h:.2f} h" for h in hours)
        + f" on {result['device']}."
    )
    return "\n".join(lines) + "\n"


def plot(result: dict, out_png: Path) -> None:
    """Per-stage top-1 (mean, with the seeds' range) of every row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    order = {"real": 0, "fp": 1, "ban": 2, "bnn": 3}
    for row in result["rows"]:
        xs = [order[s["variant"]] for s in row["stages"]]
        means = [_mean(s["top1"]) for s in row["stages"]]
        lows = [m - min(s["top1"]) for m, s in zip(means, row["stages"])]
        highs = [max(s["top1"]) - m for m, s in zip(means, row["stages"])]
        ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=3, label=row["row"])
    ax.set_xticks(range(4), ["real", "fp (tanh)", "ban", "bnn"])
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Per-stage accuracy, ResNet-18 width 0.25 (mean and range over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="table3",
                   help="table3: the paper's Table 3 rows (default); families: Bi-Real, ReActNet")
    p.add_argument("--runs", type=Path, default=None, help="run folders (benchmarks/runs/NAME)")
    p.add_argument("--data", type=Path, default=None, help="folder with train/ and test/")
    p.add_argument("--parallel", type=int, default=1, help="seeds trained at the same time")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    args.command = shlex.join(["python", "benchmarks/run_c10_mini.py", *sys.argv[1:]])
    args.config, args.rows, name = PIPELINES[args.pipeline]
    args.runs = args.runs or REPO / "benchmarks" / "runs" / name
    data = args.data or unpack_cifar10()
    args.runs.mkdir(parents=True, exist_ok=True)
    run_seeds(args, data)
    result = collect(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / f"{name}.md").write_text(markdown(result))
    plot(result, args.results / f"{name}.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
