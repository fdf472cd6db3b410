"""Live validation previews: layout, downsampling, geometry, atomic writes, epoch bookkeeping in a real Trainer."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from ctdl.config.schema import ExperimentConfig
from ctdl.data.sampling import PreparedCase
from ctdl.engine.previews import (
    ValidationPreviews,
    ct_to_uint8,
    list_previews,
    preview_stride,
    validation_previews,
)


def _case(shape: tuple[int, int, int] = (300, 40, 20), case_id: str = "case_00007") -> PreparedCase:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[100:200, 10:20, 5:10] = 1
    return PreparedCase(case_id, image, label, spacing=(2.0, 1.5, 1.5))


def test_stride_and_uint8_scaling() -> None:
    assert preview_stride((300, 40, 20), 128) == (3, 1, 1)
    assert preview_stride((128, 129, 1), 128) == (1, 2, 1)
    x = np.linspace(-3, 5, 1001, dtype=np.float32)
    u = ct_to_uint8(x)
    assert u.dtype == np.uint8 and u[0] == 0 and u[-1] == 255
    assert u[500] == pytest.approx(127.5, abs=1.5)  # the middle of the 1..99 percentile range
    assert set(np.unique(ct_to_uint8(np.full(5, 2.0)))) == {0}  # a constant image does not divide by zero


def test_write_layout_geometry_and_ct_once(tmp_path: Path) -> None:
    case = _case()
    pv = ValidationPreviews(tmp_path, case, max_size=128)
    pv.on_epoch_start(None, 0)  # type: ignore[arg-type]
    pv.record(case, case.label)
    ct = tmp_path / "previews" / "ct" / "case_00007.nii.gz"
    first = tmp_path / "previews" / "epoch_000" / "case_00007.nii.gz"
    assert ct.is_file() and first.is_file()
    img = nib.load(str(first))
    assert img.shape == (100, 40, 20) and img.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(img.affine) == ("S", "P", "L")  # the pipeline's canonical orientation
    assert np.allclose(img.header.get_zooms(), (6.0, 1.5, 1.5))  # spacing x stride
    lab = np.asarray(img.dataobj)
    assert np.array_equal(lab, case.label[::3])  # strided (nearest), no interpolation of labels
    ct_img = nib.load(str(ct))
    assert ct_img.get_data_dtype() == np.uint8 and ct_img.shape == (100, 40, 20)
    assert np.allclose(ct_img.affine, img.affine)  # one grid for the CT and every epoch
    ct_mtime = ct.stat().st_mtime_ns
    other = np.zeros_like(case.label)
    other[0:30] = 2
    pv.on_epoch_start(None, 10)  # type: ignore[arg-type]
    pv.record(_case(case_id="case_00008"), other)  # not the preview case: ignored
    assert not (tmp_path / "previews" / "epoch_010").exists()
    pv.record(case, other)
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "previews" / "epoch_010" / "case_00007.nii.gz")).dataobj),
                          other[::3])
    assert ct.stat().st_mtime_ns == ct_mtime  # the CT preview is written once
    # epochs sort by number; a temporary file or an epoch folder without the case's file is not listed
    (tmp_path / "previews" / "epoch_002").mkdir()
    (tmp_path / "previews" / "epoch_002" / ".case_00007.nii.gz.abc.nii.gz").write_bytes(b"partial")
    listing = list_previews(tmp_path)
    assert listing["epochs"] == ["epoch_000", "epoch_010"]
    assert listing["cases"] == {"case_00007": {"ct": "previews/ct/case_00007.nii.gz", "epochs": ["epoch_000", "epoch_010"]}}
    assert list_previews(tmp_path / "nothing") == {"epochs": [], "cases": {}}


def test_failed_write_leaves_nothing_and_never_stops_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    case = _case((20, 16, 16))
    pv = ValidationPreviews(tmp_path, case)
    pv.on_epoch_start(None, 0)  # type: ignore[arg-type]
    pv.record(case, case.label)  # the CT preview exists now

    def broken_to_file_map(img: nib.Nifti1Image, file_map: dict | None = None, dtype: object = None) -> None:
        holder = (file_map or img.file_map)["image"]  # what nib.save and ctdl's ISA-L gzip writer both reach
        if holder.fileobj is not None:
            holder.fileobj.write(b"half a file")
        else:
            Path(holder.filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", broken_to_file_map)
    pv.on_epoch_start(None, 1)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="ctdl"):
        pv.record(case, case.label)
    assert "epoch 1 not written: disk full" in caplog.text
    assert not any((tmp_path / "previews" / "epoch_001").iterdir())  # no target, no temporary file left
    assert list_previews(tmp_path)["epochs"] == ["epoch_000"]
    with pytest.raises(ValueError, match="do not match"):
        pv.write(2, np.zeros((3, 3, 3), np.uint8))


def test_config_switch() -> None:
    case = _case((8, 8, 8))
    on = ExperimentConfig.model_validate({"data": {"format": "kits19", "root": "x"}})
    off = ExperimentConfig.model_validate({"data": {"format": "kits19", "root": "x"}, "evaluation": {"previews": False}})
    assert on.evaluation.previews is True
    assert isinstance(validation_previews(on, [case], "run"), ValidationPreviews)
    assert validation_previews(off, [case], "run") is None
    assert validation_previews(on, [], "run") is None


def test_written_at_each_validation_epoch_of_a_trainer(tmp_path: Path, one_torch_thread: None) -> None:
    """The trainer's epochs reach the files: val_every=2 over 5 epochs validates after epochs 1, 3 and 4 (last)."""
    from ctdl.engine.trainer import Trainer

    case = _case((6, 8, 8))
    pv = ValidationPreviews(tmp_path, case)
    model = nn.Conv3d(1, 3, 1)
    x = torch.from_numpy(case.image[None])
    y = torch.from_numpy(case.label[None].astype(np.int64))

    def val_fn(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            labels = m(x).argmax(1)[0].numpy().astype(np.uint8)
        pv.record(case, labels)
        return {"dice_mean": float((labels == case.label).mean())}

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, None, nn.CrossEntropyLoss(), lambda epoch: [(x, y)], val_fn, tmp_path, 5,
                      callbacks=[pv], val_every=2, progress=False, monitor="val_dice_mean",
                      monitor_mode="max")
    trainer.fit()
    assert pv.written == [1, 3, 4]
    assert list_previews(tmp_path)["epochs"] == ["epoch_001", "epoch_003", "epoch_004"]
