"""NIfTI reading/writing: (D, H, W) axis order, RAS geometry, file layout restored, bad files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctdl.errors import InputError
from ctdl.io import read_volume, write_volume
from ctdl.io.nifti import read_nifti, write_nifti
from ctdl.io.volume import Volume

# KiTS19-like file: axes 0, 1, 2 run I, P, L (0.5, 0.92, 0.92 mm), i.e. orientation 'IPL'
KITS_AFFINE = np.array(
    [[0.0, 0.0, -0.919921875, 0.0], [0.0, -0.919921875, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
# scanner-like file: axes run L, P, S (columns, rows, slices), as dcm2niix / SimpleITK write
LPS_AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 120.5], [0.0, -0.7, 0.0, 80.25], [0.0, 0.0, 2.5, -300.0], [0.0, 0.0, 0.0, 1.0]]
)


def save(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def assert_file_restored(written: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    img = nib.load(str(written))
    assert img.shape == arr.shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), arr)


def test_ipl_file_keeps_its_axis_order(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 3, size=(7, 5, 4)).astype(np.uint8)
    vol = read_nifti(save(tmp_path / "seg.nii.gz", arr, KITS_AFFINE))
    assert vol.shape == (7, 5, 4) and vol.orientation == "IPL" and vol.file_axes == (0, 1, 2)
    np.testing.assert_allclose(vol.spacing, (0.5, 0.919921875, 0.919921875), atol=1e-6)
    np.testing.assert_array_equal(vol.array, arr)
    out = write_nifti(vol, tmp_path / "out.nii.gz")
    assert_file_restored(out, arr, KITS_AFFINE)
    back = read_nifti(out)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_column_row_slice_file_is_permuted_and_restored(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.normal(size=(6, 5, 4)).astype(np.float32)  # (columns, rows, slices)
    vol = read_nifti(save(tmp_path / "ct.nii", arr, LPS_AFFINE))
    assert vol.shape == (4, 5, 6) and vol.orientation == "SPL" and vol.file_axes == (2, 1, 0)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.7, 0.8), atol=1e-6)
    np.testing.assert_array_equal(vol.array[3], arr[:, :, 3].T)  # slice 3 as (rows, columns)
    # a voxel's world position is unchanged by the permutation
    np.testing.assert_allclose(vol.affine @ (3, 2, 1, 1), LPS_AFFINE @ (1, 2, 3, 1), atol=1e-9)
    for name in ("out.nii", "out.nii.gz"):
        out = write_volume(vol, tmp_path / name)
        assert_file_restored(out, arr, LPS_AFFINE)
        back = read_volume(out)
        np.testing.assert_array_equal(back.array, vol.array)
        np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_volume_made_in_code_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = Volume.from_array(rng.integers(-1024, 2000, size=(3, 4, 5)).astype(np.int16), (2.0, 0.5, 0.6), (1, 2, 3))
    back = read_nifti(write_nifti(vol, tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_scaling_is_applied(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), LPS_AFFINE)
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    vol = read_nifti(tmp_path / "s.nii.gz")
    assert sorted(vol.array.ravel().tolist()) == [float(2 * v - 10) for v in range(8)]


def test_4d_files(tmp_path: Path) -> None:
    vol = read_nifti(save(tmp_path / "one.nii.gz", np.zeros((3, 4, 5, 1), np.uint8), KITS_AFFINE))
    assert vol.shape == (3, 4, 5)
    with pytest.raises(InputError, match="3D") as err:
        read_nifti(save(tmp_path / "four.nii.gz", np.zeros((3, 4, 5, 2), np.uint8), KITS_AFFINE))
    assert "four.nii.gz" in str(err.value)


def test_truncated_file_is_an_input_error(tmp_path: Path, rng: np.random.Generator) -> None:
    good = save(tmp_path / "good.nii.gz", rng.integers(0, 3, size=(40, 50, 60)).astype(np.uint8), KITS_AFFINE)
    data = good.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_nifti(cut)
    assert str(cut) in str(err.value)
    with pytest.raises(InputError, match="cut.nii.gz"):
        read_volume(cut)


def test_missing_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as err:
        read_nifti(tmp_path / "none.nii.gz")
    assert str(tmp_path / "none.nii.gz") in str(err.value)
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "none.nii.gz")
    with pytest.raises(InputError, match=".nii"):
        write_nifti(Volume(np.zeros((2, 2, 2))), tmp_path / "x.img")


# -- real files ----------------------------------------------------------------------------


def test_kits19_segmentation_geometry(shared_data: Path) -> None:
    vol = read_nifti(shared_data / "kits19" / "case_00000" / "segmentation.nii.gz")
    assert vol.shape == (611, 512, 512)
    np.testing.assert_allclose(vol.spacing, (0.5, 0.9199, 0.9199), atol=1e-4)
    assert vol.orientation == "IPL" and vol.file_axes == (0, 1, 2)
    assert set(np.unique(vol.array[::8, ::8, ::8]).tolist()) <= {0, 1, 2}


@pytest.mark.slow
def test_kits19_segmentation_round_trip(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "kits19" / "case_00000" / "segmentation.nii.gz"
    vol = read_nifti(src)
    out = write_nifti(vol, tmp_path / "seg.nii.gz")
    orig = nib.load(str(src))
    assert_file_restored(out, np.asarray(orig.dataobj), orig.affine)


def test_sample_ct_round_trip(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "sample_ct" / "ct_3mm_30slices.nii.gz"
    vol = read_nifti(src)
    assert vol.array.dtype == np.int16 and vol.spacing == pytest.approx((3.0, 3.0, 3.0), abs=1e-3)
    back = read_nifti(write_nifti(vol, tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_isal_gzip_is_standard_gzip_both_ways(tmp_path: Path, rng: np.random.Generator) -> None:
    """ctdl reads and writes .nii.gz through ISA-L's gzip (a dependency); the files stay plain gzip NIfTI."""
    import ctdl.io.nifti as nifti_mod

    assert nifti_mod._igzip is not None
    arr = rng.integers(-1000, 1000, (7, 9, 11)).astype(np.int16)
    theirs = save(tmp_path / "theirs.nii.gz", arr, KITS_AFFINE)  # nibabel + zlib
    vol = read_nifti(theirs)  # ISA-L
    ours = write_nifti(vol, tmp_path / "ours.nii.gz")  # ISA-L
    assert_file_restored(ours, arr, KITS_AFFINE)  # read back by nibabel + zlib
    assert np.array_equal(read_nifti(ours).array, vol.array)


