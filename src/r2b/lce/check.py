"""Check an exported file against r2b itself in LCE's interpreter (``r2b.lce.runtime``).

``compare(cases)`` exports each model as it is and with probes (extra outputs: every half
block's input ``x``, sign input ``y``, LCE's bitpacked sign and binary conv output), runs the
files in LCE's interpreter and reports, per model:

- ``top1_agree``: fraction of inputs whose arg-max logit is the same in LCE and in r2b's eval
  model; ``rel_max_diff``: ``max |logits_lce - logits_r2b| / max |logits_r2b|``;
- ``flips_end_to_end``: fraction of the binarised values (all half blocks, all inputs) where
  LCE's bits (``LceQuantize``'s output) differ from r2b's ``sign(y)`` on the same image;
  ``inputs_with_flips`` how many inputs have any, ``first_flip_halves`` the half block where each
  such input first differs and ``first_flip_max_rel`` the largest ``|y| / max|y|`` of r2b's value
  at those first differences: before it every binarised value agreed, so only float rounding
  upstream (stem, shortcut convs, the binary convs' output transform, the gate) moved ``y``
  across 0, and these values are within rounding of 0. One flip changes a binary conv's output
  by ``2 m`` on up to 9 pixels, which later blocks amplify, so such an input's logits move by
  much more than rounding: ``rel_max_diff_without_flips`` is the figure over the other inputs;
- ``one_step_flips``: fraction of binarised values where ``sign(y_lce)`` differs from r2b's
  ``sign(pre(x_lce))`` -- the same block input, so only the op before the sign rounds
  differently (TFLite's MUL then ADD against PyTorch's BatchNorm), with
  ``one_step_flip_max_rel`` the largest such ``|y| / max|y|``;
- ``bconv_exact``: whether LCE's binary convs, given LCE's binarised inputs, compute exactly r2b's
  integer dot products ``d = conv(pad(sign y, +1), sign W)``: the probe ``c = m d + b`` (``m``,
  ``b`` the file's post_activation_multiplier and bias) gives back ``d`` to within
  ``bconv_max_dot_error`` (<< 0.5, so the integers are equal) everywhere.

``baseline=True`` adds the same comparison of r2b with itself (one input at a time against
the whole batch): PyTorch rounds differently at another batch size, and the same rare flips
move its logits as much (``r2b_batch1_*``).

``randomize_(model, seed)`` gives a model random BatchNorm statistics, affine parameters, PReLU
slopes, shifts and scales, so that no parameter is at its initial (often special) value.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r2b.layers import LearnedScale, LearnedShift, RPReLU
from r2b.lce import runtime
from r2b.lce.convert import export, model_spec
from r2b.lce.tflite import read


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics (mean ~ N(0, 0.3), var ~ U(0.3, 3)), BN weights ~ +-U(0.5, 1.5)
    (one in ten negative) and biases ~ N(0, 0.3), PReLU slopes ~ U(-0.3, 0.5), shifts ~
    N(0, 0.2), learned scales ~ U(0.2, 1.5); in place, returns ``model``."""
    g = torch.Generator().manual_seed(seed)

    def u(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    def n(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n(m.running_mean, 0.3)
            u(m.running_var, 0.3, 3.0)
            u(m.weight, 0.5, 1.5)
            m.weight.mul_(torch.where(torch.rand(m.weight.shape, generator=g) < 0.1, -1.0, 1.0))
            n(m.bias, 0.3)
        elif isinstance(m, RPReLU):
            u(m.weight, -0.3, 0.5)
            n(m.shift_in, 0.2)
            n(m.shift_out, 0.2)
        elif isinstance(m, nn.PReLU):
            u(m.weight, -0.3, 0.5)
        elif isinstance(m, LearnedShift):
            n(m.shift, 0.2)
        elif isinstance(m, LearnedScale):
            u(m.scale, 0.2, 1.5)
    return model


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(torch.float64)  # sign(0) = sign(-0.0) = +1


def binary_dots(y: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """r2b's integer dot products ``conv(pad(sign y, pad_value), sign W)`` in float64 (exact)."""
    ph, pw = conv.padding
    s = F.pad(_sign(y), (pw, pw, ph, ph), value=float(conv.pad_value))
    return F.conv2d(s, _sign(conv.weight.detach()), stride=conv.stride)


@torch.no_grad()
def _r2b_trace(model: nn.Module, spec, x: torch.Tensor) -> tuple[np.ndarray, list[torch.Tensor]]:
    """r2b's eval-model logits and every half block's sign input ``y`` (its binary conv's
    input, recorded by a forward pre-hook during the same forward pass)."""
    ys: list[torch.Tensor] = []
    hooks = [h.conv.register_forward_pre_hook(lambda _m, a: ys.append(a[0])) for h in spec.halves]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits.numpy(), ys


def unpack_bits(words: np.ndarray, channels: int) -> np.ndarray:
    """LCE's bitpacked int32 words ``(..., ceil(C/32))`` -> bits ``(..., C)`` (1 = negative)."""
    w = words.astype(np.int64) & 0xFFFFFFFF
    bits = (w[..., :, None] >> np.arange(32)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :channels].astype(bool)


@torch.no_grad()
def compare(
    cases: list[dict],
    n_inputs: int = 256,
    n_probe: int = 16,
    seed: int = 0,
    kernel: str = "default",
    python=None,
    baseline: bool = False,
) -> list[dict]:
    """Check each case (``{"label", "model", "input_size"}``, optionally ``"inputs"``: NCHW
    images, else ``n_inputs`` standard-normal ones) against LCE's interpreter; returns one
    report per case (module docstring), with ``logits`` (LCE's) when the case asks for it
    (``"keep_logits": True``).

    Three files run per case: with the bitpacked sign inputs as extra outputs on all inputs (the
    logits and the flips), as exported (no extra outputs) and with every probe on the first
    ``n_probe`` inputs; the extra outputs must leave the logits bit for bit unchanged.

    ``baseline``: also compare r2b with itself -- its logits one input at a time against the
    whole batch at once (``r2b_batch1_*``): PyTorch's kernels round differently at another
    batch size, so this shows what the same rounding-level flips do inside r2b alone.
    """
    gen = torch.Generator().manual_seed(seed)
    jobs, work = [], []
    with tempfile.TemporaryDirectory(prefix="r2b-lce-check-") as tmp:
        for i, case in enumerate(cases):
            case_jobs, case_work = _case_files(case, Path(tmp, f"m{i}"), gen, n_inputs, n_probe)
            jobs += [dict(job, kernel=kernel) for job in case_jobs]
            work.append(case_work)
        results = runtime.run(jobs, python)
    return [
        _case_report(case_work, results[3 * k : 3 * k + 3], kernel, baseline)
        for k, case_work in enumerate(work)
    ]


def _case_files(case: dict, prefix: Path, gen, n_inputs: int, n_probe: int) -> tuple[list, tuple]:
    """The three files of one case (``{prefix}_bits``, ``_plain``, ``_all``: see ``compare``),
    the interpreter jobs that run them and what ``_case_report`` needs afterwards (the files
    live only in ``compare``'s temporary folder, so the probed graph is read here)."""
    model, size = case["model"].eval(), case["input_size"]
    spec = model_spec(model)
    c_in = next(m for m in spec.stem.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = case.get("inputs")
    if x is None:
        x = torch.randn(n_inputs, c_in, size, size, generator=gen)
    files = [prefix.with_name(f"{prefix.name}_{k}.tflite") for k in ("bits", "plain", "all")]
    infos = [export(model, f, input_size=size, probes=p)
             for f, p in zip(files, [("bits",), False, True])]  # fmt: skip
    xs = x.permute(0, 2, 3, 1).numpy()
    jobs = [{"tflite": str(f), "inputs": inputs}
            for f, inputs in zip(files, [xs, xs[:n_probe], xs[:n_probe]])]  # fmt: skip
    return jobs, (case, model, spec, x, infos, read(files[2].read_bytes()))


def _case_report(case_work: tuple, runs: list[dict], kernel: str, baseline: bool) -> dict:
    """One case's report from its three interpreter runs (bits, plain, all probes)."""
    case, model, spec, x, infos, graph = case_work
    bits_run, plain_run, all_run = runs
    logits_lce = bits_run["outputs"][0]
    bits = dict(zip(infos[0]["probes"], bits_run["outputs"][1:]))
    logits, flips = _r2b_side(model, spec, x, bits)
    clean = ~flips.pop("flipped_inputs")
    report = {
        "label": case["label"],
        "input_size": case["input_size"],
        "inputs": len(x),
        "kernel": kernel,
        "bytes": infos[1]["bytes"],
        "ops": infos[1]["ops"],
        **_logit_agreement(logits_lce, logits, clean),
        "probes_leave_logits": bool(
            np.array_equal(plain_run["outputs"][0], logits_lce[: len(plain_run["outputs"][0])])
            and np.array_equal(all_run["outputs"][0], plain_run["outputs"][0])
        ),
    }
    report.update(flips)
    if baseline:
        report.update(_batch1_baseline(model, x, logits))
    if case.get("keep_logits"):
        report["logits"], report["r2b_logits"] = logits_lce, logits
    probes = dict(zip(infos[2]["probes"], all_run["outputs"][1:]))
    report.update(_probe_report(spec, probes, graph))
    return report


def _logit_agreement(logits_lce: np.ndarray, logits: np.ndarray, clean: np.ndarray) -> dict:
    """Top-1 agreement and max |diff| / max |logit| over all inputs and over the ``clean`` ones
    (no binarised value flipped; ``None`` when every input has a flip)."""
    per_input = np.abs(logits_lce - logits).max(1) / np.abs(logits).max()
    return {
        "top1_agree": float((logits_lce.argmax(1) == logits.argmax(1)).mean()),
        "rel_max_diff": float(per_input.max()),
        "rel_max_diff_without_flips": float(per_input[clean].max()) if clean.any() else None,
        "inputs_with_flips": int((~clean).sum()),
    }


def _batch1_baseline(model: nn.Module, x: torch.Tensor, logits: np.ndarray) -> dict:
    """r2b against itself: one input at a time against the whole batch (``compare``'s
    ``baseline``), so rounding-level flips inside r2b alone can be told apart."""
    with torch.no_grad():
        one = np.concatenate([model(x[i : i + 1]).numpy() for i in range(len(x))])
    self_diff = np.abs(one - logits).max(1) / np.abs(logits).max()
    return {
        "r2b_batch1_rel_max_diff": float(self_diff.max()),
        "r2b_batch1_inputs_over_1e-4": int((self_diff > 1e-4).sum()),
        "r2b_batch1_top1_agree": float((one.argmax(1) == logits.argmax(1)).mean()),
    }


def _r2b_side(model, spec, x: torch.Tensor, bits: dict, chunk: int = 64) -> tuple:
    """r2b's logits and the flip figures, ``chunk`` inputs at a time (the sign inputs of every
    half block are kept for one chunk only)."""
    logits, parts = [], []
    for i in range(0, len(x), chunk):
        out, ys = _r2b_trace(model, spec, x[i : i + chunk])
        logits.append(out)
        parts.append(_flip_report(spec, {k: v[i : i + chunk] for k, v in bits.items()}, ys))
    values = sum(p["binarised_values"] for p in parts)
    return np.concatenate(logits), {
        "flipped_inputs": np.concatenate([p["flipped_inputs"] for p in parts]),
        "binarised_values": values,
        "flips_end_to_end": sum(p["flipped_values"] for p in parts) / max(values, 1),
        "first_flip_halves": sorted(h for p in parts for h in p["first_flip_halves"]),
        "first_flip_max_rel": max(p["first_flip_max_rel"] for p in parts),
    }


def _flip_report(spec, bits: dict, ys: list[torch.Tensor]) -> dict:
    """Where LCE's binarised inputs differ from r2b's sign(y) (``bits``: LCE's words per half,
    ``ys``: r2b's own sign inputs from the same images)."""
    n = len(ys[0])
    first = np.full(n, -1)
    first_rel = 0.0
    flipped = total = 0
    for i, (half, y) in enumerate(zip(spec.halves, ys)):
        mine = (y < 0).permute(0, 2, 3, 1).numpy()
        theirs = unpack_bits(bits[f"{half.name}/bits"], mine.shape[-1])
        diff = mine != theirs
        flipped += int(diff.sum())
        total += diff.size
        for j in np.flatnonzero(diff.reshape(n, -1).any(1) & (first < 0)):
            first[j] = i  # the first half block where input j's binarised values differ
            yj = y[j].permute(1, 2, 0).numpy()
            first_rel = max(first_rel, float(np.abs(yj[diff[j]]).max() / np.abs(yj).max()))
    return {
        "flipped_inputs": first >= 0,
        "binarised_values": total,
        "flipped_values": flipped,
        "first_flip_halves": [int(v) for v in first[first >= 0]],
        "first_flip_max_rel": first_rel,
    }


def _probe_report(spec, probes: dict, graph: dict) -> dict:
    bconvs = [op for op in graph["ops"] if op["code"] == "LceBconv2d"]
    tensors = graph["tensors"]
    values = flips = 0
    flip_rel, dot_err, exact = 0.0, 0.0, True
    for half, op in zip(spec.halves, bconvs):
        x_lce = _nchw(probes[f"{half.name}/x"])
        y_lce = _nchw(probes[f"{half.name}/y"])
        c_lce = _nchw(probes[f"{half.name}/conv"]).double()
        y_ref = x_lce if half.pre is None else half.pre(x_lce)
        flipped = _sign(y_ref) != _sign(y_lce)
        values += y_lce.numel()
        flips += int(flipped.sum())
        if flipped.any():
            flip_rel = max(flip_rel, float(y_ref[flipped].abs().max() / y_ref.abs().max()))
        d = binary_dots(y_lce, half.conv)
        m = torch.from_numpy(tensors[op["inputs"][2]]["data"].astype(np.float64)).view(1, -1, 1, 1)
        b = torch.from_numpy(tensors[op["inputs"][3]]["data"].astype(np.float64)).view(1, -1, 1, 1)
        ok = m.abs() > 1e-6  # channels whose multiplier carries the dot product
        err = ((c_lce - b) / torch.where(ok, m, 1.0) - d).abs() * ok
        dot_err = max(dot_err, float(err.max()))
        exact = exact and bool((err < 0.5).all())
    return {
        "probe_inputs": len(next(iter(probes.values()))),
        "one_step_flips": flips / max(values, 1),
        "one_step_flip_max_rel": flip_rel,
        "bconv_exact": exact,
        "bconv_max_dot_error": dot_err,
    }
