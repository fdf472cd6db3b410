"""Issue 7 acceptance: DLAE's four example configs import, validate, round-trip, build and train one step
on HDF5 data written here in their layout (build/train parts skip where another helper's piece is missing)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ctdl.config.dlae import dlae_to_dict
from ctdl.config.load import config_from_dict, config_to_dict, load_config
from ctdl.io.hdf5 import read_dlae_pairs, write_dlae_pairs

CONFIGS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dlae_configs"
KINDS = ("cnn", "fcn", "gan", "bbd")
LAYOUT = {"cnn": "cnn_classification", "fcn": "fcn", "gan": "gan", "bbd": "bbd"}


def raw_config(kind: str) -> dict:
    path = CONFIGS / f"example_{kind}.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


def write_layout(kind: str, folder: Path, size: int, n: int = 5) -> tuple[Path, Path]:
    """HDF5 pair in the example's layout (reference section 2), learnable: label = bright square."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(n):
        y = np.zeros((size, size), np.uint8)
        a, b = size // 8 + i, size // 2 + i
        y[a:b, a:b] = 1 + i % 3
        x = (y * 50 + rng.normal(0, 5, y.shape)).astype(np.float32)[..., None]
        xs.append(x)
        if kind == "cnn":
            ys.append(np.array([i % 3], np.uint8))
        elif kind == "fcn":
            ys.append(y[..., None])
        elif kind == "gan":
            ys.append((y[..., None] > 0).astype(np.float32))
        else:  # (class_id, xmin, ymin, xmax, ymax) absolute pixels, ids from 1
            ys.append(np.array([[1 + i % 3, a, a, b, b]], np.float32))
    return write_dlae_pairs(folder / f"{kind}_X.h5", folder / f"{kind}_y.h5", xs, ys, LAYOUT[kind], "2D",
                            3 if kind == "bbd" else 4 if kind == "fcn" else 3 if kind == "cnn" else None)


def resized(raw: dict, size: int) -> dict:
    """The same config at a smaller input size (CPU): input_shape and every Input/backbone shape field."""
    out = copy.deepcopy(raw)
    shape = f"({size}, {size}, 1)"
    out["config_file"]["input_shape"] = shape
    for key, layers in out["layers"].items():
        new = []
        for s in layers:
            if s.startswith("Input:"):
                s = f"Input:{shape}"
            elif ":(512, 512, 1):" in s:
                s = s.replace("(512, 512, 1)", shape)
            new.append(s)
        out["layers"][key] = new
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_import_validate_round_trip(kind: str, tmp_path: Path) -> None:
    from ctdl.cli import main

    raw = raw_config(kind)
    src = tmp_path / f"example_{kind}.json"
    src.write_text(json.dumps(raw))
    x, y = write_layout(kind, tmp_path, 32)
    sets = [f"paths.train_X={x}", f"paths.train_y={y}"]
    cfg = load_config(src, sets)
    assert cfg.task == {"cnn": "classification", "fcn": "segmentation", "gan": "gan", "bbd": "detection"}[kind]
    out = tmp_path / f"{kind}.yaml"
    assert main(["config", "import-dlae", str(src), "-o", str(out)] + [a for s in sets for a in ("--set", s)]) == 0
    from_yaml = load_config(out)
    assert config_to_dict(from_yaml) == config_to_dict(cfg)
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(from_yaml))), "again")
    assert config_to_dict(again) == config_to_dict(cfg)
    # the data the test wrote is in the layout the converted config expects
    n_cls = len(cfg.data.classes) - 1 if kind == "bbd" else None if kind == "gan" else len(cfg.data.classes)
    assert len(read_dlae_pairs(cfg.data.train_x, cfg.data.train_y, LAYOUT[kind], "2D", n_cls)) == 5


@pytest.mark.parametrize("kind,size,out_shape", [("cnn", 64, (1, 3)),
                                                 pytest.param("fcn", 64, (1, 4, 64, 64), marks=pytest.mark.slow),
                                                 pytest.param("gan", 256, (1, 1, 256, 256), marks=pytest.mark.slow)])
def test_example_models_build(kind: str, size: int, out_shape: tuple) -> None:
    layerlist = pytest.importorskip("ctdl.models.layerlist")
    import torch

    cfg = config_from_dict(dlae_to_dict(resized(raw_config(kind), size), f"example_{kind}.json"))
    layers = cfg.gan.generator.layers if kind == "gan" else cfg.model.layers
    try:
        net = layerlist.build_layer_list(layers, dims=2, logits=kind != "gan")
    except layerlist.LayerListError as exc:
        if "backbone factory" in str(exc):  # pretrained-network entries (Xception) wait on the backbone hook-up
            pytest.skip(f"layer lists with backbone entries cannot be built yet: {exc}")
        raise
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, size, size))
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert tuple(out.shape) == out_shape


def _one_step(kind: str, tmp_path: Path, size: int, extra: list[str] | None = None) -> Path:
    from ctdl import api

    src = tmp_path / f"example_{kind}.json"
    src.write_text(json.dumps(resized(raw_config(kind), size)))
    x, y = write_layout(kind, tmp_path, size)
    sets = [f"paths.train_X={x}", f"paths.train_y={y}", "training_configurations.epochs=1",
            "training_configurations.hardware=cpu", "training.steps_per_epoch=1", f"output_dir={tmp_path / 'runs'}",
            "checkpoint.tensorboard=false", "checkpoint.save_best=false"] + (extra or [])
    cfg = load_config(src, sets)
    return api.train(cfg, progress=False)


def _history_rows(run: Path) -> list[dict]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # the example's U-Net has 31 M parameters: ~20 s on an idle 2-core CPU
def test_fcn_example_trains_one_step(tmp_path: Path) -> None:
    run = _one_step("fcn", tmp_path, 32)
    rows = _history_rows(run)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 4  # ceil(5 * 0.2) from the training file, seeded


def test_cnn_example_trains_one_step(tmp_path: Path) -> None:
    run = _one_step("cnn", tmp_path, 64)
    assert len(_history_rows(run)) == 1


@pytest.mark.slow
def test_gan_example_trains_one_step(tmp_path: Path) -> None:
    run = _one_step("gan", tmp_path, 256)
    assert (run / "history.csv").exists()


@pytest.mark.slow
def test_bbd_example_trains_one_step(tmp_path: Path) -> None:
    run = _one_step("bbd", tmp_path, 512)  # the SSD512 head's last 4x4 valid conv needs the full size
    assert (run / "history.csv").exists()
