"""The x86 reference engines beside r2b's packed one: PyTorch, ONNX Runtime and OpenVINO.

What an x86 user would deploy instead of a binary network is int8 in OpenVINO or ONNX Runtime, so
``r2b bench --against`` and ``benchmarks/bench_engines.py`` time these (the optional extra
``pip install -e ".[bench]"``):

- PyTorch eager float (the ``.pt`` file: a pickled module);
- ONNX Runtime and OpenVINO on the same fp32 ONNX file (``torch.onnx.export``, TorchScript
  exporter) and on the same int8 ONNX file: ONNX Runtime's static QDQ quantisation
  (``quantize_static``, per-channel int8 weights, uint8 activations, MinMax calibration over
  images of the embedded CIFAR-10 subset resized to the input size; ``calibration_batches``);
- r2b's packed engine (a ``.r2b`` file), with OpenMP threads spinning (``OMP_WAIT_POLICY=ACTIVE``)
  or sleeping (``PASSIVE``);
- OpenVINO running r2b's own binary network (``r2b.openvino.export``: an IR whose binary convs the
  CPU plugin runs as ``BinaryConvolution``), where that module exists.

Protocol (``run_protocol``): every measurement is one fresh process (``worker_command``) that
loads one file, sets the thread count, warms up, times ``runs`` forward passes of the same input
(at least 3, at most ``max_seconds`` of timing) and prints one JSON line. A round runs every
configuration once, one after the other, the order rotated each round; a configuration's figure
is the median over rounds of each process's median. In contention mode a busy-loop Python process
runs on the cores during the measurement (``busy_process``); ``contention_summary`` gives each
engine's slow-down and the ratio of slow-downs (packed over OpenVINO). Every finished measurement
can be appended to a partial file (one JSON line), so a rerun skips what is done.

The worker imports nothing but the standard library at the top and the one engine it runs: this
file is run by path (``runpy``), so an ONNX Runtime or OpenVINO process never loads PyTorch.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: the extra that brings the reference engines
EXTRA_HINT = 'pip install -e ".[bench]"'
#: ``--against`` names -> the module each needs
AGAINST = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
RESULT_MARK = "R2B-BENCH-RESULT "
#: ImageNet normalisation for the calibration images
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: activations and weights of the int8 models (ONNX Runtime names)
INT8_SETTINGS = {
    "format": "QDQ", "per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8",
    "calibrate_method": "MinMax",
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One line of the results table: an engine running one model file."""

    name: str
    label: str
    short: str  # label in the plot
    engine: str  # torch | onnxruntime | openvino | packed
    artifact: str  # key of the model file (``build_artifacts``)
    family: str  # float | int8 | binary (plot marker)
    top1: float | None = None
    top1_source: str = ""


TOP1_RESNET18 = (69.758, "torchvision ResNet18_Weights.IMAGENET1K_V1 (published float top-1)")
TOP1_RESNET18_INT8 = (
    69.494,
    "torchvision ResNet18_QuantizedWeights.IMAGENET1K_FBGEMM_V1 (its own post-training int8, "
    "fbgemm); this ONNX Runtime QDQ model's accuracy is not measured",
)
TOP1_MOBILENETV2_INT8 = (
    71.878,
    "torchvision MobileNet_V2_Weights.IMAGENET1K_V1: published float top-1, int8 not measured "
    "(torchvision's quantisation-aware int8 MobileNetV2 reaches 71.658)",
)
TOP1_R2B = (65.4, "Martinez et al., ICLR 2020, Real-to-Bin ImageNet top-1 (paper)")
TOP1_R2B_INT8 = (
    65.4,
    "Martinez et al., ICLR 2020 (paper), the same network with its stem, downsample convs and "
    "classifier in "
    "int8 (r2b.packed.int8); its ImageNet accuracy is not measured (CIFAR-10: "
    "benchmarks/results/int8_accuracy_*)",
)
TOP1_R2B_OV = (
    65.4,
    "Martinez et al., ICLR 2020 (paper), the same network; OpenVINO's float parts round "
    "differently, accuracy not measured",
)

