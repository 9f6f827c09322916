"""Speed of the packed engine against PyTorch's float ResNet-18, in one process.

``benchmark`` builds both networks for the same input (the float ResNet-18 with the packed
model's stem, width and classes, random weights, eval mode, NCHW as PyTorch runs it by default;
also channels-last as a second reference), warms both up, then times them *alternately* -- packed,
float, packed, float ... -- with the same thread count, so that whatever else the machine does
affects both alike, and reports medians and their ratio.

``profile`` runs the packed network step by step and times each part: the stem, per half block
the PyTorch side (gate, shortcut) and the compiled side (binary conv with its epilogue and the
next block's BN + packing), and the head. The binary MACs of each conv over its compiled time give
its throughput in G binary-MACs/s, printed beside the CPU's peak: nominal (threads x clock x 512
bits per cycle with AVX-512 VPOPCNTDQ, 256 with AVX2, 128 with NEON) and measured (the register
tile on in-cache data, ``kernels.peak``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

from r2b.errors import UserError
from r2b.models import DEFAULT_STEM, default_input_size
from r2b.packed import kernels
from r2b.packed.engine import PackedResNet, to_packed
from r2b.packed.parallel import launch_info

DEFAULT_MODEL = "r2b_resnet18"


def float_model_for_bench(
    model: str | None, stem: str | None, num_classes: int | None
) -> torch.nn.Module | None:
    """The float eval model (stage bnn, random weights) of a registered binary model name;
    None for anything else (a ``.r2b`` file)."""
    from r2b.cli_args import require_binary_family
    from r2b.models import create_model, list_models

    model = model or DEFAULT_MODEL
    if model not in list_models():
        return None
    require_binary_family(model, "bench")
    kwargs = {"stage": "bnn"}
    if stem:
        kwargs["stem"] = stem
    if num_classes:
        kwargs["num_classes"] = num_classes
    return create_model(model, **kwargs).eval()


def load_for_bench(model: str | None, stem: str | None, num_classes: int | None) -> PackedResNet:
    """A ``.r2b`` file, or a registered binary model name built with random weights."""
    from r2b.cli_args import model_name_or_file
    from r2b.packed.fileformat import load

    target = model_name_or_file(model or DEFAULT_MODEL, "a .r2b file")
    if isinstance(target, Path):
        return load(target)
    return to_packed(float_model_for_bench(target, stem, num_classes))


def float_reference(packed: PackedResNet) -> torch.nn.Module:
    """PyTorch's float ResNet-18 with the packed model's stem, width and classes."""
    from r2b.models import create_model

    arch = packed.arch
    kwargs = {k: arch[k] for k in ("num_classes", "stem", "width") if k in arch}
    return create_model("resnet18", **kwargs).eval()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def benchmark(
    packed: PackedResNet,
    batch: int = 1,
    input_size: int | None = None,
    threads: int | None = None,
    runs: int = 30,
    warmup: int = 5,
    seed: int = 0,
) -> dict:
    """Median latency of the packed and the float network on the same input; see the module
    docstring. Returns a JSON-ready dict (``packed_ms``, ``float_ms``, ``speedup``, ...)."""
    if runs < 1 or batch < 1:
        raise UserError("--runs and --batch must be at least 1")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    size = input_size or default_input_size(packed.arch)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    reference = float_reference(packed)
    reference_cl = float_reference(packed).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    nets = {
        "packed": lambda: packed(x),
        "float": lambda: reference(x),
        "float_channels_last": lambda: reference_cl(x_cl),
    }
    times: dict[str, list[float]] = {k: [] for k in nets}
    load_before = _load_average()
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in nets.values():
                fn()
        for _ in range(runs):
            for name, fn in nets.items():
                times[name].append(_timed(fn))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {
        "model": packed.arch,
        "batch": batch,
        "input_size": size,
        "threads": threads,
        "runs": runs,
        "packed_ms": ms["packed"],
        "float_ms": ms["float"],
        "float_channels_last_ms": ms["float_channels_last"],
        "speedup": ms["float"] / ms["packed"],
        "speedup_vs_channels_last": ms["float_channels_last"] / ms["packed"],
        "packed_ms_min": 1e3 * min(times["packed"]),
        "float_ms_min": 1e3 * min(times["float"]),
        "load_average": [load_before, _load_average()],
        "machine": machine(),
    }


def _load_average(which: int = 0) -> float | None:
    """The 1-minute (``which=0``) or 15-minute (``2``) load average, where the OS reports it."""
    try:
        return os.getloadavg()[which]
    except (AttributeError, OSError):
        return None


def profile(packed: PackedResNet, batch: int, input_size: int, runs: int = 10) -> dict:
    """Per-part median times (ms) of one forward pass and each binary conv's throughput."""
    x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))

    def median_ms(fn) -> float:
        fn()
        return 1e3 * statistics.median(_timed(fn) for _ in range(runs))

    rows = []
    with torch.inference_mode():
        stem_ms = median_ms(lambda: packed.stem(x))
        h = packed.stem(x)
        halves = list(packed.halves)
        prep_ms = median_ms(lambda: halves[0].prepare(h))
        xp, y = halves[0].prepare(h)
        for i, half in enumerate(halves):
            nxt = halves[i + 1] if i + 1 < len(halves) else None
            float_ms = median_ms(lambda half=half, h=h, y=y: half.float_parts(h, y))
            gain, shortcut = half.float_parts(h, y)
            bin_ms = median_ms(
                lambda half=half, h=h, xp=xp, gain=gain, sc=shortcut, nxt=nxt: half.binary_part(
                    h, xp, gain, sc, nxt
                )
            )
            conv = half.conv
            oh, ow = conv.output_size(h.shape[2], h.shape[3])
            macs = batch * conv.out_channels * oh * ow * conv.k_total
            rows.append({
                "layer": i, "in_channels": conv.in_channels, "out_channels": conv.out_channels,
                "stride": conv.stride, "output": [oh, ow], "binary_macs": macs,
                "float_ms": float_ms, "binary_ms": bin_ms, "gbmacs_per_s": macs / bin_ms / 1e6,
            })  # fmt: skip
            h, xp, y = half.binary_part(h, xp, gain, shortcut, nxt)
        head_ms = median_ms(lambda: packed.fc(torch.flatten(packed.pool(h), 1)))
    total_macs = sum(r["binary_macs"] for r in rows)
    binary_ms = sum(r["binary_ms"] for r in rows)
    return {
        "stem_ms": stem_ms,
        "first_pack_ms": prep_ms,
        "halves": rows,
        "head_ms": head_ms,
        "binary_ms": binary_ms,
        "torch_in_halves_ms": sum(r["float_ms"] for r in rows),
        "binary_gbmacs_per_s": total_macs / binary_ms / 1e6,
        "binary_macs": total_macs,
    }


