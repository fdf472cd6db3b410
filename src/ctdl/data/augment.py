"""Training augmentation from the config, built from MONAI dictionary transforms.

Image and label are transformed together (label with nearest interpolation). Spatial axes
follow the (D, H, W) convention; "in-plane" means the (H, W) plane, so rotation is about
axis 0 (MONAI's ``rotate_range[0]`` for 3D rotates in the plane of spatial axes 1 and 2).
Each call to :func:`build_augmentation` returns a transform whose randomness comes from its
own generator (``set_random_state``), never the global RNG, so runs replay exactly.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from monai.transforms import (
    Compose,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from ctdl.config.schema import AugmentationConfig

_PAD = {"nearest": "border", "constant": "zeros", "reflect": "reflection", "wrap": "reflection"}


class RandDiscreteRotated(RandomizableTransform, MapTransform):
    """Rotate in the (H, W) plane by an angle drawn from a discrete set (ViPTT-Net: [-20..20] incl. 0).

    Hand-written because MONAI's RandRotate draws from a continuous range only.
    """

    def __init__(self, keys: Sequence[str], angles_deg: Sequence[float], modes: Sequence[str], prob: float = 1.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.angles = [float(a) for a in angles_deg]
        self.modes = list(modes)
        self._angle = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._angle = float(self.angles[self.R.randint(len(self.angles))])

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from monai.transforms import Rotate

        self.randomize()
        out = dict(data)
        if not self._do_transform or self._angle == 0.0:
            return out
        for key, mode in zip(self.keys, self.modes):
            img = out[key]
            nd = img.ndim - 1
            angle: Any = math.radians(self._angle) if nd == 2 else (math.radians(self._angle), 0.0, 0.0)
            out[key] = Rotate(angle, keep_size=True, mode=mode, padding_mode="border")(img)
        return out


def build_augmentation(cfg: AugmentationConfig, dims: int = 3, keys: tuple[str, str] = ("image", "label")) -> Compose | None:
    """MONAI Compose for image+label dicts of (C, D, H, W) (dims=3) or (C, H, W) (dims=2) arrays."""
    if not cfg.enabled:
        return None
    if getattr(cfg, "affine", "monai") == "dlae":  # DLAE's own affine semantics (ctdl.data.dlae_transforms)
        from ctdl.data.dlae_transforms import build_dlae_augmentation

        return build_dlae_augmentation(cfg, dims, keys)  # type: ignore[return-value]
    img_key, lab_key = keys
    modes = ("bilinear", "nearest")
    transforms: list[Any] = []
    for axis in cfg.flip_axes:
        ax = axis if dims == 3 else axis - 1
        if 0 <= ax < dims:
            transforms.append(RandFlipd(keys=list(keys), prob=cfg.flip_prob, spatial_axis=ax))
    if cfg.rotation_choices:
        transforms.append(RandDiscreteRotated(list(keys), cfg.rotation_choices, modes, prob=1.0))
    rot = math.radians(cfg.rotation_deg)
    shear = math.radians(cfg.shear_deg)
    if rot or cfg.zoom or cfg.shift_px or shear:
        if dims == 3:
            rotate_range: Any = (rot, 0.0, 0.0)
            translate_range: Any = (0.0, cfg.shift_px, cfg.shift_px)
            scale_range: Any = (0.0, cfg.zoom, cfg.zoom)
            shear_range: Any = (shear, shear, 0.0, 0.0, 0.0, 0.0) if shear else None
        else:
            rotate_range = (rot,)
            translate_range = (cfg.shift_px, cfg.shift_px)
            scale_range = (cfg.zoom, cfg.zoom)
            shear_range = (shear, shear) if shear else None
        transforms.append(
            RandAffined(
                keys=list(keys),
                prob=cfg.prob,
                rotate_range=rotate_range,
                translate_range=translate_range,
                scale_range=scale_range,
                shear_range=shear_range,
                mode=modes,
                padding_mode=_PAD[cfg.fill_mode],
            )
        )
    if cfg.intensity_scale:
        transforms.append(RandScaleIntensityd(keys=img_key, factors=cfg.intensity_scale, prob=cfg.prob))
    if cfg.brightness_range:
        lo, hi = cfg.brightness_range
        transforms.append(RandScaleIntensityd(keys=img_key, factors=(lo - 1.0, hi - 1.0), prob=cfg.prob))
    if cfg.intensity_shift:
        transforms.append(RandShiftIntensityd(keys=img_key, offsets=cfg.intensity_shift, prob=cfg.prob))
    if cfg.channel_shift:
        transforms.append(RandShiftIntensityd(keys=img_key, offsets=cfg.channel_shift, prob=cfg.prob, channel_wise=True))
    if cfg.noise_std:
        transforms.append(RandGaussianNoised(keys=img_key, std=cfg.noise_std, prob=cfg.prob))
    if not transforms:
        return None
    return Compose(transforms)


def apply_augmentation(aug: Compose | None, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``aug`` on one (C, ...) image and its (...) label; returns numpy arrays."""
    if aug is None:
        return image, label
    out = aug({"image": image, "label": label[None]})
    img = np.asarray(out["image"], dtype=np.float32)
    lab = np.rint(np.asarray(out["label"])[0]).astype(np.int64)
    return img, lab
