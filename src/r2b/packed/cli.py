"""``r2b export`` and ``r2b bench``: thin command-line calls of the packed engine.

- ``r2b export CHECKPOINT|MODEL_NAME -o model.r2b``: pack a fully binary checkpoint (or a registered
  binary model with random weights, for benchmarking) into a ``.r2b`` file, read it back and check
  that it reproduces the float model's logits exactly.
- ``r2b bench [MODEL.r2b|MODEL_NAME] [--batch N] [--threads N] [--json]``: packed vs PyTorch float
  ResNet-18 on the same input, in the same process, with the same threads; ``--against
  openvino,onnxruntime``: against those engines' fp32 and int8 ResNet-18 too, each in its own
  process (``r2b.bench_engines``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from r2b.errors import UserError


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from r2b.models import STEMS

    p = sub.add_parser(
        "export",
        help="write a fully binary model as a .r2b file, an LCE flatbuffer or an OpenVINO IR",
        description="Write a fully binary (stage bnn) checkpoint for an inference engine. "
        "--format r2b (default): a bitpacked .r2b file for r2b's packed engine (binary weights "
        "as bits, real tensors as they are, the architecture as JSON), read back and checked "
        "bit for bit. --format lce: a TFLite flatbuffer with Larq Compute Engine's binary ops "
        "(for ARM; the lce extra). --format openvino: an OpenVINO IR (model.xml + model.bin) "
        "whose binary convs OpenVINO's CPU plugin runs as BinaryConvolution (the openvino "
        "extra); its input is float32 NCHW, normalised as in training. A registered model name "
        "instead of a checkpoint exports that model with random weights (for benchmarks).",
    )
    p.add_argument("checkpoint", help="weights file of a bnn stage, or a model name")
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="output file: model.r2b, model.tflite (lce), model.xml (openvino)",
    )
    p.add_argument(
        "--format",
        choices=["r2b", "lce", "openvino"],
        default="r2b",
        help="r2b (default), lce or openvino",
    )
    p.add_argument("--input-size", type=int,
                   help="lce and openvino: square input side fixed in the file (default 224 "
                   "for the ImageNet stem, 32 for CIFAR)")  # fmt: skip
    p.add_argument("--stem", choices=STEMS, help="with a model name (imagenet)")
    p.add_argument("--num-classes", type=int, help="with a model name (1000)")
    p.add_argument("--width", type=float, help="with a model name: width multiplier (1.0)")
    p.add_argument("--seed", type=int, default=0, help="with a model name: weight seed")
    p.add_argument(
        "--float-layers",
        choices=["float", "int8"],
        default="float",
        help="r2b: int8 runs the stem conv, the downsample 1x1 convs and the classifier in int8 "
        "(post-training quantisation; equals r2b.packed.int8.int8_reference bit for "
        "bit); float (default) keeps them float, equal to the float model",
    )
    p.add_argument(
        "--calib-images",
        type=int,
        default=None,
        help="with --float-layers int8: training images to calibrate on (512; a "
        "model name calibrates on random images, for timing only)",
    )
    p.add_argument(
        "--data",
        help="with --float-layers int8: calibration data, a dataset name "
        "or a folder with train/ (default: the data the checkpoint was trained on)",
    )
    p.add_argument("--root", help="with --data NAME: its data folder")
    p.set_defaults(func=run_export)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from r2b.models import STEMS

    p = sub.add_parser(
        "bench",
        help="time the packed network against PyTorch's float ResNet-18",
        description="Time a packed model (a .r2b file, or a model name with random weights; "
        "default r2b_resnet18) against PyTorch's float ResNet-18 on the same input, in this "
        "process, with the same threads: medians of --runs alternating runs after warm-up, "
        "then the time of each part and each binary conv's G binary-MACs/s.",
    )
    p.add_argument("model", nargs="?", help="MODEL.r2b or a model name (default r2b_resnet18)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (1)")
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's setting)")
    p.add_argument("--input-size", type=int, help="square input side (224 imagenet, 32 cifar)")
    p.add_argument("--stem", choices=STEMS, help="with a model name")
    p.add_argument("--num-classes", type=int, help="with a model name")
    p.add_argument("--runs", type=int, default=30, help="timed runs of each network (30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (5)")
    p.add_argument("--no-profile", action="store_true", help="skip the per-layer profile")
    p.add_argument(
        "--omp-wait-policy", choices=["passive", "active", "inherit"], default=None,
        help="OMP_WAIT_POLICY for both networks (default passive: idle threads sleep instead of "
        "spinning, which keeps timings stable when other programs share the cores; inherit: "
        "leave the environment as it is; with --against: active or passive for the packed "
        "engine, default both)",
    )  # fmt: skip
    p.add_argument(
        "--omp-dynamic", choices=["true", "false", "inherit"], default="true",
        help="OMP_DYNAMIC for both networks (default true: the OpenMP runtime may run a "
        "parallel region on fewer threads while the 15-minute load average says the cores are "
        "busy; on an idle machine it changes nothing)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--against", metavar="ENGINES",
        help="comma list of reference engines, openvino and/or onnxruntime (the bench extra: "
        'pip install -e ".[bench]"): the packed model against PyTorch eager float ResNet-18 and '
        "the engines' fp32 and int8 (static QDQ) ResNet-18, and OpenVINO running this binary "
        "network, each measurement in its own process, --rounds alternating rounds, medians",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="with --against: rounds (3)")
    p.set_defaults(func=run_bench)


def _check_output_path(out: Path) -> None:
    """One line, before anything is packed, for an ``-o`` that is a folder or lies under a file."""
    if out.is_dir():
        raise UserError(f"-o {out} is a folder; give a file name, e.g. -o {out / 'model.r2b'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"-o {out}: {parent} is a file, not a folder; choose another -o")
            break


def run_export(args: argparse.Namespace) -> int:
    from r2b.cli_args import check_model_flags, model_name_or_file
    from r2b.packed import load, save, to_packed

    check_model_flags(args)
    _check_int8_flags(args)
    _check_output_path(Path(args.out))
    target = model_name_or_file(args.checkpoint, "a checkpoint file")
    if isinstance(target, str):
        model = _random_binary_model(target, args)
    else:
        from r2b.train.checkpoint import load_model

        model, _ = load_model(target)
    if args.format == "openvino":
        return _export_openvino(model, Path(args.out), args.input_size)
    if args.format == "lce":
        return _export_lce(model, Path(args.out), args.input_size)
    if args.input_size is not None:
        raise UserError("--input-size applies to --format lce and openvino; a .r2b file takes "
                        "any input size")  # fmt: skip
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise UserError(f"folder {out.parent} does not exist; create it or choose another -o")
    calibration = _calibration(args, target, model)
    packed = to_packed(model, args.float_layers, calibration)
    size = save(packed, out)
    check = _verify(model, load(out), calibration)
    n_bits = sum(int(c.bits.size) * 8 for _, c in packed.record.binary_convs)
    float_mib = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    print(
        f"wrote {out}: {size / 2**20:.2f} MiB ({size} bytes; binary weights "
        f"{n_bits / 2**20:.2f} MiB as bits; float parameters {float_mib:.1f} MiB); {check}"
    )
    return 0


def _check_int8_flags(args: argparse.Namespace) -> None:
    """The int8 flags only with ``--format r2b --float-layers int8``."""
    int8_only = [f for f, v in (("--calib-images", args.calib_images), ("--data", args.data),
                                ("--root", args.root)) if v is not None]  # fmt: skip
    if args.float_layers == "int8" and args.format != "r2b":
        raise UserError(f"--float-layers int8 applies to --format r2b, not {args.format}")
    if int8_only and args.float_layers != "int8":
        raise UserError(f"{int8_only[0]} applies only with --float-layers int8")


def _calibration(args: argparse.Namespace, target, model):
    """``--float-layers int8``'s calibration batches: ``--calib-images`` training images of the
    checkpoint's data (or ``--data``), random images for a model name; ``None`` for float."""
    from r2b.packed.calibration import (
        DEFAULT_CALIBRATION_IMAGES,
        calibration_batches,
        random_calibration,
    )

    if args.float_layers != "int8":
        return None
    n = DEFAULT_CALIBRATION_IMAGES if args.calib_images is None else args.calib_images
    if n < 1:
        raise UserError(f"--calib-images is {n}; give 1 or more training images")
    if isinstance(target, str):
        from r2b.models import default_input_size

        return random_calibration(n, default_input_size(model.arch))
    from r2b.train.checkpoint import read_weights
    from r2b.train.cli import checkpoint_split

    _, _, info = read_weights(target)
    train, data = checkpoint_split(target, info, "train", args.data, args.root)
    return calibration_batches(train, n, data.get("image_size"))


