"""GAN task on DLAE HDF5 pairs without an HU window: the data-derived intensity mapping, split, train, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctdl.config.load import config_from_dict
from ctdl.data.paired import PairCase
from ctdl.engine.trainer import load_checkpoint
from ctdl.io import Volume, read_volume, write_volume
from ctdl.io.hdf5 import write_dlae_hdf5
from ctdl.tasks import gan as gan_task
from ctdl.tasks.gan import IntensityMap, intensity_map

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gan_cfg(tmp: Path, x: Path | None = None, y: Path | None = None, **pre: object):
    d = {
        "name": "h5gan", "task": "gan", "seed": 4, "output_dir": str(tmp / "runs"),
        "data": {"format": "hdf5", "train_x": str(x or tmp / "x.h5"), "train_y": str(y or tmp / "y.h5"),
                 "split": {"train": 0.75, "val": 0.25, "test": 0.0}},
        "preprocessing": {"hu_window": None, "reorient": False, "normalization": "none", **pre},
        "sampling": {"mode": "slices2d"},
        "augmentation": {"enabled": False},
        "training": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 2, "device": "cpu", "threads": 1},
        "checkpoint": {"tensorboard": False},
        "gan": {"mode": "pix2pix", "generator": {"name": "unet_generator2d", "params": {"base": 4, "depth": 2}},
                "discriminator": {"name": "patchgan2d", "params": {"base": 4, "n_layers": 1}}},
    }
    return config_from_dict(d, "test")


def pairs(n: int = 8, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Source = 100 * target + 50 + noise (float, not HU), target a 0..3 label-like map; (r, c, 1) samples."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        t = np.zeros((16, 16), np.float32)
        t[3:11, 4:12] = 1 + i % 3
        xs.append((100 * t + 50 + rng.normal(0, 4, t.shape)).astype(np.float32)[..., None])
        ys.append(t[..., None])
    return xs, ys


def case(i: int, src: np.ndarray, tgt: np.ndarray) -> PairCase:
    return PairCase(f"c{i}", Volume.from_array(src[None]), Volume.from_array(tgt[None]))


def test_data_range_sends_min_max_to_minus_one_plus_one_and_back_exactly() -> None:
    imap = IntensityMap((-3.25, 1234.5), (0.0, 3.0), "data")
    x = np.array([-3.25, 0.0, 17.125, 1234.5], np.float32)
    u = imap.to_unit(x, "source")
    assert u.dtype == np.float32 and u[0] == -1.0 and u[-1] == 1.0
    assert u[1] == pytest.approx(2 * 3.25 / 1237.75 - 1, abs=1e-7)
    back = imap.from_unit(u, "source")
    assert back[0] == np.float32(-3.25) and back[-1] == np.float32(1234.5)  # exact at the ends
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(imap.from_unit(np.array([-1.0, 0.0, 1.0], np.float32), "target"), [0.0, 1.5, 3.0])
    np.testing.assert_array_equal(imap.to_unit(np.array([-100.0, 5000.0]), "source"), [-1.0, 1.0])  # clipped
    np.testing.assert_array_equal(imap.from_unit(np.array([-7.0, 7.0]), "target"), [0.0, 3.0])
    per = IntensityMap((0.0, 1.0), (0.0, 1.0), "samplewise_negpos_xy", (True, True))
    np.testing.assert_array_equal(per.to_unit(np.array([10.0, 15.0, 20.0]), "source"), [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(per.to_unit(np.full(3, 7.0), "target"), [-1.0] * 3)  # constant sample
    assert IntensityMap.from_dict(json.loads(json.dumps(per.to_dict()))) == per


def test_mapping_follows_the_config(tmp_path: Path) -> None:
    xs, ys = pairs(3)
    cases = [case(i, x[..., 0], y[..., 0]) for i, (x, y) in enumerate(zip(xs, ys))]
    src = (min(float(x.min()) for x in xs), max(float(x.max()) for x in xs))
    window = intensity_map(gan_cfg(tmp_path, hu_window=[-200, 300]), cases)
    assert window == IntensityMap((-200.0, 300.0), (-200.0, 300.0), "hu_window")
    data = intensity_map(gan_cfg(tmp_path), cases)  # normalization none: min/max of the training data
    assert data.origin == "data" and data.source == src and data.target == (0.0, 3.0) and data.per_sample == (False, False)
    sw = intensity_map(gan_cfg(tmp_path, normalization="samplewise_negpos_xy"), cases)
    assert sw.per_sample == (True, True) and sw.target == (0.0, 3.0)
    assert intensity_map(gan_cfg(tmp_path, normalization="samplewise_unity_x"), cases).per_sample == (True, False)
    gl = intensity_map(gan_cfg(tmp_path, normalization="global_negpos_xy", intensity_range=[0, 4096],
                               label_range=[0, 3]), cases)
    assert (gl.source, gl.target, gl.per_sample) == ((0.0, 4096.0), (0.0, 3.0), (False, False))
    gx = intensity_map(gan_cfg(tmp_path, normalization="global_unity_x", intensity_range=[0, 4096]), cases)
    assert gx.source == (0.0, 4096.0) and gx.target == (0.0, 3.0)  # *_x: targets by the data's range
    mapped = gan_task._unit_cases(cases, data)
    assert min(float(c.source.array.min()) for c in mapped) == -1.0
    assert max(float(c.source.array.max()) for c in mapped) == 1.0
    levels = np.unique(np.concatenate([c.target.array.ravel() for c in mapped]))  # targets 0, 1, 2, 3
    np.testing.assert_allclose(levels, [-1.0, -1 / 3, 1 / 3, 1.0], rtol=0, atol=1e-7)
    assert levels[0] == -1.0 and levels[-1] == 1.0


class PlusOne(torch.nn.Module):
    """A 'generator' whose output is tanh's maximum everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