ROWS = {
    r.name: r
    for r in [
        Row("torch-fp32-resnet18", "PyTorch eager float ResNet-18", "PyTorch fp32",
            "torch", "resnet18.pt", "float", *TOP1_RESNET18),
        Row("ort-fp32-resnet18", "ONNX Runtime fp32 ResNet-18", "ORT fp32",
            "onnxruntime", "resnet18-fp32.onnx", "float", *TOP1_RESNET18),
        Row("ort-int8-resnet18", "ONNX Runtime int8 ResNet-18", "ORT int8",
            "onnxruntime", "resnet18-int8.onnx", "int8", *TOP1_RESNET18_INT8),
        Row("ov-fp32-resnet18", "OpenVINO fp32 ResNet-18", "OV fp32",
            "openvino", "resnet18-fp32.onnx", "float", *TOP1_RESNET18),
        Row("ov-int8-resnet18", "OpenVINO int8 ResNet-18", "OV int8",
            "openvino", "resnet18-int8.onnx", "int8", *TOP1_RESNET18_INT8),
        Row("ov-int8-mobilenetv2", "OpenVINO int8 MobileNetV2", "OV int8 MobileNetV2",
            "openvino", "mobilenet_v2-int8.onnx", "int8", *TOP1_MOBILENETV2_INT8),
        Row("ov-r2b", "OpenVINO running r2b's Real-to-Bin (BinaryConvolution)", "OV Real-to-Bin",
            "openvino", "r2b-openvino.xml", "binary", *TOP1_R2B_OV),
        Row("packed-r2b", "r2b packed Real-to-Bin (ImageNet stem)", "r2b packed",
            "packed", "r2b.r2b", "binary", *TOP1_R2B),
        Row("packed-r2b-int8", "r2b packed Real-to-Bin, int8 float layers (ImageNet stem)",
            "r2b packed int8", "packed", "r2b-int8.r2b", "binary", *TOP1_R2B_INT8),
    ]
}  # fmt: skip
#: rows measured with OpenMP threads spinning and sleeping (all others: OMP_WAIT_POLICY=ACTIVE)
OMP_ROWS = ("packed-r2b", "packed-r2b-int8")


@dataclass(frozen=True)
class Config:
    """One measurement setting: a row at a batch, thread count, OpenMP wait policy, load."""

    row: str
    batch: int
    threads: int
    omp: str = "active"  # a key of OMP_POLICIES: active | passive | spin10k
    contention: bool = False

    @property
    def key(self) -> str:
        load = "busy" if self.contention else "quiet"
        return f"{self.row}/b{self.batch}/t{self.threads}/{self.omp}/{load}"

    def to_dict(self) -> dict:
        return {"key": self.key, "row": self.row, "batch": self.batch, "threads": self.threads,
                "omp": self.omp, "contention": self.contention}  # fmt: skip


@dataclass
class Settings:
    """Timing settings shared by every worker of one benchmark."""

    input_size: int = 224
    runs: int = 20
    warmup: int = 5
    max_seconds: float = 3.0
    seed: int = 0
    timeout: float = 300.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("input_size", "runs", "warmup", "max_seconds",
                                              "seed")}  # fmt: skip


def configs_for(
    rows, batches=(1, 8), threads=(1, 2), omp=("active", "passive"), contention=False
) -> list[Config]:
    """Every (row, batch, threads, wait policy) setting; only ``OMP_ROWS`` vary the policy."""
    out = []
    for b in batches:
        for t in threads:
            for r in rows:
                for p in omp if r in OMP_ROWS else ("active",):
                    out.append(Config(r, b, t, p, contention))
    return out


