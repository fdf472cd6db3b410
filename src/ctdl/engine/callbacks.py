"""Lightning-style training callbacks whose state is saved in (and resumed from) the checkpoint.

Hooks, all no-ops by default: ``setup(trainer)`` (once, when the trainer is built),
``on_train_start(trainer)``, ``on_epoch_start(trainer, epoch)``,
``on_batch_end(trainer, batch_idx, loss)``, ``on_epoch_end(trainer, epoch, logs)``,
``on_train_end(trainer)`` and ``on_interrupt(trainer)`` (after Ctrl-C was checkpointed).
``epoch`` is the 0-based index of the epoch; ``logs`` holds ``epoch``, ``lr`` (used during the
epoch), ``train_loss``, ``val_*`` metrics and ``epoch_time_s``. Callbacks run in list order,
except that checkpoint writers (``order = 100``) run after all others so that the saved state
includes every other callback's update for the epoch. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from ctdl.config.schema import CheckpointConfig, ExperimentConfig, TrainingConfig
from ctdl.io.atomic import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from ctdl.engine.trainer import Trainer


def is_improvement(value: Optional[float], best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    """True when ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode``."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    if mode == "min":
        return value < best - min_delta
    if mode == "max":
        return value > best + min_delta
    raise ValueError(f"monitor mode must be 'min' or 'max', got {mode!r}")


