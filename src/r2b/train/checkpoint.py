"""Checkpoints: weights and resumable training state in safetensors, written atomically.

Nothing loaded from disk executes code: tensors come from safetensors files, everything else from
JSON stored in their metadata (no pickle, so no ``torch.load``).

Two kinds of file (docs/design.md "On disk"):

- **weights** (``best.safetensors``, ``last.safetensors``): the model's ``state_dict`` plus
  metadata ``format = "r2b.weights"``, ``version``, ``arch`` (JSON: ``create_model`` name and
  keyword arguments, so ``load_model(path)`` rebuilds the network) and ``info`` (JSON: stage
  name, epoch, top-1/top-5, the data config).
- **training state** (``state.safetensors``): self-contained, so resuming reads one file that
  was renamed into place in one step. Tensors: ``model.<key>`` (weights), ``optim.<i>.<key>``
  (tensor entries of the optimiser's per-parameter state), ``rng.torch`` / ``rng.cuda.<d>`` /
  ``rng.numpy`` (generator states). Metadata ``state`` (JSON): ``progress`` (epoch, optimiser
  step, best accuracy, per-epoch history: ``r2b.train.progress.StageProgress``), the optimiser's
  ``param_groups`` and non-tensor per-parameter entries, Python's and numpy's scalar RNG state.
  Optional ``extra.<name>`` tensors hold what a stage stopped in the middle of an epoch needs to
  continue it (``r2b.train.loop``).

Every file is written atomically (``r2b.io.atomic_write``: a temporary file renamed into place,
so a killed process leaves the old file or the new one, never half; a failed write is a
``UserError`` naming the file, and the file it was to replace is left as it was).

Files are checked before use: a file that cannot be read, is not safetensors, or whose JSON
records miss keys or hold the wrong types is a ``UserError`` that says which, never a traceback.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from r2b.errors import UserError
from r2b.io import atomic_write

WEIGHTS_FORMAT = "r2b.weights"
STATE_FORMAT = "r2b.state"
VERSION = "1"


# --------------------------------------------------------------------------- files


def _cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _read(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; UserError if missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"{what} {path} {problem}; check the path")
    try:
        data = path.read_bytes()
    except OSError as err:
        reason = err.strerror or err
        raise UserError(f"cannot read {what} {path} ({reason}); check its permissions") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        metadata = header.get("__metadata__") or {}
    except Exception as err:  # noqa: BLE001  (any parse failure means a damaged file)
        raise UserError(
            f"{what} {path} is corrupt or truncated ({type(err).__name__}); "
            "use an intact checkpoint (e.g. best.safetensors of the stage) or retrain"
        ) from None
    return tensors, metadata


def _json_meta(metadata: dict[str, str], key: str, path: Path, what: str, kind=dict) -> Any:
    """The JSON record ``key`` of a file's metadata, which must be a ``kind`` (a JSON object)."""
    try:
        value = json.loads(metadata[key])
    except (KeyError, ValueError, TypeError):
        value = None
    if not isinstance(value, kind):
        raise UserError(
            f"{what} {path} has no valid {key!r} record; it was not written by r2b train "
            "(or was edited): use a checkpoint that r2b wrote"
        )
    return value


def _malformed(path: Path, what: str, detail: str) -> UserError:
    return UserError(
        f"{what} {path} has a malformed record ({detail}); it was not written by this r2b: "
        "use a checkpoint that r2b wrote, or delete it to retrain that stage"
    )


# --------------------------------------------------------------------------- weights


