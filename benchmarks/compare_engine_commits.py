"""The packed engine of two commits on the same network, in one sitting.

    python benchmarks/compare_engine_commits.py OLD_COMMIT [NEW_COMMIT] [--rounds 5] [--runs 30]

Checks both commits out as git worktrees under /tmp, then alternates them, each round one process
per commit (``PYTHONPATH`` = that worktree's ``src``) timing the packed Real-to-Bin ImageNet-stem
network (random weights, seed 0) at batch 1 and 8, 224x224, on the threads given; with
``--float-layers int8`` its int8 engine (calibrated on 4 random batches: speed does not depend on
the values). Reports the
median over rounds of each round's median, the new/old ratio, and the load average before and
after; writes ``benchmarks/results/engine_commits_<tag>.{json,md}``. NEW_COMMIT defaults to the
working tree (``HEAD`` plus what is not committed is NOT included: commit first).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from common import REPO, git_commit, machine

RESULTS = Path(__file__).resolve().parent / "results"

#: What one process runs: build, pack, warm up, time; prints one JSON line.
_TIMER = r"""
import json, sys, time, statistics, torch
from r2b.models import create_model
from r2b.packed import to_packed
batch, runs, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
float_layers = sys.argv[4]
torch.set_num_threads(threads)
torch.manual_seed(0)
model = create_model("r2b_resnet18", stem="imagenet", stage="bnn").eval()
if float_layers == "int8":
    calibration = [torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(i))
                   for i in range(4)]
    packed = to_packed(model, "int8", calibration)
else:
    packed = to_packed(model)
x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
for _ in range(5):
    packed(x)
times = []
for _ in range(runs):
    t = time.perf_counter(); packed(x); times.append(time.perf_counter() - t)
print(json.dumps({"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}))
"""


def worktree(commit: str) -> Path:
    """A detached worktree of ``commit`` under /tmp (made once)."""
    path = Path("/tmp") / f"r2b-worktree-{commit[:12]}"
    if not path.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
    return path


def time_once(tree: Path, batch: int, runs: int, threads: int, float_layers: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), OMP_WAIT_POLICY="active")
    argv = [str(batch), str(runs), str(threads), float_layers]
    out = subprocess.run([sys.executable, "-c", _TIMER, *argv], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new", nargs="?", default="HEAD")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tag", default="r2b_imagenet")
    p.add_argument("--float-layers", choices=["float", "int8"], default="float")
    args = p.parse_args()
    commits = {
        "old": subprocess.run(["git", "rev-parse", args.old], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip(),
        "new": subprocess.run(["git", "rev-parse", args.new], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip(),
    }  # fmt: skip
    trees = {k: worktree(c) for k, c in commits.items()}
    load_before = os.getloadavg()
    rounds: dict = {b: {"old": [], "new": []} for b in args.batches}
    for r in range(args.rounds):
        for batch in args.batches:
            for which in ("old", "new") if r % 2 == 0 else ("new", "old"):
                timed = time_once(trees[which], batch, args.runs, args.threads, args.float_layers)
                ms = timed["median_ms"]
                rounds[batch][which].append(ms)
                print(f"round {r} batch {batch} {which}: {ms:.2f} ms", flush=True)
    rows = []
    for batch, by in rounds.items():
        old, new = statistics.median(by["old"]), statistics.median(by["new"])
        rows.append({"batch": batch, "old_ms": old, "new_ms": new, "new_over_old": new / old,
                     "rounds_ms": by})  # fmt: skip
    result = {
        "benchmark": "engine_commits",
        "command": shlex.join(["python", "benchmarks/compare_engine_commits.py", *sys.argv[1:]]),
        "commit": git_commit(),
        "commits": commits,
        "machine": machine(),
        "threads": args.threads,
        "omp_wait_policy": "active",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "network": "r2b_resnet18, ImageNet stem, 224x224, random weights"
        + (", int8 float layers" if args.float_layers == "int8" else ""),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"engine_commits_{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Packed engine, {result['network']}, {args.threads} threads, OMP_WAIT_POLICY=active; "
        f"medians of {args.rounds} alternating rounds of {args.runs} runs.",
        f"Command: `{result['command']}` · old {commits['old'][:10]} · new {commits['new'][:10]}"
        f" · load {load_before[0]:.2f} -> {result['load_average_after'][0]:.2f}",
        "",
        "| batch | old ms | new ms | new / old |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['batch']} | {r['old_ms']:.2f} | {r['new_ms']:.2f} | {r['new_over_old']:.3f} |"
              for r in rows]  # fmt: skip
    (RESULTS / f"engine_commits_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
