"""Reports of a training run: a Markdown results table and PNG plots (headless, Agg).

Inputs, as the training pipeline writes them into a run directory (``r2b.train.run_folder``)::

    RUN/results.json            {"stages": [STAGE, ...], optional "title", "dataset", "device"}
    RUN/<stage name>/metrics.csv one row per epoch (the row of epoch 0 may hold only the test
                                 accuracy before training); empty cells are missing values

STAGE fields (accuracies in percent, 0-100; missing fields print as "-"):
``name`` (str), ``model`` (registered model name), ``variant`` (e.g. "fp", "ban", "bnn" or
"real"), ``teacher`` (stage name or null), ``epochs`` (int), ``top1`` / ``top5`` (test accuracy
after the last epoch), ``best_top1`` / ``best_epoch`` (best test top-1 and its epoch),
optional ``best_top5`` (top-5 at the best epoch), ``seconds`` (training time), optional
``dir`` (stage folder relative to RUN, default ``name``) and ``metrics`` (metrics.csv path relative
to RUN, default ``<dir>/metrics.csv``), optional ``best_val_top1`` (validation top-1 of the best
epoch, when the run had a validation split: then the best epoch was chosen on it, and the table
gets a "val top-1" column; ``results["selection"]`` says "val" or "test").

metrics.csv columns read: ``epoch``, the training loss (``train_loss`` or ``loss``), ``val_top1``
and ``test_top1``; others (``step, ce, kd, att, test_top5, lr, flip_ratio``, ...) are ignored by
the plots.

- ``results_table(results) -> str``: one row per stage: stage, model, variant, teacher, epochs,
  best top-1 (with its epoch), top-5 (at the best epoch when ``best_top5`` is given, else after
  the last epoch), final top-1, training time. ``results_table(results, markdown=False)``: the
  plain-text table ``r2b train`` prints at its end (stage, model, step, epochs, final top-1 and
  top-5, best top-1, time). Both get a "val top-1" column after "best top-1" when any stage has
  ``best_val_top1``.
- ``plot_curves({stage: metrics.csv}, out_png)``: training loss and validation top-1 (test top-1
  without a validation split) against epochs,
  stages laid end to end on one epoch axis (dotted lines mark where a stage starts).
- ``plot_attention(teacher, student, images, out_png)``: for a few images, the input and the
  teacher's and student's attention maps ``Q = sum_c |A_c|^2`` (``r2b.losses.attention_map``) at
  some of the 8 transfer points, side by side; each map scaled to [0, 1] for display.
  ``plot_stage_attention(run_dir, stage, teacher, test_set, n)``: the trainer's figure
  ``attention_<stage>.png`` of a stage's best weights against its teacher on ``n`` test images.
- ``write_report(run_dir)``: writes ``curves.png`` and ``report.md`` (table, plots, links to every
  PNG in the run folder, e.g. the ``attention_<stage>.png`` figures).

Figures use ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot state, no display).
Files are written atomically (``r2b.io.atomic_write``): a full disk leaves the old
report and a one-line error, never half a PNG.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from r2b.data import build_augment, first_of_each_class
from r2b.errors import UserError
from r2b.io import atomic_write
from r2b.losses import attention_map
from r2b.train.checkpoint import load_model
from r2b.train.run_folder import RunFolder

DEFAULT_POINTS = (1, 3, 5, 7)  # last block of each of the 4 ResNet stages


# --------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Column:
    """A column of the results table: its header, its cell of a stage record, and (plain text)
    its width and alignment; Markdown columns are as wide as their widest cell."""

    header: str
    cell: Callable[[Mapping], str]
    width: int = 0
    left: bool = False  # text columns are left-aligned, numbers right-aligned


def _num(value, digits: int = 2) -> str:
    value = _float(value) if value is not None else math.nan
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _duration(seconds) -> str:
    seconds = _float(seconds) if seconds is not None else math.nan
    if math.isnan(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _text(key: str) -> Callable[[Mapping], str]:
    return lambda stage: str(stage.get(key) or "-")


def _best_with_epoch(stage: Mapping) -> str:
    best = _num(stage.get("best_top1"))
    if best != "-" and stage.get("best_epoch") is not None:
        best = f"{best} (ep {stage['best_epoch']})"
    return best


VAL_COLUMN = "val top-1"  # after "best top-1" when any stage has best_val_top1
_VAL = Column(VAL_COLUMN, lambda s: _num(s.get("best_val_top1")), width=9)
MARKDOWN_COLUMNS = (
    Column("stage", lambda s: str(s.get("name", "-")), left=True),
    Column("model", _text("model"), left=True),
    Column("variant", _text("variant"), left=True),
    Column("teacher", _text("teacher"), left=True),
    Column("epochs", lambda s: str(s.get("epochs", "-"))),
    Column("best top-1", _best_with_epoch),
    _VAL,
    Column("top-5", lambda s: _num(s.get("best_top5", s.get("top5")))),
    Column("final top-1", lambda s: _num(s.get("top1"))),
    Column("time", lambda s: _duration(s.get("seconds"))),
)
#: the plain-text table ``r2b train`` prints at the end
TEXT_COLUMNS = (
    Column("stage", lambda s: str(s["name"]), width=10, left=True),
    Column("model", lambda s: str(s["model"]), width=14, left=True),
    Column("step", lambda s: str(s["variant"]), width=5, left=True),
    Column("epochs", lambda s: str(s["epochs"]), width=6),
    Column("top-1", lambda s: _num(s.get("top1")), width=7),
    Column("top-5", lambda s: _num(s.get("top5")), width=7),
    Column("best top-1", lambda s: _num(s.get("best_top1")), width=10),
    _VAL,
    Column("time", lambda s: f"{s['seconds']:.0f}s", width=7),
)
TABLE_COLUMNS = tuple(c.header for c in MARKDOWN_COLUMNS if c is not _VAL)
TEXT_VAL_NOTE = "best top-1: test top-1 of the epoch of best validation top-1"


def _has_validation(stages: Sequence[Mapping]) -> bool:
    return any(s.get("best_val_top1") is not None for s in stages)


def results_table(results: Mapping, markdown: bool = True) -> str:
    """The table of ``results["stages"]`` (see the module docstring): Markdown with aligned
    columns (``MARKDOWN_COLUMNS``), or the plain text ``r2b train`` prints (``TEXT_COLUMNS``).
    The "val top-1" column is there when any stage has a validation top-1."""
    stages = results.get("stages")
    if not isinstance(stages, list):
        raise ValueError('results must hold a list under "stages"')
    val = _has_validation(stages)
    columns = [c for c in (MARKDOWN_COLUMNS if markdown else TEXT_COLUMNS) if val or c is not _VAL]
    rows = [[c.header for c in columns]] + [[c.cell(s) for c in columns] for s in stages]
    if markdown:
        return _markdown_table(columns, rows)
    return _text_table(columns, rows) + (f"\n{TEXT_VAL_NOTE}" if val else "")


def _markdown_table(columns: Sequence[Column], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]

    def line(cells: list[str]) -> str:
        cols = zip(cells, widths, columns)
        padded = [c.ljust(w) if col.left else c.rjust(w) for c, w, col in cols]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 2) if col.left else ("-" * (w + 1) + ":") for w, col in zip(widths, columns)]
    rule = "|" + "|".join(rule) + "|"
    return "\n".join([line(rows[0]), rule] + [line(r) for r in rows[1:]])


def _text_table(columns: Sequence[Column], rows: list[list[str]]) -> str:
    """Cells padded to their column's width (a longer cell widens only its own row)."""
    lines = [
        " ".join(format(c, f"{'<' if col.left else '>'}{col.width}") for c, col in zip(r, columns))
        for r in rows
    ]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


