"""Volume IO: one ``read_volume`` / ``write_volume`` pair that dispatches on the path.

Readers: NIfTI, DICOM series folders, single-file SimpleITK formats (NRRD, MHA/MHD),
NumPy (.npy/.npz) and DLAE HDF5 samples. Writers: NIfTI, NumPy (and SimpleITK formats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctdl.errors import InputError
from ctdl.io.nifti import is_nifti, read_nifti, write_nifti
from ctdl.io.volume import Volume, affine_from_geometry

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
NUMPY_SUFFIXES = (".npy", ".npz")


def read_volume(path: str | Path, **kwargs: Any) -> Volume:
    """Read any supported volume; folders are read as DICOM series."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file or folder not found")
    name = p.name.lower()
    if p.is_dir():
        from ctdl.io.dicom import read_dicom_series

        return read_dicom_series(p, **kwargs)
    if is_nifti(p):
        return read_nifti(p, **kwargs)
    if name.endswith(SITK_SUFFIXES):
        from ctdl.io.sitk_io import read_sitk

        return read_sitk(p, **kwargs)
    if name.endswith(NUMPY_SUFFIXES):
        from ctdl.io.numpy_io import read_numpy

        return read_numpy(p, **kwargs)
    if name.endswith(".dcm"):
        from ctdl.io.dicom import read_dicom_series

        return read_dicom_series(p.parent, **kwargs)
    raise InputError(
        f"{p}: unknown volume format (expected .nii, .nii.gz, .nrrd, .mha, .mhd, .npy, .npz or a DICOM folder)"
    )


def write_volume(vol: Volume, path: str | Path, **kwargs: Any) -> Path:
    """Write a Volume; the format follows the extension (atomic write)."""
    p = Path(path)
    name = p.name.lower()
    if is_nifti(p):
        return write_nifti(vol, p, **kwargs)
    if name.endswith(NUMPY_SUFFIXES):
        from ctdl.io.numpy_io import write_numpy

        return write_numpy(vol, p, **kwargs)
    if name.endswith(SITK_SUFFIXES):
        from ctdl.io.sitk_io import write_sitk

        return write_sitk(vol, p, **kwargs)
    raise InputError(f"{p}: unknown output format (expected .nii, .nii.gz, .npy, .npz, .nrrd or .mha)")


__all__ = ["Volume", "affine_from_geometry", "read_volume", "write_volume", "read_nifti", "write_nifti"]
