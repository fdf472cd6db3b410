"""Detection metrics: AP (VOC all-point, COCO 101-point) against a hand-computed example and pycocotools,
mAP, FROC / recall at a number of false positives per image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdl.metrics.detection import average_precision, box_iou_np, froc, mean_average_precision, recall_at_fp


def _hand_case():
    gts = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), "labels": np.array([1, 1])},
           {"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([1])}]
    dets = [{"boxes": np.array([[0, 0, 10, 10], [1, 1, 10, 10], [40, 40, 50, 50]], float),
             "scores": np.array([0.9, 0.8, 0.5]), "labels": np.array([1, 1, 1])},
            {"boxes": np.array([[50, 50, 60, 60], [0, 0, 10, 9]], float),
             "scores": np.array([0.7, 0.6]), "labels": np.array([1, 1])}]
    return dets, gts


def test_ap_hand_computed() -> None:
    # ranked: TP (0.9), FP duplicate (0.8), FP (0.7), TP IoU 0.9 (0.6), FP (0.5); 3 GT boxes
    # precision 1, 1/2, 1/3, 1/2, 2/5; recall 1/3, 1/3, 1/3, 2/3, 2/3
    # VOC all-point: 1/3 * 1 + 1/3 * 1/2 = 0.5; COCO: (34 * 1 + 33 * 0.5 + 34 * 0) / 101
    dets, gts = _hand_case()
    assert average_precision(dets, gts, 1, 0.5, "voc") == pytest.approx(0.5, abs=1e-12)
    assert average_precision(dets, gts, 1, 0.5, "coco") == pytest.approx(50.5 / 101, abs=1e-12)
    # class 2 has no GT -> NaN and left out of the mean; a class with GT but no detection -> 0
    m, per = mean_average_precision(dets, gts, [1, 2], 0.5, "voc")
    assert math.isnan(per[2]) and m == pytest.approx(0.5)
    gts2 = [dict(g) for g in gts]
    gts2[1] = {"boxes": np.array([[0, 0, 10, 10], [5, 5, 8, 8]], float), "labels": np.array([1, 3])}
    assert average_precision(dets, gts2, 3) == 0.0


def test_froc_by_hand() -> None:
    dets, gts = _hand_case()
    # 2 images: cumulative FP per image 0, .5, 1, 1, 1.5 with TPs 1, 1, 1, 2, 2 (of 3)
    f = froc(dets, gts, 1, [0.125, 0.5, 1.0, 2.0])
    assert f == pytest.approx({0.125: 1 / 3, 0.5: 1 / 3, 1.0: 2 / 3, 2.0: 2 / 3})
    assert recall_at_fp(dets, gts, 1, 1.0) == pytest.approx(2 / 3)


def test_iou_np() -> None:
    np.testing.assert_allclose(box_iou_np([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 0, 0]]), [[1 / 3, 0.0]])


def test_ap_matches_pycocotools_on_random_detections() -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    images, annotations, results, dets, gts = [], [], [], [], []
    aid = 1
    for i in range(12):
        images.append({"id": i, "width": 128, "height": 128})
        g = rng.integers(1, 4)
        xy = rng.uniform(0, 90, (g, 2))
        wh = rng.uniform(8, 35, (g, 2))
        gb = np.concatenate([xy, xy + wh], 1)
        gl = rng.integers(1, 3, g)
        for b, c in zip(gb, gl):
            annotations.append({"id": aid, "image_id": i, "category_id": int(c), "iscrowd": 0,
                                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                "area": float((b[2] - b[0]) * (b[3] - b[1]))})
            aid += 1
        # detections: jittered copies of the truth plus random boxes, random scores
        k = int(rng.integers(2, 8))
        jit = np.concatenate([gb + rng.normal(0, 4, gb.shape), np.concatenate([rng.uniform(0, 90, (k, 2))] * 2, 1)
                              + np.concatenate([np.zeros((k, 2)), rng.uniform(8, 35, (k, 2))], 1)])
        jit[:, 2:] = np.maximum(jit[:, 2:], jit[:, :2] + 1)
        dl = np.concatenate([gl, rng.integers(1, 3, k)])
        ds = rng.uniform(0, 1, len(dl))
        for b, c, s in zip(jit, dl, ds):
            results.append({"image_id": i, "category_id": int(c), "score": float(s),
                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
        dets.append({"boxes": jit, "scores": ds, "labels": dl})
        gts.append({"boxes": gb, "labels": gl})
    coco = coco_mod.COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [100]
    ev.evaluate()
    ev.accumulate()
    for ci, c in enumerate([1, 2]):
        ref = float(np.mean(ev.eval["precision"][0, :, ci, 0, 0]))
        assert average_precision(dets, gts, c, 0.5, "coco") == pytest.approx(ref, abs=1e-6)
