"""Training-step speed on CPU: float vs binary variants of the same network, same process.

Times full training steps (forward, cross-entropy, backward, Adam step) of one network in several
variants on the same batch, interleaved round-robin so that machine noise hits every variant alike,
and reports per variant the median step time (wall clock, and the process CPU time, which leaves
out the time the process waited for a core on a shared machine), images/s from the wall median,
and the binary/float step-time ratio two ways: ratio of the medians, and the median over rounds
of the ratio within a round (paired: robust to drifts of the machine's load).

    python benchmarks/bench_train_speed.py                      # CIFAR stem, width 0.25, 32x32
    python benchmarks/bench_train_speed.py --stem imagenet --width 1 --num-classes 100 \
        --batch 64 --variants float,ban,bnn,teacher              # the larq peer configuration

"float" is the same architecture with no quantizers (identity activations, real weights, zero
padding); "fp", "ban", "bnn" are the training steps of docs/method.md sec. 2; "teacher" is the real
ResNet-18 of the same stem and width. The OpenMP wait policy is set explicitly (``active`` by
default: idle threads spin; ``passive``: they sleep and take tens of microseconds to wake for each
parallel op, which cost 30-45% of the step on an idle machine here; left unset, libgomp's
spin-then-sleep default made 2-thread steps 10-50x slower on these shared cores).
``--adam fused`` uses PyTorch's fused CPU Adam (one kernel per tensor instead of about ten).
``--compile`` wraps every model in ``torch.compile`` and reports the compile time (the first
steps) separately; ``--channels-last`` converts models and batch to channels-last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from common import provenance

from r2b.models import create_model


def build(variant: str, args) -> torch.nn.Module:
    """The model of one variant (see the module docstring)."""
    common = dict(num_classes=args.num_classes, stem=args.stem, width=args.width)
    if variant == "teacher":
        return create_model("resnet18", **common)
    if variant == "float":
        model = create_model(args.model, stage="ban", **common)
        for conv in model.binary_convs():
            conv._q_input, conv.input_quantizer = None, None
        return model
    return create_model(args.model, stage=variant, **common)


def cpu_model() -> str:
    """``lscpu``'s model name, else the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def time_steps(models: dict, args) -> tuple[dict, dict, dict]:
    """Per model: wall and CPU seconds of each timed step, and the seconds of the warm-up steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g)
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.adam]
    opts = {k: torch.optim.Adam(m.parameters(), 1e-3, **impl) for k, m in models.items()}
    wall = {k: [] for k in models}
    cpu = {k: [] for k in models}
    warm = {k: 0.0 for k in models}
    for i in range(args.warmup + args.steps):
        for name, model in models.items():
            t0, c0 = time.perf_counter(), time.process_time()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup:
                wall[name].append(dt)
                cpu[name].append(dc)
            else:
                warm[name] += dt
    return wall, cpu, warm


def summarize(wall: dict, cpu: dict, warm: dict, args) -> dict:
    """Medians, images/s and ratios to the base variant (float if timed, else the first)."""
    base = "float" if "float" in wall else next(iter(wall))
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}

    def paired(times: dict) -> dict:
        return {
            k: statistics.median(a / b for a, b in zip(v, times[base])) for k, v in times.items()
        }

    return {
        "base": base,
        "images_per_s": {k: args.batch / t for k, t in med.items()},
        "step_ms": {k: 1e3 * t for k, t in med.items()},
        "step_ms_min": {k: 1e3 * min(v) for k, v in wall.items()},
        "cpu_ms": {k: 1e3 * t for k, t in med_cpu.items()},
        "ratio": {k: t / med[base] for k, t in med.items()},
        "ratio_paired": paired(wall),
        "ratio_cpu": {k: t / med_cpu[base] for k, t in med_cpu.items()},
        "ratio_cpu_paired": paired(cpu),
        "warmup_s": warm,
        "wall_ms_all": {k: [round(1e3 * t, 2) for t in v] for k, v in wall.items()},
    }


def markdown(result: dict) -> str:
    """A Markdown table of one run."""
    c, r = result["config"], result["results"]
    lines = [
        f"{c['model']}, {c['stem']} stem, width {c['width']}, {c['size']}x{c['size']}, "
        f"{c['num_classes']} classes, batch {c['batch']}, {c['threads']} threads, "
        f"{c['steps']} timed steps after {c['warmup']} warm-up, Adam {c['adam']}, "
        f"{result['machine']}, OMP_WAIT_POLICY={result['omp_wait_policy']}, "
        f"torch {result['torch']}; load average {result['load_before']} before, "
        f"{result['load_after']} after",
        "",
        f"| variant | images/s | step ms (median) | CPU ms (median) | x {r['base']} "
        "(medians) | x (paired) | x CPU (paired) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in r["images_per_s"]:
        lines.append(
            f"| {k} | {r['images_per_s'][k]:.1f} | {r['step_ms'][k]:.1f} | {r['cpu_ms'][k]:.1f} "
            f"| {r['ratio'][k]:.3f} | {r['ratio_paired'][k]:.3f} | {r['ratio_cpu_paired'][k]:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="r2b_resnet18")
    p.add_argument("--stem", default="cifar")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", default="float,ban,bnn")
    p.add_argument(
        "--adam",
        default="default",
        choices=("default", "foreach", "fused"),
        help="torch.optim.Adam implementation (default: PyTorch's choice, a loop on CPU)",
    )
    p.add_argument(
        "--omp-wait-policy",
        default="active",
        choices=("active", "passive", "inherit"),
        help="OpenMP idle threads spin (active) or sleep (passive); inherit keeps the environment "
        "(unset, libgomp's default spin-then-sleep was 10-50x slower on shared cores here). Set "
        "by re-running the script.",
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--md", default=None, help="also write a Markdown table to this file")
    args = p.parse_args(argv)
    policy = args.omp_wait_policy
    if policy != "inherit" and os.environ.get("OMP_WAIT_POLICY", "").lower() != policy:
        # the OpenMP runtime read the policy when torch was imported: run again with it set
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    models = {}
    for v in args.variants.split(","):
        m = build(v, args).train()
        if args.channels_last:
            m = m.to(memory_format=torch.channels_last)
        models[v] = torch.compile(m) if args.compile else m
    wall, cpu, warm = time_steps(models, args)
    result = {
        **{k: v for k, v in provenance("bench_train_speed.py").items() if k != "machine"},
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "md")},
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_before": load_before,
        "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "results": summarize(wall, cpu, warm, args),
    }
    r = result["results"]
    for k in r["step_ms"]:
        print(
            f"{k:>8}: {r['step_ms'][k]:8.1f} ms/step {r['images_per_s'][k]:8.1f} img/s  "
            f"x{r['ratio'][k]:.3f} (paired x{r['ratio_paired'][k]:.3f}, CPU x"
            f"{r['ratio_cpu_paired'][k]:.3f}) of {r['base']}"
        )
    print(f"load average before: {result['load_before']}, after: {result['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(result))
    return result


if __name__ == "__main__":
    main()
