"""NIfTI (.nii, .nii.gz) reading and writing with geometry (nibabel)."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ctdl.errors import InputError

try:  # ISA-L's gzip: the same .nii.gz bytes, read in ~half and written in ~a third of zlib's time
    from isal import igzip as _igzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a dependency; plain zlib (nibabel's own opener) still works
    _igzip = None
    _isal_error = zlib.error
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
        with _open_gz(path, "rb") as fobj:
            img = nib.load(str(path)) if fobj is None else nib.Nifti1Image.from_file_map(_file_map(path, fobj))
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
    except (EOFError, OSError, zlib.error, _isal_error, gzip.BadGzipFile, ValueError,
            nib.filebasedimages.ImageFileError) as exc:
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
    # NIfTI stores Fortran order: a Fortran-ordered array is written as it lies in memory (the file-order view of
    # a C-ordered (D, H, W) array already is one); a C-ordered copy made nibabel re-transpose it chunk by chunk
    # (3.2 s instead of 0.4 s for a 611 x 512 x 512 mask)
    img = nib.Nifti1Image(_fortran(arr), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    with atomic_path(path) as tmp:
        with _open_gz(tmp, "wb") as fobj:
            if fobj is None:
                nib.save(img, str(tmp))
            else:
                img.to_file_map(_file_map(tmp, fobj))
    return path


def _fortran(arr: np.ndarray, slab: int = 16) -> np.ndarray:
    """A Fortran-ordered copy of ``arr`` (itself if it already is one), copied slab by slab along axis 0.

    Hand-written because ``np.asfortranarray`` of a C-ordered 611 x 512 x 512 uint8 mask took 1.7 s here against
    0.5 s in slabs of 16 (each slab's transpose stays in cache; 16 was the fastest of 2..64 for uint8 and int16).
    """
    if arr.flags.f_contiguous or arr.ndim < 2 or arr.shape[0] <= slab:
        return np.asfortranarray(arr)
    out = np.empty(arr.shape, arr.dtype, order="F")
    for i in range(0, arr.shape[0], slab):
        out[i : i + slab] = arr[i : i + slab]
    return out


def _open_gz(path: Path, mode: str) -> Any:
    """An ISA-L gzip file object for a .gz path (level 1 when writing, as nibabel's default), else a null context."""
    if _igzip is None or not str(path).lower().endswith(".gz"):
        return contextlib.nullcontext()
    return _igzip.open(str(path), mode, compresslevel=1) if "w" in mode else _igzip.open(str(path), mode)


def _file_map(path: Path, fobj: Any) -> dict[str, Any]:
    from nibabel.fileholders import FileHolder

    holder = FileHolder(filename=str(path), fileobj=fobj)
    return {"header": holder, "image": holder}
