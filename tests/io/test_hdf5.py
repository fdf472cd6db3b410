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


# -- layouts per model type, split, NIfTI -> HDF5 (issue 7 item 5) ------------------------------
from ctdl.io.hdf5 import (  # noqa: E402
    check_dlae_sample,
    dlae_validation_split,
    nifti_cases_to_hdf5,
    read_dlae_pairs,
    write_dlae_pairs,
)


def test_layout_of_every_model_type_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    img2d = [rng.normal(size=(16, 12, 1)).astype(np.float32) for _ in range(3)]
    img3d = [rng.normal(size=(8, 8, 4)).astype(np.float32) for _ in range(2)]  # (r, c, s), channel axis absent
    cases = {
        "cnn_classification": (img2d, [np.array([i], np.uint8) for i in range(3)], "2D", 3),
        "cnn_regression": (img2d, [np.array([1.5 * i, 2.0], np.float32) for i in range(3)], "2D", None),
        "fcn": (img3d, [(a > 0).astype(np.uint8) for a in img3d], "3D", 2),
        "gan": (img2d, [np.concatenate([a, -a], axis=-1) for a in img2d], "2D", None),
        "bbd": (img2d, [np.array([[1, 0, 0, 5, 6], [3, 2, 3, 12, 16]], np.float32), np.array([2, 1, 1, 4, 4]),
                        np.zeros((0, 5))], "2D", 3),
    }
    for model, (xs, ys, ctx, n) in cases.items():
        xp, yp = write_dlae_pairs(tmp_path / f"{model}_X.h5", tmp_path / f"{model}_y.h5", xs, ys, model, ctx, n)
        back = read_dlae_pairs(xp, yp, model, ctx, n)
        assert len(back) == len(xs)
        for (bx, by), x, y in zip(back, xs, ys):
            np.testing.assert_array_equal(bx, x)
            np.testing.assert_array_equal(by, y)


@pytest.mark.parametrize(
    "model,x,y,ctx,n,match",
    [
        ("bbd", (16, 16, 1), np.array([[0, 1, 1, 4, 4]]), "2D", 2, "class ids"),  # bug 27: ids start at 1
        ("bbd", (16, 16, 1), np.array([[1, 5, 1, 4, 4]]), "2D", 2, "degenerate"),
        ("bbd", (16, 16, 1), np.array([[1, 1, 1, 20, 4]]), "2D", 2, "outside"),
        ("bbd", (8, 8, 4, 1), np.array([[1, 1, 1, 2, 2]]), "3D", 2, "2D only"),
        ("cnn_classification", (8, 8, 1), np.array([3]), "2D", 3, "0..2"),
        ("cnn_classification", (8, 8, 1), np.zeros((8, 8)), "2D", 3, "one integer"),
        ("cnn_regression", (8, 8, 1), np.zeros((2, 2)), "2D", None, r"vector \(n,\)"),
        ("fcn", (8, 8, 1), np.zeros((8, 7)), "2D", 2, "spatial size"),
        ("fcn", (8, 8, 4), np.zeros((8, 8, 4, 3)), "3D", 2, "trailing axis"),
        # bug 26: 4-D (13, 13, 7, 1) samples under a 2D context were silently treated as 2D images
        ("fcn", (13, 13, 7, 1), np.zeros((13, 13, 7, 1)), "2D", 2, r"2D DLAE sample must be \(rows, cols\[, ch\]\)"),
    ],
)
def test_layout_errors_name_the_problem(model, x, y, ctx, n, match) -> None:
    with pytest.raises(InputError, match=match):
        check_dlae_sample(np.zeros(x, np.float32), y, model, ctx, n, where="s")


def test_validation_split_is_seeded_and_ceil() -> None:
    # bug 22: the original shuffled with an unseeded random.shuffle
    tr, va = dlae_validation_split(10, 0.25, seed=3)
    assert len(va) == 3 and len(tr) == 7 and sorted(tr + va) == list(range(10))  # ceil(2.5) = 3
    assert dlae_validation_split(10, 0.25, seed=3) == (tr, va)
    assert any(dlae_validation_split(10, 0.25, seed=s)[1] != va for s in range(4, 8))
    assert dlae_validation_split(10, 0.2, seed=0, shuffle=False) == (list(range(2, 10)), [0, 1])
    assert dlae_validation_split(7, 0.0, seed=0) == (list(range(7)), [])


def _kits_like(root: Path, rng: np.random.Generator) -> None:
    from ctdl.io import Volume, write_volume
    from ctdl.io.volume import affine_from_geometry

    for k, depth in enumerate((3, 4)):
        d = root / f"case_{k:05d}"
        d.mkdir(parents=True)
        img = rng.normal(size=(depth, 6, 5)).astype(np.float32)
        seg = np.zeros((depth, 6, 5), np.uint8)
        seg[1, 2:4, 1:3] = 1 + k
        aff = affine_from_geometry((2.0, 1.0, 1.0))
        write_volume(Volume(img, aff), d / "imaging.nii.gz")
        write_volume(Volume(seg, aff), d / "segmentation.nii.gz")


