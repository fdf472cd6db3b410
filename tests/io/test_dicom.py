"""DICOM series reading: synthetic series written with pydicom, plus the real sample series."""

from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctdl.errors import InputError
from ctdl.io import read_nifti, read_volume, write_volume
from ctdl.io.dicom import DicomSeriesInfo, list_dicom_series, read_dicom_series
from ctdl.io.volume import to_file_order

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    uid: str | None = None,
    description: str = "synthetic",
    iop: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-10.0, 20.0, -50.0),
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_step: float = 2.5,
    slope: float = 2.0,
    intercept: float = -1024.0,
    seed: int = 0,
    prefix: str = "img",
    tilt: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[str, np.ndarray]:
    """Write ``stored`` (slices, rows, cols; uint16) as one series in shuffled file order.

    Returns the series UID and the expected LPS affine of the (col, row, slice) index order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    study = generate_uid()
    row_cos, col_cos = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row_cos, col_cos)
    n, rows, cols = stored.shape
    names = np.random.default_rng(seed).permutation(n)  # file name order != slice order
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.Modality = "CT"
        ds.SeriesDescription = description
        ds.StudyDescription = "test study"
        ds.InstanceNumber = int(n - k)  # reversed, so sorting must not rely on it
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * (slice_step * normal + tilt)]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = 5.0  # deliberately different from the position step
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = np.ascontiguousarray(stored[k].astype(np.uint16)).tobytes()
        ds.save_as(folder / f"{prefix}{names[k]:03d}", enforce_file_format=True)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * pixel_spacing[1]
    lps[:3, 1] = col_cos * pixel_spacing[0]
    lps[:3, 2] = normal * slice_step + tilt
    lps[:3, 3] = origin
    return uid, lps


def stored_values(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, size=shape).astype(np.uint16)


# -- synthetic series ----------------------------------------------------------------------


def test_reads_sorted_rescaled_with_geometry(tmp_path: Path) -> None:
    stored = stored_values((5, 6, 7))
    uid, lps = write_series(tmp_path / "s", stored)
    vol = read_dicom_series(tmp_path / "s")
    assert vol.shape == (5, 6, 7)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) * 2 - 1024)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7), atol=1e-6)
    # axial: D = slice, H = row, W = column
    np.testing.assert_allclose(vol.affine, (LPS_TO_RAS @ lps)[:, [2, 1, 0, 3]], atol=1e-4)
    assert vol.orientation == "SPL"
    assert vol.file_axes == (2, 1, 0)  # file order is (column, row, slice), as in NIfTI/ITK
    arr, aff = to_file_order(vol)
    assert arr.shape == (7, 6, 5)
    np.testing.assert_allclose(aff, LPS_TO_RAS @ lps, atol=1e-4)
    assert vol.meta["series_uid"] == uid
    assert vol.meta["modality"] == "CT"
    assert vol.meta["study_description"] == "test study"
    assert vol.meta["series_description"] == "synthetic"
    assert vol.meta["source"] == str(tmp_path / "s")


def test_read_volume_dispatches_folder(tmp_path: Path) -> None:
    stored = stored_values((3, 4, 4))
    write_series(tmp_path / "s", stored)
    vol = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) * 2 - 1024)


def test_non_integer_rescale_gives_float32(tmp_path: Path) -> None:
    stored = stored_values((3, 4, 5))
    write_series(tmp_path / "s", stored, slope=0.5, intercept=-1000.25)
    vol = read_dicom_series(tmp_path / "s")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, stored * 0.5 - 1000.25, atol=1e-3)


def test_integral_values_outside_int16_give_float32(tmp_path: Path) -> None:
    stored = np.full((2, 3, 3), 60000, dtype=np.uint16)
    write_series(tmp_path / "s", stored, slope=1.0, intercept=0.0)
    vol = read_dicom_series(tmp_path / "s")
    assert vol.array.dtype == np.float32
    assert float(vol.array.max()) == 60000.0


def test_sagittal_series_is_permuted_to_d_h_w(tmp_path: Path) -> None:
    # rows run inferior (-z), columns posterior (+y); slices step along the normal (-x, to the right)
    stored = stored_values((4, 6, 5))
    _, lps = write_series(tmp_path / "s", stored, iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    vol = read_dicom_series(tmp_path / "s")
    assert vol.orientation[0] in "SI" and vol.orientation[1] in "AP" and vol.orientation[2] in "LR"
    assert vol.shape == (6, 5, 4)
    arr, aff = to_file_order(vol)  # back to (col, row, slice)
    np.testing.assert_array_equal(arr, (stored.astype(np.int32) * 2 - 1024).transpose(2, 1, 0))
    np.testing.assert_allclose(aff, LPS_TO_RAS @ lps, atol=1e-4)


def test_gantry_tilt_keeps_slice_positions(tmp_path: Path) -> None:
    """With a tilted gantry the slice step has an in-plane part; every slice origin must stay exact."""
    stored = stored_values((4, 5, 6))
    _, lps = write_series(tmp_path / "s", stored, tilt=(0.0, 0.4, 0.0))
    vol = read_dicom_series(tmp_path / "s")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in (tmp_path / "s").iterdir()]
    positions = sorted((np.asarray(h.ImagePositionPatient, float) for h in headers), key=lambda p: p[2])
    for k, ipp in enumerate(positions):
        np.testing.assert_allclose(vol.affine @ (k, 0, 0, 1), LPS_TO_RAS @ (*ipp, 1), atol=1e-4)
    np.testing.assert_allclose(to_file_order(vol)[1], LPS_TO_RAS @ lps, atol=1e-4)


def test_simpleitk_agrees_on_synthetic_series(tmp_path: Path) -> None:
    stored = stored_values((4, 6, 7))
    write_series(tmp_path / "s", stored, iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    vol = read_dicom_series(tmp_path / "s")
    assert_matches_simpleitk(vol, tmp_path / "s")


def test_pixel_decoding_falls_back_to_simpleitk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = stored_values((3, 4, 5))
    write_series(tmp_path / "s", stored)

    def no_decoder(self: Dataset) -> np.ndarray:
        raise NotImplementedError("no pixel data handler for this transfer syntax")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoder))
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) * 2 - 1024)
    assert vol.array.dtype == np.int16


# -- several series, errors ----------------------------------------------------------------


@pytest.fixture
def two_series(tmp_path: Path) -> tuple[Path, str, str, np.ndarray, np.ndarray]:
    folder = tmp_path / "mixed"
    a, b = stored_values((4, 5, 6), seed=1), stored_values((3, 5, 6), seed=2)
    uid_a, _ = write_series(folder, a, description="soft tissue", prefix="a")
    uid_b, _ = write_series(folder, b, description="bone", prefix="b", slice_step=1.0, seed=3)
    (folder / "notes.txt").write_text("not a DICOM file\n")
    return folder, uid_a, uid_b, a, b


def test_list_series(two_series: tuple) -> None:
    folder, uid_a, uid_b, _, _ = two_series
    infos = {i.uid: i for i in list_dicom_series(folder)}
    assert set(infos) == {uid_a, uid_b}
    assert infos[uid_a] == DicomSeriesInfo(uid_a, "soft tissue", "CT", 4, 5, 6)
    assert infos[uid_b] == DicomSeriesInfo(uid_b, "bone", "CT", 3, 5, 6)


def test_several_series_without_uid_lists_them(two_series: tuple) -> None:
    folder, uid_a, uid_b, _, _ = two_series
    with pytest.raises(InputError) as err:
        read_dicom_series(folder)
    msg = str(err.value)
    for part in (str(folder), uid_a, uid_b, "soft tissue", "bone", "4 files", "3 files", "series_uid"):
        assert part in msg


def test_select_series_by_uid(two_series: tuple) -> None:
    folder, uid_a, uid_b, a, b = two_series
    va = read_dicom_series(folder, series_uid=uid_a)
    vb = read_dicom_series(folder, series_uid=uid_b)
    np.testing.assert_array_equal(va.array, a.astype(np.int32) * 2 - 1024)
    np.testing.assert_array_equal(vb.array, b.astype(np.int32) * 2 - 1024)
    assert va.spacing[0] == pytest.approx(2.5) and vb.spacing[0] == pytest.approx(1.0)
    assert read_volume(folder, series_uid=uid_b).same_geometry(vb)


def test_unknown_uid(two_series: tuple) -> None:
    folder, uid_a, _, _, _ = two_series
    with pytest.raises(InputError, match="1.2.3.4.5") as err:
        read_dicom_series(folder, series_uid="1.2.3.4.5")
    assert str(folder) in str(err.value) and uid_a in str(err.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as err:
        read_dicom_series(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    with pytest.raises(InputError):
        list_dicom_series(tmp_path / "nope")


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(InputError, match="no DICOM") as err:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM"):
        read_dicom_series(empty)


def test_missing_slice_is_reported(tmp_path: Path) -> None:
    write_series(tmp_path / "s", stored_values((5, 4, 4)))
    # remove the file holding the middle slice (found by its position)
    for f in (tmp_path / "s").iterdir():
        if abs(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) - (-50.0 + 2 * 2.5)) < 1e-3:
            f.unlink()
    with pytest.raises(InputError, match="not uniform"):
        read_dicom_series(tmp_path / "s")


def test_duplicate_positions_are_reported(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path / "s", stored_values((3, 4, 4)), uid=uid, prefix="a")
    write_series(tmp_path / "s", stored_values((3, 4, 4)), uid=uid, prefix="b")
    with pytest.raises(InputError, match="share a position"):
        read_dicom_series(tmp_path / "s")


# -- the real sample series ----------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _read_real(folder: str):
    return read_dicom_series(folder)


def assert_matches_simpleitk(vol, folder: Path) -> None:
    """Compare with SimpleITK's own series reader (independent sort, rescale and LPS geometry)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    arr, aff = to_file_order(vol)
    np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(img).transpose(2, 1, 0))  # ITK index (x, y, z)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    np.testing.assert_allclose(aff, LPS_TO_RAS @ lps, atol=1e-4)


