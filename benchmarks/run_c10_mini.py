"""CPU-scale evidence: the paper's central claims on real CIFAR-10, from one command.

    python benchmarks/run_c10_mini.py                 # 2 seeds, CPU, resumes where it stopped
    python benchmarks/run_c10_mini.py --parallel 2    # seeds side by side (a GPU machine)
    python benchmarks/run_c10_mini.py --pipeline families   # the Bi-Real Net and ReActNet rows
    python benchmarks/run_c10_mini.py --pipeline converged  # SB at N and 2N epochs, Real-to-Bin
    python benchmarks/run_c10_mini.py --tables-only --trained-at COMMIT   # tables of done runs
    python benchmarks/run_c10_mini.py --tables-only --partial   # the rows finished so far

Each seed is one ``r2b train`` pipeline (benchmarks/c10_mini/*.yaml) in ``--runs/seed<S>``; a
killed benchmark continues with ``--resume`` on the next call, stage by stage and epoch by epoch,
and a seed whose every stage has finished is not started again. Each sitting that trains appends
its commit, machine and load average to ``--runs/sittings.json``. When every seed has finished it
writes, from the runs' results.json (``RunFolder``):

- ``benchmarks/results/<name>.json``  per row, per stage, per seed: the test top-1/top-5 of the
  checkpoint selected by best validation top-1 (the ``best.safetensors`` later stages use), its
  validation top-1 and epoch, the last epoch's test top-1/top-5, seconds; Real-to-Bin's margins
  over the strong-baseline rows; the commit the runs were trained at, the commit, machine and
  load average that wrote the tables, the command;
- ``benchmarks/results/<name>.md``    the table (mean ± half-range over seeds) beside the paper's
  CIFAR-100 numbers, with the selection rule, the margins per seed and, for ``converged``,
  whether doubling the strong baseline's epochs still raised its validation top-1;
- ``benchmarks/results/<name>.png``   per-stage accuracies of every row.

``--partial`` writes the same files as ``<name>_partial.*`` from runs that have not finished
every row (one that was stopped): the rows whose stages every seed has finished, the others
named as not trained, and whatever margins and converged test those rows allow.

Runs without a validation split (older ones) are reported by the last epoch's test top-1, and
the table says so.

Data: ``--data`` is a folder with train/ and test/ class folders; by default the CIFAR-10 JPEG
archives of ../shared/data are unpacked into /tmp/r2b-cifar10 once (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import yaml
from common import git_commit, machine, unpack_cifar10

from r2b.train.run_folder import RunFolder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
#: in ``--runs``: one record per sitting that trained (commit, machine, seeds, load average)
SITTINGS_FILE = "sittings.json"

#: Table rows: (label, stages in order, paper CIFAR-100 stage-1 -> stage-2 top-1 of Table 3).
ROWS = [
    ("real ResNet-18", ["teacher"], (78.3,)),
    ("strong baseline (SB)", ["sb_ban", "sb_bnn"], (72.1, 69.6)),
    ("SB, compute-matched (Real-to-Bin's student epochs)", ["sbcm_ban", "sbcm_bnn"], ()),
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

#: The converged protocol (issue 12): 120 training images a class, N epochs a stage, SB also at 2N.
CONVERGED_ROWS = [
    ("real ResNet-18", ["teacher"], (78.3,)),
    ("strong baseline (SB), N epochs", ["sb_ban", "sb_bnn"], (72.1, 69.6)),
    ("strong baseline (SB), 2N epochs", ["sb2n_ban", "sb2n_bnn"], ()),
    ("Real-to-Bin", ["r2b_fp", "r2b_ban", "r2b_bnn"], (76.5, 76.2)),
]


#: The attention-weight sweep (issue 12): Real-to-Bin's fp and ban stages per beta, selected on
#: validation, with the Table 3 pipeline's seed-0 teacher.
BETA_ROWS = [
    ("real ResNet-18 (Table 3's seed-0 teacher)", ["teacher"], ()),
    ("Real-to-Bin fp → ban, β = 0.3", ["fp_beta0p3", "ban_beta0p3"], ()),
    ("Real-to-Bin fp → ban, β = 1", ["fp_beta1", "ban_beta1"], ()),
    ("Real-to-Bin fp → ban, β = 3", ["fp_beta3", "ban_beta3"], ()),
]


class Pipeline(NamedTuple):
    """One ``--pipeline``: its config, table rows and results name; the margins the table
    states (final stage of a row minus final stage of another); for the converged protocol, the
    final stages of the strong baseline at N and at 2N epochs."""

    config: Path
    rows: list
    name: str
    margins: tuple[tuple[str, str], ...] = ()
    doubled: tuple[str, str] | None = None
    title: str = ""
    choose: bool = False  # the rows after the first are candidates: pick one on validation


PIPELINES = {
    "table3": Pipeline(
        HERE / "c10_mini" / "pipeline.yaml", ROWS, "c10_mini",
        margins=(("r2b_bnn", "sb_bnn"), ("r2b_bnn", "sbcm_bnn")),
    ),
    "families": Pipeline(HERE / "c10_mini" / "families.yaml", FAMILY_ROWS, "c10_mini_families"),
    "converged": Pipeline(
        HERE / "c10_mini" / "converged.yaml", CONVERGED_ROWS, "c10_converged",
        margins=(("r2b_bnn", "sb_bnn"), ("r2b_bnn", "sb2n_bnn")),
        doubled=("sb_bnn", "sb2n_bnn"),
        title="Converged protocol (benchmarks/c10_mini/converged.yaml)",
    ),
    "beta": Pipeline(
        HERE / "c10_mini" / "beta_sweep.yaml", BETA_ROWS, "c10_beta_sweep",
        title="Attention weight β, selected on validation (benchmarks/c10_mini/beta_sweep.yaml)",
        choose=True,
    ),
}  # fmt: skip


# ------------------------------------------------------------------------------------ training


def train_command(
    seed: int, run_dir: Path, data: Path, extra: list[str], config: Path = PIPELINES["table3"][0]
) -> list[str]:
    """The ``r2b train`` call for one seed: a new run, or ``--resume`` of a started one (with
    ``extra``, the overrides of this call, which ``--resume`` accepts only where they change no
    weight: ``runtime.*``, ``data.test_every_epoch``)."""
    cmd = [sys.executable, "-m", "r2b.cli", "train", "--out", str(run_dir)]
    if RunFolder(run_dir).config.is_file():
        return cmd + ["--resume"] + [a for s in extra for a in ("--set", s)]
    sets = [f"seed={seed}", f"data.root={data}", *extra]
    return cmd + ["--config", str(config)] + [a for s in sets for a in ("--set", s)]


def run_finished(run_dir: Path) -> bool:
    """Whether every stage of the run in ``run_dir`` has finished."""
    run = RunFolder(run_dir)
    if not (run.config.is_file() and run.results.is_file()):
        return False
    stages = yaml.safe_load(run.config.read_text()).get("stages") or []
    return all(run.stage(s["name"]).finished() for s in stages)


class Sitting:
    """This call's record in ``--runs/sittings.json``: the commit and machine that trained which
    seeds, and the 1-minute load average sampled while they trained."""

    def __init__(self, runs: Path, seeds: list[int]) -> None:
        self.path = runs / SITTINGS_FILE
        self.records = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.start = time.time()
        self.loads = [os.getloadavg()[0]]
        self.records.append({
            "commit": git_commit(), "machine": machine(), "seeds": list(seeds),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.start)),
        })  # fmt: skip
        self.save()

    def sample(self) -> None:
        self.loads.append(os.getloadavg()[0])

    def save(self) -> None:
        self.records[-1] |= {
            "seconds": round(time.time() - self.start, 1),
            "load_1min": {"samples": len(self.loads), "mean": round(_mean(self.loads), 2),
                          "max": round(max(self.loads), 2)},
        }  # fmt: skip
        self.path.write_text(json.dumps(self.records, indent=2) + "\n")


def run_seeds(args, data: Path) -> None:
    """Train every seed that has not finished, ``args.parallel`` at a time; each logs to
    ``seed<S>.log``."""
    pending = [s for s in args.seeds if not run_finished(args.runs / f"seed{s}")]
    if not pending:
        return
    sitting = Sitting(args.runs, pending)
    running: list[tuple[int, subprocess.Popen]] = []
    polls = 0
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            run_dir = args.runs / f"seed{seed}"
            cmd = train_command(seed, run_dir, data, args.set, args.config)
            print("$", shlex.join(cmd), flush=True)
            log = open(args.runs / f"seed{seed}.log", "a")
            running.append((seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        polls += 1
        if polls % 30 == 0:  # about once a minute
            sitting.sample()
            sitting.save()
        for seed, proc in list(running):
            if proc.poll() is not None:
                running.remove((seed, proc))
                print(f"seed {seed}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    sitting.save()
                    sys.exit(f"error: seed {seed} failed; see {args.runs}/seed{seed}.log")
    sitting.save()


# ------------------------------------------------------------------------------------ collecting


def _load_runs(runs: Path, seeds: list[int]) -> dict[int, dict]:
    """Per seed: its results.json and its saved config."""
    out = {}
    for seed in seeds:
        run = RunFolder(runs / f"seed{seed}")
        if not run.results.is_file():
            sys.exit(f"error: {run.results} is missing: seed {seed} has not run; train it first")
        out[seed] = {
            "results": json.loads(run.results.read_text()),
            "config": yaml.safe_load(run.config.read_text()) if run.config.is_file() else {},
        }
    return out


def _stage_entry(name: str, records: list[dict]) -> dict:
    """One stage over the seeds: the reported figure is the test top-1 of the validation-selected
    checkpoint when the runs had a validation split, else the last epoch's test top-1."""
    on_val = {r.get("selected_on", "test") == "val" for r in records}
    if len(on_val) > 1:
        sys.exit(f"error: stage {name}: some seeds were selected on validation, some not")
    val = on_val.pop()

    def per_seed(key: str) -> list:
        return [r.get(key) for r in records]

    return {
        "stage": name,
        "variant": records[0].get("variant"),
        "epochs": records[0].get("epochs"),
        "selected_on": "val" if val else "last epoch",
        "test_top1": per_seed("best_top1" if val else "top1"),
        "test_top5": per_seed("best_top5" if val else "top5"),
        "val_top1": per_seed("best_val_top1") if val else None,
        "selected_epoch": per_seed("best_epoch" if val else "epochs"),
        "last_top1": per_seed("top1"),
        "last_top5": per_seed("top5"),
        "seconds": per_seed("seconds"),
    }


