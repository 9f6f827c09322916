"""Parts of the packed engine's float layers, each against its alternative, in one process.

    python benchmarks/bench_float_layers.py --threads 2 --tag zen4_2c

- the whole int8 stem from the float image (quantise, conv, BN, PReLU, max-pool) as one compiled
  VNNI pass (``kernels.int8_stem``, the engine's choice where the CPU has AVX-512 VNNI) and as
  oneDNN's int8 conv followed by the compiled tail (skipped without VNNI);

- the stem tail (``r2b.packed.kernels.stem_tail``: BN, PReLU, 3x3/2 max-pool of the stem conv's
  output) with the max-pool taken first (every channel monotone: the default) and last, on the
  same conv output of the Real-to-Bin ImageNet stem (int8 mode, 224x224);
- the classifier (512 -> 1000) in int8 (``PackedClassifier``: quantise, ``torch._int_mm``,
  dequantise) and in fp32 (``nn.Linear``), each call after the weights were evicted from the
  caches (a 32 MiB pass), as in a forward pass where the classifier's weights come last.

Random weights (speed does not depend on them), batch 1 and 8, the two variants alternating
call by call, medians of ``--calls``. Writes ``results/float_layers_<tag>.{json,md}`` with the
command, commit, machine and load average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import provenance

from r2b.models import create_model
from r2b.packed import kernels, to_packed
from r2b.packed.layers import _launch, quantized_input

RESULTS = Path(__file__).resolve().parent / "results"


def _alternate(first, second, calls: int, before=None) -> tuple[float, float]:
    """Medians (ms) of ``first`` and ``second`` called in turn ``calls`` times each."""
    times: tuple[list[float], list[float]] = ([], [])
    for f in (first, second):
        f()
    for _ in range(calls):
        for f, out in ((first, times[0]), (second, times[1])):
            if before is not None:
                before()
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return tuple(round(statistics.median(t) * 1e3, 4) for t in times)


def stem_tail_pair(packed, batch: int):
    """The stem tail on one conv output: pool first (the engine's choice), pool last."""
    stem = packed.stem
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    conv = stem.conv.integer_sums(quantized_input(stem.conv, x))
    nhwc = conv.permute(0, 2, 3, 1).contiguous().numpy()
    k, s, p = stem._pool
    h, w = nhwc.shape[1:3]
    out = np.empty((batch, nhwc.shape[3], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1),
                   np.float32)  # fmt: skip
    a, b, slope, sgn = stem._tiled(w)
    assert sgn.size, "the random stem's channels are all monotone"
    pool = np.array(stem._pool, np.int64)

    def run(directions):
        return lambda: kernels.stem_tail(nhwc, stem.bn_mode, a, b, slope, directions, pool, out,
                                         _launch("stem_tail"))  # fmt: skip

    return run(sgn), run(np.zeros(0, np.float32))


def int8_stem_pair(packed, batch: int):
    """The int8 stem on one image batch: one VNNI pass, and oneDNN's conv then the tail."""
    stem = packed.stem
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    fused = stem._vnni

    def run(vnni):
        def call():
            stem._vnni = vnni
            try:
                return stem(x)
            finally:
                stem._vnni = fused

        return call

    assert torch.equal(run(fused)(), run(None)())
    return run(fused), run(None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--tag", default="local")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("r2b_resnet18", stem="imagenet", stage="bnn").eval()
    calibration = [torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))]
    packed = to_packed(model, "int8", calibration)
    flush = torch.zeros(8 * 1024 * 1024)
    rows = []
    with torch.inference_mode():
        for batch in (1, 8):
            if packed.stem._vnni is not None:
                vnni, onednn = _alternate(*int8_stem_pair(packed, batch), args.calls)
                rows.append({"part": "int8 stem", "batch": batch, "variants": [
                    "one VNNI pass", "oneDNN conv + tail"], "ms": [vnni, onednn]})  # fmt: skip
            first, last = _alternate(*stem_tail_pair(packed, batch), args.calls)
            rows.append({"part": "stem tail", "batch": batch, "variants": ["pool first",
                         "pool last"], "ms": [first, last]})  # fmt: skip
            features = torch.randn(batch, 512, generator=torch.Generator().manual_seed(2))
            int8, fp32 = _alternate(lambda f=features: packed.fc(f),
                                    lambda f=features: model.fc(f), args.calls,
                                    before=lambda: flush.add_(1.0))  # fmt: skip
            rows.append({"part": "classifier, weights not in cache", "batch": batch,
                         "variants": ["int8", "fp32"], "ms": [int8, fp32]})  # fmt: skip
    for row in rows:
        row["ratio"] = round(row["ms"][0] / row["ms"][1], 3)
        print(row)
    result = {"benchmark": "float_layers", **provenance("bench_float_layers.py"),
              "threads": args.threads, "calls": args.calls, "rows": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"float_layers_{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"float_layers_{args.tag}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    load = " ".join(f"{v:.2f}" for v in result["load_average"])
    lines = [
        f"Float layers of the packed engine (int8 mode, Real-to-Bin ImageNet stem, 224x224, random "
        f"weights), {result['threads']} threads, each pair alternating call by call, medians of "
        f"{result['calls']} calls.",
        f"Command: `{result['command']}` · commit {result['commit'][:10]} · {result['machine']} · "
        f"load average {load}",
        "",
        "| part | batch | variant A | A ms | variant B | B ms | A / B |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for r in result["rows"]:
        (a, b), (ta, tb) = r["variants"], r["ms"]
        lines.append(f"| {r['part']} | {r['batch']} | {a} | {ta:.3f} | {b} | {tb:.3f} | "
                     f"{r['ratio']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
