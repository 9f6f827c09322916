"""Smoke tests of the reference-engine benchmark (``r2b.bench_engines``, ``r2b bench --against``,
``benchmarks/bench_engines.py``): tiny inputs, one round, two runs; nothing here is a timing."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from r2b import bench_engines as be
from r2b.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
MISSING = be.missing_extras()
needs_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"needs the bench extra ({be.EXTRA_HINT}); missing {MISSING}"
)
SIZE, CALIB = 32, 4
RESNET = {"resnet18.pt", "resnet18-fp32.onnx", "resnet18-int8.onnx"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """torchvision ResNet-18 at 32x32 as .pt, fp32 ONNX and int8 QDQ ONNX (built once)."""
    work = tmp_path_factory.mktemp("engines")
    files, missing, info = be.build_artifacts(work, RESNET, SIZE, CALIB, log=lambda _: None)
    assert not missing and set(files) == RESNET
    return files, info


@needs_extra
def test_int8_is_a_per_channel_qdq_model_that_onnxruntime_runs(files):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    paths, info = files
    q = info["resnet18-int8"]
    assert q["format"] == "QDQ" and q["per_channel"] and q["calibration_images"] == CALIB
    assert "embedded CIFAR-10 subset" in info["calibration"]
    model = onnx.load(str(paths["resnet18-int8.onnx"]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 20 and q["quantize_nodes"] == ops.count("QuantizeLinear") > 0
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_scales = [init[n.input[1]] for n in model.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in init
                     and init[n.input[0]].dtype == np.int8]  # fmt: skip
    assert weight_scales and all(s.size > 1 for s in weight_scales), "per-channel weight scales"
    calib, _ = be.calibration_batches(2, SIZE)
    x = np.concatenate(calib)
    out = {}
    for name in ("resnet18-fp32.onnx", "resnet18-int8.onnx"):
        session = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        out[name] = session.run(None, {session.get_inputs()[0].name: x})[0]
    fp32, int8 = out["resnet18-fp32.onnx"], out["resnet18-int8.onnx"]
    assert int8.shape == fp32.shape == (2, 1000)
    cosine = (fp32 * int8).sum() / np.linalg.norm(fp32) / np.linalg.norm(int8)
    assert cosine > 0.9, f"int8 logits far from fp32 (cosine {cosine:.3f})"


@needs_extra
def test_protocol_one_process_per_measurement_rounds_contention_and_resume(files, tmp_path):
    paths, _ = files
    settings = be.Settings(input_size=SIZE, runs=2, warmup=1, max_seconds=1.0)
    rows = ["torch-fp32-resnet18", "ort-int8-resnet18", "ov-int8-resnet18"]
    configs = be.configs_for(rows, [1], [1]) + be.configs_for(rows[1:], [1], [1], contention=True)
    header = settings.to_dict()
    partial = be.Partial.open(tmp_path / "p.jsonl", header)
    logged = []
    records = be.run_protocol(configs, paths, settings, 1, partial, log=logged.append,
                              extra={"commit": "abc"})  # fmt: skip
    assert len(records) == len(logged) == 5 and not [r for r in records if "error" in r]
    pids = {r["pid"] for r in records}
    assert len(pids) == 5, "each measurement is its own process"
    for r in records:
        assert r["runs"] == 2 and len(r["times_ms"]) == 2 and r["median_ms"] > 0
        assert r["commit"] == "abc" and r["round"] == 0 and r["env"]["OMP_WAIT_POLICY"] == "ACTIVE"
        assert r["threads"] == 1 and r["batch"] == 1 and r["input_size"] == SIZE
    ov = next(r for r in records if r["row"] == "ov-int8-resnet18")
    assert ov["info"]["int8_convolutions"] > 0, "OpenVINO runs the QDQ model in int8"
    assert [r["torch_loaded"] for r in records] == [r["row"].startswith("torch") for r in records]
    results = be.summarise(configs, records)
    assert {r["key"] for r in results} == {c.key for c in configs}
    assert all(r["rounds_ms"] == [r["median_ms"]] for r in results)
    slow = be.contention_summary(results)
    assert {s["row"] for s in slow} == set(rows[1:]) and all(s["slowdown"] > 0 for s in slow)
    # a rerun with the same settings takes every measurement from the partial file
    again = be.Partial.open(tmp_path / "p.jsonl", header)
    assert be.run_protocol(configs, paths, settings, 1, again, log=logged.append) == records
    assert len(logged) == 5
    with pytest.raises(ValueError, match="--fresh"):
        be.Partial.open(tmp_path / "p.jsonl", dict(header, runs=3))


@needs_extra
def test_a_failed_measurement_is_one_line_and_not_counted(tmp_path):
    settings = be.Settings(input_size=SIZE, runs=2, warmup=1)
    config = be.Config("ort-fp32-resnet18", 1, 1)
    records = be.run_protocol([config], {"resnet18-fp32.onnx": tmp_path / "none.onnx"},
                              settings, 1, cwd=tmp_path, log=lambda _: None)  # fmt: skip
    assert len(records) == 1 and records[0]["error"].startswith("exit 1: ")
    assert "\n" not in records[0]["error"] and be.summarise([config], records) == []


def test_contention_ratio_of_slowdowns():
    def res(row, ms, busy, omp="active"):
        return {"row": row, "omp": omp, "batch": 8, "threads": 2, "contention": busy,
                "median_ms": ms}  # fmt: skip

    results = [res("packed-r2b", 20, False), res("packed-r2b", 900, True),
               res("ov-int8-resnet18", 20, False), res("ov-int8-resnet18", 40, True)]  # fmt: skip
    slow = {s["row"]: s for s in be.contention_summary(results)}
    assert slow["packed-r2b"]["slowdown"] == 45 and slow["ov-int8-resnet18"]["slowdown"] == 2
    assert slow["packed-r2b"]["ratio_vs_ov-int8-resnet18"] == 22.5


def test_against_parses_and_refuses_unknown_engines_in_one_line(capsys, monkeypatch):
    args = build_parser().parse_args(["bench", "--against", "openvino,onnxruntime"])
    assert args.against == "openvino,onnxruntime" and args.rounds == 3
    assert main(["bench", "--against", "openvino,tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'tensorrt'" in err and "openvino, onnxruntime" in err
    monkeypatch.setattr(be, "missing_extras", lambda names=(): ["openvino"])
    assert main(["bench", "--against", "openvino"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and be.EXTRA_HINT in err and "openvino" in err


@needs_extra
def test_benchmark_script_writes_json_markdown_and_plot(files, tmp_path, capsys):
    paths, _ = files
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_engines_script", REPO / "benchmarks" / "bench_engines.py"
        )
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    work = paths["resnet18-fp32.onnx"].parent  # same settings: the model files are reused
    argv = ["--tag", "t", "--rows", "ort-fp32-resnet18,ov-fp32-resnet18,packed-r2b-int8",
            "--omp", "active", "--input-size",
            str(SIZE), "--batches", "1", "--threads", "1", "--contention-batches", "1",
            "--contention-threads", "1", "--rounds", "1", "--runs", "2", "--warmup", "1",
            "--calib-images", str(CALIB), "--out-dir", str(tmp_path),
            "--work-dir", str(work)]  # fmt: skip
    assert script.main(argv) == 0
    record = json.loads((tmp_path / "engines_t.json").read_text())
    for key in ("command", "commit", "machine", "load_average", "versions", "settings",
                "protocol", "rows", "results", "contention", "measurements"):  # fmt: skip
        assert key in record, key
    assert record["command"].startswith("python benchmarks/bench_engines.py --tag t ")
    assert record["machine"]["cpu"] and "isa_flags" in record["machine"]
    assert set(record["load_average"]) >= {"before", "after"}
    assert record["versions"]["onnxruntime"] and record["versions"]["openvino"]
    assert all(m["top1"] and m["top1_source"] for m in record["rows"].values())
    assert len(record["results"]) == 6 and len(record["contention"]) == 3
    md = (tmp_path / "engines_t.md").read_text()
    assert "| ONNX Runtime fp32 ResNet-18 | 69.758 |" in md and "slow-down" in md
    assert "`r2b-int8.r2b` logits equal to its int8 reference bit for bit" in md
    assert "batch 1: yes, batch 8: yes" in md
    assert (tmp_path / "engines_t.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "engines_t.partial.jsonl").exists()
    capsys.readouterr()


@pytest.mark.slow
@needs_extra
def test_bench_against_end_to_end(capsys):
    args = ["bench", "r2b_resnet18", "--stem", "cifar", "--num-classes", "10", "--against",
            "openvino,onnxruntime", "--rounds", "1", "--runs", "2", "--warmup", "1",
            "--threads", "1", "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["row"] for r in report["results"]}
    assert {"packed-r2b", "torch-fp32-resnet18", "ort-int8-resnet18", "ov-int8-resnet18"} <= rows
    assert not report["failed"]


def test_worker_env_sets_one_wait_setting():
    import os

    os.environ["GOMP_SPINCOUNT"] = "7"
    try:
        spin = be.worker_env(be.Config("packed-r2b", 1, 2, "spin10k"))
        active = be.worker_env(be.Config("packed-r2b", 1, 2, "active"))
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    assert spin["GOMP_SPINCOUNT"] == "10000" and "OMP_WAIT_POLICY" not in spin
    assert active["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in active
    assert spin["OMP_NUM_THREADS"] == "2"


def test_packed_files_are_checked_against_their_references_before_timing(tmp_path):
    """The benchmark's r2b files: the exact one equals its eval model, the int8 one its int8
    reference, at batch 1 and 8 (recorded in the build info); a different net does not."""
    from networks import randomise

    from r2b.models import create_model
    from r2b.packed import to_packed

    binary = randomise(create_model("r2b_resnet18", stage="bnn", stem="cifar", num_classes=10))
    wanted = {"r2b.r2b", "r2b-int8.r2b"}
    files, missing, info = be.build_artifacts(tmp_path, wanted, SIZE, CALIB, binary=binary,
                                              log=lambda _: None)  # fmt: skip
    assert not missing and set(files) == wanted
    assert info["r2b.r2b"]["equals_eval_model"] == {"1": True, "8": True}
    assert info["r2b-int8.r2b"]["equals_int8_reference"] == {"1": True, "8": True}
    other = randomise(create_model("r2b_resnet18", stage="bnn", stem="cifar", num_classes=10), 9)
    assert be.packed_equals_reference(to_packed(binary), other, SIZE) == {"1": False, "8": False}


def test_an_active_wait_policy_makes_the_orchestrator_run_anew_with_sleeping_threads(monkeypatch):
    """Its own idle OpenMP threads would spin through every measurement otherwise; workers get
    their row's policy either way."""
    from r2b.packed.cli import _bench_argv

    for value, anew in (("ACTIVE", True), (" active", True), ("PASSIVE", False), (None, False)):
        if value is None:
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("OMP_WAIT_POLICY", value)
        env = be.orchestrator_env()
        assert (env is not None) is anew
        if anew:
            assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    config = be.Config("packed-r2b", 1, 2, "passive", False)
    assert be.worker_env(config)["OMP_WAIT_POLICY"] == "PASSIVE"
    argv = ["bench", "r2b_resnet18", "--against", "openvino", "--rounds", "2", "--batch", "8",
            "--omp-wait-policy", "active"]  # fmt: skip
    again = build_parser().parse_args(_bench_argv(build_parser().parse_args(argv)))
    assert (again.against, again.rounds, again.batch, again.omp_wait_policy) == (
        "openvino", 2, 8, "active")  # fmt: skip
