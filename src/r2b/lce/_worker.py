"""Runs TFLite files in LCE's interpreter; executed by the LCE venv's Python (``r2b.lce.runtime``).

It imports neither r2b nor torch. ``larq_compute_engine/__init__.py`` imports LCE's converter and
with it TensorFlow, so the package is entered through a bare module object whose ``__path__`` is
the installed folder: ``larq_compute_engine.tflite.python.interpreter_wrapper_lite`` (LCE's
pybind11 interpreter, the one ``larq_compute_engine.testing.Interpreter`` wraps) then loads alone.

Usage: ``python _worker.py JOB.json``; the job lists models, each with ``tflite``, ``inputs``
(.npy, the batch axis first), ``outputs`` (.npz to write: ``out0``, ``out1``, ... stacked over
the inputs), ``threads``, ``kernel`` (``default``, ``reference`` or ``indirect``), ``time_runs``,
``warmup``. It prints one JSON line per model: shapes and, when timed, the seconds of each run.
"""

import importlib.util
import json
import sys
import time
import types


def load_wrapper():
    spec = importlib.util.find_spec("larq_compute_engine")
    if spec is None:
        raise SystemExit("larq_compute_engine is not installed in this Python")
    pkg = types.ModuleType("larq_compute_engine")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("larq_compute_engine", pkg)
    from larq_compute_engine.tflite.python import interpreter_wrapper_lite

    return interpreter_wrapper_lite


def run_model(wrapper, np, job):
    with open(job["tflite"], "rb") as f:
        flatbuffer = f.read()
    kernel = job.get("kernel", "default")
    interp = wrapper.LiteInterpreter(
        flatbuffer, int(job.get("threads", 1)), kernel == "reference", kernel == "indirect", False
    )
    (in_shape,) = interp.input_shapes
    batch = int(in_shape[0])
    result = {
        "tflite": job["tflite"],
        "input_shape": list(in_shape),
        "kernel": kernel,
        "threads": int(job.get("threads", 1)),
    }
    if job.get("inputs"):
        x = np.load(job["inputs"]).astype(np.float32)
        if len(x) % batch:
            raise SystemExit(f"{len(x)} inputs do not fill batches of {batch}")
        outs = None
        for i in range(0, len(x), batch):
            ys = interp.predict([np.ascontiguousarray(x[i : i + batch])])
            ys = ys if isinstance(ys, list) else [ys]
            outs = [[] for _ in ys] if outs is None else outs
            for acc, y in zip(outs, ys):
                acc.append(np.array(y))
        np.savez(job["outputs"], **{f"out{k}": np.concatenate(v) for k, v in enumerate(outs)})
        result["output_shapes"] = [list(v[0].shape) for v in outs]
    runs = int(job.get("time_runs", 0))
    if runs:
        x1 = np.random.default_rng(0).standard_normal(tuple(in_shape)).astype(np.float32)
        for _ in range(int(job.get("warmup", 1))):
            interp.predict([x1])
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            interp.predict([x1])
            times.append(time.perf_counter() - t0)
        result["seconds"] = times
    return result


def main():
    wrapper = load_wrapper()
    import numpy as np

    if sys.argv[1:] == ["--check"]:
        print(json.dumps({"numpy": np.__version__, "wrapper": wrapper.__file__}))
        return
    with open(sys.argv[1]) as f:
        jobs = json.load(f)["models"]
    for job in jobs:
        print(json.dumps(run_model(wrapper, np, job)), flush=True)


if __name__ == "__main__":
    main()
