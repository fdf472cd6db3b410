"""GAN task: exact resume, every network updated, DLAE GAN bugs fixed, inference geometry, data sources."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from ctdl.config.load import config_from_dict
from ctdl.data.paired import PairSampler, gan_cases, hu_window
from ctdl.engine.trainer import load_checkpoint
from ctdl.io import Volume, read_volume, write_volume
from ctdl.io.hdf5 import write_dlae_hdf5
from ctdl.tasks import gan as gan_task


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPACING = (2.0, 1.5, 1.25)


def _write_pairs(root: Path, n: int = 4, shape=(5, 16, 16), seed: int = 0) -> Path:
    """Folder layout: images/ = noisy sources, labels/ = clean targets (HU), same grid."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        clean = np.full(shape, -1000.0, np.float32)
        clean[:, 3:13, 2:14] = 40.0
        clean[:, 6:10, 5:9] = 160.0 + 10 * i
        noisy = clean + rng.normal(0, 50, shape).astype(np.float32)
        vol = Volume.from_array(clean, spacing=SPACING, origin=(10.0, -5.0, 3.0))
        write_volume(vol.with_array(noisy), root / "images" / f"c{i}.nii.gz")
        write_volume(vol, root / "labels" / f"c{i}.nii.gz")
    return root


def _cfg(root: Path, out: Path, mode: str = "pix2pix", epochs: int = 2, **gan):
    gen = {"name": "unet_generator2d", "params": {"base": 4, "depth": 2}} if mode == "pix2pix" else \
        {"name": "resnet_generator2d", "params": {"base": 4, "n_blocks": 1}}
    data = {
        "name": f"t_{mode}", "task": "gan", "seed": 3, "output_dir": str(out),
        "data": {"format": "folder", "root": str(root), "images_dir": "images", "labels_dir": "labels",
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "preprocessing": {"hu_window": [-200, 300]},
        "sampling": {"mode": "slices2d", "patch_size": [1, 8, 8]},
        "augmentation": {"enabled": True, "flip_axes": [2]},
        "training": {"epochs": epochs, "batch_size": 3, "steps_per_epoch": 2, "threads": 1},
        "checkpoint": {"tensorboard": False},
        "gan": {"mode": mode, "generator": gen, "discriminator": {"name": "patchgan2d", "params": {"base": 4, "n_layers": 1}},
                "pool_size": 2, **gan},
    }
    return config_from_dict(data, "test")


def _weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(run_dir / "last.pt")["nets"]


@pytest.mark.parametrize("mode", ["pix2pix", "cyclegan"])
def test_killed_and_resumed_run_ends_with_same_weights(tmp_path: Path, mode: str) -> None:
    root = _write_pairs(tmp_path / "data")
    straight = gan_task.train(_cfg(root, tmp_path / "a", mode, epochs=2), progress=False)
    # "killed" after epoch 1: train 1 epoch, then resume the same run folder to 2 epochs
    first = gan_task.train(_cfg(root, tmp_path / "b", mode, epochs=1), progress=False)
    resumed = gan_task.train(_cfg(root, tmp_path / "b", mode, epochs=2), resume=True, progress=False)
    assert first == resumed
    wa, wb = _weights(straight), _weights(resumed)
    assert set(wa) == ({"G", "D"} if mode == "pix2pix" else {"G_xy", "G_yx", "D_x", "D_y"})
    for net in wa:
        for k in wa[net]:
            assert torch.equal(wa[net][k], wb[net][k]), f"{net}.{k} differs after resume"
    ha = (straight / "history.csv").read_text().splitlines()
    hb = (resumed / "history.csv").read_text().splitlines()
    assert len(ha) == len(hb) == 3
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # drop epoch_time_s (last column)
    assert strip(ha) == strip(hb)
    ck = load_checkpoint(resumed / "last.pt")
    assert ck["epoch"] == 2 and ck["optimizers"].keys() == {"G", "D"}
    if mode == "cyclegan":
        assert len(ck["pools"]["x"]["images"]) == 2  # the history pool is part of the checkpoint


def _trainer(tmp_path: Path, mode: str, **gan) -> gan_task.GanTrainer:
    root = _write_pairs(tmp_path / "data")
    cfg = _cfg(root, tmp_path / "o", mode, **gan)
    parts = gan_cases(cfg, progress=False)
    sampler = PairSampler(parts["train"], None if mode == "pix2pix" else parts["train"], hu_window(cfg), 2,
                          cfg.sampling.patch_size, 3, cfg.seed, None, paired=mode == "pix2pix")
    return gan_task.GanTrainer(cfg, gan_task.build_networks(cfg), sampler, tmp_path / "o", progress=False,
                               preview=parts["val"][0])


def test_cyclegan_step_updates_both_generators_and_both_discriminators(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "cyclegan")
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in tr.nets.items()}
    x, y = (torch.from_numpy(a) for a in next(iter(tr.sampler.epoch(0))))
    tr.train_step(x, y)
    for k, m in tr.nets.items():
        changed = sum(not torch.equal(a, b) for a, b in zip(before[k], m.parameters()))
        assert changed == len(before[k]), f"{k}: {changed}/{len(before[k])} parameter tensors updated"


