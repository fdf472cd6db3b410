"""`ctdl data info`: describe a volume, a DICOM folder, a KiTS19 folder or a DLAE HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctdl.errors import InputError
from ctdl.io import Volume, read_volume


def volume_summary(vol: Volume, max_labels: int = 256) -> dict[str, Any]:
    """Shape, spacing, orientation, value range and (for label-like arrays) label counts."""
    arr = vol.array
    info: dict[str, Any] = {
        "kind": "volume",
        "source": vol.meta.get("source"),
        "axes": "(D, H, W) = (slices, rows, columns)",
        "shape": list(vol.shape),
        "spacing_mm": [round(s, 4) for s in vol.spacing],
        "origin_mm": [round(o, 3) for o in vol.origin],
        "orientation": vol.orientation,
        "dtype": str(arr.dtype),
        "min": float(np.nanmin(arr)),
        "max": float(np.nanmax(arr)),
    }
    if vol.file_axes != (0, 1, 2):
        info["file_axes"] = list(vol.file_axes)
    for key in ("modality", "series_uid", "format"):
        if key in vol.meta:
            info[key] = vol.meta[key]
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_):
        values, counts = np.unique(arr, return_counts=True)
        if len(values) <= max_labels:
            info["label_counts"] = {int(v): int(c) for v, c in zip(values, counts)}
    if np.issubdtype(arr.dtype, np.floating):
        info["nan_voxels"] = int(np.isnan(arr).sum())
    return info


def _nifti_header_summary(path: Path) -> dict[str, Any]:
    """Geometry of a NIfTI file from its header only (no voxel data read)."""
    from ctdl.io.nifti import nifti_header_geometry

    geo = nifti_header_geometry(path)
    return {"shape": list(geo["shape"]), "spacing_mm": [round(v, 4) for v in geo["spacing"]],
            "orientation": geo["orientation"]}


def kits19_summary(root: Path) -> dict[str, Any]:
    from ctdl.data.datasets import kits19_cases

    cases = kits19_cases(root)
    info: dict[str, Any] = {
        "kind": "kits19",
        "root": str(root),
        "cases": len(cases),
        "with_imaging": sum(c.image is not None for c in cases),
        "with_segmentation": sum(c.label is not None for c in cases),
        "kits_json": (root / "kits.json").exists(),
    }
    first = cases[0]
    path = first.image or first.label
    if path is not None:
        info["first_case"] = {"case_id": first.case_id, "file": path.name, **_nifti_header_summary(path)}
    return info


def describe(path: str | Path, series_uid: str | None = None) -> dict[str, Any]:
    """A dict describing whatever ``path`` is."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file or folder not found")
    if p.is_dir():
        from ctdl.data.datasets import is_kits19_root

        if is_kits19_root(p):
            return kits19_summary(p)
        from ctdl.io.dicom import list_dicom_series

        series = list_dicom_series(p)
        if len(series) > 1 and series_uid is None:
            return {
                "kind": "dicom_folder",
                "series": [s.__dict__ for s in series],
                "hint": "several series: pass --series-uid UID",
            }
        vol = read_volume(p, series_uid=series_uid) if series_uid else read_volume(p)
        return volume_summary(vol)
    if p.suffix.lower() in (".h5", ".hdf5"):
        from ctdl.io.hdf5 import hdf5_info

        return {"kind": "dlae_hdf5", **hdf5_info(p)}
    return volume_summary(read_volume(p))


def format_info(info: dict[str, Any], indent: int = 0) -> str:
    pad = "  " * indent
    lines = []
    for key, value in info.items():
        if isinstance(value, dict) and key != "label_counts":
            lines.append(f"{pad}{key}:")
            lines.append(format_info(value, indent + 1))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key}:")
            for item in value:
                lines.append(f"{pad}  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        elif isinstance(value, list) and key in ("shape", "spacing_mm"):
            lines.append(f"{pad}{key}: " + " x ".join(str(v) for v in value))
        else:
            lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines)
