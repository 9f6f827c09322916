"""Packed engine vs PyTorch float ResNet-18: the configurations of the README, written to results/.

Runs ``r2b.packed.bench`` (the code behind ``r2b bench``) for

- Real-to-Binary ResNet-18, ImageNet stem, 224 x 224, batch 1 and 8;
- Real-to-Binary ResNet-18, CIFAR stem, 32 x 32 (100 classes), batch 1 and 8;
- the strong baseline, ImageNet stem, 224 x 224, batch 1;

each with random weights (speed does not depend on them), the same thread count for both networks,
alternating timed runs, medians. Writes ``results/packed_<tag>.json`` (everything, per-layer
profiles included) and ``results/packed_<tag>.md`` (the table for the README).

    python benchmarks/bench_packed.py --threads 2 --tag epyc2c
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

CONFIGS = [
    ("r2b_resnet18", "imagenet", 1000, 224, 1),
    ("r2b_resnet18", "imagenet", 1000, 224, 8),
    ("r2b_resnet18", "cifar", 100, 32, 1),
    ("r2b_resnet18", "cifar", 100, 32, 8),
    ("sb_resnet18", "imagenet", 1000, 224, 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tag", default="local", help="results/packed_<tag>.json|md")
    parser.add_argument("--quick", action="store_true", help="first configuration only")
    parser.add_argument(
        "--omp-wait-policy", default="passive", choices=["passive", "active", "inherit"],
        help="OMP_WAIT_POLICY for both networks (set before PyTorch loads OpenMP)",
    )  # fmt: skip
    parser.add_argument(
        "--omp-dynamic", default="true", choices=["true", "false", "inherit"],
        help="OMP_DYNAMIC for both networks (set before PyTorch loads OpenMP)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.omp_wait_policy != "inherit":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    if args.omp_dynamic != "inherit":
        os.environ["OMP_DYNAMIC"] = args.omp_dynamic.upper()
    import torch
    from common import provenance

    from r2b.models import create_model
    from r2b.packed import to_packed
    from r2b.packed.bench import benchmark, machine, peak_gbmacs, profile

    torch.set_num_threads(args.threads)
    results = []
    for name, stem, classes, size, batch in CONFIGS[:1] if args.quick else CONFIGS:
        torch.manual_seed(0)
        packed = to_packed(create_model(name, stem=stem, num_classes=classes).eval())
        t0 = time.time()
        res = benchmark(packed, batch, size, args.threads, runs=args.runs)
        res["profile"] = profile(packed, batch, size)
        res["seconds"] = time.time() - t0
        results.append(res)
        print(
            f"{name:13s} {stem:8s} {size:3d}px batch {batch}: packed {res['packed_ms']:8.2f} ms"
            f"  float {res['float_ms']:8.2f} ms  speedup {res['speedup']:5.2f}x"
            f"  (vs channels-last float {res['speedup_vs_channels_last']:.2f}x)",
            flush=True,
        )
    peak = peak_gbmacs(args.threads)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    record = {
        **provenance("bench_packed.py"), "machine": machine(), "threads": args.threads,
        "peak": peak, "results": results,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "omp_dynamic": os.environ.get("OMP_DYNAMIC", "(default)"),
        "load_average_15min": os.getloadavg()[2],
    }  # fmt: skip
    (out / f"packed_{args.tag}.json").write_text(json.dumps(record, indent=1, default=float))
    (out / f"packed_{args.tag}.md").write_text(markdown(record))
    print(markdown(record))


def markdown(record: dict) -> str:
    """The results table (and the binary-conv throughput) as Markdown."""
    m = record["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['popcount_isa']}; torch {m['torch']}; "
        f"{record['threads']} threads for both networks, OMP_WAIT_POLICY="
        f"{record.get('omp_wait_policy', '(default)')}, OMP_DYNAMIC="
        f"{record.get('omp_dynamic', '(default)')} (15-minute load average "
        f"{record.get('load_average_15min', float('nan')):.1f}); medians of alternating runs.",
        "",
        "| model | input | batch | packed ms | float ms | speedup | vs channels-last float |"
        " binary convs G bMAC/s | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        a = r["model"]
        lines.append(
            f"| {a['name']} ({a.get('stem')}) | {r['input_size']}² | {r['batch']} |"
            f" {r['packed_ms']:.2f} | {r['float_ms']:.2f} | **{r['speedup']:.2f}x** |"
            f" {r['speedup_vs_channels_last']:.2f}x |"
            f" {r['profile']['binary_gbmacs_per_s']:.0f} | {_load(r)} |"
        )
    p = record["peak"]
    nominal = f"{p['nominal']:.0f}" if p["nominal"] else "?"
    lines += [
        "",
        f"Peak binary-MAC rate with {record['threads']} threads: nominal {nominal} G/s "
        f"(clock x {m['popcount_bits']} bits per cycle per thread), measured in-cache "
        f"{p['measured']:.0f} G/s.",
    ]
    return "\n".join(lines) + "\n"


def _load(result: dict) -> str:
    values = [v for v in result.get("load_average", []) if v is not None]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "?"


if __name__ == "__main__":
    main()
