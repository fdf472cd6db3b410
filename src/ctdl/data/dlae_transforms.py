"""DLAE's per-sample preprocessing and affine augmentation, with the meaning its manual intends.

Arrays here are channels-first like the rest of ctdl: a 2D sample is (C, H, W), a 3D sample
(C, D, H, W) with D the slice axis (DLAE's axis 2 of (r, c, s, ch)). Fixes relative to the
original (reference section 10): centring works on integer images and featurewise centring is
per channel instead of crashing (bug 3); repeated channels are kept in every split (bug 4);
brightness and channel shift are applied (bug 6); the label map goes through the same transform
with nearest-neighbour sampling, so no new label values appear (the original used order 1 and
then zeroed unseen values); the random draws come from a seeded generator (bug 22).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
from scipy import ndimage

from ctdl.errors import InputError

Scope = Literal["none", "samplewise", "featurewise"]
FILL_MODES = ("nearest", "constant", "reflect", "wrap")
_EPS_STD = 1e-6  # DLAE/Keras: x / (std + 1e-6)


# -- deterministic per-sample steps ------------------------------------------------------------
def repeat_channels(x: np.ndarray, times: int) -> np.ndarray:
    """DLAE repeat_X: ``times`` copies of the channels along axis 0 (kept in train, validation and test)."""
    if times < 1:
        raise InputError(f"repeat_channels: times must be >= 1, got {times}")
    return np.concatenate([np.asarray(x)] * int(times), axis=0)


def center_scale(x: np.ndarray, center: Scope = "none", std_normalize: Scope = "none") -> np.ndarray:
    """DLAE centring (x - mean) and standardisation (x / (std + 1e-6)) of one (C, ...) sample.

    samplewise: one mean/std over the whole sample (all channels); featurewise: per channel of the
    same sample (what DLAE meant; its code always raised). Works on integer images (returns float32).
    """
    for name, v in (("center", center), ("std_normalize", std_normalize)):
        if v not in ("none", "samplewise", "featurewise"):
            raise InputError(f"{name} must be none, samplewise or featurewise, got {v!r}")
    out = np.asarray(x, dtype=np.float32).copy()
    axes: Any = tuple(range(1, out.ndim))
    if center == "samplewise":
        out -= out.mean()
    elif center == "featurewise":
        out -= out.mean(axis=axes, keepdims=True)
    if std_normalize == "samplewise":
        out /= out.std() + _EPS_STD
    elif std_normalize == "featurewise":
        out /= out.std(axis=axes, keepdims=True) + _EPS_STD
    return out


def _zca_2d(x: np.ndarray, eps: float) -> np.ndarray:
    """ZCA of one (C, H, W) sample, rows as observations of rows x (cols*ch) (DLAE's single-sample fit)."""
    c, h, w = x.shape
    flat = np.transpose(x, (1, 2, 0)).reshape(h, w * c).astype(np.float64)  # channels-last (r, c*ch)
    flat = flat - flat.mean(axis=0, keepdims=True)
    sigma = flat.T @ flat / h
    u, s, _ = np.linalg.svd(sigma)
    principal = (u * (1.0 / np.sqrt(s + eps))) @ u.T
    white = flat @ principal
    return np.transpose(white.reshape(h, w, c), (2, 0, 1)).astype(np.float32)


def zca_whiten(x: np.ndarray, eps: float) -> np.ndarray:
    """ZCA whitening of a (C, H, W) sample, or of each slice of a (C, D, H, W) sample (DLAE zca_epsilon)."""
    x = np.asarray(x, dtype=np.float32)
    if eps is None or eps <= 0:
        raise InputError(f"zca_epsilon must be > 0, got {eps!r}")
    if x.ndim == 3:
        return _zca_2d(x, eps)
    if x.ndim == 4:
        return np.stack([_zca_2d(x[:, d], eps) for d in range(x.shape[1])], axis=1)
    raise InputError(f"zca_whiten: expected (C, H, W) or (C, D, H, W), got shape {x.shape}")


def one_hot(labels: np.ndarray, n_classes: int, axis: int = 0) -> np.ndarray:
    """Integer labels -> one-hot float32 with the class axis at ``axis``; a value >= n_classes is an error.

    A trailing size-1 channel axis (DLAE's (r, c, 1)) is dropped first.
    """
    lab = np.asarray(labels)
    if lab.ndim > 1 and lab.shape[-1] == 1:
        lab = lab[..., 0]
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise InputError("one_hot: labels must be whole numbers")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise InputError(f"one_hot: label values must lie in 0..{n_classes - 1} (categories = {n_classes}), "
                         f"found {int(lab.min())}..{int(lab.max())}")
    out = np.eye(n_classes, dtype=np.float32)[lab]
    return np.moveaxis(out, -1, axis)


# -- affine augmentation ---------------------------------------------------------------------
def dlae_affine_matrix(theta_deg: float, tx: float, ty: float, shear_deg: float, zx: float, zy: float,
                       h: int, w: int) -> np.ndarray:
    """3x3 matrix mapping output (row, col) to input coordinates, as keras_preprocessing builds it.

    rotation @ shift @ shear @ zoom, with theta and shear in **degrees**, tx/ty in pixels (rows,
    cols). Centred on the image centre ((h-1)/2, (w-1)/2); Keras used h/2 + 0.5, half a pixel off
    the centre, which made a 90 degree rotation move the image by a pixel.
    """
    t, s = math.radians(theta_deg), math.radians(shear_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=float)
    shear = np.array([[1, -math.sin(s), 0], [0, math.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]], dtype=float)
    m = rot @ shift @ shear @ zoom
    ox, oy = (h - 1) / 2.0, (w - 1) / 2.0
    offset = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]])
    reset = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    return offset @ m @ reset


