"""SSD loss: hard-negative mining at the stated ratio over the whole batch, smooth L1, alpha, normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctdl.losses.detection import hard_negative_mask, smooth_l1, ssd_loss
from ctdl.losses.registry import create_loss, list_losses


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits_for_ce(targets: list[int], ces: list[float], n_cls: int = 3) -> torch.Tensor:
    """Logits whose cross-entropy for each target is exactly the given value (two-level construction)."""
    rows = []
    for t, ce in zip(targets, ces):
        p = math.exp(-ce)  # probability of the target class
        q = (1 - p) / (n_cls - 1)
        row = [math.log(q)] * n_cls
        row[t] = math.log(p)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def test_hard_negative_mask_keeps_exact_ratio_over_batch() -> None:
    neg = torch.tensor([[0.0, 5.0, 1.0, 3.0], [4.0, 0.0, 2.0, 6.0]])  # 0 = not a negative
    m = hard_negative_mask(neg, n_pos=1, neg_pos_ratio=3)
    assert int(m.sum()) == 3
    assert m.tolist() == [[False, True, False, False], [True, False, False, True]]  # 6, 5, 4 across images
    assert int(hard_negative_mask(neg, n_pos=2, neg_pos_ratio=2).sum()) == 4
    # capped by the number of non-zero negative losses
    assert int(hard_negative_mask(neg, n_pos=5, neg_pos_ratio=3).sum()) == 6
    # no positives: n_neg_min negatives (ssd_keras), 0 by default
    assert int(hard_negative_mask(neg, 0, 3).sum()) == 0 and int(hard_negative_mask(neg, 0, 3, n_neg_min=2).sum()) == 2


def test_ssd_loss_constructed_case() -> None:
    # one image, 10 anchors: 2 positives (classes 1, 2), 1 neutral, 7 negatives with known CE
    labels = torch.tensor([[1, 2, -1, 0, 0, 0, 0, 0, 0, 0]])
    ces = [0.5, 1.5, 9.0, 0.1, 2.0, 0.7, 3.0, 0.2, 1.0, 2.5]
    logits = _logits_for_ce([1, 2, 0, 0, 0, 0, 0, 0, 0, 0], ces).float()[None]
    np.testing.assert_allclose(F.cross_entropy(logits[0], labels[0].clamp(min=0), reduction="none").numpy(), ces, rtol=1e-5)
    box_t = torch.zeros(1, 10, 4)
    box_p = torch.zeros(1, 10, 4)
    box_p[0, 0] = torch.tensor([0.5, -2.0, 0.0, 0.0])  # smooth L1: 0.125 + 1.5 = 1.625
    box_p[0, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0])   # 0.5
    box_p[0, 5] = torch.tensor([9.0, 9.0, 9.0, 9.0])   # a negative: never in the box loss
    out = ssd_loss(logits, box_p, labels, box_t, neg_pos_ratio=3, alpha=2.0)
    assert int(out["n_pos"]) == 2 and int(out["n_neg"]) == 6  # exactly 3 per positive; the neutral 9.0 excluded
    hard = sorted([0.1, 2.0, 0.7, 3.0, 0.2, 1.0, 2.5], reverse=True)[:6]
    expected = (0.5 + 1.5 + sum(hard) + 2.0 * (1.625 + 0.5)) / 2
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["ce_neg"]) == pytest.approx(sum(hard), rel=1e-5)
    # ratio 1 keeps the 2 hardest negatives only
    out1 = ssd_loss(logits, box_p, labels, box_t, neg_pos_ratio=1, alpha=2.0)
    assert int(out1["n_neg"]) == 2 and float(out1["ce_neg"]) == pytest.approx(3.0 + 2.5, rel=1e-5)


def test_smooth_l1() -> None:
    np.testing.assert_allclose(smooth_l1(torch.tensor([-2.0, -0.5, 0.0, 0.9, 3.0])).numpy(), [1.5, 0.125, 0, 0.405, 2.5])


def test_registered_loss_matches_and_backpropagates() -> None:
    assert "ssd" in list_losses()
    loss = create_loss("ssd", neg_pos_ratio=3, alpha=1.0)
    anchors = torch.tensor([[5.0, 5.0, 10.0, 10.0], [15.0, 5.0, 10.0, 10.0], [5.0, 15.0, 10.0, 10.0]])
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    offs = torch.zeros(1, 3, 4, requires_grad=True)
    targets = [torch.tensor([[2.0, 0.0, 0.0, 10.0, 10.0]])]  # exactly anchor 0, class 2
    value = loss({"cls_logits": logits, "box_offsets": offs, "anchors": anchors, "coord_scale": None}, targets)
    # 1 positive (CE ln 3) + min(3, 2) negatives (CE ln 3 each), box offsets already exact -> 3 ln 3 / 1
    assert float(value.detach()) == pytest.approx(3 * math.log(3), rel=1e-6)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # normalised coordinates: the same boxes divided by (W, H) give the same loss
    value2 = loss({"cls_logits": logits, "box_offsets": offs, "anchors": anchors / 20, "coord_scale": (20.0, 20.0)},
                  targets)
    assert float(value2.detach()) == pytest.approx(float(value.detach()), rel=1e-6)
