"""Every recipe validates; the seed recipes of the KiTS19 comparison and the FCN-PPM run end to end at demo scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ctdl.cli import main
from ctdl.config import load_config
from ctdl.config.scale import apply_scale

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SWEEPS = {"kits19_compare.yaml", "dlae_fcn_sweep.yaml", "dlae_fcn_sweep_full.yaml", "viptt_strategies.yaml"}
THESIS = ["unet2d", "unet3d", "pspnet_small", "pspnet_big", "denseunet_small", "denseunet_big", "deeplabv3plus"]


def _configs() -> list[str]:
    return sorted(p.name for p in RECIPES.glob("*.yaml") if p.name not in SWEEPS)


@pytest.mark.parametrize("name", _configs())
def test_recipe_validates_with_every_scale(name: str) -> None:
    cfg = load_config(RECIPES / name)
    for scale in cfg.scales:
        apply_scale(cfg, scale, RECIPES / name)
    text = (RECIPES / name).read_text()
    assert text.startswith("#"), "a recipe starts with a header comment naming its seed and section"


@pytest.mark.parametrize("key", THESIS)
def test_thesis_recipe_settings(key: str) -> None:
    cfg = load_config(RECIPES / f"kits19_{key}.yaml")
    assert cfg.preprocessing.inplane_size == (128, 128) and cfg.preprocessing.remove_background_slices
    assert cfg.sampling.tumor_duplication == 4 and cfg.loss.name == "weighted_dice"
    assert cfg.loss.class_weights == "balanced" and cfg.training.monitor == "val_weighted_jaccard"
    assert len(cfg.data.split.train_cases) == 180 and len(cfg.data.split.val_cases) == 20
    assert len(cfg.data.split.test_cases) == 10 and cfg.seed == 42
    assert cfg.augmentation.rotation_deg == 5 and cfg.augmentation.zoom == 0.05 and cfg.augmentation.shift_px == 10
    if key == "unet3d":
        assert (cfg.sampling.mode, cfg.sampling.block_slices, cfg.sampling.block_overlap) == ("blocks3d", 32, 12)
    else:
        assert cfg.sampling.mode == "slices2d"


def test_fcn_ppm_recipe_settings() -> None:
    cfg = load_config(RECIPES / "fcn_ppm_kidney.yaml")
    assert cfg.preprocessing.hu_window == (-200.0, 500.0) and cfg.preprocessing.normalization == "unity_minus_mean"
    assert cfg.preprocessing.roi.per_kidney and cfg.preprocessing.roi.size_hw == (150, 150)
    assert cfg.sampling.patch_size[0] == 64 and cfg.loss.class_weights == [0.2, 1.0, 2.0]
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == ("sgd", 1e-3, 0.9, 1e-5)
    assert cfg.schedule.milestones == [3, 5, 7] and cfg.training.batch_size == 4
    assert cfg.inference.method == "voting" and cfg.postprocess.crf.enabled
    assert cfg.postprocess.largest_component.enabled and cfg.postprocess.largest_component.connectivity == 18


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phantom cache for every recipe run of this module (the phantoms are rendered once)."""
    return tmp_path_factory.mktemp("phantoms")


@pytest.mark.slow
@pytest.mark.parametrize("key", THESIS)
def test_thesis_recipe_runs_at_demo_scale(key: str, shared_data: Path, tmp_path: Path, phantom_cache: Path) -> None:
    """The demo scale's data, model and pipeline end to end; 2 epochs x 2 steps to keep the suite short (the
    full demo scale of all seven runs in `ctdl sweep recipes/kits19_compare.yaml --scale demo`)."""
    rc = main(["train", str(RECIPES / f"kits19_{key}.yaml"), "--scale", "demo", "--quiet",
               "--set", f"output_dir={tmp_path}", "--set", f"data.cache_dir={phantom_cache}",
               "--set", "training.epochs=2", "--set", "training.steps_per_epoch=2"])
    assert rc == 0
    summary = json.loads((tmp_path / f"kits19_{key}" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["params"] > 0
    for m in ("kidney_dice", "tumor_dice", "weighted_jaccard"):
        assert 0.0 <= summary["metrics"][m] <= 1.0


@pytest.mark.slow
def test_fcn_ppm_recipe_runs_at_demo_scale_reduced(shared_data: Path, tmp_path: Path, phantom_cache: Path) -> None:
    """The demo scale's pipeline (per-kidney ROI, voting, CRF, 18-connected LCC) with fewer epochs and cases;
    the full demo scale (about 30 minutes at one CPU thread) is measured outside the suite."""
    rc = main(["train", str(RECIPES / "fcn_ppm_kidney.yaml"), "--scale", "demo", "--quiet",
               "--set", f"output_dir={tmp_path}", "--set", f"data.cache_dir={phantom_cache}",
               "--set", "data.cases=6", "--set", "data.split.train=0.5", "--set", "data.split.val=0.17",
               "--set", "data.split.test=0.33", "--set", "training.epochs=2", "--set", "training.steps_per_epoch=4",
               "--set", "inference.coarse_epochs=2"])
    assert rc == 0
    run = tmp_path / "fcn_ppm_kidney"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["postprocess"]["crf"]["enabled"] and cfg["inference"]["method"] == "voting"