def _rows(
    rows: list, seeds: list[int], runs: dict[int, dict], partial: bool = False
) -> tuple[list[dict], list[str]]:
    """The table's rows over the seeds, and (``partial``) the labels of the rows left out
    because some seed has not finished their stages (without ``partial`` that is an error)."""
    by_name = {s: {r["name"]: r for r in runs[s]["results"]["stages"]} for s in seeds}
    out, unfinished = [], []
    for label, stages, paper in rows:
        missing = {s: [n for n in stages if n not in by_name[s]] for s in seeds}
        if any(missing.values()):
            if partial:
                unfinished.append(label)
                continue
            seed = next(s for s in seeds if missing[s])
            sys.exit(f"error: seed {seed} has not finished stage(s) {', '.join(missing[seed])} "
                     "(--partial writes the rows that have finished)")  # fmt: skip
        out.append({
            "row": label,
            "paper_cifar100_top1": list(paper),
            "stages": [_stage_entry(n, [by_name[s][n] for s in seeds]) for n in stages],
        })  # fmt: skip
    if not out:
        sys.exit("error: no row has finished in every seed; train first")
    return out, unfinished


def _final(rows: list[dict]) -> dict[str, tuple[str, dict]]:
    """Each row's final stage by its name: (row label, stage entry)."""
    return {r["stages"][-1]["stage"]: (r["row"], r["stages"][-1]) for r in rows}


