"""Model summary: parameters (binary / real), size, BOPs, FLOPs and OPs, per layer and in total.

Counted per image, by running one forward pass with hooks on the leaf layers:

- **binary parameters**: weights of the binary convolutions of the model's description
  (``model.spec()``) whose input and weights are both exactly +-1 (``BinaryConv2d.is_binary``).
  Stored as 1 bit each.
- **real parameters**: every other *trainable* parameter (convs, linear layers, BatchNorm's
  gamma and beta, PReLU slopes, learned scales, gates). BatchNorm's running statistics are buffers
  and are not counted, as in larq's summary. Stored as float32.
- **size**: ``binary/8 + 4*real`` bytes, in MiB (2^20 bytes); ``float_size_mib`` stores every
  parameter as float32.
- **BOPs**: binary multiply-accumulates, ``C_in*k*k*C_out*H_out*W_out`` of each binary conv.
- **FLOPs**: real multiply-accumulates of convolutions and linear layers (stem, downsample
  shortcuts, gates, classifier; every conv of a real network). Element-wise work (BatchNorm,
  scaling, PReLU, additions, pooling) is not counted -- the same convention as larq's summary
  (138.1 M for Real-to-Binary at 224^2); the paper's Table 1 (1.564e8) counts some of it too.
- **OPs** = BOPs/64 + FLOPs (paper Sec. 5, following Bi-Real Net and XNOR-Net).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

MIB = 2**20


@dataclass
class LayerRow:
    """Counts of one leaf layer."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    binary_params: int = 0
    real_params: int = 0
    bops: int = 0
    flops: int = 0


@dataclass
class Totals:
    """Whole-model counts (per image)."""

    binary_params: int
    real_params: int
    size_mib: float
    float_size_mib: float
    bops: int
    flops: int
    ops: float


@dataclass
class Summary:
    rows: list[LayerRow] = field(default_factory=list)
    totals: Totals | None = None


def binary_conv_ids(model: nn.Module) -> set[int]:
    """``id`` of every binary conv of ``model`` whose inputs and weights are both +-1, from the
    model's description (``model.spec()``, ``r2b.models.spec``); none for a real model."""
    spec = getattr(model, "spec", None)
    if not callable(spec):
        return set()
    return {id(c) for c in spec().binary_convs() if c.is_binary}


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one image through a conv or linear layer."""
    if isinstance(m, nn.Conv2d):
        return m.weight.numel() * out.shape[-1] * out.shape[-2]
    if isinstance(m, nn.Linear):
        return m.weight.numel()
    return 0


def _row(name: str, m: nn.Module, out: torch.Tensor, binary: bool) -> LayerRow:
    own = [p for p in m.parameters(recurse=False) if p.requires_grad]
    n_params = sum(p.numel() for p in own)
    row = LayerRow(name, type(m).__name__, tuple(out.shape[1:]))
    if binary:
        row.binary_params = m.weight.numel()
        row.real_params = n_params - m.weight.numel()
        row.bops = _macs(m, out)
    else:
        row.real_params = n_params
        row.flops = _macs(m, out)
    return row


def _counted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters or compute MACs, each counted once."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) or any(True for _ in m.parameters(recurse=False))
    ]


def summarize(model: nn.Module, input_size: int = 224) -> Summary:
    """Count every layer of ``model`` for one ``3 x input_size x input_size`` image."""
    rows: dict[str, LayerRow] = {}
    handles = []
    binary = binary_conv_ids(model)
    for name, m in _counted_modules(model):

        def hook(mod, _inp, out, name=name):
            if name not in rows:  # a module called twice (none here) is counted once
                rows[name] = _row(name, mod, out, id(mod) in binary)

        handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    ordered = [rows[n] for n, _ in _counted_modules(model) if n in rows]
    return Summary(ordered, _totals(ordered, model))


def _totals(rows: list[LayerRow], model: nn.Module) -> Totals:
    binary = sum(r.binary_params for r in rows)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad) - binary
    bops = sum(r.bops for r in rows)
    flops = sum(r.flops for r in rows)
    return Totals(
        binary_params=binary,
        real_params=real,
        size_mib=(binary / 8 + 4 * real) / MIB,
        float_size_mib=4 * (binary + real) / MIB,
        bops=bops,
        flops=flops,
        ops=bops / 64 + flops,
    )


def format_table(summary: Summary) -> str:
    """A plain-text per-layer table followed by the totals."""
    header = f"{'layer':<34} {'type':<14} {'output':<16} {'binary':>10} {'real':>9} " \
             f"{'BOPs':>11} {'FLOPs':>11}"  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in summary.rows:
        shape = "x".join(str(s) for s in r.output_shape)
        lines.append(
            f"{r.name:<34} {r.kind:<14} {shape:<16} {r.binary_params:>10,} {r.real_params:>9,} "
            f"{r.bops:>11.4g} {r.flops:>11.4g}"
        )
    t = summary.totals
    lines += [
        "-" * len(header),
        f"binary parameters : {t.binary_params:,}",
        f"real parameters   : {t.real_params:,}",
        f"size (1-bit)      : {t.size_mib:.2f} MiB   (float32: {t.float_size_mib:.2f} MiB)",
        f"BOPs              : {t.bops:.4g}",
        f"FLOPs             : {t.flops:.4g}",
        f"OPs = BOPs/64+FLOPs: {t.ops:.4g}",
    ]
    return "\n".join(lines)


def summary_command(args) -> str:
    """What ``r2b summary`` prints for parsed CLI arguments."""
    model, input_size = _model_from_args(args)
    summary = summarize(model, input_size)
    if args.json:
        return json.dumps(asdict(summary.totals))
    return format_table(summary)


def _model_from_args(args) -> tuple[nn.Module, int]:
    """The model ``args.model`` names (a registered name built from the flags, or a checkpoint)
    and the input side to count at: ``--input-size``, else the model's stem's (registry)."""
    from r2b.cli_args import check_model_flags, model_name_or_file, named_model_stem
    from r2b.models import default_input_size

    check_model_flags(args, named_model_stem(args, args.model))
    target = model_name_or_file(args.model, "a checkpoint file")
    if isinstance(target, str):
        model = _named_model(target, args)
    else:
        from r2b.train.checkpoint import load_model

        model = load_model(target)[0]
    return model, args.input_size or default_input_size(getattr(model, "arch", {}))


def _named_model(name: str, args) -> nn.Module:
    """The registered model ``name`` with the flags given (``--stage`` only for binary ones)."""
    from r2b.errors import UserError
    from r2b.models import create_model, is_binary_family

    flags = {"num_classes": args.num_classes, "stem": args.stem, "width": args.width}
    kwargs = {k: v for k, v in flags.items() if v is not None}
    if args.stage is not None:
        if not is_binary_family(name):
            raise UserError(f"{name} is real-valued and has no --stage; drop the option")
        kwargs["stage"] = args.stage
    return create_model(name, **kwargs)
