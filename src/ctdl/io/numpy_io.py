"""NumPy volumes: .npz (array + geometry in one file) and .npy (+ optional JSON sidecar).

Files written by ctdl keep the Volume exactly: ``.npz`` holds ``array`` (D, H, W),
``affine`` (RAS, 4x4), ``file_axes`` and ``meta`` (JSON text); ``.npy`` holds the array and
``<name>.json`` beside it the affine, file_axes and meta. Foreign files carry no geometry:
it comes from the ``spacing``/``origin`` arguments, else 1 mm isotropic at the origin.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_path, atomic_write_text
from ctdl.io.volume import Volume, affine_from_geometry

SIDECAR_FORMAT = "ctdl-npy"


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar that holds the geometry of a ``.npy`` file: ``<name>.json`` beside it."""
    return Path(path).with_suffix(".json")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, default=_jsonable)


def _check_array(path: Path, arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{path}: {what} has dtype {arr.dtype}; expected a numeric or boolean array")
    if arr.ndim == 2:
        return arr[None]  # one slice
    if arr.ndim != 3:
        raise InputError(f"{path}: {what} has shape {arr.shape}; expected a 3D (D, H, W) or 2D (H, W) array")
    return arr


def _check_file_axes(path: Path, value: Any) -> tuple[int, int, int]:
    try:
        axes = tuple(int(v) for v in np.asarray(value).ravel())
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: file_axes {value!r} is not a list of integers") from exc
    if sorted(axes) != [0, 1, 2]:
        raise InputError(f"{path}: file_axes {axes} is not a permutation of (0, 1, 2)")
    return axes  # type: ignore[return-value]


def _check_affine(path: Path, value: Any) -> np.ndarray:
    try:
        aff = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: affine is not numeric") from exc
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise InputError(f"{path}: affine must be a finite, invertible 4x4 matrix, got shape {aff.shape}")
    return aff


def _argument_geometry(
    path: Path, spacing: tuple[float, ...] | None, origin: tuple[float, ...] | None
) -> np.ndarray:
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"{path}: spacing must be 3 positive numbers in (D, H, W) order, got {spacing!r}")
    if origin is not None and (len(tuple(origin)) != 3 or not np.all(np.isfinite(np.asarray(origin, float)))):
        raise InputError(f"{path}: origin must be 3 numbers (RAS mm), got {origin!r}")
    return affine_from_geometry(sp, origin)


def _warn_ignored(path: Path, spacing: Any, origin: Any, where: str) -> None:
    if spacing is not None or origin is not None:
        warnings.warn(f"{path}: geometry is stored in {where}; the spacing/origin arguments are ignored", stacklevel=3)


def _read_npz(
    path: Path, spacing: tuple[float, ...] | None, origin: tuple[float, ...] | None, key: str | None
) -> Volume:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        ours = "array" in keys and "affine" in keys and key in (None, "array")
        if ours:
            raw = z["array"]
            if raw.ndim != 3:
                raise InputError(f"{path}: 'array' has shape {raw.shape}; expected (D, H, W)")
            arr = _check_array(path, raw, "'array'")
            affine = _check_affine(path, z["affine"])
            axes = _check_file_axes(path, z["file_axes"]) if "file_axes" in keys else (0, 1, 2)
            meta: dict[str, Any] = {}
            if "meta" in keys:
                try:
                    meta = dict(json.loads(str(z["meta"])))
                except (ValueError, TypeError) as exc:
                    raise InputError(f"{path}: 'meta' is not a JSON object ({exc})") from exc
            _warn_ignored(path, spacing, origin, "the file")
            meta.update(source=str(path), format="npz")
            return Volume(arr, affine, meta, axes)
        if key is not None:
            if key not in keys:
                raise InputError(f"{path}: no array named {key!r}; the file holds {keys}")
            name = key
        elif len(keys) == 1:
            name = keys[0]
        else:
            raise InputError(f"{path}: holds {len(keys)} arrays {keys}; pass key=<name> to choose one")
        arr = _check_array(path, z[name], f"array {name!r}")
    return Volume(arr, _argument_geometry(path, spacing, origin), {"source": str(path), "format": "npz", "key": name})


def _read_sidecar(
    path: Path, side: Path, shape: tuple[int, ...]
) -> tuple[np.ndarray, tuple[int, int, int], dict[str, Any]] | None:
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{side}: sidecar of {path.name} is not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or "affine" not in info:
        warnings.warn(f"{side}: has no 'affine'; not a ctdl sidecar, ignored", stacklevel=3)
        return None
    affine = _check_affine(side, info["affine"])
    axes = _check_file_axes(side, info.get("file_axes", (0, 1, 2)))
    if "shape" in info and tuple(int(s) for s in info["shape"]) != tuple(shape):
        raise InputError(
            f"{side}: sidecar describes shape {tuple(info['shape'])} but {path.name} holds {tuple(shape)}; "
            "stale sidecar? Expected the shape written with the array"
        )
    meta = info.get("meta") or {}
    return affine, axes, dict(meta) if isinstance(meta, dict) else {}


def read_numpy(
    path: str | Path,
    spacing: tuple[float, float, float] | None = None,
    origin: tuple[float, float, float] | None = None,
    key: str | None = None,
) -> Volume:
    """Read .npy/.npz into a Volume; stored geometry wins, else spacing/origin, else 1 mm isotropic."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"{path}: expected a .npy or .npz file")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if suffix == ".npz":
            return _read_npz(path, spacing, origin, key)
        arr = np.load(path, allow_pickle=False)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"{path}: not a readable NumPy file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: expected a single array")
    if key is not None:
        warnings.warn(f"{path}: key={key!r} only applies to .npz files; ignored", stacklevel=2)
    arr = _check_array(path, arr, "the array")
    side = sidecar_path(path)
    stored = _read_sidecar(path, side, arr.shape) if side.is_file() else None
    if stored is not None:
        affine, axes, meta = stored
        _warn_ignored(path, spacing, origin, side.name)
        meta.update(source=str(path), format="npy")
        return Volume(arr, affine, meta, axes)
    return Volume(arr, _argument_geometry(path, spacing, origin), {"source": str(path), "format": "npy"})


def write_numpy(vol: Volume, path: str | Path) -> Path:
    """Write a Volume as .npz (geometry inside) or .npy + ``<name>.json`` sidecar (atomic)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"{path}: NumPy output must end with .npy or .npz")
    meta = {k: v for k, v in vol.meta.items() if k not in ("source", "format")}
    if suffix == ".npz":
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                array=vol.array,
                affine=vol.affine,
                file_axes=np.asarray(vol.file_axes, dtype=np.int64),
                meta=np.asarray(_meta_json(meta)),
            )
        return path
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, vol.array, allow_pickle=False)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "shape": list(vol.shape),
        "dtype": str(vol.array.dtype),
        "affine": vol.affine.tolist(),
        "file_axes": list(vol.file_axes),
        "meta": json.loads(_meta_json(meta)),
    }
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=1) + "\n")
    return path


__all__ = ["read_numpy", "write_numpy", "sidecar_path"]