def _differences(a: list | None, b: list | None) -> list[float] | None:
    if a is None or b is None:
        return None
    return [round(x - y, 2) for x, y in zip(a, b)]


def _margins(rows: list[dict], pairs) -> list[dict]:
    """Final stage of one row minus final stage of another, per seed, on test and validation."""
    final = _final(rows)
    out = []
    for of, over in pairs:
        if of in final and over in final:
            (a_row, a), (b_row, b) = final[of], final[over]
            out.append({
                "of": a_row, "over": b_row, "stages": [of, over],
                "test_top1": _differences(a["test_top1"], b["test_top1"]),
                "val_top1": _differences(a["val_top1"], b["val_top1"]),
            })  # fmt: skip
    return out


def _half_range(values: list[float]) -> float:
    return (max(values) - min(values)) / 2


#: The converged test needs a validation split that resolves this many points of top-1: the
#: binomial standard error ``100 sqrt(p (1 - p) / n)`` of ``n`` validation images at accuracy
#: ``p`` (1 point at p = 0.5 takes 2,500 images).
RESOLUTION_POINTS = 1.0


def _doubling(
    rows: list[dict], doubled: tuple[str, str] | None, val_images: int | None
) -> dict | None:
    """The converged test: the strong baseline at 2N vs N epochs a stage, on validation top-1.
    Converged when the mean rise is no more than the seeds' spread (the larger half-range of
    the two rows' validation top-1) and the validation split resolves ``RESOLUTION_POINTS``
    (else an absent rise says nothing: "not resolved")."""
    final = _final(rows)
    if doubled is None or not all(n in final for n in doubled):
        return None
    (n_row, n), (m_row, m) = final[doubled[0]], final[doubled[1]]
    if n["val_top1"] is None or m["val_top1"] is None:
        return None
    rise = _differences(m["val_top1"], n["val_top1"])
    spread = max(_half_range(n["val_top1"]), _half_range(m["val_top1"]))
    p = _mean(n["val_top1"]) / 100
    error = 100 * math.sqrt(p * (1 - p) / val_images) if val_images else float("inf")
    return {
        "n": {"row": n_row, "stage": doubled[0], "epochs": n["epochs"], "val_top1": n["val_top1"]},
        "2n": {"row": m_row, "stage": doubled[1], "epochs": m["epochs"], "val_top1": m["val_top1"]},
        "rise": rise,
        "mean_rise": round(_mean(rise), 2),
        "seeds_half_range": round(spread, 2),
        "val_images": val_images,
        "val_standard_error": round(error, 2),
        "resolved": error <= RESOLUTION_POINTS,
        "converged": _mean(rise) <= spread and error <= RESOLUTION_POINTS,
    }


