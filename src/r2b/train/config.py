"""Pipeline configs: typed dataclasses, read from YAML only at the CLI edge (docs/design.md).

A pipeline is data: a list of stages (docs/design.md habit 6). Each ``StageConfig`` names its model,
stage variant, its teacher (an earlier stage, or none), what it initialises from, its optimiser,
schedule, epochs, batch size, loss weights and augmentation. Defaults follow docs/method.md; every
``[choice]`` there is a field here.

YAML form (``load_config``)::

    name: r2b
    seed: 0
    data: {name: cifar10, root: ...}
    stage_defaults: {batch_size: 128, ...}   # optional: deep-merged under every stage
    stages:
      - name: teacher
        model: {name: resnet18}
        ...

Rules: unknown keys are errors, values are type-checked against the annotations (an int is
accepted for a float field), and ``--set key=value`` overrides are applied after
``stage_defaults`` is merged. Keys are dotted paths; a list element is addressed by its index or,
for stages, by its ``name``; ``*`` addresses every element (``stages.*.epochs=1``). Values are
parsed as YAML scalars (``--set data.root=null``, ``--set stages.fp.augment.ops=[flip]``).
Every problem raises ``r2b.errors.UserError`` naming the key and what to do.

Inheritance (``read_recipe``): a recipe file may start from others, so that it states only what
differs. ``base: ../cifar100/r2b.yaml`` (a path relative to the file's folder) or a list
``base: [a.yaml, b.yaml]`` names recipes, each resolved with its own bases first; they are merged
in order (b over a) and the file's own keys over the result. The merge, of the plain mappings:

- a mapping merges key by key, recursively (``data: {root: x}`` keeps the base's ``data.name``;
  ``stage_defaults`` merges the same way);
- anything else, a scalar, null or a list (``augment.ops``, ``schedule.milestones``), replaces
  the base's value whole;
- ``stages``, the one list that merges, is matched by ``name``: a child stage merges (as a
  mapping) into the base stage of the same name, which keeps its place; a stage with a new name
  is appended, in the child's order. A stage is named, not numbered, everywhere else
  (``--set stages.bnn.epochs=1``, ``teacher: ban``, the folder ``RUN/bnn``), so this is the
  addressing a reader already knows, and a row that changes one key of one stage says only that
  (replacing the list would bring back the copies). A child cannot drop or reorder stages: base
  it on recipes that hold only the stages it wants, e.g. ``base: [resnet18.yaml, sb.yaml]`` is
  the teacher followed by the strong baseline's two stages.

Inheritance comes first: ``stage_defaults`` of the merged recipe then goes under every stage (a
stage's own key wins, whichever file set it), then ``--set`` overrides apply. A base cycle, a
missing base file or a base that is not a mapping is a ``UserError`` naming the file. The run
folder's ``config.yaml`` is the resolved config (``dump_yaml``), so resuming a run never reads
its base files again.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from r2b.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("step", "cosine")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class ModelConfig:
    """Which network a stage trains (``r2b.models.create_model``; docs/method.md section 2)."""

    name: str = "r2b_resnet18"  # registered model: resnet18 | sb_resnet18 | r2b_resnet18
    stage: str | None = None  # binary families: fp (tanh) | ban (sign acts) | bnn (+ sign weights)
    stem: str = "cifar"  # imagenet (7x7/2 + max-pool) | cifar (3x3/1) [choice for CIFAR]
    width: float = 1.0  # width multiplier of 64/128/256/512 channels
    activation_quantizer: str = "ste_sign"  # binary families: ste_sign | approx_sign (sec. 1)
    weight_scale: bool = True  # binary families, bnn: multiply by per-channel mean|W| (sec. 5)
    pad_value: float = 1.0  # binary families: constant that pads the sign input [choice: +1]

    def create_kwargs(self, num_classes: int) -> dict:
        """Keyword arguments of ``create_model`` for ``num_classes`` outputs."""
        kw: dict[str, Any] = dict(num_classes=num_classes, stem=self.stem, width=self.width)
        if self.is_binary_family:
            kw.update(
                stage=self.stage, activation_quantizer=self.activation_quantizer,
                weight_scale=self.weight_scale, pad_value=self.pad_value,
            )  # fmt: skip
        return kw

    @property
    def is_binary_family(self) -> bool:
        from r2b.models import is_binary_family

        return is_binary_family(self.name)


@dataclass
class LossConfig:
    """Weights of ``ce*CE + kd*KD + att*L_att`` (``r2b.losses.DistillationObjective``; sec. 4)."""

    ce: float = 1.0  # cross-entropy weight
    kd: float = 0.0  # logit distillation weight (3.0 in steps 1-2, 0.8 in step 3; needs a teacher)
    att: float = 0.0  # attention-matching weight beta (needs a teacher)
    att_form: str = "paper"  # paper (normalised maps, squared L2, summed) | larq
    temperature: float = 1.0  # distillation temperature T [choice; larq]


@dataclass
class OptimConfig:
    """Optimiser of a stage (docs/method.md section 5: Adam, 1e-3 real / 2e-4 binary weights)."""

    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3  # peak learning rate (after warm-up)
    weight_decay: float = 1e-5  # 1e-5 while weights are real, 0 once binary (sec. 5)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw
    momentum: float = 0.9  # sgd only (Nesterov)
    clip_weights: float | None = None  # clip latent weights of binary convs to [-c, c] per step


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per optimiser step: linear warm-up, then step or cosine decay."""

    kind: str = "step"  # step (x gamma at each milestone) | cosine (to 0 at the last epoch)
    warmup_epochs: float = 0.0  # linear warm-up length in epochs (5 in real-weight stages)
    milestones: list[int] = field(default_factory=list)  # step: epochs where lr *= gamma
    gamma: float = 0.1  # step decay factor (0.1 paper; 0.3 larq) [choice]


