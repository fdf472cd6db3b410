"""ctdl.data.preprocess: values checked against hand-computed numbers on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ctdl.data import preprocess as pp
from ctdl.errors import InputError
from ctdl.io.volume import Volume

IPL = np.array([[0, 0, -1], [0, -1, 0], [-1, 0, 0]], dtype=float)  # D->I, H->P, W->L (KiTS19 as stored)


def world(vol: Volume, idx) -> np.ndarray:
    return (vol.affine @ np.array([*idx, 1.0]))[:3]


def ramp_volume(shape=(4, 5, 6), spacing=(2.0, 1.0, 1.0), origin=(10.0, -20.0, 5.0)) -> Volume:
    d, h, w = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    return Volume.from_array(100 * d + 10 * h + w, spacing=spacing, origin=origin)


# ---------------------------------------------------------------- orientation
def test_canonical_orientation_is_itk_identity():
    vol = pp.reorient(Volume.from_array(np.zeros((2, 3, 4)), spacing=(3.0, 0.5, 0.7)))
    assert pp.CANONICAL_ORIENTATION == "SPL" and vol.orientation == "SPL"
    # (W, H, D) index axes in LPS = identity direction (what SimpleITK would get)
    lps = np.diag([-1.0, -1.0, 1.0]) @ vol.direction[:, ::-1]
    np.testing.assert_allclose(lps, np.eye(3), atol=1e-12)


def test_reorient_flips_keep_world_and_invert_exactly():
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    vol = Volume.from_array(arr, spacing=(2.0, 0.5, 0.7), origin=(10.0, -5.0, 3.0), meta={"id": "a"})
    assert vol.orientation == "SAR"
    before = vol.array.copy(), vol.affine.copy()
    out = pp.reorient(vol)
    assert out.orientation == "SPL"
    np.testing.assert_array_equal(out.array, arr[:, ::-1, ::-1])
    # voxel (1, 2, 3) moved to (1, 0, 0) and kept its world position
    np.testing.assert_allclose(world(out, (1, 0, 0)), world(vol, (1, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(world(vol, (1, 2, 3)), [10 + 3 * 0.7, -5 + 2 * 0.5, 3 + 2.0])
    for idx in np.ndindex(vol.shape):
        new = (idx[0], 2 - idx[1], 3 - idx[2])
        assert out.array[new] == vol.array[idx]
        np.testing.assert_allclose(world(out, new), world(vol, idx), atol=1e-12)
    back = pp.undo_reorient(out, vol)
    np.testing.assert_array_equal(back.array, vol.array)
    assert np.array_equal(back.affine, vol.affine) and back.array.dtype == np.int16
    assert back.meta["id"] == "a"
    # the input was not modified
    np.testing.assert_array_equal(vol.array, before[0])
    assert np.array_equal(vol.affine, before[1])


def test_reorient_kits_layout_flips_only_d():
    vol = Volume.from_array(np.arange(8.0).reshape(2, 2, 2), direction=IPL, origin=(1.0, 2.0, 3.0))
    assert vol.orientation == "IPL"
    out = pp.reorient(vol)
    np.testing.assert_array_equal(out.array, vol.array[::-1])
    np.testing.assert_allclose(world(out, (0, 1, 0)), world(vol, (1, 1, 0)))
    same = pp.reorient(vol, "ipl")
    np.testing.assert_array_equal(same.array, vol.array)
    back = pp.undo_reorient(out, vol)
    assert np.array_equal(back.affine, vol.affine)


def test_reorient_errors():
    vol = Volume.from_array(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="one of 'S'/'I'"):
        pp.reorient(vol, "PSL")
    with pytest.raises(InputError, match="3-letter"):
        pp.reorient(vol, "SP")
    permuted = Volume.from_array(np.zeros((2, 2, 2)), direction=np.eye(3))  # D runs along R
    with pytest.raises(InputError, match="only flips"):
        pp.reorient(permuted)
    other = Volume.from_array(np.zeros((2, 2, 2)), origin=(5.0, 0, 0))
    with pytest.raises(InputError, match="not a reoriented copy"):
        pp.undo_reorient(pp.reorient(vol), other)
    with pytest.raises(InputError, match="differs from reference shape"):
        pp.undo_reorient(Volume.from_array(np.zeros((2, 2, 3))), vol)


# ---------------------------------------------------------------- resampling
def test_resample_linear_ramp_hand_values():
    arr = np.tile(np.array([0.0, 10.0, 20.0, 30.0]), (2, 2, 1))  # ramp along W, 1 mm
    vol = Volume.from_array(arr)
    down = pp.resample(vol, (1.0, 1.0, 2.0), antialias=False)
    assert down.shape == (2, 2, 2) and down.spacing == pytest.approx((1.0, 1.0, 2.0))
    np.testing.assert_allclose(down.array[0, 0], [5.0, 25.0])  # centres at old w = 0.5, 2.5
    up = pp.resample(vol, (1.0, 1.0, 0.5))
    assert up.shape == (2, 2, 8)
    # centres at old w = -0.25, 0.25, ..., 3.25 (edge value beyond the last centre)
    np.testing.assert_allclose(up.array[1, 1], [0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30])
    # physical centre unchanged
    for r in (down, up):
        np.testing.assert_allclose(world(r, (np.array(r.shape) - 1) / 2), world(vol, (0.5, 0.5, 1.5)))
    np.testing.assert_allclose(world(down, (0, 0, 0)), world(vol, (0, 0, 0.5)))


def test_resample_anisotropic_3d_ramp():
    vol = ramp_volume()  # f = 100 d + 10 h + w, spacing (2, 1, 1)
    out = pp.resample(vol, (1.0, 2.0, 1.5), antialias=False)
    # shape: round(4*2/1)=8, round(5*1/2 = 2.5)=3 (half up), round(6/1.5)=4
    assert out.shape == (8, 3, 4) and out.array.dtype == np.float64
    # new (1,1,1) -> old d = 1.5 + (1-3.5)*0.5 = 0.25, h = 2 + 0*2 = 2, w = 2.5 + (1-1.5)*1.5 = 1.75
    assert out.array[1, 1, 1] == pytest.approx(25 + 20 + 1.75)
    # new (4,0,2) -> old (1.75, 0, 3.25)
    assert out.array[4, 0, 2] == pytest.approx(175 + 0 + 3.25)
    idx_old = np.linalg.inv(vol.affine) @ out.affine @ np.array([4, 0, 2, 1.0])
    np.testing.assert_allclose(idx_old[:3], [1.75, 0, 3.25], atol=1e-12)
    np.testing.assert_allclose(world(out, (3.5, 1, 1.5)), world(vol, (1.5, 2, 2.5)), atol=1e-12)


def test_resample_order3_constant_and_int_input():
    vol = Volume.from_array(np.full((3, 4, 5), 7, dtype=np.int16), spacing=(3.0, 0.8, 0.8))
    out = pp.resample(vol, 1.0, order=3)
    assert out.shape == (9, 3, 4) and out.array.dtype == np.float32
    np.testing.assert_allclose(out.array, 7.0, atol=1e-4)


def test_resample_label_roundtrip_recovers_grid_and_blob():
    d, h, w = np.meshgrid(*(np.arange(20.0),) * 3, indexing="ij")
    blob = ((d - 9.5) ** 2 + (h - 10) ** 2 + (w - 9) ** 2 <= 64).astype(np.uint8)
    ref = Volume.from_array(blob, spacing=(1.0, 0.8, 0.8), direction=IPL, origin=(3.0, 4.0, -7.0))
    coarse = pp.resample(ref, (2.0, 2.0, 2.0), is_label=True)
    assert coarse.shape == (10, 8, 8) and coarse.array.dtype == np.uint8
    assert set(np.unique(coarse.array)) <= {0, 1}
    back = pp.resample_to_reference(coarse, ref, is_label=True)
    assert back.shape == ref.shape and np.array_equal(back.affine, ref.affine)
    inter = np.logical_and(back.array, blob).sum()
    dice = 2 * inter / (back.array.sum() + blob.sum())
    assert dice > 0.85
    assert (back.array == blob).mean() > 0.9  # measured 0.94 (dice 0.89)


def test_resample_to_reference_fill_outside():
    vol = Volume.from_array(np.ones((4, 4, 4), dtype=np.float32))
    ref = Volume.from_array(np.zeros((6, 6, 6)), origin=(-1.0, -1.0, -1.0))  # one voxel larger on each side
    out = pp.resample_to_reference(vol, ref, fill=-5.0)
    assert out.array[0, 0, 0] == -5.0 and out.array[5, 3, 3] == -5.0
    np.testing.assert_array_equal(out.array[1:5, 1:5, 1:5], 1.0)
    edge = pp.resample_to_reference(vol, ref)  # default: edge values
    np.testing.assert_array_equal(edge.array, 1.0)
    same = pp.resample_to_reference(vol, vol)
    np.testing.assert_array_equal(same.array, vol.array)


def test_resample_errors():
    vol = ramp_volume()
    with pytest.raises(InputError, match="spacing must be positive"):
        pp.resample(vol, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="3 values"):
        pp.resample(vol, (1.0, 1.0))
    with pytest.raises(InputError, match="order"):
        pp.resample(vol, 1.0, order=7)
    bad = vol.with_array(np.where(vol.array > 300, np.nan, vol.array))
    with pytest.raises(InputError, match="NaN"):
        pp.resample(bad, 1.0)
    with pytest.raises(InputError, match="Volume"):
        pp.resample(vol.array, 1.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- HU windows
def test_clip_hu_presets_and_pairs():
    x = np.array([[-1200, -200, 0], [150, 600, 2000]], dtype=np.int16)
    np.testing.assert_array_equal(pp.clip_hu(x, "kidney"), [[-200, -200, 0], [150, 500, 500]])
    assert pp.clip_hu(x, "kidney").dtype == np.int16
    np.testing.assert_array_equal(pp.clip_hu(x, "lung"), [[-1200, -200, 0], [150, 150, 150]])
    np.testing.assert_array_equal(pp.clip_hu(x, "Abdomen"), [[-160, -160, 0], [150, 240, 240]])
    np.testing.assert_allclose(pp.clip_hu(x, (-100.5, 99.5)), [[-100.5, -100.5, 0], [99.5, 99.5, 99.5]])
    assert pp.HU_PRESETS["kidney"] == (-200.0, 500.0)
    assert pp.window_from_level_width(40, 400) == pp.HU_PRESETS["abdomen"]
    assert pp.window_from_level_width(-600, 1500) == pp.HU_PRESETS["lung"]
    vol = Volume.from_array(x.reshape(1, 2, 3).astype(np.float32), spacing=(2.0, 1.0, 1.0))
    out = pp.clip_hu(vol, "bone")
    assert isinstance(out, Volume) and np.array_equal(out.affine, vol.affine)
    np.testing.assert_array_equal(out.array.ravel(), [-500, -200, 0, 150, 600, 1300])
    np.testing.assert_array_equal(x, [[-1200, -200, 0], [150, 600, 2000]])  # input untouched


def test_clip_hu_errors():
    with pytest.raises(InputError, match="valid presets: abdomen, bone"):
        pp.clip_hu(np.zeros(3), "kidneys")
    with pytest.raises(InputError, match="low must be < high"):
        pp.clip_hu(np.zeros(3), (500, -200))
    with pytest.raises(InputError, match="NaN"):
        pp.clip_hu(np.array([0.0, np.nan]), "kidney")


# ---------------------------------------------------------------- normalization
X = np.array([[-100.0, 0.0], [50.0, 300.0]])  # min -100, max 300, range 400
Y = np.array([[0.0, 1.0], [2.0, 4.0]])  # min 0, max 4

EXPECTED_X = {
    "samplewise_unity": [[0.0, 0.25], [0.375, 1.0]],
    "samplewise_negpos": [[-1.0, -0.5], [-0.25, 1.0]],
    # global x_range (-200, 500): (x + 200) / 700
    "global_unity": [[1 / 7, 2 / 7], [5 / 14, 5 / 7]],
    "global_negpos": [[-5 / 7, -3 / 7], [-2 / 7, 3 / 7]],
}
EXPECTED_Y = {
    "samplewise_unity": [[0.0, 0.25], [0.5, 1.0]],
    "samplewise_negpos": [[-1.0, -0.5], [0.0, 1.0]],
    # global y_range (0, 8): y / 8
    "global_unity": [[0.0, 0.125], [0.25, 0.5]],
    "global_negpos": [[-1.0, -0.75], [-0.5, 0.0]],
}


@pytest.mark.parametrize("base", sorted(EXPECTED_X))
def test_normalize_every_kind(base):
    kw = {"x_range": (-200, 500), "y_range": (0, 8)}
    xo, yo = pp.normalize(X, f"{base}_x", y=Y, **kw)
    np.testing.assert_allclose(xo, EXPECTED_X[base], atol=1e-12)
    np.testing.assert_array_equal(yo, Y)  # _x leaves y alone
    xo, yo = pp.normalize(X, f"{base}_xy", y=Y, **kw)
    np.testing.assert_allclose(xo, EXPECTED_X[base], atol=1e-12)
    np.testing.assert_allclose(yo, EXPECTED_Y[base], atol=1e-12)  # y's own scale, not normalized x
    np.testing.assert_array_equal(X, [[-100, 0], [50, 300]])  # inputs untouched


def test_normalize_none_skip_and_volume():
    xo, yo = pp.normalize(X, "none", y=Y)
    np.testing.assert_array_equal(xo, X)
    np.testing.assert_array_equal(yo, Y)
    assert xo is not X
    const = np.full((2, 2), 5.0)
    np.testing.assert_array_equal(pp.normalize(const, "samplewise_negpos_x")[0], const)  # max == min: skipped
    np.testing.assert_array_equal(pp.normalize(X, "global_unity_x", x_range=(3, 3))[0], X)
    vol = Volume.from_array(X.reshape(1, 2, 2).astype(np.int16), spacing=(2.0, 1.0, 1.0))
    vo, _ = pp.normalize(vol, "samplewise_unity_x")
    assert isinstance(vo, Volume) and vo.array.dtype == np.float32
    np.testing.assert_allclose(vo.array[0], EXPECTED_X["samplewise_unity"])


@pytest.mark.parametrize("kind", ["global_unity_x", "global_negpos_xy", "samplewise_negpos_x"])
def test_denormalize_inverts(kind):
    xo, _ = pp.normalize(X, kind, y=Y, x_range=(-200, 500), y_range=(0, 8))
    rng = (-200, 500) if kind.startswith("global") else (-100, 300)
    np.testing.assert_allclose(pp.denormalize(xo, kind, rng), X, atol=1e-9)
    _, yo = pp.normalize(X, "global_negpos_xy", y=Y, x_range=(-200, 500), y_range=(0, 8))
    np.testing.assert_allclose(pp.denormalize(yo, "negpos", (0, 8)), Y, atol=1e-12)


def test_normalize_errors():
    with pytest.raises(InputError, match="valid kinds: none, samplewise_unity_x"):
        pp.normalize(X, "global_x")
    with pytest.raises(InputError, match="x_range"):
        pp.normalize(X, "global_unity_x")
    with pytest.raises(InputError, match="y_range"):
        pp.normalize(X, "global_unity_xy", y=Y, x_range=(0, 1))
    with pytest.raises(InputError, match="y was not given"):
        pp.normalize(X, "samplewise_unity_xy")
    with pytest.raises(InputError, match="min must be <= max"):
        pp.normalize(X, "global_unity_x", x_range=(5, 1))
    with pytest.raises(InputError, match="NaN"):
        pp.normalize(np.array([1.0, np.nan]), "samplewise_unity_x")


def test_zscore_and_inverse():
    x = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population std sqrt(1.25)
    s = np.sqrt(1.25)
    np.testing.assert_allclose(pp.zscore(x), [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s])
    np.testing.assert_allclose(pp.zscore(x, mean=0.0, std=2.0), [0.5, 1.0, 1.5, 2.0])
    assert pp.zscore_stats(x) == pytest.approx((2.5, s))
    np.testing.assert_allclose(pp.unzscore(pp.zscore(x), *pp.zscore_stats(x)), x)
    np.testing.assert_array_equal(pp.zscore(np.full(3, 4.0)), [0.0, 0.0, 0.0])
    with pytest.raises(InputError, match="std must be a positive"):
        pp.zscore(x, std=0.0)


def test_fcn_ppm_pipeline_mean_subtraction():
    a = np.array([[-300.0, 150.0]])
    b = np.array([[500.0, 850.0]])
    scaled = [pp.normalize(pp.clip_hu(v, "kidney"), "global_unity_x", x_range=(-200, 500))[0] for v in (a, b)]
    np.testing.assert_allclose(scaled[0], [[0.0, 0.5]])
    np.testing.assert_allclose(scaled[1], [[1.0, 1.0]])
    m = pp.dataset_mean(scaled)
    assert m == pytest.approx(0.625)
    np.testing.assert_allclose(pp.subtract_mean(scaled[0], m), [[-0.625, -0.125]])
    np.testing.assert_allclose(pp.add_mean(pp.subtract_mean(scaled[0], m), m), scaled[0])
    assert pp.dataset_mean([np.zeros(3), np.ones(1)]) == pytest.approx(0.25)  # voxel-weighted
    with pytest.raises(InputError, match="no voxels"):
        pp.dataset_mean([])


# ---------------------------------------------------------------- zoom / resize
@pytest.mark.parametrize("src,dst", [((5, 7, 9), (7, 11, 13)), ((3, 10, 10), (7, 3, 23)), ((9, 13, 6), (4, 13, 17))])
def test_zoom_exact_shape_and_constant(src, dst):
    x = np.full(src, -3.25, dtype=np.float32)
    out = pp.zoom_to_shape(x, dst)
    assert out.shape == dst and out.dtype == np.float32
    np.testing.assert_allclose(out, -3.25, atol=1e-5)
    lab = (np.arange(np.prod(src)).reshape(src) % 3).astype(np.uint8)
    lo = pp.zoom_to_shape(lab, dst, is_label=True)
    assert lo.shape == dst and lo.dtype == np.uint8 and set(np.unique(lo)) <= {0, 1, 2}


def test_zoom_default_shape_and_ramp_values():
    out = pp.zoom_to_shape(np.ones((2, 3, 3), dtype=np.float32), order=1)
    assert out.shape == (70, 224, 224)
    ramp = np.tile(np.array([0.0, 10.0, 20.0, 30.0]), (2, 2, 1))
    z = pp.zoom_to_shape(ramp, (2, 2, 7), order=1)  # corners aligned: old w = 0, 0.5, ..., 3
    np.testing.assert_allclose(z[0, 0], [0, 5, 10, 15, 20, 25, 30])
    z = pp.zoom_to_shape(ramp, (2, 2, 8), order=1, align_corners=False)  # edges aligned
    np.testing.assert_allclose(z[0, 0], [0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30])


def test_zoom_affine_extent():
    vol = Volume.from_array(np.zeros((5, 7, 9)), spacing=(2.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0), direction=IPL)
    out = pp.zoom_to_shape(vol, (9, 13, 3))
    # first and last voxel centres stay put
    np.testing.assert_allclose(world(out, (0, 0, 0)), world(vol, (0, 0, 0)))
    np.testing.assert_allclose(world(out, (8, 12, 2)), world(vol, (4, 6, 8)))
    assert out.spacing == pytest.approx((1.0, 0.25, 2.0))
    edge = pp.zoom_to_shape(vol, (10, 14, 3), align_corners=False)
    assert edge.spacing == pytest.approx((1.0, 0.25, 1.5))
    np.testing.assert_allclose(world(edge, (4.5, 6.5, 1)), world(vol, (2, 3, 4)))  # centre kept
    # voxel corners (-0.5) coincide too
    np.testing.assert_allclose(world(edge, (-0.5, -0.5, -0.5)), world(vol, (-0.5, -0.5, -0.5)))


def test_resize_inplane():
    x = np.tile(np.arange(8.0), (3, 8, 1))  # ramp along W
    out = pp.resize_inplane(x, (4, 4), order=1)
    assert out.shape == (3, 4, 4)
    np.testing.assert_allclose(out[2, 1], [0.5, 2.5, 4.5, 6.5])  # edges aligned: old w = 2j + 0.5
    lab = np.zeros((2, 8, 8), dtype=np.uint8)
    lab[1, 2:6, 2:6] = 2
    lo = pp.resize_inplane(lab, (4, 4), is_label=True)
    assert lo.dtype == np.uint8 and (lo[0] == 0).all()
    np.testing.assert_array_equal(lo[1], [[0, 0, 0, 0], [0, 2, 2, 0], [0, 2, 2, 0], [0, 0, 0, 0]])
    vol = Volume.from_array(x, spacing=(3.0, 0.5, 0.5), origin=(1.0, 1.0, 1.0))
    rv = pp.resize_inplane(vol, (4, 4), order=3)
    assert rv.spacing == pytest.approx((3.0, 1.0, 1.0))
    np.testing.assert_allclose(world(rv, (2, 1.5, 1.5)), world(vol, (2, 3.5, 3.5)))
    with pytest.raises(InputError, match="two positive integers"):
        pp.resize_inplane(x, (4, 0))


def test_zoom_errors():
    with pytest.raises(InputError, match=">= 1"):
        pp.zoom_to_shape(np.zeros((2, 2, 2)), (0, 2, 2))
    with pytest.raises(InputError, match="3D"):
        pp.zoom_to_shape(np.zeros((2, 2)), (2, 2, 2))
    with pytest.raises(InputError, match="NaN"):
        pp.zoom_to_shape(np.full((2, 2, 2), np.nan), (3, 3, 3))


# ---------------------------------------------------------------- crops
def test_foreground_bbox_margin_labels_clipping():
    m = np.zeros((6, 8, 10), dtype=np.uint8)
    m[2, 3, 4] = 1
    m[3, 5, 4] = 2
    assert pp.foreground_bbox(m, margin=(1, 1, 1)) == (slice(1, 5), slice(2, 7), slice(3, 6))
    assert pp.foreground_bbox(m, labels=[2]) == (slice(3, 4), slice(5, 6), slice(4, 5))
    m[0, 0, 9] = 1
    assert pp.foreground_bbox(m, margin=2) == (slice(0, 6), slice(0, 8), slice(2, 10))
    with pytest.raises(InputError, match="no voxels with labels"):
        pp.foreground_bbox(m, labels=[7])
    with pytest.raises(InputError, match="margin"):
        pp.foreground_bbox(m, margin=-1)


def test_crop_and_uncrop_bbox():
    vol = ramp_volume(origin=(1.0, 2.0, 3.0))
    box = (slice(1, 3), slice(2, 5), slice(0, 4))
    c = pp.crop(vol, box)
    assert c.shape == (2, 3, 4)
    np.testing.assert_array_equal(c.array, vol.array[1:3, 2:5, 0:4])
    np.testing.assert_allclose(world(c, (0, 0, 0)), world(vol, (1, 2, 0)))
    np.testing.assert_allclose(world(c, (1, 2, 3)), world(vol, (2, 4, 3)))
    u = pp.uncrop(c.array, box, vol.shape, fill=-1)
    np.testing.assert_array_equal(u[box], vol.array[box])
    outside = np.ones(vol.shape, bool)
    outside[box] = False
    assert (u[outside] == -1).all()
    uv = pp.uncrop(c, box, vol.shape)
    np.testing.assert_allclose(uv.affine, vol.affine, atol=1e-12)
    probs = np.stack([c.array, -c.array])  # leading channel axis is kept
    assert pp.uncrop(probs, box, vol.shape).shape == (2, *vol.shape)
    with pytest.raises(InputError, match="outside axis"):
        pp.crop(vol, (slice(0, 9), slice(None), slice(None)))
    with pytest.raises(InputError, match="full_shape is required"):
        pp.uncrop(c.array, box)
    with pytest.raises(InputError, match="differs from the crop size"):
        pp.uncrop(c.array[:1], box, vol.shape)


def test_crop_fixed_pads_and_uncrop_inverts():
    vol = ramp_volume(shape=(4, 10, 10), spacing=(3.0, 0.7, 0.7))
    c, rec = pp.crop_fixed(vol, center=(2, 1, 8), size=(None, 6, 6))
    assert rec.start == (0, -2, 5) and rec.size == (4, 6, 6) and rec.full_shape == (4, 10, 10)
    assert c.shape == (4, 6, 6)
    np.testing.assert_array_equal(c.array[:, 2:, :5], vol.array[:, 0:4, 5:10])
    fill = vol.array.min()
    assert (c.array[:, :2, :] == fill).all() and (c.array[:, :, 5] == fill).all()
    # world coordinates of crop voxel (1, 2, 0) == full voxel (1, 0, 5)
    np.testing.assert_allclose(world(c, (1, 2, 0)), world(vol, (1, 0, 5)), atol=1e-12)
    u = pp.uncrop(c.array, rec, fill=0)
    np.testing.assert_array_equal(u[:, 0:4, 5:10], vol.array[:, 0:4, 5:10])
    mask = np.zeros(vol.shape, bool)
    mask[:, 0:4, 5:10] = True
    assert (u[~mask] == 0).all()
    uv = pp.uncrop(c, rec)
    np.testing.assert_allclose(uv.affine, vol.affine, atol=1e-12)
    # window larger than the volume on every axis, explicit fill
    c2, rec2 = pp.crop_fixed(vol.array, (1.6, 5, 5), (8, 14, 3), fill=-1024)
    assert rec2.start == (-2, -2, 4) and c2.shape == (8, 14, 3)
    np.testing.assert_array_equal(c2[2:6, 2:12, :], vol.array[:, :, 4:7])
    assert (c2[:2] == -1024).all() and (c2[6:] == -1024).all()
    u2 = pp.uncrop(c2, rec2, fill=7)
    np.testing.assert_array_equal(u2[:, :, 4:7], vol.array[:, :, 4:7])
    assert (u2[:, :, :4] == 7).all() and (u2[:, :, 7:] == 7).all()
    with pytest.raises(InputError, match="cannot be stored"):
        pp.crop_fixed(np.zeros((2, 2, 2), np.uint8), (1, 1, 1), (4, 4, 4), fill=-1)
    with pytest.raises(InputError, match="cannot be stored"):
        pp.uncrop(c2.astype(np.int16), rec2, fill=0.5)
    with pytest.raises(InputError, match="does not overlap"):
        pp.crop_fixed(vol, (2, 50, 5), (None, 6, 6))


# ---------------------------------------------------------------- background slices
def test_remove_and_restore_background_slices():
    img = np.arange(16.0).reshape(4, 2, 2)
    lab = np.zeros((4, 2, 2), dtype=np.uint8)
    lab[1, 0, 1] = 1
    lab[3, 1, 1] = 2
    i2, l2, kept = pp.remove_background_slices(img, lab)
    np.testing.assert_array_equal(kept, [1, 3])
    np.testing.assert_array_equal(i2, img[[1, 3]])
    np.testing.assert_array_equal(l2, lab[[1, 3]])
    back = pp.restore_background_slices(l2, kept, 4)
    np.testing.assert_array_equal(back, lab)
    with pytest.raises(InputError, match="differ"):
        pp.remove_background_slices(img, lab[:3])
    with pytest.raises(InputError, match="kept_indices"):
        pp.restore_background_slices(l2, [1, 9], 4)


def test_resample_antialias_averages_when_downsampling() -> None:
    """Downsampling white noise 4x along D: with antialiasing the std drops (slices averaged), without it does not."""
    from ctdl.data.preprocess import resample

    rng = np.random.default_rng(0)
    vol = Volume.from_array(rng.normal(0, 10, (64, 16, 16)).astype(np.float32), spacing=(0.5, 1.0, 1.0))
    plain = resample(vol, (2.0, 1.0, 1.0), antialias=False).array
    smooth = resample(vol, (2.0, 1.0, 1.0)).array
    assert plain.shape == smooth.shape == (16, 16, 16)
    assert plain.std() > 6.0  # linear interpolation averages at most two neighbours (10 / sqrt 2)
    assert smooth.std() < 0.8 * plain.std() and smooth.std() < 5.5  # ~10 / sqrt(4): four slices averaged
    # a constant image is unchanged by antialiasing
    const = Volume.from_array(np.full((64, 8, 8), 7.0, np.float32), spacing=(0.5, 1.0, 1.0))
    assert np.allclose(resample(const, (2.0, 1.0, 1.0)).array, 7.0)


def test_cubic_zoom_keeps_border_values() -> None:
    # a constant -1000 HU volume stays -1000 everywhere (mode 'constant' would pull the borders toward 0)
    out = pp.zoom_to_shape(np.full((5, 6, 6), -1000.0, np.float32), (9, 11, 11), order=3)
    assert np.allclose(out, -1000.0, atol=1e-3)


def test_block_mean_of_integer_ct_is_exact_and_float32() -> None:
    """int16 CT is block-averaged without a float copy first: same values as a float64 reference."""
    rng = np.random.default_rng(1)
    arr = rng.integers(-1024, 3000, (25, 14, 9)).astype(np.int16)  # 25 = 4 x 6 + 1: a trailing partial block
    vol = Volume.from_array(arr, spacing=(0.5, 1.0, 1.0))
    out = pp._block_mean(vol, np.array([6, 2, 1]), order=1)
    assert out.array.dtype == np.float32 and out.shape == (5, 7, 9)
    ref = arr[:24].astype(np.float64).reshape(4, 6, 7, 2, 9).mean(axis=(1, 3))
    assert np.abs(out.array[:4] - ref).max() < 1e-3
    assert np.allclose(out.array[4], arr[24:].astype(np.float64).reshape(1, 7, 2, 9).mean(axis=(0, 2)), atol=1e-3)
    assert np.array_equal(out.array, pp._block_mean(Volume.from_array(arr.astype(np.float32), spacing=(0.5, 1.0, 1.0)),
                                                    np.array([6, 2, 1]), order=1).array)


def test_block_mean_of_a_flipped_view_equals_that_of_a_copy() -> None:
    """reorient(copy=False) hands a flipped view to the block mean: the blocks (a partial one included) are the
    copy's, and the view is not copied by the reduction."""
    rng = np.random.default_rng(2)
    arr = rng.integers(-1024, 3000, (23, 17, 19)).astype(np.int16)  # no axis a multiple of its block
    vol = Volume.from_array(arr, spacing=(0.5, 1.0, 1.0), direction=IPL)
    view = pp.reorient(vol, copy=False)
    assert np.shares_memory(view.array, arr) and view.array.strides[0] < 0
    copied = pp.reorient(vol)
    assert not np.shares_memory(copied.array, arr)
    k = np.array([3, 2, 4])
    a, b = pp._block_mean(view, k, order=1), pp._block_mean(copied, k, order=1)
    assert a.shape == (8, 9, 5) and np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine)
    assert np.isclose(a.array[0, 0, 0], arr[-3:, :2, :4].mean(dtype=np.float64), atol=1e-3)  # first block: last 3 slices
    assert np.isclose(a.array[-1, 0, 0], arr[:2, :2, :4].mean(dtype=np.float64), atol=1e-3)  # partial block of 2


