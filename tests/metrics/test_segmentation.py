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


# ----------------------------------------------------------------------------- DLAE evaluator metrics


def test_rvd_and_mcc_by_hand() -> None:
    from ctdl.metrics.segmentation import mcc, relative_volume_difference

    pred = np.array([[0, 1, 1], [2, 2, 0]])
    truth = np.array([[0, 1, 0], [2, 1, 0]])
    # label 1: |P| = 2, |T| = 2 -> RVD 0; tp 1 fp 1 fn 1 tn 3 -> MCC (3 - 1) / sqrt(2 * 2 * 4 * 4) = 0.25
    assert relative_volume_difference(pred, truth, 1) == 0.0
    assert mcc(pred, truth, 1) == pytest.approx(0.25)
    # label 2: |P| = 2, |T| = 1 -> RVD +1; tp 1 fp 1 fn 0 tn 4 -> MCC 4 / sqrt(2 * 1 * 5 * 4) = 0.6325
    assert relative_volume_difference(pred, truth, 2) == 1.0
    assert mcc(pred, truth, 2) == pytest.approx(4 / math.sqrt(40))
    # under-segmentation is negative: half the truth predicted -> -0.5
    t = np.zeros(10, int)
    t[:4] = 1
    p = np.zeros(10, int)
    p[:2] = 1
    assert relative_volume_difference(p, t, 1) == -0.5


def test_mcc_agrees_with_sklearn(rng: np.random.Generator) -> None:
    from sklearn.metrics import matthews_corrcoef

    from ctdl.metrics.segmentation import mcc

    for thr in (0.0, 0.3, 0.8):
        truth = blob(rng, (12, 20, 20), thr).astype(int) + blob(rng, (12, 20, 20), thr + 0.4).astype(int)
        pred = blob(rng, (12, 20, 20), thr).astype(int) + blob(rng, (12, 20, 20), thr + 0.2).astype(int)
        for label in (1, 2):
            with warnings.catch_warnings():  # sklearn warns when a mask holds one value only
                warnings.simplefilter("ignore")
                ref = matthews_corrcoef((truth == label).ravel(), (pred == label).ravel())
            assert mcc(pred, truth, label) == pytest.approx(ref, abs=1e-12)
    # undefined denominator: scikit-learn's 0.0 (class absent from both; predicted everywhere)
    empty, full = np.zeros((4, 4), int), np.ones((4, 4), int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert mcc(empty, empty, 1) == matthews_corrcoef(empty.ravel(), empty.ravel()) == 0.0
        half = np.zeros((4, 4), int)
        half[:2] = 1
        assert mcc(full, half, 1) == matthews_corrcoef((half == 1).ravel(), (full == 1).ravel()) == 0.0
    # large counts do not overflow (the four marginals' product exceeds int64)
    from ctdl.metrics.segmentation import _mcc

    assert _mcc(10**7, 10**6, 10**6, 10**8) == pytest.approx(
        (10**7 * 10**8 - 10**12) / math.sqrt(11e6 * 11e6 * 101e6 * 101e6))


def test_rvd_empty_convention_and_evaluate_case_fields() -> None:
    from ctdl.metrics.segmentation import relative_volume_difference

    empty = np.zeros((6, 6, 6), int)
    some = empty.copy()
    some[2:4, 2:4, 2:4] = 1
    assert relative_volume_difference(empty, empty, 1) == 0.0
    assert math.isnan(relative_volume_difference(some, empty, 1))
    assert relative_volume_difference(empty, some, 1) == -1.0
    # evaluate_case carries every DLAE evaluator metric per class, plus voxel accuracy
    truth = np.zeros((16, 16, 16), int)
    truth[2:12, 2:12, 2:12] = 1
    truth[4:7, 4:7, 4:7] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # kidney: tp 973, fp 27, fn 0; tumour: tp 0, fn 27
    row = evaluate_case(pred, truth, (2.0, 1.0, 1.0))
    for c in ("kidney", "tumor"):
        for m in ("jaccard", "dice", "rvd", "precision", "sensitivity", "mcc", "hd95_mm", "assd_mm"):
            assert f"{c}_{m}" in row
    assert row["kidney_rvd"] == pytest.approx(27 / 973)
    assert row["tumor_rvd"] == -1.0
    n = 16**3
    tn_k = n - 1000
    assert row["kidney_mcc"] == pytest.approx((973 * tn_k) / math.sqrt(1000 * 973 * (tn_k + 27) * tn_k))
    assert row["tumor_mcc"] == 0.0  # nothing predicted: TP + FP = 0
    assert row["accuracy"] == pytest.approx((n - 27) / n)


def test_cli_evaluate_reports_dlae_metrics(tmp_path, capsys) -> None:
    from ctdl.cli import main
    from ctdl.io import Volume, write_volume

    truth = np.zeros((8, 10, 10), np.uint8)
    truth[2:6, 2:8, 2:8] = 1
    truth[3:5, 3:5, 3:5] = 2
    pred = truth.copy()
    pred[pred == 2] = 1
    pred[2, 2:8, 2:8] = 0  # 36 kidney voxels missed
    write_volume(Volume(truth), tmp_path / "truth" / "case_00001.nii.gz")
    write_volume(Volume(pred), tmp_path / "pred" / "case_00001.nii.gz")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "-o", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    for key in ("kidney_jaccard", "kidney_dice", "kidney_rvd", "kidney_precision", "kidney_sensitivity", "kidney_mcc",
                "kidney_hd95_mm", "kidney_assd_mm", "tumor_mcc", "accuracy"):
        assert f"{key}: mean" in out, key
    with open(tmp_path / "ev" / "metrics.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    # kidney: truth 144 - 8 = 136 voxels, pred 144 - 36 = 108 (tumour 8 predicted as kidney) -> tp 100
    assert float(row["kidney_rvd"]) == pytest.approx((108 - 136) / 136)
    assert float(row["accuracy"]) == pytest.approx((800 - 36 - 8) / 800)


def test_weighted_jaccard_labels_equals_one_hot_form() -> None:
    from ctdl.metrics.segmentation import weighted_jaccard, weighted_jaccard_labels

    rng = np.random.default_rng(3)
    p, y = rng.integers(0, 3, (4, 9, 7)), rng.integers(0, 3, (4, 9, 7))
    w = [0.4, 1.5, 7.0]
    eye = np.eye(3)
    assert np.isclose(weighted_jaccard_labels(p, y, w), weighted_jaccard(eye[p], eye[y], w, class_axis=-1), atol=1e-12)
    # hand case: 1-D, classes 0/1, weights 1/2: tp = [1, 1], n_pred = [2, 2], n_true = [2, 2]
    # JC_w = (1*1 + 2*1) / (1*(2+2-1) + 2*(2+2-1)) = 3 / 9
    assert np.isclose(weighted_jaccard_labels([0, 0, 1, 1], [0, 1, 0, 1], [1, 2], s=0), 1 / 3)
