"""Matching (bipartite + threshold + neutral band) and box encoding/decoding round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctdl.detection.anchors import layer_anchors
from ctdl.detection.boxes import (box_iou, decode_boxes, encode_boxes, encode_targets, match_anchors, to_centroids,
                                  to_corners)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_box_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [[50 / 150, 0.0, 1.0]], atol=1e-7)
    assert box_iou(a, b[:0]).shape == (1, 0)


def test_matching_bipartite_threshold_neutral() -> None:
    anchors = torch.tensor([
        [0, 0, 10, 10],    # 0: IoU 1.0 with box A
        [1, 0, 11, 10],    # 1: IoU 9/11 = 0.818 with A -> positive by threshold
        [4, 0, 14, 10],    # 2: IoU 6/14 = 0.43 with A -> neutral (0.3 <= IoU < 0.5)
        [8, 0, 18, 10],    # 3: IoU 2/18 = 0.11 with A -> background
        [50, 50, 60, 60],  # 4: only anchor touching box B (IoU 25/2575 < 0.5), still B's bipartite match
        [200, 200, 210, 210],  # 5: nothing -> background
    ], dtype=torch.float32)
    gt = torch.tensor([[0, 0, 10, 10], [55, 55, 105, 105]], dtype=torch.float32)
    labels, matched = match_anchors(gt, torch.tensor([1, 2]), anchors, pos_iou_threshold=0.5, neg_iou_limit=0.3)
    assert labels.tolist() == [1, 1, -1, 0, 2, 0]
    assert matched.tolist() == [0, 0, -1, -1, 1, -1]


def test_bipartite_gives_each_box_its_own_anchor() -> None:
    # two boxes whose best anchor is the same: the greedy step takes the global best pair first,
    # then the other box gets its next best anchor
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 12, 12]], dtype=torch.float32)
    gt = torch.tensor([[0, 0, 10, 10], [0, 0, 11, 11]], dtype=torch.float32)
    labels, matched = match_anchors(gt, torch.tensor([1, 1]), anchors, 0.99, 0.3)
    assert sorted(matched.tolist()) == [0, 1] and matched[0] == 0


def test_encode_decode_round_trip() -> None:
    anchors = torch.as_tensor(layer_anchors((64, 64), (4, 4), 0.3, 0.5, [1.0, 2.0, 0.5], True), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(len(anchors), 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 2 + torch.rand(len(anchors), 2, generator=g) * 30], 1)
    for v in [(0.1, 0.1, 0.2, 0.2), (1.0, 1.0, 1.0, 1.0)]:
        enc = encode_boxes(boxes, anchors, v)
        np.testing.assert_allclose(decode_boxes(enc, anchors, v).numpy(), boxes.numpy(), atol=1e-4, rtol=1e-5)
    # a box equal to its anchor encodes to zeros; the known offsets of a shifted box
    a = torch.tensor([[20.0, 30.0, 10.0, 8.0]])
    box = to_corners(torch.tensor([[22.0, 29.0, 20.0, 4.0]]))
    enc = encode_boxes(box, a, (0.1, 0.1, 0.2, 0.2))
    np.testing.assert_allclose(enc.numpy(), [[2 / 10 / 0.1, -1 / 8 / 0.1, np.log(2) / 0.2, np.log(0.5) / 0.2]], rtol=1e-6)
    np.testing.assert_allclose(to_centroids(to_corners(a)).numpy(), a.numpy())


def test_match_encode_decode_gives_boxes_back() -> None:
    anchors = torch.as_tensor(layer_anchors((128, 128), (8, 8), 0.2, 0.4, [1.0, 2.0, 0.5], True), dtype=torch.float32)
    gt = torch.tensor([[1, 10.5, 20.25, 40.0, 41.0], [2, 70.0, 60.0, 90.0, 100.0]])
    labels, offsets = encode_targets([gt], anchors, (0.1, 0.1, 0.2, 0.2), 0.5, 0.3)
    pos = labels[0] > 0
    assert set(labels[0][pos].tolist()) == {1, 2}
    dec = decode_boxes(offsets[0][pos], anchors[pos], (0.1, 0.1, 0.2, 0.2))
    # every positive anchor decodes exactly to the box of its class
    for lab, box in zip(labels[0][pos].tolist(), dec):
        np.testing.assert_allclose(box.numpy(), gt[lab - 1, 1:].numpy(), atol=1e-5)
