"""NumPy volumes: ctdl .npz/.npy(+sidecar) round trips and foreign arrays without geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctdl.errors import InputError
from ctdl.io import read_volume, write_volume
from ctdl.io.nifti import read_nifti, write_nifti
from ctdl.io.numpy_io import read_numpy, sidecar_path, write_numpy
from ctdl.io.volume import Volume, affine_from_geometry, from_file_order


def ipl_volume(rng: np.random.Generator) -> Volume:
    """Non-identity file_axes and a non-RAS affine, like a volume read from NIfTI in odd order."""
    file_aff = np.array([[0.0, 0.0, 0.9, -5.0], [0.0, 0.8, 0.0, 7.5], [-2.5, 0.0, 0.0, 30.0], [0, 0, 0, 1]])
    file_aff = file_aff[:, [2, 0, 1, 3]]  # file axes run L/R, S/I, A/P -> file_axes (1, 2, 0)
    arr = rng.normal(size=(4, 5, 6)).astype(np.float32)
    vol = from_file_order(arr, file_aff, {"modality": "CT", "series_uid": "1.2.3"})
    assert vol.file_axes != (0, 1, 2)
    return vol


def assert_same(a: Volume, b: Volume) -> None:
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.dtype == b.array.dtype
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    assert a.file_axes == b.file_axes


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_round_trip_restores_geometry(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    vol = ipl_volume(rng)
    back = read_numpy(write_numpy(vol, tmp_path / f"v{suffix}"))
    assert_same(back, vol)
    np.testing.assert_array_equal(back.affine, vol.affine)  # exact, not just close
    assert back.meta["modality"] == "CT" and back.meta["series_uid"] == "1.2.3"
    assert back.meta["source"] == str(tmp_path / f"v{suffix}")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_npy_sidecar_contents(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = ipl_volume(rng)
    write_numpy(vol, tmp_path / "v.npy")
    side = sidecar_path(tmp_path / "v.npy")
    assert side == tmp_path / "v.json"
    info = json.loads(side.read_text())
    assert info["shape"] == list(vol.shape) and info["file_axes"] == list(vol.file_axes)
    np.testing.assert_array_equal(np.asarray(info["affine"]), vol.affine)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), vol.array)  # the .npy alone is (D, H, W)


def test_numpy_to_nifti_keeps_file_layout(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = ipl_volume(rng)
    via_npz = read_volume(write_volume(vol, tmp_path / "v.npz"))
    direct = read_nifti(write_nifti(vol, tmp_path / "direct.nii.gz"))
    converted = read_nifti(write_nifti(via_npz, tmp_path / "conv.nii.gz"))
    assert_same(converted, direct)


def test_npy_without_sidecar_is_d_h_w(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 5, size=(3, 4, 5)).astype(np.uint8)
    np.save(tmp_path / "a.npy", arr)
    vol = read_numpy(tmp_path / "a.npy")
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.origin == (0.0, 0.0, 0.0)
    assert vol.file_axes == (0, 1, 2)
    vol = read_numpy(tmp_path / "a.npy", spacing=(3.0, 0.7, 0.6), origin=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(vol.affine, affine_from_geometry((3.0, 0.7, 0.6), (1.0, 2.0, 3.0)), atol=1e-12)


def test_sidecar_wins_over_arguments(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = ipl_volume(rng)
    write_numpy(vol, tmp_path / "v.npy")
    with pytest.warns(UserWarning, match="ignored"):
        back = read_numpy(tmp_path / "v.npy", spacing=(9.0, 9.0, 9.0))
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-12)


def test_stale_sidecar_is_reported(tmp_path: Path, rng: np.random.Generator) -> None:
    write_numpy(ipl_volume(rng), tmp_path / "v.npy")
    np.save(tmp_path / "v.npy", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(InputError, match="stale") as err:
        read_numpy(tmp_path / "v.npy")
    assert "v.json" in str(err.value)


def test_2d_array_is_one_slice(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.arange(12).reshape(3, 4))
    assert read_numpy(tmp_path / "s.npy").shape == (1, 3, 4)


def test_foreign_npz(tmp_path: Path, rng: np.random.Generator) -> None:
    img = rng.normal(size=(2, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "one.npz", data=img)
    vol = read_numpy(tmp_path / "one.npz", spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(vol.array, img)
    assert vol.spacing == (2.0, 1.0, 1.0) and vol.meta["key"] == "data"

    np.savez(tmp_path / "two.npz", image=img, label=(img > 0).astype(np.uint8))
    with pytest.raises(InputError, match="key") as err:
        read_numpy(tmp_path / "two.npz")
    assert "image" in str(err.value) and "label" in str(err.value) and "two.npz" in str(err.value)
    np.testing.assert_array_equal(read_numpy(tmp_path / "two.npz", key="label").array, img > 0)
    with pytest.raises(InputError, match="'mask'") as err:
        read_numpy(tmp_path / "two.npz", key="mask")
    assert "image" in str(err.value)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_numpy(tmp_path / "none.npy")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(InputError) as err:
        read_numpy(bad)
    assert str(bad) in str(err.value)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="bad.npy"):
        read_numpy(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy"):
        read_numpy(tmp_path / "obj.npy")
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(InputError, match="shape"):
        read_numpy(tmp_path / "4d.npy")
    np.save(tmp_path / "ok.npy", np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="spacing"):
        read_numpy(tmp_path / "ok.npy", spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match=".npy or .npz"):
        write_numpy(Volume(np.zeros((2, 2, 2))), tmp_path / "x.txt")
