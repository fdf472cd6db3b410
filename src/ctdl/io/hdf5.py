"""DLAE HDF5 layout: one file of images, one of annotations, one dataset per sample.

Per the DLAE manual, each sample is a top-level dataset named "0".."n-1" and an image is
paired with the annotation of the same name. Samples are channels-last (Keras): 2D
``(rows, cols[, ch])``, 3D ``(rows, cols, slices[, ch])``. Detection annotations are
``(n_boxes, 5)`` rows ``(class_id, xmin, ymin, xmax, ymax)`` with ``class_id >= 1``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_path
from ctdl.io.volume import Volume, affine_from_geometry

_INDEX = re.compile(r"0|[1-9][0-9]*")
_SHOW = 20  # names quoted in an error message at most


def _short(items: Sequence[Any]) -> str:
    items = list(items)
    more = f" ... ({len(items)} in all)" if len(items) > _SHOW else ""
    return f"{items[:_SHOW]}{more}"


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: HDF5 file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _name_order(names: set[str]) -> list[str]:
    """Index names numerically first, anything else after, alphabetically."""
    return sorted(names, key=lambda n: (0, int(n), n) if _INDEX.fullmatch(n) else (1, 0, n))


def _sample_names(f: h5py.File, path: Path) -> list[str]:
    """Dataset names in sample order; the names must be exactly '0'..'n-1'."""
    names = list(f.keys())
    groups = [n for n in names if not isinstance(f[n], h5py.Dataset)]
    if groups:
        raise InputError(f"{path}: DLAE files hold only datasets at the top level; these are groups: {_short(groups)}")
    bad = [n for n in names if not _INDEX.fullmatch(n)]
    if bad:
        raise InputError(
            f"{path}: DLAE dataset names must be sample indices '0'..'n-1'; bad names: {_short(sorted(bad))}"
        )
    idx = sorted(int(n) for n in names)
    if idx and idx[-1] != len(idx) - 1:
        missing = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise InputError(
            f"{path}: DLAE samples must be numbered 0..n-1 without gaps; {len(idx)} samples up to "
            f"'{idx[-1]}', missing {_short([str(i) for i in missing])}"
        )
    return [str(i) for i in idx]


def read_dlae_hdf5(path: str | Path) -> list[np.ndarray]:
    """Read every sample of a DLAE HDF5 file, in sample order (dataset '0' first)."""
    path = Path(path)
    with _open(path) as f:
        names = _sample_names(f, path)
        try:
            return [np.asarray(f[n][()]) for n in names]
        except OSError as exc:
            raise InputError(f"{path}: cannot read sample data ({exc}); truncated or corrupt file?") from exc


def write_dlae_hdf5(path: str | Path, arrays: Sequence[np.ndarray]) -> Path:
    """Write samples as datasets '0'..'n-1' (DLAE layout), atomically."""
    path = Path(path)
    arrays = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrays):
        if a.dtype.kind not in "biuf":
            raise InputError(f"{path}: sample {i} has dtype {a.dtype}; expected a numeric or boolean array")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for i, a in enumerate(arrays):
                f.create_dataset(str(i), data=a)
    return path


def check_dlae_pair(x_path: str | Path, y_path: str | Path) -> int:
    """Check an image file and its annotation file hold the same sample names; return the count."""
    x_path, y_path = Path(x_path), Path(y_path)
    with _open(x_path) as fx, _open(y_path) as fy:
        nx, ny = set(fx.keys()), set(fy.keys())
        if nx != ny:
            parts = []
            if nx - ny:
                parts.append(f"missing from {y_path}: {_short(_name_order(nx - ny))}")
            if ny - nx:
                parts.append(f"missing from {x_path}: {_short(_name_order(ny - nx))}")
            raise InputError(
                f"{x_path} and {y_path}: images and annotations must have identical sample names; "
                + "; ".join(parts)
            )
        names = _sample_names(fx, x_path)
        _sample_names(fy, y_path)
    return len(names)


def hdf5_info(path: str | Path) -> dict[str, Any]:
    """Summary of a DLAE HDF5 file for ``ctdl data info``: sample count, shapes and dtypes seen."""
    path = Path(path)
    with _open(path) as f:
        names = _sample_names(f, path)
        shapes = Counter(tuple(int(s) for s in f[n].shape) for n in names)
        dtypes = Counter(str(f[n].dtype) for n in names)
    return {
        "path": str(path),
        "n_samples": len(names),
        "shapes": sorted(shapes),
        "shape_counts": {str(s): c for s, c in sorted(shapes.items())},
        "dtypes": sorted(dtypes),
        "ndims": sorted({len(s) for s in shapes}),
    }


def _context(context: str) -> str:
    ctx = str(context).upper()
    if ctx not in ("2D", "3D"):
        raise InputError(f"DLAE context must be '2D' or '3D', got {context!r}")
    return ctx


def _channel_count(arr: np.ndarray, ctx: str) -> int:
    """Channels in a channels-last sample (1 when the channel axis is absent); validates ndim."""
    base = 2 if ctx == "2D" else 3
    if arr.ndim == base:
        return 1
    if arr.ndim == base + 1:
        return int(arr.shape[-1])
    layout = "(rows, cols[, ch])" if ctx == "2D" else "(rows, cols, slices[, ch])"
    raise InputError(f"a {ctx} DLAE sample must be {layout}, got shape {arr.shape}")


def dlae_sample_to_volume(
    arr: np.ndarray, context: str, spacing: tuple[float, ...] | None = None
) -> Volume:
    """Single-channel DLAE sample -> Volume: 3D (r, c, s[, 1]) -> (s, r, c); 2D (r, c[, 1]) -> (1, r, c).

    ``spacing`` is in Volume order (D, H, W); for 2D samples (H, W) is accepted too. DLAE files
    hold no geometry, so the affine is the default one (1 mm unless given).
    """
    arr = np.asarray(arr)
    ctx = _context(context)
    channels = _channel_count(arr, ctx)
    if channels != 1:
        raise InputError(
            f"DLAE {ctx} sample of shape {arr.shape} has {channels} channels; channels are not a volume axis - "
            "use dlae_sample_channels_first() to get (C, [D,] H, W)"
        )
    base = 2 if ctx == "2D" else 3
    if arr.ndim > base:
        arr = arr[..., 0]
    if spacing is None:
        sp: tuple[float, ...] = (1.0, 1.0, 1.0)
    else:
        sp = tuple(float(s) for s in spacing)
        if ctx == "2D" and len(sp) == 2:
            sp = (1.0, *sp)
        if len(sp) != 3 or not all(s > 0 for s in sp):
            raise InputError(f"spacing must be 3 positive numbers in (D, H, W) order, got {spacing!r}")
    if ctx == "2D":
        return Volume(arr[None], affine_from_geometry(sp), {"format": "dlae-hdf5", "context": ctx})
    # file order (r, c, s); array axis 0 (slices) came from file axis 2
    vol_arr = np.transpose(arr, (2, 0, 1))
    return Volume(vol_arr, affine_from_geometry(sp), {"format": "dlae-hdf5", "context": ctx}, (2, 0, 1))


def dlae_sample_channels_first(arr: np.ndarray, context: str) -> np.ndarray:
    """Channels-last DLAE sample -> (C, H, W) for 2D or (C, D, H, W) for 3D (slices first, like Volume)."""
    arr = np.asarray(arr)
    ctx = _context(context)
    base = 2 if ctx == "2D" else 3
    _channel_count(arr, ctx)
    if arr.ndim == base:
        arr = arr[..., None]
    if ctx == "2D":
        return np.transpose(arr, (2, 0, 1))
    return np.transpose(arr, (3, 2, 0, 1))


__all__ = [
    "read_dlae_hdf5",
    "write_dlae_hdf5",
    "check_dlae_pair",
    "hdf5_info",
    "dlae_sample_to_volume",
    "dlae_sample_channels_first",
]
