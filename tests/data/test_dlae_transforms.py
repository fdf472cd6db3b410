"""DLAE preprocessing and affine augmentation with the manual's meaning (reference sections 3, 4 and 10)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdl.config.schema import AugmentationConfig
from ctdl.data.augment import apply_augmentation, build_augmentation
from ctdl.data.dlae_transforms import (
    DlaeAffine,
    center_scale,
    dlae_affine_matrix,
    dlae_sample_chain,
    one_hot,
    repeat_channels,
    zca_whiten,
)
from ctdl.errors import InputError


def test_samplewise_centring_and_std_on_integer_image() -> None:
    # bug 3: the original's in-place ops failed on integer images
    x = np.array([[[0, 2], [4, 6]]], dtype=np.int16)
    out = center_scale(x, "samplewise", "samplewise")
    expect = (np.array([-3, -1, 1, 3]) / (math.sqrt(5) + 1e-6)).reshape(1, 2, 2)
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    assert out.dtype == np.float32


def test_featurewise_is_per_channel_of_the_sample() -> None:
    # bug 3: featurewise always raised; meant per channel of the same sample
    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(5, 2, (8, 8)), rng.normal(-100, 30, (8, 8))]).astype(np.float32)
    out = center_scale(x, "featurewise", "featurewise")
    np.testing.assert_allclose(out.mean(axis=(1, 2)), [0, 0], atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), [1, 1], atol=1e-4)
    samplewise = center_scale(x, "samplewise", "samplewise")
    assert abs(samplewise[0].mean()) > 0.5  # one scalar for the sample leaves channel means apart


def test_repeat_channels_kept_in_every_split() -> None:
    # bug 4: "keep channel 0" undid repeat_X in training only; here repeat is a pure function of the sample
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    out = dlae_sample_chain(x, repeat=3)
    assert out.shape == (3, 3, 4)
    for c in range(3):
        np.testing.assert_array_equal(out[c], x[0])
    assert repeat_channels(np.zeros((2, 5, 5)), 2).shape == (4, 5, 5)


def test_zca_whitens_rows_by_cols() -> None:
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(6, 6))
    x = (rng.normal(size=(200, 6)) @ mix).T.reshape(1, 6, 200).transpose(0, 2, 1)  # (1, H=200, W=6), correlated cols
    out = zca_whiten(x.astype(np.float32), 1e-8)
    flat = out[0].astype(np.float64)
    cov = flat.T @ flat / flat.shape[0]
    np.testing.assert_allclose(cov, np.eye(6), atol=1e-3)
    vol = zca_whiten(np.stack([x[0], 2 * x[0]])[None].astype(np.float32), 1e-8)  # (1, D=2, H, W): per slice
    np.testing.assert_allclose(vol[0, 0], vol[0, 1], atol=1e-3)  # whitening removes the scale


def test_one_hot_values_and_range_error() -> None:
    lab = np.array([[0, 2], [1, 2]])[..., None]  # DLAE (r, c, 1)
    oh = one_hot(lab, 3)
    assert oh.shape == (3, 2, 2)
    np.testing.assert_array_equal(oh.argmax(0), lab[..., 0])
    np.testing.assert_array_equal(oh.sum(0), np.ones((2, 2)))
    with pytest.raises(InputError, match="0..1"):
        one_hot(lab, 2)


def test_rotation_in_degrees_about_the_centre() -> None:
    a = np.arange(25, dtype=np.float64).reshape(5, 5)
    m = dlae_affine_matrix(90, 0, 0, 0, 1, 1, 5, 5)
    aff = DlaeAffine()
    params = {"theta": 90.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0, "hflip": False,
              "vflip": False, "brightness": 1.0, "channel_shift": np.zeros(1)}
    out = aff.apply(a[None], params)[0]
    np.testing.assert_allclose(out, np.rot90(a, k=-1), atol=1e-9)  # an exact quarter turn, no pixel offset
    assert m.shape == (3, 3)


def test_shear_is_degrees_and_shift_is_pixels() -> None:
    # bug 27: shear in degrees (the manual said radians)
    m = dlae_affine_matrix(0, 0, 0, 30, 1, 1, 9, 9)
    np.testing.assert_allclose(m[:2, :2], [[1, -0.5], [0, math.cos(math.radians(30))]], atol=1e-12)
    a = np.arange(36, dtype=np.float64).reshape(6, 6)
    params = {"theta": 0.0, "tx": 2.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0, "hflip": False,
              "vflip": False, "brightness": 1.0, "channel_shift": np.zeros(1)}
    out = DlaeAffine(fill_mode="wrap").apply(a[None], params)[0]
    np.testing.assert_allclose(out, np.roll(a, -2, axis=0), atol=1e-9)  # rows taken from r + 2, wrapped
    near = DlaeAffine(fill_mode="nearest").apply(a[None], params)[0]
    np.testing.assert_allclose(near[-2:], np.stack([a[-1], a[-1]]), atol=1e-9)


def test_shift_fraction_or_pixels_and_zoom_per_axis() -> None:
    frac = DlaeAffine(height_shift=0.25, width_shift=3, zoom=0.2, seed=0)
    draws = [frac.draw(40, 50) for _ in range(300)]
    tx = np.array([d["tx"] for d in draws])
    ty = np.array([d["ty"] for d in draws])
    assert 9 < np.abs(tx).max() <= 10  # 0.25 of 40 rows
    assert 2.5 < np.abs(ty).max() <= 3  # 3 pixels
    zx = np.array([d["zx"] for d in draws])
    zy = np.array([d["zy"] for d in draws])
    assert zx.min() >= 0.8 and zx.max() <= 1.2
    assert np.abs(zx - zy).max() > 0.1  # rows and columns zoomed independently


def test_image_and_label_get_the_same_transform_without_new_labels() -> None:
    lab = np.zeros((1, 40, 40), np.int64)
    lab[0, 10:30, 12:25] = 1
    lab[0, 15:20, 15:20] = 3
    aug = DlaeAffine(rotation=30, height_shift=0.1, width_shift=0.1, shear=10, zoom=0.2, horizontal_flip=True,
                     vertical_flip=True, fill_mode="constant")
    for seed in range(5):
        aug.set_random_state(seed)
        out = aug({"image": lab.astype(np.float32), "label": lab})
        assert set(np.unique(out["label"])) <= {0, 1, 3}  # nearest: no interpolation artefacts
        agree = np.mean(np.rint(out["image"][0]) == out["label"][0])
        assert agree > 0.95  # same geometry for both
    a = DlaeAffine(rotation=30, seed=3)({"image": lab.astype(np.float32), "label": lab})
    b = DlaeAffine(rotation=30, seed=3)({"image": lab.astype(np.float32), "label": lab})
    np.testing.assert_array_equal(a["label"], b["label"])  # seeded (bug 22's spirit: reproducible draws)


def test_3d_is_the_2d_transform_slice_by_slice() -> None:
    rng = np.random.default_rng(4)
    plane = rng.normal(size=(24, 20)).astype(np.float32)
    vol = np.stack([plane, 2 * plane, plane])[None]  # (1, D=3, H, W)
    aug = DlaeAffine(rotation=20, zoom=0.1, height_shift=0.1, seed=7)
    params = aug.draw(24, 20)
    out = aug.apply(vol, params)
    one = aug.apply(plane[None], params)[0]
    np.testing.assert_allclose(out[0, 0], one, atol=1e-5)
    np.testing.assert_allclose(out[0, 1], 2 * one, atol=1e-4)
    np.testing.assert_allclose(out[0, 2], one, atol=1e-5)


def test_brightness_and_channel_shift_are_applied() -> None:
    # bug 6: brightness and channel shift were never applied
    x = np.ones((2, 4, 4), np.float32)
    aug = DlaeAffine(brightness_range=(2.0, 2.0), channel_shift=0.5, seed=0)
    out = aug({"image": x, "label": np.zeros((1, 4, 4), np.int64)})
    vals = out["image"].reshape(2, -1)
    assert np.allclose(vals, vals[:, :1])  # a constant per channel
    shift = vals[:, 0] - 2.0
    assert np.all(np.abs(shift) <= 0.5) and abs(shift[0] - shift[1]) > 0
    np.testing.assert_array_equal(out["label"], 0)  # the label map is not touched by intensity changes


def test_config_hook_builds_the_dlae_affine() -> None:
    cfg = AugmentationConfig(affine="dlae", rotation_deg=15, shear_deg=5, zoom=0.1, height_shift=0.1, width_shift=2,
                             flip_axes=[1, 2], fill_mode="reflect")
    aug = build_augmentation(cfg, dims=2)
    assert isinstance(aug, DlaeAffine)
    assert aug.hflip and aug.vflip and aug.fill_mode == "reflect" and aug.width_shift == 2
    aug.set_random_state(seed=1)
    img = np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32)
    lab = (img[0] > 0).astype(np.int64)
    out_img, out_lab = apply_augmentation(aug, img, lab)
    assert out_img.shape == (1, 16, 16) and out_lab.shape == (16, 16) and set(np.unique(out_lab)) <= {0, 1}
    assert build_augmentation(AugmentationConfig(affine="dlae", enabled=False)) is None
    with pytest.raises(InputError, match="zoom"):
        DlaeAffine(zoom=1.5)


def test_regression_points_move_with_the_image() -> None:
    # bug 7: augmentation did not move CNN regression targets (coordinates)
    aug = DlaeAffine(rotation=40, height_shift=0.1, width_shift=0.1, shear=10, zoom=0.2, horizontal_flip=True,
                     vertical_flip=True, fill_mode="constant", seed=11)
    for _ in range(5):
        img = np.zeros((1, 41, 37), np.float32)
        img[0, 14, 22] = 1.0
        params = aug.draw(41, 37)
        out = aug.apply(img, params, is_label=True)  # nearest: the pixel lands on one output pixel (or is lost)
        moved = aug.apply_points(np.array([14.0, 22.0]), params, 41, 37)
        hits = np.argwhere(out[0] > 0)
        assert len(hits) >= 1
        assert np.abs(hits - moved).max(axis=1).min() <= 1.0
