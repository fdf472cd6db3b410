"""The training loop: seeded, resumable to the bit, atomic checkpoints, callbacks.

One epoch: ``model.train()``, iterate ``train_loader_fn(epoch)``, forward, loss, backward,
optional gradient-norm clipping, optimizer step (AMP with a GradScaler on CUDA only), then
``val_fn(model)`` every ``val_every`` epochs (and after the last one), ``scheduler.step(monitored
value)`` and the callbacks' ``on_epoch_end``.

Checkpoint (``torch.save`` of a plain dict, loadable with ``torch.load(weights_only=True)``):
``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (completed epochs), ``position``
(None, or where inside an epoch an interrupted run stopped), ``callbacks`` (each callback's
state), ``rng`` (Python / NumPy / torch / CUDA generator states as lists and tensors),
``epoch_rng`` (RNG at the start of the interrupted epoch, mid-epoch only), ``history``,
``best``, ``seed`` and ``meta`` (whatever the caller passes as ``checkpoint_meta``: config,
class names, preprocessing). Read it back with :func:`load_checkpoint`.

Exact resume: with a loader whose data and order depend only on ``(seed, epoch)`` (see
:func:`epoch_seed`) a run resumed from ``last.pt`` ends with the same weights, bit for bit on
CPU, as an uninterrupted one: the global RNGs (dropout, augmentation) are restored with the rest.
On Ctrl-C the trainer writes ``last.pt`` with the exact position inside the epoch before
re-raising, and resuming from it replays the epoch's remaining batches.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from ctdl.config.schema import TrainingConfig
from ctdl.engine.callbacks import Callback, CheckpointCallback, CSVLogger, ProgressBar, is_improvement
from ctdl.errors import InputError
from ctdl.io.atomic import atomic_path

CHECKPOINT_FORMAT = "ctdl.checkpoint"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- seeding / RNG


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python ``random``, NumPy and torch (all devices); optionally force deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for the data of one epoch, a function of (seed, epoch) only."""
    seq = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, int(epoch)])
    return int(seq.generate_state(1, np.uint64)[0] % (2**63 - 1))


def _cuda_rng_active() -> bool:
    """True when CUDA is in use in this process (its generators are worth saving)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def capture_rng() -> dict[str, Any]:
    """The current global RNG states (native types)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if _cuda_rng_active() else None,
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global RNGs from :func:`capture_rng` output (or :func:`rng_from_plain`)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"checkpoint has {len(cuda)} CUDA RNG states, this machine {torch.cuda.device_count()} devices; CUDA RNG not restored")