@dataclass
class AugmentConfig:
    """Batch augmentation of a stage (``r2b.data.BatchAugment``) and mix-up."""

    ops: list[str] | None = None  # cifar: crop, flip, rotate; imagenet: crop, flip, jitter;
    # None = the paper's recipe for the dataset's kind; [] = none
    pad: int = 4  # cifar crop: translation range in pixels
    degrees: float = 15.0  # cifar rotation range
    jitter: float = 0.4  # imagenet colour-jitter strength
    mixup: float = 0.0  # mix-up Beta(alpha, alpha); 0 = off (paper: on for CIFAR-100)


@dataclass
class StageConfig:
    """One training step of the pipeline (docs/method.md section 5)."""

    name: str = ""  # unique name; also the stage's folder in the run directory
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: str | None = None  # name of an earlier stage (its best checkpoint, frozen) or null
    init_from: str | None = None  # earlier stage name, or a .safetensors file; null = random init
    epochs: int = 1
    batch_size: int = 128  # images per optimiser step, over all processes
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class DataConfig:
    """Dataset of the whole pipeline (``r2b.data.build_dataset``)."""

    name: str = "default"  # default (embedded) | cifar10 | cifar100 | folder | imagenet
    root: str | None = None  # data directory (relative paths: from the current directory)
    download: bool = False  # fetch cifar10/cifar100 when missing (needs internet)
    image_size: int | None = None  # training/eval side; None = the dataset's (224 for imagenet)
    in_memory: bool | None = None  # None = decide by size (folders)
    num_workers: int = 0  # loader workers for streamed folders
    eval_batch_size: int = 500  # images per evaluation batch
    train_limit: int | None = None  # use only N training images (class-balanced subset)
    test_limit: int | None = None  # use only N test images
    # hold out this fraction of each class's training images (after train_limit; which ones is
    # fixed by the seed) as a validation split: best.safetensors, and so every teacher, is then
    # the epoch of best validation top-1, and the test split is only reported. 0 (default): no
    # validation split, the best epoch is chosen on test top-1 (as before this field existed).
    val_fraction: float = 0.0
    # false: evaluate the test split only after a stage's last epoch and on its selected epoch
    # (needs a validation split to select on); true: every epoch too (the curves in the plots)
    test_every_epoch: bool = True


@dataclass
class RuntimeConfig:
    """Devices and precision (Lightning Fabric). None of these change what is computed on CPU."""

    accelerator: str = "auto"  # auto | cpu | cuda | gpu | mps
    devices: int | str = "auto"  # auto, a count (2) or ids ("0,1"); under torchrun: its processes
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    num_threads: int | None = None  # CPU threads for torch; None = all cores
    channels_last: bool | None = None  # None = on for GPU, off for CPU
    progress: bool = True  # progress bar (only on a terminal)


