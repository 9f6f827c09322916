"""Checks of the model flags that ``r2b summary``, ``export`` and ``bench`` share, and the one
place that decides whether their model argument is a registered model name or a file.

Each bad value is one ``UserError`` naming the flag and what to do, raised before any model is
built (so nothing fails later inside a forward pass). What a model is (binary or not, its stems,
its input size) is asked of the registry (``r2b.models``), never guessed from its name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    from r2b.models import DEFAULT_STEM, list_models

    if name is not None and name not in list_models():
        return None
    return getattr(args, "stem", None) or DEFAULT_STEM


def model_name_or_file(arg: str, file_kind: str) -> str | Path:
    """``arg`` itself when it names a registered model, else the existing file it names
    (``file_kind`` says which kind the command reads, e.g. ``"a .r2b file"``); one
    ``UserError`` listing the names otherwise. A name wins over a file of the same name."""
    from r2b.models import list_models

    if arg in list_models():
        return arg
    if Path(arg).is_file():
        return Path(arg)
    raise UserError(f"{arg!r} is neither a model name ({', '.join(list_models())}) nor {file_kind}")


def require_binary_family(name: str, command: str) -> None:
    """A ``UserError`` when the registered model ``name`` is real-valued: ``command`` (``export``,
    ``bench``) packs binary convolutions, so it names the binary families instead."""
    from r2b.models import is_binary_family, list_models

    if not is_binary_family(name):
        raise UserError(
            f"{name} is real-valued; {command} a binary family "
            f"({', '.join(list_models(binary=True))})"
        )
