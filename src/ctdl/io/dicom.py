"""DICOM series folders -> Volume (pydicom for headers and pixels, SimpleITK as decoder fallback).

Slices are sorted by their position along the slice normal (row x column direction
cosines), RescaleSlope/RescaleIntercept are applied per slice so values are HU, and the
slice step comes from ImagePositionPatient (never from SliceThickness). DICOM world
coordinates are LPS; the Volume affine is RAS+ (first two world rows negated). The file voxel
order kept in ``Volume.file_axes`` is ITK's / NIfTI's (column, row, slice), so writing the
volume as NIfTI or NRRD gives the usual (columns, rows, slices) layout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ctdl.errors import InputError
from ctdl.io.volume import Volume, from_file_order

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENT_TOL = 1e-4  # direction-cosine agreement between slices of one series
_INT16 = np.iinfo(np.int16)


@dataclass
class DicomSeriesInfo:
    """One series found in a folder: what ``list_dicom_series`` reports and errors quote."""

    uid: str
    description: str
    modality: str
    n_files: int
    rows: int
    columns: int

    def describe(self) -> str:
        """One line for messages: UID, description, modality, file count and image size."""
        desc = repr(self.description) if self.description else "(no description)"
        uid = self.uid or "'' (empty SeriesInstanceUID)"
        return f"{uid}  {desc}  {self.modality or '?'}  {self.n_files} files  {self.rows}x{self.columns}"


@dataclass
class _Slice:
    path: Path
    uid: str
    description: str
    modality: str
    rows: int
    columns: int
    n_frames: int
    position: np.ndarray | None  # ImagePositionPatient (LPS mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (6 cosines)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    instance: int | None
    slope: float
    intercept: float
    header: pydicom.Dataset


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _image_header(ds: pydicom.Dataset) -> pydicom.Dataset | None:
    # DICOMDIR, structured reports, presentation states and non-DICOM files have no Rows/Columns
    return ds if "Rows" in ds and "Columns" in ds else None


def _read_header(path: Path) -> pydicom.Dataset | None:
    """Parse a file's header, or None if it is not a DICOM image file."""
    try:
        return _image_header(pydicom.dcmread(str(path), stop_before_pixels=True))
    except InvalidDicomError:
        pass
    except Exception:  # noqa: BLE001 - anything unparsable is simply not DICOM
        return None
    try:  # files without the 128-byte preamble + 'DICM' marker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns while guessing at non-DICOM bytes
            return _image_header(pydicom.dcmread(str(path), stop_before_pixels=True, force=True))
    except Exception:  # noqa: BLE001
        return None


