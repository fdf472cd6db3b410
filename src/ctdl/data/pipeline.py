"""The deterministic preprocessing chain of a segmentation experiment, and its inverse.

geometry stage (cached on disk): reorient -> resample to target spacing -> HU window
intensity stage (cheap, in memory): normalization (with dataset statistics frozen in a *plan*)
ROI stage: crop around the foreground (label in training; a coarse pass or the whole volume at inference)

Following nnU-Net, every data-dependent choice (dataset mean, intensity range) is computed
once on the training cases and frozen into ``plan`` (a plain dict) that travels with the model
in its checkpoint; the disk cache is keyed by a hash of the settings that produce it, so a
changed setting never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctdl.config.schema import PreprocessingConfig
from ctdl.data import preprocess as pp
from ctdl.data.sampling import PreparedCase
from ctdl.io import Volume
from ctdl.io.atomic import atomic_path

CACHE_VERSION = 1


@dataclass
class GeometryContext:
    """What is needed to map a prediction back onto the original image grid."""

    original: Volume  # header-only use: shape, affine, file_axes (array dropped to save memory)
    reoriented: Volume
    resampled_affine: np.ndarray
    resampled_shape: tuple[int, int, int]
    bbox: tuple[slice, slice, slice] | None = None


def _empty_like(vol: Volume) -> Volume:
    """A geometry-only stand-in for ``vol`` (1-byte broadcast array: no memory held)."""
    return Volume(np.broadcast_to(np.zeros((), np.uint8), vol.shape), vol.affine.copy(), dict(vol.meta), vol.file_axes)


class SegPreprocessor:
    """Applies a :class:`PreprocessingConfig` to (image, label) volumes and inverts it for predictions."""

    def __init__(self, cfg: PreprocessingConfig, plan: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.plan: dict[str, Any] = dict(plan or {})

    # -- geometry ----------------------------------------------------------------------
    def geometry(self, image: Volume, label: Volume | None = None) -> tuple[Volume, Volume | None, GeometryContext]:
        cfg = self.cfg
        # views, not copies: every step below writes new arrays (a view that reaches the end is copied there)
        img_r = pp.reorient(image, copy=False) if cfg.reorient else image
        lab_r = pp.reorient(label, copy=False) if (cfg.reorient and label is not None) else label
        img_s, lab_s = img_r, lab_r
        target = self.target_spacing
        if target is not None and not np.allclose(img_r.spacing, target, atol=1e-3):
            order = 3 if cfg.image_interpolation == "bspline" else 1
            img_s = pp.resample(img_r, target, order=order)
            if lab_r is not None:
                lab_s = pp.resample(lab_r, target, is_label=True)
        if cfg.inplane_size is not None and tuple(img_s.shape[1:]) != tuple(cfg.inplane_size):
            img_s = pp.resize_inplane(img_s, cfg.inplane_size, order=3 if cfg.image_interpolation == "bspline" else 1)
            if lab_s is not None:
                lab_s = pp.resize_inplane(lab_s, cfg.inplane_size, is_label=True)
        arr = img_s.array.astype(np.float32, copy=False)
        if cfg.hu_window is not None:
            arr = pp.clip_hu(arr, cfg.hu_window)
        if np.may_share_memory(arr, image.array):
            arr = arr.copy()
        if lab_s is not None and label is not None and np.may_share_memory(lab_s.array, label.array):
            lab_s = Volume(lab_s.array.copy(), lab_s.affine, lab_s.meta, lab_s.file_axes)
        img_s = Volume(arr, img_s.affine, img_s.meta, img_s.file_axes)
        ctx = GeometryContext(_empty_like(image), _empty_like(img_r), img_s.affine.copy(), img_s.shape)
        return img_s, lab_s, ctx

    @property
    def target_spacing(self) -> tuple[float, float, float] | None:
        """The configured spacing, else the training cases' median spacing frozen in the plan."""
        if self.cfg.spacing is not None:
            return tuple(self.cfg.spacing)  # type: ignore[return-value]
        ts = self.plan.get("target_spacing")
        return tuple(float(v) for v in ts) if ts is not None else None  # type: ignore[return-value]

    def plan_spacing(self, spacings: list[tuple[float, float, float]]) -> None:
        """nnU-Net's rule when no spacing is configured: the median spacing of the training cases."""
        if self.cfg.spacing is None and spacings and "target_spacing" not in self.plan:
            self.plan["target_spacing"] = [float(v) for v in np.median(np.asarray(spacings), axis=0)]

    # -- intensity ---------------------------------------------------------------------
    def window_bounds(self) -> tuple[float, float] | None:
        if self.cfg.hu_window is None:
            return None
        return pp.resolve_window(self.cfg.hu_window)

    def fit(self, images: list[np.ndarray]) -> dict[str, Any]:
        """Freeze dataset statistics (the plan) from training images after the geometry stage."""
        cfg = self.cfg
        rng = cfg.intensity_range or self.window_bounds()
        if rng is not None:
            self.plan["intensity_range"] = [float(rng[0]), float(rng[1])]
        if cfg.normalization == "unity_minus_mean":
            if cfg.dataset_mean is not None:
                self.plan["dataset_mean"] = float(cfg.dataset_mean)
            else:
                lo, hi = self._unity_range(images)
                total = sum(float(((a - lo) / (hi - lo)).sum(dtype=np.float64)) for a in images)
                count = sum(a.size for a in images)
                self.plan["dataset_mean"] = total / max(count, 1)
        if cfg.normalization.startswith("global") and "intensity_range" not in self.plan:
            self.plan["intensity_range"] = [float(min(a.min() for a in images)), float(max(a.max() for a in images))]
        return self.plan

    def _unity_range(self, images: list[np.ndarray] | None = None) -> tuple[float, float]:
        if "intensity_range" in self.plan:
            lo, hi = self.plan["intensity_range"]
            return float(lo), float(hi)
        if images:
            return float(min(a.min() for a in images)), float(max(a.max() for a in images))
        raise ValueError("intensity range unknown: call fit() first or set preprocessing.intensity_range")

    def sample_range(self, raw: np.ndarray) -> tuple[float, float]:
        """(min, max) a sample-wise normalization would see on this whole image after the HU window."""
        lo, hi = float(raw.min()), float(raw.max())
        win = self.window_bounds()
        if win is not None:
            lo, hi = min(max(lo, win[0]), win[1]), min(max(hi, win[0]), win[1])
        return lo, hi

    def intensity(self, arr: np.ndarray, sample_range: tuple[float, float] | None = None) -> np.ndarray:
        """Normalize one image array (geometry stage output) to the network's input range.

        ``sample_range``: for the sample-wise DLAE kinds, use this (min, max) instead of the array's own, so a
        crop is normalized exactly as the whole image would be.
        """
        kind = self.cfg.normalization
        if sample_range is not None and kind.startswith("samplewise") and sample_range[1] > sample_range[0]:
            out, _ = pp.normalize(arr, kind.replace("samplewise", "global"), x_range=sample_range)
        elif kind == "none":
            out = arr.astype(np.float32)
        elif kind == "zscore":
            out = pp.zscore(arr)
        elif kind == "unity_minus_mean":
            lo, hi = self._unity_range()
            out = (arr - lo) / (hi - lo) - float(self.plan.get("dataset_mean", 0.0))
        elif kind.startswith("global"):
            out, _ = pp.normalize(arr, kind, x_range=self._unity_range())
        else:
            out, _ = pp.normalize(arr, kind)
        out = np.asarray(out, dtype=np.float32)
        return np.repeat(out[None], self.cfg.repeat_channels, axis=0)

    # -- ROI -----------------------------------------------------------------------------
    def roi_bbox(self, label: np.ndarray) -> tuple[slice, slice, slice] | None:
        if not self.cfg.roi.enabled or not label.any():
            return None
        return pp.foreground_bbox(label, margin=self.cfg.roi.margin)

    def roi_boxes(self, label: np.ndarray) -> list[tuple[slice, slice, slice]]:
        """Training crops from the label: one per kidney (``roi.per_kidney``) or one around all foreground."""
        roi = self.cfg.roi
        if not roi.enabled or not label.any():
            return []
        if roi.per_kidney:
            return pp.component_boxes(label, roi.margin, roi.size_hw)
        box = pp.foreground_bbox(label, margin=roi.margin)
        if roi.size_hw is not None:
            box = (box[0],) + tuple(pp.fixed_window((s.start + s.stop) / 2.0, int(n), label.shape[ax])
                                    for ax, s, n in zip((1, 2), box[1:], roi.size_hw))  # type: ignore[assignment]
        return [box]

    # -- whole chain ---------------------------------------------------------------------
    def prepare(self, case_id: str, image: Volume, label: Volume | None, geometry_cache: "GeometryCache | None" = None,
                use_label_roi: bool = True) -> tuple[PreparedCase, GeometryContext]:
        if geometry_cache is not None:
            img_s, lab_s, ctx = geometry_cache.get_or_make(case_id, self, image, label)
        else:
            img_s, lab_s, ctx = self.geometry(image, label)
        return self.finish(case_id, img_s, lab_s, ctx, use_label_roi), ctx

    def finish(self, case_id: str, img_s: Volume, lab_s: Volume | None, ctx: GeometryContext,
               use_label_roi: bool = True) -> PreparedCase:
        """ROI crop and intensity stage of :meth:`prepare`, from geometry-stage outputs (sets ``ctx.bbox``)."""
        lab = lab_s.array.astype(np.uint8) if lab_s is not None else None
        if use_label_roi and lab is not None:
            boxes = self.roi_boxes(lab)
            ctx.bbox = boxes[0] if len(boxes) == 1 else (self.roi_bbox(lab) if boxes else None)
        return self._crop_case(case_id, img_s, lab, ctx.bbox)

    def finish_all(self, case_id: str, img_s: Volume, lab_s: Volume | None) -> list[PreparedCase]:
        """Training/validation cases of one volume: one per ROI box (``roi.per_kidney``: one per kidney)."""
        lab = lab_s.array.astype(np.uint8) if lab_s is not None else None
        boxes = self.roi_boxes(lab) if lab is not None else []
        if len(boxes) <= 1:
            return [self._crop_case(case_id, img_s, lab, boxes[0] if boxes else None)]
        return [self._crop_case(f"{case_id}#roi{i}", img_s, lab, box) for i, box in enumerate(boxes)]

    def _crop_case(self, case_id: str, img_s: Volume, lab: np.ndarray | None,
                   box: tuple[slice, slice, slice] | None) -> PreparedCase:
        arr = img_s.array
        # sample-wise normalizations see the whole image's range, as at inference (a crop's own range differs)
        rng = self.sample_range(arr) if box is not None else None
        if box is not None:
            arr = arr[box]
            lab = lab[box] if lab is not None else None
        return PreparedCase(case_id, self.intensity(arr, sample_range=rng), lab, tuple(img_s.spacing))  # type: ignore[arg-type]

    def restore(self, labels: np.ndarray, ctx: GeometryContext) -> Volume:
        """Map a label map predicted in prepared space back onto the original image grid exactly."""
        if ctx.bbox is not None:
            labels = pp.uncrop(labels, ctx.bbox, ctx.resampled_shape, fill=0)
        vol = Volume(labels.astype(np.uint8), ctx.resampled_affine, {}, ctx.reoriented.file_axes)
        if vol.shape != ctx.reoriented.shape or not np.allclose(vol.affine, ctx.reoriented.affine, atol=1e-6):
            vol = pp.resample_to_reference(vol, ctx.reoriented, is_label=True)
        if self.cfg.reorient:
            vol = pp.undo_reorient(vol, ctx.original)
        return Volume(vol.array.astype(np.uint8, copy=False), ctx.original.affine.copy(), {}, ctx.original.file_axes)

    def settings_hash(self) -> str:
        geo = self.cfg.model_dump(mode="json", include={"reorient", "image_interpolation", "hu_window"})
        geo["spacing"] = list(self.target_spacing) if self.target_spacing is not None else None
        geo["inplane_size"] = list(self.cfg.inplane_size) if self.cfg.inplane_size is not None else None
        return hashlib.sha1(json.dumps({"v": CACHE_VERSION, **geo}, sort_keys=True).encode()).hexdigest()[:12]