@dataclass
class ReportConfig:
    """What goes into report.md and its plots."""

    attention_images: int = 4  # test images in the teacher-vs-student attention plots (0 = none)


@dataclass
class PipelineConfig:
    """A whole run: data, runtime and the list of stages."""

    name: str = "pipeline"
    seed: int = 0  # seeds initialisation, shuffling and augmentation
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    stages: list[StageConfig] = field(default_factory=list)

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


# --------------------------------------------------------------------------- dict <-> dataclass


def to_dict(cfg) -> dict:
    """Plain nested dict of a config dataclass (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg) -> str:
    """YAML text of a config; ``from_dict(yaml.safe_load(text))`` gives the same config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp, where: str) -> Any:
    """``value`` checked against the annotation ``tp``; raises UserError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except UserError:
                continue
        raise _type_error(value, tp, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(value, tp, where)
        return _from_mapping(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, tp, where)
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    raise _type_error(value, tp, where)


def _type_error(value: Any, tp, where: str) -> UserError:
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return UserError(
        f"config key {where} must be {_type_name(tp)}, got {shown}; fix the value in the config "
        "file or the --set option"
    )


def _from_mapping(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise UserError(
            f"unknown config key {key}; known keys here: {', '.join(names)} "
            "(check the spelling in the config file or the --set option)"
        )
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def from_dict(data: dict) -> PipelineConfig:
    """Typed, validated ``PipelineConfig`` from a plain dict (after ``stage_defaults``/--set)."""
    if not isinstance(data, dict):
        raise UserError(
            f"a config must be a YAML mapping of keys to values; see {_example_recipe()}"
        )
    cfg = _from_mapping(PipelineConfig, data, "")
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- YAML and overrides


def _deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``; the result shares no mapping or list with either
    (stages merged from one ``stage_defaults`` must not share its ``augment`` dict, or a
    ``--set`` of one stage's key would change every stage)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if both else copy.deepcopy(v)
    return out


def expand_stage_defaults(data: dict) -> dict:
    """Merge ``stage_defaults`` (if any) under every stage; the result has no such key."""
    data = dict(data)
    defaults = data.pop("stage_defaults", None)
    if defaults is None:
        return data
    if not isinstance(defaults, dict):
        raise UserError("config key stage_defaults must be a mapping of stage keys")
    stages = data.get("stages", [])
    if not isinstance(stages, list):
        raise UserError("config key stages must be a list of stage mappings")
    data["stages"] = [_deep_merge(defaults, s) if isinstance(s, dict) else s for s in stages]
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise UserError(f"--set needs KEY=VALUE with a dotted key, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _children(node: Any, part: str, where: str) -> list[tuple[Any, Any]]:
    """(container, key) pairs that ``part`` addresses inside ``node``."""
    if isinstance(node, dict):
        return [(node, part)]
    if isinstance(node, list):
        if part == "*":
            return [(node, i) for i in range(len(node))]
        if part.lstrip("-").isdigit():
            i = int(part)
            if not -len(node) <= i < len(node):
                raise UserError(
                    f"--set {where}: index {i} is out of range (the list has {len(node)})"
                )
            return [(node, i)]
        named = [i for i, s in enumerate(node) if isinstance(s, dict) and s.get("name") == part]
        if not named:
            names = [s.get("name") for s in node if isinstance(s, dict)]
            raise UserError(
                f"--set {where}: no element named {part!r}; use an index, '*' or one of {names}"
            )
        return [(node, i) for i in named]
    raise UserError(f"--set {where}: {part!r} addresses inside a value that is not a mapping")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides in order to a plain dict (a deep copy is returned).

    A missing intermediate mapping key is created, so a key left out of the YAML (default value)
    can be set; whether the key exists at all is checked by ``from_dict``.
    """
    data = yaml.safe_load(yaml.safe_dump(data))
    for text in overrides:
        path, value = parse_override(text)
        nodes = [data]
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            nxt = []
            for node in nodes:
                for container, key in _children(node, part, where):
                    if isinstance(container, dict) and container.get(key) is None:
                        container[key] = {}
                    nxt.append(container[key])
            nodes = nxt
        for node in nodes:
            for container, key in _children(node, path[-1], ".".join(path)):
                container[key] = value
    return data