def apply_affine_2d(plane: np.ndarray, matrix: np.ndarray, order: int, fill_mode: str = "nearest",
                    cval: float = 0.0) -> np.ndarray:
    """Resample one (H, W) plane with a 3x3 output->input matrix (scipy, as DLAE).

    Written with scipy rather than MONAI's Affine because DLAE's fill modes include 'wrap' (MONAI's
    grid_sample has no wrap) and its shear is an angle, not MONAI's shear coefficient.
    """
    if fill_mode not in FILL_MODES:
        raise InputError(f"fill_mode must be one of {', '.join(FILL_MODES)}, got {fill_mode!r}")
    mode = "grid-wrap" if fill_mode == "wrap" else fill_mode
    return ndimage.affine_transform(plane, matrix[:2, :2], matrix[:2, 2], order=order, mode=mode, cval=cval)


class DlaeAffine:
    """DLAE's random affine: one draw per sample, the same on the image and its label map.

    Draws (keras ``random_transform``): theta ~ U(-R, R) deg; row shift ~ U(-h, h), column shift ~
    U(-w, w), each times the image size when < 1; shear ~ U(-S, S) deg; zoom rows and columns
    independently ~ U(1 - z, 1 + z); horizontal (columns) and vertical (rows) flips with p = 0.5.
    Image: linear interpolation; label: nearest (no new values). 3D samples (C, D, H, W): the same
    2D transform on every slice. Optional brightness (multiply by U(lo, hi)) and channel shift
    (add U(-s, s) per channel) act on the image only. Randomness only from ``set_random_state``.
    """

    def __init__(self, rotation: float = 0.0, height_shift: float = 0.0, width_shift: float = 0.0,
                 shear: float = 0.0, zoom: float | Sequence[float] = 0.0, horizontal_flip: bool = False,
                 vertical_flip: bool = False, fill_mode: str = "nearest", cval: float = 0.0,
                 brightness_range: Sequence[float] | None = None, channel_shift: float = 0.0,
                 keys: tuple[str, str] = ("image", "label"), seed: int = 0) -> None:
        if fill_mode not in FILL_MODES:
            raise InputError(f"fill_mode must be one of {', '.join(FILL_MODES)}, got {fill_mode!r}")
        if isinstance(zoom, (int, float)):
            if not 0 <= zoom < 1:
                raise InputError(f"zoom range must be in [0, 1), got {zoom}")
            self.zoom = (1.0 - zoom, 1.0 + zoom)
        else:
            lo, hi = (float(v) for v in zoom)
            if not 0 < lo <= hi:
                raise InputError(f"zoom range must be 0 < low <= high, got {zoom!r}")
            self.zoom = (lo, hi)
        self.rotation, self.shear = float(rotation), float(shear)
        self.height_shift, self.width_shift = float(height_shift), float(width_shift)
        self.hflip, self.vflip = bool(horizontal_flip), bool(vertical_flip)
        self.fill_mode, self.cval = fill_mode, float(cval)
        self.brightness = tuple(float(v) for v in brightness_range) if brightness_range else None
        self.channel_shift = float(channel_shift)
        self.keys = keys
        self.rng = np.random.default_rng(seed)

    def set_random_state(self, seed: int | None = None, state: Any = None) -> "DlaeAffine":
        self.rng = np.random.default_rng(seed)
        return self

    def draw(self, h: int, w: int, channels: int = 1) -> dict[str, Any]:
        """One set of parameters for an (h, w) image."""
        r = self.rng
        tx = r.uniform(-self.height_shift, self.height_shift) if self.height_shift else 0.0
        ty = r.uniform(-self.width_shift, self.width_shift) if self.width_shift else 0.0
        if 0 < self.height_shift < 1:
            tx *= h
        if 0 < self.width_shift < 1:
            ty *= w
        zx, zy = (r.uniform(*self.zoom, 2) if self.zoom != (1.0, 1.0) else (1.0, 1.0))
        return {
            "theta": r.uniform(-self.rotation, self.rotation) if self.rotation else 0.0,
            "tx": float(tx), "ty": float(ty),
            "shear": r.uniform(-self.shear, self.shear) if self.shear else 0.0,
            "zx": float(zx), "zy": float(zy),
            "hflip": bool(self.hflip and r.random() < 0.5),
            "vflip": bool(self.vflip and r.random() < 0.5),
            "brightness": float(r.uniform(*self.brightness)) if self.brightness else 1.0,
            "channel_shift": (r.uniform(-self.channel_shift, self.channel_shift, channels)
                              if self.channel_shift else np.zeros(channels)),
        }

    def apply(self, x: np.ndarray, params: dict[str, Any], is_label: bool = False) -> np.ndarray:
        """Apply drawn ``params`` to a (C, H, W) or (C, D, H, W) array (labels: nearest, no intensity changes)."""
        x = np.asarray(x)
        if x.ndim not in (3, 4):
            raise InputError(f"DlaeAffine: expected (C, H, W) or (C, D, H, W), got shape {x.shape}")
        h, w = x.shape[-2:]
        m = dlae_affine_matrix(params["theta"], params["tx"], params["ty"], params["shear"], params["zx"],
                               params["zy"], h, w)
        identity = np.allclose(m, np.eye(3))
        order = 0 if is_label else 1
        src = x if is_label else x.astype(np.float32)
        planes = src.reshape(-1, h, w)
        if identity:
            out = planes.copy()
        else:
            out = np.stack([apply_affine_2d(p, m, order, self.fill_mode, self.cval) for p in planes])
        out = out.reshape(src.shape)
        if params["hflip"]:
            out = out[..., ::-1]
        if params["vflip"]:
            out = out[..., ::-1, :]
        if not is_label:
            out = out * params["brightness"]
            shift = np.asarray(params["channel_shift"], dtype=np.float32).reshape((-1,) + (1,) * (out.ndim - 1))
            out = out + shift
        return np.ascontiguousarray(out)

    def apply_points(self, points: np.ndarray, params: dict[str, Any], h: int, w: int) -> np.ndarray:
        """Move (row, col) points (e.g. CNN regression coordinates) with the image (bug 7: DLAE left them).

        The matrix maps output to input pixels, so a point moves by its inverse; flips come after.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        m = dlae_affine_matrix(params["theta"], params["tx"], params["ty"], params["shear"], params["zx"],
                               params["zy"], h, w)
        homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
        out = (np.linalg.inv(m) @ homog.T).T[:, :2]
        if params["hflip"]:
            out[:, 1] = (w - 1) - out[:, 1]
        if params["vflip"]:
            out[:, 0] = (h - 1) - out[:, 0]
        return out.reshape(np.shape(points))

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        img_key, lab_key = self.keys
        img = np.asarray(data[img_key])
        params = self.draw(*img.shape[-2:], channels=img.shape[0])
        out = dict(data)
        out[img_key] = self.apply(img, params).astype(np.float32)
        if lab_key in data and data[lab_key] is not None:
            out[lab_key] = self.apply(np.asarray(data[lab_key]), params, is_label=True)
        return out


def build_dlae_augmentation(cfg: Any, dims: int = 3, keys: tuple[str, str] = ("image", "label")) -> DlaeAffine | None:
    """A :class:`DlaeAffine` from an ``AugmentationConfig`` with ``affine: dlae`` (None when disabled).

    ``flip_axes`` 1 (rows) is DLAE's vertical flip, 2 (columns) its horizontal flip.
    """
    if not cfg.enabled:
        return None
    return DlaeAffine(rotation=cfg.rotation_deg, height_shift=cfg.height_shift, width_shift=cfg.width_shift,
                      shear=cfg.shear_deg, zoom=cfg.zoom, horizontal_flip=2 in cfg.flip_axes,
                      vertical_flip=1 in cfg.flip_axes, fill_mode=cfg.fill_mode, cval=cfg.cval,
                      brightness_range=cfg.brightness_range, channel_shift=cfg.channel_shift, keys=keys)


def dlae_sample_chain(x: np.ndarray, repeat: int = 1, center: Scope = "none", std_normalize: Scope = "none",
                      zca_epsilon: float | None = None) -> np.ndarray:
    """DLAE steps 2-4 for one channels-first sample: repeat channels, centring/scaling, ZCA."""
    out = np.asarray(x)
    if repeat > 1:
        out = repeat_channels(out, repeat)
    if center != "none" or std_normalize != "none":
        out = center_scale(out, center, std_normalize)
    if zca_epsilon is not None:
        out = zca_whiten(out, zca_epsilon)
    return np.asarray(out, dtype=np.float32)


__all__ = [
    "DlaeAffine",
    "apply_affine_2d",
    "build_dlae_augmentation",
    "center_scale",
    "dlae_affine_matrix",
    "dlae_sample_chain",
    "one_hot",
    "repeat_channels",
    "zca_whiten",
]
