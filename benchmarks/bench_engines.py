"""r2b's packed engine against the x86 references: PyTorch, ONNX Runtime and OpenVINO (fp32, int8).

Rows (``r2b.bench_engines.ROWS``; random weights, speed does not depend on them): PyTorch eager
float ResNet-18 (torchvision), ONNX Runtime fp32 and int8 ResNet-18, OpenVINO fp32 and int8
ResNet-18, OpenVINO int8 MobileNetV2, OpenVINO running r2b's Real-to-Bin (``r2b.openvino.export``,
its binary convs as ``BinaryConvolution``; skipped with a note while that module is missing) and
r2b's packed Real-to-Bin, ImageNet stem, with OpenMP threads spinning (``OMP_WAIT_POLICY=ACTIVE``)
and sleeping (``PASSIVE``). int8 = ONNX Runtime's static QDQ quantisation (per-channel int8
weights, uint8 activations, MinMax calibration on images of the embedded CIFAR-10 subset resized
to 224), the same int8 file run by both engines.

Protocol: each measurement is its own process (one engine, one batch, one thread count); a round
runs every configuration once, engines alternating, the order rotated each round; the figure of a
configuration is the median of its rounds' medians. Contention: in each of the first
``--contention-rounds`` rounds the 2-thread configurations run again with one busy-loop Python
process on the cores; each engine's slow-down and the packed/OpenVINO ratio of slow-downs.

Writes ``results/engines_<tag>.json`` (command, commit, machine, load, versions, every
measurement), ``.md`` (tables) and ``.png`` (published ImageNet top-1 against latency). Every
finished measurement is appended to ``results/engines_<tag>.partial.jsonl`` first: a rerun of the
same command skips what is done (``--fresh`` starts again).

    python benchmarks/bench_engines.py --tag epyc_2c          # ~10 min on 2 idle cores
    python benchmarks/bench_engines.py --tag epyc_2c --plot-only
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, git_commit

from r2b import bench_engines as be

RESULTS = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", default="local", help="results/engines_<tag>.json|md|png")
    p.add_argument("--rows", default=",".join(be.ROWS), help="comma list of rows (all)")
    p.add_argument("--batches", type=_ints, default=[1, 8], help="comma list (1,8)")
    p.add_argument("--threads", type=_ints, default=[2, 1], help="comma list (2,1)")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per process, at most (20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per process (5)")
    p.add_argument(
        "--max-seconds", type=float, default=3.0,
        help="stop timing a process after this long (at least 3 runs; 3.0)",
    )  # fmt: skip
    p.add_argument(
        "--contention-rounds", type=int, default=3,
        help="rounds that also measure with a busy process on the cores (3; 0: none)",
    )  # fmt: skip
    p.add_argument("--contention-batches", type=_ints, help="comma list (default: --batches)")
    p.add_argument(
        "--contention-threads", type=_ints, help="comma list (default: the most of --threads)"
    )
    p.add_argument("--calib-images", type=int, default=32, help="int8 calibration images (32)")
    p.add_argument("--work-dir", type=Path, help="model files (default /tmp/r2b-engines-<tag>)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--fresh", action="store_true", help="ignore the partial file of this tag")
    p.add_argument("--omp", default="active,passive",
                   type=lambda t: [v for v in t.split(",") if v],
                   help="OpenMP wait settings of the packed rows (be.OMP_POLICIES: active, "
                   "passive, spin10k; default active,passive)")  # fmt: skip
    p.add_argument("--plot-only", action="store_true", help="rewrite .md and .png from .json")
    args = p.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    args.contention_batches = args.contention_batches or args.batches
    args.contention_threads = args.contention_threads or [max(args.threads)]
    unknown = [r for r in args.rows if r not in be.ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(be.ROWS)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    env = be.orchestrator_env()
    if env is not None:  # this process's own OpenMP threads must sleep: run it anew
        return subprocess.run([sys.executable, __file__, *argv], env=env).returncode
    args = parse_args(argv)
    out = args.out_dir
    stem = out / f"engines_{args.tag}"
    if args.plot_only:
        record = json.loads(stem.with_suffix(".json").read_text())
        write_outputs(record, stem)
        return 0
    missing = be.missing_extras()
    if missing:
        sys.exit(f"error: the reference engines need the bench extra: {be.EXTRA_HINT} "
                 f"(missing: {', '.join(missing)})")  # fmt: skip
    t0 = time.time()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_before = be.loadavg()
    work = args.work_dir or Path(f"/tmp/r2b-engines-{args.tag}")
    wanted = {be.ROWS[r].artifact for r in args.rows}
    files, missing_files, build = be.build_artifacts(
        work, wanted, args.input_size, args.calib_images
    )
    skipped = {r: missing_files[be.ROWS[r].artifact] for r in args.rows
               if be.ROWS[r].artifact in missing_files}  # fmt: skip
    rows = [r for r in args.rows if r not in skipped]
    for r, why in skipped.items():
        print(f"skipping {r}: {why}")
    settings = be.Settings(args.input_size, args.runs, args.warmup, args.max_seconds)
    quiet = be.configs_for(rows, args.batches, args.threads, args.omp)
    busy = be.configs_for(rows, args.contention_batches, args.contention_threads, args.omp,
                          contention=True)  # fmt: skip
    header = dict(settings.to_dict(), calib_images=args.calib_images)
    partial = be.Partial.open(stem.with_suffix(".partial.jsonl"), header, fresh=args.fresh)
    commit = git_commit()
    records = be.run_protocol(
        quiet + busy, files, settings, args.rounds, partial, cwd=work,
        contention_rounds=args.contention_rounds, extra={"commit": commit},
    )  # fmt: skip
    results = be.summarise(quiet + busy, records)
    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in [_rel(__file__), *argv]),
        "commit": commit,
        "commits_measured": sorted({r.get("commit", "?") for r in records}),
        "working_tree_clean": _clean(),
        "started": started,
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seconds": time.time() - t0,
        "machine": be.machine_record(),
        "load_average": {"before": load_before, "after": be.loadavg(),
                         "meaning": "1-, 5-, 15-minute averages of runnable processes"},
        "versions": be.versions(),
        "settings": dict(header, rounds=args.rounds, contention_rounds=args.contention_rounds,
                         batches=args.batches, threads=args.threads),
        "protocol": PROTOCOL,
        "build": build,
        "rows": {r: {"label": be.ROWS[r].label, "engine": be.ROWS[r].engine,
                     "file": be.ROWS[r].artifact, "family": be.ROWS[r].family,
                     "top1": be.ROWS[r].top1, "top1_source": be.ROWS[r].top1_source}
                 for r in args.rows},
        "skipped": skipped,
        "failed": {r["key"] + f" round {r['round']}": r["error"] for r in records
                   if "error" in r},
        "results": results,
        "contention": be.contention_summary(results),
        "measurements": records,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    write_outputs(record, stem)
    print(markdown(record, stem.name))
    return 0


PROTOCOL = (
    "each measurement a fresh process running one engine on one model file (one batch, one "
    "thread count; OMP_WAIT_POLICY as given, OMP_DYNAMIC unset, OMP_NUM_THREADS = threads), "
    "warm-up runs then timed runs of the same random input; a round runs every configuration "
    "once, engines alternating, the order rotated each round; the figure is the median over "
    "rounds of each process's median. ONNX Runtime: intra-op threads = threads, sequential; "
    "OpenVINO CPU: INFERENCE_NUM_THREADS = threads, 1 stream, LATENCY hint, f32 inference "
    "precision (int8 where the model has QDQ), input reshaped to the static batch. Contention: the "
    "same 2-thread configurations with one busy-loop Python process on the cores."
)


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def _clean() -> bool | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip() == "" if out.returncode == 0 else None
    except OSError:
        return None


def write_outputs(record: dict, stem: Path) -> None:
    stem.with_suffix(".md").write_text(markdown(record, stem.name))
    plot(record, stem.with_suffix(".png"))


def _label(row: str, omp: str) -> str:
    label = be.ROWS[row].label
    return f"{label}, OpenMP {omp}" if row in be.OMP_ROWS else label


def _lines(record: dict) -> list[tuple[str, str]]:
    """(row, omp) of each table line, in the order of the rows."""
    seen = []
    for r in record["results"]:
        if not r["contention"] and (r["row"], r["omp"]) not in seen:
            seen.append((r["row"], r["omp"]))
    order = list(record["rows"])
    return sorted(seen, key=lambda x: (order.index(x[0]), x[1] != "active"))


def _measured_line(record: dict) -> str:
    """When and under what load the measurements were taken: a resumed run's command, commit and
    load average are those of its last invocation, the measurements' may be older."""
    done = [m for m in record.get("measurements", []) if "load_average" in m]
    commits = ", ".join(c[:10] for c in record.get("commits_measured", []))
    if not done:
        return f"Measurements taken at commit {commits}."
    ones = sorted(m["load_average"][0][0] for m in done)
    return (
        f"Measurements taken at commit {commits}; the 1-minute load average when each began: "
        f"{ones[0]:.2f} .. {ones[-1]:.2f}, median {statistics.median(ones):.2f} "
        f"({len(done)} measurements; a busy process counts 1 during the contention rounds)."
    )


