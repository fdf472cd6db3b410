"""Callbacks: checkpoint files, CSV history across resume, TensorBoard (present or missing), progress bar."""

from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from torch import nn

from ctdl.config.schema import CheckpointConfig, EarlyStoppingConfig, ExperimentConfig, TrainingConfig
from ctdl.engine import callbacks as cbmod
from ctdl.engine.callbacks import (
    Callback,
    CheckpointCallback,
    CSVLogger,
    EarlyStopping,
    ProgressBar,
    TensorBoardLogger,
    build_callbacks,
    default_callbacks,
    is_improvement,
)
from ctdl.engine.trainer import Trainer, load_checkpoint


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(x))


def _loader(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1000 + epoch)
    x = torch.randn(12, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]


def _scripted_val(values: list[float]):
    calls = {"n": 0}

    def fn(model: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        return {"loss": values[(calls["n"] - 1) % len(values)], "dice": 1.0 - values[(calls["n"] - 1) % len(values)]}

    return fn


def make(run_dir: Path, epochs: int, callbacks: Optional[list[Callback]], val=None, **kw: Any) -> Trainer:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    kw.setdefault("progress", False)
    return Trainer(model, opt, None, nn.functional.cross_entropy, _loader,
                   val or _scripted_val([0.9, 0.8, 0.85, 0.7, 0.75, 0.6]), run_dir, epochs, callbacks=callbacks, **kw)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_is_improvement() -> None:
    assert is_improvement(1.0, None, "min") and not is_improvement(float("nan"), None, "min")
    assert is_improvement(0.5, 1.0, "min") and not is_improvement(1.0, 1.0, "min")
    assert is_improvement(2.0, 1.0, "max") and not is_improvement(1.05, 1.0, "max", min_delta=0.1)
    with pytest.raises(ValueError):
        is_improvement(1.0, 0.0, "sideways")


def test_checkpoint_callback_files_and_best(tmp_path: Path) -> None:
    ck = CheckpointCallback(every_n=2)
    make(tmp_path, 6, [ck]).fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch_0002.pt", "epoch_0004.pt", "epoch_0006.pt", "last.pt"]
    assert (ck.best, ck.best_epoch) == (0.6, 5)
    assert load_checkpoint(tmp_path / "epoch_0004.pt")["epoch"] == 4
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 6
    # the callback's own state is inside the checkpoint it writes, already updated for the epoch
    assert load_checkpoint(tmp_path / "last.pt")["callbacks"]["CheckpointCallback"] == {"best": 0.6, "best_epoch": 5}


def test_checkpoint_callback_best_in_max_mode(tmp_path: Path) -> None:
    ck = CheckpointCallback(monitor="val_dice", mode="max", save_last=False)
    make(tmp_path, 3, [ck], val=_scripted_val([0.5, 0.2, 0.4])).fit()  # dice 0.5, 0.8, 0.6
    assert ck.best == pytest.approx(0.8) and ck.best_epoch == 1
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert not (tmp_path / "last.pt").exists()


def test_checkpoint_callback_runs_after_other_callbacks(tmp_path: Path) -> None:
    es = EarlyStopping(patience=10)
    t = make(tmp_path, 2, [CheckpointCallback(), es])
    assert isinstance(t.callbacks[-1], CheckpointCallback)
    t.fit()
    saved = load_checkpoint(tmp_path / "last.pt")["callbacks"]["EarlyStopping"]
    assert saved == es.state_dict() and saved["best_epoch"] == 1


def test_csv_one_row_per_epoch_after_resume(tmp_path: Path) -> None:
    make(tmp_path, 3, [CSVLogger(), CheckpointCallback()]).fit()
    assert [r["epoch"] for r in rows(tmp_path / "history.csv")] == ["0", "1", "2"]
    # a killed run may have logged an epoch after its last checkpoint: add a stale row
    with open(tmp_path / "history.csv", "a") as f:
        f.write("3,0.1,9.9,9.9,9.9,1.0\n")
    make(tmp_path, 5, [CSVLogger(), CheckpointCallback()]).fit(resume_from=tmp_path / "last.pt")
    table = rows(tmp_path / "history.csv")
    assert [r["epoch"] for r in table] == ["0", "1", "2", "3", "4"]
    assert list(table[0]) == ["epoch", "lr", "train_loss", "val_loss", "val_dice", "epoch_time_s"]
    assert table[3]["train_loss"] != "9.9"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_early_stopping_state_resumes_and_restores_from_best_pt(tmp_path: Path) -> None:
    vals = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # best at epoch 0, worse afterwards
    es = EarlyStopping(patience=3)
    make(tmp_path, 2, [es, CheckpointCallback()], val=_scripted_val(vals)).fit()
    assert (es.best_epoch, es.wait) == (0, 1)
    best_weights = load_checkpoint(tmp_path / "best.pt")["model"]

    es2 = EarlyStopping(patience=3)
    t = make(tmp_path, 10, [es2, CheckpointCallback()], val=_scripted_val(vals[2:]))
    out = t.fit(resume_from=tmp_path / "last.pt")
    # wait resumed at 1: epochs 2 and 3 are bad -> stop after epoch 3 (not after epoch 4)
    assert es2.stopped_epoch == 3 and out["epochs_completed"] == 4 and out["stopped_early"]
    assert es2.best_weights is None and t.restored_best_epoch == 0  # no copy in memory: came from best.pt
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, best_weights[k])