def _slice_from_header(path: Path, ds: pydicom.Dataset) -> _Slice:
    ps = _floats(ds.get("PixelSpacing"), 2)
    inst = ds.get("InstanceNumber")
    try:
        instance = int(inst) if inst not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    slope = ds.get("RescaleSlope", 1.0)
    intercept = ds.get("RescaleIntercept", 0.0)
    return _Slice(
        path=path,
        uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),  # anonymised data may leave it empty
        description=str(ds.get("SeriesDescription", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        n_frames=int(ds.get("NumberOfFrames", 1) or 1),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
        instance=instance,
        slope=float(slope if slope not in (None, "") else 1.0),
        intercept=float(intercept if intercept not in (None, "") else 0.0),
        header=ds,
    )


def _scan(folder: str | Path) -> tuple[Path, dict[str, list[_Slice]]]:
    """Read every file header in ``folder`` (not recursive) and group images by SeriesInstanceUID."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: DICOM folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder holding a DICOM series, got a file")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    series: dict[str, list[_Slice]] = {}
    for path in files:
        ds = _read_header(path)
        if ds is None:
            continue
        try:
            sl = _slice_from_header(path, ds)
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: malformed DICOM header ({type(exc).__name__}: {exc})") from exc
        series.setdefault(sl.uid, []).append(sl)
    if not series:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        hint = f"; it has sub-folders {subdirs[:10]} - pass the folder holding the slice files" if subdirs else ""
        raise InputError(
            f"{folder}: no DICOM image files found ({len(files)} files checked; expected files with "
            f"Rows and Columns){hint}"
        )
    return folder, series


def _info(uid: str, slices: list[_Slice]) -> DicomSeriesInfo:
    first = slices[0]
    return DicomSeriesInfo(uid, first.description, first.modality, len(slices), first.rows, first.columns)


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """List the DICOM series in a folder (sorted by UID) so a user can pick one by ``series_uid``."""
    _, series = _scan(folder)
    return [_info(uid, series[uid]) for uid in sorted(series)]


def _choose_series(folder: Path, series: dict[str, list[_Slice]], series_uid: str | None) -> tuple[str, list[_Slice]]:
    listing = "\n".join(f"  {_info(u, series[u]).describe()}" for u in sorted(series))
    if series_uid is None:
        if len(series) == 1:
            uid = next(iter(series))
            return uid, series[uid]
        raise InputError(
            f"{folder}: holds {len(series)} DICOM series; pass series_uid=<SeriesInstanceUID> to choose one of:\n"
            f"{listing}"
        )
    uid = str(series_uid).strip()
    if uid not in series:
        raise InputError(f"{folder}: no DICOM series with SeriesInstanceUID {uid!r}; the folder holds:\n{listing}")
    return uid, series[uid]


def _geometry(folder: Path, uid: str, slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Sort slices along the normal and build the LPS affine for the (column, row, slice) file order."""
    where = f"{folder} (series {uid!r})"
    multi = [s.path.name for s in slices if s.n_frames > 1]
    if multi:
        raise InputError(
            f"{where}: multi-frame (enhanced) DICOM files are not supported ({multi[:3]}); "
            "convert the series to single-frame DICOM or NIfTI first"
        )
    missing = [s.path.name for s in slices if s.position is None or s.orientation is None or s.pixel_spacing is None]
    if missing:
        raise InputError(
            f"{where}: {len(missing)} files lack ImagePositionPatient, ImageOrientationPatient or PixelSpacing "
            f"(e.g. {missing[:3]}); the slice geometry cannot be built"
        )
    first = slices[0]
    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        raise InputError(f"{where}: slices have different sizes {sorted(sizes)}; expected one rows x columns size")
    iop0, ps0 = cast(np.ndarray, first.orientation), cast(tuple, first.pixel_spacing)
    for s in slices:
        iop, ps = cast(np.ndarray, s.orientation), cast(tuple, s.pixel_spacing)
        if not np.allclose(iop, iop0, atol=_ORIENT_TOL):
            raise InputError(
                f"{where}: slice orientations differ ({first.path.name}: {iop0.tolist()}, "
                f"{s.path.name}: {iop.tolist()}); localizer images in the series? "
                "Expected one ImageOrientationPatient for all slices"
            )
        if not np.allclose(ps, ps0, atol=1e-4):
            raise InputError(
                f"{where}: PixelSpacing differs between slices ({first.path.name}: {ps0}, "
                f"{s.path.name}: {ps}); expected one pixel spacing"
            )
    row_cos = iop0[:3]  # direction of increasing column index
    col_cos = iop0[3:]  # direction of increasing row index
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 1e-3:
        raise InputError(f"{where}: ImageOrientationPatient {iop0.tolist()} is degenerate")
    normal = normal / np.linalg.norm(normal)
    along = [float(np.dot(cast(np.ndarray, s.position), normal)) for s in slices]
    order = sorted(range(len(slices)), key=lambda i: (along[i], slices[i].instance or 0))
    slices = [slices[i] for i in order]
    dist = np.asarray([along[i] for i in order])
    if len(slices) > 1:
        gaps = np.diff(dist)
        dup = np.flatnonzero(gaps < 1e-3)
        if dup.size:
            a, b = slices[dup[0]], slices[dup[0] + 1]
            raise InputError(
                f"{where}: {dup.size + 1} slices share a position (e.g. {a.path.name} and {b.path.name} at "
                f"{dist[dup[0]]:.3f} mm along the normal); several acquisitions or echoes in one series? "
                "Expected one slice per position"
            )
        mean = float((dist[-1] - dist[0]) / (len(slices) - 1))
        bad = np.flatnonzero(np.abs(gaps - mean) > max(0.01, 0.01 * mean))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{where}: slice spacing is not uniform (mean {mean:.4f} mm, but {gaps[i]:.4f} mm between "
                f"{slices[i].path.name} and {slices[i + 1].path.name}); missing slices? "
                "Expected equally spaced slices"
            )
        step = (cast(np.ndarray, slices[-1].position) - cast(np.ndarray, slices[0].position)) / (len(slices) - 1)
    else:
        hdr = slices[0].header
        thick = hdr.get("SpacingBetweenSlices") or hdr.get("SliceThickness") or 1.0
        step = normal * float(thick)
    dr, dc = ps0
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = step
    lps[:3, 3] = cast(np.ndarray, slices[0].position)
    return slices, lps


def _decode(sl: _Slice) -> tuple[np.ndarray, float, float]:
    """Stored pixel values with the slope/intercept still to apply (SimpleITK fallback is already rescaled)."""
    try:
        ds = pydicom.dcmread(str(sl.path))
        raw = ds.pixel_array
        slope, intercept = sl.slope, sl.intercept
    except Exception as exc:  # noqa: BLE001 - e.g. no pydicom decoder for this transfer syntax
        try:
            import SimpleITK as sitk

            raw = sitk.GetArrayFromImage(sitk.ReadImage(str(sl.path)))  # GDCM applies the rescale itself
            slope, intercept = 1.0, 0.0
        except Exception as exc2:  # noqa: BLE001
            raise InputError(
                f"{sl.path}: cannot decode the DICOM pixel data (pydicom: {type(exc).__name__}: {exc}; "
                f"SimpleITK: {type(exc2).__name__}: {exc2})"
            ) from exc2
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.shape != (sl.rows, sl.columns):
        raise InputError(
            f"{sl.path}: pixel data has shape {raw.shape}, expected ({sl.rows}, {sl.columns}) "
            "(colour or multi-frame images are not supported)"
        )
    return raw, slope, intercept


def _to_hu(decoded: list[tuple[np.ndarray, float, float]]) -> np.ndarray:
    """Stack slices in HU: int16 when every value is an integer in int16 range, else float32."""
    integral = all(
        np.issubdtype(raw.dtype, np.integer) and float(s).is_integer() and float(b).is_integer()
        for raw, s, b in decoded
    )
    if integral:
        lo = min(min(int(raw.min()) * s, int(raw.max()) * s) + b for raw, s, b in decoded)
        hi = max(max(int(raw.min()) * s, int(raw.max()) * s) + b for raw, s, b in decoded)
        integral = _INT16.min <= lo and hi <= _INT16.max
    rows, cols = decoded[0][0].shape
    out = np.empty((len(decoded), rows, cols), dtype=np.int16 if integral else np.float32)
    for k, (raw, s, b) in enumerate(decoded):
        if integral:
            out[k] = raw.astype(np.int32) * int(s) + int(b)
        else:
            out[k] = raw.astype(np.float64) * s + b
    return out


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM series folder into a (D, H, W) Volume in HU with its RAS geometry."""
    folder, series = _scan(folder)
    uid, slices = _choose_series(folder, series, series_uid)
    slices, lps = _geometry(folder, uid, slices)
    # file voxel order is ITK's / NIfTI's (column, row, slice), so a series written as NIfTI or
    # NRRD gets the usual layout (e.g. 512 x 512 x n_slices)
    array = _to_hu([_decode(s) for s in slices]).transpose(2, 1, 0)
    hdr = slices[0].header
    meta: dict[str, Any] = {
        "source": str(folder),
        "format": "dicom",
        "modality": slices[0].modality,
        "series_uid": uid,
        "series_description": slices[0].description,
        "n_files": len(slices),
    }
    for key, tag in (
        ("study_description", "StudyDescription"),
        ("body_part", "BodyPartExamined"),
        ("slice_thickness", "SliceThickness"),
    ):
        value = hdr.get(tag)
        if value not in (None, ""):
            meta[key] = float(value) if key == "slice_thickness" else str(value)
    if len(slices) == 1:
        warnings.warn(f"{folder}: series {uid!r} has a single slice; slice spacing taken from the header", stacklevel=2)
    vol = from_file_order(array, _LPS_TO_RAS @ lps, meta)
    vol.array = np.ascontiguousarray(vol.array)
    return vol


__all__ = ["DicomSeriesInfo", "list_dicom_series", "read_dicom_series"]
