"""Segmentation metrics: hand-computed cases, MONAI agreement, empty masks, detection, CSV output."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    DiceMetric,
    compute_average_surface_distance,
    compute_confusion_matrix_metric,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)
from scipy import ndimage

from ctdl.metrics.registry import METRICS, get_metric, list_metrics
from ctdl.metrics.segmentation import (
    case_detection,
    class_volumes_ml,
    detection_sensitivity_specificity,
    dice,
    dice_per_class,
    evaluate_case,
    jaccard,
    jaccard_per_class,
    lesion_detection,
    precision,
    sensitivity,
    specificity,
    summarize,
    surface_distances,
    surface_mask,
    weighted_jaccard,
    write_metrics_csv,
    write_summary_csv,
)


def onehot(x: np.ndarray, c: int) -> torch.Tensor:
    """(spatial) label map -> (1, C, spatial) float tensor for MONAI."""
    return torch.from_numpy(np.moveaxis(np.eye(c)[x], -1, 0)[None]).float()


def blob(rng: np.random.Generator, shape: tuple[int, ...], thr: float, sigma: float = 2.0) -> np.ndarray:
    """A random smooth binary mask."""
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) > thr


def monai_distances(p: np.ndarray, t: np.ndarray, spacing) -> tuple[float, float, float]:
    """MONAI's symmetric ASSD, HD95 and HD for two binary masks."""
    yp, yt = torch.from_numpy(p[None, None]).float(), torch.from_numpy(t[None, None]).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = compute_average_surface_distance(yp, yt, symmetric=True, spacing=spacing).item()
        h95 = compute_hausdorff_distance(yp, yt, percentile=95, spacing=spacing).item()
        h = compute_hausdorff_distance(yp, yt, spacing=spacing).item()
    return a, h95, h


# ----------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert {"dice", "jaccard", "sensitivity", "specificity", "precision", "assd", "hd95", "hausdorff"} <= set(
        list_metrics()
    )
    assert METRICS.meta("hd95")["higher_is_better"] is False
    truth = np.zeros((4, 4), int)
    truth[1:3, 1:3] = 1
    assert get_metric("dice")(truth, truth, label=1) == 1.0


# ----------------------------------------------------------------------------- overlap


def test_hand_computed_overlap() -> None:
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    truth = np.array([[0, 1, 0], [2, 1, 0]])
    # label 1: tp 1, fp 1, fn 1 -> Dice 2/4, Jaccard 1/3
    assert dice(pred, truth, 1) == pytest.approx(0.5)
    assert jaccard(pred, truth, 1) == pytest.approx(1 / 3)
    # label 2: tp 1, fp 1, fn 0, tn 4 -> Dice 2/3, Jaccard 1/2, sens 1, prec 1/2, spec 4/5
    assert dice(pred, truth, 2) == pytest.approx(2 / 3)
    assert jaccard(pred, truth, 2) == pytest.approx(0.5)
    assert sensitivity(pred, truth, 2) == 1.0
    assert precision(pred, truth, 2) == 0.5
    assert specificity(pred, truth, 2) == pytest.approx(0.8)
    assert dice_per_class(pred, truth, [1, 2]) == pytest.approx({1: 0.5, 2: 2 / 3})
    assert jaccard_per_class(pred, truth, [1, 2]) == pytest.approx({1: 1 / 3, 2: 0.5})
    # composite region 1|2: pred {01,02,10,11}, truth {01,10,11} -> tp 3, fp 1 -> 6/7
    assert dice(pred, truth, (1, 2)) == pytest.approx(6 / 7)
    # torch tensors are accepted
    assert dice(torch.from_numpy(pred), torch.from_numpy(truth), 1) == pytest.approx(0.5)


