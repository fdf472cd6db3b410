"""Segmentation metrics on integer label maps, in NumPy/SciPy (registered in ``METRICS``).

Inputs are integer label maps of equal shape (NumPy arrays or CPU tensors), 2D or 3D,
axes ordered as ``spacing`` (ctdl: ``(D, H, W)`` in mm). ``label`` may be one int or a
tuple of ints scored as one region (e.g. ``(1, 2)`` = kidney + tumour, the KiTS19 "kidney").

These are hand-written rather than MONAI calls because evaluation runs per case on NumPy
label maps (no one-hot tensors, no batch/class loops) and needs both mm and voxel distances
in one pass; the tests check them against MONAI's ``DiceMetric``,
``compute_average_surface_distance`` and ``compute_hausdorff_distance``.

Surfaces: a surface voxel is a foreground voxel with at least one face neighbour (6 in 3D,
4 in 2D; ``connectivity=1``) outside the mask, i.e. ``mask & ~binary_erosion(mask)`` with
voxels outside the array counted as background -- the same edges MONAI uses. Distances are
exact Euclidean distances between surface-voxel centres (``distance_transform_edt`` with
``sampling=spacing``). ASSD is the mean of both directed distance sets pooled; HD95 is the
larger of the two directed 95th percentiles (linear interpolation); HD is the largest distance
-- all as in MONAI (``symmetric=True``, ``percentile=95``).

Empty-mask convention:

* Dice / Jaccard: both masks empty -> 1.0 (as MONAI ``DiceMetric(ignore_empty=False)``);
  exactly one empty -> 0.0.
* Surface distances (ASSD, HD95, HD): both empty -> 0.0; exactly one empty -> NaN (MONAI
  returns inf for ASSD/HD and NaN for HD95; NaN is used throughout so that
  :func:`summarize` skips these cases and counts them in ``n_nan``).
* Sensitivity / specificity / precision: NaN when the denominator is 0 (as MONAI's
  confusion-matrix metrics), e.g. sensitivity of a case without that class.
* Relative volume difference ``(|P| - |T|) / |T|``: both empty -> 0.0; truth empty and
  prediction not -> NaN (medpy raises, DLAE's evaluator wrote inf).
* MCC: 0.0 when its denominator is 0 (any of TP+FP, TP+FN, TN+FP, TN+FN is 0, e.g. a class
  absent from both masks), as scikit-learn's ``matthews_corrcoef``.

DLAE's evaluators (``fcn_experiment_evaluator.py``) report per class Jaccard, Dice, RVD,
precision, recall, MCC, HD95 and ASSD: all are in :func:`evaluate_case` (recall is
``{name}_sensitivity``), with the convention above instead of DLAE's "0 / 1 / inf" for an
empty class, plus the voxel ``accuracy`` over all labels.
* Lesion sensitivity with no true lesions, and case-level sensitivity/specificity without
  positive/negative cases: NaN.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np
from scipy import ndimage

from ctdl.io.atomic import atomic_path
from ctdl.metrics.registry import METRICS

Label = Union[int, Sequence[int]]
Spacing = Union[float, Sequence[float], None]

__all__ = [
    "confusion_counts",
    "dice",
    "jaccard",
    "dice_per_class",
    "jaccard_per_class",
    "weighted_jaccard",
    "sensitivity",
    "specificity",
    "precision",
    "relative_volume_difference",
    "mcc",
    "surface_mask",
    "surface_distances",
    "assd",
    "hd95",
    "hausdorff",
    "lesion_detection",
    "case_detection",
    "detection_sensitivity_specificity",
    "class_volumes_ml",
    "evaluate_case",
    "summarize",
    "write_metrics_csv",
    "write_summary_csv",
]

DEFAULT_CLASS_NAMES: dict[int, str] = {1: "kidney", 2: "tumor"}


# ----------------------------------------------------------------------------- helpers


def _as_array(x: Any) -> np.ndarray:
    """NumPy view of an array or (CPU/GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _mask(label_map: Any, label: Label) -> np.ndarray:
    """Boolean mask of ``label`` (an int or a collection of ints) in a label map."""
    arr = _as_array(label_map)
    if isinstance(label, (int, np.integer)):
        return arr == label
    return np.isin(arr, np.asarray(list(label)))


def _pair(pred: Any, truth: Any, label: Label) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of ``label`` in prediction and truth, checking shapes."""
    p, t = _as_array(pred), _as_array(truth)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    return _mask(p, label), _mask(t, label)


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when ``den == 0``."""
    return float(num) / float(den) if den else math.nan


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    """Per-axis spacing tuple (1.0 when None; a scalar is isotropic)."""
    if spacing is None:
        return (1.0,) * ndim
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        return (float(sp[0]),) * ndim
    if sp.size != ndim:
        raise ValueError(f"spacing {tuple(sp)} does not match {ndim} dimensions")
    return tuple(float(s) for s in sp)


# ----------------------------------------------------------------------------- overlap


def confusion_counts(pred: Any, truth: Any, label: Label = 1) -> tuple[int, int, int, int]:
    """Voxel counts ``(tp, fp, fn, tn)`` of ``label``."""
    p, t = _pair(pred, truth, label)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, int(p.size - tp - fp - fn)


@METRICS.register("dice", kind="label", higher_is_better=True)
def dice(pred: Any, truth: Any, label: Label = 1) -> float:
    """Dice ``2|P&T| / (|P| + |T|)`` of ``label``; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion_counts(pred, truth, label)
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2.0 * tp / den


@METRICS.register("jaccard", kind="label", higher_is_better=True)
def jaccard(pred: Any, truth: Any, label: Label = 1) -> float:
    """Jaccard ``|P&T| / |P|T|`` of ``label``; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion_counts(pred, truth, label)
    den = tp + fp + fn
    return 1.0 if den == 0 else tp / den


def dice_per_class(pred: Any, truth: Any, labels: Iterable[Label]) -> dict[Any, float]:
    """``{label: dice}`` for each label."""
    return {lab if isinstance(lab, (int, np.integer)) else tuple(lab): dice(pred, truth, lab) for lab in labels}


def jaccard_per_class(pred: Any, truth: Any, labels: Iterable[Label]) -> dict[Any, float]:
    """``{label: jaccard}`` for each label."""
    return {lab if isinstance(lab, (int, np.integer)) else tuple(lab): jaccard(pred, truth, lab) for lab in labels}


@METRICS.register("weighted_jaccard", kind="onehot", higher_is_better=True)
def weighted_jaccard_labels(pred: Any, truth: Any, weights: Sequence[float], s: float = 1e-6) -> float:
    """JC_w of two label maps (hard one-hot), from per-class counts: same value as :func:`weighted_jaccard`
    on their one-hot encodings, without building them (a full CT one-hot would take gigabytes)."""
    p = _as_array(pred).astype(np.int64).ravel()
    y = _as_array(truth).astype(np.int64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"pred shape {np.shape(pred)} != truth shape {np.shape(truth)}")
    w = np.asarray(weights, dtype=np.float64)
    k = w.size
    if p.size and (min(p.min(), y.min()) < 0 or max(p.max(), y.max()) >= k):
        raise ValueError(f"labels must lie in 0..{k - 1} for {k} weights")
    tp = np.bincount(p[p == y], minlength=k).astype(np.float64)
    n_pred = np.bincount(p, minlength=k).astype(np.float64)
    n_true = np.bincount(y, minlength=k).astype(np.float64)
    tpw = float(np.sum(w * tp))
    return (tpw + s) / (float(np.sum(w * (n_pred + n_true - tp))) + s)


def weighted_jaccard(
    pred_onehot_or_probs: Any,
    truth_onehot: Any,
    weights: Sequence[float] | None = None,
    s: float = 1e-6,
    class_axis: int = 1,
) -> float:
    """Thesis JC_w index ``(TP + s)/(TP + FN + FP + s)`` with ``w_c``-weighted sums over everything.

    Inputs are one-hot / probability arrays with the class on ``class_axis`` (1 for
    ``(N, C, ...)``, 0 for one case ``(C, ...)``); one global ratio, no per-class averaging.
    The model-selection value is this index (``1 -`` the thesis' ``jacc_w_loss``).
    """
    p = _as_array(pred_onehot_or_probs).astype(np.float64)
    y = _as_array(truth_onehot).astype(np.float64)
    if p.shape != y.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {y.shape}")
    p, y = np.moveaxis(p, class_axis, -1), np.moveaxis(y, class_axis, -1)
    w = np.ones(p.shape[-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (p.shape[-1],):
        raise ValueError(f"{w.size} weights for {p.shape[-1]} classes")
    tp = float(np.sum(w * y * p))
    fn = float(np.sum(w * y * (1.0 - p)))
    fp = float(np.sum(w * (1.0 - y) * p))
    return (tp + s) / (tp + fn + fp + s)


@METRICS.register("sensitivity", kind="label", higher_is_better=True)
def sensitivity(pred: Any, truth: Any, label: Label = 1) -> float:
    """Voxel sensitivity (recall) ``TP / (TP + FN)``; NaN without true voxels."""
    tp, _, fn, _ = confusion_counts(pred, truth, label)
    return _ratio(tp, tp + fn)


@METRICS.register("specificity", kind="label", higher_is_better=True)
def specificity(pred: Any, truth: Any, label: Label = 1) -> float:
    """Voxel specificity ``TN / (TN + FP)``; NaN without true negatives."""
    _, fp, _, tn = confusion_counts(pred, truth, label)
    return _ratio(tn, tn + fp)


@METRICS.register("precision", kind="label", higher_is_better=True)
def precision(pred: Any, truth: Any, label: Label = 1) -> float:
    """Voxel precision ``TP / (TP + FP)``; NaN without predicted voxels."""
    tp, fp, _, _ = confusion_counts(pred, truth, label)
    return _ratio(tp, tp + fp)


def _rvd(tp: int, fp: int, fn: int) -> float:
    """``(|P| - |T|) / |T|`` from counts; 0.0 when both are empty, NaN when only the truth is."""
    n_pred, n_true = tp + fp, tp + fn
    if n_true == 0:
        return 0.0 if n_pred == 0 else math.nan
    return (n_pred - n_true) / n_true


def _mcc(tp: int, fp: int, fn: int, tn: int) -> float:
    """Matthews correlation from counts; 0.0 when the denominator is 0 (scikit-learn's rule).

    Hand-written from the counts because ``sklearn.metrics.matthews_corrcoef`` needs the full
    flattened label arrays (a CT volume's worth of memory per class); float products avoid the
    int64 overflow of the four marginals' product on large volumes. Tests compare with sklearn.
    """
    den = float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)
    if den == 0.0:
        return 0.0
    return (float(tp) * float(tn) - float(fp) * float(fn)) / math.sqrt(den)


@METRICS.register("relative_volume_difference", kind="label", higher_is_better=False)
def relative_volume_difference(pred: Any, truth: Any, label: Label = 1) -> float:
    """Signed relative volume difference ``(|P| - |T|) / |T|`` of ``label`` (medpy's ``ravd``);
    0.0 when both are empty, NaN when only the truth is empty."""
    tp, fp, fn, _ = confusion_counts(pred, truth, label)
    return _rvd(tp, fp, fn)


@METRICS.register("mcc", kind="label", higher_is_better=True)
def mcc(pred: Any, truth: Any, label: Label = 1) -> float:
    """Matthews correlation coefficient of ``label`` vs the rest (voxels); 0.0 when undefined."""
    return _mcc(*confusion_counts(pred, truth, label))


# ----------------------------------------------------------------------------- surfaces


def surface_mask(mask: Any, connectivity: int = 1) -> np.ndarray:
    """Boundary voxels: ``mask & ~binary_erosion(mask)``, outside the array = background.

    ``connectivity`` is SciPy's rank-style value for the erosion element (1: face neighbours,
    the MONAI/SciPy default; ``ndim``: full neighbourhood, giving thinner surfaces).
    """
    m = _as_array(mask).astype(bool)
    if not m.any():
        return m
    structure = ndimage.generate_binary_structure(m.ndim, connectivity)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def _directed(from_edges: np.ndarray, to_edges: np.ndarray, sampling: tuple[float, ...]) -> np.ndarray:
    """Distances from each voxel of ``from_edges`` to the nearest voxel of ``to_edges``."""
    return ndimage.distance_transform_edt(~to_edges, sampling=sampling)[from_edges]


def surface_distances(
    pred_mask: Any,
    truth_mask: Any,
    spacing: Spacing = None,
    connectivity: int = 1,
    percentile: float = 95.0,
) -> dict[str, float]:
    """Symmetric surface distances between two binary masks, in mm and in voxels.

    Returns ``assd_mm, hd95_mm, hd_mm`` (with ``spacing``; equal to voxels when it is None)
    and ``assd_vox, hd95_vox, hd_vox`` (spacing 1). Both masks empty -> 0.0; exactly one
    empty -> NaN (see the module docstring). Nonzero voxels are foreground.
    """
    p = _as_array(pred_mask).astype(bool)
    t = _as_array(truth_mask).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    keys = ("assd", "hd95", "hd")
    sp = _spacing(spacing, p.ndim)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p or not has_t:
        value = 0.0 if (has_p == has_t) else math.nan
        return {f"{k}_{u}": value for u in ("mm", "vox") for k in keys}
    # Crop to the union's bounding box plus one voxel: every surface voxel lies inside, so the
    # distance transforms are exact and much cheaper on a large CT volume.
    box = ndimage.find_objects((p | t).astype(np.int8))[0]
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, p.shape))
    ep, et = surface_mask(p[box], connectivity), surface_mask(t[box], connectivity)
    out: dict[str, float] = {}
    unit_sp = (1.0,) * p.ndim
    for unit, sampling in (("mm", sp), ("vox", unit_sp)):
        if unit == "vox" and sp == unit_sp:
            out.update({f"{k}_vox": out[f"{k}_mm"] for k in keys})
            continue
        d_pt = _directed(ep, et, sampling)
        d_tp = _directed(et, ep, sampling)
        both = np.concatenate([d_pt, d_tp])
        out[f"assd_{unit}"] = float(both.mean())
        out[f"hd95_{unit}"] = float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))
        out[f"hd_{unit}"] = float(both.max())
    return out