def _choice(rows: list[dict], choose: bool) -> dict | None:
    """Of the candidate rows (all but the first), the ones whose final stage has the best mean
    validation top-1 (more than one on a tie): a hyper-parameter selected on validation, never
    on test."""
    candidates = [r for r in rows[1:] if r["stages"][-1]["val_top1"] is not None]
    if not choose or not candidates:
        return None
    val = {r["row"]: round(_mean(r["stages"][-1]["val_top1"]), 2) for r in candidates}
    best = max(val.values())
    return {
        "rows": [r for r, v in val.items() if v == best],
        "stage": candidates[0]["stages"][-1]["variant"],
        "val_top1": best,
        "candidates": val,
    }


def _protocol(runs: dict[int, dict], rows: list[dict]) -> dict:
    """Data and model of the runs (first seed): images per split, validation fraction, limits,
    stem and width, epochs per stage."""
    first = runs[min(runs)]
    data, cfg = first["results"].get("data", {}), first["config"]
    model_stage = (cfg.get("stages") or [{}])[0]
    model = model_stage.get("model", {})
    return {
        "dataset": first["results"].get("dataset"),
        "num_classes": data.get("num_classes"),
        "train_images": data.get("train_images"),
        "val_images": data.get("val_images"),
        "test_images": data.get("test_images"),
        "val_fraction": cfg.get("data", {}).get("val_fraction"),
        "train_limit": cfg.get("data", {}).get("train_limit"),
        "stem": model.get("stem"),
        "width": model.get("width"),
        "batch_size": model_stage.get("batch_size"),
        "epochs": {s["stage"]: s["epochs"] for r in rows for s in r["stages"]},
    }