def missing_extras(names=("onnxruntime", "openvino", "onnx")) -> list[str]:
    """Which of the reference engines' modules are not installed."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


# --------------------------------------------------------------------------- model files


def calibration_batches(n: int, size: int) -> tuple[list, str]:
    """``n`` images (each 1x3xSxS float32, ImageNet-normalised) and where they come from: the
    embedded CIFAR-10 subset (``r2b/assets``, training split), spread evenly over it (all 10
    classes), resized bilinearly from 32x32 to ``size``."""
    import torch
    import torch.nn.functional as F

    from r2b.data.default import read_default

    data = read_default("train")
    index = torch.linspace(0, len(data.images) - 1, n).round().long()
    x = data.images[index].float() / 255
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    source = (
        f"{n} images of r2b's embedded CIFAR-10 subset (src/r2b/assets/cifar10_default.npz, "
        f"training split, every {max(1, len(data.images) // n)}th image, all classes), resized "
        f"32->{size} bilinearly, ImageNet mean/std"
    )
    return [xi.unsqueeze(0).contiguous().numpy() for xi in x], source


def export_onnx(model, path: Path, input_size: int) -> Path:
    """``torch.onnx.export`` with the TorchScript exporter (no onnxscript needed), batch dynamic."""
    import inspect
    import warnings

    import torch

    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    x = torch.randn(1, 3, input_size, input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (x,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
            **kwargs,
        )  # fmt: skip
    return path


def quantize_int8(fp32: Path, out: Path, calibration: list) -> dict:
    """ONNX Runtime static QDQ quantisation of ``fp32`` into ``out`` (``INT8_SETTINGS``);
    returns the settings and the counts of Quantize/DequantizeLinear nodes."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: x} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    source = fp32
    pre = out.with_name(out.stem + "-pre.onnx")
    try:  # shape inference + graph optimisation, as ONNX Runtime recommends before quantising
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(pre))
        source = pre
    except Exception:  # noqa: BLE001 -- optional step
        pass
    quantize_static(
        str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    pre.unlink(missing_ok=True)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    return dict(
        INT8_SETTINGS,
        preprocessed=source == pre,
        calibration_images=len(calibration),
        quantize_nodes=ops.count("QuantizeLinear"),
        dequantize_nodes=ops.count("DequantizeLinear"),
    )


def reference_model(name: str, num_classes: int = 1000, seed: int = 0):
    """torchvision's ``resnet18`` / ``mobilenet_v2`` with random weights (seeded), eval mode."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes).eval()


def binary_model(seed: int = 0, **kwargs):
    """Real-to-Bin ResNet-18, fully binary (stage bnn), random weights: the float eval model."""
    import torch

    from r2b.models import create_model

    torch.manual_seed(seed)
    return create_model("r2b_resnet18", stage="bnn", **kwargs).eval()


def export_openvino_r2b(model, path: Path, input_size: int) -> Path:
    """``r2b.openvino.export`` of the binary model (raises ImportError while it does not exist)."""
    from r2b import openvino as r2b_openvino  # written alongside; may not exist yet

    got = r2b_openvino.export(model, path, input_size=input_size)
    if isinstance(got, dict):
        got = got.get("xml")
    for candidate in (got, path, path.with_suffix(".xml")):
        if isinstance(candidate, (str, os.PathLike)) and Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError(f"r2b.openvino.export wrote no {path}")


def agreement(model, xml: Path, input_size: int, n: int = 8, seed: int = 1) -> dict:
    """OpenVINO's logits for the exported IR against the eval model's on ``n`` random inputs:
    the largest difference over the largest logit, and on how many inputs top-1 agrees."""
    import numpy as np
    import openvino as ov
    import torch

    x = torch.randn(n, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    ir = ov.Core().read_model(str(xml))
    ir.reshape({ir.inputs[0]: ov.PartialShape([n, 3, input_size, input_size])})
    compiled = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x.numpy())[compiled.outputs[0]]
    return {
        "inputs": n,
        "max_abs_diff_over_max_logit": float(np.abs(got - expected).max() / np.abs(expected).max()),
        "top1_agree": int((got.argmax(1) == expected.argmax(1)).sum()),
    }


def packed_equals_reference(packed, reference, input_size: int, batches=(1, 8), seed: int = 2):
    """Whether the packed engine's logits equal ``reference``'s bit for bit (the eval model for
    the exact engine, ``int8_reference`` for the int8 one) on random inputs at each batch size:
    the timed file is checked before it is timed, so a fast wrong engine cannot pass."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    equal = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, input_size, input_size, generator=gen)
            equal[str(batch)] = bool(torch.equal(packed(x), reference.eval()(x)))
    return equal


class _ArtifactBuild:
    """The state of one ``build_artifacts`` call: where the files go, whether the files of an
    earlier build may be reused (same stamp, no caller-given model), and what was written."""

    def __init__(self, work_dir: Path, stamp: dict, input_size: int, calib_images: int,
                 log) -> None:  # fmt: skip
        self.work_dir, self.stamp, self.log = work_dir, stamp, log
        self.input_size, self.calib_images = input_size, calib_images
        self.manifest = work_dir / "manifest.json"
        old = json.loads(self.manifest.read_text()) if self.manifest.exists() else {}
        self.fresh = old.get("stamp") != stamp or stamp["custom"]
        self.info: dict = {} if self.fresh else old.get("info", {})
        self.files: dict[str, Path] = {}
        self.missing: dict[str, str] = {}
        self._calibration: list | None = None
        self._binary = None

    def ready(self, name: str) -> bool:
        """True (and ``name`` recorded) when an earlier build's file can be reused."""
        path = self.work_dir / name
        if not self.fresh and path.exists():
            self.files[name] = path
            return True
        return False

    def calibration(self) -> list:
        """The int8 calibration batches, read once (only an int8 file needs them)."""
        if self._calibration is None:
            self._calibration, self.info["calibration"] = calibration_batches(
                self.calib_images, self.input_size
            )
        return self._calibration

    def reference_net(self, net: str, wanted: set[str], float_model, seed: int) -> None:
        """``net``'s pickled ``.pt``, fp32 ONNX and int8 ONNX files, those ``wanted``."""
        import torch

        names = [n for n in (f"{net}.pt", f"{net}-fp32.onnx", f"{net}-int8.onnx") if n in wanted]
        if not names or all([self.ready(n) for n in names]):
            return
        t0 = time.time()
        if net == "resnet18" and float_model is not None:
            model = float_model.eval()
        else:
            model = reference_model(net, seed=seed)
        torch.save(model, self.work_dir / f"{net}.pt")
        self.files[f"{net}.pt"] = self.work_dir / f"{net}.pt"
        if any(n.endswith(".onnx") for n in names):
            self._onnx_files(net, model, wanted)
        self.log(f"built {net} model files in {time.time() - t0:.1f} s")

    def _onnx_files(self, net: str, model, wanted: set[str]) -> None:
        fp32 = export_onnx(model, self.work_dir / f"{net}-fp32.onnx", self.input_size)
        self.files[fp32.name] = fp32
        if f"{net}-int8.onnx" in wanted:
            out = self.work_dir / f"{net}-int8.onnx"
            self.info[f"{net}-int8"] = quantize_int8(fp32, out, self.calibration())
            self.files[out.name] = out

    def binary(self, given, seed: int):
        """The float bnn model: the caller's, else the default one, built once for both files."""
        if self._binary is None:
            self._binary = given if given is not None else binary_model(seed)
        return self._binary

    def r2b_packed(self, binary, packed, seed: int) -> None:
        """``r2b.r2b``: the packed model (written anew each time: it follows the code)."""
        from r2b.packed import save, to_packed

        if packed is None:
            binary = self.binary(binary, seed)
            packed = to_packed(binary)
            self.info["r2b.r2b"] = {"equals_eval_model": packed_equals_reference(
                packed, binary, self.input_size)}  # fmt: skip
        save(packed, self.work_dir / "r2b.r2b")
        self.files["r2b.r2b"] = self.work_dir / "r2b.r2b"

    def r2b_packed_int8(self, binary, seed: int) -> None:
        """``r2b-int8.r2b``: the same network with int8 float layers, calibrated on the int8
        references' calibration images."""
        import torch

        from r2b.packed import save, to_packed
        from r2b.packed.int8 import int8_reference

        calibration = [torch.from_numpy(x) for x in self.calibration()]
        binary = self.binary(binary, seed)
        packed = to_packed(binary, "int8", calibration)
        self.info["r2b-int8.r2b"] = {"equals_int8_reference": packed_equals_reference(
            packed, int8_reference(binary, calibration), self.input_size)}  # fmt: skip
        save(packed, self.work_dir / "r2b-int8.r2b")
        self.files["r2b-int8.r2b"] = self.work_dir / "r2b-int8.r2b"

    def r2b_openvino(self, binary, seed: int) -> None:
        """``r2b-openvino.xml`` and its agreement with the float model; a failure skips the row."""
        name = "r2b-openvino.xml"
        try:
            binary = self.binary(binary, seed)
            xml = export_openvino_r2b(binary, self.work_dir / name, self.input_size)
            self.files[name] = xml
            self.info["r2b-openvino"] = agreement(binary, xml, self.input_size)
        except ImportError:
            self.missing[name] = "r2b.openvino (r2b.openvino.export) does not exist yet"
        except Exception as err:  # noqa: BLE001 -- a row is skipped, the others still run
            self.missing[name] = f"r2b.openvino.export failed: {_one_line(err)}"

    def save_manifest(self) -> None:
        """Record the stamp (a caller-given model is never reused, so it writes none)."""
        if not self.stamp["custom"]:
            self.manifest.write_text(json.dumps({"stamp": self.stamp, "info": self.info}, indent=1))


def build_artifacts(
    work_dir: Path,
    wanted: set[str],
    input_size: int = 224,
    calib_images: int = 32,
    float_model=None,
    binary=None,
    packed=None,
    seed: int = 0,
    log=print,
) -> tuple[dict[str, Path], dict[str, str], dict]:
    """Write the model files the rows need into ``work_dir`` (the torchvision ones are kept: a
    rerun with the same settings and versions reuses them). ``float_model`` is the ResNet-18
    reference (default torchvision's), ``binary`` the float bnn model and ``packed`` its packed
    form (default Real-to-Bin, ImageNet stem). Returns (artifact -> path, artifact -> why it is
    missing, build info)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = {"input_size": input_size, "calib_images": calib_images, "seed": seed,
             "custom": float_model is not None or binary is not None or packed is not None,
             "int8": INT8_SETTINGS, "versions": versions()}  # fmt: skip
    build = _ArtifactBuild(work_dir, stamp, input_size, calib_images, log)
    for net in ("resnet18", "mobilenet_v2"):
        build.reference_net(net, wanted, float_model, seed)
    if "r2b.r2b" in wanted:
        build.r2b_packed(binary, packed, seed)
    if "r2b-int8.r2b" in wanted:
        build.r2b_packed_int8(binary, seed)
    if "r2b-openvino.xml" in wanted:
        build.r2b_openvino(binary, seed)
    build.save_manifest()
    return build.files, build.missing, build.info


# --------------------------------------------------------------------------- the worker


def _torch_runner(engine: str, path: str, x, threads: int):
    """PyTorch eager (a pickled ``.pt``) or r2b's packed engine (a ``.r2b`` file)."""
    import torch

    torch.set_num_threads(threads)
    if engine == "torch":
        model = torch.load(path, weights_only=False).eval()
    else:
        from r2b.packed import load

        model = load(path)
    xt = torch.from_numpy(x)

    def call():
        with torch.inference_mode():
            model(xt)

    return call, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _onnxruntime_runner(engine: str, path: str, x, threads: int):
    """ONNX Runtime's CPU provider, sequential, all graph optimisations, ``threads`` intra-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    info = {"onnxruntime": ort.__version__, "providers": session.get_providers(),
            "intra_op_threads": threads, "spinning": "default (allowed)"}  # fmt: skip
    return (lambda: session.run(None, feed)), info


def _openvino_layers(compiled) -> dict[str, int]:
    """``{"layerType:runtimePrecision": count}`` of a compiled OpenVINO model (what ran how)."""
    layers: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = f"{rt['layerType'].astype(str)}:{rt['runtimePrecision'].astype(str)}"
        layers[kind] = layers.get(kind, 0) + 1
    return layers


def _openvino_runner(engine: str, path: str, x, threads: int):
    """OpenVINO's CPU plugin, one stream, latency hint, f32; the IR reshaped to ``x``'s batch
    where it allows (a static-batch IR keeps its shape)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    reshaped = True
    try:
        model.reshape({model.inputs[0]: ov.PartialShape(list(x.shape))})
    except Exception:  # noqa: BLE001 -- a static-batch IR keeps its shape
        reshaped = False
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(x))
    layers = _openvino_layers(compiled)
    info = {
        "openvino": ov.get_version(), "config": {k: str(v) for k, v in config.items()},
        "reshaped_to_batch": reshaped, "runtime_layers": layers,
        "binary_convolutions": sum(v for k, v in layers.items()
                                   if k.startswith("BinaryConvolution")),
        "int8_convolutions": sum(v for k, v in layers.items() if k.startswith("Convolution:")
                                 and k.endswith(("u8", "i8"))),
    }  # fmt: skip
    return request.infer, info


