"""Fixtures for the web UI tests: a tiny KiTS19-like data folder, a finished fake run, an app factory."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
STUB = Path(__file__).with_name("stub_train.py")


def write_nifti(path: Path, arr: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                flip_x: bool = False) -> Path:
    """Write ``arr`` (file axes i, j, k) with a diagonal affine; ``flip_x`` negates the first axis (LAS vs RAS)."""
    aff = np.diag([*spacing, 1.0])
    if flip_x:
        aff[0, 0] = -spacing[0]
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(aff, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def phantom(shape: tuple[int, int, int] = (16, 16, 8)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like block (air -1000, body 40 HU, kidney 150 HU) and its labels (kidney 1, tumour 2)."""
    img = np.full(shape, -1000, np.int16)
    img[2:-2, 2:-2, 1:-1] = 40
    lab = np.zeros(shape, np.uint8)
    lab[4:10, 4:10, 2:6] = 1
    lab[6:8, 6:8, 3:5] = 2
    img[lab > 0] = 150
    return img, lab


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """kits19/ with case 0 and 1 normal, case 2 with label value 3, flipped orientation and odd spacing."""
    root = tmp_path / "data" / "kits19"
    for i in range(3):
        img, lab = phantom()
        spacing = (1.0, 1.0, 3.0) if i < 2 else (1.0, 1.0, 9.0)
        flip = i == 2
        if i == 2:
            lab[0, 0, 0] = 3
        write_nifti(root / f"case_{i:05d}" / "imaging.nii.gz", img, spacing, flip)
        write_nifti(root / f"case_{i:05d}" / "segmentation.nii.gz", lab, spacing, flip)
    return tmp_path / "data"


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """runs/ with one finished fake run ``done`` that follows the run-folder contract."""
    runs = tmp_path / "runs"
    d = runs / "done"
    d.mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    cfg["name"] = "done"
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    with (d / "history.csv").open("w") as fh:
        fh.write("epoch,lr,train_loss,val_dice_mean\n0,0.003,1.2,\n1,0.003,0.9,0.4\n2,0.003,0.7,0.6\n3,0.003,0.6,0.5\n")
    (d / "summary.json").write_text(json.dumps({"task": "segmentation", "model": "unet3d_small", "params": 10,
                                                "status": "finished", "metrics": {"kidney_dice": 0.8}, "timing": {}}))
    (d / "report").mkdir()
    (d / "report" / "curves.png").write_bytes(b"\x89PNG fake")
    (d / "report.html").write_text("<html><body><h1>report of done</h1><img src='report/curves.png'></body></html>")
    img, lab = phantom()
    cache = runs / ".cache" / "case_00000"
    write_nifti(cache / "imaging.nii.gz", img)
    write_nifti(cache / "segmentation.nii.gz", lab)
    pred = lab.copy()
    pred[4, 4:10, 2:6] = 0  # 24 false-negative kidney voxels
    pred[12, 12, 4] = 1  # one false positive
    write_nifti(d / "predictions" / "case_00000.nii.gz", pred)
    (d / "test_cases.json").write_text(json.dumps({"case_00000": {"image": str(cache / "imaging.nii.gz"),
                                                                  "label": str(cache / "segmentation.nii.gz")}}))
    with (d / "metrics.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "kidney_dice", "kidney_hd95_mm"])
        w.writerow(["case_00000", "0.9", "2.5"])
    return runs


@pytest.fixture
def make_app(runs_dir: Path, data_dir: Path) -> Callable[..., Any]:
    from ctdl.web.app import create_app

    apps = []

    def make(**kw: Any) -> Any:
        kw.setdefault("train_cmd", [sys.executable, str(STUB)])
        kw.setdefault("recipes_dir", REPO / "recipes")
        kw.setdefault("sse_interval_s", 0.05)
        kw.setdefault("upload_limit_mb", 0.5)
        app = create_app(runs_dir, [data_dir], **kw)
        apps.append(app)
        return app

    yield make
    for app in apps:  # leave no stub process behind
        for proc in list(app.state.manager._procs.values()):
            if proc.poll() is None:
                import os
                import signal

                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