def resolve_commit(ref: str) -> str:
    """The full hash of a commit named by ``ref``; exits when git does not know it."""
    out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        sys.exit(f"error: --trained-at {ref}: not a commit of this repository")
    return out.stdout.strip()


def _trained_at(args) -> dict:
    """The commit(s) the runs were trained at and where that comes from."""
    if getattr(args, "trained_at", None):
        return {"commits": list(args.trained_at), "source": "--trained-at"}
    path = args.runs / SITTINGS_FILE
    sittings = json.loads(path.read_text()) if path.is_file() else []
    commits = [s["commit"] for s in sittings if set(s["seeds"]) & set(args.seeds)]
    if commits:
        return {
            "commits": list(dict.fromkeys(commits)),
            "source": f"--runs/{SITTINGS_FILE}",
            "sittings": sittings,
        }
    return {
        "commits": [git_commit()],
        "source": "assumed: the commit that wrote the tables (no record; pass --trained-at)",
    }


def collect(args) -> dict:
    """Per row, per stage, per seed results from the runs' results.json files, with the
    margins, the converged test and the provenance."""
    pipeline = PIPELINES[getattr(args, "pipeline", None) or "table3"]
    runs = _load_runs(args.runs, args.seeds)
    rows, unfinished = _rows(args.rows, args.seeds, runs, getattr(args, "partial", False))
    selection = {s["selected_on"] for r in rows for s in r["stages"]}
    if len(selection) > 1:
        sys.exit("error: some stages were selected on validation, some not; one protocol a table")
    selected = selection.pop()
    metric = (
        "CIFAR-10 test top-1/top-5 (%) of the epoch of best validation top-1 (the checkpoint "
        "later stages use); val_top1 is that epoch's validation top-1"
        if selected == "val"
        else "CIFAR-10 test top-1/top-5 (%) after each stage's last epoch (no validation split)"
    )
    protocol = _protocol(runs, rows)
    return {
        "benchmark": pipeline.name,
        "title": pipeline.title,
        "config": str(args.config.relative_to(REPO)),
        "command": args.command,
        "trained_at": _trained_at(args),
        "commit": git_commit(),
        "machine": machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "provenance_note": "commit, machine and load_average: where and when the tables were "
        "written; trained_at: the commit the runs were trained at",
        "device": runs[args.seeds[0]]["results"].get("device"),
        "seeds": args.seeds,
        "selection": selected,
        "metric": metric,
        "protocol": protocol,
        "rows": rows,
        "margins": _margins(rows, pipeline.margins),
        "converged": _doubling(rows, pipeline.doubled, protocol["val_images"]),
        "chosen": _choice(rows, pipeline.choose),
        "unfinished_rows": unfinished,
    }


# ------------------------------------------------------------------------------------ the table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _mean_spread(values: list[float]) -> str:
    return f"{_mean(values):.2f} ± {_half_range(values):.2f}"


def _per_seed(seeds: list[int], values: list[float], fmt: str = "+.2f") -> str:
    return ", ".join(f"seed {s}: {v:{fmt}}" for s, v in zip(seeds, values))


def _training_seconds(result: dict) -> list[float]:
    """Each seed's training time: the sum of its stages' seconds."""
    stages = [s for row in result["rows"] for s in row["stages"]]
    return [sum(s["seconds"][i] for s in stages) for i in range(len(result["seeds"]))]


