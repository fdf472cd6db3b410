"""End-to-end tests of the segmentation task on tiny phantoms (CPU, seconds to a minute)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from ctdl.cli import main
from ctdl.config import load_config

CASES = ["case_00038", "case_00061", "case_00148", "case_00013"]


def _write_cfg(tmp: Path, name: str, shared: Path, **over) -> Path:
    cfg = {
        "name": name,
        "output_dir": str(tmp / "runs"),
        "seed": 0,
        "data": {
            "format": "synthetic_kits",
            "synth_source": str(shared / "kits19"),
            "synth_spacing": [4.0, 2.0, 2.0],
            "synth_margin_slices": 2,
            "cases": CASES,
            "cache_dir": str(tmp / "cache"),
            "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        },
        "sampling": {"patch_size": [16, 32, 32], "samples_per_volume": 2, "class_ratios": [1, 1, 1]},
        "augmentation": {"flip_axes": [2], "rotation_deg": 5, "prob": 0.5},
        "model": {"name": "unet3d_small", "params": {"channels": [4, 8, 16, 32], "dropout": 0.1}},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "schedule": {"name": "multistep", "milestones": [1]},
        "training": {"epochs": 2, "batch_size": 2, "steps_per_epoch": 3},
        "inference": {"method": "sliding_window", "roi_size": [16, 64, 64]},
        "postprocess": {"largest_component": {"enabled": True, "keep": 2}},
        "checkpoint": {"tensorboard": False},
    }
    for k, v in over.items():
        cur = cfg
        keys = k.split(".")
        for kk in keys[:-1]:
            cur = cur.setdefault(kk, {})
        cur[keys[-1]] = v
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import DATA

    if not DATA.exists():
        pytest.skip("shared data missing")
    tmp = tmp_path_factory.mktemp("seg")
    cfg = _write_cfg(tmp, "tiny", DATA, **{"inference.two_stage": True, "inference.coarse_epochs": 1,
                                         "inference.coarse_steps_per_epoch": 2, "inference.coarse_patch_size": [8, 32, 32]})
    assert main(["train", str(cfg), "--quiet"]) == 0
    return tmp / "runs" / "tiny"


def test_run_folder_has_everything(tiny_run: Path) -> None:
    for name in ("config.yaml", "split.json", "best.pt", "last.pt", "history.csv", "metrics.csv",
                 "metrics_summary.csv", "report.html", "timing.json", "test_cases.json"):
        assert (tiny_run / name).exists(), name
    rows = (tiny_run / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "val_dice_kidney" in rows[0]
    assert len(list((tiny_run / "predictions").glob("*.nii.gz"))) == 1
    html = (tiny_run / "report.html").read_text()
    assert "data:image/png;base64" in html and "kidney" in html
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    assert ckpt["meta"]["classes"] == ["background", "kidney", "tumor"]
    assert "coarse" in ckpt["meta"] and "state" in ckpt["meta"]["coarse"]


def test_predict_keeps_input_geometry_whatever_the_training_spacing(tiny_run: Path, shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "sample_ct" / "ct_3mm_30slices.nii.gz"
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", str(src), "--model", str(tiny_run), "-o", str(out)]) == 0
    a, b = nib.load(str(src)), nib.load(str(out))
    assert a.shape == b.shape == (122, 101, 30)
    assert np.allclose(a.affine, b.affine, atol=1e-5)
    assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2}


def test_predict_roi_and_whole_modes_agree_on_geometry(tiny_run: Path) -> None:
    from ctdl.io import read_volume
    from ctdl.tasks.segmentation import Predictor

    case = yaml.safe_load((tiny_run / "test_cases.json").read_text())
    cid, paths = next(iter(case.items()))
    image = read_volume(paths["image"])
    pred = Predictor.from_checkpoint(tiny_run)
    whole = pred.predict_volume(image, roi=False)
    roi = pred.predict_volume(image, roi=True)
    assert whole.shape == roi.shape == image.shape
    assert np.allclose(roi.affine, image.affine)
    if pred.last_roi is not None:  # outside the ROI box the ROI mode predicts background
        outside = np.ones(image.shape, bool)
        outside[pred.last_roi] = False
        assert not roi.array[outside].any()


def test_evaluate_command(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = yaml.safe_load((tiny_run / "test_cases.json").read_text())
    cid, paths = next(iter(case.items()))
    pred = tiny_run / "predictions" / f"{cid}.nii.gz"
    assert main(["evaluate", str(pred), paths["label"], "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kidney_dice" in out
    # a perfect prediction scores Dice 1 and distance 0
    assert main(["evaluate", paths["label"], paths["label"]]) == 0
    out = capsys.readouterr().out
    assert "kidney_dice: mean 1.0000" in out and "kidney_hd95_mm: mean 0.0000" in out


def test_resume_gives_same_weights(shared_data: Path, tmp_path: Path) -> None:
    from ctdl.tasks.segmentation import train

    over = {"data.split": {"train": 0.5, "val": 0.5, "test": 0.0}, "training.epochs": 3}
    full = load_config(_write_cfg(tmp_path, "full", shared_data, **over))
    train(full, progress=False)
    part = load_config(_write_cfg(tmp_path, "part", shared_data, **{**over, "training.epochs": 1}))
    train(part, progress=False)
    resumed = load_config(_write_cfg(tmp_path, "part", shared_data, **over))
    train(resumed, resume=True, progress=False)
    a = torch.load(tmp_path / "runs" / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs" / "part" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = (tmp_path / "runs" / "part" / "history.csv").read_text().strip().splitlines()
    assert len(hist) == 4


def test_validation_reports_jaccard_and_weighted_jaccard() -> None:
    """A perfect 'model' scores Dice = Jaccard = JC_w = 1 in validation."""
    from ctdl.config.schema import ExperimentConfig
    from ctdl.data.sampling import PreparedCase
    from ctdl.tasks.segmentation import validation_fn

    lab = np.zeros((8, 16, 16), np.uint8)
    lab[2:6, 4:12, 4:12] = 1
    lab[3:5, 6:9, 6:9] = 2

    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # the image is the label map itself
            return torch.nn.functional.one_hot(x[:, 0].round().long(), 3).movedim(-1, 1).float() * 10

    cfg = ExperimentConfig.model_validate({
        "data": {"format": "kits19", "root": "x"},
        "monitors": {"metrics": ["dice", "jaccard", "weighted_jaccard"]},
        "inference": {"method": "sliding_window", "roi_size": [8, 16, 16]},
        "model": {"name": "unet3d_small", "params": {"strides": [1, 1, 1]}},
    })
    case = PreparedCase("c", lab[None].astype(np.float32), lab)
    out = validation_fn(cfg, [case], "cpu", weights=[0.2, 1.0, 2.0])(Oracle())
    assert out["dice_kidney"] == pytest.approx(1.0) and out["jaccard_tumor"] == pytest.approx(1.0)
    assert out["weighted_jaccard"] == pytest.approx(1.0)


def test_training_crops_per_kidney_and_background_slices_removed() -> None:
    from ctdl.config.schema import PreprocessingConfig
    from ctdl.data.pipeline import SegPreprocessor
    from ctdl.io import Volume
    from ctdl.tasks.segmentation import _finish_train

    lab = np.zeros((12, 40, 60), np.uint8)
    lab[2:5, 5:15, 5:15] = 1
    lab[6:10, 20:32, 40:52] = 1
    lab[7:9, 24:27, 44:47] = 2
    img = Volume(lab.astype(np.float32) * 100, np.eye(4))
    cfg = PreprocessingConfig(reorient=False, hu_window=None, normalization="none", remove_background_slices=True,
                              roi={"enabled": True, "per_kidney": True, "size_hw": (20, 20), "margin": (2, 0, 0)})
    cases = _finish_train(SegPreprocessor(cfg), "c", img, Volume(lab, np.eye(4)), None)
    # two crops of 20 x 20 in-plane; the 2-slice margins are background slices and are dropped again
    assert [c.image.shape for c in cases] == [(1, 4, 20, 20), (1, 3, 20, 20)]
    assert all(c.label.reshape(c.label.shape[0], -1).any(axis=1).all() for c in cases)
    assert sum(int((c.label == 2).sum()) for c in cases) == int((lab == 2).sum())


def test_per_kidney_roi_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """Trained with one 32 x 32 crop per kidney; prediction finds one box per kidney and writes the input grid."""
    from ctdl.tasks.segmentation import Predictor

    cfg = _write_cfg(tmp_path, "perkidney", shared_data, **{
        "preprocessing.roi": {"enabled": True, "per_kidney": True, "size_hw": [32, 32], "margin": [2, 0, 0]},
        "training.epochs": 1, "inference.two_stage": True, "inference.coarse_epochs": 2,
        "inference.coarse_steps_per_epoch": 4, "inference.coarse_patch_size": [8, 32, 32],
        "inference.roi_size": [16, 32, 32], "postprocess.largest_component.keep": 1})
    assert main(["train", str(cfg), "--quiet"]) == 0
    run = tmp_path / "runs" / "perkidney"
    pred = Predictor.from_checkpoint(run / "last.pt")
    case = list(yaml.safe_load((run / "test_cases.json").read_text()).values())[0]
    from ctdl.io import read_volume

    image = read_volume(case["image"])
    out = pred.predict_volume(image)
    assert out.shape == image.shape and np.allclose(out.affine, image.affine)
    assert 1 <= len(pred.last_rois) <= 2
    for box in pred.last_rois:  # at least 32 voxels at 2 mm = 64 mm in-plane, in this image's own voxels
        for ax in (1, 2):  # (the window grows to a larger coarse box plus margin: this 8-step localiser's often is)
            want = 32 * 2.0 / image.spacing[ax]
            assert box[ax].stop - box[ax].start >= want - 2 or box[ax].stop - box[ax].start == image.shape[ax]


def test_tta_uses_only_training_flip_axes() -> None:
    from ctdl.tasks.segmentation import tta_flip_axes

    assert tta_flip_axes([2]) == ((3,),)
    assert tta_flip_axes([1, 2]) == ((2,), (3,), (2, 3))
    assert tta_flip_axes([]) == ()


def test_coarse_localiser_always_trains_in_float32() -> None:
    from ctdl.tasks.segmentation import coarse_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "recipes" / "demo.yaml", overrides=["training.amp=true", "training.channels_last=true"])
    assert cfg.training.amp and cfg.training.channels_last
    coarse = coarse_config(cfg)
    assert not coarse.training.amp and not coarse.training.channels_last
