"""The Bi-Real Net and ReActNet recipes encode their papers' two-step schedules."""

from pathlib import Path

import pytest

from r2b.models import create_model
from r2b.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
if not CONFIGS.is_dir():
    pytest.skip("no configs/ folder next to the tests", allow_module_level=True)


@pytest.mark.parametrize("dataset", ["imagenet", "cifar100"])
def test_bireal_pretrains_real_valued_then_binarises(dataset):
    cfg = load_config(CONFIGS / dataset / "bireal.yaml")
    fp, bnn = cfg.stages
    assert (fp.model.name, fp.model.stage) == ("bireal_resnet18", "fp")
    assert (bnn.model.name, bnn.model.stage, bnn.init_from) == ("bireal_resnet18", "bnn", "fp")
    assert all(s.teacher is None and s.loss.kd == 0 and s.loss.ce == 1 for s in cfg.stages)
    assert bnn.optim.weight_decay == 0 and bnn.optim.clip_weights == 1.0


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


def test_the_families_share_the_architecture_knobs():
    """The ImageNet recipes build the models the registry builds by default."""
    for name in ("bireal", "reactnet"):
        stage = load_config(CONFIGS / "imagenet" / f"{name}.yaml").stages[-1]
        model = create_model(stage.model.name, stage="bnn")
        assert len(model.spec().halves) == 16
        assert stage.model.stem == "imagenet" and stage.model.width == 1.0