def _epochs_text(result: dict) -> str:
    """'3 epochs a stage (SB, compute-matched (Real-to-Bin's student epochs): 6 + 3)'."""
    epochs = result["protocol"]["epochs"]
    base = Counter(epochs.values()).most_common(1)[0][0]
    other = [
        f"{r['row']}: {' + '.join(str(s['epochs']) for s in r['stages'])}"
        for r in result["rows"]
        if any(s["epochs"] != base for s in r["stages"])
    ]
    return f"{base} epochs a stage" + (f" ({'; '.join(other)})" if other else "")


def _data_text(p: dict) -> str:
    """'31,500 train / 3,500 validation / 10,000 test JPEGs (validation: 10% of ...)'."""
    if not p["val_images"]:
        return f"{p['train_images']:,} train / {p['test_images']:,} test JPEGs, no validation split"
    limit = ""
    if p["train_limit"] and p["num_classes"]:
        limit = f"{p['train_limit'] // p['num_classes']:,} images a class: "
    return (
        f"{limit}{p['train_images']:,} train / {p['val_images']:,} validation / "
        f"{p['test_images']:,} test JPEGs (validation: {p['val_fraction']:.0%} of each class's "
        "training images, fixed by the seed)"
    )


def _batch_text(p: dict) -> str:
    """', batch 32' (runs written before the batch size was recorded: nothing)."""
    return f", batch {p['batch_size']}" if p.get("batch_size") else ""


def _caption(result: dict) -> list[str]:
    """The protocol, the selection rule and the provenance."""
    p = result["protocol"]
    head = f"{result['title']}: " if result.get("title") else ""
    if result["selection"] == "val":
        rule = (
            "Selection: every stage's checkpoint (best.safetensors: the teacher and init of "
            "later stages) is the epoch of best validation top-1; cells are the CIFAR-10 test "
            "top-1 % of that checkpoint, mean ± half-range over seeds; test selects nothing."
        )
    else:
        rule = (
            "Selection: these runs have no validation split, so cells are the test top-1 % after "
            "each stage's last epoch (their teachers and inits were the best epoch on test), "
            "mean ± half-range over seeds."
        )
    trained = ", ".join(c[:10] for c in result["trained_at"]["commits"])
    load = " ".join(f"{v:.2f}" for v in result["load_average"])
    return [
        f"{head}CIFAR-10, {_data_text(p)}; ResNet-18, {p['stem']} stem, width {p['width']}"
        f"{_batch_text(p)}; "
        f"{_epochs_text(result)}; seeds {result['seeds']}.",
        rule,
        f"Command: `{result['command']}` · trained at commit {trained} · tables written at "
        f"commit {result['commit'][:10]} on {result['machine']}, load average {load}",
    ]


def _real_top1(result: dict) -> float | None:
    """The real net's mean test top-1 (the first row), None when that row is not in the table."""
    first = result["rows"][0]["stages"][0]
    return _mean(first["test_top1"]) if first["variant"] == "real" else None


def _gap(stage: dict, real: float | None) -> str:
    return "" if real is None else f"{_mean(stage['test_top1']) - real:+.2f}"


def _unfinished_lines(result: dict) -> list[str]:
    rows = result.get("unfinished_rows")
    if not rows:
        return []
    return ["", f"Partial: the runs have not finished these rows yet, so they are not in the "
            f"table: {'; '.join(rows)}."]  # fmt: skip


def _cells(stage: dict) -> str:
    return _mean_spread(stage["test_top1"])