def test_real_series_shape_spacing_hu(shared_data: Path) -> None:
    vol = _read_real(str(shared_data / "sample_ct" / "dicom_series"))
    assert vol.shape == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing, (2.0, 0.977, 0.977), atol=1e-3)
    assert vol.array.dtype == np.int16
    assert int(vol.array.min()) == -1024 and int(vol.array.max()) == 1839
    assert vol.meta["modality"] == "CT"
    assert vol.orientation == "SPL"
    assert vol.meta["slice_thickness"] == pytest.approx(3.0)  # nominal thickness != 2 mm step
    # the sample is anonymised down to an empty SeriesInstanceUID; it is still one series
    infos = list_dicom_series(shared_data / "sample_ct" / "dicom_series")
    assert infos == [DicomSeriesInfo("", "CT Body 3.0", "CT", 20, 512, 512)]
    assert vol.meta["series_uid"] == ""


def test_real_series_matches_simpleitk(shared_data: Path) -> None:
    folder = shared_data / "sample_ct" / "dicom_series"
    assert_matches_simpleitk(_read_real(str(folder)), folder)


def test_real_series_segmentation_shares_the_voxel_grid(shared_data: Path) -> None:
    """The label map lies on the same world grid, but stored with the row axis flipped (LAS file)."""
    vol = _read_real(str(shared_data / "sample_ct" / "dicom_series"))
    seg = read_nifti(shared_data / "sample_ct" / "dicom_series_seg.nii.gz")
    assert seg.shape == vol.shape
    np.testing.assert_allclose(seg.spacing, vol.spacing, atol=1e-3)
    # seg voxel -> world -> CT voxel: an exact axis flip, i.e. the same set of voxel centres
    index_map = np.linalg.inv(vol.affine) @ seg.affine
    np.testing.assert_allclose(index_map, [[1, 0, 0, 0], [0, -1, 0, 511], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-3)
    # so the arrays only line up once that flip is applied (labels inside the body: >95 %)
    labels = seg.array[:, ::-1, :] > 0
    body = vol.array > -300
    assert (labels & body).sum() / labels.sum() > 0.95
    flipped_affine = seg.affine @ np.array([[1, 0, 0, 0], [0, -1, 0, 511], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(flipped_affine, vol.affine, atol=1e-3)


def test_real_series_to_nifti_round_trip(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "sample_ct" / "dicom_series"
    vol = _read_real(str(folder))
    out = write_volume(vol, tmp_path / "ct.nii.gz")
    img = nib.load(str(out))  # the usual NIfTI layout: (columns, rows, slices)
    assert img.shape == (512, 512, 20) and nib.aff2axcodes(img.affine) == ("L", "P", "S")
    back = read_volume(out)
    again = read_volume(folder)
    np.testing.assert_array_equal(back.array, again.array)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.affine, again.affine, atol=1e-4)
    assert back.file_axes == again.file_axes
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]  # no temporary files left
