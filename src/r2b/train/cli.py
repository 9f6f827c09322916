"""``r2b train`` and ``r2b eval``: thin command-line calls of the pipeline and the evaluator.

- ``r2b train`` with no arguments runs the built-in quick recipe (``r2b.train.recipes``) into a
  new ``runs/<name>-<time>`` folder.
- ``r2b train --config FILE [--set KEY=VALUE ...] [--out DIR] [--resume]``; with ``--resume`` the
  run's saved ``config.yaml`` is the base (``--set runtime.*`` may still change devices).
- ``r2b eval CHECKPOINT [--data NAME|DIR] [--root DIR] [--split test|val|train]``: top-1/top-5
  of a weights file on the data it was trained on (the whole test split; ``val``: the run's
  validation split, rebuilt from its seed and ``data.val_fraction``; ``train``: the images it
  was trained on), or on the given data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from r2b.errors import UserError


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run a staged training pipeline (default: the quick Real-to-Binary run, CPU)",
        description="Run a training pipeline. With no arguments: the quick 4-stage Real-to-Binary "
        "run on the embedded CIFAR-10 subset. Multi-GPU/multi-node: run the same command "
        "under torchrun. Exit status: 0 done, 2 bad input, 3 a loss became NaN/inf (the last "
        "good state is kept), 143/130 stopped by SIGTERM/SIGINT after saving its state (resume "
        "with --resume).",
    )
    p.add_argument("--config", "-c", help="YAML recipe (e.g. configs/cifar10/r2b.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. stages.bnn.epochs=2, stages.*.batch_size=64, "
        "data.root=/data (repeatable)",
    )  # fmt: skip
    p.add_argument("--out", "-o", help="run folder (default: a new runs/<name>-<time>)")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its last saved state (--set may change runtime.* "
        "and, e.g. after a diverged loss, an unfinished stage's optim.lr)",
    )  # fmt: skip
    p.set_defaults(func=run_train)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a test split")
    p.add_argument("checkpoint", help="weights file (best.safetensors / last.safetensors)")
    p.add_argument(
        "--data", help="dataset name (default, cifar10, cifar100, folder) or a folder with "
        "train/ and test/ (default: the data the checkpoint was trained on)",
    )  # fmt: skip
    p.add_argument("--root", help="data folder of the dataset named by --data")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--batch-size", type=int, default=500, help="images per batch (500)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only N images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (gpu = cuda)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_eval)


# --------------------------------------------------------------------------- train


def default_run_dir(name: str) -> Path:
    """A new ``runs/<name>-<YYYYmmdd-HHMMSS>`` folder name that does not exist yet."""
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def resolve_config(args: argparse.Namespace):
    """The run's config from --config / the saved config (on --resume) / the quick recipe."""
    from r2b.train.config import load_config
    from r2b.train.recipes import quick_config
    from r2b.train.run_folder import RunFolder

    if args.config:
        return load_config(args.config, args.overrides)
    if args.resume:
        saved = RunFolder(args.out).config
        if saved.is_file():
            return load_config(saved, args.overrides)
    return quick_config(args.overrides)