def build_config(data: dict, overrides: list[str] | None = None) -> PipelineConfig:
    """Plain dict (as read from YAML) + ``--set`` overrides -> validated ``PipelineConfig``."""
    data = expand_stage_defaults(data)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML recipe and its bases, merge ``stage_defaults``, apply ``--set``, validate."""
    return build_config(read_recipe(path), overrides)


# --------------------------------------------------------------------------- recipe files, base:

BASE_KEY = "base"


def _example_recipe() -> str:
    """The path of the built-in quick recipe: a file every user has, whatever the install."""
    from r2b.train.recipes import recipe_path  # (r2b.train.recipes imports this module)

    return str(recipe_path())


def read_yaml(path: str | Path, named_by: Path | None = None) -> dict:
    """The mapping in one YAML file; UserError if it is missing, not valid YAML or no mapping.

    ``named_by`` is the recipe whose ``base:`` names this file: the messages then say so, since
    the user typed that file's name, not this one's.
    """
    path = Path(path)
    what = f"config file {path}" if named_by is None else f"base file {path} (named by {named_by})"
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        fix = (
            f"fix the base: entry in {named_by} (a path relative to its folder)"
            if named_by is not None
            else "give the path of a YAML recipe (e.g. configs/cifar10/r2b.yaml) or leave out "
            "--config for the quick default"
        )
        raise UserError(f"{what} {problem}; {fix}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{what} is not valid YAML{at}; fix its syntax") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {what} ({err}); check the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} must hold a mapping of keys (see {_example_recipe()})")
    return data


def read_recipe(path: str | Path) -> dict:
    """The mapping of a recipe file with its bases merged under it, as the module docstring
    says; the result has no ``base`` key (it is a plain recipe, as if written in one file)."""
    return _resolve_bases(Path(path), ())


def _resolve_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    """``path``'s recipe, resolved; ``chain``: the files whose ``base:`` led here, outermost
    first (a file already in it closes a cycle)."""
    if path.resolve() in {p.resolve() for p in chain}:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise UserError(
            f"config file {chain[-1]}: its base: entries form a cycle ({cycle}); remove the "
            "entry that leads back"
        )
    data = read_yaml(path, chain[-1] if chain else None)
    merged: dict = {}
    for base in _base_files(data, path):
        merged = merge_recipes(merged, _resolve_bases(base, (*chain, path)))
    return merge_recipes(merged, {k: v for k, v in data.items() if k != BASE_KEY})


def _base_files(data: dict, path: Path) -> list[Path]:
    """The files ``path``'s ``base:`` names (none, one path, or a list), in merge order."""
    entries = data.get(BASE_KEY)
    entries = [] if entries is None else [entries] if isinstance(entries, str) else entries
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise UserError(
            f"config file {path}: base must be a path or a list of paths (relative to the "
            f"file's folder), got {data[BASE_KEY]!r}; fix the base: key"
        )
    return [path.parent / e for e in entries]


def merge_recipes(base: dict, child: dict) -> dict:
    """Recipe mapping ``child`` merged over ``base`` (neither is modified): mappings key by key,
    ``stages`` by name, anything else replaced (the module docstring gives the reason)."""
    out = _deep_merge(base, {k: v for k, v in child.items() if k != "stages"})
    if "stages" in child:
        out["stages"] = _merge_stages(base.get("stages"), child["stages"])
    return out


def _merge_stages(base: Any, child: Any) -> Any:
    """Each child stage merged into the base stage of its name, or appended if the name is new."""
    if not (isinstance(base, list) and isinstance(child, list)):
        return copy.deepcopy(child)  # not two lists: from_dict says what is wrong with it
    out = copy.deepcopy(base)
    for stage in child:
        i = _stage_index(out, stage)
        if i is None:
            out.append(copy.deepcopy(stage))
        else:
            out[i] = _deep_merge(out[i], stage)
    return out


def _stage_index(stages: list, stage: Any) -> int | None:
    """Index of the first of ``stages`` with ``stage``'s name; None if it has none or a new one."""
    name = stage.get("name") if isinstance(stage, dict) else None
    if not isinstance(name, str):
        return None
    named = (i for i, s in enumerate(stages) if isinstance(s, dict) and s.get("name") == name)
    return next(named, None)


# --------------------------------------------------------------------------- validation


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_choice(value, choices, where: str) -> None:
    _check(value in choices, f"config key {where} is {value!r}; choose one of {', '.join(choices)}")