def markdown(record: dict, name: str) -> str:
    m, s = record["machine"], record["settings"]
    cols = [(b, t) for t in s["threads"] for b in s["batches"]]
    tpc = m.get("threads_per_core")
    tpc = f" ({tpc} thread{'s' * (tpc > 1)} per core)" if tpc else ""
    get = {(r["row"], r["omp"], r["batch"], r["threads"], r["contention"]): r
           for r in record["results"]}  # fmt: skip
    v = record["versions"]
    load = record["load_average"]
    lines = [
        f"# r2b packed vs ONNX Runtime and OpenVINO, {s['input_size']}x{s['input_size']}",
        "",
        f"Command: `{record['command']}` (commit {record['commit'][:10]}"
        f"{'' if record.get('working_tree_clean') else ', uncommitted changes in the tree'}; "
        f"{record['started']}, {record['seconds'] / 60:.1f} min).",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores{tpc}; "
        f"flags {' '.join(m['isa_flags'])}.",
        f"Versions: torch {v['torch']}, onnxruntime {v['onnxruntime']}, openvino "
        f"{v['openvino']}, onnx {v['onnx']}, numba {v['numba']}, Python {v['python']}.",
        f"Load average (1/5/15 min) before {_fmt_load(load['before'])}, after "
        f"{_fmt_load(load['after'])}.",
        _measured_line(record),
        "",
        f"Protocol: {record['protocol']} {s['rounds']} round{'s' * (s['rounds'] > 1)} of at most "
        f"{s['runs']} timed runs (after {s['warmup']} warm-up; timing stops after "
        f"{s['max_seconds']} s once 3 runs are in);"
        f" random weights; milliseconds per forward pass.",
        "",
        "| engine | ImageNet top-1 (published) | "
        + " | ".join(f"batch {b}, {t} thread{'s' * (t > 1)}" for b, t in cols)
        + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for row, omp in _lines(record):
        top1 = record["rows"][row]["top1"]
        cells = []
        for b, t in cols:
            r = get.get((row, omp, b, t, False))
            cells.append(f"{r['median_ms']:.2f}" if r else "")
        lines.append(f"| {_label(row, omp)} | {top1 if top1 is not None else ''} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    for row, why in record["skipped"].items():
        lines.append(f"| {be.ROWS[row].label} | | skipped: {why} |" + " |" * (len(cols) - 1))
    cont = record["contention"]
    if cont:
        lines += [
            "",
            f"Contention ({min(s['contention_rounds'], s['rounds'])} of the rounds): the same "
            "configurations with one "
            "busy-loop Python process (`while True: pass`) on the cores.",
            "",
            "| engine | batch | threads | quiet ms | busy ms | slow-down |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in cont:
            lines.append(
                f"| {_label(c['row'], c['omp'])} | {c['batch']} | {c['threads']} | "
                f"{c['quiet_ms']:.2f} | {c['busy_ms']:.2f} | {c['slowdown']:.2f}x |"
            )
        ratios = [
            f"{c['row']} batch {c['batch']}, OpenMP {c['omp']}: {c[k]:.2f} vs "
            f"{k[len('ratio_vs_'):]}"
            for c in cont for k in sorted(c) if k.startswith("ratio_vs_")
        ]  # fmt: skip
        if ratios:
            lines += ["", "Packed slow-down over OpenVINO's (below 1: the packed engine degrades "
                      "less): " + "; ".join(ratios) + "."]  # fmt: skip
    build = record["build"]
    int8 = {k: v for k, v in build.items() if k.endswith("-int8") and "quantize_nodes" in v}
    if int8:
        one = next(iter(int8.values()))
        lines += [
            "",
            f"int8: ONNX Runtime `quantize_static`, {one['format']} format, per-channel "
            f"{one['weight_type']} weights, {one['activation_type']} activations, "
            f"{one['calibrate_method']} calibration on {build.get('calibration', '?')}; "
            "the same int8 ONNX file runs in both engines ("
            + ", ".join(f"{k}: {v['quantize_nodes']} QuantizeLinear" for k, v in int8.items())
            + ").",
        ]
    for key, check, reference in (
        ("r2b.r2b", "equals_eval_model", "its eval model"),
        ("r2b-int8.r2b", "equals_int8_reference", "its int8 reference"),
    ):
        equal = build.get(key, {}).get(check)
        if equal:
            batches = ", ".join(f"batch {b}: {'yes' if v else 'NO'}" for b, v in equal.items())
            lines.append(f"`{key}` logits equal to {reference} bit for bit on random "
                         f"inputs, checked before timing: {batches}.")  # fmt: skip
    ov = {r["row"]: r["info"] for r in record["results"] if r["row"].startswith("ov-")}
    if "ov-r2b" in ov:
        n_binary = ov["ov-r2b"].get("binary_convolutions")
        text = f"OpenVINO's compiled r2b model holds {n_binary} BinaryConvolution layers"
        check = build.get("r2b-openvino")
        if check:
            text += (
                f"; its logits against r2b's eval model on {check['inputs']} random inputs: max "
                f"|difference| / max |logit| {check['max_abs_diff_over_max_logit']:.1e}, top-1 "
                f"equal on {check['top1_agree']}"
            )
        lines.append(text + ".")
    lines += ["", "ImageNet top-1 figures (published, not measured here):", ""]
    for meta in record["rows"].values():
        if meta["top1"] is not None:
            lines.append(f"- {meta['label']}: {meta['top1']} — {meta['top1_source']}")
    if record["failed"]:
        lines += ["", "Failed measurements: "
                  + "; ".join(f"{k}: {v}" for k, v in record["failed"].items())]  # fmt: skip
    lines += ["", f"![accuracy vs latency]({name}.png)"]
    return "\n".join(lines) + "\n"


def _fmt_load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def plot(record: dict, out_png: Path) -> None:
    """Published ImageNet top-1 against latency (quiet cores, most threads), one panel per
    batch size; hollow markers: OpenMP passive."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = record["settings"]
    threads = max(s["threads"])
    batches = sorted(s["batches"])
    fig = Figure(figsize=(6 * len(batches), 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(batches), sharey=True, squeeze=False)[0]
    markers = {"float": "o", "int8": "s", "binary": "^"}
    colors = {"float": "tab:blue", "int8": "tab:orange", "binary": "tab:green"}
    for ax, batch in zip(axes, batches):
        points = []
        for r in record["results"]:
            meta = record["rows"][r["row"]]
            if r["contention"] or r["batch"] != batch or r["threads"] != threads:
                continue
            if meta["top1"] is not None:
                points.append((meta["top1"], r["median_ms"], r, meta))
        seen: dict[float, int] = {}
        for top1, ms, r, meta in sorted(points, key=lambda p: (p[0], p[1])):
            fam = meta["family"]
            ax.scatter(ms, top1, marker=markers[fam], s=60, edgecolors=colors[fam],
                       facecolors="none" if r["omp"] == "passive" else colors[fam])  # fmt: skip
            k = seen[top1] = seen.get(top1, -1) + 1  # stagger labels of equal accuracy
            label = be.ROWS[r["row"]].short + (f" ({r['omp']})" if r["row"] in be.OMP_ROWS else "")
            ax.annotate(label, (ms, top1), fontsize=7, textcoords="offset points",
                        xytext=(6, 4 + 9 * k if k % 2 == 0 else -10 - 9 * k))  # fmt: skip
        if points:
            tops = [p[0] for p in points]
            ax.set_ylim(min(tops) - 1, max(tops) + 1)
        ax.set_xscale("log")
        ax.set_xlabel(f"ms per batch of {batch}, {threads} threads (median; log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"batch {batch}", fontsize=9)
    axes[0].set_ylabel("ImageNet top-1 (%), published figures")
    for family, marker in markers.items():
        axes[0].scatter([], [], marker=marker, color=colors[family], label=family)
    axes[0].legend(fontsize=8, loc="center right")
    fig.suptitle(f"{s['input_size']}x{s['input_size']}, {record['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