def test_overlap_agrees_with_monai(rng: np.random.Generator) -> None:
    for shape in ((32, 32, 32), (48, 40)):
        truth = rng.integers(0, 3, size=shape)
        pred = np.where(rng.random(shape) < 0.3, rng.integers(0, 3, size=shape), truth)
        yp, yt = onehot(pred, 3), onehot(truth, 3)
        m_dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(yp, yt)[0].numpy()
        m_iou = compute_iou(yp, yt, include_background=True, ignore_empty=False)[0].numpy()
        cm = get_confusion_matrix(yp, yt)
        for c in range(3):
            assert dice(pred, truth, c) == pytest.approx(float(m_dice[c]), abs=1e-6)
            assert jaccard(pred, truth, c) == pytest.approx(float(m_iou[c]), abs=1e-6)
        for name, fn in (("sensitivity", sensitivity), ("specificity", specificity), ("precision", precision)):
            ref = compute_confusion_matrix_metric(name, cm)[0].numpy()
            for c in range(3):
                assert fn(pred, truth, c) == pytest.approx(float(ref[c]), abs=1e-6)


def test_weighted_jaccard_hand_example() -> None:
    # two pixels, class axis 0: pixel 0 is class 0, pixel 1 is class 1
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.5, 0.2], [0.5, 0.8]])
    # TP = 1*0.5 + 3*0.8 = 2.9; FN = 1*0.5 + 3*0.2 = 1.1; FP = 1*0.2 + 3*0.5 = 1.7
    expected = (2.9 + 1e-6) / (2.9 + 1.1 + 1.7 + 1e-6)
    assert weighted_jaccard(p, y, [1.0, 3.0], class_axis=0) == pytest.approx(expected, rel=1e-12)
    # batch layout (N, C, ...) gives the same value
    assert weighted_jaccard(p[None], y[None], [1.0, 3.0]) == pytest.approx(expected, rel=1e-12)
    assert weighted_jaccard(y, y, [1.0, 3.0], class_axis=0) == pytest.approx(1.0)
    # unweighted: TP 1.3, FN 0.7, FP 0.7
    assert weighted_jaccard(p, y, None, class_axis=0) == pytest.approx((1.3 + 1e-6) / (2.7 + 1e-6))


# ----------------------------------------------------------------------------- surfaces


def test_surface_mask_connectivity() -> None:
    m = np.zeros((5, 5, 5), bool)
    m[1:4, 1:4, 1:4] = True
    assert surface_mask(m).sum() == 26  # only the centre is interior
    full = np.ones((3, 3, 3), bool)
    assert surface_mask(full).sum() == 26  # array border counts as background


def test_parallel_planes_anisotropic() -> None:
    spacing = (2.5, 0.8, 0.7)
    for k in (1, 3, 5):
        truth = np.zeros((16, 10, 9), bool)
        pred = np.zeros_like(truth)
        truth[3] = True
        pred[3 + k] = True
        d = surface_distances(pred, truth, spacing)
        for key in ("assd", "hd95", "hd"):
            assert d[f"{key}_mm"] == pytest.approx(2.5 * k)
            assert d[f"{key}_vox"] == pytest.approx(float(k))
        # the in-plane shift is measured with the in-plane spacing
        truth_w = np.zeros((6, 10, 16), bool)
        truth_w[:, :, 2] = True
        pred_w = np.zeros_like(truth_w)
        pred_w[:, :, 2 + k] = True
        d = surface_distances(pred_w, truth_w, spacing)
        assert d["assd_mm"] == pytest.approx(0.7 * k) and d["hd_vox"] == pytest.approx(float(k))


def test_square_vs_centre_pixel_by_hand() -> None:
    truth = np.zeros((7, 7), int)
    truth[2:5, 2:5] = 1  # surface: 8 pixels (the centre is interior)
    pred = np.zeros((7, 7), int)
    pred[3, 3] = 1
    # pred->truth: [1]; truth->pred: four edge pixels at 1, four corners at sqrt(2)
    d = surface_distances(pred, truth)
    assert d["assd_vox"] == pytest.approx((1 + 4 + 4 * math.sqrt(2)) / 9)
    assert d["hd_vox"] == pytest.approx(math.sqrt(2))
    assert d["hd95_vox"] == pytest.approx(math.sqrt(2))
    assert d["assd_mm"] == d["assd_vox"]  # no spacing -> mm == voxels
    assert dice(pred, truth, 1) == pytest.approx(0.2)


