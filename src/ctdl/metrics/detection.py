"""Detection metrics: box IoU, average precision per class (VOC all-point and COCO 101-point interpolation),
mean AP, precision-recall curves, and FROC sensitivity at fixed false positives per image.

Inputs are per-image lists: detections ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}`` and ground
truth ``{"boxes": (G, 4), "labels": (G,)}``, boxes as (xmin, ymin, xmax, ymax) with continuous areas
((xmax - xmin) * (ymax - ymin), no VOC "+1"). Written with NumPy because neither MONAI nor scikit-learn
computes detection AP (MONAI's ``monai.apps.detection.metrics`` is COCO-only and needs its own matching
structures). Convention: a class with no ground-truth box has AP NaN and is left out of the mean.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ctdl.metrics.registry import METRICS


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) of corner boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def match_detections(dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], label: int,
                     iou_threshold: float = 0.5, rule: str = "voc") -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scores, TP flags and image indices of all detections of ``label`` (best score first), and the GT count.

    ``rule="voc"``: a detection is a TP when its highest-IoU box of that class is >= the threshold and not
    yet taken (VOC devkit); ``"coco"``: it takes the highest-IoU box among those not yet taken (pycocotools).
    """
    scores, img_idx, boxes = [], [], []
    gt_boxes, n_gt = [], 0
    for i, (d, g) in enumerate(zip(dets, gts)):
        dl = _np(d["labels"]).reshape(-1)
        sel = dl == label
        scores.append(_np(d["scores"]).reshape(-1)[sel])
        boxes.append(_np(d["boxes"]).reshape(-1, 4)[sel])
        img_idx.append(np.full(int(sel.sum()), i))
        gb = _np(g["boxes"]).reshape(-1, 4)[_np(g["labels"]).reshape(-1) == label]
        gt_boxes.append(gb)
        n_gt += len(gb)
    s = np.concatenate(scores) if scores else np.zeros(0)
    im = np.concatenate(img_idx) if img_idx else np.zeros(0, int)
    bx = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    order = np.argsort(-s, kind="stable")
    s, im, bx = s[order], im[order], bx[order]
    taken = [np.zeros(len(g), bool) for g in gt_boxes]
    tp = np.zeros(len(s), bool)
    for k in range(len(s)):
        g = gt_boxes[im[k]]
        if len(g) == 0:
            continue
        iou = box_iou_np(bx[k:k + 1], g)[0]
        if rule == "voc":
            j = int(np.argmax(iou))
            if iou[j] >= iou_threshold and not taken[im[k]][j]:
                tp[k] = True
                taken[im[k]][j] = True
        else:
            iou = np.where(taken[im[k]], -1.0, iou)
            j = int(np.argmax(iou))
            if iou[j] >= iou_threshold:
                tp[k] = True
                taken[im[k]][j] = True
    return s, tp, im, n_gt


def precision_recall(tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative precision and recall down the ranked detections."""
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    rec = ctp / max(n_gt, 1)
    prec = ctp / np.maximum(ctp + cfp, 1)
    return prec, rec


def ap_voc(prec: np.ndarray, rec: np.ndarray) -> float:
    """VOC 2010+ all-point AP: area under the precision envelope (precision made non-increasing)."""
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def ap_coco(prec: np.ndarray, rec: np.ndarray) -> float:
    """COCO AP: the precision envelope sampled at 101 recall points 0, 0.01, ..., 1 (pycocotools' rule)."""
    q = np.maximum.accumulate(np.asarray(prec, np.float64)[::-1])[::-1] if len(prec) else np.zeros(0)
    thr = np.linspace(0.0, 1.0, 101)
    inds = np.searchsorted(rec, thr, side="left")
    vals = np.array([q[j] if j < len(q) else 0.0 for j in inds])
    return float(vals.mean())


def average_precision(dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], label: int,
                      iou_threshold: float = 0.5, interpolation: str = "voc") -> float:
    """AP of one class at ``iou_threshold`` (``interpolation`` "voc" all-point or "coco" 101-point); NaN without GT."""
    s, tp, _, n_gt = match_detections(dets, gts, label, iou_threshold, "voc" if interpolation == "voc" else "coco")
    if n_gt == 0:
        return float("nan")
    if len(s) == 0:
        return 0.0
    prec, rec = precision_recall(tp, n_gt)
    return ap_voc(prec, rec) if interpolation == "voc" else ap_coco(prec, rec)


def mean_average_precision(dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]],
                           labels: Sequence[int], iou_threshold: float = 0.5,
                           interpolation: str = "voc") -> tuple[float, dict[int, float]]:
    """mAP over ``labels`` (classes without GT left out) and the per-class APs."""
    per = {int(c): average_precision(dets, gts, int(c), iou_threshold, interpolation) for c in labels}
    vals = [v for v in per.values() if np.isfinite(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per


def froc(dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], label: int,
         fps_per_image: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8), iou_threshold: float = 0.5
         ) -> dict[float, float]:
    """Sensitivity (fraction of GT boxes found) at each number of false positives per image: the best recall
    reachable by a score threshold whose false positives per image stay <= that number (FROC points)."""
    s, tp, _, n_gt = match_detections(dets, gts, label, iou_threshold, "coco")
    n_img = max(len(gts), 1)
    if n_gt == 0:
        return {float(f): float("nan") for f in fps_per_image}
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp) / n_img
    out = {}
    for f in fps_per_image:
        ok = np.flatnonzero(cfp <= f)
        out[float(f)] = float(ctp[ok[-1]] / n_gt) if ok.size else 0.0
    return out


def recall_at_fp(dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], label: int,
                 fp_per_image: float = 1.0, iou_threshold: float = 0.5) -> float:
    """Sensitivity at ``fp_per_image`` false positives per image (one FROC point)."""
    return froc(dets, gts, label, [fp_per_image], iou_threshold)[float(fp_per_image)]


METRICS.add("detection_ap", average_precision, higher_is_better=True, kind="detection")
METRICS.add("detection_froc", froc, higher_is_better=True, kind="detection")
