"""data.format hdf5: DLAE HDF5 pairs as segmentation cases, DLAE's seeded split, arrays for other tasks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ctdl.config.load import config_from_dict
from ctdl.data.hdf5_dataset import hdf5_cases, hdf5_split, load_hdf5_arrays
from ctdl.errors import InputError
from ctdl.io import read_volume
from ctdl.io.hdf5 import write_dlae_hdf5, write_dlae_pairs


def make_cfg(tmp: Path, mode: str = "slices2d", **data) -> object:
    d = {"format": "hdf5", "classes": ["background", "a", "b"], **{k: str(v) for k, v in data.items()}}
    return config_from_dict({"data": d, "sampling": {"mode": mode}, "output_dir": str(tmp / "runs"),
                             "preprocessing": {"hu_window": None, "reorient": False}})


def two_d(tmp: Path, n: int = 5, onehot: bool = False) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(n):
        y = np.zeros((12, 8), np.uint8)
        y[2:6, 3:7] = 1 + i % 2
        xs.append((y * 40 + rng.normal(0, 3, y.shape)).astype(np.float32))  # (r, c): channel axis absent
        ys.append(np.eye(3, dtype=np.float32)[y] if onehot else y[..., None])
    return write_dlae_pairs(tmp / "x.h5", tmp / "y.h5", xs, ys, "fcn", "2D", 3)


def test_2d_samples_become_one_slice_cases(tmp_path: Path) -> None:
    x, y = two_d(tmp_path, onehot=True)
    cfg = make_cfg(tmp_path, train_x=x, train_y=y)
    cases = hdf5_cases(cfg, tmp_path / "cache", progress=False)
    assert [c.case_id for c in cases] == [f"train_{i:05d}" for i in range(5)] and {c.split for c in cases} == {"train"}
    img, lab = read_volume(cases[1].image), read_volume(cases[1].label)
    assert img.shape == lab.shape == (1, 12, 8)
    assert set(np.unique(lab.array)) == {0, 2}  # one-hot (r, c, 3) arg-maxed back to class indices
    stamp = cases[1].image.stat().st_mtime_ns
    again = hdf5_cases(cfg, tmp_path / "cache", progress=False)  # cached: nothing rewritten
    assert again[1].image == cases[1].image and again[1].image.stat().st_mtime_ns == stamp


def test_3d_samples_and_centring(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.normal(5, 2, (8, 6, 4)).astype(np.float32) for _ in range(2)]  # (r, c, s)
    ys = [(a > 5).astype(np.uint8) for a in xs]
    x, y = write_dlae_pairs(tmp_path / "x.h5", tmp_path / "y.h5", xs, ys, "fcn", "3D", 3)
    cfg = make_cfg(tmp_path, mode="whole", train_x=x, train_y=y)
    cfg.preprocessing.center = "samplewise"
    cases = hdf5_cases(cfg, tmp_path / "cache", progress=False)
    img = read_volume(cases[0].image).array
    assert img.shape == (4, 8, 6)  # (D, H, W) = (s, r, c)
    np.testing.assert_allclose(img[2], xs[0][..., 2] - xs[0].mean(), atol=1e-5)
    np.testing.assert_array_equal(read_volume(cases[0].label).array[1], ys[0][..., 1])


def test_multichannel_images_are_refused_with_the_sample(tmp_path: Path) -> None:
    xs = [np.zeros((4, 4, 2), np.float32)]
    x, y = write_dlae_pairs(tmp_path / "x.h5", tmp_path / "y.h5", xs, [np.zeros((4, 4), np.uint8)], "fcn", "2D", 3)
    with pytest.raises(InputError, match="sample '0'.*2 channels"):
        hdf5_cases(make_cfg(tmp_path, train_x=x, train_y=y), tmp_path / "cache", progress=False)


def test_split_is_dlae_rule_seeded_and_files_win(tmp_path: Path) -> None:
    x, y = two_d(tmp_path, n=10)
    cfg = config_from_dict({"data": {"format": "hdf5", "train_x": str(x), "train_y": str(y), "classes": ["b", "a", "c"],
                                     "split": {"train": 0.7, "val": 0.3, "test": 0.0}}, "seed": 4,
                           "sampling": {"mode": "slices2d"}})
    cases = hdf5_cases(cfg, tmp_path / "cache", progress=False)
    split = hdf5_split(cfg, cases)
    assert len(split["val"]) == 3 and len(split["train"]) == 7 and split["test"] == []
    assert hdf5_split(cfg, cases) == split  # seeded (bug 22)
    cfg.seed = 5
    assert hdf5_split(cfg, cases)["val"] != split["val"]
    vx, vy = write_dlae_pairs(tmp_path / "vx.h5", tmp_path / "vy.h5", [np.zeros((12, 8), np.float32)] * 2,
                              [np.zeros((12, 8), np.uint8)] * 2, "fcn", "2D", 3)
    cfg.data.val_x, cfg.data.val_y = vx, vy
    cases = hdf5_cases(cfg, tmp_path / "cache", progress=False)
    split = hdf5_split(cfg, cases)
    assert split["val"] == ["val_00000", "val_00001"] and len(split["train"]) == 10


def test_arrays_for_other_tasks(tmp_path: Path) -> None:
    xs = [np.full((6, 6, 1), i, np.float32) for i in range(3)]
    x = write_dlae_hdf5(tmp_path / "x.h5", xs)
    y = write_dlae_hdf5(tmp_path / "y.h5", [np.array([[1, 0, 0, 3, 3]], np.float32)] * 3)
    cfg = config_from_dict({"task": "detection", "data": {"format": "hdf5", "train_x": str(x), "train_y": str(y),
                                                          "classes": ["background", "lesion"]}})
    pairs = load_hdf5_arrays(cfg, "train", "bbd")
    assert len(pairs) == 3 and pairs[2][0].shape == (1, 6, 6) and pairs[2][0].max() == 2
    assert load_hdf5_arrays(cfg, "val", "bbd") == []


def test_segmentation_trains_one_step_on_hdf5(tmp_path: Path) -> None:
    """The segmentation task on DLAE HDF5 data (resolve_cases/make_split hooks), one step of a small net."""
    from ctdl import api

    x, y = two_d(tmp_path, n=5)
    cfg = config_from_dict({
        "name": "h5", "output_dir": str(tmp_path / "runs"), "seed": 1,
        "data": {"format": "hdf5", "train_x": str(x), "train_y": str(y), "classes": ["background", "a", "b"],
                 "split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        "preprocessing": {"hu_window": None, "reorient": False, "normalization": "samplewise_unity_x"},
        "sampling": {"mode": "slices2d"}, "augmentation": {"affine": "dlae", "rotation_deg": 10, "prob": 1.0},
        "model": {"name": "unet2d_thesis", "params": {"base_filters": 2, "pre_head_filters": 2}, "in_channels": 1},
        "loss": {"name": "cross_entropy"},
        "training": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "device": "cpu"},
        "checkpoint": {"tensorboard": False},
        "inference": {"method": "slices2d"},
    })
    run = api.train(cfg, progress=False)
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 4


def test_cnn_3d_validation_samples_read_like_training(tmp_path: Path) -> None:
    # bug 5: the original's CNN-3D validation generator hit a NameError; here every part reads alike
    xs = [np.full((6, 5, 4), i, np.float32) for i in range(2)]  # (r, c, s), no channel axis
    ys = [np.array([i], np.uint8) for i in range(2)]
    x, y = write_dlae_pairs(tmp_path / "x.h5", tmp_path / "y.h5", xs, ys, "cnn_classification", "3D", 2)
    cfg = config_from_dict({"task": "classification", "data": {"format": "hdf5", "train_x": str(x), "train_y": str(y),
                                                               "val_x": str(x), "val_y": str(y), "classes": ["a", "b"]},
                            "sampling": {"mode": "whole"}})
    train, val = load_hdf5_arrays(cfg, "train", "cnn_classification"), load_hdf5_arrays(cfg, "val", "cnn_classification")
    assert [a.shape for a, _ in val] == [a.shape for a, _ in train] == [(1, 4, 6, 5)] * 2  # (C, D=s, H=r, W=c)
    assert [int(b[0]) for _, b in val] == [0, 1]