def _started_as_r2b_command() -> bool:
    """Whether this process is the ``r2b`` console script or ``python -m r2b.cli`` (and not,
    say, a test calling ``main`` in-process)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (spec is not None and spec.name == "r2b.cli") or Path(sys.argv[0]).name == "r2b"


def _reexec_with_passive_openmp() -> None:
    """Re-run this command in place with ``OMP_WAIT_POLICY=PASSIVE`` when no policy is set and
    training will run on the CPU.

    PyTorch's OpenMP threads busy-wait by default; on CPU cores shared with other programs that
    made 2-thread training 5-7x slower than 1 thread here. The OpenMP runtime reads the policy
    once, when torch is imported (before any of this code runs), so the process is replaced
    (``os.execv``: same process id, so a kill or torchrun still reaches it).
    """
    import torch

    if "OMP_WAIT_POLICY" in os.environ or torch.cuda.is_available():
        return
    if not _started_as_r2b_command():
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "r2b.cli", *sys.argv[1:]])


def run_train(args: argparse.Namespace) -> int:
    from r2b.train.pipeline import run_pipeline

    _reexec_with_passive_openmp()
    if args.resume and not args.out:
        raise UserError("--resume needs --out RUN_DIR: the folder of the run to continue")
    cfg = resolve_config(args)
    out = Path(args.out) if args.out else default_run_dir(cfg.name)
    run_pipeline(cfg, out, resume=args.resume)
    return 0


# --------------------------------------------------------------------------- eval


def _eval_device(text: str):
    """The torch device of ``--device``; UserError for unknown names or a missing GPU."""
    import torch

    name = text.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = "cuda" + name[3:] if name.startswith("gpu") else name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {text}: no CUDA GPU is visible; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {text}: there are only {count} GPUs (cuda:0..{count - 1})")
    return device


def checkpoint_split(
    checkpoint,
    info: dict,
    split: str,
    data_arg: str | None = None,
    root: str | None = None,
    max_images: int | None = None,
):
    """(dataset, data record) of a checkpoint's ``split`` as its run saw it (``info``: its
    ``read_weights`` record), or of ``--data`` / ``--root``: what ``r2b eval`` measures and
    ``r2b export --float-layers int8`` calibrates on (``split="train"``)."""
    from dataclasses import fields

    from r2b.data import DATASETS, limit, load_split
    from r2b.train.config import DataConfig, _from_mapping

    data = info.get("data") or {}
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {checkpoint} has a malformed info.data record; pass --data")
    seed = data.get("seed", 0)
    if data_arg:
        if data_arg in DATASETS:
            data = {"name": data_arg, "root": root}
        elif Path(data_arg).is_dir():
            data = {"name": "folder", "root": data_arg}
        else:
            raise UserError(
                f"--data {data_arg!r} is neither a dataset ({', '.join(DATASETS)}) nor a "
                "folder; check the name or path"
            )
    elif root:
        data = {**data, "root": root}
    if not data.get("name"):
        raise UserError("the checkpoint does not say what data it was trained on; pass --data")
    known = {f.name for f in fields(DataConfig)}
    try:
        cfg = _from_mapping(DataConfig, {k: v for k, v in data.items() if k in known}, "data")
    except UserError as err:
        raise UserError(
            f"checkpoint {checkpoint} has a malformed data record ({err}); pass --data"
        ) from None
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"checkpoint {checkpoint} has a malformed data.seed; pass --data")
    cfg.test_limit = None  # the whole test split, whatever the run used; --limit cuts it
    return limit(load_split(cfg, split, seed), max_images), data


def run_eval(args: argparse.Namespace) -> int:
    from r2b.data import build_augment, num_classes
    from r2b.train.checkpoint import describe_arch, load_model, read_weights
    from r2b.train.evaluate import eval_batches, evaluate

    if args.batch_size < 1:
        raise UserError(f"--batch-size is {args.batch_size}; give 1 or more images per batch")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit is {args.limit}; give 1 or more images (or leave it out)")
    device = _eval_device(args.device)
    _, arch, info = read_weights(args.checkpoint)
    ds, data = checkpoint_split(args.checkpoint, info, args.split, args.data, args.root, args.limit)
    if arch.get("num_classes") not in (None, num_classes(ds)):
        raise UserError(
            f"checkpoint {args.checkpoint} predicts {arch['num_classes']} classes but the "
            f"{data['name']} data has {num_classes(ds)}; evaluate it on the data it was trained on"
        )
    model, _ = load_model(args.checkpoint, device)
    transform = build_augment(ds, train=False, image_size=data.get("image_size"))
    res = evaluate(model, eval_batches(ds, args.batch_size), transform, device)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": data["name"], **res}))
    else:
        print(
            f"{describe_arch(arch)} on {data['name']} {args.split} ({res['n']} images): "
            f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}"
        )
    return 0