def rng_to_plain(state: Mapping[str, Any]) -> dict[str, Any]:
    """RNG states as ints, lists and tensors only (``weights_only=True``-loadable)."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": gauss},
        "numpy": {"name": str(name), "keys": [int(x) for x in np.asarray(keys).tolist()], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": state["torch"].clone(),
        "cuda": [t.clone() for t in state["cuda"]] if state.get("cuda") else None,
    }


def rng_from_plain(plain: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`rng_to_plain`: tuples for ``random.setstate`` / ``np.random.set_state``."""
    py, npy = plain["python"], plain["numpy"]
    return {
        "python": (int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"]),
        "numpy": (npy["name"], np.asarray(npy["keys"], dtype=np.uint32), int(npy["pos"]),
                  int(npy["has_gauss"]), float(npy["cached_gaussian"])),
        "torch": plain["torch"].to(torch.uint8).cpu(),
        "cuda": [t.to(torch.uint8).cpu() for t in plain["cuda"]] if plain.get("cuda") else None,
    }


# --------------------------------------------------------------------------- checkpoint IO


def to_plain(obj: Any, where: str = "meta") -> Any:
    """Convert ``obj`` to types ``torch.load(weights_only=True)`` accepts (paths to str, arrays to lists)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic model
        return to_plain(obj.model_dump(mode="json"), where)
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, (int, str)) else k: to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (list, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise TypeError(f"checkpoint {where}: cannot store a {type(obj).__name__} (use plain values, lists, dicts)")


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` a checkpoint dict atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; RNG states come back as native tuples.

    A bare ``state_dict`` file is returned as ``{"model": state_dict, "meta": {}}``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot load checkpoint {path} (weights_only=True): {exc}") from exc
    if not isinstance(ckpt, dict):
        raise InputError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    if "format" not in ckpt and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"model": ckpt, "meta": {}}
    for key in ("rng", "epoch_rng"):
        if ckpt.get(key) is not None:
            ckpt[key] = rng_from_plain(ckpt[key])
    return ckpt


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as given."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype mixed precision uses on ``device``, or None where it would not pay.

    CUDA: float16. CPU: bfloat16 when oneDNN reports native bfloat16 (AVX512-BF16 or AMX); without it
    bfloat16 is emulated and slower than float32. Measured on this project's 2-core AMD EPYC (AVX512-BF16):
    the demo's unet3d_small step (batch 4 x 24 x 64 x 64) took 199-210 ms in float32, 0.74-0.80 x that with
    bfloat16 and 0.60-0.70 x with bfloat16 and channels-last (two runs of ``python bench/train_step_precision.py``).
    """
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        mkldnn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return torch.bfloat16 if mkldnn is not None and bool(mkldnn()) else None
        except RuntimeError:
            return None
    return None


_NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def _float_inputs(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _norms_in_float32(model: torch.nn.Module) -> None:
    """Run every normalization layer on float32 inputs under CPU bfloat16 autocast.

    CPU autocast leaves batch/instance/group/layer norms in their input's dtype, so after a bfloat16
    convolution they would compute mean and variance with 8 mantissa bits; the demo's coarse localiser
    (instance norm over a 2 x 6 x 6 bottleneck) then produced a NaN loss within 5 batches. A forward
    pre-hook (it survives deepcopy and leaves the state dict alone) casts their inputs to float32.
    """
    for m in model.modules():
        if isinstance(m, _NORMS) and not getattr(m, "_ctdl_float32_norm", False):
            m.register_forward_pre_hook(_float_inputs)
            m._ctdl_float32_norm = True


def _grads_finite(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def _model_memory_format(model: torch.nn.Module) -> torch.memory_format:
    """channels_last_3d for models with 3D convolutions, channels_last otherwise."""
    has3d = any(isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) for m in model.modules())
    return torch.channels_last_3d if has3d else torch.channels_last


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor inside nested tuples/lists/dicts; everything else unchanged."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _channels_last_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _channels_last(obj: Any) -> Any:
    """4D/5D tensors (also inside tuples/lists/dicts) in channels-last layout; others unchanged."""
    return _map_tensors(obj, _channels_last_tensor)


def _float32(obj: Any) -> Any:
    """Floating tensors (also inside tuples/lists/dicts) as float32; others unchanged."""
    return _map_tensors(obj, lambda t: t.float() if t.is_floating_point() else t)


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside nested tuples/lists/dicts to ``device``."""
    return _map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def _split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a pair or a MONAI-style dict with image/label keys."""
    if isinstance(batch, Mapping):
        return batch["image"], batch["label"]
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"a training batch must be (inputs, targets) or a dict with image/label, got {type(batch).__name__}")


def _as_float(value: Any, key: str) -> float:
    """A metric value as a Python float."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"val_fn returned a non-numeric value for '{key}': {value!r}") from exc


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Fits a model for ``epochs`` epochs with callbacks, exact resume and atomic checkpoints."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        train_loader_fn: Callable[[int], Iterable[Any]],
        val_fn: Optional[Callable[[torch.nn.Module], Mapping[str, Any]]],
        run_dir: str | Path,
        epochs: int,
        callbacks: Optional[Sequence[Callback]] = None,
        device: str | torch.device = "cpu",
        grad_clip: Optional[float] = None,
        amp: bool = False,
        channels_last: bool = False,
        monitor: str = "val_loss",
        monitor_mode: str = "min",
        seed: int = 0,
        steps_per_epoch: Optional[int] = None,
        val_every: int = 1,
        progress: bool = True,
        deterministic: bool = True,
        checkpoint_meta: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode must be 'min' or 'max', got {monitor_mode!r}")
        if val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {val_every}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {steps_per_epoch}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.train_loader_fn = train_loader_fn
        self.val_fn = val_fn
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.epochs = int(epochs)
        self.grad_clip = grad_clip
        self.monitor = monitor
        self.monitor_mode = monitor_mode
        self.seed = int(seed)
        self.steps_per_epoch = steps_per_epoch
        self.val_every = int(val_every)
        self.progress = progress
        self.deterministic = deterministic
        self.checkpoint_meta = to_plain(dict(checkpoint_meta or {}))
        self.amp_dtype = amp_dtype(self.device) if amp else None
        self.use_amp = self.amp_dtype is not None
        if amp and not self.use_amp:
            warnings.warn(f"amp=True needs a CUDA device or a CPU with native bfloat16; training in float32 on {self.device}")
        # loss scaling only for float16 (bfloat16 has float32's exponent range)
        self.scaler: Optional[torch.amp.GradScaler] = (torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16
                                                       else None)
        self.amp_skipped_steps = 0  # bfloat16 steps skipped for a non-finite gradient
        if self.amp_dtype == torch.bfloat16:
            _norms_in_float32(self.model)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=_model_memory_format(self.model))
        if scheduler is not None and hasattr(scheduler, "set_mode"):
            scheduler.set_mode(monitor_mode)

        cbs = list(callbacks) if callbacks is not None else [CSVLogger(), CheckpointCallback()]
        if progress and not any(isinstance(cb, ProgressBar) for cb in cbs):
            cbs.append(ProgressBar())
        self.callbacks: list[Callback] = sorted(cbs, key=lambda cb: getattr(cb, "order", 0))
        self._callback_keys = self._unique_keys(self.callbacks)
        for cb in self.callbacks:
            cb.setup(self)

        # progress of the run
        self.epoch = 0  # completed epochs
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.should_stop = False
        self.restored_best_epoch: Optional[int] = None
        self.last_grad_norm: Optional[float] = None
        # position inside the current epoch
        self.batches_done = 0
        self.batches_per_epoch: Optional[int] = None
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_t0 = 0.0
        self._phase = "idle"  # idle | train | end
        self._epoch_rng: Optional[dict[str, Any]] = None
        self._batch_rng: Optional[dict[str, Any]] = None
        self._batch_rng_pos = 0
        self._end_snapshot: Optional[dict[str, Any]] = None

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_config(
        cls,
        training: TrainingConfig,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        train_loader_fn: Callable[[int], Iterable[Any]],
        val_fn: Optional[Callable[[torch.nn.Module], Mapping[str, Any]]],
        run_dir: str | Path,
        seed: int = 0,
        callbacks: Optional[Sequence[Callback]] = None,
        progress: bool = True,
        checkpoint_meta: Optional[Mapping[str, Any]] = None,
    ) -> "Trainer":
        """A trainer with the loop options of a :class:`TrainingConfig` (device "auto" resolved)."""
        if training.threads:
            torch.set_num_threads(training.threads)
        return cls(model, optimizer, scheduler, loss_fn, train_loader_fn, val_fn, run_dir, training.epochs,
                   callbacks=callbacks, device=resolve_device(training.device), grad_clip=training.grad_clip,
                   amp=training.amp, channels_last=training.channels_last, monitor=training.monitor, monitor_mode=training.monitor_mode, seed=seed,
                   steps_per_epoch=training.steps_per_epoch, val_every=training.val_every, progress=progress,
                   deterministic=training.deterministic, checkpoint_meta=checkpoint_meta)

    @staticmethod
    def _unique_keys(callbacks: Sequence[Callback]) -> list[str]:
        """State keys with ``#n`` appended to repeats."""
        seen: dict[str, int] = {}
        keys = []
        for cb in callbacks:
            key = cb.state_key
            n = seen.get(key, 0)
            seen[key] = n + 1
            keys.append(key if n == 0 else f"{key}#{n}")
        return keys

    # ---------------------------------------------------------------- state

    @property
    def lr(self) -> float:
        """Learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def running_loss(self) -> float:
        """Mean training loss of the current epoch so far."""
        return self._loss_sum / self._loss_count if self._loss_count else float("nan")

    def _base_state(self) -> dict[str, Any]:
        """Everything but RNG and position, as references (model/optimizer) and copies (the rest)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()) if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "position": None,
            "callbacks": {k: copy.deepcopy(cb.state_dict()) for k, cb in zip(self._callback_keys, self.callbacks)},
            "history": copy.deepcopy(self.history),
            "best": {"monitor": self.monitor, "mode": self.monitor_mode, "value": self.best_value,
                     "epoch": self.best_epoch},
            "seed": self.seed,
            "meta": self.checkpoint_meta,
        }

    def checkpoint_state(self) -> dict[str, Any]:
        """The full checkpoint dict at an epoch boundary (what last.pt holds)."""
        state = self._base_state()
        state["rng"] = rng_to_plain(capture_rng())
        state["epoch_rng"] = None
        return state

    def _position_state(self, phase: str, rng: dict[str, Any]) -> dict[str, Any]:
        """Checkpoint dict for a position inside the current epoch."""
        state = self._base_state()
        state["position"] = {"phase": phase, "batch": self.batches_done, "loss_sum": self._loss_sum,
                             "loss_count": self._loss_count, "time_s": time.perf_counter() - self._epoch_t0}
        state["rng"] = rng_to_plain(rng)
        state["epoch_rng"] = rng_to_plain(self._epoch_rng or rng)
        return state

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the current (epoch-boundary) checkpoint atomically."""
        return save_checkpoint(self.checkpoint_state(), path)

    def _load_state(self, ckpt: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """Restore everything from a loaded checkpoint; returns its in-epoch position (or None)."""
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        states = ckpt.get("callbacks") or {}
        for key, cb in zip(self._callback_keys, self.callbacks):
            if key in states:
                cb.load_state_dict(states[key])
        self.epoch = int(ckpt.get("epoch", 0))
        self.history = [dict(row) for row in ckpt.get("history") or []]
        best = ckpt.get("best") or {}
        if best.get("monitor") == self.monitor and best.get("mode") == self.monitor_mode:
            self.best_value, self.best_epoch = best.get("value"), best.get("epoch")
        if ckpt.get("rng") is not None:
            restore_rng(ckpt["rng"])
        position = ckpt.get("position")
        if position is not None:
            position = dict(position)
            position["epoch_rng"] = ckpt.get("epoch_rng") or ckpt["rng"]
            position["rng"] = ckpt["rng"]
        return position

    # ---------------------------------------------------------------- loop

    def fit(self, resume_from: str | Path | None = None) -> dict[str, Any]:
        """Train (or resume) to ``epochs`` epochs; returns the last logs plus best value/epoch."""
        seed_everything(self.seed, self.deterministic)
        position = None
        if resume_from is not None:
            position = self._load_state(load_checkpoint(resume_from, map_location="cpu"))
            if self.epoch >= self.epochs:
                warnings.warn(f"checkpoint {resume_from} already has {self.epoch} epochs (epochs={self.epochs}); nothing to train")
        self.start_epoch = self.epoch
        self.should_stop = False
        self.restored_best_epoch = None
        if self.val_fn is None and self.monitor.startswith("val_"):
            warnings.warn(f"monitor '{self.monitor}' needs a val_fn; best checkpoint, plateau and early stopping are inactive")
        for cb in self.callbacks:
            cb.on_train_start(self)
        logs: dict[str, Any] = dict(self.history[-1]) if self.history else {}
        try:
            while self.epoch < self.epochs and not self.should_stop:
                logs = self._run_epoch(self.epoch, position)
                position = None
        except KeyboardInterrupt:
            path = self._save_interrupted()
            warnings.warn(f"training interrupted; state saved to {path} (resume with fit(resume_from=...))")
            for cb in self.callbacks:
                with contextlib.suppress(Exception):
                    cb.on_interrupt(self)
            raise
        for cb in self.callbacks:
            cb.on_train_end(self)
        return {
            **logs,
            "monitor": self.monitor,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "epochs_completed": self.epoch,
            "stopped_early": bool(self.should_stop and self.epoch < self.epochs),
        }

    def _save_interrupted(self) -> Path:
        """Write last.pt for the exact point where a KeyboardInterrupt arrived."""
        if self._phase == "train" and self._batch_rng is not None:
            # the snapshot is taken before fetching batch `_batch_rng_pos`; after a finished step
            # (interrupt in on_batch_end) the current RNG is the state before the next fetch
            rng = self._batch_rng if self._batch_rng_pos == self.batches_done else capture_rng()
            state = self._position_state("train", rng)
        elif self._phase == "end" and self._end_snapshot is not None:
            state = self._end_snapshot
        else:
            state = self.checkpoint_state()
        return save_checkpoint(state, self.run_dir / "last.pt")

    def _run_epoch(self, epoch: int, position: Optional[dict[str, Any]]) -> dict[str, Any]:
        """One epoch: train, validate, schedule, callbacks; returns its logs."""
        self._batch_rng = None
        self._phase = "train"
        self._end_snapshot = None
        if position is not None:
            restore_rng(position["epoch_rng"])
            self._epoch_rng = position["epoch_rng"]
            self._batch_rng = position["rng"]
            self.batches_done = int(position["batch"])
            self._loss_sum, self._loss_count = float(position["loss_sum"]), int(position["loss_count"])
            self._epoch_t0 = time.perf_counter() - float(position.get("time_s", 0.0))
        else:
            self._epoch_rng = capture_rng()
            self._batch_rng = self._epoch_rng
            self.batches_done, self._loss_sum, self._loss_count = 0, 0.0, 0
            self._epoch_t0 = time.perf_counter()
        self._batch_rng_pos = self.batches_done
        lr = self.lr
        self.model.train()
        train_done = position is not None and position.get("phase") == "end"
        loader = None if train_done else self.train_loader_fn(epoch)
        self.batches_per_epoch = self._count_batches(loader)
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)
        if loader is None:
            restore_rng(position["rng"])  # type: ignore[index]
        else:
            self._train_batches(loader, epoch, skip=self.batches_done if position is not None else 0,
                                resume_rng=position["rng"] if position is not None else None)
        return self._end_epoch(epoch, lr)

    def _count_batches(self, loader: Optional[Iterable[Any]]) -> Optional[int]:
        """Batches this epoch will have (None when the loader has no length and no cap is set)."""
        total: Optional[int]
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            total = None
        if self.steps_per_epoch is not None:
            total = self.steps_per_epoch if total is None else min(total, self.steps_per_epoch)
        return total

    def _train_batches(self, loader: Iterable[Any], epoch: int, skip: int,
                       resume_rng: Optional[dict[str, Any]]) -> None:
        """Iterate the epoch's batches (skipping ``skip`` already done after a mid-epoch resume)."""
        it = iter(loader)
        for _ in range(skip):
            next(it, None)
        if resume_rng is not None:
            restore_rng(resume_rng)
        self._batch_rng_pos = self.batches_done
        while self.steps_per_epoch is None or self.batches_done < self.steps_per_epoch:
            self._batch_rng, self._batch_rng_pos = capture_rng(), self.batches_done
            try:
                batch = next(it)
            except StopIteration:
                break
            loss = self._train_step(batch, epoch)
            self.batches_done += 1
            self._loss_sum += loss
            self._loss_count += 1
            for cb in self.callbacks:
                cb.on_batch_end(self, self.batches_done - 1, loss)
        if self._loss_count == 0:
            warnings.warn(f"epoch {epoch}: the training loader yielded no batches")

    def _train_step(self, batch: Any, epoch: int) -> float:
        """Forward, loss, backward, clip, step for one batch; returns the loss."""
        inputs, targets = _split_batch(batch)
        inputs, targets = _to_device(inputs, self.device), _to_device(targets, self.device)
        if self.channels_last:
            inputs = _channels_last(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float16, enabled=self.use_amp):
            outputs = self.model(inputs)
            if self.use_amp:  # the loss in float32: softmax/log of half-precision logits loses the small classes
                outputs = _float32(outputs)
            loss = self.loss_fn(outputs, targets)
            penalty = getattr(self.model, "regularization_penalty", None)
            if callable(penalty):  # models with weight/activity regularisers (DLAE layer lists) add theirs
                loss = loss + penalty()
        value = float(loss.detach().float().item())
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite training loss {value} at epoch {epoch}, batch {self.batches_done}")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.amp_dtype == torch.bfloat16 and not _grads_finite(self.model):
                # oneDNN's bfloat16 conv3d weight gradient is now and then non-finite on tiny feature maps (the
                # coarse localiser's 2 x 6 x 6 bottleneck: 1-2 of 40 steps; the float32 gradient of the same batch
                # is finite). Skip that step, as torch.amp.GradScaler does for float16 overflows.
                self.amp_skipped_steps += 1
                self.optimizer.zero_grad(set_to_none=True)
                return value
            if self.grad_clip is not None:
                self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
            self.optimizer.step()
        return value

    def _validate(self) -> dict[str, float]:
        """Run ``val_fn`` in eval mode without gradients; keys prefixed with ``val_``."""
        assert self.val_fn is not None
        self.model.eval()
        with torch.no_grad():
            metrics = self.val_fn(self.model)
        self.model.train()
        return {(k if str(k).startswith("val_") else f"val_{k}"): _as_float(v, str(k)) for k, v in (metrics or {}).items()}

    def _end_epoch(self, epoch: int, lr: float) -> dict[str, Any]:
        """Validation, best tracking, scheduler step, history and callbacks."""
        self._end_snapshot = self._position_state("end", capture_rng())
        self._phase = "end"
        logs: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": self.running_loss}
        if self.amp_dtype == torch.bfloat16:
            logs["amp_skipped_steps"] = self.amp_skipped_steps  # in this epoch
            self.amp_skipped_steps = 0
        validate = self.val_fn is not None and ((epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs)
        if validate:
            logs.update(self._validate())
            if self.monitor.startswith("val_") and self.monitor not in logs:
                raise KeyError(f"monitor '{self.monitor}' is not among the validation logs: {', '.join(sorted(logs))}")
        value = logs.get(self.monitor)
        value = None if value is None else float(value)
        if is_improvement(value, self.best_value, self.monitor_mode):
            self.best_value, self.best_epoch = value, epoch
        if self.scheduler is not None:
            self.scheduler.step(value)
        logs["epoch_time_s"] = time.perf_counter() - self._epoch_t0
        self.history.append(dict(logs))
        self.epoch = epoch + 1
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, logs)
        self._phase = "idle"
        self._end_snapshot = None
        return logs


__all__ = [
    "Trainer",
    "capture_rng",
    "epoch_seed",
    "load_checkpoint",
    "resolve_device",
    "restore_rng",
    "rng_from_plain",
    "rng_to_plain",
    "save_checkpoint",
    "seed_everything",
    "to_plain",
]
