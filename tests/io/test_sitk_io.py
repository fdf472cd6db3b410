"""NRRD / MetaImage reading and writing through SimpleITK, with LPS <-> RAS geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ctdl.errors import InputError
from ctdl.io import read_volume, write_volume
from ctdl.io.nifti import write_nifti
from ctdl.io.sitk_io import read_sitk, write_sitk
from ctdl.io.volume import Volume, from_file_order

SUFFIXES = [".nrrd", ".nhdr", ".mha", ".mhd"]


def oblique_volume(rng: np.random.Generator, dtype: type = np.int16) -> Volume:
    """A small volume in non-RAS file order (like KiTS19 'IPL') with a slightly rotated affine."""
    theta = np.deg2rad(10.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    file_aff = np.eye(4)
    # file axes 0, 1, 2 run I, P, L (2.5, 0.8, 0.9 mm), then rotated 10 degrees about S
    file_aff[:3, :3] = rot @ np.array([[0.0, 0.0, -0.9], [0.0, -0.8, 0.0], [-2.5, 0.0, 0.0]])
    file_aff[:3, 3] = (12.5, -30.25, 101.0)
    arr = rng.integers(-1000, 2000, size=(4, 5, 6)).astype(dtype)
    return from_file_order(arr, file_aff, {"source": "test"})


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_keeps_array_and_geometry(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    vol = oblique_volume(rng)
    out = write_sitk(vol, tmp_path / f"v{suffix}")
    back = read_sitk(out)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert back.file_axes == vol.file_axes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("suffix", [".nrrd", ".mhd"])
def test_dispatcher_round_trip(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    vol = oblique_volume(rng, np.float32)
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_mhd_writes_header_and_data_file(tmp_path: Path, rng: np.random.Generator) -> None:
    write_sitk(oblique_volume(rng), tmp_path / "v.mhd")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "v.mhd" and len(names) == 2 and names[1].startswith("v.")
    header = (tmp_path / "v.mhd").read_text(errors="replace")
    assert f"ElementDataFile = {names[1]}" in header


def test_lps_geometry_matches_itk_physical_points(tmp_path: Path) -> None:
    """A voxel's RAS position from our affine equals ITK's LPS physical point with x, y negated."""
    img = sitk.GetImageFromArray(np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5))
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((-100.0, 50.0, -200.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    vol = read_sitk(tmp_path / "a.nrrd")
    assert vol.shape == (3, 4, 5)
    for ijk in [(0, 0, 0), (4, 3, 2), (1, 2, 1)]:
        x, y, z = img.TransformIndexToPhysicalPoint(ijk)
        d, h, w = ijk[2], ijk[1], ijk[0]
        np.testing.assert_allclose(vol.affine @ (d, h, w, 1), (-x, -y, z, 1), atol=1e-6)
        assert vol.array[d, h, w] == img[ijk]


def test_nifti_and_nrrd_agree_in_simpleitk(tmp_path: Path, rng: np.random.Generator) -> None:
    """Independent check of the LPS flip and voxel layout: SimpleITK reads our NIfTI and NRRD identically."""
    vol = oblique_volume(rng)
    a = sitk.ReadImage(str(write_nifti(vol, tmp_path / "v.nii.gz")))
    b = sitk.ReadImage(str(write_sitk(vol, tmp_path / "v.nrrd")))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_bool_written_as_uint8(tmp_path: Path) -> None:
    vol = Volume.from_array(np.eye(4, dtype=bool)[None].repeat(2, 0), spacing=(2.0, 1.0, 1.0))
    back = read_sitk(write_sitk(vol, tmp_path / "m.nrrd"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, vol.array)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as err:
        read_sitk(tmp_path / "none.nrrd")
    assert "none.nrrd" in str(err.value)
    bad = tmp_path / "bad.mha"
    bad.write_bytes(b"this is not a metaimage")
    with pytest.raises(InputError) as err:
        read_sitk(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(InputError, match="expected a SimpleITK file"):
        read_sitk(tmp_path / "x.png")


def test_2d_and_vector_images_are_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image(4, 5, sitk.sitkInt16), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError, match="3D"):
        read_sitk(tmp_path / "flat.nrrd")
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(tmp_path / "vec.mha"))
    with pytest.raises(InputError, match="components"):
        read_sitk(tmp_path / "vec.mha")
