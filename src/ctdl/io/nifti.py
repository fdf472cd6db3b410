"""NIfTI (.nii, .nii.gz) reading and writing with geometry (nibabel)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_path
from ctdl.io.volume import Volume, canonical_axes, from_file_order, to_file_order


def is_nifti(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | Path, dtype: np.dtype | None = None) -> Volume:
    """Read a NIfTI file into a (D, H, W) Volume; scaling (scl_slope/inter) is applied."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        if len(img.shape) != 3:
            if len(img.shape) == 4 and img.shape[3] == 1:
                img = img.slicer[..., 0]
            else:
                raise InputError(f"{path}: expected a 3D image, got shape {img.shape}")
        data = np.asanyarray(img.dataobj)
        if dtype is not None:
            data = data.astype(dtype)
    except InputError:
        raise
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    vol = from_file_order(np.asarray(data), img.affine, {"source": str(path), "format": "nifti"})
    return vol


def nifti_header_geometry(path: str | Path) -> dict[str, Any]:
    """Shape, spacing and orientation in the (D, H, W) convention from a NIfTI header only (no voxels read)."""
    path = Path(path)
    try:
        img = nib.load(str(path))
    except (OSError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from exc
    perm = canonical_axes(img.affine)
    zooms = img.header.get_zooms()
    codes = nib.aff2axcodes(img.affine)
    return {
        "shape": tuple(int(img.shape[p]) for p in perm),
        "spacing": tuple(float(zooms[p]) for p in perm),
        "orientation": "".join(codes[p] for p in perm),
    }


def write_nifti(vol: Volume, path: str | Path, dtype: np.dtype | None = None) -> Path:
    """Write a Volume as NIfTI (atomic), restoring the file voxel order it was read in."""
    path = Path(path)
    if not is_nifti(path):
        raise InputError(f"{path}: NIfTI output must end with .nii or .nii.gz")
    arr, aff = to_file_order(vol)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
