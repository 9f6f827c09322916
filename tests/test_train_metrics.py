"""Training metrics: top-k counts, flip ratio of binary weights, latent weight clipping, CSV log."""

import csv

import torch

from r2b.models import create_model
from r2b.train.metrics import (
    MetricsLog,
    clip_binary_weights,
    flip_ratio,
    topk_correct,
    weight_signs,
)


def test_topk_correct_with_labels_and_soft_targets():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.1, 0.2, 0.7]])
    labels = torch.tensor([1, 1, 0])
    top1, top2 = topk_correct(logits, labels, ks=(1, 2))
    assert int(top1) == 1 and int(top2) == 2
    soft = torch.nn.functional.one_hot(labels, 3).float() * 0.7 + 0.1
    assert [int(c) for c in topk_correct(logits, soft, ks=(1, 5))] == [1, 3]


def test_flip_ratio_counts_changed_signs_of_binary_weights_only():
    model = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.125, stage="bnn")
    before = weight_signs(model)
    n = sum(m.weight.numel() for m in model.binary_convs())
    assert before.numel() == n
    conv = model.binary_convs()[0]
    with torch.no_grad():
        conv.weight.view(-1)[:10] *= -1  # flip 10 signs (no weight is exactly 0 after init)
        model.stem[0].weight.mul_(-1)  # real conv: not counted
    assert flip_ratio(before, weight_signs(model)) == 10 / n
    ban = create_model("r2b_resnet18", num_classes=10, stem="cifar", width=0.125, stage="ban")
    assert weight_signs(ban) is None and flip_ratio(None, None) is None


def test_clip_binary_weights_clamps_latent_weights_of_binary_convs():
    model = create_model("sb_resnet18", num_classes=10, stem="cifar", width=0.125, stage="bnn")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(100)
    stem = model.stem[0].weight.clone()
    clip_binary_weights(model, 1.0)
    assert all(m.weight.abs().max() <= 1.0 for m in model.binary_convs())
    assert torch.equal(model.stem[0].weight, stem)


def test_metrics_log_writes_csv_rows(tmp_path):
    rows = []
    log = MetricsLog(tmp_path / "metrics.csv", rows)
    log.append({"epoch": 1, "step": 5, "loss": 2.0, "test_top1": 30.0, "flip_ratio": None})
    log.write_csv()
    assert rows and rows[0]["epoch"] == 1
    read = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert read[0]["loss"] == "2" and read[0]["flip_ratio"] == "" and read[0]["test_top1"] == "30"
