"""The ops of r2b's LCE export of the ImageNet Real-to-Binary net beside LCE's own conversion of
larq-zoo's RealToBinaryNet (224x224, random weights): op histograms, the binary convs' options
and filters, file sizes -> benchmarks/results/lce_ops.json.

Two steps, in two environments:

    # 1. LCE's converter on larq-zoo's model, in the peers' Keras venv (../shared/peers)
    ../shared/peers/setup_venv.sh        # once, ~35 s
    ../shared/peers/run.sh $PWD/benchmarks/lce_ops.py --larq-convert /tmp/lce-larq-r2b.tflite
    # 2. r2b's export, both files read with r2b.lce.read, the comparison written
    .venv/bin/python benchmarks/lce_ops.py --larq /tmp/lce-larq-r2b.tflite

Step 1 imports nothing of r2b (that venv has TensorFlow, not torch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def larq_convert(out: str, size: int) -> None:
    """LCE's converter on larq-zoo's RealToBinaryNet (random weights), written to ``out``."""
    sys.path.insert(0, os.getcwd())  # ../shared/peers/run.sh runs in the peers folder
    sys.path.insert(0, str(REPO.parent / "shared" / "peers"))
    import larq_compute_engine as lce
    import numpy as np
    import tensorflow as tf
    from peers_models import r2b_binary

    model = r2b_binary(input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-like BN statistics, so that no BN folds away
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.3, beta.shape),
                    rng.normal(0, 0.3, mean.shape),
                    rng.uniform(0.3, 3, var.shape),
                ]
            )
    data = lce.convert_keras_model(model)
    Path(out).write_bytes(data)
    print(f"wrote {out}: {len(data)} bytes (larq-compute-engine {lce.__version__})")


def _bconv_summary(graph: dict) -> dict:
    """What LCE's binary convs carry: the distinct option maps and filter shapes/dtypes."""
    opts, filters = [], []
    for op in graph["ops"]:
        if op["code"] != "LceBconv2d":
            continue
        o = {k: v for k, v in op["options"].items() if k != "channels_in"}
        if o not in opts:
            opts.append(o)
        f = graph["tensors"][op["inputs"][1]]
        filters.append(f"{f['dtype']}{list(f['shape'])}")
    quant = [graph["tensors"][op["outputs"][0]] for op in graph["ops"]
             if op["code"] == "LceQuantize"]  # fmt: skip
    return {
        "options_except_channels_in": opts,
        "filters": filters,
        "quantize_outputs": [f"{t['dtype']}{list(t['shape'])}" for t in quant],
        "operand_count": sorted(
            {len(op["inputs"]) for op in graph["ops"] if op["code"] == "LceBconv2d"}
        ),  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--larq-convert", metavar="OUT", help="step 1: run LCE's converter")
    ap.add_argument("--larq", metavar="TFLITE", help="step 2: LCE's conversion from step 1")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lce_ops.json"))
    args = ap.parse_args()
    if args.larq_convert:
        return larq_convert(args.larq_convert, args.size)

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import provenance

    from r2b.lce import export, op_histogram, read
    from r2b.lce.check import randomize_
    from r2b.models import create_model

    torch.manual_seed(0)
    model = randomize_(create_model("r2b_resnet18", stem="imagenet"), 0).eval()
    ours = Path("/tmp/lce-r2b-export.tflite")
    info = export(model, ours, input_size=args.size)
    mine = ours.read_bytes()
    result = {
        "command": "../shared/peers/run.sh $PWD/benchmarks/lce_ops.py --larq-convert "
        "/tmp/lce-larq-r2b.tflite && .venv/bin/python benchmarks/lce_ops.py --larq "
        "/tmp/lce-larq-r2b.tflite",
        **{k: v for k, v in provenance("lce_ops.py").items() if k != "command"},
        "input_size": args.size,
        "r2b_export": {
            "model": "r2b_resnet18 (ImageNet stem, width 1, 1000 classes, random weights and BN)",
            "bytes": len(mine),
            "mib": round(len(mine) / 2**20, 3),
            "ops": op_histogram(mine),
            "binary_convs": _bconv_summary(read(mine)),
            "padded_bconvs": info["padded_bconvs"],
        },
    }
    if args.larq:
        theirs = Path(args.larq).read_bytes()
        graph = read(theirs)
        result["lce_conversion"] = {
            "model": "larq-zoo 2.4.0 RealToBinaryNet (weights=None, random BN statistics) "
            "converted by larq_compute_engine 0.16.0 convert_keras_model (TF 2.16.2)",
            "bytes": len(theirs),
            "mib": round(len(theirs) / 2**20, 3),
            "description": graph["description"],
            "ops": op_histogram(theirs),
            "binary_convs": _bconv_summary(graph),
        }
        a, b = result["r2b_export"]["ops"], result["lce_conversion"]["ops"]
        result["ops_difference"] = {k: a.get(k, 0) - b.get(k, 0) for k in sorted({*a, *b})
                                    if a.get(k, 0) != b.get(k, 0)}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