#: The runner of each engine the worker can time.
_RUNNERS = {"torch": _torch_runner, "packed": _torch_runner,
            "onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner}  # fmt: skip


def _engine_runner(engine: str, path: str, x, threads: int):
    """(call, info): one forward pass of ``path`` on ``x`` by ``engine`` with ``threads``."""
    if engine not in _RUNNERS:
        raise ValueError(f"unknown engine {engine!r}")
    return _RUNNERS[engine](engine, path, x, threads)


def worker_main(argv: list[str] | None = None) -> int:
    """One measurement in this process; prints ``RESULT_MARK`` + one JSON object."""
    import argparse

    p = argparse.ArgumentParser(description="time one engine on one model file")
    p.add_argument("--engine", required=True, choices=["torch", "packed", "onnxruntime",
                                                       "openvino"])  # fmt: skip
    p.add_argument("--file", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import numpy as np

    t_start = time.perf_counter()
    load_before = _loadavg()
    x = np.random.default_rng(a.seed).standard_normal(
        (a.batch, 3, a.input_size, a.input_size), dtype=np.float32
    )
    call, info = _engine_runner(a.engine, a.file, x, a.threads)
    setup_s = time.perf_counter() - t_start
    for _ in range(a.warmup):
        call()
    times = []
    t_timing = time.perf_counter()
    while len(times) < a.runs:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - t_timing > a.max_seconds:
            break
    ms = [1e3 * t for t in times]
    result = {
        "engine": a.engine, "file": Path(a.file).name, "batch": a.batch, "threads": a.threads,
        "input_size": a.input_size, "median_ms": statistics.median(ms), "min_ms": min(ms),
        "runs": len(ms), "warmup": a.warmup, "times_ms": ms, "setup_s": setup_s,
        "load_average": [load_before, _loadavg()], "pid": os.getpid(),
        "torch_loaded": "torch" in sys.modules,
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DYNAMIC",
                                               "OMP_NUM_THREADS")},
        "info": info,
    }  # fmt: skip
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)
    return 0


