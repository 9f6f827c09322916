"""Checks of the model flags that ``r2b summary``, ``export`` and ``bench`` share.

Each bad value is one ``UserError`` naming the flag and what to do, raised before any model is
built (so nothing fails later inside a forward pass).
"""

from __future__ import annotations

import argparse

from r2b.errors import UserError


def check_model_flags(args: argparse.Namespace, size_stem: str | None = None) -> None:
    """``--width`` > 0, ``--num-classes`` >= 1 and, given the stem of the model the input goes
    through (``size_stem``; ``None`` when it is not known yet), an ``--input-size`` that network
    can take (``r2b.models.input_size_problem``)."""
    from r2b.models import input_size_problem

    width = getattr(args, "width", None)
    if width is not None and not width > 0:
        raise UserError(f"--width must be a positive multiplier, got {width}; e.g. --width 0.25")
    classes = getattr(args, "num_classes", None)
    if classes is not None and classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {classes}")
    size = getattr(args, "input_size", None)
    if size is not None and size_stem is not None:
        problem = input_size_problem(size_stem, size)
        if problem:
            raise UserError(f"--input-size: {problem}")


def named_model_stem(args: argparse.Namespace, name: str | None) -> str | None:
    """The stem of the model ``name`` builds from the flags (``--stem``, else ImageNet's), or
    ``None`` when ``name`` is a file (its stem is in the file)."""
    from r2b.models import list_models

    if name is not None and name not in list_models():
        return None
    return getattr(args, "stem", None) or "imagenet"