class Callback:
    """Base callback: every hook is a no-op; ``state_dict`` holds what must survive a resume."""

    order: int = 0

    @property
    def state_key(self) -> str:
        """Key of this callback's state in the checkpoint (the trainer de-duplicates repeats)."""
        return type(self).__name__

    def setup(self, trainer: "Trainer") -> None:
        """Called once by the trainer's constructor (bind defaults such as run_dir and monitor)."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """Called at the start of ``fit`` (after a resume has been loaded)."""

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Called before the first batch of an epoch."""

    def on_batch_end(self, trainer: "Trainer", batch_idx: int, loss: float) -> None:
        """Called after each optimizer step with the batch loss."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        """Called after validation and the scheduler step."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """Called when ``fit`` finishes (also after early stopping)."""

    def on_interrupt(self, trainer: "Trainer") -> None:
        """Called after a KeyboardInterrupt has been checkpointed (close files and bars here)."""

    def state_dict(self) -> dict[str, Any]:
        """Plain state to resume from (ints, floats, strings, lists, dicts, tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


class CheckpointCallback(Callback):
    """Writes last.pt every epoch, best.pt when the monitored value improves, epoch_XXXX.pt every N.

    ``epoch_XXXX.pt`` is named by the number of completed epochs (``epoch_0004.pt`` = after 4 epochs).
    """

    order = 100

    def __init__(self, dirpath: str | Path | None = None, monitor: Optional[str] = None,
                 mode: Optional[str] = None, save_last: bool = True, save_best: bool = True,
                 every_n: int = 0) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        self.save_best = save_best
        self.every_n = int(every_n)
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None

    def setup(self, trainer: "Trainer") -> None:
        """Default folder, monitor and mode from the trainer."""
        self.dirpath = self.dirpath or Path(trainer.run_dir)
        self.monitor = self.monitor or trainer.monitor
        self.mode = self.mode or trainer.monitor_mode

    @property
    def best_path(self) -> Path:
        """Where best.pt is written."""
        assert self.dirpath is not None, "CheckpointCallback used before setup()"
        return self.dirpath / "best.pt"

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        """Update the best value, then save the checkpoints due this epoch."""
        assert self.dirpath is not None and self.mode is not None
        value = logs.get(self.monitor) if self.monitor else None
        improved = is_improvement(None if value is None else float(value), self.best, self.mode)
        if improved:
            self.best, self.best_epoch = float(value), int(epoch)
        if self.save_last:
            trainer.save_checkpoint(self.dirpath / "last.pt")
        if self.save_best and improved:
            trainer.save_checkpoint(self.best_path)
        if self.every_n and (epoch + 1) % self.every_n == 0:
            trainer.save_checkpoint(self.dirpath / f"epoch_{epoch + 1:04d}.pt")

    def state_dict(self) -> dict[str, Any]:
        """Best value and epoch."""
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore best value and epoch."""
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without improvement; restores the best weights at the end.

    The best weights are kept in memory (a CPU copy of the state_dict) and in ``best.pt``: written
    by this callback unless a :class:`CheckpointCallback` of the trainer already saves best.pt at
    that path. After a resume the in-memory copy is gone and the weights come from best.pt.
    Restoring happens at the end of ``fit`` whether training stopped early or ran all epochs.
    """

    def __init__(self, monitor: Optional[str] = None, mode: Optional[str] = None, patience: int = 10,
                 min_delta: float = 0.0, restore_best: bool = True, best_path: str | Path | None = None) -> None:
        self.monitor = monitor
        self.mode = mode
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.restore_best = restore_best
        self.best_path = Path(best_path) if best_path is not None else None
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.wait = 0
        self.stopped_epoch: Optional[int] = None
        self.best_weights: Optional[dict[str, torch.Tensor]] = None
        self._writes_best = True

    def setup(self, trainer: "Trainer") -> None:
        """Default monitor, mode and best.pt path from the trainer."""
        self.monitor = self.monitor or trainer.monitor
        self.mode = self.mode or trainer.monitor_mode
        self.best_path = self.best_path or Path(trainer.run_dir) / "best.pt"
        self._writes_best = not any(
            isinstance(cb, CheckpointCallback) and cb.save_best
            and Path(cb.dirpath or trainer.run_dir) / "best.pt" == self.best_path
            for cb in trainer.callbacks
        )

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        """Track the best value and ask the trainer to stop when patience runs out."""
        assert self.mode is not None
        value = logs.get(self.monitor) if self.monitor else None
        if value is None:  # not validated this epoch
            return
        if is_improvement(float(value), self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = float(value), int(epoch), 0
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}
            if self._writes_best and self.best_path is not None:
                trainer.save_checkpoint(self.best_path)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = int(epoch)
                trainer.should_stop = True

    def on_train_end(self, trainer: "Trainer") -> None:
        """Load the best weights back into the model."""
        if not self.restore_best or self.best_epoch is None:
            return
        weights = self.best_weights
        if weights is None and self.best_path is not None and self.best_path.exists():
            from ctdl.engine.trainer import load_checkpoint

            weights = load_checkpoint(self.best_path)["model"]
        if weights is None:
            warnings.warn("EarlyStopping: best weights unavailable (no copy in memory, no best.pt); keeping the last weights")
            return
        trainer.model.load_state_dict(weights)
        trainer.restored_best_epoch = self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        """Best value/epoch, wait counter and stop epoch (the weights live in best.pt)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters; the in-memory weights copy is dropped."""
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = state.get("stopped_epoch")
        self.best_weights = None


class CSVLogger(Callback):
    """history.csv (epoch, lr, train_loss, val_*, epoch_time_s), rewritten atomically each epoch.

    The rows come from the trainer's in-memory history, which is part of the checkpoint, so a
    resumed run has exactly one row per epoch (stale rows of a killed run are dropped).
    """

    FIRST = ("epoch", "lr", "train_loss")
    LAST = ("epoch_time_s",)

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None

    def setup(self, trainer: "Trainer") -> None:
        """Default path run_dir/history.csv."""
        self.path = self.path or Path(trainer.run_dir) / "history.csv"

    def columns(self, history: list[dict[str, Any]]) -> list[str]:
        """epoch, lr, train_loss, then other keys in first-seen order, epoch_time_s last."""
        seen: list[str] = []
        for row in history:
            seen.extend(k for k in row if k not in seen)
        middle = [k for k in seen if k not in self.FIRST and k not in self.LAST]
        return [*self.FIRST, *middle, *self.LAST]

    def write(self, history: list[dict[str, Any]]) -> None:
        """Rewrite the whole file from ``history``."""
        assert self.path is not None
        cols = self.columns(history)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(self.path, buf.getvalue())

    def on_train_start(self, trainer: "Trainer") -> None:
        """On resume, drop rows the checkpoint does not know about."""
        if trainer.history:
            self.write(trainer.history)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        """Rewrite history.csv from the trainer's history."""
        self.write(trainer.history)


_TB_WARNED = False


class TensorBoardLogger(Callback):
    """Scalars per epoch with SummaryWriter; warns once and does nothing if tensorboard is missing."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.writer: Any = None

    def setup(self, trainer: "Trainer") -> None:
        """Default folder run_dir/tensorboard."""
        self.log_dir = self.log_dir or Path(trainer.run_dir) / "tensorboard"

    def on_train_start(self, trainer: "Trainer") -> None:
        """Open the writer; on resume, purge events of epochs that will be run again."""
        global _TB_WARNED
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as exc:  # tensorboard (or one of its deps) missing or broken
            if not _TB_WARNED:
                warnings.warn(f"TensorBoard logging disabled: {exc}")
                _TB_WARNED = True
            self.writer = None
            return
        purge = trainer.start_epoch if trainer.start_epoch > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        """Add every numeric log value as a scalar at step ``epoch``."""
        if self.writer is None:
            return
        for key, value in logs.items():
            if key == "epoch" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            self.writer.add_scalar(key, float(value), global_step=epoch)
        self.writer.flush()

    def on_train_end(self, trainer: "Trainer") -> None:
        """Close the writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    on_interrupt = on_train_end


class ProgressBar(Callback):
    """tqdm bar per epoch with the running loss and ETA; off when stderr is not a TTY or progress=False."""

    def __init__(self, enabled: bool = True, file: Any = None) -> None:
        self.enabled = enabled
        self.file = file
        self.bar: Any = None

    def active(self, trainer: "Trainer") -> bool:
        """Whether bars are shown for this trainer."""
        stream = self.file or sys.stderr
        return bool(self.enabled and trainer.progress and hasattr(stream, "isatty") and stream.isatty())

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Open a bar for the epoch (resumed epochs start at the batches already done)."""
        if not self.active(trainer):
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.batches_per_epoch, desc=f"epoch {epoch + 1}/{trainer.epochs}",
                        unit="batch", file=self.file or sys.stderr, dynamic_ncols=True, leave=True,
                        initial=trainer.batches_done)

    def on_batch_end(self, trainer: "Trainer", batch_idx: int, loss: float) -> None:
        """Advance the bar and show the running loss."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{trainer.running_loss:.4g}", refresh=False)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        """Show the epoch's metrics and close the bar."""
        if self.bar is None:
            return
        shown = {k: f"{v:.4g}" for k, v in logs.items() if k.startswith(("train_", "val_")) and isinstance(v, float)}
        self.bar.set_postfix(shown, refresh=True)
        self.bar.close()
        self.bar = None

    def on_train_end(self, trainer: "Trainer") -> None:
        """Close a bar left open."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_interrupt = on_train_end


def build_callbacks(checkpoint: CheckpointConfig, training: TrainingConfig, run_dir: str | Path | None = None,
                    progress: bool = True) -> list[Callback]:
    """Callbacks from the config: checkpoints, early stopping, CSV, TensorBoard, progress bar."""
    run_dir = Path(run_dir) if run_dir is not None else None
    cbs: list[Callback] = []
    es = training.early_stopping
    if es.enabled:
        cbs.append(EarlyStopping(monitor=training.monitor, mode=training.monitor_mode, patience=es.patience,
                                 min_delta=es.min_delta, restore_best=es.restore_best))
    if checkpoint.csv:
        cbs.append(CSVLogger(run_dir / "history.csv" if run_dir else None))
    if checkpoint.tensorboard:
        cbs.append(TensorBoardLogger(run_dir / "tensorboard" if run_dir else None))
    cbs.append(ProgressBar(enabled=progress))
    if checkpoint.save_last or checkpoint.save_best or checkpoint.every_n:
        cbs.append(CheckpointCallback(run_dir, monitor=training.monitor, mode=training.monitor_mode,
                                      save_last=checkpoint.save_last, save_best=checkpoint.save_best,
                                      every_n=checkpoint.every_n))
    return cbs


def default_callbacks(cfg: ExperimentConfig, run_dir: str | Path | None = None, progress: bool = True) -> list[Callback]:
    """:func:`build_callbacks` for a whole experiment config (run_dir defaults to ``cfg.run_dir``)."""
    return build_callbacks(cfg.checkpoint, cfg.training, run_dir if run_dir is not None else cfg.run_dir, progress)


__all__ = [
    "Callback",
    "CheckpointCallback",
    "EarlyStopping",
    "CSVLogger",
    "TensorBoardLogger",
    "ProgressBar",
    "build_callbacks",
    "default_callbacks",
    "is_improvement",
]