_BOOT = (
    "import runpy, sys; del sys.path[0]; f = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "runpy.run_path(f, run_name='__main__')"
)


def worker_command(config: Config, path: Path, settings: Settings) -> list[str]:
    """The command line of one measurement: this file run by path (``python -c`` + ``runpy``,
    with the working directory dropped from ``sys.path``), so that the engine's process imports
    only what it runs."""
    row = ROWS[config.row]
    return [
        sys.executable, "-c", _BOOT, str(Path(__file__).resolve()), "--engine", row.engine,
        "--file", str(path), "--batch", str(config.batch), "--threads", str(config.threads),
        "--input-size", str(settings.input_size), "--runs", str(settings.runs),
        "--warmup", str(settings.warmup), "--max-seconds", str(settings.max_seconds),
        "--seed", str(settings.seed),
    ]  # fmt: skip


#: OpenMP idle-wait settings a row can be measured with: ``active`` spins, ``passive`` sleeps,
#: ``spin10k``: the runtime's default policy with GNU OpenMP spinning 10,000 iterations before
#: it sleeps (``GOMP_SPINCOUNT``; the default spins ~300,000)
OMP_POLICIES = {
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
}


def orchestrator_env() -> dict[str, str] | None:
    """The environment to run the orchestrating process anew in, or ``None`` when its own is
    fine. The orchestrator does PyTorch work of its own (building the model files) and then
    waits on the measurements; with ``OMP_WAIT_POLICY=ACTIVE`` inherited, its idle OpenMP
    threads would spin on a core through every measurement (seen: every 2-thread figure of a
    run slowed 2-3x). Each worker gets its row's own setting (``worker_env``) either way."""
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "ACTIVE":
        return None
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def worker_env(config: Config) -> dict[str, str]:
    """The process environment: the row's OpenMP wait setting (``OMP_POLICIES``), OMP_DYNAMIC
    unset, thread counts fixed."""
    env = dict(os.environ)
    for key in ("OMP_DYNAMIC", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(key, None)
    env.update(OMP_POLICIES[config.omp])
    env["OMP_NUM_THREADS"] = str(config.threads)
    env["MKL_NUM_THREADS"] = str(config.threads)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_one(config: Config, path: Path, settings: Settings, cwd: Path) -> dict:
    """Run one worker process; its JSON result, or ``{"error": ...}`` (one line)."""
    cmd = worker_command(config, path, settings)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, env=worker_env(config), cwd=cwd, capture_output=True,
                              text=True, timeout=settings.timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {settings.timeout:.0f} s", "wall_s": time.time() - t0}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
            result["wall_s"] = time.time() - t0
            return result
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:300]}", "wall_s": time.time() - t0}


