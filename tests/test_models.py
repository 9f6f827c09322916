"""Every registered model and stage builds, runs forward and backward, and exposes 8 features."""

import pytest
import torch

from r2b.layers import BinaryConv2d
from r2b.models import create_model, list_models

BINARY = ["sb_resnet18", "r2b_resnet18"]
CASES = [("resnet18", None)] + [(n, s) for n in BINARY for s in ("fp", "ban", "bnn")]


def test_registry_lists_the_three_families():
    assert {"resnet18", "sb_resnet18", "r2b_resnet18"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg")


@pytest.mark.parametrize("stem, size", [("cifar", 32), ("imagenet", 64)])
@pytest.mark.parametrize("name, stage", CASES)
def test_forward_backward_features(name, stage, stem, size):
    torch.manual_seed(0)
    kwargs = {"num_classes": 7, "stem": stem, "width": 0.125}
    if stage:
        kwargs["stage"] = stage
    model = create_model(name, **kwargs)
    assert model.arch == {"name": name, **kwargs}
    x = torch.randn(2, 3, size, size)
    logits, feats = model.forward_with_features(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()) > 10
    side = size if stem == "cifar" else size // 4
    widths = [8, 8, 16, 16, 32, 32, 64, 64]
    strides = [1, 1, 2, 2, 4, 4, 8, 8]
    assert [tuple(f.shape) for f in feats] == [
        (2, c, side // s, side // s) for c, s in zip(widths, strides)
    ]
    assert torch.equal(model(x), logits)


def test_teacher_and_student_features_align():
    x = torch.randn(1, 3, 32, 32)
    t = create_model("resnet18", num_classes=10, stem="cifar", width=0.25)
    s = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.25, stage="fp")
    ft, fs = t.forward_with_features(x)[1], s.forward_with_features(x)[1]
    assert [f.shape for f in ft] == [f.shape for f in fs]


@pytest.mark.parametrize(
    "stage, q_in, q_w",
    [("fp", "tanh", None), ("ban", "ste_sign", None), ("bnn", "ste_sign", "ste_sign")],
)
def test_stage_variants_set_quantizers(stage, q_in, q_w):
    model = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.125, stage=stage)
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == 16
    assert {(c.input_quantizer, c.weight_quantizer) for c in convs} == {(q_in, q_w)}
    assert all(c.weight_scale == (stage == "bnn") for c in convs)


def test_stages_share_parameter_names():
    names = {
        stage: list(
            create_model("r2b_resnet18", stem="cifar", width=0.125, stage=stage).state_dict()
        )
        for stage in ("fp", "ban", "bnn")
    }
    assert names["fp"] == names["ban"] == names["bnn"]


def test_teacher_loads_torchvision_weights():
    torchvision = pytest.importorskip("torchvision")
    ref = torchvision.models.resnet18(weights=None)
    ours = create_model("resnet18")
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="stem"):
        create_model("sb_resnet18", stem="mnist")
    with pytest.raises(ValueError, match="stage"):
        create_model("sb_resnet18", stage="int8")


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("stage", ["fp", "ban", "bnn"])
def test_bf16_autocast_step_matches_float32(name, stage):
    """GPUs train under bf16 autocast: every custom autograd function must accept mixed dtypes
    and give gradients close to float32's (checked with CPU autocast)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, stem="cifar", width=0.125, stage=stage)
    x = torch.randn(8, 3, 16, 16)

    def grads(autocast: bool) -> torch.Tensor:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        out.float().logsumexp(1).sum().backward()
        assert all(p.grad.dtype == p.dtype for p in model.parameters() if p.grad is not None)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    g32, g16 = grads(False), grads(True)
    assert torch.isfinite(g16).all()
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.9
