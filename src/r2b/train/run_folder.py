"""The run folder: where a training run keeps its config, results, report and each stage's files,
and the rules for starting a run in a folder or resuming the one in it.

Every file name of a run folder is spelled here, once (``RUN_LAYOUT``); the pipeline, the loop,
the lock and the report ask a ``RunFolder`` (or a stage's ``StageFolder``) for their paths.

Rules (``RunFolder.check_use``), checked before anything is written:

- a new run needs a folder that does not exist yet or is empty (a stale ``train.lock`` aside),
  below a folder that is a folder and not a file;
- ``--resume`` needs the folder of an earlier run (its ``config.yaml``) and the same config: only
  ``runtime`` (devices, precision, threads), ``data.test_every_epoch`` (when the test split is
  evaluated, which changes no weight) and, in stages that have not finished, the learning rate
  (``RESUME_MAY_CHANGE``: after a diverged loss, resume with a lower one) may differ.

Whether a live process holds the folder is the lock's question (``r2b.train.lock``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from r2b.errors import UserError
from r2b.train.config import PipelineConfig, load_config, to_dict

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
CURVES_FILE = "curves.png"
ATTENTION_FILE = "attention_{stage}.png"
LOCK_FILE = "train.lock"
TENSORBOARD_DIR = "tb"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "state.safetensors"
STAGE_RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
WEIGHTS_SUFFIX = ".safetensors"

RUN_LAYOUT = f"""\
RUN/{CONFIG_FILE}           the resolved config
RUN/{RESULTS_FILE}          every stage's top-1/top-5 (last and best epoch), times
RUN/{REPORT_FILE}, *.png      results table, per-stage curves ({CURVES_FILE}), teacher-vs-student
                          attention maps ({ATTENTION_FILE})
RUN/{TENSORBOARD_DIR}/                   TensorBoard events (when tensorboard is installed)
RUN/<stage>/{METRICS_FILE}   one row per epoch: losses, accuracies, lr, flip ratio
RUN/<stage>/{BEST_FILE}, {LAST_FILE}   weights (+ architecture and info metadata)
RUN/<stage>/{STATE_FILE}                    resumable training state
RUN/<stage>/{STAGE_RESULT_FILE}   present once the stage has finished
RUN/{LOCK_FILE}            while a run trains in the folder (pid, host)
"""
#: config keys that ``--resume`` may change in a stage that has not finished (after a diverged
#: loss: resume with a lower learning rate); ``runtime.*`` may always change
RESUME_MAY_CHANGE = re.compile(r"^stages\[(\d+)\]\.optim\.lr$")


def names_weights_file(ref: str) -> bool:
    """Whether an ``init_from`` names a weights file (``*.safetensors``), not a stage."""
    return ref.endswith(WEIGHTS_SUFFIX)


def make_dir(path: Path) -> None:
    """Create ``path`` (and its parents); ``UserError`` when it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the folder {path} ({err.strerror}); choose a writable --out"
        ) from None


@dataclass(frozen=True)
class StageFolder:
    """``RUN/<stage>/``: one stage's checkpoints, metrics and result."""

    path: Path

    @property
    def best(self) -> Path:
        return self.path / BEST_FILE

    @property
    def last(self) -> Path:
        return self.path / LAST_FILE

    @property
    def state(self) -> Path:
        return self.path / STATE_FILE

    @property
    def result(self) -> Path:
        return self.path / STAGE_RESULT_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.path.parent)

    def finished(self) -> bool:
        return self.result.is_file()

    def resumable(self) -> bool:
        return self.state.is_file()

    def create(self) -> None:
        make_dir(self.path)


@dataclass(frozen=True)
class RunFolder:
    """``RUN/``: a training run's folder (see ``RUN_LAYOUT``)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def curves(self) -> Path:
        return self.root / CURVES_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def stage(self, name: str) -> StageFolder:
        return StageFolder(self.root / name)

    def tensorboard(self, stage: str) -> Path:
        return self.root / TENSORBOARD_DIR / stage

    def attention(self, stage: str) -> Path:
        return self.root / ATTENTION_FILE.format(stage=stage)

    def figures(self) -> list[Path]:
        """The PNGs at the top of the folder, by name."""
        return sorted(self.root.glob("*.png"), key=lambda p: p.name)

    def weights(self, ref: str) -> Path:
        """The weights an ``init_from`` (or teacher) names: a ``.safetensors`` file, or the best
        weights of the run's stage of that name."""
        return Path(ref) if names_weights_file(ref) else self.stage(ref).best

    def create(self) -> None:
        make_dir(self.root)

    def check_use(self, cfg: PipelineConfig, resume: bool) -> bool:
        """Refuse to overwrite a run; on ``resume`` require the saved config but for what may
        change (module docstring). Returns whether the saved config is to be rewritten."""
        if not resume:
            self._check_new()
            return False
        return self._check_resumable(cfg)

    def _holds_files(self) -> bool:
        return any(p.name != LOCK_FILE for p in self.root.iterdir())

    def _check_new(self) -> None:
        root = self.root
        if root.exists() and (not root.is_dir() or self._holds_files()):
            raise UserError(
                f"output directory {root} already exists and is not empty; pass --resume to "
                "continue the run in it, or choose a new --out"
            )
        for parent in root.absolute().parents:  # the nearest existing one must be a folder
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(
                        f"cannot create the run folder {root}: {parent} is a file, not a "
                        "folder; choose another --out"
                    )
                return

    def _check_resumable(self, cfg: PipelineConfig) -> bool:
        saved = self.config
        if not saved.is_file():
            raise UserError(
                f"--resume: {self.root} holds no run ({CONFIG_FILE} is missing); give the --out "
                "folder of an earlier r2b train, or drop --resume to start a new run"
            )
        old, new = to_dict(load_config(saved)), to_dict(cfg)
        for record in (old, new):  # what changes no weight
            record.pop("runtime")
            record["data"].pop("test_every_epoch", None)
        keys = _diff_keys(old, new)
        refused = [k for k in keys if not self._may_change(k, cfg)]
        if refused:
            raise UserError(
                f"--resume: the config differs from the run's saved {saved} "
                f"(at {', '.join(refused[:3])}); "
                "resume without --config/--set (the saved config is used; --set runtime.* and "
                "an unfinished stage's optim.lr may change) or start a new --out"
            )
        return bool(keys)

    def _may_change(self, key: str, cfg: PipelineConfig) -> bool:
        match = RESUME_MAY_CHANGE.match(key)
        if not match or int(match.group(1)) >= len(cfg.stages):
            return False
        return not self.stage(cfg.stages[int(match.group(1))].name).finished()


def _diff_keys(a, b, prefix="") -> list[str]:
    """The dotted keys (``stages[1].optim.lr``) where two nested config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _diff_keys(x, y, f"{prefix}[{i}]")
        return out
    return [] if a == b else [prefix or "(root)"]
