"""Detection task end to end on a tiny DLAE-HDF5 box dataset: run folder contract, exact resume, checkpoints
that keep steps/offsets (DLAE lost them and never saved BBD models), prediction to CSV/JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctdl.config.load import config_from_dict
from ctdl.io.hdf5 import write_dlae_hdf5
from ctdl.tasks.detection import load_detector, predict_paths, train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dataset(root: Path, n: int = 12) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for _ in range(n):
        img = rng.normal(0, 20, (48, 48, 1)).astype(np.float32)
        boxes = []
        for c, v in ((1, 300.0), (2, 600.0)):
            w, h = rng.integers(8, 16, 2)
            x0, y0 = rng.integers(0, 48 - 16, 2)
            img[y0:y0 + h, x0:x0 + w] = v
            boxes.append([c, x0, y0, x0 + w, y0 + h])
        images.append(img)
        anns.append(np.array(boxes, np.float32))
    return write_dlae_hdf5(root / "x.h5", images), write_dlae_hdf5(root / "y.h5", anns)


def _cfg(tmp: Path, x: Path, y: Path, epochs: int, name: str = "det", test: bool = True) -> object:
    data = config_from_dict({
        "name": name, "task": "detection", "seed": 1, "output_dir": str(tmp / "runs"),
        "data": {"format": "hdf5", "train_x": str(x), "train_y": str(y), "test_x": str(x), "test_y": str(y),
                 "classes": ["background", "a", "b"], "split": {"train": 0.75, "val": 0.25, "test": 0.0}},
        "preprocessing": {"hu_window": None, "normalization": "samplewise_unity_x"},
        "model": {"params": {"widths": [4, 8, 8, 8, 8]}},
        "detection": {"backbone": "ssd_small", "input_size": [32, 32], "scales": [0.2, 0.6],
                      "steps": [8, 16], "offsets": [0.5, 0.5]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": epochs, "batch_size": 3, "steps_per_epoch": 2, "val_every": 1},
        "checkpoint": {"tensorboard": test},
    }, "test config")
    if not test:
        data.data.test_x = data.data.test_y = None
    return data


def test_train_predict(tmp_path: Path) -> None:
    x, y = _dataset(tmp_path)
    run = train(_cfg(tmp_path, x, y, 2), progress=False)
    for name in ("config.yaml", "history.csv", "timing.json", "metrics_summary.csv", "summary.json", "last.pt",
                 "best.pt", "metrics_pooled.json", "report/detections.png", "report/pr_curves.png"):
        assert (run / name).exists(), name
    assert next((run / "tensorboard").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "detection" and 0.0 <= summary["metrics"]["map50"] <= 1.0
    assert "froc_a_1fp" in summary["metrics"] and "ap50_coco_b" in summary["metrics"]
    hist = list(csv.DictReader(open(run / "history.csv")))
    assert len(hist) == 2 and "val_map50" in hist[0]
    with open(run / "metrics_summary.csv") as fh:
        assert fh.readline().strip() == "metric,mean,std,min,max,n,n_nan"

    # the checkpoint rebuilds the model with its steps and offsets (DLAE's get_config lost them)
    model, cfg, _ = load_detector(run)
    assert list(model.anchor_spec.steps) == [8, 16] and list(model.anchor_spec.offsets) == [0.5, 0.5]

    out = predict_paths(run, x, tmp_path / "pred", device="cpu")
    assert sorted(p.name for p in out) == ["x.csv", "x.json"]
    rows = json.loads((tmp_path / "pred" / "x.json").read_text())
    assert rows and {"case_id", "slice", "class", "score", "xmin", "ymin", "xmax", "ymax"} <= set(rows[0])
    # boxes come back in the source image's pixels (48 x 48), not the network's 32 x 32
    assert max(r["xmax"] for r in rows) > 32 or max(r["ymax"] for r in rows) > 32


def test_exact_resume(tmp_path: Path) -> None:
    """1 epoch, then resumed to 2, ends with the same weights as a 2-epoch run (the trainer's exact resume)."""
    x, y = _dataset(tmp_path)
    full = train(_cfg(tmp_path, x, y, 2, "full", test=False), progress=False)
    part = train(_cfg(tmp_path, x, y, 1, "part", test=False), progress=False)
    train(_cfg(tmp_path, x, y, 2, "part", test=False), resume=True, progress=False)
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(part / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
