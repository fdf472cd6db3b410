"""Volumes for the viewer: downsampled previews, label volumes in ml, error maps, and checked uploads.

A full-size CT (611 x 512 x 512 int16, ~300 MB in memory) takes seconds to send and to upload to the GPU,
so the viewer first loads a preview strided to at most ``max_dim`` voxels per axis (nearest-neighbour
striding keeps label values exact), then the full file. Previews and error maps are cached on disk
keyed by the source's path, size and mtime. Written with nibabel directly (not :func:`ctdl.io.read_volume`)
because the viewer wants the file's own voxel order and affine, which NiiVue then places in world space.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ctdl.io.atomic import atomic_path
from ctdl.web.paths import sanitize_name


class BadVolume(ValueError):
    """A file the viewer cannot use (answered as HTTP 400 with this message)."""


def _key(path: Path, *extra: Any) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{extra}"
    return hashlib.sha1(raw.encode()).hexdigest()[:20]


def load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
        if len(img.shape) < 3:
            raise BadVolume(f"{path.name}: a 3D volume was expected, got shape {img.shape}")
        return img
    except BadVolume:
        raise
    except Exception as exc:  # nibabel raises several types for garbage input
        raise BadVolume(f"{path.name}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc


def preview_factor(shape: tuple[int, ...], max_dim: int) -> int:
    """Smallest integer stride that brings every spatial axis to at most ``max_dim`` voxels."""
    return max(1, -(-max(shape[:3]) // max_dim))


def make_preview(path: Path, cache_dir: Path, max_dim: int = 128) -> Path:
    """A strided copy of a NIfTI volume (affine scaled to match), cached; the file itself if already small."""
    img = load_nifti(path)
    f = preview_factor(img.shape, max_dim)
    if f == 1:
        return path
    out = cache_dir / f"preview_{_key(path, max_dim)}.nii.gz"
    if out.exists():
        return out
    try:
        data = _strided_slabs(path, img, f)
    except Exception as exc:
        raise BadVolume(f"{path.name}: voxel data could not be read ({exc})") from exc
    # nibabel moves scl_slope/scl_inter from a loaded header into the array proxy
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    if slope != 1 or inter != 0:
        # nibabel rewrites scl_slope/scl_inter on save, so the preview stores the scaled values
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter)
    aff = img.affine.copy()
    aff[:3, :3] = aff[:3, :3] * f
    # the first strided voxel is voxel 0, so the origin stays
    new = nib.Nifti1Image(data, aff)
    new.set_qform(aff, code=1)
    new.set_sform(aff, code=1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        # compresslevel 1: the preview is written once per file and must be quick
        with gzip.open(tmp, "wb", compresslevel=1) as fh:
            fh.write(new.to_bytes())
    return out


def _gzip_open(path: Path) -> Any:
    """ISA-L's gzip reader when installed (about twice as fast here), else the standard library's."""
    try:
        from isal import igzip

        return igzip.open(path, "rb")
    except ImportError:
        return gzip.open(path, "rb")


def _strided_slabs(path: Path, img: nib.Nifti1Image, f: int) -> np.ndarray:
    """``dataobj[::f, ::f, ::f]`` read one last-axis slab at a time, skipping the slabs not kept.

    Written by hand instead of nibabel's slicing, which holds the whole decompressed volume (~320 MB for a
    611 x 512 x 512 CT) before striding; here at most one slab is in memory. Falls back to nibabel for
    anything but a plain 3D volume.
    """
    shape, proxy = img.shape, img.dataobj
    if (len(shape) != 3 or not path.name.lower().endswith((".nii", ".nii.gz"))
            or getattr(proxy, "order", "F") != "F" or not hasattr(proxy, "offset")):
        return np.asarray(proxy[::f, ::f, ::f])
    dtype = np.dtype(proxy.dtype)
    slab = shape[0] * shape[1] * dtype.itemsize
    kept = []
    opener = _gzip_open(path) if path.name.lower().endswith(".gz") else path.open("rb")
    with opener as fh:
        fh.seek(int(proxy.offset))
        for k in range(shape[2]):
            if k % f:
                fh.seek(slab, 1)  # forward seek: decompressed and discarded, never kept
                continue
            buf = fh.read(slab)
            if len(buf) != slab:
                raise ValueError(f"file ends inside slab {k} of {shape[2]}")
            # NIfTI stores the first index fastest: a slab is (j, i) in C order
            kept.append(np.frombuffer(buf, dtype).reshape(shape[1], shape[0]).T[::f, ::f])
    return np.ascontiguousarray(np.stack(kept, axis=2))


def label_volumes(path: Path, names: list[str] | None = None) -> dict[str, Any]:
    """Voxel count and volume in ml of every label value (background included) of a label map."""
    img = load_nifti(path)
    arr = np.asarray(img.dataobj)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.allclose(arr, np.round(arr)):
            raise BadVolume(f"{path.name}: not a label map (non-integer values)")
        arr = np.round(arr).astype(np.int64)
    vox_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    values, counts = np.unique(arr, return_counts=True)
    out = []
    for v, c in zip(values.tolist(), counts.tolist()):
        name = names[v] if names and 0 <= v < len(names) else str(v)
        out.append({"label": int(v), "name": name, "voxels": int(c), "ml": round(c * vox_ml, 3)})
    return {"voxel_ml": vox_ml, "labels": out}


def error_map(pred: Path, truth: Path, cache_dir: Path) -> Path:
    """A label map of agreement: 1 true positive, 2 false positive, 3 false negative (foreground = label > 0,
    a voxel with the wrong foreground class counts as both FP and FN, shown as FP)."""
    out = cache_dir / f"errors_{_key(pred, str(truth))}_{_key(truth)}.nii.gz"
    if out.exists():
        return out
    p_img, t_img = load_nifti(pred), load_nifti(truth)
    if p_img.shape[:3] != t_img.shape[:3]:
        raise BadVolume(f"{pred.name} shape {p_img.shape} differs from {truth.name} shape {t_img.shape}")
    p, t = np.asarray(p_img.dataobj).astype(np.int16), np.asarray(t_img.dataobj).astype(np.int16)
    m = np.zeros(p.shape, np.uint8)
    m[(p > 0) & (p == t)] = 1
    m[(p > 0) & (p != t)] = 2
    m[(t > 0) & (p == 0)] = 3
    new = nib.Nifti1Image(m, t_img.affine)
    new.set_qform(t_img.affine, code=1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with gzip.open(tmp, "wb", compresslevel=1) as fh:
            fh.write(new.to_bytes())
    return out


def check_upload(path: Path) -> Path:
    """Make an uploaded file viewable: a NIfTI/NRRD/MHA is checked, a zip of DICOM is converted to NIfTI.

    Returns the path to use (a new ``.nii.gz`` beside a zip); raises :class:`BadVolume` for anything else.
    """
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        img = load_nifti(path)
        try:
            np.asarray(img.dataobj[:1, :1, :1])  # the header may parse while the data is garbage
        except Exception as exc:
            raise BadVolume(f"{path.name}: voxel data could not be read ({exc})") from exc
        return path
    if name.endswith((".nrrd", ".mha", ".mhd", ".nhdr")):
        import SimpleITK as sitk

        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise BadVolume(f"{path.name}: not a readable {name.rsplit('.', 1)[-1].upper()} file") from exc
        return path
    if name.endswith(".zip"):
        from ctdl.io import read_volume, write_volume

        if not zipfile.is_zipfile(path):
            raise BadVolume(f"{path.name}: not a zip archive")
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(path) as zf:
                for member in zf.infolist():
                    if member.is_dir():
                        continue
                    # flatten names: a zip's own paths (possibly with ..) never choose where files land
                    target = Path(tmp) / f"{len(list(Path(tmp).iterdir())):05d}_{sanitize_name(member.filename)}"
                    with zf.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
            try:
                vol = read_volume(tmp)
            except Exception as exc:
                raise BadVolume(f"{path.name}: no readable DICOM series in the zip ({exc})") from exc
            out = path.with_name(path.name[: -len(".zip")] + ".nii.gz")
            write_volume(vol, out)
        return out
    raise BadVolume(f"{path.name}: unsupported file type; expected .nii, .nii.gz, .nrrd, .mha or a .zip of DICOM files")
