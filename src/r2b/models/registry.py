"""Model registry: ``create_model(name, **kwargs)``, ``list_models()`` and the model facts every
command asks for (stems, training steps, default input sizes, which families are binary).

A builder is a small function registered under a name. ``create_model`` records the name and the
keyword arguments on the model as ``model.arch``, so a checkpoint or an export can rebuild the same
architecture with ``create_model(**model.arch)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

#: Stems every family builds: ImageNet (7x7/2 conv + 3x3/2 max-pool) and CIFAR (3x3/1 conv).
STEMS = ("imagenet", "cifar")
#: Training steps of a binary family: real weights + tanh, binary activations, fully binary.
STAGES = ("fp", "ban", "bnn")
#: The input side each stem is made for (ImageNet crops, CIFAR images).
DEFAULT_INPUT_SIZE = {"imagenet": 224, "cifar": 32}

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_BINARY: dict[str, bool] = {}


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
    """The input side of a model's ``arch`` record: 224 for the ImageNet stem, 32 for CIFAR's."""
    return DEFAULT_INPUT_SIZE[arch.get("stem", "imagenet")]


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
    map entering stages 2-4 must be a multiple of 8: ``size`` for the CIFAR stem,
    ``ceil(ceil(size / 2) / 2)`` after the ImageNet stem's stride-2 conv and max-pool.
    """
    if size < 1:
        return f"an input side of {size} pixels is not an image"
    mapped = size if stem == "cifar" else (((size + 1) // 2) + 1) // 2
    if mapped % 8 == 0:
        return None
    step = 8 if stem == "cifar" else 32
    fits = max(step, (size + step - 1) // step * step)
    return (f"the {stem} stem's network cannot take {size}x{size} inputs (its stride-2 blocks "
            f"need even maps); use a multiple of {step}, e.g. {fits}")  # fmt: skip
