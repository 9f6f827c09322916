"""The ResNet-18 family (r2b.models.resnet): every registered model and stage builds, runs forward
and backward, and exposes 8 features; the half blocks compute their papers' formulas."""

import pytest
import torch
import torch.nn.functional as F

from r2b.layers import BinaryConv2d
from r2b.models import create_model, list_models

BINARY = list_models(binary=True)
CASES = [("resnet18", None)] + [(n, s) for n in BINARY for s in ("fp", "ban", "bnn")]


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
    # the logits are the classifier on the last feature map (computed here, not by the model)
    head = model.fc(torch.flatten(F.adaptive_avg_pool2d(feats[-1], 1), 1))
    assert torch.equal(head, logits)
    if stage is not None:  # the description the engine reads computes the same network
        model.eval()
        with torch.no_grad():
            assert torch.equal(model.spec().forward(x), model(x))


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
    if stage != "fp" and any(h.pre is None for h in model.spec().halves):
        # Bi-Real signs the unnormalised residual stream: at initialisation its gradients change
        # as much under a 1e-3 relative input perturbation in float32 (cosine ~0.15) as under
        # bf16, so only dtypes and finiteness are checked there.
        return
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.9


def _sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def _binary_conv(conv, y):
    """``conv(pad(sign(y), +1), sign(W)) * mean|W|`` written out with ``F.conv2d``."""
    w = _sign(conv.weight) * conv.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    return F.conv2d(F.pad(_sign(y), [1] * 4, value=1.0), w, stride=conv.stride)


def _bn(bn, x):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0, bn.eps)


def _randomised_half(name):
    """The downsampling half block of ``name`` (bnn, eval) with non-trivial parameters."""
    torch.manual_seed(3)
    model = create_model(name, stem="cifar", width=0.125, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2)
    return model.blocks[2].half1


def _rprelu(act, v):
    v = F.prelu(v + act.shift_in.view(1, -1, 1, 1), act.weight)
    return v + act.shift_out.view(1, -1, 1, 1)


@pytest.mark.parametrize("name, formula", [
    ("sb_resnet18", lambda h, x: F.prelu(_binary_conv(h.conv, _bn(h.bn, x))
                                         * h.scale.scale.view(1, -1, 1, 1), h.act.weight)),
    ("r2b_resnet18", lambda h, x: F.prelu(_binary_conv(h.conv, _bn(h.bn, x)) * torch.sigmoid(
        F.linear(F.relu(F.linear(_bn(h.bn, x).mean((2, 3)), h.gate.fc1.weight)),
                 h.gate.fc2.weight))[:, :, None, None], h.act.weight)),
    ("bireal_resnet18", lambda h, x: _bn(h.post_bn, _binary_conv(h.conv, x))),
    ("reactnet_resnet18", None),
])  # fmt: skip
def test_half_blocks_compute_their_papers_formulas(name, formula):
    """Each family's (downsampling) half block against its paper's formula written out here:
    strong baseline ``PReLU(s * conv(sign BN x)) + sc(x)``; Real-to-Bin the gate instead of ``s``;
    Bi-Real ``BN(conv(sign x)) + sc(x)``; ReActNet ``RPReLU(BN(conv(sign(x + b))) + sc(x))``."""
    half = _randomised_half(name)
    x = torch.randn(2, half.conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        sc = half.shortcut
        shortcut = _bn(sc.bn, F.conv2d(F.avg_pool2d(x, 2), sc.conv.weight))
        if formula is None:  # ReActNet: the activation reads the sum
            shifted = x + half.shift.shift.view(1, -1, 1, 1)
            expected = _rprelu(half.act, _bn(half.post_bn, _binary_conv(half.conv, shifted))
                               + shortcut)  # fmt: skip
        else:
            expected = formula(half, x) + shortcut
        assert torch.allclose(half(x), expected, atol=1e-5, rtol=1e-5)
