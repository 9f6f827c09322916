"""int8 float layers against the exact packed engine on a trained checkpoint (issue 9, part 3).

    python benchmarks/int8_accuracy.py RUN/r2b_bnn/best.safetensors [--calib-images 512]

Calibrates ``to_packed(model, "int8", calibration)`` on a class-balanced subset of the images the
checkpoint was trained on (its run's training split, so neither the validation nor the test
split), then runs on the whole test split of that data: the eval float model, the exact packed
engine, the int8 packed engine and its reference (``r2b.packed.int8.int8_reference``). Records
each one's top-1/top-5, the int8 engine's loss against exact, whether int8 equals its reference
bit for bit on every test image, and top-1 agreement -> ``results/int8_accuracy_<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from common import provenance  # noqa: E402

from r2b.data import build_augment  # noqa: E402
from r2b.packed import to_packed  # noqa: E402
from r2b.packed.calibration import DEFAULT_CALIBRATION_IMAGES, calibration_batches  # noqa: E402
from r2b.packed.int8 import int8_reference  # noqa: E402
from r2b.train.checkpoint import load_model, read_weights  # noqa: E402
from r2b.train.cli import checkpoint_split  # noqa: E402
from r2b.train.evaluate import eval_batches  # noqa: E402
from r2b.train.metrics import topk_correct  # noqa: E402


def logits_of(models: dict, dataset, transform, batch: int = 500) -> tuple[dict, torch.Tensor]:
    """Every model's logits on ``dataset`` (one pass over the images) and the labels."""
    outs = {name: [] for name in models}
    labels = []
    with torch.inference_mode():
        for images, y in eval_batches(dataset, batch):
            x = transform(images)
            for name, model in models.items():
                outs[name].append(model(x))
            labels.append(y)
    return {k: torch.cat(v) for k, v in outs.items()}, torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    c1, c5 = topk_correct(logits, labels)
    n = len(labels)
    return {"top1": 100.0 * float(c1) / n, "top5": 100.0 * float(c5) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="weights of a bnn stage (best.safetensors)")
    ap.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES)
    ap.add_argument("--name", help="results name (default: the stage folder's name)")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    stamp = provenance("int8_accuracy.py")  # taken before the run: the commit that ran it
    name = args.name or args.checkpoint.parent.name

    model, _ = load_model(args.checkpoint)
    _, arch, info = read_weights(args.checkpoint)
    train, data = checkpoint_split(args.checkpoint, info, "train")
    test, _ = checkpoint_split(args.checkpoint, info, "test")
    calibration = calibration_batches(train, args.calib_images, data.get("image_size"))
    t0 = time.perf_counter()
    models = {
        "float eval model": model.eval(),
        "packed exact": to_packed(model),
        "packed int8": to_packed(model, "int8", calibration),
        "int8 reference": int8_reference(model, calibration),
    }
    transform = build_augment(test, train=False, image_size=data.get("image_size"))
    logits, labels = logits_of(models, test, transform)
    exact, int8 = logits["packed exact"], logits["packed int8"]
    result = {
        "benchmark": "int8_accuracy",
        **stamp,
        "checkpoint": str(args.checkpoint),
        "arch": arch,
        "data": data.get("name"),
        "calibration": {"split": "train", "images": sum(len(b) for b in calibration),
                        "rule": "per-tensor min/max, asymmetric uint8; per-channel int8 weights"},
        "test_images": len(labels),
        "accuracy": {k: accuracy(v, labels) for k, v in logits.items()},
        "packed_exact_equals_float": bool(torch.equal(exact, logits["float eval model"])),
        "int8_equals_reference": bool(torch.equal(int8, logits["int8 reference"])),
        "int8_top1_agreement_with_exact": float((int8.argmax(1) == exact.argmax(1)).float().mean()),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    acc = result["accuracy"]
    result["int8_top1_loss_points"] = acc["packed exact"]["top1"] - acc["packed int8"]["top1"]
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"int8_accuracy_{name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        f"int8 float layers on `{r['checkpoint']}` ({r['data']} test split, {r['test_images']} "
        f"images; calibration: {r['calibration']['images']} training images, "
        f"{r['calibration']['rule']}).",
        f"Command: `{r['command']}` · commit {r['commit'][:10]} · {r['machine']} · load "
        f"{r['load_average'][0]:.2f}",
        "",
        "| engine | top-1 % | top-5 % |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v['top1']:.2f} | {v['top5']:.2f} |" for k, v in r["accuracy"].items()]
    lines += [
        "",
        f"int8 loses **{r['int8_top1_loss_points']:+.2f}** top-1 points against exact; top-1 "
        f"agreement with exact {100 * r['int8_top1_agreement_with_exact']:.2f}%; int8 engine "
        f"equals its reference bit for bit on every test image: {r['int8_equals_reference']}; "
        f"exact engine equals the float model: {r['packed_exact_equals_float']}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
