"""Image-similarity metrics for CT-to-CT translation: PSNR, SSIM (2D and 3D), MAE in HU.

Conventions (stated because papers differ):

* ``data_range`` is always given explicitly (never guessed from the dtype): for CT it is the width of the HU
  window the images were clipped to (:func:`window_metrics` clips both images to the window first), e.g.
  [-200, 500] -> 700. PSNR = 10 log10(data_range^2 / MSE).
* SSIM follows Wang et al. 2004 exactly as scikit-image's ``structural_similarity`` defaults do: a 7-wide
  uniform window (7x7 in 2D, 7x7x7 in 3D), K1 = 0.01, K2 = 0.03, sample covariance (N / (N - 1)), the mean
  over the positions where the window fits inside the image. ``ssim(..., dims=2)`` on a volume averages the
  per-slice 2D SSIM of the axial slices (axis 0); ``dims=3`` uses the 3D window.
* MAE is in the images' own units (HU for CT), optionally inside a mask.

Written in torch rather than calling scikit-image so the same code scores batches on the training device
(GPU) during validation without a copy to NumPy; the tests check it against scikit-image to 1e-6.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ctdl.metrics.registry import METRICS

ArrayLike = np.ndarray | torch.Tensor


def _t(x: ArrayLike, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(torch.float64)


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _t(pred, "pred"), _t(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from target shape {tuple(t.shape)}")
    if p.numel() == 0:
        raise ValueError("empty images")
    return p, t.to(p.device)


def _range(data_range: float) -> float:
    data_range = float(data_range)
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number (e.g. the HU window width), got {data_range}")
    return data_range


@METRICS.register("psnr", kind="image", higher_is_better=True, unit="dB")
def psnr(pred: ArrayLike, target: ArrayLike, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; inf for identical images."""
    p, t = _pair(pred, target)
    mse = float(torch.mean((p - t) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(_range(data_range) ** 2 / mse)


@METRICS.register("mae_hu", kind="image", higher_is_better=False, unit="HU")
def mae(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean absolute error in the images' units (HU), inside ``mask`` when given (NaN for an empty mask)."""
    p, t = _pair(pred, target)
    d = (p - t).abs()
    if mask is None:
        return float(d.mean())
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(d.device).bool()
    if m.shape != d.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} differs from image shape {tuple(d.shape)}")
    return float(d[m].mean()) if bool(m.any()) else math.nan


def _ssim_map_mean(x: torch.Tensor, y: torch.Tensor, data_range: float, win: int, k1: float, k2: float) -> torch.Tensor:
    """Mean SSIM over the valid window positions of a batch ``(N, 1, *spatial)``; returns one value per item."""
    nd = x.dim() - 2
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    ux, uy = pool(x, win, 1), pool(y, win, 1)
    uxx, uyy, uxy = pool(x * x, win, 1), pool(y * y, win, 1), pool(x * y, win, 1)
    n = win ** nd
    cov_norm = n / (n - 1.0)  # sample covariance, as scikit-image's default
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


@METRICS.register("ssim", kind="image", higher_is_better=True)
def ssim(pred: ArrayLike, target: ArrayLike, data_range: float, dims: int | None = None, win_size: int = 7,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (scikit-image defaults). 2D images -> 2D SSIM; volumes -> 3D SSIM unless ``dims=2``
    (mean per-slice 2D SSIM along axis 0)."""
    p, t = _pair(pred, target)
    data_range = _range(data_range)
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    if p.dim() not in (2, 3):
        raise ValueError(f"ssim expects a 2D image or a 3D volume, got shape {tuple(p.shape)}")
    dims = p.dim() if dims is None else dims
    if dims not in (2, 3) or dims > p.dim():
        raise ValueError(f"dims must be 2 or 3 (at most the image's {p.dim()} dimensions), got {dims}")
    spatial = p.shape[-dims:]
    if min(spatial) < win_size:
        raise ValueError(f"every side must be >= win_size={win_size} for SSIM, got {tuple(spatial)}")
    if dims == 3:
        x, y = p[None, None], t[None, None]
    else:
        x, y = p.reshape(-1, 1, *spatial), t.reshape(-1, 1, *spatial)
    return float(_ssim_map_mean(x, y, data_range, win_size, k1, k2).mean())


def window_metrics(pred_hu: ArrayLike, target_hu: ArrayLike, window: Sequence[float], dims: int | None = None,
                   mask: ArrayLike | None = None, prefix: str = "") -> dict[str, float]:
    """PSNR, SSIM and MAE (HU) of both images clipped to the HU ``window`` (PSNR/SSIM data range = its width).

    Clipping first makes the three numbers describe what the window shows (a generator ending in tanh cannot
    produce HU outside it, so air at -1000 HU would otherwise dominate the MAE). ``mask`` (e.g. the body) adds
    ``mae_hu_mask``. Keys are prefixed with ``prefix`` (e.g. ``"input_"`` for the identity baseline).
    """
    lo, hi = float(window[0]), float(window[1])
    p, t = _pair(pred_hu, target_hu)
    pc, tc = p.clamp(lo, hi), t.clamp(lo, hi)
    out = {"psnr": psnr(pc, tc, hi - lo), "ssim": ssim(pc, tc, hi - lo, dims=dims), "mae_hu": mae(pc, tc)}
    if mask is not None:
        out["mae_hu_mask"] = mae(pc, tc, mask)
    return {f"{prefix}{k}": v for k, v in out.items()}


def write_image_metrics(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, name: str = "metrics") -> dict[str, float]:
    """Per-case ``<name>.csv`` and ``<name>_summary.csv`` (metric,mean,std,min,max,n,n_nan), atomically; returns the means."""
    from ctdl.metrics.segmentation import summarize, write_metrics_csv, write_summary_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(rows, out_dir / f"{name}.csv")
    summary = summarize(rows)
    write_summary_csv(summary, out_dir / f"{name}_summary.csv")
    return {k: v["mean"] for k, v in summary.items()}


__all__ = ["mae", "psnr", "ssim", "window_metrics", "write_image_metrics"]