def test_single_voxels_anisotropic_by_hand() -> None:
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[2, 2] = True
    b[5, 6] = True  # 3 rows and 4 columns away
    d = surface_distances(a, b, spacing=(2.0, 0.5))
    assert d["hd_mm"] == pytest.approx(math.sqrt(6.0**2 + 2.0**2))
    assert d["assd_mm"] == pytest.approx(math.sqrt(40.0))
    assert d["hd_vox"] == pytest.approx(5.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.7)])
def test_surface_distances_agree_with_monai(rng: np.random.Generator, spacing) -> None:
    diag = math.sqrt(sum(s * s for s in spacing))
    cases = [(blob(rng, (32, 32, 32), 0.05), blob(rng, (32, 32, 32), 0.05)) for _ in range(2)]
    truth = np.zeros((32, 32, 32), bool)
    truth[8:20, 10:22, 6:18] = True
    cases.append((np.roll(truth, 3, axis=0), truth))  # cubes offset by 3 slices
    cases.append((np.roll(truth, (2, -4), axis=(1, 2)), truth))
    for pred, tru in cases:
        assert pred.any() and tru.any()
        ours = surface_distances(pred, tru, spacing)
        ref = monai_distances(pred, tru, spacing)
        assert abs(ours["assd_mm"] - ref[0]) <= diag
        assert abs(ours["hd95_mm"] - ref[1]) <= diag
        assert abs(ours["hd_mm"] - ref[2]) <= diag
        if spacing != (1.0, 1.0, 1.0):  # voxel units agree with MONAI at unit spacing
            ref_vox = monai_distances(pred, tru, None)
            assert abs(ours["assd_vox"] - ref_vox[0]) <= math.sqrt(3)
            assert abs(ours["hd95_vox"] - ref_vox[1]) <= math.sqrt(3)
            assert abs(ours["hd_vox"] - ref_vox[2]) <= math.sqrt(3)
        else:
            assert ours["assd_vox"] == ours["assd_mm"]


def test_surface_distances_2d_agree_with_monai(rng: np.random.Generator) -> None:
    pred, tru = blob(rng, (40, 40), 0.0), blob(rng, (40, 40), 0.0)
    ours = surface_distances(pred, tru, (0.7, 1.3))
    ref = monai_distances(pred, tru, (0.7, 1.3))
    diag = math.hypot(0.7, 1.3)
    assert abs(ours["assd_mm"] - ref[0]) <= diag and abs(ours["hd95_mm"] - ref[1]) <= diag


# ----------------------------------------------------------------------------- empty masks


def test_empty_mask_convention() -> None:
    empty = np.zeros((6, 6, 6), int)
    some = empty.copy()
    some[2:4, 2:4, 2:4] = 1
    # both empty
    assert dice(empty, empty, 1) == 1.0 and jaccard(empty, empty, 1) == 1.0
    assert all(v == 0.0 for v in surface_distances(empty, empty, (1, 2, 3)).values())
    assert math.isnan(sensitivity(empty, empty, 1)) and math.isnan(precision(empty, empty, 1))
    assert specificity(empty, empty, 1) == 1.0
    # exactly one empty
    for p, t in ((some, empty), (empty, some)):
        assert dice(p, t, 1) == 0.0 and jaccard(p, t, 1) == 0.0
        assert all(math.isnan(v) for v in surface_distances(p, t, (1, 2, 3)).values())
    assert sensitivity(empty, some, 1) == 0.0 and math.isnan(precision(empty, some, 1))


# ----------------------------------------------------------------------------- detection