# --------------------------------------------------------------------------- curves


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """Columns of a metrics.csv as float lists (empty or unparsable cells -> NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(_float(value))
    return columns


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_curves(metrics_csv_paths: Mapping[str, str | Path], out_png: str | Path) -> Path:
    """Training loss and top-1 per epoch of each stage, stages end to end; returns the path.

    The top-1 is the validation split's when any stage has one (the split that selects, and the
    one evaluated every epoch under ``data.test_every_epoch: false``), else the test split's."""
    fig = Figure(figsize=(10, 4), dpi=120, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    offset = 0.0
    metrics = {name: read_metrics(path) for name, path in metrics_csv_paths.items()}
    split = "val" if any(_present(m.get("val_top1", [])) for m in metrics.values()) else "test"
    for i, (name, m) in enumerate(metrics.items()):
        epochs = m.get("epoch", [])
        loss = _first_present(m, ("train_loss", "loss"), len(epochs))
        top1 = m.get(f"{split}_top1", [math.nan] * len(epochs))
        x = [offset + e for e in epochs]
        color = f"C{i % 10}"
        _plot_present(ax_loss, x, loss, color, name)
        _plot_present(ax_acc, x, top1, color, name)
        if i:
            for ax in (ax_loss, ax_acc):
                ax.axvline(offset, color="0.6", linestyle=":", linewidth=1)
        offset += max((e for e in epochs if not math.isnan(e)), default=0.0)
    ax_loss.set(title="training loss", xlabel="epoch (stages end to end)", ylabel="loss")
    ax_acc.set(
        title="validation top-1" if split == "val" else "test top-1",
        xlabel="epoch (stages end to end)",
        ylabel="top-1 (%)",
    )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, out_png)


