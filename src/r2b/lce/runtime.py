"""LCE's own interpreter, run in a second virtual environment (to check exported files).

The ``larq-compute-engine==0.16.0`` wheel carries LCE's TFLite interpreter with its kernels
(``interpreter_wrapper_lite``; on x86 the portable C++ paths of LCE's kernels, or the reference
ones with ``kernel="reference"``). Two facts shape this module:

- the package's ``__init__`` imports LCE's converter and so TensorFlow, but the interpreter
  module loads on its own (``_worker.py`` enters the package without running ``__init__``), so
  the environment needs the wheel (``--no-deps``) and numpy only;
- with numpy 2 the interpreter reads every input as 0 bytes ("Expected N bytes but got 0"),
  so that environment has ``numpy<2``, while r2b's own has numpy 2: the interpreter runs in a
  subprocess of that environment's Python, with inputs and outputs passed as .npy/.npz files.

``ensure_venv()`` builds the environment once (``python -m venv``, then pip) in
``$R2B_LCE_VENV`` (default ``~/.cache/r2b/lce-venv-0.16.0``) and reuses it afterwards;
``scripts/lce_venv.sh`` does the same from a shell. ``run()`` executes files in it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LCE_VERSION = "0.16.0"
PACKAGES = [f"larq-compute-engine=={LCE_VERSION}", "numpy<2"]
_MARKER = "r2b-lce-ready"
WORKER = Path(__file__).with_name("_worker.py")


class LceUnavailable(RuntimeError):
    """LCE's interpreter environment cannot be built or started here (e.g. no network)."""


def venv_path() -> Path:
    """Where the LCE environment lives: ``$R2B_LCE_VENV`` or ``~/.cache/r2b/lce-venv-0.16.0``."""
    env = os.environ.get("R2B_LCE_VENV")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "r2b" / f"lce-venv-{LCE_VERSION}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _check(python: Path) -> dict:
    proc = subprocess.run(
        [str(python), str(WORKER), "--check"], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise LceUnavailable(f"LCE's interpreter does not load: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_venv(venv: Path | None = None, python: str | None = None, quiet: bool = True) -> Path:
    """The LCE environment's Python, building the environment first if needed.

    Built in a temporary folder beside ``venv`` and moved there once LCE's interpreter loads,
    under a file lock, so concurrent callers build it once. ``python``: the interpreter that
    creates it (``$R2B_LCE_PYTHON``, else this one); LCE 0.16 has wheels for CPython 3.10-3.11
    on x86-64 and aarch64 Linux. Raises ``LceUnavailable`` with the reason when it cannot.
    """
    venv = Path(venv) if venv is not None else venv_path()
    if (venv / _MARKER).exists():
        return _python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / _MARKER).exists():
            return _python(venv)
        base = python or os.environ.get("R2B_LCE_PYTHON") or sys.executable
        tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}.", dir=venv.parent))
        out = None if not quiet else subprocess.DEVNULL
        try:
            steps = [
                [base, "-m", "venv", str(tmp)],
                [
                    str(_python(tmp)),
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--no-input",
                    "--disable-pip-version-check",
                    "-q",
                    *PACKAGES,
                ],
            ]
            for cmd in steps:
                proc = subprocess.run(
                    cmd, stdout=out, stderr=subprocess.PIPE, text=True, timeout=900
                )
                if proc.returncode != 0:
                    tail = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
                    raise LceUnavailable(f"{' '.join(cmd[:4])} ... failed: {tail[0]}")
            _check(_python(tmp))
            # only bin/python is used (never the scripts whose first line names the folder),
            # so the checked environment can move to its final place
            if venv.exists():
                shutil.rmtree(venv)
            os.rename(tmp, venv)
            (venv / _MARKER).write_text(json.dumps({"packages": PACKAGES}) + "\n")
        except (OSError, subprocess.SubprocessError) as err:
            raise LceUnavailable(f"cannot build the LCE environment in {venv}: {err}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _python(venv)


def run(models: list[dict], python: Path | None = None, timeout: float = 1800) -> list[dict]:
    """Run TFLite files in LCE's interpreter.

    Each entry of ``models``: ``tflite`` (a path), optional ``inputs`` (an NHWC float32 array,
    batch axis first, split into the file's batch size), ``threads`` (1), ``kernel``
    (``"default"``, ``"reference"``, ``"indirect"``), ``time_runs`` and ``warmup`` (timing on
    one random input). Returns per model the worker's report plus ``outputs`` (a list of arrays,
    one per output of the file, stacked over the inputs) when inputs were given.
    """
    python = Path(python) if python is not None else ensure_venv()
    with tempfile.TemporaryDirectory(prefix="r2b-lce-") as tmp:
        jobs = []
        for i, m in enumerate(models):
            job = {k: v for k, v in m.items() if k != "inputs"}
            job["tflite"] = str(Path(m["tflite"]).resolve())
            if m.get("inputs") is not None:
                job["inputs"] = os.path.join(tmp, f"in{i}.npy")
                job["outputs"] = os.path.join(tmp, f"out{i}.npz")
                np.save(job["inputs"], np.ascontiguousarray(m["inputs"], dtype=np.float32))
            jobs.append(job)
        with open(os.path.join(tmp, "job.json"), "w") as f:
            json.dump({"models": jobs}, f)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        proc = subprocess.run(
            [str(python), str(WORKER), os.path.join(tmp, "job.json")],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"LCE's interpreter failed: {proc.stderr.strip()[-2000:]}")
        reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        for job, report in zip(jobs, reports):
            if "outputs" in job:
                with np.load(job["outputs"]) as z:
                    report["outputs"] = [z[f"out{k}"] for k in range(len(z.files))]
    return reports


def main(argv: list[str] | None = None) -> int:
    """``python -m r2b.lce.runtime [--venv DIR]``: build (or find) the LCE environment."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--venv", default=None, help="folder (default $R2B_LCE_VENV or the cache)")
    ap.add_argument("--python", default=None, help="interpreter that creates it")
    args = ap.parse_args(argv)
    try:
        python = ensure_venv(Path(args.venv) if args.venv else None, args.python, quiet=False)
    except LceUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{python}: {json.dumps(_check(python))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
