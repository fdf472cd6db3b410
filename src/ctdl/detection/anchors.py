"""SSD anchor (default) boxes, computed exactly as DLAE's encoder does, for every aspect ratio.

For feature layer k of size (f_h, f_w) on an (H, W) image, with size = min(H, W):

* ratio 1: w = h = s_k * size, plus (when ``two_boxes_for_ar1``) w = h = sqrt(s_k * s_{k+1}) * size
  placed right after it; other ratios: w = s_k * size * sqrt(ar), h = s_k * size / sqrt(ar);
* centres (offset + i) * step, step defaulting to (H / f_h, W / f_w) and offset to 0.5;
* optionally clipped to [0, W - 1] x [0, H - 1] and normalised by (W, H).

The flat order is (row, col, box), which is the order the SSD head reshapes its convolution
outputs into, so anchor n belongs to prediction n. Written by hand (MONAI's ``AnchorGenerator``
takes sizes and ratios, not DLAE's scale/step/offset rules, and has no second ratio-1 box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

Pair = Union[float, Sequence[float]]


def layer_scales(scales: Sequence[float], n_layers: int, scaling_type: str = "global") -> list[float]:
    """n_layers + 1 scales: DLAE 'global' sorts [min, max] and spreads them linearly; 'per_layer' takes them as given."""
    s = [float(v) for v in scales]
    if scaling_type == "global":
        if len(s) != 2:
            raise ValueError(f"global scaling needs [min, max] scales, got {s}")
        lo, hi = sorted(s)
        return [float(v) for v in np.linspace(lo, hi, n_layers + 1)]
    if len(s) != n_layers + 1:
        raise ValueError(f"per-layer scaling needs n_layers + 1 = {n_layers + 1} scales, got {len(s)}")
    return s


def layer_aspect_ratios(aspect_ratios: Sequence[Any], n_layers: int) -> list[list[float]]:
    """One list of ratios per layer, from a global list or a per-layer list of lists."""
    if aspect_ratios and all(isinstance(a, (list, tuple)) for a in aspect_ratios):
        if len(aspect_ratios) != n_layers:
            raise ValueError(f"{len(aspect_ratios)} per-layer aspect-ratio lists for {n_layers} feature layers")
        return [[float(r) for r in a] for a in aspect_ratios]
    return [[float(r) for r in aspect_ratios] for _ in range(n_layers)]


def boxes_per_cell(ratios: Sequence[float], two_boxes_for_ar1: bool) -> int:
    """DLAE n_boxes: one per ratio, plus one when 1.0 is among them and two_boxes_for_ar1 is set."""
    return len(ratios) + (1 if (two_boxes_for_ar1 and any(abs(r - 1.0) < 1e-12 for r in ratios)) else 0)


def _pair(v: Optional[Pair]) -> Optional[tuple[float, float]]:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v), float(v)
    a = [float(x) for x in v]
    if len(a) != 2:
        raise ValueError(f"a step/offset must be a scalar or (rows, cols), got {v!r}")
    return a[0], a[1]


def box_sizes(scale: float, next_scale: float, ratios: Sequence[float], size: float,
              two_boxes_for_ar1: bool) -> list[tuple[float, float]]:
    """(w, h) of the anchors of one cell, in DLAE's order (the extra ratio-1 box right after ratio 1)."""
    out: list[tuple[float, float]] = []
    for ar in ratios:
        if abs(ar - 1.0) < 1e-12:
            out.append((scale * size, scale * size))
            if two_boxes_for_ar1:
                s = math.sqrt(scale * next_scale) * size
                out.append((s, s))
        else:
            out.append((scale * size * math.sqrt(ar), scale * size / math.sqrt(ar)))
    return out


