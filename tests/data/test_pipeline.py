"""Tests for ctdl.data.pipeline: prepare -> restore puts a prediction back on the input grid exactly."""

from __future__ import annotations

import numpy as np

from ctdl.config.schema import PreprocessingConfig
from ctdl.data.pipeline import GeometryCache, SegPreprocessor
from ctdl.io import Volume
from ctdl.io.volume import from_file_order


def _volumes() -> tuple[Volume, Volume]:
    # a file in (x, y, z) order like most NIfTI files: 30 x 26 x 12 at 1.2 x 1.2 x 3 mm, LAS-like
    lab_f = np.zeros((30, 26, 12), np.uint8)
    lab_f[8:20, 6:18, 3:9] = 1
    lab_f[12:15, 10:13, 5:7] = 2
    img_f = (lab_f * 150 - 100 + np.random.default_rng(0).normal(0, 5, lab_f.shape)).astype(np.int16)
    aff = np.diag([-1.2, 1.2, 3.0, 1.0])
    aff[:3, 3] = [10, -20, 30]
    return from_file_order(img_f, aff), from_file_order(lab_f, aff)


def test_restore_gives_input_grid_and_labels(tmp_path) -> None:
    image, label = _volumes()
    cfg = PreprocessingConfig(spacing=(2.0, 1.0, 1.0), hu_window="kidney", normalization="unity_minus_mean")
    pre = SegPreprocessor(cfg)
    img_s, lab_s, _ = pre.geometry(image, label)
    pre.fit([img_s.array])
    assert 0.0 < pre.plan["dataset_mean"] < 1.0
    case, ctx = pre.prepare("c", image, label, GeometryCache(tmp_path))
    assert case.image.shape[0] == 1 and case.image.shape[1:] == case.label.shape
    # HU window [-200, 500] to [0, 1] minus the mean: range is within [-1, 1]
    assert case.image.min() >= -1 and case.image.max() <= 1
    out = pre.restore(case.label, ctx)
    assert out.shape == label.shape and np.allclose(out.affine, label.affine)
    assert out.file_axes == label.file_axes
    agree = (out.array == label.array).mean()
    assert agree > 0.97
    # second call hits the cache and gives the same arrays
    case2, _ = pre.prepare("c", image, label, GeometryCache(tmp_path))
    assert np.array_equal(case.image, case2.image)
    assert len(list(tmp_path.rglob("*.npz"))) == 1


def test_roi_crop_is_undone(tmp_path) -> None:
    image, label = _volumes()
    cfg = PreprocessingConfig(hu_window=None, normalization="none", roi={"enabled": True, "margin": (1, 2, 2)})
    pre = SegPreprocessor(cfg)
    pre.fit([image.array.astype(np.float32)])
    case, ctx = pre.prepare("c", image, label)
    assert ctx.bbox is not None and case.label.shape < label.shape
    out = pre.restore(case.label, ctx)
    assert np.array_equal(out.array, label.array)


def test_unset_spacing_uses_the_training_median(tmp_path) -> None:
    """With preprocessing.spacing unset, the plan freezes the training median and inference resamples to it."""
    image, label = _volumes()  # 3 x 1.2 x 1.2 mm
    pre = SegPreprocessor(PreprocessingConfig(hu_window=None, normalization="none"))
    pre.plan_spacing([(3.0, 1.2, 1.2), (3.0, 1.2, 1.2), (5.0, 0.8, 0.8)])
    assert pre.target_spacing == (3.0, 1.2, 1.2)
    # a finer input is brought to the training spacing, and the prediction goes back to the input grid
    from ctdl.data import preprocess as pp

    fine = pp.resample(image, (1.5, 0.6, 0.6))
    case, ctx = pre.prepare("c", fine, None, use_label_roi=False)
    assert case.image.shape[1:] == image.shape
    out = pre.restore(np.zeros(case.image.shape[1:], np.uint8), ctx)
    assert out.shape == fine.shape and np.allclose(out.affine, fine.affine)


def test_inplane_resize_is_undone(tmp_path) -> None:
    """Thesis-style 512 -> 128 in-plane resize (here 26 x 30 -> 16 x 16): prediction comes back on the input grid."""
    image, label = _volumes()
    pre = SegPreprocessor(PreprocessingConfig(hu_window=None, normalization="none", inplane_size=(16, 16)))
    case, ctx = pre.prepare("c", image, label)
    assert case.image.shape[2:] == (16, 16) and case.label.shape[1:] == (16, 16)
    out = pre.restore(case.label, ctx)
    assert out.shape == label.shape and np.allclose(out.affine, label.affine)
    assert (out.array == label.array).mean() > 0.9


