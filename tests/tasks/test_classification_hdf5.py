"""Classification / regression on DLAE HDF5 files (data.format hdf5): labels, split, preprocessing, training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ctdl.config.load import config_from_dict
from ctdl.errors import ConfigError, InputError
from ctdl.io.hdf5 import write_dlae_hdf5

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = ["Input:(16, 16, 1)", "Convolution 2D:4:(3, 3):(1, 1):same:(1, 1):he_normal:None:None:0.0:0.0",
          "Activation:relu", "Global average pooling 2D", "Dense:2", "Activation:softmax"]


def two_class_images(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """16 x 16 (r, c, 1) images: class 0 a small dim square, class 1 a large bright one, on noise."""
    rng = np.random.default_rng(seed)
    xs, ids = [], []
    for i in range(n):
        c = i % 2
        img = rng.normal(100, 10, (16, 16)).astype(np.float32)
        a, b = (6, 10) if c == 0 else (3, 13)
        img[a:b, a:b] += 300.0
        xs.append(img[..., None])
        ids.append(c)
    return xs, ids


def cfg_for(tmp: Path, x: Path, y: Path, **over: object):
    d = {
        "name": "h5cls", "task": "classification", "seed": 2, "output_dir": str(tmp / "runs"),
        "data": {"format": "hdf5", "train_x": str(x), "train_y": str(y), "classes": ["small", "large"],
                 "split": {"train": 0.75, "val": 0.25, "test": 0.0}},
        "preprocessing": {"hu_window": None, "reorient": False, "normalization": "samplewise_unity_x"},
        "augmentation": {"enabled": False},
        "model": {"name": "layerlist", "layers": LAYERS},
        "loss": {"name": "categorical_cross_entropy"},
        "optimizer": {"name": "adam", "lr": 0.02},
        "training": {"epochs": 6, "batch_size": 4, "device": "cpu", "threads": 1},
        "checkpoint": {"tensorboard": False},
    }
    for k, v in over.items():
        cur = d
        keys = k.split(".")
        for part in keys[:-1]:
            cur = cur.setdefault(part, {})
        cur[keys[-1]] = v
    return config_from_dict(d, "test")


def write_ids(tmp: Path, n: int = 16, onehot: bool = False) -> tuple[Path, Path, list[int]]:
    xs, ids = two_class_images(n)
    ys = [np.eye(2, dtype=np.float32)[c] if onehot else np.array([c], np.uint8) for c in ids]
    tag = "oh" if onehot else "id"
    return write_dlae_hdf5(tmp / f"x_{tag}.h5", xs), write_dlae_hdf5(tmp / f"y_{tag}.h5", ys), ids


def test_one_hot_and_id_labels_give_the_same_ids(tmp_path: Path) -> None:
    from ctdl.tasks.classification import hdf5_samples

    x1, y1, ids = write_ids(tmp_path, 6)
    x2, y2, _ = write_ids(tmp_path, 6, onehot=True)
    s_id, arr_id = hdf5_samples(cfg_for(tmp_path, x1, y1))
    s_oh, arr_oh = hdf5_samples(cfg_for(tmp_path, x2, y2))
    assert [s.target for s in s_id] == [s.target for s in s_oh] == ids == [0, 1, 0, 1, 0, 1]
    assert [s.sample_id for s in s_id] == [f"train_{i:05d}" for i in range(6)] and {s.split for s in s_id} == {"train"}
    assert arr_id["train_00003"].shape == (1, 16, 16)  # channels-first, as stored (no zoom)
    np.testing.assert_array_equal(arr_id["train_00003"], arr_oh["train_00003"])


def test_bad_labels_and_mismatched_files_name_the_file(tmp_path: Path) -> None:
    from ctdl.tasks.classification import hdf5_samples

    xs, _ = two_class_images(5)
    x = write_dlae_hdf5(tmp_path / "x.h5", xs)
    y4 = write_dlae_hdf5(tmp_path / "y4.h5", [np.array([0], np.uint8)] * 4)
    with pytest.raises(ConfigError) as e:
        hdf5_samples(cfg_for(tmp_path, x, y4))
    msg = str(e.value)
    assert str(x) in msg and str(y4) in msg and "5 samples" in msg and "holds 4" in msg and "data.train_y" in msg
    soft = write_dlae_hdf5(tmp_path / "soft.h5", [np.array([0.5, 0.5], np.float32)] * 5)  # neither id nor one-hot
    with pytest.raises(InputError, match=r"soft\.h5.*sample '0'.*neither a class id .* nor a one-hot"):
        hdf5_samples(cfg_for(tmp_path, x, soft))
    big = write_dlae_hdf5(tmp_path / "big.h5", [np.array([2], np.uint8)] * 5)  # only 2 classes
    with pytest.raises(InputError, match=r"big\.h5.*class label 2 is not an integer in 0\.\.1"):
        hdf5_samples(cfg_for(tmp_path, x, big))
    x_, y_, _ = write_ids(tmp_path, 4)
    with pytest.raises(ConfigError, match=r"model\.layers.*shape \(2,\).*3 classes.*Dense:3"):  # the list gives 2
        from ctdl.tasks.classification import build_model

        build_model(cfg_for(tmp_path, x_, y_, **{"data.classes": ["a", "b", "c"]}), 3, 1)


def test_preprocessing_in_dlae_order(tmp_path: Path) -> None:
    from ctdl.tasks.classification import Hdf5Store, hdf5_samples

    x, y, _ = write_ids(tmp_path, 4)
    raw = two_class_images(4)[0][1][..., 0].astype(np.float64)
    cfg = cfg_for(tmp_path, x, y, **{"preprocessing.center": "samplewise", "preprocessing.repeat_channels": 3})
    _, arrays = hdf5_samples(cfg)
    store = Hdf5Store(cfg, arrays)
    got = store["train_00001"]
    c = raw - raw.mean()
    want = (c - c.min()) / (c.max() - c.min())  # centring, then samplewise unity normalization
    assert got.shape == (3, 16, 16) and store.channels == 3
    np.testing.assert_allclose(got, np.stack([want] * 3), atol=1e-5)
    g = Hdf5Store(cfg_for(tmp_path, x, y, **{"preprocessing.normalization": "global_unity_xy",
                                             "preprocessing.intensity_range": [0.0, 500.0]}), arrays)
    np.testing.assert_allclose(g["train_00001"][0], raw / 500.0, atol=1e-6)  # *_xy scales the image only (CNN)
    with pytest.raises(ConfigError, match="preprocessing.intensity_range"):
        Hdf5Store(cfg_for(tmp_path, x, y, **{"preprocessing.normalization": "global_unity_x"}), arrays)
    with pytest.raises(ConfigError, match="preprocessing.zoom_shape"):
        hdf5_samples(cfg_for(tmp_path, x, y, **{"preprocessing.zoom_shape": [1, 8, 8]}))


def test_split_is_dlae_seeded_and_validation_files_win(tmp_path: Path) -> None:
    from ctdl.tasks.classification import hdf5_samples, make_split

    x, y, _ = write_ids(tmp_path, 10)
    cfg = cfg_for(tmp_path, x, y)
    samples, _ = hdf5_samples(cfg)
    split = make_split(cfg, samples)
    order = np.random.default_rng(2).permutation(10)  # the config's seed; ceil(10 * 0.25) = 3 validation samples
    assert split["val"] == [f"train_{i:05d}" for i in sorted(order[:3])] and len(split["train"]) == 7
    assert make_split(cfg, samples) == split
    (tmp_path / "v").mkdir()
    xv, yv, _ = write_ids(tmp_path / "v", 3)
    cfg2 = cfg_for(tmp_path, x, y, **{"data.val_x": str(xv), "data.val_y": str(yv)})
    s2, _ = hdf5_samples(cfg2)
    split2 = make_split(cfg2, s2)
    assert split2["val"] == ["val_00000", "val_00001", "val_00002"] and len(split2["train"]) == 10


def test_small_cnn_loss_falls_and_predicts_the_file(tmp_path: Path) -> None:
    from ctdl.tasks.classification import predict_paths, train

    x, y, ids = write_ids(tmp_path, 16)
    run = train(cfg_for(tmp_path, x, y, **{"training.epochs": 15, "optimizer.lr": 0.05}), progress=False)
    with (run / "history.csv").open() as fh:
        hist = list(csv.DictReader(fh))
    losses = [float(r["train_loss"]) for r in hist]
    assert len(losses) == 15 and losses[-1] < 0.5 * losses[0], losses
    assert json.loads((run / "split.json").read_text())["val"] and (run / "predictions.csv").exists()
    out = predict_paths(run, x, tmp_path / "pred.csv", device="cpu")[0]
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sample_id"] for r in rows] == [str(i) for i in range(16)]
    probs = np.array([[float(r["prob_small"]), float(r["prob_large"])] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(1) == np.array(ids)) >= 0.75


def test_regression_reads_vectors(tmp_path: Path) -> None:
    from ctdl.tasks.classification import hdf5_samples, train

    xs, ids = two_class_images(8)
    vecs = [np.array([float(c), float(img.mean()) / 100.0], np.float32) for img, c in zip(xs, ids)]
    x, y = write_dlae_hdf5(tmp_path / "x.h5", xs), write_dlae_hdf5(tmp_path / "y.h5", vecs)
    layers = LAYERS[:-2] + ["Dense:2"]
    cfg = cfg_for(tmp_path, x, y, task="regression", **{"model.layers": layers, "loss.name": "mse",
                                                         "training.epochs": 1})
    samples, _ = hdf5_samples(cfg)
    np.testing.assert_allclose([s.target for s in samples], np.stack(vecs), rtol=1e-6)
    run = train(cfg, progress=False)
    with (run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    split = json.loads((run / "split.json").read_text())
    assert [r["sample_id"] for r in rows] == split["val"] and len(rows) == 2
    for r in rows:
        i = int(r["sample_id"].split("_")[1])
        assert [float(r["true_0"]), float(r["true_1"])] == pytest.approx(vecs[i].tolist(), rel=1e-6)
    ragged = write_dlae_hdf5(tmp_path / "ragged.h5", vecs[:7] + [np.zeros(3, np.float32)])
    with pytest.raises(InputError, match=r"ragged\.h5.*sample '7'.*3 values"):
        hdf5_samples(cfg_for(tmp_path, x, ragged, task="regression", **{"model.layers": layers, "loss.name": "mse"}))


@pytest.mark.parametrize("affine", ["dlae", "monai"])
def test_augmentation_before_normalization_and_seeded(tmp_path: Path, affine: str) -> None:
    from ctdl.tasks.classification import Hdf5Store, build_hdf5_augmentation, hdf5_context, hdf5_samples

    x, y, _ = write_ids(tmp_path, 4)
    cfg = cfg_for(tmp_path, x, y, **{"augmentation.enabled": True, "augmentation.affine": affine,
                                     "augmentation.rotation_deg": 20, "augmentation.flip_axes": [2],
                                     "augmentation.prob": 1.0})
    _, arrays = hdf5_samples(cfg)
    store = Hdf5Store(cfg, arrays)
    aug = build_hdf5_augmentation(cfg, hdf5_context(cfg))
    a, b, c = (store.train_sample("train_00001", aug, s) for s in (5, 5, 6))
    assert a.shape == (1, 16, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # the draw depends on the seed only
    assert np.abs(a - c).max() > 0.05 and np.abs(a - store["train_00001"]).max() > 0.05
    assert a.min() == 0.0 and a.max() == 1.0  # samplewise_unity_x normalization comes after the augmentation