def layer_anchors(image_hw: tuple[int, int], feature_hw: tuple[int, int], scale: float, next_scale: float,
                  ratios: Sequence[float], two_boxes_for_ar1: bool = True, step: Optional[Pair] = None,
                  offset: Optional[Pair] = None, clip_boxes: bool = False, normalize: bool = False) -> np.ndarray:
    """Anchors of one feature layer as (f_h * f_w * n_boxes, 4) centroids (cx, cy, w, h)."""
    H, W = int(image_hw[0]), int(image_hw[1])
    fh, fw = int(feature_hw[0]), int(feature_hw[1])
    size = min(H, W)
    wh = np.asarray(box_sizes(scale, next_scale, ratios, size, two_boxes_for_ar1), np.float64)  # (n, 2)
    st = _pair(step) or (H / fh, W / fw)
    of = _pair(offset) or (0.5, 0.5)
    cy = (of[0] + np.arange(fh)) * st[0]
    cx = (of[1] + np.arange(fw)) * st[1]
    gy, gx = np.meshgrid(cy, cx, indexing="ij")  # (fh, fw)
    n = wh.shape[0]
    boxes = np.empty((fh, fw, n, 4), np.float64)
    boxes[..., 0] = gx[..., None]
    boxes[..., 1] = gy[..., None]
    boxes[..., 2] = wh[:, 0]
    boxes[..., 3] = wh[:, 1]
    boxes = boxes.reshape(-1, 4)
    if clip_boxes:
        c = centroids_to_corners(boxes)
        c[:, [0, 2]] = np.clip(c[:, [0, 2]], 0, W - 1)
        c[:, [1, 3]] = np.clip(c[:, [1, 3]], 0, H - 1)
        boxes = corners_to_centroids(c)
    if normalize:
        boxes = boxes / np.array([W, H, W, H], np.float64)
    return boxes


def centroids_to_corners(b: np.ndarray) -> np.ndarray:
    """(cx, cy, w, h) -> (xmin, ymin, xmax, ymax)."""
    b = np.asarray(b, np.float64)
    return np.stack([b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2,
                     b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2], -1)


def corners_to_centroids(b: np.ndarray) -> np.ndarray:
    """(xmin, ymin, xmax, ymax) -> (cx, cy, w, h)."""
    b = np.asarray(b, np.float64)
    return np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                     b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)


@dataclass
class AnchorSpec:
    """DLAE's anchor options (``bbd_options``) for a detector with ``n_layers`` feature layers."""

    scales: Sequence[float] = (0.1, 0.9)
    scaling_type: str = "global"
    aspect_ratios: Sequence[Any] = (1.0, 2.0, 0.5)
    two_boxes_for_ar1: bool = True
    steps: Optional[Sequence[Pair]] = None
    offsets: Optional[Sequence[Pair]] = None
    clip_boxes: bool = False
    normalize_coords: bool = False

    @classmethod
    def from_config(cls, det: Any) -> "AnchorSpec":
        """From a :class:`ctdl.config.schema.DetectionConfig`."""
        return cls(scales=list(det.scales), scaling_type=det.scaling_type, aspect_ratios=list(det.aspect_ratios),
                   two_boxes_for_ar1=det.two_boxes_for_ar1, steps=det.steps, offsets=det.offsets,
                   clip_boxes=det.clip_boxes, normalize_coords=det.normalize_coords)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (stored with the model so a reloaded model keeps steps and offsets, unlike DLAE's get_config)."""
        def plain(v: Any) -> Any:
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            return [plain(x) for x in v]
        return {k: plain(getattr(self, k)) for k in ("scales", "scaling_type", "aspect_ratios", "two_boxes_for_ar1",
                                                     "steps", "offsets", "clip_boxes", "normalize_coords")}

    def ratios(self, n_layers: int) -> list[list[float]]:
        return layer_aspect_ratios(list(self.aspect_ratios), n_layers)

    def boxes_per_layer(self, n_layers: int) -> list[int]:
        return [boxes_per_cell(r, self.two_boxes_for_ar1) for r in self.ratios(n_layers)]

    def anchors(self, image_hw: tuple[int, int], feature_hws: Sequence[tuple[int, int]]) -> np.ndarray:
        """All anchors, layer after layer, as (N, 4) centroids (cx, cy, w, h); normalised if ``normalize_coords``."""
        n = len(feature_hws)
        sc = layer_scales(self.scales, n, self.scaling_type)
        ars = self.ratios(n)
        if self.steps is not None and len(self.steps) != n:
            raise ValueError(f"{len(self.steps)} steps for {n} feature layers")
        if self.offsets is not None and len(self.offsets) != n:
            raise ValueError(f"{len(self.offsets)} offsets for {n} feature layers")
        out = [layer_anchors(image_hw, fhw, sc[k], sc[k + 1], ars[k], self.two_boxes_for_ar1,
                             None if self.steps is None else self.steps[k],
                             None if self.offsets is None else self.offsets[k], self.clip_boxes,
                             self.normalize_coords) for k, fhw in enumerate(feature_hws)]
        return np.concatenate(out, 0)

    def anchors_torch(self, image_hw: tuple[int, int], feature_hws: Sequence[tuple[int, int]],
                      device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.as_tensor(self.anchors(image_hw, feature_hws), dtype=torch.float32, device=device)
