"""Tests for ctdl.data.datasets: the three layouts and every bad-input check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctdl.data.datasets import (
    Case,
    folder_cases,
    kits19_cases,
    limit_cases,
    load_case,
    manifest_cases,
)
from ctdl.errors import InputError
from ctdl.io import Volume, write_volume


def _pair(root: Path, name: str, label: np.ndarray | None = None, spacing=(2.0, 1.0, 1.0)) -> None:
    img = Volume.from_array(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), spacing=spacing)
    (root / name).mkdir(parents=True)
    write_volume(img, root / name / "imaging.nii.gz")
    lab = np.zeros((4, 5, 6), np.uint8) if label is None else label
    write_volume(img.with_array(lab), root / name / "segmentation.nii.gz")


def test_kits19_real_masks(shared_data: Path) -> None:
    cases = kits19_cases(shared_data / "kits19")
    assert len(cases) == 210
    assert cases[0].case_id == "case_00000" and cases[0].image is None and cases[0].label is not None
    assert cases[0].meta.get("case_id") == "case_00000"  # kits.json attached
    with pytest.raises(InputError, match="imaging.nii.gz is missing"):
        kits19_cases(shared_data / "kits19", require_images=True)


def test_kits19_layout_loads_and_checks(tmp_path: Path) -> None:
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    lab[2, 2, 2] = 2
    _pair(tmp_path, "case_00000", lab)
    [case] = kits19_cases(tmp_path)
    img, seg = load_case(case, n_classes=3)
    assert img.shape == seg.shape == (4, 5, 6)
    assert int((seg.array == 2).sum()) == 1
    with pytest.raises(InputError, match=r"label values \[2\] outside the declared classes 0\.\.1"):
        load_case(case, n_classes=2)


def test_shape_and_geometry_mismatch(tmp_path: Path) -> None:
    img = Volume.from_array(np.zeros((4, 5, 6), np.int16), spacing=(2, 1, 1))
    write_volume(img, tmp_path / "img.nii.gz")
    write_volume(Volume.from_array(np.zeros((4, 5, 7), np.uint8), spacing=(2, 1, 1)), tmp_path / "lab_shape.nii.gz")
    write_volume(Volume.from_array(np.zeros((4, 5, 6), np.uint8), spacing=(3, 1, 1)), tmp_path / "lab_geom.nii.gz")
    with pytest.raises(InputError, match=r"lab_shape.nii.gz: label shape \(4, 5, 7\) differs"):
        load_case(Case("x", tmp_path / "img.nii.gz", tmp_path / "lab_shape.nii.gz"))
    with pytest.raises(InputError, match=r"lab_geom.nii.gz: label geometry"):
        load_case(Case("x", tmp_path / "img.nii.gz", tmp_path / "lab_geom.nii.gz"))


def test_nan_image_rejected(tmp_path: Path) -> None:
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    write_volume(Volume.from_array(arr), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match=r"nan.nii.gz: image contains 1 NaN"):
        load_case(Case("x", tmp_path / "nan.nii.gz"))


def test_folder_pair_matches_by_name(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    v = Volume.from_array(np.zeros((2, 3, 4), np.int16))
    for n in ("a", "b"):
        write_volume(v, tmp_path / "images" / f"{n}.nii.gz")
    write_volume(v.with_array(np.zeros((2, 3, 4), np.uint8)), tmp_path / "labels" / "a.nii.gz")
    cases = folder_cases(tmp_path)
    assert [(c.case_id, c.label is not None) for c in cases] == [("a", True), ("b", False)]
    write_volume(v, tmp_path / "labels" / "zzz.nii.gz")
    with pytest.raises(InputError, match="labels without a matching image.*zzz"):
        folder_cases(tmp_path)


def test_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label,split\nvols/a.nii.gz,1,train\nvols/b.nii.gz,miliary,val\n")
    cases = manifest_cases(tmp_path / "m.csv")
    assert [(c.case_id, c.target, c.split) for c in cases] == [("a", "1", "train"), ("b", "miliary", "val")]
    assert cases[0].image == tmp_path / "vols" / "a.nii.gz"
    (tmp_path / "bad.csv").write_text("file,label\nx,1\n")
    with pytest.raises(InputError, match="needs columns 'path' and 'label'"):
        manifest_cases(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("path,label,split\nx,1,training\n")
    with pytest.raises(InputError, match="line 2: split must be"):
        manifest_cases(tmp_path / "bad2.csv")


def test_missing_and_limit(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        kits19_cases(tmp_path / "nope")
    with pytest.raises(InputError, match="no case_XXXXX"):
        kits19_cases(tmp_path)
    cases = [Case(f"c{i}") for i in range(5)]
    assert [c.case_id for c in limit_cases(cases, 2)] == ["c0", "c1"]
    assert [c.case_id for c in limit_cases(cases, ["c3"])] == ["c3"]
    with pytest.raises(InputError, match="unknown case ids"):
        limit_cases(cases, ["zz"])