def test_nearest_resampling_on_axis_aligned_grids_equals_scipy() -> None:
    """The separable nearest-neighbour path gives scipy's affine_transform(order=0, mode='nearest') exactly,
    ties (x.5) and flipped axes included; a rotated grid is not axis-aligned and goes to scipy."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(3)
    for t in range(200):
        src = rng.integers(0, 3, tuple(rng.integers(3, 20, 3))).astype(np.uint8)
        shape = tuple(int(v) for v in rng.integers(3, 40, 3))
        m = np.eye(4)
        for i in range(3):
            m[i, i] = rng.choice([1 / 6, 0.5, 1 / 3, 2.0, 1.0, rng.uniform(0.1, 3)]) * (-1 if t % 2 and i == 0 else 1)
            m[i, 3] = rng.choice([0.0, -5 / 12, 0.25, 0.5, rng.uniform(-3, 3)]) + (src.shape[i] - 1 if m[i, i] < 0 else 0)
        ref = ndi.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=0, mode="nearest")
        assert pp._axis_aligned(m, shape)
        assert np.array_equal(pp._nearest_separable(src, m, shape), ref), t
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(0.1), -np.sin(0.1)], [np.sin(0.1), np.cos(0.1)]]
    assert not pp._axis_aligned(rot, (10, 10, 10))
    # through the public function: labels upsampled 6 x 2 x 2 back onto a 0.5 x 0.75 x 0.75 mm reference grid
    lab = Volume.from_array(rng.integers(0, 3, (8, 10, 10)).astype(np.uint8), spacing=(3.0, 1.5, 1.5))
    ref_grid = pp.resample(Volume.from_array(np.zeros(lab.shape, np.float32), spacing=lab.spacing),
                           (0.5, 0.75, 0.75))  # the same extent, finer voxels
    out = pp.resample_to_reference(lab, ref_grid, is_label=True)
    assert out.shape == (48, 20, 20)
    assert np.array_equal(out.array, np.repeat(np.repeat(np.repeat(lab.array, 6, 0), 2, 1), 2, 2))