@METRICS.register("assd", kind="label", higher_is_better=False, unit="mm")
def assd(pred: Any, truth: Any, label: Label = 1, spacing: Spacing = None) -> float:
    """Average symmetric surface distance of ``label`` in mm (voxels when ``spacing`` is None)."""
    p, t = _pair(pred, truth, label)
    return surface_distances(p, t, spacing)["assd_mm"]


@METRICS.register("hd95", kind="label", higher_is_better=False, unit="mm")
def hd95(pred: Any, truth: Any, label: Label = 1, spacing: Spacing = None) -> float:
    """95th-percentile symmetric Hausdorff distance of ``label`` in mm (voxels when ``spacing`` is None)."""
    p, t = _pair(pred, truth, label)
    return surface_distances(p, t, spacing)["hd95_mm"]


@METRICS.register("hausdorff", kind="label", higher_is_better=False, unit="mm")
def hausdorff(pred: Any, truth: Any, label: Label = 1, spacing: Spacing = None) -> float:
    """Hausdorff distance of ``label`` in mm (voxels when ``spacing`` is None)."""
    p, t = _pair(pred, truth, label)
    return surface_distances(p, t, spacing)["hd_mm"]


# ----------------------------------------------------------------------------- detection

_CONNECTIVITY_RANK = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


