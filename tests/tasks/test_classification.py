"""Classification task end to end on tiny phantoms: run folder contract, metrics, report, pretrain -> fine-tune."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctdl.config.load import config_from_dict
from ctdl.errors import ConfigError, InputError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY_MODEL = {"rnn": "lstm", "rnn_units": 8, "dense_units": 16, "pooling": "max", "vgg_width": 0.0625}


def _tb_cfg(tmp: Path, **over: object) -> dict:
    cfg = {
        "name": "tb", "task": "classification", "seed": 0, "output_dir": str(tmp / "runs"),
        "data": {"format": "synthetic_tb", "classes": ["infiltrative", "focal", "tuberculoma", "miliary", "fibro_cavernous"],
                 "split": {"train": 0.5, "val": 0.2, "test": 0.3}},
        "preprocessing": {"hu_window": "lung", "normalization": "samplewise_unity_x", "zoom_shape": [4, 32, 32],
                          "zoom_order": 1},
        "augmentation": {"enabled": False},
        "model": {"name": "viptt_net", "params": dict(TINY_MODEL)},
        "loss": {"name": "categorical_cross_entropy"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "training": {"epochs": 2, "batch_size": 4, "monitor": "val_loss", "monitor_mode": "min", "threads": 1},
        "checkpoint": {"tensorboard": False},
        "classification": {"synth_per_class": 3, "synth_shape": [8, 40, 40]},
    }
    for k, v in over.items():
        cur = cfg
        keys = k.split(".")
        for p in keys[:-1]:
            cur = cur.setdefault(p, {})
        cur[keys[-1]] = v
    return cfg


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctdl.tasks.classification import train

    tmp = tmp_path_factory.mktemp("cls")
    return train(config_from_dict(_tb_cfg(tmp, **{"loss.class_weights": "balanced"})), progress=False)


def test_run_folder_contract_and_metrics(tb_run: Path) -> None:
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    summary = json.loads((tb_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["task"] == "classification" and summary["eval_split"] == "test"
    m = summary["metrics"]
    classes = summary["classes"]
    for key in ["kappa", "accuracy", "macro_auc"] + [f"{p}_{c}" for p in ("f1", "precision", "recall") for c in classes]:
        assert key in m
    with (tb_run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    split = json.loads((tb_run / "split.json").read_text())
    assert len(rows) == len(split["test"]) == summary["n_eval"]
    truth = [classes.index(r["true"]) for r in rows]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(truth, probs.argmax(1)), abs=1e-9)
    assert m["accuracy"] == pytest.approx(np.mean(np.array(truth) == probs.argmax(1)))
    present = sorted(set(truth))
    if len(present) == len(classes):
        assert m["macro_auc"] == pytest.approx(roc_auc_score(truth, probs, multi_class="ovr"), abs=1e-5)
    cm = np.array([[int(v) for v in r[1:]] for r in list(csv.reader((tb_run / "confusion_matrix.csv").open()))[1:]])
    assert cm.sum() == len(rows) and np.trace(cm) == sum(int(r["true"] == r["pred"]) for r in rows)
    hist = list(csv.DictReader((tb_run / "history.csv").open()))
    assert len(hist) == 2 and "val_kappa" in hist[0]
    assert (tb_run / "metrics_summary.csv").read_text().splitlines()[0] == "metric,mean,std,min,max,n,n_nan"
    html = (tb_run / "report.html").read_text()
    assert "Confusion matrix" in html and 'alt="confusion_matrix.png"' in html and "<th>tuberculoma</th>" in html
    # class weights: scikit-learn 'balanced' over the training split, stored with the checkpoint
    from sklearn.utils.class_weight import compute_class_weight

    from ctdl.engine.trainer import load_checkpoint

    meta = load_checkpoint(tb_run / "last.pt")["meta"]
    y_train = [classes.index(i.split("_", 1)[1].rsplit("_", 1)[0]) for i in split["train"]]
    assert meta["class_weights"] == pytest.approx(compute_class_weight("balanced", classes=np.arange(5), y=y_train).tolist())


def test_predict_paths(tb_run: Path, tmp_path: Path) -> None:
    from ctdl import api

    cases = json.loads((tb_run / "split.json").read_text())["test"][:2]
    manifest_dir = next((tb_run.parent / ".cache").glob("tb_*"))
    folder = tmp_path / "in"
    folder.mkdir()
    for cid in cases:
        (folder / f"{cid}.nii.gz").write_bytes((manifest_dir / "volumes" / f"{cid}.nii.gz").read_bytes())
    out = api.predict(tb_run / "best.pt", folder, tmp_path / "out", device="cpu")
    rows = list(csv.DictReader(out[0].open()))
    assert [r["sample_id"] for r in rows] == sorted(cases)
    # the same volumes give the same probabilities as in the run's own predictions
    ref = {r["sample_id"]: r for r in csv.DictReader((tb_run / "predictions.csv").open())}
    for r in rows:
        assert float(r["prob_focal"]) == pytest.approx(float(ref[r["sample_id"]]["prob_focal"]), abs=1e-5)


def test_pretrain_then_finetune(tmp_path: Path) -> None:
    from ctdl.engine.trainer import load_checkpoint, seed_everything
    from ctdl.tasks.classification import build_model, load_finetune, train

    video = _tb_cfg(tmp_path, **{"name": "video", "data.format": "synthetic_video", "data.classes": [
        "disc_right", "disc_left", "disc_down", "disc_up", "disc_diagonal",
        "square_right", "square_left", "square_down", "square_up", "square_diagonal"],
        "data.split": {"train": 0.7, "val": 0.3, "test": 0.0}, "preprocessing.hu_window": None,
        "model.params": {**TINY_MODEL, "freeze_features": True}, "classification.synth_per_class": 2,
        "classification.synth_shape": [6, 32, 32]})
    vcfg = config_from_dict(video)
    pre = train(vcfg, progress=False)
    ck = load_checkpoint(pre / "last.pt")
    seed_everything(0)
    init = build_model(vcfg, 10).state_dict()  # the weights training started from (same seed, same order)
    feats = [k for k in init if k.startswith("features.")]
    assert feats and all(torch.equal(ck["model"][k], init[k]) for k in feats)  # frozen part unchanged
    assert not torch.equal(ck["model"]["rnn.weight_ih_l0"], init["rnn.weight_ih_l0"])  # the rest trained
    assert ck["model"]["head.weight"].shape[0] == 10
    assert json.loads((pre / "summary.json").read_text())["eval_split"] == "val"

    # head replaced 10 -> 5, every other weight carried over
    tcfg = config_from_dict(_tb_cfg(tmp_path, **{"name": "ft", "classification.finetune_from": str(pre),
                                                 "training.epochs": 1}))
    seed_everything(0)
    model = build_model(tcfg, 5)
    info = load_finetune(model, pre)
    assert info["head_replaced"] and info["old_head_shapes"]["head.weight"] == (10, 16)
    assert model.head.out_features == 5
    best = load_checkpoint(pre / "best.pt")["model"]
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, best[k]), k
    # end to end through train(): fine-tunes all layers, records where it came from
    ft = train(tcfg, progress=False)
    meta = load_checkpoint(ft / "last.pt")["meta"]
    assert meta["head_replaced"] and meta["finetuned_from"].endswith("best.pt")
    after = load_checkpoint(ft / "last.pt")["model"]
    assert not torch.equal(after["features.0.weight"], best["features.0.weight"])  # all layers train now
    assert json.loads((ft / "summary.json").read_text())["finetuned_from"].endswith("best.pt")

    # a backbone that does not fit is refused with the keys listed
    other = config_from_dict(_tb_cfg(tmp_path, **{"model.params": {**TINY_MODEL, "rnn_units": 12}}))
    with pytest.raises(InputError, match=r"shape mismatch: rnn\.weight_ih_l0"):
        load_finetune(build_model(other, 5), pre)


def test_labels_manifest_and_folders(tmp_path: Path) -> None:
    from ctdl.io import Volume, write_volume
    from ctdl.tasks.classification import make_split, resolve_samples

    vol = Volume.from_array(np.zeros((4, 8, 8), np.int16))
    for name in ("a", "b", "c", "d"):
        write_volume(vol, tmp_path / "v" / f"{name}.nii.gz")
    (tmp_path / "m.csv").write_text("path,label,split\nv/a.nii.gz,1,train\nv/b.nii.gz,2,test\nv/c.nii.gz,focal,\n"
                                    "v/d.nii.gz,1,\n")
    cfg = _tb_cfg(tmp_path, **{"data.format": "manifest", "data.manifest": str(tmp_path / "m.csv"),
                               "data.classes": ["infiltrative", "focal"], "classification.label_base": 1,
                               "data.split": {"train": 0.5, "val": 0.0, "test": 0.5}})
    samples, classes = resolve_samples(config_from_dict(cfg))
    assert classes == ["infiltrative", "focal"] and [s.target for s in samples] == [0, 1, 1, 0]
    split = make_split(config_from_dict(cfg), samples)
    assert "a" in split["train"] and "b" in split["test"]  # fixed splits from the manifest are kept
    (tmp_path / "bad.csv").write_text("path,label\nv/a.nii.gz,7\n")
    cfg["data"]["manifest"] = str(tmp_path / "bad.csv")
    with pytest.raises(InputError, match=r"bad.csv: line 2: integer label 7 is outside \[1, 2\]"):
        resolve_samples(config_from_dict(cfg))
    # a folder per class
    for cls, names in (("cavity", ["x", "y"]), ("nodule", ["z"])):
        for n in names:
            write_volume(vol, tmp_path / "f" / cls / f"{n}.nii.gz")
    cfg2 = _tb_cfg(tmp_path, **{"data.format": "class_folders", "data.root": str(tmp_path / "f"),
                                "data.classes": ["background", "kidney", "tumor"]})
    samples, classes = resolve_samples(config_from_dict(cfg2))
    assert classes == ["cavity", "nodule"] and [s.target for s in samples] == [0, 0, 1]
    cfg2["data"]["classes"] = ["cavity"]
    with pytest.raises(ConfigError, match=r"lacks the classes \['nodule'\]"):
        resolve_samples(config_from_dict(cfg2))


def test_weighted_cross_entropy_keras_and_torch_rules() -> None:
    from ctdl.losses.registry import create_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    w = [0.5, 1.0, 3.0]
    ce = F.cross_entropy(logits, y, reduction="none")
    keras = (torch.tensor(w)[y] * ce).mean()
    assert float(create_loss("categorical_cross_entropy", weights=w)(logits, y)) == pytest.approx(float(keras), rel=1e-6)
    torch_rule = F.cross_entropy(logits, y, weight=torch.tensor(w))
    assert float(create_loss("categorical_cross_entropy", weights=w, normalize=True)(logits, y)) == pytest.approx(
        float(torch_rule), rel=1e-6)
    assert float(create_loss("categorical_cross_entropy")(logits, y)) == pytest.approx(float(ce.mean()), rel=1e-6)


def test_rotation_from_discrete_set() -> None:
    from ctdl.tasks.classification import build_image_augmentation

    x = np.zeros((1, 2, 9, 9), np.float32)
    x[0, :, 1, 4] = 1.0  # a dot above the centre
    cfg = config_from_dict(_tb_cfg(Path("/tmp"), **{"augmentation": {"enabled": True, "flip_axes": [],
                                                                       "rotation_choices": [90]}}))
    out = np.asarray(build_image_augmentation(cfg)({"image": x})["image"])
    # rotated by 90 degrees in the axial (H, W) plane: the dot moves to the centre row, slices alike
    assert out[0, 0, 4].max() > 0.9 and out[0, 0, 1, 4] < 0.1 and np.allclose(out[0, 0], out[0, 1])
    cfg0 = config_from_dict(_tb_cfg(Path("/tmp"), **{"augmentation": {"enabled": True, "flip_axes": [],
                                                                        "rotation_choices": [0]}}))
    assert np.array_equal(np.asarray(build_image_augmentation(cfg0)({"image": x})["image"]), x)


def test_regression_targets(tmp_path: Path) -> None:
    from ctdl.io import Volume, write_volume
    from ctdl.tasks.classification import train

    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for i in range(8):
        write_volume(Volume.from_array(rng.normal(0, 100, (4, 32, 32)).astype(np.float32)), tmp_path / f"r{i}.nii.gz")
        lines.append(f"r{i}.nii.gz,{i / 8:.3f} {1 - i / 8:.3f}")
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    cfg = _tb_cfg(tmp_path, **{"task": "regression", "name": "reg", "data.format": "manifest",
                               "data.manifest": str(tmp_path / "r.csv"), "loss.name": "mse",
                               "model.name": "resnet3d_small", "model.params": {"widths": [4, 8, 8, 8]},
                               "training.epochs": 1, "data.split": {"train": 0.5, "val": 0.25, "test": 0.25}})
    run = train(config_from_dict(cfg), progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "regression" and set(summary["metrics"]) == {"mse", "mae"}
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert len(rows) == 2 and {"true_0", "true_1", "pred_0", "pred_1"} <= set(rows[0])


def test_models_command_lists_viptt(capsys: pytest.CaptureFixture[str]) -> None:
    from ctdl.cli import main

    assert main(["models", "viptt_net"]) == 0
    out = capsys.readouterr().out
    assert "viptt_net" in out and "15,771,467" in out and "1x70x224x224" in out
