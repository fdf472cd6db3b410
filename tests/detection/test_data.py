"""Box data: boxes from label maps, DLAE HDF5 annotations (class ids from 1), flips, the seeded loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctdl.detection.data import BoxLoader, BoxSample, boxes_from_label, flip_boxes_lr, samples_from_dlae, slices_from_volume
from ctdl.errors import InputError


def test_boxes_from_label_components_nested_and_min_size() -> None:
    lab = np.zeros((20, 30), np.uint8)
    lab[2:8, 3:10] = 1      # kidney A, with a tumour inside
    lab[4:6, 5:7] = 2
    lab[12:18, 20:28] = 1   # kidney B
    lab[0, 29] = 2          # a 1-pixel tumour: dropped by min_size 2
    b = boxes_from_label(lab, 3, nested=True, min_size=2)
    assert b.tolist() == [[1, 3, 2, 10, 8], [1, 20, 12, 28, 18], [2, 5, 4, 7, 6]]
    # not nested: the kidney mask excludes the tumour pixels (same box here), and min_size 1 keeps the dot
    b2 = boxes_from_label(lab, 3, nested=False, min_size=1)
    assert [2, 29, 0, 30, 1] in b2.tolist() and len(b2) == 4


def test_dlae_annotations_class_ids_from_one_bug_27() -> None:
    img = np.zeros((40, 80, 1), np.float32)
    ann = np.array([[1, 8, 4, 40, 20], [2, 10, 10, 10, 30]], np.float32)  # second box degenerate (w = 0)
    s = samples_from_dlae([img], [ann], (20, 40))[0]
    assert s.image.shape == (1, 20, 40)
    np.testing.assert_allclose(s.boxes, [[1, 4, 2, 20, 10]])  # scaled by 0.5, degenerate box dropped
    assert s.scale_yx == (2.0, 2.0)
    with pytest.raises(InputError, match="class ids start at 1"):
        samples_from_dlae([img], [np.array([[0, 1, 1, 5, 5]], np.float32)], (20, 40))
    with pytest.raises(InputError, match="expected \\(n_boxes, 5\\)"):
        samples_from_dlae([img], [np.array([[1, 1, 5, 5]], np.float32)], (20, 40))


def test_slices_flip_and_loader() -> None:
    image = np.random.default_rng(0).random((1, 3, 16, 16)).astype(np.float32)
    label = np.zeros((3, 16, 16), np.uint8)
    label[1, 2:6, 4:12] = 1
    s = slices_from_volume(image, label, "c1", 2, (8, 8), axis=0)
    assert [len(x.boxes) for x in s] == [0, 1, 0] and s[1].boxes.tolist() == [[1, 2, 1, 6, 3]]
    assert flip_boxes_lr(np.array([[1, 2, 1, 6, 3]], np.float32), 8).tolist() == [[1, 2, 1, 6, 3]]
    assert flip_boxes_lr(np.array([[1, 0, 1, 3, 3]], np.float32), 8).tolist() == [[1, 5, 1, 8, 3]]
    samples = [BoxSample(np.full((1, 4, 4), i, np.float32), np.array([[1, 0, 0, 1, 2]], np.float32)) for i in range(5)]
    l1 = list(BoxLoader(samples, 2, seed=0, epoch=3, flip_prob=0.5))
    l2 = list(BoxLoader(samples, 2, seed=0, epoch=3, flip_prob=0.5))
    assert len(l1) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(l1, l2))  # a function of (seed, epoch)
    x, boxes = l1[0]
    assert x.shape == (2, 1, 4, 4) and isinstance(boxes, list) and boxes[0].shape == (1, 5)
    flipped = [b for _, bs in l1 for b in bs if b[0, 1] == 3]
    assert flipped, "flip_prob 0.5 on 5 samples flips some box (x 0..1 -> 3..4)"