def test_lesion_detection_hand_made() -> None:
    truth = np.zeros((20, 20, 20), int)
    pred = np.zeros_like(truth)
    truth[1:8, 1:8, 1:8] = 1  # kidney, ignored for label 2
    truth[2:5, 2:5, 2:5] = 2  # lesion A
    truth[10:13, 2:5, 2:5] = 2  # lesion B (missed)
    truth[17, 17, 17] = 2  # lesion C (one voxel)
    pred[2:4, 2:4, 2:4] = 2  # hits A
    pred[4, 4, 6] = 2  # a second component, touching A's voxel? no: A ends at index 4 -> (4,4,6) outside A
    pred[17, 17, 17] = 2  # hits C
    pred[15:18, 2:4, 15:18] = 2  # false positive
    pred[10:13, 2:5, 2:5] = 1  # B predicted as kidney -> missed as tumour
    res = lesion_detection(pred, truth, label=2, connectivity=26)
    assert res["n_true_lesions"] == 3
    assert res["n_detected"] == 2 and res["n_missed"] == 1
    assert res["n_pred_lesions"] == 4
    assert res["n_false_positive_components"] == 2  # the (4,4,6) voxel and the block
    assert res["lesion_sensitivity"] == pytest.approx(2 / 3)


def test_lesion_connectivity() -> None:
    truth = np.zeros((6, 6, 6), int)
    truth[1, 1, 1] = 2
    truth[2, 2, 2] = 2  # corner-touching only
    truth[4, 4, 1] = 2
    truth[4, 5, 1] = 2  # face-touching
    assert lesion_detection(truth, truth, 2, connectivity=26)["n_true_lesions"] == 2
    assert lesion_detection(truth, truth, 2, connectivity=18)["n_true_lesions"] == 3
    assert lesion_detection(truth, truth, 2, connectivity=6)["n_true_lesions"] == 3
    with pytest.raises(ValueError):
        lesion_detection(truth[0], truth[0], 2, connectivity=26)
    assert lesion_detection(truth[4], truth[4], 2, connectivity=4)["n_true_lesions"] == 1


def test_case_detection_and_pooling() -> None:
    z = np.zeros((4, 4), int)
    t = z.copy()
    t[1, 1] = 2
    other = z.copy()
    other[3, 3] = 2
    cases = [
        case_detection(t, t),  # tp
        case_detection(other, t),  # tp (case level: any tumour predicted)
        case_detection(z, t),  # fn
        case_detection(t, z),  # fp
        case_detection(z, z),  # tn
        case_detection(z, z),  # tn
    ]
    assert cases[2] == {"tp": 0, "fn": 1, "fp": 0, "tn": 0}
    res = detection_sensitivity_specificity(cases)
    assert (res["tp"], res["fn"], res["fp"], res["tn"], res["n"]) == (2, 1, 1, 2, 6)
    assert res["sensitivity"] == pytest.approx(2 / 3) and res["specificity"] == pytest.approx(2 / 3)
    assert math.isnan(detection_sensitivity_specificity([case_detection(z, z)])["sensitivity"])


# ----------------------------------------------------------------------------- volumes and per case


def test_class_volumes_ml() -> None:
    lab = np.zeros((20, 20, 20), int)
    lab[:10, :10, :10] = 1  # 1000 voxels
    lab[:2, :5, :5] = 2  # 50 voxels
    vols = class_volumes_ml(lab, (2.0, 1.0, 1.5), [1, 2, (1, 2)])
    # voxel = 3 mm^3; label 1 keeps 1000 - 50 = 950 voxels
    assert vols[1] == pytest.approx(950 * 3 / 1000)
    assert vols[2] == pytest.approx(50 * 3 / 1000)
    assert vols[(1, 2)] == pytest.approx(3.0)