def save_weights(path: str | Path, model: nn.Module, info: dict | None = None) -> None:
    """Save ``model.state_dict()`` with its ``arch`` and ``info`` (JSON) as safetensors."""
    arch = getattr(model, "arch", None)
    if arch is None:
        raise ValueError("model has no .arch; build it with r2b.models.create_model")
    metadata = {
        "format": WEIGHTS_FORMAT,
        "version": VERSION,
        "arch": json.dumps(arch),
        "info": json.dumps(info or {}),
    }
    atomic_write(path, st_save(_cpu_tensors(model.state_dict()), metadata=metadata))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(state_dict, arch, info) of a weights file; UserError for anything not r2b weights."""
    path = Path(path)
    tensors, meta = _read(path, "checkpoint")
    if meta.get("format") not in (WEIGHTS_FORMAT, STATE_FORMAT):
        raise UserError(
            f"checkpoint {path} is not an r2b weights file (format {meta.get('format')!r}); "
            "give a best.safetensors or last.safetensors written by r2b train"
        )
    arch = _json_meta(meta, "arch", path, "checkpoint")
    if not isinstance(arch.get("name"), str):
        raise _malformed(path, "checkpoint", "arch.name is not a model name")
    info = _json_meta(meta, "info", path, "checkpoint") if "info" in meta else {}
    if meta["format"] == STATE_FORMAT:
        tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return tensors, arch, info


def describe_arch(arch: dict) -> str:
    """Short human name of an architecture record, e.g. ``r2b_resnet18(stage=ban, width=0.25)``."""
    keys = ("stage", "stem", "width", "num_classes")
    parts = [f"{k}={arch[k]}" for k in keys if k in arch]
    return f"{arch.get('name', '?')}({', '.join(parts)})"


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | Path, arch: dict | None = None
) -> None:
    """``model.load_state_dict(state)`` with names and shapes checked first.

    Raises UserError naming both architectures when ``state`` belongs to another network.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        theirs = describe_arch(arch) if arch else "another architecture"
        mine = describe_arch(getattr(model, "arch", {}))
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} mis-shaped "
            f"tensors, e.g. {(missing + unexpected + shapes)[0]!r}"
        )
        raise UserError(
            f"checkpoint {source} holds {theirs}, which does not fit {mine} ({detail}); "
            "use a checkpoint of the same architecture"
        )
    model.load_state_dict(state)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network of a weights file and load it: (model in eval mode, info)."""
    from r2b.models import create_model

    state, arch, info = read_weights(path)
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    try:
        model = create_model(arch["name"], **kwargs)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"checkpoint {path} names an architecture r2b cannot build ({err}); "
            "it was written by another version or program"
        ) from None
    load_state_into(model, state, path, arch)
    return model.to(device).eval(), info


# --------------------------------------------------------------------------- training state


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_keys.astype(np.int64))
    scalars = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    version, state, gauss = scalars["python"]
    random.setstate((version, tuple(state), gauss))
    name, pos, has_gauss, cached = scalars["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))


def _split_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, entries in opt_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], record: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entries in record["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    groups = [dict(g) for g in record["param_groups"]]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Everything needed to continue a stage exactly: weights, optimiser, RNGs and ``progress``.

    ``progress`` is a JSON-able dict (epoch, step, best accuracy, history, ...); ``extra`` are
    further tensors (stored as ``extra.<name>``, given back by ``load_training_state``).
    """
    model_tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_record = _split_optimizer(optimizer.state_dict())
    rng_tensors, rng_record = _rng_state()
    record = {"progress": progress, "optimizer": optim_record, "rng": rng_record}
    metadata = {
        "format": STATE_FORMAT,
        "version": VERSION,
        "arch": json.dumps(getattr(model, "arch", {})),
        "state": json.dumps(record),
    }
    extra_tensors = {f"extra.{k}": v for k, v in (extra or {}).items()}
    tensors = _cpu_tensors({**model_tensors, **optim_tensors, **rng_tensors, **extra_tensors})
    atomic_write(path, st_save(tensors, metadata=metadata))


#: progress keys every state file has, and their JSON types
PROGRESS_KEYS = {"epoch": int, "step": int, "history": list}


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    restore_rng: bool = True,
    extra: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Load a ``save_training_state`` file into ``model`` and ``optimizer``; returns progress.

    When ``extra`` is a dict it receives the file's extra tensors (names without ``extra.``).
    """
    path = Path(path)
    what = "training state"
    tensors, meta = _read(path, what)
    if meta.get("format") != STATE_FORMAT:
        raise UserError(
            f"training state {path} is not an r2b state file; delete the run or retrain"
        )
    arch = _json_meta(meta, "arch", path, what)
    record = _json_meta(meta, "state", path, what)
    progress = record.get("progress")
    if not isinstance(progress, dict):
        raise _malformed(path, what, "no progress record")
    for key, kind in PROGRESS_KEYS.items():
        if not isinstance(progress.get(key), kind) or isinstance(progress.get(key), bool):
            raise _malformed(path, what, f"progress.{key} is not a JSON {kind.__name__}")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state_into(model, model_state, path, arch)
    try:
        optimizer.load_state_dict(_join_optimizer(tensors, record["optimizer"]))
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(
            f"training state {path} does not fit this stage's optimiser "
            f"({type(err).__name__}: {err}); resume with the run's own config"
        ) from None
    if restore_rng:
        try:
            _set_rng_state(tensors, record["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise _malformed(path, what, f"random-generator state: {type(err).__name__}") from None
    if extra is not None:
        extra.update({k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")})
    return progress