@pytest.mark.parametrize("shape", [(37, 5, 6), (16, 3, 4), (5, 7), (40, 3, 2, 2)])
def test_fortran_copy_in_slabs_equals_numpys(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    from ctdl.io.nifti import _fortran

    arr = rng.integers(0, 255, shape).astype(np.uint8)  # C-ordered; 37 and 40 are not multiples of the slab
    out = _fortran(arr, slab=16)
    assert out.flags.f_contiguous and np.array_equal(out, arr) and not np.shares_memory(out, arr)
    f = np.asfortranarray(arr)
    assert _fortran(f) is f  # already Fortran-ordered: no copy


def test_c_ordered_volume_writes_the_same_file_as_fortran_ordered(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 3, (40, 9, 11)).astype(np.uint8)
    c = Volume.from_array(np.ascontiguousarray(arr), spacing=(2.0, 0.8, 0.8))
    f = Volume.from_array(np.asfortranarray(arr), spacing=(2.0, 0.8, 0.8))
    write_volume(c, tmp_path / "c.nii.gz")
    write_volume(f, tmp_path / "f.nii.gz")
    assert np.array_equal(read_volume(tmp_path / "c.nii.gz").array, arr)
    assert np.array_equal(read_volume(tmp_path / "f.nii.gz").array, arr)
