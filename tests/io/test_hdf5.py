"""DLAE HDF5 layout: samples as datasets '0'..'n-1', image/annotation pairs by name."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ctdl.errors import InputError
from ctdl.io.hdf5 import (
    check_dlae_pair,
    dlae_sample_channels_first,
    dlae_sample_to_volume,
    hdf5_info,
    read_dlae_hdf5,
    write_dlae_hdf5,
)


def write_raw(path: Path, named: dict[str, np.ndarray]) -> Path:
    """Write datasets exactly as named (the way a DLAE user's script would)."""
    with h5py.File(path, "w") as f:
        for name, arr in named.items():
            f.create_dataset(name, data=arr)
    return path


def test_round_trip_in_numeric_order(tmp_path: Path, rng: np.random.Generator) -> None:
    arrays = [rng.normal(size=(4, 5, 1)).astype(np.float32) * i for i in range(12)]  # '10' < '2' as text
    out = write_dlae_hdf5(tmp_path / "x.h5", arrays)
    back = read_dlae_hdf5(out)
    assert len(back) == 12
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    with h5py.File(out, "r") as f:
        assert sorted(f.keys(), key=int) == [str(i) for i in range(12)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_reads_files_written_the_dlae_way(tmp_path: Path) -> None:
    imgs = np.arange(3 * 4 * 4).reshape(3, 4, 4, 1).astype(np.float32)
    write_raw(tmp_path / "x.h5", {str(i): img for i, img in enumerate(imgs)})
    back = read_dlae_hdf5(tmp_path / "x.h5")
    np.testing.assert_array_equal(np.stack(back), imgs)


def test_detection_annotations_round_trip(tmp_path: Path) -> None:
    boxes = [np.array([[1, 10, 12, 30, 40], [2, 5, 5, 9, 9]], float), np.zeros((0, 5)), np.array([[3, 0, 0, 1, 1.5]])]
    back = read_dlae_hdf5(write_dlae_hdf5(tmp_path / "y.h5", boxes))
    assert [b.shape for b in back] == [(2, 5), (0, 5), (1, 5)]
    for a, b in zip(boxes, back):
        np.testing.assert_array_equal(a, b)


def test_bad_names_are_reported(tmp_path: Path) -> None:
    write_raw(tmp_path / "x.h5", {"0": np.zeros(2), "image_1": np.zeros(2), "02": np.zeros(2)})
    with pytest.raises(InputError) as err:
        read_dlae_hdf5(tmp_path / "x.h5")
    msg = str(err.value)
    assert str(tmp_path / "x.h5") in msg
    assert msg.endswith("bad names: ['02', 'image_1']")


def test_gaps_are_reported(tmp_path: Path) -> None:
    write_raw(tmp_path / "x.h5", {"0": np.zeros(2), "1": np.zeros(2), "3": np.zeros(2), "5": np.zeros(2)})
    with pytest.raises(InputError, match="missing") as err:
        read_dlae_hdf5(tmp_path / "x.h5")
    assert "'2'" in str(err.value) and "'4'" in str(err.value) and "x.h5" in str(err.value)


def test_groups_are_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("0")
    with pytest.raises(InputError, match="groups"):
        read_dlae_hdf5(tmp_path / "g.h5")


def test_check_pair(tmp_path: Path) -> None:
    x = write_dlae_hdf5(tmp_path / "x.h5", [np.zeros((4, 4, 1))] * 5)
    y = write_dlae_hdf5(tmp_path / "y.h5", [np.zeros((4, 4, 1), np.uint8)] * 5)
    assert check_dlae_pair(x, y) == 5
    short = write_dlae_hdf5(tmp_path / "short.h5", [np.zeros((4, 4, 1))] * 3)
    with pytest.raises(InputError) as err:
        check_dlae_pair(x, short)
    msg = str(err.value)
    assert f"missing from {short}" in msg and "['3', '4']" in msg
    write_raw(tmp_path / "odd.h5", {**{str(i): np.zeros(1) for i in range(4)}, "z": np.zeros(1)})
    with pytest.raises(InputError) as err:
        check_dlae_pair(tmp_path / "odd.h5", x)
    assert f"missing from {tmp_path / 'odd.h5'}: ['4']" in str(err.value) and "'z'" in str(err.value)


def test_info(tmp_path: Path) -> None:
    arrays = [np.zeros((4, 4, 1), np.float32)] * 3 + [np.zeros((6, 4, 1), np.int16)]
    info = hdf5_info(write_dlae_hdf5(tmp_path / "x.h5", arrays))
    assert info["n_samples"] == 4
    assert info["shapes"] == [(4, 4, 1), (6, 4, 1)]
    assert info["shape_counts"] == {"(4, 4, 1)": 3, "(6, 4, 1)": 1}
    assert info["dtypes"] == ["float32", "int16"]


def test_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_dlae_hdf5(tmp_path / "none.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="bad.h5"):
        hdf5_info(tmp_path / "bad.h5")


def test_sample_to_volume_3d(rng: np.random.Generator) -> None:
    rcs = rng.normal(size=(6, 5, 4)).astype(np.float32)  # (rows, cols, slices)
    for sample in (rcs, rcs[..., None]):
        vol = dlae_sample_to_volume(sample, "3D", spacing=(2.5, 0.8, 0.7))
        assert vol.shape == (4, 6, 5)
        np.testing.assert_array_equal(vol.array[2], rcs[:, :, 2])  # slice k is array[k]
        assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert vol.file_axes == (2, 0, 1)


def test_sample_to_volume_2d(rng: np.random.Generator) -> None:
    rc = rng.normal(size=(6, 5))
    for sample in (rc, rc[..., None]):
        vol = dlae_sample_to_volume(sample, "2D", spacing=(0.8, 0.7))
        assert vol.shape == (1, 6, 5)
        np.testing.assert_array_equal(vol.array[0], rc)
        assert vol.spacing == pytest.approx((1.0, 0.8, 0.7))


def test_multichannel_is_not_a_volume(rng: np.random.Generator) -> None:
    with pytest.raises(InputError, match="channels are not a volume axis"):
        dlae_sample_to_volume(rng.normal(size=(6, 5, 4, 3)), "3D")
    with pytest.raises(InputError, match="channels are not a volume axis"):
        dlae_sample_to_volume(rng.normal(size=(6, 5, 3)), "2D")
    with pytest.raises(InputError, match="rows, cols, slices"):
        dlae_sample_to_volume(rng.normal(size=(6, 5)), "3D")
    with pytest.raises(InputError, match="'2D' or '3D'"):
        dlae_sample_to_volume(rng.normal(size=(6, 5)), "4D")


def test_channels_first(rng: np.random.Generator) -> None:
    a3 = rng.normal(size=(6, 5, 4, 3))  # (rows, cols, slices, ch)
    cf = dlae_sample_channels_first(a3, "3D")
    assert cf.shape == (3, 4, 6, 5)
    np.testing.assert_array_equal(cf[1, 2], a3[:, :, 2, 1])
    assert dlae_sample_channels_first(a3[..., 0], "3D").shape == (1, 4, 6, 5)
    a2 = rng.normal(size=(6, 5, 2))
    cf2 = dlae_sample_channels_first(a2, "2D")
    assert cf2.shape == (2, 6, 5)
    np.testing.assert_array_equal(cf2[1], a2[..., 1])
    assert dlae_sample_channels_first(a2[..., 0], "2d").shape == (1, 6, 5)
