"""Anchors checked against boxes computed by hand, for every aspect ratio and the extra ratio-1 box."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdl.detection.anchors import AnchorSpec, boxes_per_cell, layer_anchors, layer_scales


def test_layer_anchors_every_ratio_by_hand() -> None:
    # 100 x 100 image, 2 x 2 feature map: step 50, offset 0.5 -> centres 25 and 75
    a = layer_anchors((100, 100), (2, 2), scale=0.2, next_scale=0.45, ratios=[1.0, 2.0, 0.5], two_boxes_for_ar1=True)
    assert a.shape == (2 * 2 * 4, 4)
    r2 = math.sqrt(2.0)
    # per cell, DLAE's order: ratio 1 (20 x 20), the extra sqrt(0.2 * 0.45) * 100 = 30, ratio 2, ratio 0.5
    cell = [(20.0, 20.0), (30.0, 30.0), (20 * r2, 20 / r2), (20 / r2, 20 * r2)]
    centres = [(25, 25), (75, 25), (25, 75), (75, 75)]  # (cx, cy) in (row, col) order: row 0 first
    expected = np.array([(cx, cy, w, h) for cx, cy in centres for w, h in cell])
    np.testing.assert_allclose(a, expected, atol=1e-9)


def test_every_ratio_gets_its_own_size_dlae_bug_19() -> None:
    """DLAE's AnchorBoxes returned inside the ratio loop: every anchor had the first ratio's size. Fixed."""
    a = layer_anchors((64, 64), (1, 1), 0.5, 0.5, [0.5, 1.0, 2.0, 3.0], two_boxes_for_ar1=False)
    w, h = a[:, 2], a[:, 3]
    np.testing.assert_allclose(w / h, [0.5, 1.0, 2.0, 3.0], rtol=1e-12)
    np.testing.assert_allclose(w * h, [32.0 * 32.0] * 4, rtol=1e-12)  # same area s^2 size^2 for every ratio
    # ratio 1 first with two boxes and more ratios after it (DLAE crashed here)
    b = layer_anchors((64, 64), (1, 1), 0.25, 1.0, [1.0, 2.0], two_boxes_for_ar1=True)
    np.testing.assert_allclose(b[:, 2:], [[16, 16], [32, 32], [16 * math.sqrt(2), 16 / math.sqrt(2)]], atol=1e-9)


def test_steps_offsets_clip_normalize_rectangular() -> None:
    # 60 rows x 80 cols, map 3 x 4, explicit step (20, 20) and offset (0, 0.5); size = min = 60
    a = layer_anchors((60, 80), (3, 4), 0.5, 0.5, [1.0], False, step=(20, 20), offset=(0.0, 0.5))
    np.testing.assert_allclose(a[:, 0].reshape(3, 4)[0], [10, 30, 50, 70])
    np.testing.assert_allclose(a[:, 1].reshape(3, 4)[:, 0], [0, 20, 40])
    np.testing.assert_allclose(a[:, 2:], 30.0)
    c = layer_anchors((60, 80), (3, 4), 0.5, 0.5, [1.0], False, step=(20, 20), offset=(0.0, 0.5), clip_boxes=True)
    # first anchor: centre (10, 0), 30 x 30 -> corners (-5, -15, 25, 15) clipped to (0, 0, 25, 15)
    np.testing.assert_allclose(c[0], [12.5, 7.5, 25.0, 15.0])
    # last: centre (70, 40) -> (55, 25, 85, 55) clipped to x <= 79
    np.testing.assert_allclose(c[-1], [(55 + 79) / 2, 40, 24, 30])
    n = layer_anchors((60, 80), (3, 4), 0.5, 0.5, [1.0], False, step=(20, 20), offset=(0.0, 0.5), normalize=True)
    np.testing.assert_allclose(n, a / np.array([80, 60, 80, 60]))


def test_scales_and_spec() -> None:
    np.testing.assert_allclose(layer_scales([0.9, 0.1], 4), [0.1, 0.3, 0.5, 0.7, 0.9])
    assert layer_scales([0.1, 0.2, 0.3], 2, "per_layer") == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="n_layers \\+ 1 = 3"):
        layer_scales([0.1, 0.2], 2, "per_layer")
    assert boxes_per_cell([1.0, 2.0, 0.5], True) == 4 and boxes_per_cell([2.0, 0.5], True) == 2
    spec = AnchorSpec(scales=[0.2, 0.6], aspect_ratios=[[1.0], [1.0, 2.0]], two_boxes_for_ar1=True,
                      steps=[8, 16], offsets=[0.5, (0.25, 0.75)])
    a = spec.anchors((32, 32), [(4, 4), (2, 2)])
    assert a.shape == (4 * 4 * 2 + 2 * 2 * 3, 4)
    # layer 2: scale 0.4, next 0.6, step 16, offset (0.25 rows, 0.75 cols): first centre (x 12, y 4)
    np.testing.assert_allclose(a[32], [12, 4, 0.4 * 32, 0.4 * 32])
    np.testing.assert_allclose(a[33, 2], math.sqrt(0.4 * 0.6) * 32)
    # steps and offsets survive a round trip through plain values (DLAE's get_config dropped them)
    assert AnchorSpec(**spec.to_dict()).anchors((32, 32), [(4, 4), (2, 2)]).tolist() == a.tolist()
