"""Tests for the ctdl command line (run in-process through ctdl.cli.main)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctdl.cli import build_parser, main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("data", "config"):
        assert cmd in out
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"data", "config"} <= set(choices)


def test_data_info_kits19(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", str(shared_data / "kits19")]) == 0
    out = capsys.readouterr().out
    assert "cases: 210" in out
    assert "spacing_mm: 0.5 x 0.9199 x 0.9199" in out


def test_data_info_dicom_series(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", str(shared_data / "sample_ct" / "dicom_series"), "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [20, 512, 512]
    assert info["spacing_mm"] == pytest.approx([2.0, 0.9766, 0.9766], abs=1e-3)
    assert info["min"] == pytest.approx(-1024, abs=1) and info["max"] == pytest.approx(1839, abs=1)


def test_convert_dicom_to_nifti_roundtrip(shared_data: Path, tmp_path: Path) -> None:
    from ctdl.io import read_volume

    out = tmp_path / "ct.nii.gz"
    assert main(["data", "convert", str(shared_data / "sample_ct" / "dicom_series"), str(out)]) == 0
    a = read_volume(shared_data / "sample_ct" / "dicom_series")
    b = read_volume(out)
    assert np.array_equal(a.array, b.array)
    assert np.allclose(a.affine, b.affine, atol=1e-4)


def test_errors_are_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", str(tmp_path / "missing.nii.gz")]) == 2
    assert "missing.nii.gz: file or folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "info", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err
    # no half-written output after a failing convert
    assert main(["data", "convert", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")]) == 2
    assert list(tmp_path.glob("*o.nii.gz*")) == []


def test_config_validate_and_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "defaults"]) == 0
    text = capsys.readouterr().out
    f = tmp_path / "d.yaml"
    f.write_text(text)
    assert main(["config", "validate", str(f)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["config", "validate", str(f), "--set", "training.epochs=zero"]) == 2
    err = capsys.readouterr().err
    assert "training.epochs" in err and str(f) in err
