"""Per-epoch learning-rate schedules with optional linear warm-up.

Epoch convention (torch's): the learning rate used during 0-based epoch ``e`` is the one after
``e`` calls of :meth:`EpochScheduler.step` (one call at the end of every completed epoch). So
multistep ``[3, 5, 7]``, gamma 0.1 from 1e-3 trains epochs 0-2 at 1e-3, epochs 3-4 at 1e-4,
5-6 at 1e-5 and 7+ at 1e-6: a milestone ``m`` takes effect after ``m`` completed epochs,
exactly like :class:`torch.optim.lr_scheduler.MultiStepLR`. Likewise time decay is
``lr0 / (1 + decay * e)``, step decay ``lr0 * gamma ** (e // step_size)`` (DLAE's step decay),
polynomial ``lr0 * (1 - e / epochs) ** power`` and cosine goes from ``lr0`` to ``min_lr`` over
``epochs``.

Warm-up: with ``warmup_epochs = W > 0`` epochs ``0 .. W-1`` train at ``lr0 * (e + 1) / (W + 1)``
and the schedule's own clock starts at epoch ``W`` (``t = e - W``, running over
``epochs - W`` epochs; milestones count from the end of the warm-up). ``min_lr`` is a floor for
every schedule. ``plateau`` is stepped with the monitored value; epochs without one (no
validation) leave it untouched.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    MultiStepLR,
    PolynomialLR,
    ReduceLROnPlateau,
    StepLR,
)

from ctdl.config.schema import ScheduleConfig

SCHEDULES = ("none", "multistep", "step", "exponential", "time_decay", "plateau", "polynomial", "cosine")


class EpochScheduler:
    """Wraps a torch scheduler: warm-up, a min_lr floor and one ``step(metric)`` per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, inner: Any, name: str, warmup_epochs: int = 0,
                 min_lr: float = 0.0) -> None:
        self.optimizer = optimizer
        self.inner = inner
        self.name = name
        self.warmup_epochs = int(warmup_epochs)
        self.min_lr = float(min_lr)
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.epoch = 0  # completed epochs (number of step() calls)
        if self.warmup_epochs > 0:
            self._set_lrs([b * self._warmup_factor(0) for b in self.base_lrs])

    def _warmup_factor(self, epoch: int) -> float:
        """Linear warm-up factor for an epoch inside the warm-up."""
        return (epoch + 1) / (self.warmup_epochs + 1)

    def _set_lrs(self, lrs: list[float]) -> None:
        """Write learning rates into the optimizer's parameter groups."""
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = float(lr)

    @property
    def is_plateau(self) -> bool:
        """True when the schedule reacts to the monitored value."""
        return isinstance(self.inner, ReduceLROnPlateau)

    def set_mode(self, mode: str) -> None:
        """Set the plateau direction ("min"/"max") before the first step; a no-op for other schedules."""
        if mode not in ("min", "max"):
            raise ValueError(f"monitor mode must be 'min' or 'max', got {mode!r}")
        if self.is_plateau and self.inner.mode != mode:
            self.inner.mode = mode
            self.inner._init_is_better(mode=mode, threshold=self.inner.threshold,
                                       threshold_mode=self.inner.threshold_mode)
            self.inner.best = self.inner.mode_worse

    def step(self, epoch_end_metric: Optional[float] = None) -> None:
        """Advance one epoch; ``epoch_end_metric`` is the monitored value (None when not validated)."""
        self.epoch += 1
        if self.epoch < self.warmup_epochs:
            self._set_lrs([b * self._warmup_factor(self.epoch) for b in self.base_lrs])
        elif self.epoch == self.warmup_epochs:  # warm-up done: the schedule starts at lr0
            self._set_lrs(self.base_lrs)
        elif self.inner is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                if self.is_plateau:
                    if epoch_end_metric is not None and math.isfinite(float(epoch_end_metric)):
                        self.inner.step(float(epoch_end_metric))
                else:
                    self.inner.step()
        if self.min_lr > 0:
            self._set_lrs([max(g["lr"], self.min_lr) for g in self.optimizer.param_groups])

    def get_last_lr(self) -> list[float]:
        """Learning rates of the parameter groups for the coming epoch."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Plain state (loadable with ``torch.load(weights_only=True)``)."""
        inner = self.inner.state_dict() if self.inner is not None else None
        if inner is not None and "milestones" in inner:
            inner["milestones"] = {int(k): int(v) for k, v in inner["milestones"].items()}
        return {"name": self.name, "epoch": self.epoch, "base_lrs": list(self.base_lrs),
                "warmup_epochs": self.warmup_epochs, "min_lr": self.min_lr, "inner": inner}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint scheduler is '{state.get('name')}', this run uses '{self.name}'")
        self.epoch = int(state["epoch"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self.warmup_epochs = int(state["warmup_epochs"])
        self.min_lr = float(state["min_lr"])
        inner = state.get("inner")
        if self.inner is not None and inner is not None:
            inner = dict(inner)
            if "milestones" in inner:
                from collections import Counter

                inner["milestones"] = Counter({int(k): int(v) for k, v in inner["milestones"].items()})
            self.inner.load_state_dict(inner)

    def __repr__(self) -> str:
        return f"EpochScheduler({self.name}, epoch={self.epoch}, lr={self.get_last_lr()})"


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int,
                    mode: str = "min") -> EpochScheduler:
    """Build the per-epoch schedule ``cfg.name`` for a run of ``epochs`` epochs (plateau direction ``mode``)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    span = max(1, epochs - cfg.warmup_epochs)
    name = cfg.name
    inner: Any
    if name == "none":
        inner = None
    elif name == "multistep":
        inner = MultiStepLR(optimizer, milestones=sorted(cfg.milestones), gamma=cfg.gamma)
    elif name == "step":
        inner = StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    elif name == "exponential":
        inner = ExponentialLR(optimizer, gamma=cfg.gamma)
    elif name == "time_decay":
        decay = float(cfg.decay)
        inner = LambdaLR(optimizer, lr_lambda=lambda t: 1.0 / (1.0 + decay * t))
    elif name == "plateau":
        if mode not in ("min", "max"):
            raise ValueError(f"monitor mode must be 'min' or 'max', got {mode!r}")
        inner = ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.factor, patience=cfg.patience,
                                  cooldown=cfg.cooldown, min_lr=cfg.min_lr)
    elif name == "polynomial":
        inner = PolynomialLR(optimizer, total_iters=span, power=cfg.power)
    elif name == "cosine":
        inner = CosineAnnealingLR(optimizer, T_max=span, eta_min=cfg.min_lr)
    else:  # pragma: no cover - the config Literal prevents this
        raise ValueError(f"unknown schedule '{name}'; valid names: {', '.join(SCHEDULES)}")
    return EpochScheduler(optimizer, inner, name, warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr)


__all__ = ["EpochScheduler", "SCHEDULES", "build_scheduler"]