def test_nifti_cases_to_hdf5_2d_and_3d(tmp_path: Path, rng: np.random.Generator) -> None:
    from ctdl.data.datasets import kits19_cases, load_case

    _kits_like(tmp_path / "kits", rng)
    out = nifti_cases_to_hdf5(tmp_path / "kits", tmp_path / "x.h5", tmp_path / "y.h5", "2D", progress=False)
    assert out["n_samples"] == 7 and out["shape"] == (6, 5, 1)
    pairs = read_dlae_pairs(tmp_path / "x.h5", tmp_path / "y.h5", "fcn", "2D", 3)
    vols = [load_case(c) for c in kits19_cases(tmp_path / "kits")]
    np.testing.assert_allclose(pairs[4][0][..., 0], vols[1][0].array[1], atol=1e-6)  # case 1, slice 1
    assert pairs[4][1].max() == 2
    skip = nifti_cases_to_hdf5(tmp_path / "kits", tmp_path / "xs.h5", tmp_path / "ys.h5", "2D", skip_empty=True,
                               progress=False)
    assert skip["n_samples"] == 2
    out3 = nifti_cases_to_hdf5(tmp_path / "kits", tmp_path / "x3.h5", tmp_path / "y3.h5", "3D", progress=False)
    assert out3["n_samples"] == 2
    x3 = read_dlae_hdf5(tmp_path / "x3.h5")
    assert x3[1].shape == (6, 5, 4, 1)  # (r, c, s, ch)
    np.testing.assert_allclose(x3[1][..., 2, 0], vols[1][0].array[2], atol=1e-6)
    info = hdf5_info(tmp_path / "y3.h5")
    assert info["integer_values"] == [0, 1, 2] and info["value_range"] == [0.0, 2.0]
    assert info["content"].startswith("images")


def test_cli_to_hdf5_and_info(tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture) -> None:
    from ctdl.cli import main

    _kits_like(tmp_path / "kits", rng)
    assert main(["data", "to-hdf5", str(tmp_path / "kits"), str(tmp_path / "x.h5"), str(tmp_path / "y.h5"),
                 "--context", "3D", "--cases", "case_00001"]) == 0
    assert "wrote 1 samples" in capsys.readouterr().out
    boxes = write_dlae_hdf5(tmp_path / "b.h5", [np.array([[1, 0, 0, 3, 3]], np.float32)])
    assert main(["data", "info", str(boxes), "--json"]) == 0
    text = capsys.readouterr().out
    assert "boxes (BBD" in text and '"n_samples": 1' in text


def test_label_map_boxes_and_other_layouts_from_nifti(tmp_path: Path, rng: np.random.Generator) -> None:
    from ctdl.io.hdf5 import label_map_boxes

    lab = np.zeros((10, 12), np.uint8)
    lab[1:4, 2:5] = 1
    lab[6, 9] = 1  # a second, one-pixel kidney component
    lab[2:3, 3:4] = 2
    boxes = label_map_boxes(lab)
    np.testing.assert_array_equal(boxes, [[1, 2, 1, 5, 4], [1, 9, 6, 10, 7], [2, 3, 2, 4, 3]])
    assert label_map_boxes(np.zeros((3, 3))).shape == (0, 5)
    _kits_like(tmp_path / "kits", rng)
    out = nifti_cases_to_hdf5(tmp_path / "kits", tmp_path / "bx.h5", tmp_path / "by.h5", "2D", skip_empty=True,
                              progress=False, model="bbd")
    pairs = read_dlae_pairs(tmp_path / "bx.h5", tmp_path / "by.h5", "bbd", "2D", 2)
    assert out["n_samples"] == 2
    np.testing.assert_array_equal(pairs[1][1], [[2, 1, 2, 3, 4]])  # case 1: label 2 at rows 2:4, cols 1:3
    nifti_cases_to_hdf5(tmp_path / "kits", tmp_path / "cx.h5", tmp_path / "cy.h5", "3D", progress=False,
                        model="cnn_classification")
    assert [int(y[0]) for _, y in read_dlae_pairs(tmp_path / "cx.h5", tmp_path / "cy.h5", "cnn_classification", "3D", 3)] == [1, 2]
    with pytest.raises(InputError, match="2D only"):
        nifti_cases_to_hdf5(tmp_path / "kits", tmp_path / "q.h5", tmp_path / "r.h5", "3D", model="bbd")
