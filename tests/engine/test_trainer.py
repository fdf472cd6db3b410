"""Trainer: learning, exact resume (epoch boundary and Ctrl-C mid-epoch), checkpoints, clipping, early stop."""

from __future__ import annotations

import csv
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from torch import nn

from ctdl.config.schema import OptimizerConfig, ScheduleConfig, TrainingConfig
from ctdl.engine.callbacks import Callback, CheckpointCallback, CSVLogger, EarlyStopping
from ctdl.engine.optimizers import build_optimizer
from ctdl.engine.schedules import build_scheduler
from ctdl.engine.trainer import (
    amp_dtype,
    Trainer,
    capture_rng,
    epoch_seed,
    load_checkpoint,
    restore_rng,
    rng_from_plain,
    rng_to_plain,
    save_checkpoint,
    seed_everything,
)

N_TRAIN, BATCH = 32, 8


class TinyNet(nn.Module):
    """A small conv net with dropout (dropout makes the torch RNG part of the state)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.conv(x)))
        return self.head(h.mean(dim=(2, 3)))


def _dataset(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, :, :4].mean(dim=(1, 2, 3)) > x[:, :, 4:].mean(dim=(1, 2, 3))).long()
    x[:, :, :4] += 0.5 * (2 * y.view(-1, 1, 1, 1) - 1)  # make the task easy to learn
    return x, y


X_TRAIN, Y_TRAIN = _dataset(123, N_TRAIN)
X_VAL, Y_VAL = _dataset(456, 16)


def loader_fn(seed: int = 0) -> Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Batches in an order that depends only on (seed, epoch), plus per-epoch noise."""

    def fn(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(N_TRAIN, generator=g)
        x = X_TRAIN[perm] + 0.05 * torch.randn(X_TRAIN.shape, generator=g)
        y = Y_TRAIN[perm]
        return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N_TRAIN, BATCH)]

    return fn


def val_fn(model: nn.Module) -> dict[str, float]:
    logits = model(X_VAL)
    return {"loss": nn.functional.cross_entropy(logits, Y_VAL).item(),
            "acc": (logits.argmax(1) == Y_VAL).float().mean().item()}


def make_trainer(run_dir: Path, epochs: int, *, schedule: str = "multistep", init_seed: int = 0,
                 callbacks: Optional[list[Callback]] = None, val: Optional[Callable[..., Any]] = val_fn,
                 opt: Optional[OptimizerConfig] = None, **kw: Any) -> Trainer:
    torch.manual_seed(init_seed)
    model = TinyNet()
    opt_cfg = opt or OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-5)
    optimizer = build_optimizer(opt_cfg, model.parameters())
    sched_cfg = ScheduleConfig(name=schedule, milestones=[2, 4], gamma=0.5, factor=0.5, patience=0)
    scheduler = build_scheduler(sched_cfg, optimizer, epochs)
    kw.setdefault("progress", False)
    return Trainer(model, optimizer, scheduler, nn.functional.cross_entropy, loader_fn(7), val, run_dir, epochs,
                   callbacks=callbacks, seed=7, **kw)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
    for k in sa["state"]:
        for name, t in sa["state"][k].items():
            assert torch.equal(t, sb["state"][k][name]), (k, name)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def strip_time(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in history]