def _table3(result: dict) -> list[str]:
    """Rows of the per-stage table: fp, ban, bnn test top-1, the final stage's gap to the real
    net and (with a validation split) its validation top-1."""
    val = result["selection"] == "val"
    real = _real_top1(result)
    lines = [
        "| row | fp | ban | bnn (final) | final − real |"
        + (" final: val top-1 |" if val else "")
        + " paper C-100 (stage 1 → 2) |",
        "|---|---|---|---|---|" + ("---|" if val else "") + "---|",
    ]
    for row in result["rows"]:
        cells = {s["variant"]: _cells(s) for s in row["stages"]}
        last = row["stages"][-1]
        paper = " → ".join(f"{p:.1f}" for p in row["paper_cifar100_top1"]) or "—"
        vcell = f" {_mean_spread(last['val_top1'])} |" if val else ""
        if row["stages"][0]["variant"] == "real":
            lines.append(f"| {row['row']} | {cells['real']} (real) | | | |{vcell} {paper} |")
            continue
        lines.append(
            f"| {row['row']} | {cells.get('fp', '')} | {cells.get('ban', '')} | "
            f"{cells.get('bnn', '')} | {_gap(last, real)} |{vcell} {paper} |"
        )
    return lines


def _converged_table(result: dict) -> list[str]:
    """Rows of the converged table: epochs, validation and test top-1 of each row's final
    stage, its gap to the real net."""
    real = _real_top1(result)
    lines = [
        "| row | stages (epochs) | val top-1 (final) | test top-1 (final) | test − real |"
        " paper C-100 (stage 1 → 2) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        last = row["stages"][-1]
        stages = " → ".join(f"{s['variant']} {s['epochs']}" for s in row["stages"])
        gap = "" if last["variant"] == "real" else _gap(last, real)
        paper = " → ".join(f"{p:.1f}" for p in row["paper_cifar100_top1"]) or "—"
        lines.append(
            f"| {row['row']} | {stages} | {_mean_spread(last['val_top1'])} | "
            f"{_mean_spread(last['test_top1'])} | {gap} | {paper} |"
        )
    return lines


def _margin_lines(result: dict) -> list[str]:
    seeds = result["seeds"]
    lines = []
    for m in result["margins"]:
        line = (
            f"- {m['of']} bnn − {m['over']} bnn: **{_mean(m['test_top1']):+.2f}** points of test "
            f"top-1 ({_per_seed(seeds, m['test_top1'])})"
        )
        if m["val_top1"] is not None:
            line += (
                f"; on validation top-1 {_mean(m['val_top1']):+.2f} "
                f"({_per_seed(seeds, m['val_top1'])})"
            )
        lines.append(line + ".")
    return ["", "Margins, mean over seeds (per seed in brackets):", *lines] if lines else []


def _converged_lines(result: dict) -> list[str]:
    c = result["converged"]
    if c is None:
        return []
    n, m = c["n"], c["2n"]
    seeds = ", ".join(
        f"seed {s}: {a:.2f} → {b:.2f} ({r:+.2f})"
        for s, a, b, r in zip(result["seeds"], n["val_top1"], m["val_top1"], c["rise"])
    )
    head = (
        f"Converged? The strong baseline's bnn validation top-1 at {n['epochs']} and at "
        f"{m['epochs']} epochs a stage: {seeds}; mean change {c['mean_rise']:+.2f}, seeds' "
        f"spread (the larger half-range of the two rows) {c['seeds_half_range']:.2f}."
    )
    if c["mean_rise"] > c["seeds_half_range"]:
        verdict = (
            f"Doubling the epochs raised it by {c['mean_rise']:.2f} points, more than the seeds' "
            f"spread: NOT converged at {n['epochs']} epochs a stage, so the margins above still "
            "include training time."
        )
    elif not c.get("resolved", True):
        verdict = (
            f"That is no more than the seeds' spread, but {c['val_images']:,} validation images "
            f"resolve only about ±{c['val_standard_error']:.2f} points of top-1 (binomial "
            f"standard error at this accuracy; the test asks for {RESOLUTION_POINTS:.0f}): not "
            "resolved, so this does not show convergence."
        )
    elif c["mean_rise"] > 0:
        verdict = (
            f"Doubling the epochs raised it by {c['mean_rise']:.2f} points, no more than the "
            f"seeds' spread: no resolved gain, converged by this test at {n['epochs']} epochs."
        )
    else:
        verdict = (
            f"Doubling the epochs did not raise it on average ({c['mean_rise']:+.2f}): converged "
            f"by this test at {n['epochs']} epochs a stage."
        )
    return ["", f"{head} {verdict}"]


def _choice_lines(result: dict) -> list[str]:
    c = result.get("chosen")
    if not c:
        return []
    every = ", ".join(f"{row} {v:.2f}" for row, v in c["candidates"].items())
    best = " and ".join(f"**{row}**" for row in c["rows"])
    verdict = "Selected on validation" if len(c["rows"]) == 1 else "Tied on validation"
    return [
        "",
        f"{verdict}: {best} (the best mean validation top-1 of the {c['stage']} stage, "
        f"{c['val_top1']:.2f}; all: {every}). The test cells are reported, not used.",
    ]


def markdown(result: dict) -> str:
    """The results table with its caption, the margins and (converged) the doubling test."""
    pipeline = next((p for p in PIPELINES.values() if p.name == result["benchmark"]), None)
    doubling = result.get("converged") is not None or (pipeline and pipeline.doubled)
    table = _converged_table if doubling else _table3
    lines = [*_caption(result), "", *table(result), *_unfinished_lines(result),
             *_margin_lines(result), *_converged_lines(result), *_choice_lines(result)]  # fmt: skip
    hours = [h / 3600 for h in _training_seconds(result)]
    lines += [
        "",
        "Training time per seed (sum of its stages, seeds side by side): "
        + ", ".join(f"{h:.2f} h" for h in hours)
        + f" on {result['device']}.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, out_png: Path) -> None:
    """Per-stage reported test top-1 (mean, with the seeds' range) of every row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    order = {"real": 0, "fp": 1, "ban": 2, "bnn": 3}
    for row in result["rows"]:
        xs = [order[s["variant"]] for s in row["stages"]]
        means = [_mean(s["test_top1"]) for s in row["stages"]]
        lows = [m - min(s["test_top1"]) for m, s in zip(means, row["stages"])]
        highs = [max(s["test_top1"]) - m for m, s in zip(means, row["stages"])]
        ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=3, label=row["row"])
    ax.set_xticks(range(4), ["real", "fp (tanh)", "ban", "bnn"])
    which = "validation-selected epoch" if result["selection"] == "val" else "last epoch"
    ax.set_ylabel(f"CIFAR-10 test top-1 (%), {which}")
    ax.set_title("Per-stage accuracy, ResNet-18 width 0.25 (mean and range over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument(
        "--pipeline",
        choices=sorted(PIPELINES),
        default="table3",
        help="table3: the paper's Table 3 rows (default); families: Bi-Real, ReActNet; "
        "converged: SB at N and 2N epochs and Real-to-Bin on 120 images a class; beta: the "
        "attention weight, selected on validation",
    )
    p.add_argument("--runs", type=Path, default=None, help="run folders (benchmarks/runs/NAME)")
    p.add_argument("--data", type=Path, default=None, help="folder with train/ and test/")
    p.add_argument("--parallel", type=int, default=1, help="seeds trained at the same time")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="train nothing: write the tables of the finished runs in --runs",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="with --tables-only: also when some rows have not finished (a stopped run); "
        "writes NAME_partial.* with the finished rows",
    )
    p.add_argument(
        "--trained-at",
        nargs="+",
        default=None,
        metavar="COMMIT",
        help=f"the commit(s) the runs were trained at (default: --runs/{SITTINGS_FILE}, "
        "else the current commit)",
    )
    args = p.parse_args()
    args.command = shlex.join(["python", "benchmarks/run_c10_mini.py", *sys.argv[1:]])
    pipeline = PIPELINES[args.pipeline]
    args.config, args.rows, name = pipeline.config, pipeline.rows, pipeline.name
    args.runs = args.runs or REPO / "benchmarks" / "runs" / name
    if args.trained_at:
        args.trained_at = [resolve_commit(c) for c in args.trained_at]
    if args.partial and not args.tables_only:
        p.error("--partial writes tables of stopped runs; use it with --tables-only")
    if args.partial:
        name += "_partial"
    if not args.tables_only:
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
