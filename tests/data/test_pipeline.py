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
