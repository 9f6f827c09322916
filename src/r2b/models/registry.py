"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

A builder is a small function registered under a name. ``create_model`` records the name and the
keyword arguments on the model as ``model.arch``, so a checkpoint or an export can rebuild the same
architecture with ``create_model(**model.arch)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder`` under ``name``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_BUILDERS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; ``model.arch`` is ``{"name": name, **kwargs}``."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    model = builder(**kwargs)
    model.arch = {"name": name, **kwargs}
    return model
