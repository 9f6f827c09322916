"""Losses of Real-to-Binary: attention matching and logit distillation (docs/method.md sec. 4).

- Attention map of activations ``A`` (N, C, H, W) at a transfer point (Zagoruyko & Komodakis
  2017, as the paper's Eq. 2 uses it): ``Q = sum_c |A_c|^2``, an H x W map, flattened to (N, HW).
- Paper form (default)::

      L_att = (1/N) sum_n sum_j || Q_s/||Q_s||_2 - Q_t/||Q_t||_2 ||_2^2

  over the J transfer points j (the 8 basic-block outputs). The paper does not say whether the
  outer norm is squared; we square it [choice, docs/method.md].
- larq form (option): ``Q = mean_c A_c^2``, each map divided by its maximum, mean squared error
  over positions, averaged over transfer points (larq/zoo's Real-to-Binary training; weight 30).
- Distillation (Hinton et al. 2015): ``T^2 KL(softmax(t/T) || softmax(s/T))``, batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_FORMS = ("paper", "larq")


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """``Q = sum_c |A_c|^2`` of activations (N, C, H, W), flattened to shape (N, H*W)."""
    return a.float().pow(2).sum(dim=1).flatten(1)


def _paper_term(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    qs = F.normalize(attention_map(s), dim=1)
    qt = F.normalize(attention_map(t), dim=1)
    return (qs - qt).pow(2).sum(dim=1).mean()


def _larq_term(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    def normalised(a: torch.Tensor) -> torch.Tensor:
        q = a.float().pow(2).mean(dim=1).flatten(1)
        return q / q.amax(dim=1, keepdim=True).clamp_min(1e-12)

    return (normalised(s) - normalised(t)).pow(2).mean()


def attention_matching_loss(
    student_features: list[torch.Tensor],
    teacher_features: list[torch.Tensor],
    form: str = "paper",
) -> torch.Tensor:
    """Attention-matching loss between aligned lists of transfer-point activations.

    ``form="paper"`` sums the per-point terms; ``form="larq"`` averages them (see module doc).
    """
    if len(student_features) != len(teacher_features):
        raise ValueError(
            f"{len(student_features)} student vs {len(teacher_features)} teacher transfer points"
        )
    if form == "paper":
        return sum(_paper_term(s, t) for s, t in zip(student_features, teacher_features))
    if form == "larq":
        terms = [_larq_term(s, t) for s, t in zip(student_features, teacher_features)]
        return sum(terms) / len(terms)
    raise ValueError(f"unknown attention form {form!r}; choose one of {', '.join(ATTENTION_FORMS)}")


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with integer labels (N,) or soft targets (N, K), e.g. from mix-up."""
    if target.dtype.is_floating_point:
        return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits.float(), target)


class DistillationObjective(nn.Module):
    """The training objective of one step: ``ce * CE + kd * KD + att * L_att``.

    Owns the frozen teacher (eval mode, no gradients, kept in eval mode by ``train()``).
    With no teacher only the CE term is computed. Calling it returns a dict with the weighted
    ``loss`` and the unweighted terms ``ce``, ``kd`` and ``att`` (detached), plus ``logits``.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        ce: float = 1.0,
        kd: float = 0.0,
        att: float = 0.0,
        att_form: str = "paper",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if att_form not in ATTENTION_FORMS:
            raise ValueError(f"unknown attention form {att_form!r}")
        if teacher is None and (kd or att):
            raise ValueError("kd and att weights need a teacher")
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.weights = {"ce": ce, "kd": kd, "att": att}
        self.att_form = att_form
        self.temperature = temperature

    def train(self, mode: bool = True) -> DistillationObjective:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, student: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict:
        need_features = self.weights["att"] != 0
        if need_features:
            logits, s_feats = student.forward_with_features(x)
        else:
            logits, s_feats = student(x), None
        terms = {"ce": cross_entropy(logits, target)}
        if self.teacher is not None:
            with torch.no_grad():
                t_logits, t_feats = self.teacher.forward_with_features(x)
            if self.weights["kd"]:
                terms["kd"] = distillation_loss(logits, t_logits, self.temperature)
            if need_features:
                terms["att"] = attention_matching_loss(s_feats, t_feats, self.att_form)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        out = {"loss": loss, "logits": logits}
        for k in ("ce", "kd", "att"):
            out[k] = terms[k].detach() if k in terms else torch.zeros((), device=logits.device)
        return out
