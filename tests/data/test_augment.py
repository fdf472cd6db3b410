"""Tests for ctdl.data.augment: image and label move together; replayable from a seed."""

from __future__ import annotations

import numpy as np

from ctdl.config.schema import AugmentationConfig
from ctdl.data.augment import apply_augmentation, build_augmentation


def _pair() -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((4, 16, 16), np.int64)
    lab[:, 4:8, 2:6] = 1
    img = lab[None].astype(np.float32) * 10
    return img, lab


def test_flip_moves_image_and_label_together() -> None:
    aug = build_augmentation(AugmentationConfig(flip_axes=[2], flip_prob=1.0))
    img, lab = _pair()
    a, b = apply_augmentation(aug, img, lab)
    assert np.array_equal(b, lab[:, :, ::-1])
    assert np.array_equal(a[0] / 10, b)


def test_affine_keeps_labels_aligned_and_integer() -> None:
    cfg = AugmentationConfig(flip_axes=[], rotation_deg=10, zoom=0.1, shift_px=2, prob=1.0)
    aug = build_augmentation(cfg)
    img, lab = _pair()
    aug.set_random_state(seed=3)
    a, b = apply_augmentation(aug, img, lab)
    assert set(np.unique(b)) <= {0, 1}
    # the image (10 * mask) and the nearest-interpolated label agree on most voxels
    agree = ((a[0] > 5) == (b == 1)).mean()
    assert agree > 0.95
    aug.set_random_state(seed=3)
    a2, b2 = apply_augmentation(aug, img, lab)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)


def test_discrete_rotation_choices_and_disabled() -> None:
    aug = build_augmentation(AugmentationConfig(flip_axes=[], rotation_choices=[0.0]))
    img, lab = _pair()
    a, b = apply_augmentation(aug, img, lab)
    assert np.array_equal(b, lab)  # angle 0 only: unchanged
    assert build_augmentation(AugmentationConfig(enabled=False)) is None
