"""SSD loss (Liu et al. 2016 as implemented by ssd_keras and DLAE): softmax cross-entropy with hard-negative
mining plus alpha times smooth L1 on the box offsets of positive anchors, divided by the number of positives.

Differences from DLAE, on purpose: cross-entropy comes from ``log_softmax`` (DLAE clamps softmax
probabilities at 1e-15, which caps the loss of a confident mistake at 34.5 and is less stable); the
targets are matched inside the loss from each image's boxes (DLAE encodes them in the data generator)
so any batch of (images, box lists) trains.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ctdl.losses.registry import LOSSES


def smooth_l1(d: torch.Tensor) -> torch.Tensor:
    """0.5 d^2 where |d| < 1, |d| - 0.5 elsewhere (elementwise)."""
    a = d.abs()
    return torch.where(a < 1, 0.5 * d * d, a - 0.5)


def hard_negative_mask(neg_losses: torch.Tensor, n_pos: int, neg_pos_ratio: float = 3.0, n_neg_min: int = 0) -> torch.Tensor:
    """Which negatives enter the loss, mined over the whole batch (ssd_keras).

    ``neg_losses``: cross-entropy of every anchor, 0 where the anchor is not a negative. Keeps the
    k = min(max(n_neg_min, int(ratio * n_pos)), number of non-zero negative losses) largest ones.
    """
    flat = neg_losses.reshape(-1)
    k = min(max(int(n_neg_min), int(neg_pos_ratio * n_pos)), int((flat > 0).sum()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.reshape(neg_losses.shape)


def ssd_loss(cls_logits: torch.Tensor, box_pred: torch.Tensor, labels: torch.Tensor, box_targets: torch.Tensor,
             neg_pos_ratio: float = 3.0, alpha: float = 1.0, n_neg_min: int = 0) -> dict[str, torch.Tensor]:
    """The SSD loss from encoded targets.

    ``cls_logits`` (B, N, C+1), ``box_pred`` (B, N, 4), ``labels`` (B, N) long (-1 neutral, 0 background,
    c >= 1 class), ``box_targets`` (B, N, 4). Returns ``loss`` = (CE_pos + CE_hard_neg + alpha * L_loc) /
    max(1, N_pos) and its parts (sums), with ``n_pos`` and ``n_neg``.
    """
    pos = labels > 0
    neg = labels == 0
    ce = F.cross_entropy(cls_logits.reshape(-1, cls_logits.shape[-1]).float(), labels.clamp(min=0).reshape(-1),
                         reduction="none").reshape(labels.shape)
    n_pos = int(pos.sum())
    hard = hard_negative_mask(torch.where(neg, ce, torch.zeros_like(ce)).detach(), n_pos, neg_pos_ratio, n_neg_min)
    ce_pos = (ce * pos).sum()
    ce_neg = (ce * hard).sum()
    loc = (smooth_l1(box_pred.float() - box_targets.float()).sum(-1) * pos).sum()
    denom = max(1, n_pos)
    return {"loss": (ce_pos + ce_neg + alpha * loc) / denom, "ce_pos": ce_pos, "ce_neg": ce_neg, "loc": loc,
            "n_pos": torch.tensor(n_pos), "n_neg": hard.sum()}


@LOSSES.register("ssd", task="detection")
class SSDLoss(nn.Module):
    """SSD loss on model outputs ``{"cls_logits", "box_offsets", "anchors"}`` and targets = one (n_i, 5) tensor per
    image, rows (class id >= 1, xmin, ymin, xmax, ymax) in pixels; matching and encoding happen here.

    ``neg_pos_ratio`` and ``alpha`` are DLAE's loss parameter1 and parameter2.
    """

    def __init__(self, neg_pos_ratio: float = 3.0, alpha: float = 1.0, n_neg_min: int = 0,
                 pos_iou_threshold: float = 0.5, neg_iou_limit: float = 0.3,
                 variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2)) -> None:
        super().__init__()
        self.neg_pos_ratio, self.alpha, self.n_neg_min = float(neg_pos_ratio), float(alpha), int(n_neg_min)
        self.pos_iou_threshold, self.neg_iou_limit = float(pos_iou_threshold), float(neg_iou_limit)
        self.variances = tuple(float(v) for v in variances)
        self.last: dict[str, float] = {}

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        from ctdl.detection.boxes import encode_targets

        anchors = outputs["anchors"]
        boxes = [t.to(anchors.device).float().reshape(-1, 5) for t in targets]
        scale = outputs.get("coord_scale")  # (W, H) when anchors are normalised
        if scale is not None:
            s = torch.as_tensor([1.0, scale[0], scale[1], scale[0], scale[1]], device=anchors.device)
            boxes = [b / s for b in boxes]
        labels, offsets = encode_targets(boxes, anchors, self.variances, self.pos_iou_threshold, self.neg_iou_limit)
        out = ssd_loss(outputs["cls_logits"], outputs["box_offsets"], labels, offsets, self.neg_pos_ratio,
                       self.alpha, self.n_neg_min)
        self.last = {k: float(v.detach()) for k, v in out.items() if k != "loss"}
        return out["loss"]