def _random_binary_model(name: str, args: argparse.Namespace):
    """The registered binary family ``name`` in stage bnn with ``--seed``'s random weights and
    the model flags given (``--stem``, ``--num-classes``, ``--width``)."""
    import torch

    from r2b.cli_args import require_binary_family
    from r2b.models import create_model

    require_binary_family(name, "export")
    kwargs = {"stage": "bnn"}
    for key in ("stem", "num_classes", "width"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    torch.manual_seed(args.seed)
    return create_model(name, **kwargs).eval()


def _export_openvino(model, out: Path, input_size: int | None) -> int:
    """``--format openvino``: write the IR, compile it on the CPU and compare it with the model."""
    from r2b import openvino as r2b_openvino

    info = r2b_openvino.export(model, out, input_size=input_size)
    check = r2b_openvino.check_export(model, info["xml"])
    print(
        f"wrote {info['xml']} + {info['bin'].name}: {info['bytes'] / 2**20:.2f} MiB, input "
        f"float32 NCHW {info['input_shape']} (normalised as in training); {check['summary']}"
    )
    return 0


def _export_lce(model, out: Path, input_size: int | None) -> int:
    """``--format lce``: ``r2b.lce.export`` (imported only here; it needs the lce extra)."""
    try:
        from r2b.lce import export as lce_export
    except ImportError as err:
        name = err.name or ""
        if name in ("r2b.lce", "r2b.lce.export"):
            raise UserError(
                "this r2b has no LCE exporter (r2b.lce); use --format r2b or openvino"
            ) from None
        if name.startswith("r2b"):
            raise
        raise UserError(
            f"--format lce needs the {name or 'lce'} package; install it with "
            'pip install -e ".[lce]"'
        ) from None
    if input_size is None:
        from r2b.models import default_input_size

        input_size = default_input_size(getattr(model, "arch", {}))
    result = lce_export(model, out, input_size=input_size)
    size = out.stat().st_size
    ops = result.get("ops") if isinstance(result, dict) else None
    ops = f"; ops: {', '.join(f'{k} x{v}' for k, v in dict(ops).items())}" if ops else ""
    print(f"wrote {out}: {size / 2**20:.2f} MiB ({size} bytes; TFLite flatbuffer with LCE ops, "
          f"input {input_size}x{input_size}){ops}")  # fmt: skip
    return 0


def _verify(model, packed, calibration=None) -> str:
    """Compare the read-back packed model with what it must equal on a random batch: the float
    model, or with int8 float layers their reference (``r2b.packed.int8.int8_reference``)."""
    import torch

    from r2b.models import default_input_size
    from r2b.packed.int8 import int8_reference

    size = default_input_size(model.arch)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    oracle = model.eval() if calibration is None else int8_reference(model, calibration)
    what = "the float model" if calibration is None else "its int8 reference"
    with torch.inference_mode():
        expected = oracle(x)
        got = packed(x)
    if not torch.equal(expected, got):
        err = ((got - expected).abs().max() / expected.abs().max()).item()
        raise UserError(f"the exported model differs from {what} (max rel. {err:.2e})")
    return f"read back: logits identical to {what}"


def run_bench(args: argparse.Namespace) -> int:
    from r2b.packed.bench import benchmark, format_report, load_for_bench, peak_gbmacs, profile

    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.runs < 1 or args.batch < 1:
        raise UserError("--runs and --batch must be at least 1")
    from r2b.cli_args import check_model_flags, named_model_stem

    check_model_flags(args, named_model_stem(args, args.model or "r2b_resnet18"))
    if args.against is not None:
        return _run_against(args)
    policy = args.omp_wait_policy or "passive"
    wanted = {"OMP_WAIT_POLICY": policy, "OMP_DYNAMIC": args.omp_dynamic}
    wanted = {k: v.upper() for k, v in wanted.items() if v != "inherit"}
    if any(os.environ.get(k, "").upper() != v for k, v in wanted.items()):
        # the OpenMP runtime reads these once, when PyTorch loads it: run the command anew
        env = dict(os.environ, **wanted)
        return subprocess.run([sys.executable, "-m", "r2b.cli", *_bench_argv(args)],
                              env=env).returncode  # fmt: skip
    packed = load_for_bench(args.model, args.stem, args.num_classes)
    result = benchmark(
        packed, args.batch, args.input_size, args.threads, runs=args.runs, warmup=args.warmup
    )
    prof = peak = None
    if not args.no_profile:
        prof = profile(packed, args.batch, result["input_size"])
        peak = peak_gbmacs(result["threads"])
        result["profile"] = prof
        result["peak_gbmacs_per_s"] = peak
    result["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
    result["omp_dynamic"] = os.environ.get("OMP_DYNAMIC", "(default)")
    if args.json:
        print(json.dumps(result, default=float))
    else:
        print(format_report(result, prof, peak))
    return 0


def _run_against(args: argparse.Namespace) -> int:
    """``r2b bench --against``: ``r2b.bench_engines.compare`` (each engine its own process)."""
    from r2b import bench_engines as be

    names = [n.strip() for n in args.against.split(",") if n.strip()]
    unknown = [n for n in names if n not in be.AGAINST]
    if unknown or not names:
        raise UserError(
            f"unknown engine {', '.join(map(repr, unknown)) or '(none)'} for --against; "
            f"choose from {', '.join(be.AGAINST)}, comma-separated"
        )
    missing = be.missing_extras(("onnx", "onnxruntime", *(be.AGAINST[n] for n in names)))
    if missing:
        raise UserError(
            f"r2b bench --against needs the bench extra: {be.EXTRA_HINT} "
            f"(missing: {', '.join(dict.fromkeys(missing))})"
        )
    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    env = be.orchestrator_env()
    if env is not None:  # this process's own OpenMP threads must sleep: run the command anew
        return subprocess.run([sys.executable, "-m", "r2b.cli", *_bench_argv(args)],
                              env=env).returncode  # fmt: skip
    import torch

    from r2b.models import default_input_size
    from r2b.packed import to_packed
    from r2b.packed.bench import float_model_for_bench, load_for_bench

    binary = float_model_for_bench(args.model, args.stem, args.num_classes)
    if binary is not None:
        packed = to_packed(binary)
    else:
        packed = load_for_bench(args.model, args.stem, args.num_classes)
    omp = ("active", "passive")
    if args.omp_wait_policy in ("active", "passive"):
        omp = (args.omp_wait_policy,)
    report = be.compare(
        names, packed, binary, batch=args.batch, threads=args.threads or torch.get_num_threads(),
        input_size=args.input_size or default_input_size(packed.arch), rounds=args.rounds,
        runs=args.runs, warmup=args.warmup, omp=omp,
        log=(lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print,
    )  # fmt: skip
    print(json.dumps(report, default=float) if args.json else be.format_compare(report))
    return 0


def _bench_argv(args: argparse.Namespace) -> list[str]:
    """The ``r2b bench`` arguments that reproduce ``args`` (with the wait policy inherited, but
    for ``--against``, whose policy choice is the packed engine's)."""
    argv = ["bench"] + ([args.model] if args.model else [])
    for flag in ("batch", "threads", "input_size", "stem", "num_classes", "runs", "warmup",
                 "against", "rounds"):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    policy = args.omp_wait_policy if args.against is not None else "inherit"
    argv += ["--omp-wait-policy", policy] if policy else []
    argv += ["--omp-dynamic", "inherit"]
    argv += ["--no-profile"] if args.no_profile else []
    argv += ["--json"] if args.json else []
    return argv