def _component_structure(ndim: int, connectivity: int) -> np.ndarray:
    """SciPy structuring element for a neighbour count (4/8 in 2D, 6/18/26 in 3D)."""
    ranks = _CONNECTIVITY_RANK.get(ndim)
    if ranks is None or connectivity not in ranks:
        raise ValueError(f"connectivity {connectivity} is not valid for {ndim}D (use {sorted(ranks or [])})")
    return ndimage.generate_binary_structure(ndim, ranks[connectivity])


def lesion_detection(pred: Any, truth: Any, label: Label = 2, connectivity: int = 26) -> dict[str, float]:
    """Lesion-level detection of ``label``: connected components of truth and prediction.

    A true lesion is detected when any predicted voxel of ``label`` overlaps it; a predicted
    component is a false positive when it overlaps no true voxel of ``label``.
    ``connectivity``: 6/18/26 (3D) or 4/8 (2D).
    """
    p, t = _pair(pred, truth, label)
    structure = _component_structure(p.ndim, connectivity)
    t_lab, n_true = ndimage.label(t, structure=structure)
    p_lab, n_pred = ndimage.label(p, structure=structure)
    n_detected = int(np.unique(t_lab[p & t]).size)
    n_pred_hit = int(np.unique(p_lab[p & t]).size)
    return {
        "n_true_lesions": int(n_true),
        "n_detected": n_detected,
        "n_missed": int(n_true) - n_detected,
        "n_pred_lesions": int(n_pred),
        "n_false_positive_components": int(n_pred) - n_pred_hit,
        "lesion_sensitivity": _ratio(n_detected, n_true),
    }


