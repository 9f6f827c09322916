"""The recipes (r2b.train.recipes and configs/): they inherit (``base:``) instead of copying and
resolve as before, the Bi-Real Net and ReActNet recipes encode their papers' two-step schedules,
and the CIFAR-10 recipe runs end to end on the real CIFAR-10 JPEG copy in ../shared/data.

``tests/data/recipes_resolved.json`` holds ``to_dict(load_config(path))`` of every recipe as it
was before recipes could inherit (each file was then written out in full); a recipe that is
restructured must keep resolving to its entry there, and a recipe must not restate what its bases
already give it.
"""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from r2b.cli import main
from r2b.models import create_model
from r2b.train.config import load_config, merge_recipes, read_recipe, to_dict
from r2b.train.recipes import quick_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BEFORE = json.loads((Path(__file__).parent / "data" / "recipes_resolved.json").read_text())
RECIPES = BEFORE["recipes"]
needs_configs = pytest.mark.skipif(not CONFIGS.is_dir(), reason="no configs/ next to the tests")
SHARED = REPO.parent / "shared" / "data"
ARCHIVES = sorted(SHARED.glob("cifar10-*.tar.gz"))
needs_shared_cifar10 = pytest.mark.skipif(
    not ARCHIVES, reason=f"no CIFAR-10 archives in {SHARED} (only CI and dev machines have them)"
)


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


@needs_configs
@pytest.mark.parametrize("dataset", ["imagenet", "cifar100"])
def test_bireal_pretrains_real_valued_then_binarises(dataset):
    cfg = load_config(CONFIGS / dataset / "bireal.yaml")
    fp, bnn = cfg.stages
    assert (fp.model.name, fp.model.stage) == ("bireal_resnet18", "fp")
    assert (bnn.model.name, bnn.model.stage, bnn.init_from) == ("bireal_resnet18", "bnn", "fp")
    assert all(s.teacher is None and s.loss.kd == 0 and s.loss.ce == 1 for s in cfg.stages)
    assert bnn.optim.weight_decay == 0 and bnn.optim.clip_weights == 1.0


@needs_configs
@pytest.mark.parametrize("dataset", ["imagenet", "cifar100"])
def test_reactnet_two_steps_learn_only_from_the_teacher(dataset):
    cfg = load_config(CONFIGS / dataset / "reactnet.yaml")
    teacher, ban, bnn = cfg.stages
    assert teacher.model.name == "resnet18"
    assert [s.model.stage for s in (ban, bnn)] == ["ban", "bnn"]
    assert bnn.init_from == "ban"
    for s in (ban, bnn):
        assert s.model.name == "reactnet_resnet18" and s.teacher == "teacher"
        assert (s.loss.ce, s.loss.kd, s.loss.att) == (0.0, 1.0, 0.0)
        assert s.optim.lr == 5e-4  # paper Sec. 5
    assert (ban.optim.weight_decay, bnn.optim.weight_decay) == (1e-5, 0.0)
    if dataset == "imagenet":
        assert (ban.epochs, bnn.epochs, ban.batch_size) == (256, 256, 256)


@needs_configs
def test_the_families_share_the_architecture_knobs():
    """The ImageNet recipes build the models the registry builds by default."""
    for name in ("bireal", "reactnet"):
        stage = load_config(CONFIGS / "imagenet" / f"{name}.yaml").stages[-1]
        model = create_model(stage.model.name, stage="bnn")
        assert len(model.spec().halves) == 16
        assert stage.model.stem == "imagenet" and stage.model.width == 1.0


@needs_shared_cifar10
def test_cifar10_r2b_recipe_on_shared_data(tmp_path):
    for archive in ARCHIVES:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path, filter="data")
    out = tmp_path / "run"
    sets = [
        f"data.root={tmp_path / 'cifar10'}",
        "data.train_limit=256",
        "data.test_limit=200",
        "stages.*.epochs=1",
        "stages.*.batch_size=64",
        "stages.*.model.width=0.125",
        "runtime.progress=false",
    ]
    cmd = [sys.executable, "-m", "r2b.cli", "train", "--config", "configs/cifar10/r2b.yaml"]
    cmd += [a for s in sets for a in ("--set", s)] + ["--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["teacher", "fp", "ban", "bnn"]
    assert results["data"]["train_images"] == 256 and results["data"]["test_images"] == 200
    assert all(0 <= s["top1"] <= 100 for s in results["stages"])
    assert (out / "report.md").is_file()