def test_early_stopping_without_restore(tmp_path: Path) -> None:
    es = EarlyStopping(patience=1, restore_best=False)
    t = make(tmp_path, 5, [es], val=_scripted_val([0.5, 0.6, 0.7]))
    t.fit()
    assert es.stopped_epoch == 1 and t.restored_best_epoch is None


def test_tensorboard_logger_writes_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    tb = TensorBoardLogger()
    make(tmp_path, 2, [tb]).fit()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and tb.writer is None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"train_loss", "val_loss", "lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train_loss")] == [0, 1]


def test_tensorboard_missing_warns_once_and_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    monkeypatch.setattr(cbmod, "_TB_WARNED", False)
    with pytest.warns(UserWarning, match="TensorBoard logging disabled"):
        make(tmp_path / "a", 2, [TensorBoardLogger()]).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(tmp_path / "b", 1, [TensorBoardLogger()]).fit()
    assert not (tmp_path / "a" / "tensorboard").exists()


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_tty(tmp_path: Path) -> None:
    tty = FakeTTY()
    make(tmp_path / "a", 2, [ProgressBar(file=tty)], progress=True).fit()
    text = tty.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "loss=" in text and "3/3" in text

    off = FakeTTY()
    make(tmp_path / "b", 1, [ProgressBar(file=off)], progress=False).fit()
    assert off.getvalue() == ""
    not_tty = io.StringIO()
    make(tmp_path / "c", 1, [ProgressBar(file=not_tty)], progress=True).fit()
    assert not_tty.getvalue() == ""


def test_default_callbacks(tmp_path: Path) -> None:
    t = make(tmp_path, 1, None, progress=True)
    kinds = [type(cb) for cb in t.callbacks]
    assert kinds == [CSVLogger, ProgressBar, CheckpointCallback]
    t.fit()
    assert (tmp_path / "last.pt").exists() and (tmp_path / "history.csv").exists()


def test_duplicate_callbacks_get_distinct_state_keys(tmp_path: Path) -> None:
    a, b = CheckpointCallback(monitor="val_loss"), CheckpointCallback(tmp_path / "dice", monitor="val_dice", mode="max")
    make(tmp_path, 2, [a, b]).fit()
    states = load_checkpoint(tmp_path / "last.pt")["callbacks"]
    assert set(states) == {"CheckpointCallback", "CheckpointCallback#1"}
    assert (tmp_path / "dice" / "best.pt").exists()


def test_build_callbacks_from_config(tmp_path: Path) -> None:
    training = TrainingConfig(monitor="val_loss", monitor_mode="min",
                              early_stopping=EarlyStoppingConfig(enabled=True, patience=2, min_delta=0.01))
    cbs = build_callbacks(CheckpointConfig(every_n=3, tensorboard=False), training, run_dir=tmp_path, progress=False)
    kinds = [type(cb) for cb in cbs]
    assert kinds == [EarlyStopping, CSVLogger, ProgressBar, CheckpointCallback]
    es, ck = cbs[0], cbs[-1]
    assert (es.patience, es.min_delta, es.monitor, es.mode) == (2, 0.01, "val_loss", "min")
    assert ck.every_n == 3 and ck.dirpath == tmp_path
    assert not cbs[2].enabled
    none = build_callbacks(CheckpointConfig(save_last=False, save_best=False, csv=False, tensorboard=False), TrainingConfig())
    assert [type(cb) for cb in none] == [ProgressBar]


def test_default_callbacks_from_experiment_config(tmp_path: Path) -> None:
    cfg = ExperimentConfig(data={"format": "manifest", "manifest": tmp_path / "m.csv"}, output_dir=tmp_path, name="run")
    cbs = default_callbacks(cfg, progress=False)
    assert [type(cb) for cb in cbs] == [CSVLogger, TensorBoardLogger, ProgressBar, CheckpointCallback]
    assert cbs[0].path == tmp_path / "run" / "history.csv"
    assert cbs[-1].monitor == "val_dice_mean" and cbs[-1].mode == "max"
