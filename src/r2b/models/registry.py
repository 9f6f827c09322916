"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

A builder is a small function registered under a name. ``create_model`` records the name and the
keyword arguments on the model as ``model.arch``, so a checkpoint or an export can rebuild the same
architecture with ``create_model(**model.arch)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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