class InterruptAt(Callback):
    """Raises KeyboardInterrupt after batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.current = epoch, batch, -1

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.current = epoch

    def on_batch_end(self, trainer: Trainer, batch_idx: int, loss: float) -> None:
        if (self.current, batch_idx) == (self.epoch, self.batch):
            raise KeyboardInterrupt


# ----------------------------------------------------------------------------- learning


def test_loss_falls(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, 8, schedule="none", opt=OptimizerConfig(name="adam", lr=0.02))
    out = t.fit()
    losses = [row["train_loss"] for row in t.history]
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0]
    assert out["epochs_completed"] == 8 and out["val_loss"] == t.history[-1]["val_loss"]
    assert out["best_epoch"] is not None and out["best_value"] == min(r["val_loss"] for r in t.history)
    assert set(t.history[0]) == {"epoch", "lr", "train_loss", "val_loss", "val_acc", "epoch_time_s"}


def test_seed_everything_is_reproducible() -> None:
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert epoch_seed(3, 1) == epoch_seed(3, 1) != epoch_seed(3, 2)


def test_rng_round_trip_through_plain_types() -> None:
    seed_everything(11)
    state = capture_rng()
    a = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    restore_rng(rng_from_plain(rng_to_plain(state)))
    b = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert a[:3] == b[:3] and torch.equal(a[3], b[3])


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("schedule", ["multistep", "plateau"])
def test_exact_resume_after_epoch_boundary(tmp_path: Path, schedule: str) -> None:
    # plateau on val_acc (mode max, handed to the scheduler by the trainer) stalls and reduces the lr
    kw: dict[str, Any] = {"monitor": "val_acc", "monitor_mode": "max"} if schedule == "plateau" else {}
    full = make_trainer(tmp_path / "full", 6, schedule=schedule, **kw)
    full.fit()
    assert full.history[-1]["lr"] < full.history[0]["lr"]  # the schedule acted, so its state matters

    first = make_trainer(tmp_path / "part", 3, schedule=schedule, **kw)
    first.fit()
    resumed = make_trainer(tmp_path / "part", 6, schedule=schedule, init_seed=99, **kw)  # other init: overwritten
    out = resumed.fit(resume_from=tmp_path / "part" / "last.pt")

    assert out["epochs_completed"] == 6
    assert_same_weights(full.model, resumed.model)
    assert_same_optimizer(full.optimizer, resumed.optimizer)
    assert strip_time(full.history) == strip_time(resumed.history)
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    rows = csv_rows(tmp_path / "part" / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(6))


def test_exact_resume_after_ctrl_c_mid_epoch(tmp_path: Path) -> None:
    full = make_trainer(tmp_path / "full", 5)
    full.fit()

    run = tmp_path / "run"
    interrupted = make_trainer(run, 5, callbacks=[CSVLogger(), CheckpointCallback(), InterruptAt(epoch=2, batch=1)])
    with pytest.warns(UserWarning, match="interrupted"), pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["position"]["phase"] == "train" and ckpt["position"]["batch"] == 2

    resumed = make_trainer(run, 5, init_seed=5)
    resumed.fit(resume_from=run / "last.pt")
    assert_same_weights(full.model, resumed.model)
    assert_same_optimizer(full.optimizer, resumed.optimizer)
    assert strip_time(full.history) == strip_time(resumed.history)
    assert [int(r["epoch"]) for r in csv_rows(run / "history.csv")] == list(range(5))


def test_exact_resume_after_ctrl_c_during_validation(tmp_path: Path) -> None:
    full = make_trainer(tmp_path / "full", 4, schedule="plateau")
    full.fit()

    calls = {"n": 0}

    def flaky_val(model: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return val_fn(model)

    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="interrupted"), pytest.raises(KeyboardInterrupt):
        make_trainer(run, 4, schedule="plateau", val=flaky_val).fit()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["position"]["phase"] == "end"

    resumed = make_trainer(run, 4, schedule="plateau", init_seed=3)
    resumed.fit(resume_from=run / "last.pt")
    assert_same_weights(full.model, resumed.model)
    assert strip_time(full.history) == strip_time(resumed.history)


def test_resume_when_already_done_trains_nothing(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, 2)
    t.fit()
    again = make_trainer(tmp_path, 2)
    with pytest.warns(UserWarning, match="nothing to train"):
        out = again.fit(resume_from=tmp_path / "last.pt")
    assert out["epochs_completed"] == 2 and len(again.history) == 2
    assert_same_weights(t.model, again.model)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    meta = {"config": TrainingConfig(epochs=2), "classes": ["background", "kidney"], "spacing": (3.0, 1.5, 1.5),
            "root": tmp_path, "mean": np.float32(0.5), "array": np.arange(3)}
    t = make_trainer(tmp_path, 2, checkpoint_meta=meta)
    t.fit()
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "callbacks", "rng", "history", "meta"):
        assert key in raw
    assert raw["epoch"] == 2 and raw["position"] is None and raw["scaler"] is None
    assert raw["meta"]["classes"] == ["background", "kidney"] and raw["meta"]["root"] == str(tmp_path)
    assert raw["meta"]["config"]["epochs"] == 2 and raw["meta"]["array"] == [0, 1, 2]
    assert isinstance(raw["rng"]["python"]["state"], list) and isinstance(raw["rng"]["numpy"]["keys"], list)
    torch.load(tmp_path / "best.pt", weights_only=True)

    ckpt = load_checkpoint(tmp_path / "last.pt")
    random.setstate(ckpt["rng"]["python"])  # native types restored
    np.random.set_state(ckpt["rng"]["numpy"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    model = TinyNet()
    model.load_state_dict(ckpt["model"])
    assert_same_weights(model, t.model)


def test_load_checkpoint_errors_and_bare_state_dict(tmp_path: Path) -> None:
    from ctdl.errors import InputError

    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save(TinyNet().state_dict(), tmp_path / "weights.pt")
    assert "conv.weight" in load_checkpoint(tmp_path / "weights.pt")["model"]


def test_unstorable_meta_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="meta.fn"):
        make_trainer(tmp_path, 1, checkpoint_meta={"fn": lambda: 0})


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, 4, callbacks=[CSVLogger(), CheckpointCallback(every_n=2)])
    t.fit()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "epoch_0002.pt", "epoch_0004.pt", "history.csv", "last.pt"]
    # a failing write keeps the previous file and leaves no temporary behind
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"bad": lambda: 0}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- loop options


def test_grad_clipping_bounds_the_gradient_norm(tmp_path: Path) -> None:
    norms: list[float] = []

    class GradNorm(Callback):
        def on_batch_end(self, trainer: Trainer, batch_idx: int, loss: float) -> None:
            grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
            assert trainer.last_grad_norm is not None and trainer.last_grad_norm > 0.01

    t = make_trainer(tmp_path, 2, grad_clip=0.01, callbacks=[GradNorm()])
    t.fit()
    assert len(norms) == 8 and max(norms) <= 0.01 * (1 + 1e-4)


def test_amp_on_cpu_without_bf16_warns_and_runs_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctdl.engine.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "amp_dtype", lambda device: None)  # a CPU without native bfloat16
    with pytest.warns(UserWarning, match="amp=True"):
        t = make_trainer(tmp_path, 1, amp=True)
    assert t.scaler is None and not t.use_amp
    t.fit()
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert "amp_skipped_steps" not in t.history[-1]


needs_bf16 = pytest.mark.skipif(amp_dtype(torch.device("cpu")) is None, reason="this CPU has no native bfloat16")


class NormNet(nn.Module):
    """conv -> batch norm -> head: records the dtypes the conv returns and the norm receives."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        self.seen: set[tuple[str, torch.dtype]] = set()
        self.norm.register_forward_hook(lambda m, a, out: self.seen.add(("norm_in", a[0].dtype)))
        self.conv.register_forward_hook(lambda m, a, out: self.seen.add(("conv_out", out.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def _norm_net_run(run_dir: Path, amp: bool) -> tuple[Trainer, NormNet]:
    torch.manual_seed(0)
    model = NormNet()
    opt = build_optimizer(OptimizerConfig(name="sgd", lr=0.1, momentum=0.9), model.parameters())
    t = Trainer(model, opt, None, nn.functional.cross_entropy, loader_fn(7), val_fn, run_dir, 8, callbacks=[],
                seed=7, amp=amp, progress=False)
    t.fit()
    return t, model


@needs_bf16
def test_amp_bf16_on_cpu_trains_with_float32_norms_and_weights(tmp_path: Path) -> None:
    ref, _ = _norm_net_run(tmp_path / "fp32", amp=False)
    t, model = _norm_net_run(tmp_path / "bf16", amp=True)
    assert t.use_amp and t.amp_dtype == torch.bfloat16 and t.scaler is None
    assert ("conv_out", torch.bfloat16) in model.seen  # the convolution ran in bfloat16 during training ...
    assert ("norm_in", torch.bfloat16) not in model.seen  # ... the norm never received bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    losses = [h["train_loss"] for h in t.history]
    ref_losses = [h["train_loss"] for h in ref.history]
    print("bf16", [round(v, 3) for v in losses], "fp32", [round(v, 3) for v in ref_losses])
    assert losses[-1] < 0.8 * losses[0]  # it learns ...
    assert abs(losses[-1] - ref_losses[-1]) < 0.1 * ref_losses[-1]  # ... as float32 does
    assert [h["amp_skipped_steps"] for h in t.history] == [0] * 8


class NanGradNet(TinyNet):
    """Finite output whose gradient is NaN: d/dp sqrt(p - p) = 0.5 / sqrt(0) * 0."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.sqrt(self.p - self.p)


@needs_bf16
def test_amp_bf16_skips_steps_with_non_finite_gradients(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = NanGradNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(OptimizerConfig(name="sgd", lr=0.1), model.parameters())
    t = Trainer(model, opt, None, nn.functional.cross_entropy, loader_fn(7), None, tmp_path, 1, callbacks=[],
                seed=7, amp=True, monitor="train_loss", monitor_mode="min", progress=False)
    t.fit()
    assert t.history[-1]["amp_skipped_steps"] == N_TRAIN // BATCH  # every step skipped ...
    for k, v in model.state_dict().items():  # ... so nothing moved
        assert torch.equal(v, before[k]), k


def test_channels_last_matches_default_layout(tmp_path: Path) -> None:
    a = make_trainer(tmp_path / "a", 2)
    b = make_trainer(tmp_path / "b", 2, channels_last=True)
    assert b.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    a.model.drop.p = b.model.drop.p = 0.0  # dropout masks follow the memory layout; the arithmetic must not
    a.fit()
    b.fit()
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-5), k


def test_steps_per_epoch_and_val_every(tmp_path: Path) -> None:
    seen: list[int] = []

    class Count(Callback):
        def on_batch_end(self, trainer: Trainer, batch_idx: int, loss: float) -> None:
            seen.append(batch_idx)

    calls = {"n": 0}

    def counting_val(model: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        return val_fn(model)

    t = make_trainer(tmp_path, 5, steps_per_epoch=2, val_every=2, val=counting_val, callbacks=[Count(), CSVLogger()])
    t.fit()
    assert seen == [0, 1] * 5 and t.batches_per_epoch == 2
    assert calls["n"] == 3  # epochs 1, 3 and the last one (4)
    assert ["val_loss" in row for row in t.history] == [False, True, False, True, True]
    rows = csv_rows(tmp_path / "history.csv")
    assert rows[0]["val_loss"] == "" and rows[1]["val_loss"] != ""


def test_missing_monitor_is_an_error(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, 1, monitor="val_dice_mean", monitor_mode="max")
    with pytest.raises(KeyError, match="val_dice_mean"):
        t.fit()


def test_train_loss_monitor_without_validation(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, 3, val=None, monitor="train_loss", schedule="plateau")
    out = t.fit()
    assert out["best_value"] == min(r["train_loss"] for r in t.history)
    assert (tmp_path / "best.pt").exists()


def test_non_finite_loss_raises(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, 1)
    t.loss_fn = lambda out, y: out.sum() * float("nan")
    with pytest.raises(FloatingPointError, match="epoch 0"):
        t.fit()


def test_dict_batches(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, 1)
    pairs = t.train_loader_fn
    t.train_loader_fn = lambda e: [{"image": x, "label": y} for x, y in pairs(e)]
    assert t.fit()["epochs_completed"] == 1


# ----------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_and_restores_best_weights(tmp_path: Path) -> None:
    scripted = [1.0, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]  # best at epoch 1, then worse
    calls = {"n": 0}

    def worsening_val(model: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        return {"loss": scripted[calls["n"] - 1]}

    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snap(Callback):
        def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
            snapshots[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    es = EarlyStopping(patience=2)
    t = make_trainer(tmp_path, 8, val=worsening_val, callbacks=[Snap(), es, CheckpointCallback()])
    out = t.fit()
    assert out["epochs_completed"] == 4 and out["stopped_early"] is True
    assert es.stopped_epoch == 3 and es.best_epoch == 1 and out["best_epoch"] == 1
    assert t.restored_best_epoch == 1
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, snapshots[1][k])
    assert not torch.equal(snapshots[3]["conv.weight"], snapshots[1]["conv.weight"])
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and all(torch.equal(best["model"][k], snapshots[1][k]) for k in snapshots[1])
    last = load_checkpoint(tmp_path / "last.pt")  # last.pt keeps the final (not the restored) weights
    assert torch.equal(last["model"]["conv.weight"], snapshots[3]["conv.weight"])


def test_early_stopping_writes_best_pt_without_checkpoint_callback(tmp_path: Path) -> None:
    es = EarlyStopping(patience=5, min_delta=0.0)
    t = make_trainer(tmp_path, 2, callbacks=[es])
    t.fit()
    assert (tmp_path / "best.pt").exists() and es.best_weights is not None


def test_from_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    opt = build_optimizer(OptimizerConfig(name="sgd", lr=0.05), model.parameters())
    training = TrainingConfig(epochs=2, monitor="val_acc", monitor_mode="max", device="auto", grad_clip=1.0)
    t = Trainer.from_config(training, model=model, optimizer=opt, scheduler=None, loss_fn=nn.functional.cross_entropy,
                            train_loader_fn=loader_fn(), val_fn=val_fn, run_dir=tmp_path, seed=1, progress=False)
    assert (t.epochs, t.monitor, t.monitor_mode, t.grad_clip) == (2, "val_acc", "max", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = t.fit()
    assert out["monitor"] == "val_acc" and (tmp_path / "last.pt").exists()