def test_per_kidney_fixed_size_crops() -> None:
    # two "kidneys" in a 10 x 40 x 60 volume; per-kidney ROI of 16 x 16 in-plane around each
    lab = np.zeros((10, 40, 60), np.uint8)
    lab[2:6, 5:11, 4:10] = 1      # left one touches the border region: its window is shifted inside
    lab[3:8, 20:30, 40:52] = 1
    lab[4:6, 24:27, 44:47] = 2
    img = lab.astype(np.float32) * 100
    vol_i, vol_l = Volume(img, np.eye(4)), Volume(lab, np.eye(4))
    cfg = PreprocessingConfig(reorient=False, hu_window=None, normalization="samplewise_unity_x",
                              roi={"enabled": True, "per_kidney": True, "size_hw": (16, 16), "margin": (1, 0, 0)})
    pre = SegPreprocessor(cfg)
    cases = pre.finish_all("c", vol_i, vol_l)
    assert [c.case_id for c in cases] == ["c#roi0", "c#roi1"]
    big, small = cases  # largest component first
    assert big.label.shape == (7, 16, 16) and small.label.shape == (6, 16, 16)
    assert (big.label == 2).sum() == (lab == 2).sum() and (big.label == 1).sum() == (lab[3:8, 20:30, 40:52] == 1).sum()
    assert (small.label > 0).sum() == 4 * 6 * 6  # the whole small kidney is inside its window
    # sample-wise normalization uses the whole image's range [0, 200] (the tumour is in the other crop):
    # the small kidney's 100 maps to 0.5, not to 1 as the crop's own range would give
    assert np.isclose(small.image.max(), 0.5) and np.isclose(small.image.min(), 0.0)


def test_component_boxes_rules() -> None:
    from ctdl.data.preprocess import component_boxes, fixed_window

    assert fixed_window(3.0, 10, 50) == slice(0, 10)       # moved inside at the low end
    assert fixed_window(48.0, 10, 50) == slice(40, 50)     # and at the high end
    assert fixed_window(20.0, 80, 50) == slice(0, 50)      # larger than the axis: all of it
    m = np.zeros((5, 20, 20), np.uint8)
    m[1:3, 2:5, 2:5] = 1
    m[2:4, 10:18, 10:18] = 1
    m[0, 19, 19] = 1  # 1 voxel: below 10 % of the largest, no box
    boxes = component_boxes(m, margin=(1, 1, 1))
    assert boxes == [(slice(1, 5), slice(9, 19), slice(9, 19)), (slice(0, 4), slice(1, 6), slice(1, 6))]
    assert component_boxes(np.zeros((3, 3, 3))) == []
    # size_hw is a minimum window: a component larger than it (kidney + big tumour) gets its extent plus margin
    big = np.zeros((4, 40, 40), np.uint8)
    big[1:3, 5:23, 10:16] = 1                            # 18 rows x 6 columns
    (box,) = component_boxes(big, margin=(0, 1, 1), size_hw=(8, 8))
    assert box == (slice(1, 3), slice(4, 24), slice(9, 17))  # rows grown to 18 + 2, columns keep 8


def test_component_boxes_merge_joins_fragments_and_keeps_far_false_positives_out() -> None:
    from ctdl.data.preprocess import component_boxes

    m = np.zeros((20, 30, 30), np.uint8)
    m[2:8, 2:10, 2:8] = 1      # kidney A, 288 voxels
    m[2:8, 12:14, 2:8] = 2     # a tumour fragment two empty rows away from A, 72 voxels
    m[2:8, 2:10, 20:28] = 1    # kidney B, 384 voxels
    m[15:19, 20:30, 10:18] = 1  # a false positive far away, 320 voxels: more than A alone, less than A + fragment
    # without merging the false positive is the second-largest component and kidney A gets no box at all
    assert component_boxes(m) == [(slice(2, 8), slice(2, 10), slice(20, 28)), (slice(15, 19), slice(20, 30), slice(10, 18))]
    # one voxel of reach bridges the two-voxel gap: A + fragment (360) and B (384) are the two groups kept;
    # the box is the tight box of the group's foreground, not of the grown mask
    assert component_boxes(m, merge=1) == [(slice(2, 8), slice(2, 10), slice(20, 28)),
                                           (slice(2, 8), slice(2, 14), slice(2, 8))]
    # max_components 3 brings the false positive back, as its own group
    assert len(component_boxes(m, merge=1, max_components=3)) == 3
