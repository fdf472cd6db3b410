"""Single-file SimpleITK formats (NRRD .nrrd/.nhdr, MetaImage .mha/.mhd) <-> Volume.

ITK geometry (origin, spacing, direction) is in LPS and indexed (x, y, z). The file voxel
order recorded in ``Volume.file_axes`` is that ITK index order (as for NIfTI's (i, j, k)), so a
volume read from NIfTI and written as NRRD keeps its voxel layout, and vice versa. The Volume
affine is RAS+: the sign of the first two world rows is flipped here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_path
from ctdl.io.volume import Volume, from_file_order, to_file_order

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_DETACHED = (".nhdr", ".mhd")  # header + separate data file
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_FORMAT = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}


def _last_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in SUFFIXES:
        if name.endswith(suf):
            return suf
    raise InputError(f"{path}: expected a SimpleITK file ending in {', '.join(SUFFIXES)}")


def read_sitk(path: str | Path) -> Volume:
    """Read an NRRD/MetaImage volume into a (D, H, W) Volume with RAS geometry."""
    path = Path(path)
    suf = _suffix(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable {_FORMAT[suf]} file ({_last_line(exc)})") from exc
    if img.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D image, got {img.GetDimension()}D of size {img.GetSize()}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: expected one value per voxel, got {img.GetNumberOfComponentsPerPixel()} components "
            "(vector/colour images are not volumes)"
        )
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # NumPy gives (z, y, x); file order is (x, y, z)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = img.GetOrigin()
    return from_file_order(array, _LPS_TO_RAS @ lps, {"source": str(path), "format": _FORMAT[suf]})


def _to_image(vol: Volume) -> sitk.Image:
    arr, aff = to_file_order(vol)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    lps = _LPS_TO_RAS @ aff
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"cannot write a volume with zero spacing (affine columns {spacing})")
    direction = lps[:3, :3] / spacing[None, :]
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)), isVector=False)  # (x, y, z) -> (z, y, x)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def write_sitk(vol: Volume, path: str | Path) -> Path:
    """Write a Volume as NRRD/MetaImage (atomic, gzip-compressed), restoring its file voxel order."""
    path = Path(path)
    suf = _suffix(path)
    img = _to_image(vol)
    try:
        if suf not in _DETACHED:
            with atomic_path(path) as tmp:
                sitk.WriteImage(img, str(tmp), True)
            return path
        # header + data file: write both under their final names in a scratch folder beside the
        # target, then move the data file(s) first and the header last, each atomically
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
            sitk.WriteImage(img, os.path.join(scratch, path.name), True)
            written = sorted(Path(scratch).iterdir(), key=lambda p: p.name == path.name)
            for src in written:
                with atomic_path(path.parent / src.name) as tmp:
                    os.replace(src, tmp)
    except RuntimeError as exc:
        raise InputError(f"{path}: could not write {_FORMAT[suf]} file ({_last_line(exc)})") from exc
    return path


__all__ = ["read_sitk", "write_sitk"]
