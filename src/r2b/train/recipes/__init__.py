"""The built-in recipes, shipped as package data: ``quick.yaml`` is what ``r2b train`` runs with
no arguments.

The recipe is a file inside the package (``r2b/train/recipes/quick.yaml``, listed in
pyproject.toml's package-data), not text in this module and not the repository's ``configs/``:
so the default run works from any directory after a plain (non-editable) install, and the file
is its only copy (``configs/quick.yaml`` names it as its ``base:``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from r2b.train.config import PipelineConfig, load_config

QUICK = "quick.yaml"


def recipe_path(name: str = QUICK) -> Path:
    """Where the built-in recipe ``name`` lies on disk (in the installed package)."""
    return Path(str(resources.files(__name__).joinpath(name)))


def quick_config(overrides: list[str] | None = None) -> PipelineConfig:
    """The built-in quick recipe, with ``--set`` overrides applied."""
    return load_config(recipe_path(QUICK), overrides)
