"""Box IoU, DLAE/ssd_keras anchor matching, and box encoding/decoding with variances (torch).

IoU is MONAI's ``monai.data.box_utils.box_iou`` (corners, 2D or 3D). The matcher is written by
hand because DLAE's rule (greedy bipartite, then a positive IoU threshold, then a neutral band up
to ``neg_iou_limit``) is not one of MONAI's matchers (ATSS).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.data.box_utils import box_iou as _monai_box_iou


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (len(a), len(b)) of corner boxes (xmin, ymin, xmax, ymax); empty inputs give an empty matrix."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros((a.shape[0], b.shape[0]), dtype=torch.float32, device=a.device)
    return _monai_box_iou(a.float(), b.float())


def to_corners(c: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (xmin, ymin, xmax, ymax)."""
    return torch.stack([c[..., 0] - c[..., 2] / 2, c[..., 1] - c[..., 3] / 2,
                        c[..., 0] + c[..., 2] / 2, c[..., 1] + c[..., 3] / 2], -1)


def to_centroids(b: torch.Tensor) -> torch.Tensor:
    """(xmin, ymin, xmax, ymax) -> (cx, cy, w, h)."""
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                        b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)


def match_anchors(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, anchors: torch.Tensor,
                  pos_iou_threshold: float = 0.5, neg_iou_limit: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """DLAE's matching of ground-truth boxes to anchors (ssd_keras ``SSDInputEncoder``).

    ``gt_boxes`` (G, 4) corners, ``gt_labels`` (G,) class ids >= 1, ``anchors`` (N, 4) corners.
    1. every anchor starts as background;
    2. greedy bipartite: repeatedly the (box, anchor) pair with the largest IoU is matched and its
       row and column are removed, so every box gets its own best anchor (pairs with IoU 0 are skipped);
    3. every other anchor whose best IoU is >= ``pos_iou_threshold`` is matched to that box;
    4. the remaining anchors whose best IoU is >= ``neg_iou_limit`` become neutral (label -1: neither
       positive nor negative in the loss).
    Returns ``labels`` (N,) long (-1 neutral, 0 background, c class) and ``matched`` (N,) long (box index or -1).
    """
    n = anchors.shape[0]
    labels = torch.zeros(n, dtype=torch.long, device=anchors.device)
    matched = torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    g = gt_boxes.shape[0]
    if g == 0:
        return labels, matched
    iou = box_iou(gt_boxes, anchors)  # (G, N)
    w = iou.clone()
    rows = torch.arange(g, device=anchors.device)
    for _ in range(g):
        best_a = w.argmax(1)
        vals = w[rows, best_a]
        gi = int(vals.argmax())
        if float(vals[gi]) <= 0:
            break
        ai = int(best_a[gi])
        matched[ai] = gi
        w[gi, :] = 0
        w[:, ai] = 0
    sims = iou.clone()
    sims[:, matched >= 0] = 0
    best_v, best_g = sims.max(0)
    pos = (best_v >= pos_iou_threshold) & (matched < 0)
    matched[pos] = best_g[pos]
    is_pos = matched >= 0
    labels[is_pos] = gt_labels.to(labels.dtype)[matched[is_pos]]
    neutral = (~is_pos) & (best_v >= neg_iou_limit)
    labels[neutral] = -1
    return labels, matched


def encode_boxes(gt_corners: torch.Tensor, anchors_c: torch.Tensor,
                 variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2)) -> torch.Tensor:
    """Offsets of boxes (corners) from anchors (centroids): ((cx_g - cx_a) / w_a / v0, (cy_g - cy_a) / h_a / v1,
    ln(w_g / w_a) / v2, ln(h_g / h_a) / v3), the SSD / DLAE encoding."""
    g = to_centroids(gt_corners.float())
    a = anchors_c.float()
    v = torch.as_tensor(variances, dtype=g.dtype, device=g.device)
    return torch.stack([(g[..., 0] - a[..., 0]) / a[..., 2], (g[..., 1] - a[..., 1]) / a[..., 3],
                        torch.log(g[..., 2] / a[..., 2]), torch.log(g[..., 3] / a[..., 3])], -1) / v


def decode_boxes(offsets: torch.Tensor, anchors_c: torch.Tensor,
                 variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2)) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: corners from offsets and anchor centroids (cx = d v w_a + cx_a, w = exp(d v) w_a)."""
    v = torch.as_tensor(variances, dtype=offsets.dtype, device=offsets.device)
    d = offsets * v
    a = anchors_c.to(offsets.dtype)
    c = torch.stack([d[..., 0] * a[..., 2] + a[..., 0], d[..., 1] * a[..., 3] + a[..., 1],
                     torch.exp(d[..., 2]) * a[..., 2], torch.exp(d[..., 3]) * a[..., 3]], -1)
    return to_corners(c)


def encode_targets(gt_boxes: Sequence[torch.Tensor], anchors_c: torch.Tensor, variances: Sequence[float],
                   pos_iou_threshold: float, neg_iou_limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor class labels (B, N) and box offsets (B, N, 4) for a batch.

    ``gt_boxes``: one (n_i, 5) tensor per image, rows (class id, xmin, ymin, xmax, ymax) in the anchors' units.
    """
    corners = to_corners(anchors_c)
    labels, offsets = [], []
    for t in gt_boxes:
        t = t.to(anchors_c.device).float().reshape(-1, 5)
        lab, m = match_anchors(t[:, 1:], t[:, 0].long(), corners, pos_iou_threshold, neg_iou_limit)
        off = torch.zeros_like(anchors_c)
        pos = m >= 0
        if pos.any():
            off[pos] = encode_boxes(t[m[pos], 1:], anchors_c[pos], variances)
        labels.append(lab)
        offsets.append(off)
    return torch.stack(labels), torch.stack(offsets)