def test_evaluate_case_and_kits_kidney() -> None:
    truth = np.zeros((16, 16, 16), int)
    truth[2:12, 2:12, 2:12] = 1
    truth[4:7, 4:7, 4:7] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # tumour predicted as kidney
    spacing = (2.0, 1.0, 1.0)
    row = evaluate_case(pred, truth, spacing)
    # separate scoring: kidney tp 973, fp 27 -> 2*973/(2*973+27)
    assert row["kidney_dice"] == pytest.approx(2 * 973 / (2 * 973 + 27))
    assert row["tumor_dice"] == 0.0 and math.isnan(row["tumor_assd_mm"])
    assert row["tumor_volume_true_ml"] == pytest.approx(27 * 2 / 1000)
    assert row["tumor_volume_pred_ml"] == 0.0
    assert row["tumor_case_fn"] == 1 and row["tumor_n_true_lesions"] == 1 and row["tumor_n_detected"] == 0
    assert row["kidney_specificity"] == pytest.approx((16**3 - 1000) / (16**3 - 1000 + 27))
    expected_keys = {
        f"{c}_{m}"
        for c in ("kidney", "tumor")
        for m in (
            "dice", "jaccard", "assd_mm", "assd_vox", "hd95_mm", "hd95_vox", "sensitivity", "specificity",
            "precision", "volume_pred_ml", "volume_true_ml",
        )
    }
    assert expected_keys <= set(row)
    # KiTS19: kidney = labels 1|2 -> perfect
    kits = evaluate_case(pred, truth, spacing, kidney_includes_tumor=True)
    assert kits["kidney_dice"] == 1.0 and kits["kidney_assd_mm"] == 0.0
    assert kits["kidney_volume_true_ml"] == pytest.approx(1000 * 2 / 1000)
    # agrees with the standalone functions
    assert row["kidney_hd95_mm"] == pytest.approx(
        surface_distances(pred == 1, truth == 1, spacing)["hd95_mm"]
    )
    # 2D input works (detection uses 8-connectivity)
    row2d = evaluate_case(pred[5], truth[5], (1.0, 1.0))
    assert row2d["tumor_n_true_lesions"] == 1


# ----------------------------------------------------------------------------- summaries and CSV


def test_summarize_skips_and_counts_nan() -> None:
    rows = [
        {"case": "a", "dice": 0.5, "assd": 1.0, "flag": 1},
        {"case": "b", "dice": 0.7, "assd": math.nan, "flag": 0},
        {"case": "c", "dice": 0.9, "assd": 3.0},
    ]
    s = summarize(rows)
    assert "case" not in s
    assert s["dice"]["mean"] == pytest.approx(0.7)
    assert s["dice"]["std"] == pytest.approx(0.2)  # sample std of 0.5, 0.7, 0.9
    assert (s["dice"]["min"], s["dice"]["max"], s["dice"]["n"], s["dice"]["n_nan"]) == (0.5, 0.9, 3, 0)
    assert s["assd"]["mean"] == pytest.approx(2.0) and s["assd"]["n"] == 2 and s["assd"]["n_nan"] == 1
    assert s["flag"]["n"] == 2 and s["flag"]["n_nan"] == 1
    single = summarize([{"x": math.nan}])["x"]
    assert single["n"] == 0 and single["n_nan"] == 1 and math.isnan(single["mean"])


def test_csv_writers(tmp_path) -> None:
    rows = [{"case": "a", "dice": 0.5, "assd": math.nan}, {"case": "b", "dice": 0.25, "extra": 3}]
    path = tmp_path / "out" / "metrics.csv"
    write_metrics_csv(rows, path)
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == ["case", "dice", "assd", "extra"]
    assert back[0]["dice"] == "0.5" and back[0]["assd"] == "nan" and back[0]["extra"] == ""
    assert back[1]["extra"] == "3"
    spath = tmp_path / "out" / "summary.csv"
    write_summary_csv(summarize(rows), spath)
    with open(spath, newline="") as fh:
        srows = {r["metric"]: r for r in csv.DictReader(fh)}
    assert float(srows["dice"]["mean"]) == pytest.approx(0.375)
    assert srows["assd"]["n"] == "0" and srows["assd"]["n_nan"] == "2"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "summary.csv"]
