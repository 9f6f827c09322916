"""Pipeline configs: YAML -> typed dataclasses, unknown keys and wrong types, --set overrides."""

from pathlib import Path

import pytest
import yaml

from r2b.errors import UserError
from r2b.train.config import (
    PipelineConfig,
    apply_overrides,
    build_config,
    dump_yaml,
    expand_stage_defaults,
    from_dict,
    load_config,
)
from r2b.train.recipes import QUICK_YAML, quick_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def two_stages() -> dict:
    return {
        "name": "t",
        "stage_defaults": {"model": {"width": 0.25}, "batch_size": 32},
        "stages": [
            {"name": "a", "model": {"name": "sb_resnet18", "stage": "ban"}, "epochs": 2},
            {"name": "b", "model": {"name": "sb_resnet18", "stage": "bnn"}, "init_from": "a",
             "teacher": "a", "loss": {"kd": 1}},
        ],
    }  # fmt: skip


def test_quick_recipe_is_the_four_real_to_binary_steps():
    cfg = quick_config()
    assert [s.name for s in cfg.stages] == ["teacher", "fp", "ban", "bnn"]
    assert [s.model.stage for s in cfg.stages] == [None, "fp", "ban", "bnn"]
    assert [s.teacher for s in cfg.stages] == [None, "teacher", "fp", "ban"]
    assert [s.init_from for s in cfg.stages] == [None, None, "fp", "ban"]
    bnn = cfg.stage("bnn")
    assert bnn.loss.att == 0 and bnn.loss.kd == 0.8 and bnn.optim.weight_decay == 0
    assert bnn.optim.clip_weights == 1.0
    assert cfg.stage("fp").loss.kd == 3.0 and cfg.stage("fp").loss.att > 0


def test_configs_quick_yaml_is_the_builtin_recipe():
    path = CONFIGS / "quick.yaml"
    if not path.is_file():
        pytest.skip("no configs/ folder next to the tests")
    assert path.read_text() == QUICK_YAML


def test_every_recipe_in_configs_loads():
    files = sorted(CONFIGS.rglob("*.yaml"))
    if not files:
        pytest.skip("no configs/ folder next to the tests")
    for path in files:
        cfg = load_config(path)
        assert cfg.stages, path


def test_stage_defaults_merge_under_each_stage():
    cfg = build_config(two_stages())
    assert [s.model.width for s in cfg.stages] == [0.25, 0.25]
    assert [s.batch_size for s in cfg.stages] == [32, 32]
    assert cfg.stages[1].model.stage == "bnn"  # the stage's own keys win


def test_a_stage_override_changes_only_that_stage_of_shared_defaults():
    """Stages that inherit one ``stage_defaults`` mapping (augment, optim, ...) get copies:
    ``--set stages.b.augment.ops=...`` must leave stage a's ops alone."""
    data = two_stages()
    data["stage_defaults"]["augment"] = {"ops": ["crop", "flip"]}
    data["stage_defaults"]["optim"] = {"betas": [0.9, 0.99]}
    cfg = build_config(data, ["stages.b.augment.ops=[flip]", "stages.b.optim.betas.0=0.5"])
    assert [s.augment.ops for s in cfg.stages] == [["crop", "flip"], ["flip"]]
    assert [s.optim.betas for s in cfg.stages] == [[0.9, 0.99], [0.5, 0.99]]
    assert data["stage_defaults"]["augment"]["ops"] == ["crop", "flip"]  # input untouched


def test_dump_and_reload_give_the_same_config():
    cfg = quick_config(["stages.*.epochs=2"])
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_overrides_by_name_index_and_star():
    data = expand_stage_defaults(two_stages())
    out = apply_overrides(
        data, ["stages.b.epochs=5", "stages.0.optim.lr=3e-4", "stages.*.batch_size=8",
               "data.root=/x", "stages.a.augment.ops=[flip]"],
    )  # fmt: skip
    cfg = from_dict(out)
    assert cfg.stages[1].epochs == 5 and cfg.stages[0].optim.lr == 3e-4
    assert [s.batch_size for s in cfg.stages] == [8, 8]
    assert cfg.data.root == "/x" and cfg.stages[0].augment.ops == ["flip"]
    assert data["stages"][1].get("epochs") is None  # the input is not modified