class busy_process:  # noqa: N801 -- a context manager, used like a function
    """A CPU-bound Python process (a busy loop) running while the ``with`` block runs."""

    def __init__(self, cwd: Path | None = None):
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> busy_process:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], cwd=self.cwd)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- the protocol


@dataclass
class Partial:
    """Finished measurements, one JSON line each, after a header line with the settings."""

    path: Path | None
    header: dict
    done: dict[tuple[str, int], dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | None, header: dict, fresh: bool = False) -> Partial:
        part = cls(path, header)
        if path is None:
            return part
        if fresh or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"header": header}) + "\n")
            return part
        lines = path.read_text().splitlines()
        old = json.loads(lines[0]).get("header") if lines else None
        if old != header:
            raise ValueError(
                f"{path} holds measurements taken with other settings ({old}); pass --fresh to "
                f"start again or use another --tag"
            )
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted run
                continue
            if "error" not in rec:
                part.done[(rec["key"], rec["round"])] = rec
        return part

    def add(self, record: dict) -> None:
        if "error" not in record:
            self.done[(record["key"], record["round"])] = record
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")


def run_protocol(
    configs: list[Config],
    files: dict[str, Path],
    settings: Settings,
    rounds: int,
    partial: Partial | None = None,
    cwd: Path | None = None,
    log=print,
    contention_rounds: int | None = None,
    extra: dict | None = None,
) -> list[dict]:
    """Every config once per round, each in its own process; after a round's quiet configs its
    contention configs run together while ``busy_process`` runs (only in the first
    ``contention_rounds`` rounds, default all). ``extra`` goes into every new record. Returns all
    measurement records of these configs and rounds (done ones taken from ``partial``), and those
    that failed in this call (with an ``error``; a rerun tries them again)."""
    partial = partial or Partial(None, {})
    cwd = cwd or Path(next(iter(files.values()))).parent
    records = []
    for rnd in range(rounds):
        for contended in (False, True):
            group = [c for c in configs if c.contention == contended]
            if not group or (
                contended and contention_rounds is not None and rnd >= contention_rounds
            ):
                continue
            shift = rnd % len(group)
            order = group[shift:] + group[:shift]
            todo = [c for c in order if (c.key, rnd) not in partial.done]
            failed = []
            if todo:
                busy = busy_process(cwd) if contended else None
                if busy:
                    busy.__enter__()
                try:
                    for c in todo:
                        res = run_one(c, files[ROWS[c.row].artifact], settings, cwd)
                        record = dict(c.to_dict(), round=rnd, **(extra or {}), **res)
                        partial.add(record)
                        if "error" in record:
                            failed.append(record)
                        log(_progress(record, rnd, rounds))
                finally:
                    if busy:
                        busy.__exit__()
            records += [partial.done[(c.key, rnd)] for c in order if (c.key, rnd) in partial.done]
            records += failed
    return records


