"""Box data for detection: boxes from label maps (connected components per class per slice), DLAE BBD HDF5
samples, 2D slice examples, a seeded per-epoch batch loader with box-aware flips, and the collate rule.

A training batch is ``(images (B, C, H, W), [boxes_i (n_i, 5)])`` with rows (class id, xmin, ymin, xmax,
ymax) in pixels of the (resized) network input; the trainer moves both parts to the device unchanged.
Box corners are pixel edges: a component covering columns 3..5 has xmin 3 and xmax 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ctdl.errors import InputError


@dataclass
class BoxSample:
    """One 2D example: image (C, H, W) float32 and boxes (n, 5) float32, with where it came from."""

    image: np.ndarray
    boxes: np.ndarray
    case_id: str = ""
    index: int = 0  # slice index (label maps) or sample index (HDF5)
    scale_yx: tuple[float, float] = (1.0, 1.0)  # source pixels per network pixel (rows, cols)


def boxes_from_label(label: np.ndarray, n_classes: int, nested: bool = True, min_size: int = 1) -> np.ndarray:
    """Boxes (n, 5) of the 8-connected components of each class in a 2D label map (scipy.ndimage).

    ``nested``: class k's mask is ``label >= k`` (KiTS: a kidney box includes its tumour); otherwise
    ``label == k``. Components whose box is narrower than ``min_size`` pixels in either direction are dropped.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"boxes_from_label needs a 2D label map, got shape {label.shape}")
    rows = []
    struct = np.ones((3, 3), bool)
    for c in range(1, n_classes):
        mask = label >= c if nested else label == c
        if not mask.any():
            continue
        comp, _ = ndimage.label(mask, structure=struct)
        for sl in ndimage.find_objects(comp):
            if sl is None:
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            if min(y1 - y0, x1 - x0) < min_size:
                continue
            rows.append((c, x0, y0, x1, y1))
    return np.asarray(rows, np.float32).reshape(-1, 5)


def resize_slice(image: np.ndarray, size: tuple[int, int], label: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Bilinear image (C, h, w) and nearest label (h, w) resize to ``size`` (rows, cols)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.astype(np.float32, copy=False), label
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None], size=tuple(size),
                      mode="bilinear", align_corners=False)[0].numpy()
    lab = None
    if label is not None:
        lab = F.interpolate(torch.from_numpy(np.ascontiguousarray(label, np.float32))[None, None], size=tuple(size),
                            mode="nearest-exact")[0, 0].numpy().astype(np.uint8)
    return x, lab


def slices_from_volume(image: np.ndarray, label: np.ndarray | None, case_id: str, n_classes: int, size: tuple[int, int],
                       axis: int = 0, nested: bool = True, min_size: int = 1) -> list[BoxSample]:
    """Every slice along ``axis`` of a prepared case (image (C, D, H, W), label (D, H, W)) with its boxes."""
    img = np.moveaxis(image, axis + 1, 1)
    lab = None if label is None else np.moveaxis(label, axis, 0)
    out = []
    for k in range(img.shape[1]):
        x, y = resize_slice(img[:, k], size, None if lab is None else lab[k])
        boxes = np.zeros((0, 5), np.float32) if y is None else boxes_from_label(y, n_classes, nested, min_size)
        scale = (img.shape[2] / size[0], img.shape[3] / size[1])
        out.append(BoxSample(x, boxes, case_id, k, scale))
    return out


def samples_from_dlae(images: Sequence[np.ndarray], annotations: Sequence[np.ndarray] | None, size: tuple[int, int],
                      source: str = "hdf5") -> list[BoxSample]:
    """DLAE BBD samples: images (rows, cols[, ch]) and annotations (n, 5) rows (class id >= 1, xmin, ymin, xmax,
    ymax) in pixels (DLAE's code needs ids from 1; its manual's "from 0" is wrong, bug table 27). Images are
    resized to ``size`` and boxes scaled with them; degenerate boxes are dropped (as DLAE's encoder does)."""
    out = []
    for i, a in enumerate(images):
        a = np.asarray(a, np.float32)
        if a.ndim == 2:
            a = a[None]
        elif a.ndim == 3:
            a = np.moveaxis(a, -1, 0)
        else:
            raise InputError(f"{source}: sample {i} has shape {a.shape}; expected (rows, cols[, channels])")
        boxes = np.zeros((0, 5), np.float32)
        if annotations is not None:
            b = np.asarray(annotations[i], np.float32)
            if b.size and (b.ndim != 2 or b.shape[1] != 5):
                raise InputError(f"{source}: annotation {i} has shape {b.shape}; expected (n_boxes, 5) = class, xmin, ymin, xmax, ymax")
            b = b.reshape(-1, 5)
            if b.size and (b[:, 0] < 1).any():
                raise InputError(f"{source}: annotation {i} has class id {b[:, 0].min():g}; class ids start at 1 (0 is background)")
            sy, sx = size[0] / a.shape[1], size[1] / a.shape[2]
            boxes = b * np.array([1, sx, sy, sx, sy], np.float32)
            boxes = boxes[(boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2])]
        h, w = a.shape[1:]
        x, _ = resize_slice(a, size)
        out.append(BoxSample(x, boxes, source, i, (h / size[0], w / size[1])))
    return out


def flip_boxes_lr(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes of a left-right flipped image: xmin' = W - xmax, xmax' = W - xmin."""
    b = boxes.copy()
    b[:, 1], b[:, 3] = width - boxes[:, 3], width - boxes[:, 1]
    return b


def collate(samples: Sequence[BoxSample]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(images stacked, list of per-image box tensors): boxes differ in number, so they stay a list."""
    return (torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32)),
            [torch.from_numpy(np.asarray(s.boxes, np.float32).reshape(-1, 5)) for s in samples])


class BoxLoader:
    """Batches of one epoch, shuffled and augmented from ``(seed, epoch)`` only (exact resume).

    Augmentation: left-right flip with probability ``flip_prob`` (DLAE's horizontal flip, boxes flipped too)
    and a multiplicative intensity jitter of up to ``intensity_scale``.
    """

    def __init__(self, samples: Sequence[BoxSample], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                 flip_prob: float = 0.5, intensity_scale: float = 0.0, steps: int | None = None) -> None:
        from ctdl.engine.trainer import epoch_seed

        self.samples = list(samples)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(epoch_seed(seed, epoch))
        n = len(self.samples)
        self.order = self.rng.permutation(n) if shuffle else np.arange(n)
        self.n_batches = (n + self.batch_size - 1) // self.batch_size
        if steps is not None:
            self.n_batches = min(self.n_batches, int(steps))
        self.flips = self.rng.random(n) < flip_prob
        self.gains = 1.0 + self.rng.uniform(-intensity_scale, intensity_scale, n) if intensity_scale else np.ones(n)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for b in range(self.n_batches):
            batch = []
            for j in self.order[b * self.batch_size:(b + 1) * self.batch_size]:
                s = self.samples[int(j)]
                img, boxes = s.image, s.boxes
                if self.flips[j]:
                    img, boxes = img[..., ::-1], flip_boxes_lr(boxes, img.shape[-1])
                if self.gains[j] != 1.0:
                    img = img * np.float32(self.gains[j])
                batch.append(BoxSample(np.ascontiguousarray(img), boxes))
            yield collate(batch)