def peak_gbmacs(threads: int, seconds: float = 0.2) -> dict:
    """Nominal and measured (in-cache register tile) peak binary-MAC rates in G/s."""
    launch = launch_info(kernels.worker_address("peak"))
    launch = (launch[0], launch[1], launch[2], threads, 0)
    per_rep = kernels.TILE_P * 64 * kernels.TILE_O * 64
    kernels.peak(10, threads, launch)

    def run(reps: int) -> float:
        return _timed(lambda: kernels.peak(reps, threads, launch))

    reps = 2000
    while run(reps) < seconds / 4 and reps < 10**7:
        reps *= 4
    best = min(run(reps) for _ in range(3))
    info = machine()
    nominal = threads * info["clock_ghz"] * info["popcount_bits"] if info["clock_ghz"] else None
    return {"nominal": nominal, "measured": threads * reps * per_rep / best / 1e9}


#: the CPU flags that matter to the packed engine and the reference engines (``isa_flags``)
ISA_FLAGS = tuple(
    "avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_vpopcntdq avx512_bf16 amx_int8 "
    "amx_bf16 asimd asimddp".split()
)


def machine() -> dict:
    """CPU model, cores, clock (nominal), popcount vector width, ISA flags, PyTorch version."""
    cpuinfo = _read("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    if "avx512_vpopcntdq" in flags:
        bits, isa = 512, "AVX-512 VPOPCNTDQ"
    elif "avx2" in flags:
        bits, isa = 256, "AVX2"
    elif "asimd" in flags or platform.machine() in ("arm64", "aarch64"):
        bits, isa = 128, "NEON"
    else:
        bits, isa = 64, "scalar POPCNT"
    mhz = float(fields.get("cpu MHz", 0) or 0)
    name = fields.get("model name") or platform.processor() or platform.machine()
    family = fields.get("cpu family")
    if family:
        name += f" (family {family} model {fields.get('model', '?')})"
    siblings, cores = fields.get("siblings"), fields.get("cpu cores")
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "threads_per_core": int(siblings) // int(cores) if siblings and cores else None,
        "clock_ghz": mhz / 1e3 if mhz else None,
        "popcount_isa": isa,
        "popcount_bits": bits,
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "all_flags": " ".join(sorted(flags)),
        "torch": torch.__version__,
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def format_report(result: dict, prof: dict | None, peak: dict | None) -> str:
    """The text ``r2b bench`` prints."""
    m = result["machine"]
    arch = result["model"]
    policy = result.get("omp_wait_policy", os.environ.get("OMP_WAIT_POLICY", "(default)"))
    dynamic = result.get("omp_dynamic", os.environ.get("OMP_DYNAMIC", "(default)"))
    lines = [
        f"model     {arch.get('name')} stem={arch.get('stem', DEFAULT_STEM)} "
        f"width={arch.get('width', 1.0)}, input {result['batch']}x3x{result['input_size']}"
        f"x{result['input_size']}, {result['threads']} threads, medians of {result['runs']}",
        f"machine   {m['cpu']}, {m['cores']} cores, {m['popcount_isa']}, torch {m['torch']}, "
        f"OMP_WAIT_POLICY={policy}, OMP_DYNAMIC={dynamic}",
        f"packed    {result['packed_ms']:8.2f} ms",
        f"float     {result['float_ms']:8.2f} ms   (PyTorch ResNet-18, NCHW)   "
        f"speedup {result['speedup']:.2f}x",
        f"float CL  {result['float_channels_last_ms']:8.2f} ms   (channels-last)           "
        f"speedup {result['speedup_vs_channels_last']:.2f}x",
    ]
    load = [v for v in result.get("load_average", []) if v is not None]
    if load:
        lines.append(f"load      1-minute load average {min(load):.1f} .. {max(load):.1f} "
                     f"(runnable programs; above 0 means others shared the cores)")  # fmt: skip
    if str(dynamic).lower() == "true":
        lines.append(f"          with OMP_DYNAMIC the OpenMP runtime uses up to "
                     f"{result['threads']} threads, fewer while the 15-minute load average "
                     f"({_load_average(2) or 0:.1f}) leaves no idle core")  # fmt: skip
    if prof:
        lines += [
            "",
            f"where the packed time goes (medians, ms): stem {prof['stem_ms']:.3f}, "
            f"first BN+pack {prof['first_pack_ms']:.3f}, head {prof['head_ms']:.3f}",
            " layer  C_in C_out s  output   torch(gate,shortcut)  binary kernel   G bMAC/s",
        ]
        for r in prof["halves"]:
            lines.append(
                f"  {r['layer']:3d} {r['in_channels']:5d} {r['out_channels']:5d} {r['stride']:d} "
                f"{r['output'][0]:4d}x{r['output'][1]:<4d} {r['float_ms']:12.3f}"
                f" {r['binary_ms']:16.3f} {r['gbmacs_per_s']:12.0f}"
            )
        lines.append(
            f"  all binary convs: {prof['binary_macs'] / 1e9:.3f} G binary MACs in "
            f"{prof['binary_ms']:.3f} ms = {prof['binary_gbmacs_per_s']:.0f} G bMAC/s "
            f"(torch parts of the blocks: {prof['torch_in_halves_ms']:.3f} ms)"
        )
    if peak:
        nominal = f"{peak['nominal']:.0f}" if peak["nominal"] else "?"
        lines.append(
            f"  CPU peak, {result['threads']} threads: nominal {nominal} G bMAC/s "
            f"({m['clock_ghz'] or '?'} GHz x {m['popcount_bits']} bits/cycle/thread), "
            f"measured in-cache {peak['measured']:.0f} G bMAC/s"
        )
    return "\n".join(lines)