def _first_present(columns: Mapping[str, list[float]], keys: Sequence[str], n: int) -> list[float]:
    """The first of ``keys`` with any value; all NaN when none has."""
    for key in keys:
        if _present(columns.get(key, [])):
            return columns[key]
    return [math.nan] * n


def _present(values: Sequence[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def _plot_present(ax, x: Sequence[float], y: Sequence[float], color: str, label: str) -> None:
    pts = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", markersize=3, color=color, label=label)


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(out, buf.getvalue())
    return out


# --------------------------------------------------------------------------- attention


@torch.no_grad()
def _attention(model: nn.Module, images: torch.Tensor, points: Sequence[int]) -> list[torch.Tensor]:
    """(N, H, W) attention maps at ``points``, each map scaled to max 1, on the CPU."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        _, feats = model.forward_with_features(images.to(device))
    finally:
        model.train(was_training)
    maps = []
    for p in points:
        a = feats[p]
        q = attention_map(a).view(a.shape[0], *a.shape[-2:]).float().cpu()
        maps.append(q / q.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12))
    return maps


def _displayable(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] for imshow: undo normalisation, or scale uint8."""
    x = images.detach().float().cpu()
    if not images.dtype.is_floating_point:
        x = x / 255
    elif mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def plot_attention(
    teacher: nn.Module,
    student: nn.Module,
    images: torch.Tensor,
    out_png: str | Path,
    points: Sequence[int] = DEFAULT_POINTS,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Teacher vs student attention maps at transfer ``points`` (indices 0-7) for each image.

    ``images``: the model input (N, 3, H, W), normalised float; give ``mean``/``std`` to show it
    un-normalised (a uint8 batch is shown as is, and converted with ``mean``/``std`` for the
    models). One row per image: the input, then teacher and student maps for each point.
    ``titles`` optionally labels the rows (e.g. class names). Returns the PNG path.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty batch (N, 3, H, W), got {tuple(images.shape)}"
        )
    model_input = images
    if not images.dtype.is_floating_point:
        model_input = images.float() / 255
        if mean is not None and std is not None:
            m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
            model_input = (model_input - m) / s
    t_maps = _attention(teacher, model_input, points)
    s_maps = _attention(student, model_input, points)
    shown = _displayable(images, mean, std)
    n, cols = images.shape[0], 1 + 2 * len(points)
    fig = Figure(figsize=(1.35 * cols, 1.45 * n + 0.3), dpi=120, layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for r in range(n):
        axes[r][0].imshow(shown[r].numpy(), interpolation="nearest")
        if titles is not None:
            axes[r][0].set_ylabel(str(titles[r]), fontsize=8)
        for j, p in enumerate(points):
            for k, (who, maps) in enumerate((("teacher", t_maps), ("student", s_maps))):
                ax = axes[r][1 + 2 * j + k]
                ax.imshow(maps[j][r].numpy(), cmap="inferno", vmin=0, vmax=1,
                          interpolation="bilinear")  # fmt: skip
                if r == 0:
                    ax.set_title(f"{who}\nblock {p + 1}", fontsize=8)
    axes[0][0].set_title("input", fontsize=8)
    for ax in (a for row in axes for a in row):
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, out_png)


def plot_stage_attention(
    run_dir: str | Path, stage: str, teacher: nn.Module, test_set, n_images: int,
    image_size: int | None = None, device: str | torch.device = "cpu",
) -> Path:  # fmt: skip
    """``attention_<stage>.png``: teacher-vs-student attention maps of the stage's best weights
    on the first image of each of the first ``n_images`` classes of ``test_set``."""
    folder = RunFolder(run_dir)
    student, _ = load_model(folder.stage(stage).best, device)
    images, labels = first_of_each_class(test_set, n_images)
    x = build_augment(test_set, train=False, image_size=image_size)(images.to(device))
    names = [test_set.classes[int(k)] for k in labels]
    out = folder.attention(stage)
    return plot_attention(
        teacher, student, x, out, mean=test_set.mean, std=test_set.std, titles=names
    )


# --------------------------------------------------------------------------- report.md


def load_results(run_dir: str | Path) -> dict:
    """``run_dir/results.json`` as a dict; ``UserError`` when missing or unreadable."""
    path = RunFolder(run_dir).results
    if not path.is_file():
        raise UserError(f"{path} not found; give the folder of a finished training run")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); rerun training to rewrite it") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} ({err}); check the file") from None
    stages = results.get("stages") if isinstance(results, dict) else None
    if not isinstance(stages, list) or not all(isinstance(st, dict) for st in stages):
        raise UserError(f'{path} has no "stages" list of records; rerun training to rewrite it')
    return results