def _progress(rec: dict, rnd: int, rounds: int) -> str:
    what = f"round {rnd + 1}/{rounds} {rec['key']:42s}"
    if "error" in rec:
        return f"{what} FAILED: {rec['error']}"
    return f"{what} {rec['median_ms']:9.2f} ms ({rec['runs']} runs, {rec['wall_s']:.1f} s)"


def summarise(configs: list[Config], records: list[dict]) -> list[dict]:
    """Per config: median over rounds of each round's median, the rounds' medians, the best
    single run, runs per process and the load averages the workers saw."""
    out = []
    for c in configs:
        mine = [r for r in records if r["key"] == c.key and "error" not in r]
        if not mine:
            continue
        medians = [r["median_ms"] for r in sorted(mine, key=lambda r: r["round"])]
        loads = [v for r in mine for v in r.get("load_average", []) if v is not None]
        info = mine[-1].get("info", {})
        out.append(dict(
            c.to_dict(), median_ms=statistics.median(medians), rounds_ms=medians,
            min_ms=min(r["min_ms"] for r in mine), runs_per_round=[r["runs"] for r in mine],
            load_average=[min(loads), max(loads)] if loads else None,
            info={k: v for k, v in info.items() if k != "runtime_layers"},
        ))  # fmt: skip
    return out


def contention_summary(results: list[dict]) -> list[dict]:
    """Slow-down of each contended config against its quiet twin, and the ratios of the packed
    engine's slow-down to OpenVINO's (int8 ResNet-18 and, where present, r2b's own network)."""
    quiet = {(r["row"], r["batch"], r["threads"], r["omp"]): r for r in results
             if not r["contention"]}  # fmt: skip
    rows = []
    for r in results:
        twin = quiet.get((r["row"], r["batch"], r["threads"], r["omp"]))
        if r["contention"] and twin:
            rows.append({"row": r["row"], "omp": r["omp"], "batch": r["batch"],
                         "threads": r["threads"], "quiet_ms": twin["median_ms"],
                         "busy_ms": r["median_ms"],
                         "slowdown": r["median_ms"] / twin["median_ms"]})  # fmt: skip
    by = {(s["row"], s["omp"], s["batch"], s["threads"]): s["slowdown"] for s in rows}
    for s in list(rows):
        if s["row"] not in OMP_ROWS:
            continue
        for ref in ("ov-int8-resnet18", "ov-r2b"):
            other = by.get((ref, "active", s["batch"], s["threads"]))
            if other:
                s[f"ratio_vs_{ref}"] = s["slowdown"] / other
    return rows


# --------------------------------------------------------------------------- machine, versions


