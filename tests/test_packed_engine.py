"""The whole-network packed engine (``to_packed``, r2b.packed.engine) equals the float training
graph: every binary conv and the logits of every family with every stem, fused or on fallbacks."""

import pytest
import torch
from networks import binary_networks, check_binary_convs, check_network_logits, randomise
from torch import nn

from r2b.errors import UserError
from r2b.models import create_model, list_models
from r2b.models.resnet import BinaryResNet18, HalfBlockDesign
from r2b.packed import kernels, to_packed

#: Every registered binary family with every registered stem (a new family or stem is tested
#: without an edit here; tests/test_models_registry.py runs the same checks on one it registers).
NETWORKS = binary_networks()


@pytest.mark.parametrize("name, stem, size, width", NETWORKS)
def test_every_binary_conv_equals_the_training_graph(name, stem, size, width):
    check_binary_convs(name, stem, size, width)


@pytest.mark.parametrize("name, stem, size, width", NETWORKS)
def test_network_logits_equal_the_float_model(name, stem, size, width):
    check_network_logits(name, stem, size, width)


def test_fallback_paths_stay_exact():
    """BN through the PyTorch module (no fused BN) and no weight scale."""
    model = randomise(create_model("r2b_resnet18", num_classes=5, stem="cifar", width=0.125,
                                    weight_scale=False))  # fmt: skip
    packed = to_packed(model)
    for half in packed.halves:
        half.bn_mode = kernels.BN_NONE
    packed.stem.bn_mode = kernels.BN_NONE
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


class _Offset(nn.Module):
    """A layer kind the compiled epilogue does not know: ``x + 0.5``."""

    def forward(self, x):
        return x + 0.5


@pytest.mark.parametrize("name", list_models(binary=True))
def test_every_family_is_fused_and_an_unknown_layer_falls_back_exactly(name):
    """Each registered family runs every half block in the compiled epilogue; a post or an
    activation the epilogue cannot reproduce runs in PyTorch around the integer conv, still
    bit for bit."""
    model = randomise(create_model(name, num_classes=5, stem="cifar", width=0.125), seed=4)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert all(h.fused for h in to_packed(model).halves)
    for half in (model.blocks[1].half2, model.blocks[2].half1):
        if hasattr(half, "post_bn"):
            half.post_bn = nn.Sequential(half.post_bn, _Offset())
        else:
            half.act = _Offset()
    packed = to_packed(model)
    assert [h.fused for h in packed.halves].count(False) == 2
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))
        assert torch.equal(model.spec().forward(x), model(x))


@pytest.mark.parametrize("design", [
    HalfBlockDesign(pre="shift", scaling="scale", post_bn=True, act="prelu", act_after_add=True),
    HalfBlockDesign(pre="bn", scaling="gate", post_bn=True, act="rprelu"),
    HalfBlockDesign(pre="none", scaling="none", post_bn=False, act="rprelu", act_after_add=True),
])  # fmt: skip
def test_a_new_combination_of_block_parts_packs_exactly(design):
    """A network whose half blocks combine the parts in a way no registered family does packs
    through its description alone, fused, bit for bit."""
    model = randomise(BinaryResNet18(7, "imagenet", 0.125, "bnn", design=design), seed=6)
    packed = to_packed(model)
    assert all(h.fused for h in packed.halves)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


def test_to_packed_leaves_the_model_alone_and_is_inference_only():
    model = randomise(create_model("sb_resnet18", num_classes=3, stem="cifar", width=0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed = to_packed(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="inference-only"):
        packed.train()


@pytest.mark.parametrize("name, stage", [("r2b_resnet18", "ban"), ("sb_resnet18", "fp")])
def test_stages_that_are_not_fully_binary_are_refused(name, stage):
    model = create_model(name, num_classes=3, stem="cifar", width=0.125, stage=stage)
    with pytest.raises(UserError, match="stage 'bnn'|export the 'bnn' stage"):
        to_packed(model)
    with pytest.raises(UserError, match="no binary convolutions"):
        to_packed(create_model("resnet18", num_classes=3, stem="cifar", width=0.125))


def test_reused_buffers_give_each_call_its_own_answer():
    """Launches are prepared once per input shape and thread and their buffers reused: calls
    with other inputs, other shapes in between, and two threads at once stay exact."""
    import threading

    model = randomise(create_model("r2b_resnet18", num_classes=5, stem="cifar", width=0.125))
    packed = to_packed(model)
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randn(2, 3, 32, 32, generator=gen) for _ in range(3)] + [torch.randn(1, 3, 64, 64)]
    with torch.no_grad():
        expected = [model(x) for x in xs]
    first = packed(xs[0])
    for x, e in zip(xs + xs, expected + expected):
        assert torch.equal(packed(x), e)
    assert torch.equal(first, expected[0])  # an earlier result is not overwritten
    results = {}

    def work(i):
        results[i] = [packed(xs[i % 3]) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        assert all(torch.equal(o, expected[i % 3]) for o in outs)