def case_detection(pred: Any, truth: Any, label: Label = 2) -> dict[str, int]:
    """Case-level detection of ``label``: one of ``tp/fn/fp/tn`` is 1 (positive = any voxel of ``label``)."""
    p, t = _pair(pred, truth, label)
    pos_true, pos_pred = bool(t.any()), bool(p.any())
    return {
        "tp": int(pos_true and pos_pred),
        "fn": int(pos_true and not pos_pred),
        "fp": int(pos_pred and not pos_true),
        "tn": int(not pos_true and not pos_pred),
    }


def detection_sensitivity_specificity(cases: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Pool :func:`case_detection` results: counts, ``sensitivity = TP/(TP+FN)``, ``specificity = TN/(TN+FP)``."""
    totals = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
    n = 0
    for case in cases:
        n += 1
        for k in totals:
            totals[k] += int(case[k])
    return {
        **totals,
        "n": n,
        "sensitivity": _ratio(totals["tp"], totals["tp"] + totals["fn"]),
        "specificity": _ratio(totals["tn"], totals["tn"] + totals["fp"]),
    }


# ----------------------------------------------------------------------------- volumes


def class_volumes_ml(label_map: Any, spacing: Spacing, labels: Iterable[Label]) -> dict[Any, float]:
    """``{label: volume in ml}`` = voxel count x voxel volume (mm^3) / 1000."""
    arr = _as_array(label_map)
    voxel_mm3 = float(np.prod(_spacing(spacing, arr.ndim)))
    out: dict[Any, float] = {}
    for lab in labels:
        key = lab if isinstance(lab, (int, np.integer)) else tuple(lab)
        out[key] = int(np.count_nonzero(_mask(arr, lab))) * voxel_mm3 / 1000.0
    return out


# ----------------------------------------------------------------------------- per case


@METRICS.register("evaluate_case", kind="case")
def evaluate_case(
    pred: Any,
    truth: Any,
    spacing: Spacing = None,
    class_names: Mapping[int, str] | None = None,
    kidney_includes_tumor: bool = False,
    detection_label: int | None = 2,
    connectivity: int | None = None,
) -> dict[str, float]:
    """Flat dict of all metrics per class (``{name}_{metric}``) plus detection fields for ``detection_label``.

    Per class: dice, jaccard, assd/hd95/hd in mm and voxels, sensitivity (= recall), specificity,
    precision, rvd (relative volume difference), mcc, volume_pred_ml, volume_true_ml; and
    ``accuracy``, the fraction of voxels whose label is right (DLAE's evaluators report it too). ``kidney_includes_tumor=True`` scores label 1
    as labels 1|2 (the KiTS19 "kidney" region, which contains the tumour); the default False
    scores each label alone, as the FCN-PPM paper does. Detection (``{name}_case_tp`` ...,
    ``{name}_n_true_lesions`` ...) uses ``connectivity`` components (default 26 in 3D, 8 in 2D).
    """
    p, t = _as_array(pred), _as_array(truth)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    names = dict(DEFAULT_CLASS_NAMES if class_names is None else class_names)
    voxel_ml = float(np.prod(_spacing(spacing, p.ndim))) / 1000.0
    row: dict[str, float] = {}
    for label, name in names.items():
        region: Label = (1, 2) if (kidney_includes_tumor and label == 1) else label
        pm, tm = _mask(p, region), _mask(t, region)
        tp = int(np.count_nonzero(pm & tm))
        fp = int(np.count_nonzero(pm)) - tp
        fn = int(np.count_nonzero(tm)) - tp
        tn = pm.size - tp - fp - fn
        row[f"{name}_dice"] = 1.0 if (2 * tp + fp + fn) == 0 else 2.0 * tp / (2 * tp + fp + fn)
        row[f"{name}_jaccard"] = 1.0 if (tp + fp + fn) == 0 else tp / (tp + fp + fn)
        dist = surface_distances(pm, tm, spacing)
        for key in ("assd_mm", "assd_vox", "hd95_mm", "hd95_vox", "hd_mm", "hd_vox"):
            row[f"{name}_{key}"] = dist[key]
        row[f"{name}_sensitivity"] = _ratio(tp, tp + fn)
        row[f"{name}_specificity"] = _ratio(tn, tn + fp)
        row[f"{name}_precision"] = _ratio(tp, tp + fp)
        row[f"{name}_rvd"] = _rvd(tp, fp, fn)
        row[f"{name}_mcc"] = _mcc(tp, fp, fn, tn)
        row[f"{name}_volume_pred_ml"] = (tp + fp) * voxel_ml
        row[f"{name}_volume_true_ml"] = (tp + fn) * voxel_ml
    row["accuracy"] = float(np.count_nonzero(p == t)) / p.size if p.size else math.nan
    if detection_label is not None:
        name = names.get(detection_label, f"label{detection_label}")
        conn = connectivity if connectivity is not None else (26 if p.ndim == 3 else 8)
        for k, v in case_detection(p, t, detection_label).items():
            row[f"{name}_case_{k}"] = v
        for k, v in lesion_detection(p, t, detection_label, conn).items():
            row[f"{name}_{k}"] = v
    return row


# ----------------------------------------------------------------------------- summaries


def _is_number(v: Any) -> bool:
    """True for int/float/bool/NumPy scalars (strings and None are not numbers)."""
    return isinstance(v, (numbers.Number, np.number, bool)) and not isinstance(v, complex)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per numeric column: mean, std (ddof=1; NaN if n < 2), min, max, n and n_nan.

    Non-finite values (the NaN of the empty-mask convention) and missing/None entries are
    skipped and counted in ``n_nan``. Columns holding any non-number (e.g. a case id) are left out.
    """
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    summary: dict[str, dict[str, float]] = {}
    for col in columns:
        values = [row.get(col) for row in rows]
        present = [v for v in values if v is not None]
        if not present or not all(_is_number(v) for v in present):
            continue
        arr = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        n = int(finite.size)
        summary[col] = {
            "mean": float(finite.mean()) if n else math.nan,
            "std": float(finite.std(ddof=1)) if n > 1 else math.nan,
            "min": float(finite.min()) if n else math.nan,
            "max": float(finite.max()) if n else math.nan,
            "n": n,
            "n_nan": int(arr.size - n),
        }
    return summary


def write_metrics_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write one row per case (columns = union of keys, first-seen order), atomically."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


SUMMARY_FIELDS = ("mean", "std", "min", "max", "n", "n_nan")


def write_summary_csv(summary: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str]) -> None:
    """Write :func:`summarize` output as ``metric,mean,std,min,max,n,n_nan`` rows, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("metric", *SUMMARY_FIELDS))
            for metric, stats in summary.items():
                writer.writerow((metric, *(stats.get(f, "") for f in SUMMARY_FIELDS)))