def versions() -> dict:
    """Versions of Python and of every engine this benchmark can run (None: not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "numpy", "numba", "onnx", "onnxruntime", "openvino",
                 "r2b"):  # fmt: skip
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine_record() -> dict:
    """CPU model, logical and usable cores, threads per core, clock, the relevant ISA flags (and
    all of them), platform: ``r2b.packed.bench.machine`` and what the OS says."""
    from r2b.packed.bench import machine

    out = machine()
    out["logical_cores"] = out.pop("cores")
    if hasattr(os, "sched_getaffinity"):
        out["usable_cores"] = len(os.sched_getaffinity(0))
    out["platform"] = platform.platform()
    return out


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def loadavg() -> list[float] | None:
    """1-, 5- and 15-minute load averages (None where the OS has none)."""
    return _loadavg()


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


# --------------------------------------------------------------------------- r2b bench --against


def compare(
    against: list[str],
    packed,
    binary=None,
    batch: int = 1,
    threads: int = 1,
    input_size: int = 224,
    rounds: int = 3,
    runs: int = 20,
    warmup: int = 5,
    omp: tuple[str, ...] = ("active", "passive"),
    work_dir: Path | None = None,
    calib_images: int = 16,
    log=print,
) -> dict:
    """``r2b bench --against``: the packed model against PyTorch's float ResNet-18 of the same
    stem, width and classes (eager; and, per engine named, its fp32 and int8 ONNX files in ONNX
    Runtime / OpenVINO, and ``binary`` run by OpenVINO's BinaryConvolution), by the protocol of
    this module at one batch and thread count. Returns a JSON-ready dict."""
    import tempfile

    from r2b.packed.bench import float_reference

    rows = ["packed-r2b", "torch-fp32-resnet18"]
    if "onnxruntime" in against:
        rows += ["ort-fp32-resnet18", "ort-int8-resnet18"]
    if "openvino" in against:
        rows += ["ov-fp32-resnet18", "ov-int8-resnet18", "ov-r2b"]
    own_dir = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="r2b-bench-")) if own_dir else Path(work_dir)
    try:
        wanted = {ROWS[r].artifact for r in rows}
        skipped: dict[str, str] = {}
        if binary is None and "ov-r2b" in rows:
            skipped["ov-r2b"] = "needs the float bnn model: bench a model name, not a .r2b file"
            rows.remove("ov-r2b")
            wanted.discard("r2b-openvino.xml")
        files, missing, info = build_artifacts(
            work, wanted, input_size, calib_images, float_model=float_reference(packed),
            binary=binary, packed=packed, log=log,
        )  # fmt: skip
        for r in list(rows):
            if ROWS[r].artifact in missing:
                skipped[r] = missing[ROWS[r].artifact]
                rows.remove(r)
        settings = Settings(input_size=input_size, runs=runs, warmup=warmup)
        configs = [c for c in configs_for(rows, [batch], [threads], omp)]
        records = run_protocol(configs, files, settings, rounds, cwd=work, log=log)
    finally:
        if own_dir:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    results = summarise(configs, records)
    failed = {r["key"]: r["error"] for r in records if "error" in r}
    return {"model": packed.arch, "batch": batch, "threads": threads, "input_size": input_size,
            "rounds": rounds, "settings": settings.to_dict(), "results": results,
            "skipped": skipped, "failed": failed, "build": info, "machine": machine_record(),
            "versions": versions()}  # fmt: skip


def format_compare(report: dict) -> str:
    """The text ``r2b bench --against`` prints."""
    from r2b.models import DEFAULT_STEM

    m, a = report["machine"], report["model"]
    net = f"{a.get('name')} ({a.get('stem', DEFAULT_STEM)} stem)"
    labels = {
        "packed-r2b": f"r2b packed {net}",
        "ov-r2b": f"OpenVINO running {net}, BinaryConvolution",
        "torch-fp32-resnet18": "PyTorch eager float ResNet-18, same stem",
    }
    t = report["threads"]
    lines = [
        f"model     {net} width={a.get('width', 1.0)}, input {report['batch']}x3x"
        f"{report['input_size']}x{report['input_size']}, {t} thread{'s' * (t > 1)}; each engine "
        f"in its own process, {report['rounds']} alternating round{'s' * (report['rounds'] > 1)},"
        " median of the rounds' medians",
        f"machine   {m['cpu']}, {m['logical_cores']} cores, {' '.join(m['isa_flags'])}",
        "",
        f"  {'engine':58s} {'ms':>9s}  {'vs packed':>9s}  rounds (ms)",
    ]
    packed = [r for r in report["results"] if r["row"] == "packed-r2b"]
    packed.sort(key=lambda r: r["omp"] != "active")
    base = packed[0] if packed else None
    for r in report["results"]:
        label = labels.get(r["row"], ROWS[r["row"]].label)
        if r["row"] in OMP_ROWS:
            label += f", OpenMP {r['omp']}"
        ratio = f"{r['median_ms'] / base['median_ms']:8.2f}x" if base else ""
        rounds = " ".join(f"{v:.2f}" for v in r["rounds_ms"])
        lines.append(f"  {label:58s} {r['median_ms']:9.2f}  {ratio:>9s}  {rounds}")
    for row, why in report["skipped"].items():
        lines.append(f"  {labels.get(row, ROWS[row].label):58s} skipped: {why}")
    for key, why in report["failed"].items():
        lines.append(f"  {key:58s} failed: {why}")
    if base:
        lines.append(
            f"  (vs packed: time over the packed engine's, OpenMP {base['omp']}; int8 = ONNX "
            "Runtime static QDQ, per-channel weights, calibrated on the embedded images)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(worker_main())
