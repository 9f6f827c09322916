"""Model registry: ``create_model(name, **kwargs)``, ``list_models()`` and the model facts every
command asks for (stems, training steps, default input sizes, which families are binary).

A builder is a small function registered under a name. ``create_model`` records the name and the
keyword arguments on the model as ``model.arch``, so a checkpoint or an export can rebuild the same
architecture with ``create_model(**model.arch)``.

A stem is registered as a ``StemDesign`` (its conv, whether a max-pool follows, the input side it
is made for): the model module builds it from that, and the commands read its default input size
and which input sizes fit from here, so a new stem is one ``register_stem`` call.
``temporary_registrations`` undoes what is registered inside it (tests register toy families).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

#: Training steps of a binary family: real weights + tanh, binary activations, fully binary.
STAGES = ("fp", "ban", "bnn")
#: The map entering stages 2-4 must be a multiple of this (three stride-2 half blocks, each
#: needing an even map: see ``input_size_problem``).
_STAGE_MULTIPLE = 8


@dataclass(frozen=True)
class StemDesign:
    """The real stem of a network: ``kernel x kernel`` conv with ``stride`` (padding
    ``kernel // 2``) -> BN [-> activation] [-> 3x3/2 max-pool when ``max_pool``]; ``input_size``:
    the square input side it is made for (the default of every command)."""

    name: str
    kernel: int
    stride: int
    max_pool: bool
    input_size: int

    @property
    def downsampling(self) -> int:
        """How many input pixels one stem output pixel spans along a side."""
        return self.stride * (2 if self.max_pool else 1)

    def output_side(self, size: int) -> int:
        """The map side after the stem for a ``size``-pixel input (odd kernels: ``ceil``)."""
        side = (size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1
        return (side + 1) // 2 if self.max_pool else side


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_BINARY: dict[str, bool] = {}
_STEMS: dict[str, StemDesign] = {}


class _StemNames(Sequence):
    """The registered stem names, read when used (a stem registered later is in it)."""

    def __getitem__(self, index):
        return list(_STEMS)[index]

    def __len__(self) -> int:
        return len(_STEMS)

    def __repr__(self) -> str:
        return repr(tuple(_STEMS))


class _InputSizes(Mapping):
    """``{stem: default input side}``, read when used (a stem registered later is in it)."""

    def __getitem__(self, stem: str) -> int:
        if stem not in _STEMS:
            raise KeyError(stem)
        return _STEMS[stem].input_size

    def __iter__(self) -> Iterator[str]:
        return iter(list(_STEMS))

    def __len__(self) -> int:
        return len(_STEMS)

    def __repr__(self) -> str:
        return repr(dict(self))


#: Names of the registered stems, in registration order (a live view of the registry).
STEMS = _StemNames()
#: The input side each stem is made for (a live view of the registry).
DEFAULT_INPUT_SIZE = _InputSizes()


def register_stem(design: StemDesign) -> StemDesign:
    """Register a stem every family can build (``stem=design.name``)."""
    if design.name in _STEMS:
        raise ValueError(f"stem {design.name!r} is registered twice")
    _STEMS[design.name] = design
    return design


def list_stems() -> list[str]:
    """Names of the registered stems, in registration order (ImageNet's first: the default)."""
    return list(_STEMS)


def stem_design(name: str) -> StemDesign:
    """The registered stem ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return _STEMS[name]
    except KeyError:
        raise ValueError(f"unknown stem {name!r}; choose one of {', '.join(_STEMS)}") from None


#: The builders' stem, and that of an ``arch`` record that names no stem.
DEFAULT_STEM = "imagenet"
#: ImageNet (7x7/2 conv + 3x3/2 max-pool, 224-pixel crops) and CIFAR (3x3/1 conv, 32-pixel images).
register_stem(StemDesign("imagenet", kernel=7, stride=2, max_pool=True, input_size=224))
register_stem(StemDesign("cifar", kernel=3, stride=1, max_pool=False, input_size=32))


def register_model(
    name: str, binary: bool = True
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder`` under ``name``; ``binary``: the family has binary
    convolutions and a ``stage`` argument (``fp``, ``ban``, ``bnn``), and its models describe
    themselves through ``spec()`` (``r2b.models.spec``)."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        _BINARY[name] = bool(binary)
        return builder

    return decorate


def list_models(binary: bool | None = None) -> list[str]:
    """Names of the registered models, sorted; ``binary=True`` / ``False``: only the binary
    families / only the real ones."""
    return sorted(n for n in _BUILDERS if binary is None or _BINARY[n] == binary)


def is_binary_family(name: str) -> bool:
    """True when the registered model ``name`` is a binary family (see ``register_model``)."""
    if name not in _BINARY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _BINARY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; ``model.arch`` is ``{"name": name, **kwargs}``."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    model = builder(**kwargs)
    model.arch = {"name": name, **kwargs}
    return model


def default_input_size(arch: dict) -> int:
    """The input side of a model's ``arch`` record: its stem's (224 ImageNet, 32 CIFAR); a record
    without a stem has the builders' default, ImageNet's."""
    return stem_design(arch.get("stem", DEFAULT_STEM)).input_size


def model_from_arch(arch: object) -> nn.Module:
    """The model an ``arch`` record (``model.arch``: ``{"name": ..., **kwargs}``) describes.

    Raises ``ValueError`` naming what is wrong with a record that is not a dict with a registered
    ``name`` and keyword arguments its builder takes.
    """
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise ValueError("the architecture record is not a dict with a model name")
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    try:
        model = create_model(arch["name"], **kwargs)
    except TypeError as err:
        raise ValueError(f"{arch['name']} takes no such arguments ({err})") from None
    model.arch = dict(arch)
    return model


def input_size_problem(stem: str, size: int) -> str | None:
    """Why a ``size x size`` input cannot go through a ResNet-18 with ``stem``, or ``None``.

    Every stride-2 half block halves its map with a 3x3 conv (padding 1: ``ceil(m / 2)``) and its
    shortcut with a 2x2 average pool (``floor(m / 2)``); the two agree only on even maps, so the
    map entering stages 2-4 (``StemDesign.output_side``) must be a multiple of 8. A multiple of
    8 times the stem's downsampling always is (8 for the CIFAR stem, 32 for ImageNet's).
    """
    if size < 1:
        return f"an input side of {size} pixels is not an image"
    design = stem_design(stem)
    if design.output_side(size) % _STAGE_MULTIPLE == 0:
        return None
    step = _STAGE_MULTIPLE * design.downsampling
    fits = max(step, (size + step - 1) // step * step)
    return (f"the {stem} stem's network cannot take {size}x{size} inputs (its stride-2 blocks "
            f"need even maps); use a multiple of {step}, e.g. {fits}")  # fmt: skip


def unregister_model(name: str) -> None:
    """Remove the registered model ``name`` (a family a test registered for itself)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    del _BUILDERS[name], _BINARY[name]


def unregister_stem(name: str) -> None:
    """Remove the registered stem ``name`` (a stem a test registered for itself)."""
    stem_design(name)
    del _STEMS[name]


@contextmanager
def temporary_registrations() -> Iterator[None]:
    """Models and stems registered inside the ``with`` block are unregistered at its end, so a
    test can add a toy family or stem without leaving it behind for the rest of the session."""
    models, stems = set(_BUILDERS), set(_STEMS)
    try:
        yield
    finally:
        for name in set(_BUILDERS) - models:
            unregister_model(name)
        for name in set(_STEMS) - stems:
            unregister_stem(name)