class GeometryCache:
    """Disk cache of geometry-stage outputs, keyed by settings hash + case id + source file stamp."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _key(self, case_id: str, pre: SegPreprocessor, image: Volume) -> Path:
        src = image.meta.get("source")
        stamp = ""
        if src and Path(src).exists():
            st = Path(src).stat()
            stamp = f"{st.st_size}-{int(st.st_mtime)}"
        h = hashlib.sha1(f"{case_id}|{stamp}".encode()).hexdigest()[:10]
        return self.root / pre.settings_hash() / f"{case_id}-{h}.npz"

    def get_or_make(self, case_id: str, pre: SegPreprocessor, image: Volume, label: Volume | None):
        path = self._key(case_id, pre, image)
        img_s, lab_s, ctx = None, None, None
        if path.exists():
            try:
                with np.load(path) as z:
                    img_s = Volume(z["image"], z["affine"])
                    lab_s = Volume(z["label"], z["affine"]) if "label" in z else None
                img_r = pp.reorient(_empty_like(image)) if pre.cfg.reorient else _empty_like(image)
                ctx = GeometryContext(_empty_like(image), _empty_like(img_r), img_s.affine.copy(), img_s.shape)
            except (OSError, KeyError, ValueError):
                img_s = None
        if img_s is None or (label is not None and lab_s is None):
            img_s, lab_s, ctx = pre.geometry(image, label)
            data = {"image": img_s.array.astype(np.float32), "affine": img_s.affine}
            if lab_s is not None:
                data["label"] = lab_s.array.astype(np.uint8)
            with atomic_path(path, suffix=".npz") as tmp:
                np.savez(tmp, **data)
        return img_s, lab_s, ctx
