"""Losses against direct computations (docs/method.md section 4)."""

import pytest
import torch

from r2b.losses import (
    DistillationObjective,
    attention_map,
    attention_matching_loss,
    cross_entropy,
    distillation_loss,
)
from r2b.models import create_model


def _feats(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, s, s, generator=g) for c, s in [(4, 8), (8, 4), (16, 2)]]


def test_attention_map_is_channel_sum_of_squares():
    a = torch.randn(2, 3, 4, 5)
    q = attention_map(a)
    assert q.shape == (2, 20)
    assert torch.allclose(q[1, 7], (a[1, :, 1, 2] ** 2).sum())


@pytest.mark.parametrize("form", ["paper", "larq"])
def test_zero_for_identical_maps(form):
    f = _feats(0)
    assert attention_matching_loss(f, [t.clone() for t in f], form).item() == pytest.approx(
        0, abs=1e-7
    )


def test_paper_form_invariant_to_positive_rescaling():
    s, t = _feats(0), _feats(1)
    base = attention_matching_loss(s, t)
    assert base > 0
    scaled = attention_matching_loss([3.0 * x for x in s], [0.01 * x for x in t])
    assert torch.allclose(base, scaled, rtol=1e-5)


def test_paper_form_matches_direct_computation():
    s, t = _feats(2), _feats(3)
    total = 0.0
    for a_s, a_t in zip(s, t):
        for n in range(a_s.shape[0]):
            qs = (a_s[n] ** 2).sum(0).flatten()
            qt = (a_t[n] ** 2).sum(0).flatten()
            total += ((qs / qs.norm() - qt / qt.norm()) ** 2).sum() / a_s.shape[0]
    assert torch.allclose(attention_matching_loss(s, t, "paper"), total, rtol=1e-5)


def test_larq_form_matches_direct_computation():
    s, t = _feats(4), _feats(5)
    terms = []
    for a_s, a_t in zip(s, t):
        qs = (a_s**2).mean(1).flatten(1)
        qt = (a_t**2).mean(1).flatten(1)
        qs = qs / qs.max(1, keepdim=True).values
        qt = qt / qt.max(1, keepdim=True).values
        terms.append(((qs - qt) ** 2).mean())
    assert torch.allclose(attention_matching_loss(s, t, "larq"), sum(terms) / 3, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_matches_direct_kl(temperature):
    torch.manual_seed(0)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    p_t = torch.softmax(t / temperature, 1)
    p_s = torch.softmax(s / temperature, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * temperature**2
    assert torch.allclose(distillation_loss(s, t, temperature), kl, rtol=1e-5)
    assert distillation_loss(t, t).item() == pytest.approx(0, abs=1e-6)


def test_soft_target_cross_entropy_equals_hard_for_one_hot():
    logits = torch.randn(4, 6)
    y = torch.tensor([0, 5, 2, 2])
    soft = torch.nn.functional.one_hot(y, 6).float()
    assert torch.allclose(cross_entropy(logits, soft), cross_entropy(logits, y))


def test_objective_combines_terms_and_freezes_teacher():
    torch.manual_seed(0)
    teacher = create_model("resnet18", num_classes=5, stem="cifar", width=0.125)
    student = create_model("r2b_resnet18", num_classes=5, stem="cifar", width=0.125, stage="fp")
    obj = DistillationObjective(teacher, ce=1.0, kd=3.0, att=2.0)
    obj.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = obj(student, x, y)
    expected = out["ce"] + 3.0 * out["kd"] + 2.0 * out["att"]
    assert torch.allclose(out["loss"], expected)
    assert out["kd"] > 0 and out["att"] > 0
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    ce_only = DistillationObjective()(student, x, y)
    assert ce_only["kd"] == 0 and torch.allclose(ce_only["loss"], ce_only["ce"])
    with pytest.raises(ValueError, match="teacher"):
        DistillationObjective(kd=1.0)