@pytest.mark.parametrize(
    "override, words",
    [
        ("stages.a.epochz=3", ["unknown config key", "stages[0].epochz"]),
        ("stages.a.epochs=three", ["stages[0].epochs", "integer", "'three'"]),
        ("stages.a.epochs=1.5", ["stages[0].epochs", "integer"]),
        ("stages.a.optim.lr=fast", ["stages[0].optim.lr", "number"]),
        ("stages.a.model.weight_scale=3", ["weight_scale", "true/false"]),
        ("seed=[1]", ["seed", "integer"]),
        ("stages.zz.epochs=1", ["no element named 'zz'"]),
        ("stages.7.epochs=1", ["out of range"]),
        ("nonsense", ["KEY=VALUE"]),
        ("stages.b.teacher=b", ["not an earlier stage"]),
        ("stages.a.model.stage=half", ["stages[0].model.stage", "fp, ban, bnn"]),
        ("stages.a.loss.att_form=l1", ["att_form", "paper, larq"]),
        ("stages.b.name=a", ["unique"]),
        ("stages.a.loss.kd=1", ["no teacher"]),
    ],
)
def test_bad_values_raise_one_clear_user_error(override, words):
    with pytest.raises(UserError) as err:
        build_config(two_stages(), [override])
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_an_int_is_accepted_for_a_float_and_null_for_optional():
    cfg = build_config(two_stages(), ["stages.a.optim.lr=1", "stages.b.init_from=null"])
    assert cfg.stages[0].optim.lr == 1.0 and isinstance(cfg.stages[0].optim.lr, float)
    assert cfg.stages[1].init_from is None


def test_real_model_takes_no_binary_stage():
    data = {"stages": [{"name": "t", "model": {"name": "resnet18", "stage": "bnn"}}]}
    with pytest.raises(UserError, match="binary models only"):
        from_dict(data)


def test_load_config_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(scalar)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\n")
    with pytest.raises(UserError, match="no stages"):
        load_config(empty)


def test_defaults_are_typed_dataclasses():
    cfg = PipelineConfig()
    assert cfg.data.name == "default" and cfg.runtime.precision == "auto"


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_ablation_rows_sb_and_r2b_are_the_main_recipes(dataset):
    folder = CONFIGS / dataset
    if not folder.is_dir():
        pytest.skip("no configs/ folder next to the tests")
    rows = sorted(p.stem for p in (folder / "ablation").glob("*.yaml"))
    assert rows == ["r2b", "sb", "sb_att", "sb_att_kd", "sb_gate", "sb_progressive"]
    for name in ("sb", "r2b"):
        row = load_config(folder / "ablation" / f"{name}.yaml")
        assert row == load_config(folder / f"{name}.yaml")


def test_paper_recipe_numbers():
    r2b = load_config(CONFIGS / "cifar100" / "r2b.yaml") if CONFIGS.is_dir() else None
    if r2b is None:
        pytest.skip("no configs/ folder next to the tests")
    assert [s.epochs for s in r2b.stages] == [350] * 4
    assert all(s.schedule.milestones == [150, 250, 320] for s in r2b.stages)
    assert [s.optim.lr for s in r2b.stages] == [1e-3, 1e-3, 1e-3, 2e-4]
    assert [s.optim.weight_decay for s in r2b.stages] == [1e-5, 1e-5, 1e-5, 0.0]
    assert [s.schedule.warmup_epochs for s in r2b.stages] == [5, 5, 5, 0]
    assert [(s.loss.ce, s.loss.kd) for s in r2b.stages] == [(1, 0), (1, 3), (1, 3), (1, 0.8)]
    imagenet = load_config(CONFIGS / "imagenet" / "r2b.yaml")
    assert imagenet.stages[-1].augment.ops == ["crop", "flip"]  # no colour jitter in bnn
    assert imagenet.stages[0].augment.ops == ["crop", "flip", "jitter"]
    assert all(s.model.stem == "imagenet" and s.batch_size == 256 for s in imagenet.stages)
