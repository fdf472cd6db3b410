"""Turning SSD outputs into detections: softmax, box decoding, per-class NMS, confidence threshold, top-k.

Greedy NMS (drops boxes whose IoU with a kept, higher-scoring box of the same class is > the threshold, as
DLAE/ssd_keras) is written here on one IoU matrix (MONAI's ``box_iou``) per class: MONAI's
``non_max_suppression`` recomputes and re-validates IoUs box by box and was ~50x slower on the few hundred
candidates an untrained SSD produces per image. Tests check both agree.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ctdl.detection.boxes import box_iou, decode_boxes


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_outputs: int = -1) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, best score first (ties keep the earlier box)."""
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order]).cpu().numpy()
    over = iou > iou_threshold
    alive = np.ones(len(order), bool)
    kept: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        if 0 < max_outputs <= len(kept):
            break
        alive &= ~over[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def nms_per_class(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float,
                  max_outputs: int = -1, pre_nms_top_k: int = 0) -> torch.Tensor:
    """Indices kept by greedy NMS run separately for each label (at most ``max_outputs`` per label), best first.

    ``pre_nms_top_k`` > 0 first keeps only that many best-scoring candidates per label (the original SSD's
    ``nms top_k``; bounds the cost of an untrained model whose every anchor passes the threshold).
    """
    keep = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        if 0 < pre_nms_top_k < idx.numel():
            idx = idx[torch.topk(scores[idx], pre_nms_top_k).indices]
        keep.append(idx[greedy_nms(boxes[idx], scores[idx], iou_threshold, max_outputs)])
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep_t = torch.cat(keep)
    return keep_t[torch.argsort(scores[keep_t], descending=True, stable=True)]


def decode_detections(cls_logits: torch.Tensor, box_offsets: torch.Tensor, anchors_c: torch.Tensor,
                      variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2), confidence_threshold: float = 0.01,
                      iou_threshold: float = 0.45, top_k: int = 200, max_outputs: int = 400,
                      scale_xy: Sequence[float] | None = None, pre_nms_top_k: int = 400) -> list[dict[str, torch.Tensor]]:
    """Detections per image: ``{"boxes": (K, 4) corners, "scores": (K,), "labels": (K,) class ids >= 1}``.

    Per non-background class: scores > ``confidence_threshold``, NMS at ``iou_threshold`` keeping at most
    ``max_outputs`` (after keeping the ``pre_nms_top_k`` best candidates, 0 = all); then the ``top_k`` best
    over all classes (0 = all). ``scale_xy`` (W, H) multiplies
    normalised boxes back to pixels.
    """
    probs = torch.softmax(cls_logits.float(), -1)
    boxes = decode_boxes(box_offsets.float(), anchors_c.float(), variances)
    if scale_xy is not None:
        boxes = boxes * torch.as_tensor([scale_xy[0], scale_xy[1], scale_xy[0], scale_xy[1]], dtype=boxes.dtype,
                                        device=boxes.device)
    out = []
    for b in range(probs.shape[0]):
        p = probs[b, :, 1:]
        sel = p > confidence_threshold  # (N, C)
        a_idx, c_idx = torch.nonzero(sel, as_tuple=True)
        sc = p[a_idx, c_idx]
        bx = boxes[b, a_idx]
        lab = c_idx + 1
        keep = nms_per_class(bx, sc, lab, iou_threshold, max_outputs, pre_nms_top_k) if sc.numel() else a_idx[:0]
        if top_k and keep.numel() > top_k:
            keep = keep[:top_k]
        out.append({"boxes": bx[keep], "scores": sc[keep], "labels": lab[keep]})
    return out
