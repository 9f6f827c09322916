"""The recipes under configs/ inherit (``base:``) instead of copying, and resolve as before.

``tests/data/recipes_resolved.json`` holds ``to_dict(load_config(path))`` of every recipe as it
was before recipes could inherit (each file was then written out in full); a recipe that is
restructured must keep resolving to its entry there, and a recipe must not restate what its bases
already give it.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml

from r2b.cli import main
from r2b.train.config import load_config, merge_recipes, read_recipe, to_dict
from r2b.train.recipes import quick_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BEFORE = json.loads((Path(__file__).parent / "data" / "recipes_resolved.json").read_text())
RECIPES = BEFORE["recipes"]
needs_configs = pytest.mark.skipif(not CONFIGS.is_dir(), reason="no configs/ next to the tests")


@needs_configs
@pytest.mark.parametrize("path", sorted(RECIPES))
def test_every_recipe_resolves_as_before_inheritance(path):
    assert to_dict(load_config(REPO / path)) == RECIPES[path]


def test_the_builtin_quick_recipe_is_unchanged():
    assert to_dict(quick_config()) == RECIPES["configs/quick.yaml"]


def _restated(own, base, where: str) -> list[str]:
    """Keys of ``own`` whose value ``base`` already has (stages matched by name, as merged)."""
    if isinstance(own, dict) and isinstance(base, dict):
        pairs = [(v, base[k], f"{where}.{k}") for k, v in own.items() if k in base]
    elif where.endswith(".stages") and isinstance(own, list) and isinstance(base, list):
        named = {s.get("name"): s for s in base if isinstance(s, dict)}
        pairs = [({k: v for k, v in s.items() if k != "name"}, named[s["name"]],
                  f"{where}.{s['name']}") for s in own if s.get("name") in named]  # fmt: skip
    else:
        return [where] if own == base else []
    return [w for o, b, at in pairs for w in _restated(o, b, at)]


@needs_configs
@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix()
                                        for p in CONFIGS.rglob("*.yaml")))  # fmt: skip
def test_a_recipe_states_only_what_differs_from_its_bases(path):
    own = yaml.safe_load((REPO / path).read_text())
    bases = own.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    inherited: dict = {}
    for base in bases:
        inherited = merge_recipes(inherited, read_recipe((REPO / path).parent / base))
    assert _restated(own, inherited, path) == []


@needs_configs
@pytest.mark.parametrize("rel", sorted(p.relative_to(CONFIGS / "cifar10").as_posix()
                                       for p in CONFIGS.glob("cifar10/**/[!_]*.yaml")))  # fmt: skip
def test_cifar10_recipes_are_the_cifar100_ones_with_cifar10_data(rel):
    raw = yaml.safe_load((CONFIGS / "cifar10" / rel).read_text())
    up = "../" * rel.count("/")
    assert raw == {"base": [f"../{up}cifar100/{rel}", f"{up}_data.yaml"]}


@needs_configs
@pytest.mark.parametrize("name", ["sb", "r2b"])
def test_the_ablation_rows_of_the_main_recipes_are_those_recipes(name):
    raw = yaml.safe_load((CONFIGS / "cifar100" / "ablation" / f"{name}.yaml").read_text())
    assert raw == {"base": f"../{name}.yaml"}


@pytest.fixture
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_run_saves_the_resolved_config_and_resumes_without_its_bases(
    tmp_path, capsys, keep_torch_threads
):
    base = tmp_path / "bases" / "tiny.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump({
        "name": "tiny", "data": {"name": "default", "train_limit": 40, "test_limit": 20},
        "runtime": {"accelerator": "cpu", "progress": False, "num_threads": 1},
        "report": {"attention_images": 0},
        "stages": [{"name": "a", "model": {"name": "resnet18", "width": 0.0625},
                    "epochs": 1, "batch_size": 20}],
    }))  # fmt: skip
    child = tmp_path / "child.yaml"
    child.write_text("base: bases/tiny.yaml\nseed: 5\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(child), "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert "base" not in saved and saved["seed"] == 5 and saved["data"]["train_limit"] == 40
    base.unlink()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert "finished earlier, skipped" in capsys.readouterr().out
