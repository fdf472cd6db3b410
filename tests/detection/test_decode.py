"""Decoding: per-class NMS on hand-made boxes, confidence threshold, top-k, max outputs, agreement with MONAI."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data.box_utils import non_max_suppression

from ctdl.detection.boxes import encode_boxes
from ctdl.detection.decode import decode_detections, greedy_nms, nms_per_class


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nms_hand_case() -> None:
    boxes = torch.tensor([[0, 0, 10, 10],     # 0: best
                          [1, 0, 11, 10],     # 1: IoU 9/11 with 0 -> dropped
                          [5, 0, 15, 10],     # 2: IoU 1/3 with 0 -> kept at 0.45
                          [30, 30, 40, 40],   # 3: alone -> kept
                          [0, 0, 10, 10]], dtype=torch.float32)  # 4: duplicate of 0, other class -> kept
    scores = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.5])
    labels = torch.tensor([1, 1, 1, 1, 2])
    assert greedy_nms(boxes[:4], scores[:4], 0.45).tolist() == [0, 2, 3]
    assert greedy_nms(boxes[:4], scores[:4], 0.3).tolist() == [0, 3]  # 1/3 > 0.3 drops box 2 too
    assert greedy_nms(boxes[:4], scores[:4], 0.45, max_outputs=2).tolist() == [0, 2]
    assert nms_per_class(boxes, scores, labels, 0.45).tolist() == [0, 2, 4, 3]  # best first over classes


def test_nms_agrees_with_monai() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        xy = torch.rand(120, 2, generator=g) * 80
        b = torch.cat([xy, xy + 2 + torch.rand(120, 2, generator=g) * 25], 1)
        s = torch.rand(120, generator=g)
        assert torch.equal(greedy_nms(b, s, 0.45), non_max_suppression(b, s, 0.45))


def test_decode_detections_threshold_topk_and_boxes() -> None:
    anchors = torch.tensor([[10.0, 10.0, 10.0, 10.0], [11.0, 10.0, 10.0, 10.0], [50.0, 50.0, 20.0, 20.0]])
    target = torch.tensor([[45.0, 42.0, 61.0, 58.0]])
    offs = torch.zeros(1, 3, 4)
    offs[0, 2] = encode_boxes(target, anchors[2:3])[0]
    # class probabilities (bg, 1, 2) via logs: anchor 0 class 1 0.8, anchor 1 class 1 0.7 (overlaps 0), anchor 2 class 2 0.6
    p = torch.tensor([[[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.2, 0.2, 0.6]]])
    out = decode_detections(p.log(), offs, anchors, confidence_threshold=0.15, iou_threshold=0.45, top_k=10)[0]
    # class 1: 0.8 kept, 0.7 suppressed (IoU 9/11), anchor 2 class 1 0.2 kept; class 2: 0.6 kept, 0.1s below 0.15
    assert out["labels"].tolist() == [1, 2, 1]
    assert torch.allclose(out["scores"], torch.tensor([0.8, 0.6, 0.2]), atol=1e-6)
    assert torch.allclose(out["boxes"][1], target[0], atol=1e-4)
    assert torch.allclose(out["boxes"][0], torch.tensor([5.0, 5.0, 15.0, 15.0]), atol=1e-5)
    top1 = decode_detections(p.log(), offs, anchors, confidence_threshold=0.15, top_k=1)[0]
    assert top1["scores"].tolist() == [out["scores"][0].item()]
    per_class_1 = decode_detections(p.log(), offs, anchors, confidence_threshold=0.15, iou_threshold=0.99,
                                    max_outputs=1)[0]
    assert sorted(per_class_1["labels"].tolist()) == [1, 2]  # max_outputs bounds each class
    # normalised coordinates are scaled back to pixels
    scaled = decode_detections(p.log(), offs, anchors / 100, confidence_threshold=0.5, scale_xy=(100, 100))[0]
    assert torch.allclose(scaled["boxes"][0], torch.tensor([5.0, 5.0, 15.0, 15.0]), atol=1e-4)
    assert math.isclose(float(scaled["scores"][0]), 0.8, rel_tol=1e-6)
