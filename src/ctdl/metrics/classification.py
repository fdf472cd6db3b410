"""Classification metrics from labels and probabilities: Cohen's kappa, accuracy, per-class precision/recall/F1,
one-vs-rest macro AUC and the confusion matrix (ImageCLEF 2021 TBT scores kappa and accuracy).

Written as small NumPy functions over the confusion matrix (and a rank statistic for AUC) so that every number
in a run folder can be traced by hand; the tests check each against scikit-learn on random predictions.
Conventions (the same as scikit-learn's): a class never predicted has precision 0 and a class absent from the
truth has recall 0 (``zero_division=0``); AUC is the mean over the classes that have both positives and
negatives in the truth (scikit-learn raises instead when a class is absent), NaN when none do.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ctdl.metrics.registry import METRICS


def _labels(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{name}: class indices must be integers")
    return arr.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """(K, K) counts, rows = truth, columns = prediction (scikit-learn's layout)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} samples, y_pred {p.size}")
    k = int(n_classes if n_classes is not None else max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k):
        raise ValueError(f"class indices must lie in [0, {k})")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def cohen_kappa(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Cohen's kappa (p_o - p_e) / (1 - p_e) from the confusion matrix (1 when p_e == 1 and all agree)."""
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    n = cm.sum()
    if n == 0:
        return float("nan")
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / n**2
    if pe == 1.0:
        return 1.0 if po == 1.0 else 0.0
    return float((po - pe) / (1.0 - pe))


def accuracy(y_true: Any, y_pred: Any) -> float:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    return float(np.mean(t == p)) if t.size else float("nan")


def precision_recall_f1(y_true: Any, y_pred: Any, n_classes: int | None = None) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (zero_division = 0)."""
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    tp = np.diag(cm)
    pred_pos, true_pos = cm.sum(0), cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_pos > 0, tp / pred_pos, 0.0)
        recall = np.where(true_pos > 0, tp / true_pos, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": true_pos.astype(np.int64)}


def binary_auc(y: Any, score: Any) -> float:
    """ROC AUC of scores for a 0/1 truth via the Mann-Whitney U statistic (ties count half); NaN if one class."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc_ovr(y_true: Any, probs: Any) -> np.ndarray:
    """Per-class one-vs-rest AUC from (N, K) probabilities (NaN for a class without positives or negatives)."""
    t = _labels(y_true, "y_true")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"probs: expected shape ({t.size}, K), got {p.shape}")
    return np.array([binary_auc(t == k, p[:, k]) for k in range(p.shape[1])])


def macro_auc(y_true: Any, probs: Any) -> float:
    """Mean one-vs-rest AUC over classes that have both positives and negatives (scikit-learn 'ovr' macro)."""
    aucs = auc_ovr(y_true, probs)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def classification_metrics(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict[str, float]:
    """Flat metric dict for a run folder: kappa, accuracy, macro_auc, macro_f1, f1/precision/recall/auc_<class>."""
    p = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"probs: expected shape (N, {k}), got {p.shape}")
    t = _labels(y_true, "y_true")
    pred = p.argmax(1)
    prf = precision_recall_f1(t, pred, k)
    aucs = auc_ovr(t, p)
    out: dict[str, float] = {
        "kappa": cohen_kappa(t, pred, k),
        "accuracy": accuracy(t, pred),
        "macro_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "macro_f1": float(prf["f1"].mean()),
    }
    for i, name in enumerate(class_names):
        out[f"f1_{name}"] = float(prf["f1"][i])
        out[f"precision_{name}"] = float(prf["precision"][i])
        out[f"recall_{name}"] = float(prf["recall"][i])
        out[f"auc_{name}"] = float(aucs[i])
        out[f"support_{name}"] = float(prf["support"][i])
    return out


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """MSE and MAE over all outputs (DLAE CNN regression: a row vector per image)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true shape {t.shape} differs from y_pred shape {p.shape}")
    return {"mse": float(np.mean((t - p) ** 2)), "mae": float(np.mean(np.abs(t - p)))}


for _name, _fn, _hib in (("kappa", cohen_kappa, True), ("accuracy_cls", accuracy, True), ("macro_auc", macro_auc, True)):
    if _name not in METRICS:
        METRICS.add(_name, _fn, higher_is_better=_hib, kind="classification")

__all__ = ["accuracy", "auc_ovr", "binary_auc", "classification_metrics", "cohen_kappa", "confusion_matrix",
           "macro_auc", "precision_recall_f1", "regression_metrics"]
