"""Pipeline configs: YAML -> typed dataclasses, unknown keys and wrong types, --set overrides,
base: inheritance."""

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
from r2b.train.recipes import quick_config, recipe_path

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


def test_the_quick_recipe_is_one_file_in_the_package():
    """The package file is the only copy: configs/quick.yaml names it as its base."""
    assert recipe_path().is_file() and recipe_path().parent.name == "recipes"
    path = CONFIGS / "quick.yaml"
    if not path.is_file():
        pytest.skip("no configs/ folder next to the tests")
    assert set(yaml.safe_load(path.read_text())) == {"base"}
    assert load_config(path) == quick_config()


def test_every_recipe_in_configs_loads():
    """Every file is a recipe, except the shared bases named ``_*.yaml`` (no stages of their
    own: loading one alone says so)."""
    files = sorted(CONFIGS.rglob("*.yaml"))
    if not files:
        pytest.skip("no configs/ folder next to the tests")
    for path in files:
        if path.name.startswith("_"):
            assert "stages" not in yaml.safe_load(path.read_text()), path
            with pytest.raises(UserError, match="no stages"):
                load_config(path)
        else:
            assert load_config(path).stages, path


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


# --------------------------------------------------------------------------- base: inheritance


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_base_merges_mappings_by_key_and_replaces_scalars_and_lists(tmp_path):
    write(tmp_path / "shared" / "base.yaml", two_stages() | {
        "data": {"name": "default", "train_limit": 40},
        "stage_defaults": {"model": {"width": 0.25}, "augment": {"ops": ["crop", "flip"]}},
    })  # fmt: skip
    child = write(tmp_path / "child.yaml", {
        "base": "shared/base.yaml",  # relative to the child's folder, not the current one
        "name": "child",
        "data": {"test_limit": 20},
        "stage_defaults": {"augment": {"ops": ["flip"]}, "batch_size": 16},
    })  # fmt: skip
    cfg = load_config(child)
    assert cfg.name == "child" and (cfg.data.name, cfg.data.train_limit) == ("default", 40)
    assert cfg.data.test_limit == 20
    assert [s.augment.ops for s in cfg.stages] == [["flip"], ["flip"]]  # a list replaces
    assert [s.model.width for s in cfg.stages] == [0.25, 0.25]  # the base's stage_defaults stay
    assert [s.batch_size for s in cfg.stages] == [16, 16]  # the child's reach the base's stages


def test_child_stages_merge_by_name_and_new_ones_append(tmp_path):
    write(tmp_path / "base.yaml", two_stages())
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "stages": [
        {"name": "c", "model": {"name": "sb_resnet18", "stage": "bnn"}, "init_from": "b"},
        {"name": "a", "epochs": 7, "model": {"stage": "fp"}},
    ]})  # fmt: skip
    cfg = load_config(child)
    assert [s.name for s in cfg.stages] == ["a", "b", "c"]  # a keeps its place, c is appended
    a = cfg.stage("a")
    assert (a.epochs, a.model.name, a.model.stage) == (7, "sb_resnet18", "fp")
    assert cfg.stage("b").loss.kd == 1 and cfg.stage("c").init_from == "b"


def test_a_list_of_bases_merges_in_order_under_the_file(tmp_path):
    stage = {"model": {"name": "sb_resnet18", "stage": "ban"}}
    write(tmp_path / "one.yaml", {"name": "one", "seed": 1, "stages": [{"name": "x", **stage}]})
    write(tmp_path / "two.yaml", {"name": "two", "stages": [{"name": "y", **stage}]})
    child = write(tmp_path / "sub" / "c.yaml", {"base": ["../one.yaml", "../two.yaml"]})
    cfg = load_config(child)
    assert (cfg.name, cfg.seed) == ("two", 1)
    assert [s.name for s in cfg.stages] == ["x", "y"]


def test_a_base_shared_by_two_bases_is_no_cycle(tmp_path):
    write(tmp_path / "root.yaml", two_stages())
    write(tmp_path / "left.yaml", {"base": "root.yaml", "seed": 1})
    write(tmp_path / "right.yaml", {"base": "root.yaml", "name": "right"})
    cfg = load_config(write(tmp_path / "top.yaml", {"base": ["left.yaml", "right.yaml"]}))
    assert (cfg.name, cfg.seed, len(cfg.stages)) == ("right", 1, 2)


def test_set_overrides_apply_after_inheritance(tmp_path):
    write(tmp_path / "base.yaml", two_stages())
    child = write(
        tmp_path / "child.yaml", {"base": "base.yaml", "stages": [{"name": "b", "epochs": 3}]}
    )
    cfg = load_config(child, ["stages.b.epochs=5", "stages.*.model.width=0.5"])
    assert cfg.stage("b").epochs == 5 and [s.model.width for s in cfg.stages] == [0.5, 0.5]


def test_the_resolved_config_stands_alone(tmp_path):
    """What a run folder saves (``dump_yaml``) holds no base: it loads with the bases gone."""
    base = write(tmp_path / "base.yaml", two_stages())
    cfg = load_config(write(tmp_path / "child.yaml", {"base": "base.yaml", "seed": 4}))
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(cfg))
    base.unlink()
    assert "base" not in yaml.safe_load(saved.read_text())
    assert load_config(saved) == cfg


@pytest.mark.parametrize(
    "files, words",
    [
        ({"c.yaml": {"base": "missing.yaml"}},
         ["base file", "missing.yaml", "does not exist", "named by", "c.yaml", "base: entry"]),
        ({"c.yaml": {"base": "b.yaml"}, "b.yaml": [1, 2]},
         ["base file", "b.yaml", "named by", "must hold a mapping"]),
        ({"c.yaml": {"base": "b.yaml"}, "b.yaml": {"base": "c.yaml"}},
         ["config file", "b.yaml", "cycle", "c.yaml -> ", "b.yaml -> ", "remove"]),
        ({"c.yaml": {"base": "./c.yaml"}}, ["cycle", "c.yaml"]),
        ({"c.yaml": {"base": {"file": "b.yaml"}}}, ["config file", "c.yaml", "a path or a list"]),
        ({"c.yaml": {"base": ["b.yaml", 3]}}, ["c.yaml", "a list of paths"]),
        ({"c.yaml": {"base": "b.yaml"}, "b.yaml": "stages: [\n"}, ["b.yaml", "not valid YAML"]),
    ],
)  # fmt: skip
def test_bad_bases_raise_one_line_naming_the_file(tmp_path, files, words):
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as err:
        load_config(tmp_path / "c.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_a_file_that_is_no_mapping_points_to_the_quick_recipe(tmp_path):
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(UserError, match="must hold a mapping") as err:
        load_config(scalar)
    assert str(recipe_path()) in str(err.value)