def stage_metrics(run_dir: str | Path, results: Mapping) -> dict[str, Path]:
    """{stage name: metrics.csv path} for the stages whose metrics file exists."""
    folder = RunFolder(run_dir)
    found = {}
    for stage in results["stages"]:
        name = str(stage.get("name"))
        if stage.get("metrics"):
            path = folder.root / stage["metrics"]
        else:
            path = folder.stage(stage.get("dir") or name).metrics
        if path.is_file():
            found[name] = path
    return found


def write_report(run_dir: str | Path) -> Path:
    """Write ``curves.png`` and ``report.md`` into ``run_dir``; returns the report's path."""
    folder = RunFolder(run_dir)
    run_dir, curves = folder.root, folder.curves.name
    results = load_results(run_dir)
    metrics = stage_metrics(run_dir, results)
    lines = [f"# {results.get('title') or 'r2b training report'}", ""]
    facts = [f"{k}: {results[k]}" for k in ("dataset", "device") if results.get(k)]
    if facts:
        lines += ["; ".join(facts), ""]
    if results.get("selection") == "val" or _has_validation(results["stages"]):
        note = (
            "Accuracies in percent. The best epoch is the one of best validation top-1 (a split "
            "held out of the training images); best top-1 and top-5 are the test accuracies of "
            "that epoch, final top-1 the test top-1 after the last epoch."
        )
    else:
        note = (
            "Accuracies in percent on the test split; best top-1 with its epoch (chosen on the "
            "test split: the run had no validation split, data.val_fraction 0)."
        )
    lines += ["## Results", "", results_table(results), "", note, ""]
    if metrics:
        plot_curves(metrics, folder.curves)
        lines += ["## Training curves", "", f"![training curves]({curves})", ""]
    others = [p.name for p in folder.figures() if p.name != curves]
    if others:
        lines += ["## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in others] + [""]
    links = [f"[{p.name}]({p.name})" for p in (folder.config, folder.results) if p.is_file()]
    links += [f"[{n} metrics]({p.relative_to(run_dir).as_posix()})" for n, p in metrics.items()]
    if links:
        lines += ["## Files", "", ", ".join(links), ""]
    out = folder.report
    atomic_write(out, "\n".join(lines).encode())
    return out