def test_identity_loss_is_both_terms(tmp_path: Path) -> None:
    # DLAE's g_identity reported one of the two identity terms
    tr = _trainer(tmp_path, "cyclegan", lambda_identity=2.0)
    x, y = (torch.from_numpy(a) for a in next(iter(tr.sampler.epoch(0))))
    with torch.no_grad():
        expect = 2.0 * (float((tr.nets["G_xy"](y) - y).abs().mean()) + float((tr.nets["G_yx"](x) - x).abs().mean()))
    assert tr.train_step(x, y)["g_identity"] == pytest.approx(expect, rel=1e-5)


def test_short_last_batch_and_epoch_mean(tmp_path: Path) -> None:
    # DLAE: the last batch of an epoch crashed when short, and the CSV held the last batch's losses (bug 21)
    tr = _trainer(tmp_path, "pix2pix")
    n_slices = sum(len(s) for s in tr.sampler.src)
    assert n_slices % 3 != 0
    row = tr._train_epoch(0)
    sizes = [b["batch_size"] for b in tr.batch_log]
    assert sum(sizes) == n_slices == row["samples"] and sizes[-1] == n_slices % 3
    for key in ("g_loss", "d_loss", "g_l1"):
        expect = sum(b[key] * b["batch_size"] for b in tr.batch_log) / n_slices
        assert row[key] == pytest.approx(expect, rel=1e-9)
        assert row[key] != pytest.approx(tr.batch_log[-1][key], rel=1e-6)


def test_optimizer_type_and_adversarial_loss_are_honoured(tmp_path: Path) -> None:
    # DLAE ignored the GAN optimizer type field (bug 10)
    tr = _trainer(tmp_path, "pix2pix", d_optimizer={"name": "sgd", "lr": 0.01}, adversarial_loss="bce")
    assert isinstance(tr.optims["D"], torch.optim.SGD) and isinstance(tr.optims["G"], torch.optim.Adam)
    assert tr.optims["G"].param_groups[0]["betas"] == (0.5, 0.999)
    assert type(tr.adv).__name__ == "BCEGANLoss"
    assert type(_trainer(tmp_path / "2", "pix2pix").adv).__name__ == "LSGANLoss"  # the default