def _check_finite(node, where: str = "") -> None:
    """Every float anywhere in a config is a finite number (NaN passes every ``>`` test)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(node, float):
        _check(math.isfinite(node), f"config key {where} is {node}; give a finite number")


def _check_at_least(value, low: int, where: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    also = " or null" if optional else ""
    _check(value >= low, f"config key {where} is {value}; give an integer >= {low}{also}")


def _validate_run(cfg: PipelineConfig) -> None:
    """Checks of the keys outside ``stages``: name, seed, data, runtime, report."""
    from r2b.data import DATASETS

    _check(
        bool(_NAME_RE.match(cfg.name)),
        f"config key name is {cfg.name!r}; use letters, digits, '_', '-' or '.' (it names the "
        "run folder)",
    )
    _check(cfg.seed >= 0, f"config key seed is {cfg.seed}; give an integer >= 0")
    d = cfg.data
    _check_choice(d.name, DATASETS, "data.name")
    _check_at_least(d.image_size, 1, "data.image_size", optional=True)
    _check_at_least(d.num_workers, 0, "data.num_workers")
    _check_at_least(d.eval_batch_size, 1, "data.eval_batch_size")
    _check_at_least(d.train_limit, 1, "data.train_limit", optional=True)
    _check_at_least(d.test_limit, 1, "data.test_limit", optional=True)
    _check(
        0 <= d.val_fraction < 1,
        f"config key data.val_fraction is {d.val_fraction}; give a fraction in [0, 1), e.g. 0.1 "
        "(0 = no validation split)",
    )
    _check(
        d.test_every_epoch or d.val_fraction > 0,
        "config key data.test_every_epoch is false but there is no validation split to select "
        "the best epoch on; set data.val_fraction (e.g. 0.1) or data.test_every_epoch: true",
    )
    r = cfg.runtime
    _check_choice(r.accelerator, ACCELERATORS, "runtime.accelerator")
    _check_choice(r.precision, PRECISIONS, "runtime.precision")
    _check_at_least(r.num_threads, 1, "runtime.num_threads", optional=True)
    if isinstance(r.devices, int):
        _check_at_least(r.devices, 1, "runtime.devices")
    _check_at_least(cfg.report.attention_images, 0, "report.attention_images")


def _validate_optim(s: StageConfig, w: str) -> None:
    o = s.optim
    _check_choice(o.name, OPTIMIZERS, f"{w}.optim.name")
    _check(o.lr > 0, f"config key {w}.optim.lr must be positive")
    _check(o.weight_decay >= 0, f"config key {w}.optim.weight_decay must be 0 or more")
    _check(len(o.betas) == 2, f"config key {w}.optim.betas must hold two numbers")
    _check(
        all(0 <= b < 1 for b in o.betas),
        f"config key {w}.optim.betas is {o.betas}; each must be in [0, 1), e.g. [0.9, 0.999]",
    )
    _check(
        0 <= o.momentum < 1,
        f"config key {w}.optim.momentum is {o.momentum}; give a number in [0, 1), e.g. 0.9",
    )
    _check(
        o.clip_weights is None or o.clip_weights > 0,
        f"config key {w}.optim.clip_weights must be positive or null",
    )
    sc = s.schedule
    _check_choice(sc.kind, SCHEDULES, f"{w}.schedule.kind")
    _check(sc.warmup_epochs >= 0, f"config key {w}.schedule.warmup_epochs must be >= 0")
    _check(
        sc.gamma > 0,
        f"config key {w}.schedule.gamma is {sc.gamma}; give a positive factor, e.g. 0.1",
    )
    _check(
        sc.milestones == sorted(sc.milestones) and all(m >= 0 for m in sc.milestones),
        f"config key {w}.schedule.milestones must be epochs >= 0 in increasing order",
    )


def _validate_augment(s: StageConfig, w: str) -> None:
    from r2b.data import AUGMENTS

    a = s.augment
    known = sorted({op for ops in AUGMENTS.values() for op in ops})
    for op in a.ops or []:
        _check(
            op in known,
            f"config key {w}.augment.ops names {op!r}; choose from {', '.join(known)} "
            "(crop, flip, rotate for CIFAR-size images; crop, flip, jitter for ImageNet-size)",
        )
    _check(a.pad >= 0, f"config key {w}.augment.pad is {a.pad}; give pixels >= 0")
    _check(a.degrees >= 0, f"config key {w}.augment.degrees is {a.degrees}; give degrees >= 0")
    _check(0 <= a.jitter <= 1, f"config key {w}.augment.jitter is {a.jitter}; give 0 to 1")
    _check(a.mixup >= 0, f"config key {w}.augment.mixup must be 0 or more")


def validate(cfg: PipelineConfig) -> None:
    """Checks beyond types: names, references to earlier stages, ranges and choices.

    Every stage is checked here, before anything trains, so a mistake in the last stage does not
    cost the earlier stages' training time. What needs the data (augmentations that fit its
    kind, batch sizes against its size) is checked by the pipeline right after loading it.
    """
    _check(bool(cfg.stages), "the config has no stages; add at least one under `stages:`")
    _check_finite(cfg)
    _validate_run(cfg)
    seen: list[str] = []
    for i, s in enumerate(cfg.stages):
        _validate_stage(s, f"stages[{i}]", seen)
        seen.append(s.name)


def _validate_stage(s: StageConfig, w: str, seen: list[str]) -> None:
    """All checks of one stage ``w``; ``seen``: the names of the stages before it."""
    _validate_name(s, w, seen)
    _validate_model(s.model, w)
    _validate_references(s, w, seen)
    _check(s.epochs >= 0, f"config key {w}.epochs must be 0 or more")
    _check(s.batch_size >= 1, f"config key {w}.batch_size must be at least 1")
    _validate_loss(s, w)
    _validate_optim(s, w)
    _validate_augment(s, w)


def _validate_name(s: StageConfig, w: str, seen: list[str]) -> None:
    """A stage name is a folder name, unique in the pipeline."""
    _check(
        bool(_NAME_RE.match(s.name)),
        f"config key {w}.name is {s.name!r}; give every stage a name of letters, digits, "
        "'_', '-' or '.' (it names the stage's folder)",
    )
    _check(s.name not in seen, f"two stages are named {s.name!r}; stage names must be unique")


def _validate_model(m: ModelConfig, w: str) -> None:
    """A registered model; the binary knobs only for binary families."""
    from r2b.models import STAGES, list_models, list_stems

    _check_choice(m.name, list_models(), f"{w}.model.name")
    _check_choice(m.stem, list_stems(), f"{w}.model.stem")
    _check(m.width > 0, f"config key {w}.model.width must be positive")
    if m.is_binary_family:
        _check_choice(m.stage, STAGES, f"{w}.model.stage")
        _check_choice(
            m.activation_quantizer,
            ("ste_sign", "approx_sign"),
            f"{w}.model.activation_quantizer",
        )
    else:
        _check(
            m.stage is None,
            f"config key {w}.model.stage applies to binary models only; remove it for "
            f"{m.name} or set it to null",
        )


def _validate_references(s: StageConfig, w: str, seen: list[str]) -> None:
    """``teacher`` and ``init_from`` name earlier stages (``init_from`` may be a weights file)."""
    for ref, what in ((s.teacher, "teacher"), (s.init_from, "init_from")):
        if ref is None or (what == "init_from" and ref.endswith(".safetensors")):
            continue
        _check(
            ref in seen,
            f"config key {w}.{what} is {ref!r}, which is not an earlier stage; use one of "
            f"{seen or 'no stage (this is the first)'} or null",
        )


def _validate_loss(s: StageConfig, w: str) -> None:
    """Weights >= 0, not all 0; distillation and attention terms only with a teacher."""
    from r2b.losses import ATTENTION_FORMS

    _check_choice(s.loss.att_form, ATTENTION_FORMS, f"{w}.loss.att_form")
    _check(s.loss.temperature > 0, f"config key {w}.loss.temperature must be positive")
    for k in ("ce", "kd", "att"):
        _check(getattr(s.loss, k) >= 0, f"config key {w}.loss.{k} must be 0 or more")
    _check(
        s.loss.ce + s.loss.kd + s.loss.att > 0,
        f"config key {w}.loss: ce, kd and att are all 0, so nothing would be learned; give "
        "ce a positive weight",
    )
    _check(
        s.teacher is not None or (s.loss.kd == 0 and s.loss.att == 0),
        f"stage {s.name!r} has kd/att loss weights but no teacher; set {w}.teacher to an "
        "earlier stage or the weights to 0",
    )