def test_hdf5_pairs_train_and_predict_with_the_stored_range(tmp_path: Path) -> None:
    xs, ys = pairs(8)
    write_dlae_hdf5(tmp_path / "x.h5", xs)
    write_dlae_hdf5(tmp_path / "y.h5", ys)
    cfg = gan_cfg(tmp_path)
    run = gan_task.train(cfg, progress=False)
    split = json.loads((run / "split.json").read_text())
    order = np.random.default_rng(4).permutation(8)  # DLAE's split of the training file, seeded: ceil(8 * 0.25)
    assert split["val"] == [f"train_{i:05d}" for i in sorted(order[:2])] and len(split["train"]) == 6
    train_idx = [int(c.split("_")[1]) for c in split["train"]]
    meta = load_checkpoint(run / "last.pt")["meta"]
    src = (min(float(xs[i].min()) for i in train_idx), max(float(xs[i].max()) for i in train_idx))
    tgt = (min(float(ys[i].min()) for i in train_idx), max(float(ys[i].max()) for i in train_idx))
    assert meta["intensity"] == {"source": list(src), "target": list(tgt), "origin": "data",
                                 "per_sample": [False, False]}
    assert meta["hu_window"] is None
    hist = (run / "history.csv").read_text().splitlines()
    assert len(hist) == 2 and "val_psnr" in hist[0]

    vol = Volume.from_array(xs[0][..., 0][None], spacing=(1.0, 0.5, 0.5))
    write_volume(vol, tmp_path / "in.nii.gz")
    pred = read_volume(gan_task.predict_paths(run, tmp_path / "in.nii.gz", tmp_path / "out", device="cpu")[0])
    assert pred.shape == (1, 16, 16) and np.allclose(pred.spacing, (1.0, 0.5, 0.5))
    assert tgt[0] <= float(pred.array.min()) and float(pred.array.max()) <= tgt[1]  # target units
    predictor = gan_task.GanPredictor.from_checkpoint(run, device="cpu")
    assert predictor.intensity == IntensityMap(src, tgt, "data")
    predictor.model = PlusOne()  # +1 must come back as the training targets' maximum, exactly
    out = read_volume(predictor.predict_file(tmp_path / "in.nii.gz", tmp_path / "one.nii.gz"))
    np.testing.assert_array_equal(out.array, np.full((1, 16, 16), tgt[1], np.float32))


def test_layer_list_regularisers_enter_the_gan_update() -> None:
    """DLAE GAN networks with L2 kernel regularisers: the penalty is part of each network's update (as Keras adds
    ``model.losses``). With a task loss of zero only 0.5 * sum(w**2) has a gradient: SGD(lr 0.1) gives w * 0.9."""
    from types import SimpleNamespace

    import torch

    from ctdl.models.layerlist import build_layer_list
    from ctdl.tasks.gan import GanTrainer, LayerListAdapter

    net = LayerListAdapter(build_layer_list(
        ["Input:(4, 4, 1)", "Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):he_normal:l2:None:0.0:0.5"],
        dims=2, in_channels=1), 2)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert float(GanTrainer._penalty([net]).detach()) > 0 and GanTrainer._penalty([torch.nn.Conv2d(1, 1, 1)]) == 0.0
    trainer = SimpleNamespace(optims={"G": torch.optim.SGD(net.parameters(), lr=0.1)}, grad_clip=None,
                              _penalty=GanTrainer._penalty)
    out = net(torch.zeros(1, 1, 4, 4))
    GanTrainer._step(trainer, "G", (out * 0.0).sum(), [net])  # type: ignore[arg-type]
    for k, v in net.named_parameters():
        want = before[k] * 0.9 if v.dim() > 1 else before[k]  # kernels shrink, biases have no regulariser
        assert torch.allclose(v.detach(), want, atol=1e-7), k