def test_preview_png_both_directions(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    tr = _trainer(tmp_path, "cyclegan")
    img = mpimg.imread(tr.write_preview(tmp_path / "p.png"))
    assert img.shape[:2] == (2 * 16, 4 * 16)  # x | G_xy x | G_yx G_xy x | y, and the other direction
    tr2 = _trainer(tmp_path / "2", "pix2pix")
    assert mpimg.imread(tr2.write_preview(tmp_path / "q.png")).shape[:2] == (16, 3 * 16)


def test_run_folder_and_prediction_geometry(tmp_path: Path) -> None:
    root = _write_pairs(tmp_path / "data")
    run = gan_task.train(_cfg(root, tmp_path / "o", "pix2pix", epochs=1), progress=False)
    for name in ("config.yaml", "history.csv", "timing.json", "summary.json", "metrics.csv", "metrics_summary.csv",
                 "preview_epoch_001.png", "last.pt", "split.json"):
        assert (run / name).is_file(), name
    with open(run / "metrics_summary.csv") as fh:
        rows = {r["metric"]: r for r in csv.DictReader(fh)}
    assert {"psnr", "ssim", "mae_hu", "input_psnr", "gauss1_psnr"} <= set(rows)
    src = root / "images" / "c0.nii.gz"
    (out,) = gan_task.predict_paths(run / "last.pt", src, tmp_path / "pred", device="cpu")
    a, b = read_volume(out), read_volume(src)
    assert a.shape == b.shape and np.allclose(a.affine, b.affine)
    assert -200 <= float(a.array.min()) and float(a.array.max()) <= 300  # inside the HU window


def test_3d_patch_training_and_sliding_window(tmp_path: Path) -> None:
    root = _write_pairs(tmp_path / "data", n=3, shape=(8, 20, 20))
    cfg = _cfg(root, tmp_path / "o", "pix2pix", epochs=1)
    cfg = cfg.model_copy(update={
        "sampling": cfg.sampling.model_copy(update={"mode": "patch3d", "patch_size": (8, 16, 16)}),
        "gan": cfg.gan.model_copy(update={
            "generator": cfg.gan.generator.model_copy(update={"name": "unet_generator3d", "params": {"base": 2, "depth": 2}}),
            "discriminator": cfg.gan.discriminator.model_copy(update={"name": "patchgan3d", "params": {"base": 2, "n_layers": 1}}),
        }),
    })
    cfg.data.split = cfg.data.split.model_copy(update={"train": 0.67, "val": 0.0, "test": 0.33})
    run = gan_task.train(cfg, progress=False)
    pred = read_volume(next((run / "predictions").iterdir()))
    assert pred.shape == (8, 20, 20)


def test_hdf5_and_manifest_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(16, 16, 1)).astype(np.float32) for _ in range(3)]
    write_dlae_hdf5(tmp_path / "x.h5", xs)
    write_dlae_hdf5(tmp_path / "y.h5", [2 * x for x in xs])
    cfg = _cfg(tmp_path, tmp_path / "o")
    d = cfg.data.model_copy(update={"format": "hdf5", "train_x": tmp_path / "x.h5", "train_y": tmp_path / "y.h5"})
    parts = gan_cases(cfg.model_copy(update={"data": d}), progress=False)
    assert len(parts["train"]) == 3 and parts["train"][1].source.shape == (1, 16, 16)
    assert np.allclose(parts["train"][1].target.array, 2 * xs[1][..., 0])
    root = _write_pairs(tmp_path / "data", n=2)
    (tmp_path / "m.csv").write_text("source,target,split\ndata/images/c0.nii.gz,data/labels/c0.nii.gz,train\n"
                                    "data/images/c1.nii.gz,data/labels/c1.nii.gz,test\n")
    d = cfg.data.model_copy(update={"format": "manifest", "manifest": tmp_path / "m.csv"})
    parts = gan_cases(cfg.model_copy(update={"data": d}), progress=False)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [1, 0, 1]
    (tmp_path / "bad.csv").write_text("image,label\na,b\n")
    d = cfg.data.model_copy(update={"format": "manifest", "manifest": tmp_path / "bad.csv"})
    with pytest.raises(Exception, match="source,target"):
        gan_cases(cfg.model_copy(update={"data": d}), progress=False)


def test_dlae_gan_layer_lists_build(shared_data: Path) -> None:
    """A DLAE GAN config (generator/discriminator layer lists) converts into gan.* and builds both networks."""
    import json

    from ctdl.config.dlae import dlae_import

    raw = json.loads((shared_data / "dlae_configs" / "example_gan.json").read_text())
    data, _ = dlae_import(raw, "example_gan.json")
    cfg = config_from_dict(data, "example_gan.json")
    assert cfg.gan.mode == "pix2pix" and cfg.gan.adversarial_loss == "lsgan" and cfg.gan.generator.layers
    nets = gan_task.build_networks(cfg)
    x = torch.randn(1, 1, 128, 128)
    for n in nets.values():
        n.eval()
    with torch.no_grad():
        assert nets["G"](x).shape == x.shape
        assert nets["D"](torch.cat([x, x], 1)).shape == (1, 1, 8, 8)
