"""GAN task: image-to-image translation of CT volumes with pix2pix or CycleGAN, 2D (slices) and 3D (patches).

pix2pix (Isola et al. 2017): generator G: source -> target and a PatchGAN D that sees (source, image) pairs.
Per batch: D step on ``adv(D(x, y), real) + adv(D(x, G(x)), fake)`` (halved), then G step on
``adv(D(x, G(x)), real) + lambda_l1 * |G(x) - y|``.

CycleGAN (Zhu et al. 2017): G_xy: source -> target, G_yx: target -> source, D_x and D_y unconditioned. Per batch:
one G step for both generators on ``adv(D_y(G_xy x), real) + adv(D_x(G_yx y), real) + lambda_cycle * (|G_yx G_xy x - x|
+ |G_xy G_yx y - y|) + lambda_identity * (|G_xy y - y| + |G_yx x - x|)``, then D_x and D_y steps on real vs fakes drawn
from a history pool (each halved).

Why a small loop here and not :class:`ctdl.engine.trainer.Trainer`: that trainer owns one model, one optimizer and
one loss; a GAN alternates several. This loop keeps the same guarantees: seeded; an epoch's data depends only on
(seed, epoch); every network, optimizer, scheduler, the global RNGs and the history pool (images and its own RNG)
are checkpointed atomically every epoch (``last.pt``), so a run resumed from it ends with the same weights, bit for
bit on CPU, as one left to run; ``history.csv`` holds each loss averaged over all samples of the epoch (not the last
batch, DLAE bug 21); TensorBoard scalars; a tqdm bar; a preview PNG per epoch. Fixed DLAE GAN bugs: short last
batches work (targets are ``ones_like`` the D map), the optimizer *type* of each network is used (bug 10), the
reported identity loss is the sum of both identity terms, least squares and BCE are both available (bug 27).

Intensities (:class:`IntensityMap`): the generators end in tanh, so sources and targets are mapped to [-1, 1] and
generated images back. With ``preprocessing.hu_window`` set, both are clipped to that HU window (CT). Without one
(DLAE configs import with ``hu_window: null``; HDF5 pairs are not necessarily HU) the range comes from the data:

* ``samplewise_*`` normalization (DLAE's per-sample min/max): every source by its own min/max; targets by their own
  min/max for ``*_xy``, else by the training targets' min/max (DLAE left y alone for ``*_x``, which a tanh cannot
  reach);
* ``global_*``: sources by ``preprocessing.intensity_range``, targets by ``label_range`` for ``*_xy``; a range not
  given, and the targets of ``*_x``, use the training data's min/max;
* anything else (``none``, ``zscore``...): the min/max over all training sources, and over all training targets.

``unity`` and ``negpos`` kinds map alike: to [-1, 1], the tanh's range (a unity target in [0, 1] would leave half
the output unused). The data ranges are computed once from the training split, written to the checkpoint meta
(``meta.intensity``) and used by ``ctdl predict``; generated images are mapped back with the target range (the
training targets' min/max when targets were scaled per sample: a new input's target is unknown). Values outside a
range are clipped to it; a constant sample (min = max) maps to -1. HDF5 pairs: without validation / test files the
validation (and test) samples are DLAE's seeded split of the training file, and 2D samples train whole, as DLAE did
(``sampling.patch_size`` applies to 3D patches and to other data formats).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ctdl.config.load import config_from_dict, config_to_dict, save_config
from ctdl.config.schema import ExperimentConfig, GanNetConfig
from ctdl.data.paired import PairCase, PairSampler, from_unit, gan_cases, hu_window, to_unit, unpaired_halves
from ctdl.errors import ConfigError, InputError
from ctdl.io import Volume, read_volume, write_volume
from ctdl.io.atomic import atomic_path, atomic_write_text

log = logging.getLogger("ctdl")

CHECKPOINT_FORMAT = "ctdl.gan_checkpoint"


# -- intensities ----------------------------------------------------------------------------------------------------
UNIT_WINDOW = (-1.0, 1.0)  # arrays already in the generator's range pass PairSampler's window mapping unchanged


@dataclass(frozen=True)
class IntensityMap:
    """Source/target intensities <-> the generator's [-1, 1] (see the module docstring for how it is chosen).

    ``source`` / ``target``: the (min, max) each domain is mapped with (the HU window for ``origin`` 'hu_window');
    ``per_sample``: (source, target) scaled by each array's own min/max instead (the stored range then only
    serves to map generated images back and to score them).
    """

    source: tuple[float, float]
    target: tuple[float, float]
    origin: str = "hu_window"  # hu_window | a normalization kind | data
    per_sample: tuple[bool, bool] = (False, False)

    @property
    def is_window(self) -> bool:
        return self.origin == "hu_window"

    def range(self, role: str) -> tuple[float, float]:
        if role not in ("source", "target"):
            raise ValueError(f"role must be 'source' or 'target', got {role!r}")
        return self.source if role == "source" else self.target

    def to_unit(self, arr: np.ndarray, role: str = "source") -> np.ndarray:
        """An array of ``role``'s domain in [-1, 1]: min -> -1, max -> +1 exactly (float32)."""
        lo, hi = self.range(role)
        if self.is_window:
            return to_unit(arr, (lo, hi))
        a = np.asarray(arr, np.float64)
        if self.per_sample[0 if role == "source" else 1] and a.size:
            lo, hi = float(a.min()), float(a.max())
        if not hi > lo:
            return np.full(a.shape, -1.0, np.float32)
        return ((np.clip(a, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)

    def from_unit(self, z: np.ndarray, role: str = "target") -> np.ndarray:
        """Inverse of :meth:`to_unit` with ``role``'s stored range: -1 -> min, +1 -> max exactly (float32)."""
        lo, hi = self.range(role)
        if self.is_window:
            return from_unit(z, (lo, hi))
        t = (np.clip(np.asarray(z, np.float64), -1.0, 1.0) + 1.0) / 2.0
        return (lo * (1.0 - t) + hi * t).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"source": list(self.source), "target": list(self.target), "origin": self.origin,
                "per_sample": list(self.per_sample)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IntensityMap":
        return cls(tuple(float(v) for v in d["source"]), tuple(float(v) for v in d["target"]),  # type: ignore[arg-type]
                   str(d.get("origin", "data")), tuple(bool(v) for v in d.get("per_sample", (False, False))))  # type: ignore[arg-type]


def _data_range(arrays: Iterable[Optional[np.ndarray]], what: str) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for a in arrays:
        if a is None or not np.size(a):
            continue
        a = np.asarray(a)
        if not np.all(np.isfinite(a)):
            raise InputError(f"{what}: the training data hold NaN or infinite values; cannot derive an intensity range")
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if not math.isfinite(lo):
        raise InputError(f"{what}: no training data to derive an intensity range from")
    return lo, hi


def intensity_map(cfg: ExperimentConfig, train_cases: Sequence[PairCase]) -> IntensityMap:
    """The intensity mapping of a run: the HU window when set, else derived from the config's normalization and
    the training cases' sources and targets (module docstring)."""
    p = cfg.preprocessing
    if p.hu_window is not None:
        return window_intensity(cfg)
    src = _data_range((c.source.array for c in train_cases), "data.train_x (GAN sources)")
    targets = [c.target.array for c in train_cases if c.target is not None]
    tgt = _data_range(targets, "data.train_y (GAN targets)") if targets else src
    kind = p.normalization
    if kind.startswith("samplewise"):
        return IntensityMap(src, tgt, kind, (True, kind.endswith("_xy")))
    if kind.startswith("global"):
        s_rng = tuple(float(v) for v in p.intensity_range) if p.intensity_range is not None else src
        t_rng = tuple(float(v) for v in p.label_range) if kind.endswith("_xy") and p.label_range is not None else tgt
        return IntensityMap(s_rng, t_rng, kind)  # type: ignore[arg-type]
    return IntensityMap(src, tgt, "data")


def window_intensity(cfg: ExperimentConfig) -> IntensityMap:
    """The HU-window mapping of a config (checkpoints written before ``meta.intensity`` existed)."""
    w = hu_window(cfg)
    return IntensityMap(w, w, "hu_window")


def _hdf5_split(cfg: ExperimentConfig, parts: dict[str, list[PairCase]]) -> dict[str, list[PairCase]]:
    """DLAE's seeded validation (and test) split of the training file when no such files are given
    (:func:`ctdl.data.hdf5_dataset.hdf5_split_ids`); ``data.split.train_cases`` lists win."""
    from ctdl.data.hdf5_dataset import hdf5_split_ids
    from ctdl.data.splits import listed_split

    by_id = {c.case_id: c for v in parts.values() for c in v}
    split = listed_split(cfg.data.split, by_id, hint=" (HDF5 samples are train_00000, ...)")
    if split is None:
        split = hdf5_split_ids(cfg, {k: [c.case_id for c in v] for k, v in parts.items()})
    return {k: [by_id[i] for i in split.get(k, [])] for k in ("train", "val", "test")}


def _unit_cases(cases: Sequence[PairCase], imap: IntensityMap) -> list[PairCase]:
    """Cases with source and target already in [-1, 1] (for PairSampler with :data:`UNIT_WINDOW`)."""
    out = []
    for c in cases:
        src = c.source.with_array(imap.to_unit(c.source.array, "source"))
        tgt = c.target.with_array(imap.to_unit(c.target.array, "target")) if c.target is not None else None
        out.append(PairCase(c.case_id, src, tgt, c.label, dict(c.meta)))
    return out


# -- networks -------------------------------------------------------------------------------------------------------
def task_dims(cfg: ExperimentConfig) -> int:
    """2 for ``sampling.mode: slices2d``, 3 for ``patch3d``."""
    if cfg.sampling.mode == "slices2d":
        return 2
    if cfg.sampling.mode == "patch3d":
        return 3
    raise ConfigError(f"sampling.mode '{cfg.sampling.mode}': the GAN task trains on slices2d (2D) or patch3d (3D)")


def _build_net(net: GanNetConfig, in_channels: int, out_channels: Optional[int], dims: int, what: str) -> nn.Module:
    """A registered GAN network, or a DLAE layer list through :mod:`ctdl.models.layerlist` when it is available."""
    if net.layers:
        try:
            from ctdl.models import layerlist  # type: ignore[attr-defined]
        except ImportError as exc:
            raise ConfigError(f"gan.{what}.layers: DLAE layer lists need ctdl.models.layerlist, which this build lacks") from exc
        return LayerListAdapter(layerlist.build_layer_list(list(net.layers), dims=dims, in_channels=in_channels), dims)
    from ctdl.models import create_model, model_info

    info = model_info(net.name)
    if info.get("task") != "gan":
        raise ConfigError(f"gan.{what}.name: '{net.name}' is a {info.get('task')} model; GAN networks: "
                          f"{', '.join(n for n in _gan_names())}")
    if info.get("dims") != dims:
        raise ConfigError(f"gan.{what}.name: '{net.name}' is {info.get('dims')}D but sampling.mode gives {dims}D data")
    params = dict(net.params)
    params.setdefault("in_channels", in_channels)
    if out_channels is not None:
        params.setdefault("out_channels", out_channels)
    return create_model(net.name, **params)


class LayerListAdapter(nn.Module):
    """A DLAE layer-list network in ctdl's layout: layer lists take 3D input as (C, rows, cols, slices), ctdl
    volumes are (C, D, H, W), so 3D tensors are permuted on the way in and out (also used by the classification
    task for 3D layer lists). The list's L1/L2 penalties stay visible to the trainer."""

    def __init__(self, net: nn.Module, dims: int) -> None:
        super().__init__()
        self.net, self.dims = net, dims
        self.divisible_by = int(getattr(net, "divisible_by", 1) or 1)

    def regularization_penalty(self) -> torch.Tensor:
        penalty = getattr(self.net, "regularization_penalty", None)
        return penalty() if callable(penalty) else torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:
            x = x.permute(0, 1, 3, 4, 2)
        y = self.net(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        return y.permute(0, 1, 4, 2, 3) if self.dims == 3 and y.dim() == 5 else y


def _gan_names() -> list[str]:
    from ctdl.models import MODELS, list_models

    return [n for n in list_models() if MODELS.meta(n).get("task") == "gan"]


def build_networks(cfg: ExperimentConfig) -> dict[str, nn.Module]:
    """pix2pix: ``G``, ``D``; CycleGAN: ``G_xy``, ``G_yx``, ``D_x``, ``D_y`` (single-channel CT)."""
    dims = task_dims(cfg)
    g = cfg.gan
    if g.mode == "pix2pix":
        return {"G": _build_net(g.generator, 1, 1, dims, "generator"),
                "D": _build_net(g.discriminator, 2, None, dims, "discriminator")}
    return {"G_xy": _build_net(g.generator, 1, 1, dims, "generator"),
            "G_yx": _build_net(g.generator, 1, 1, dims, "generator"),
            "D_x": _build_net(g.discriminator, 1, None, dims, "discriminator"),
            "D_y": _build_net(g.discriminator, 1, None, dims, "discriminator")}


def generator_divisor(model: nn.Module) -> int:
    return int(getattr(model, "divisible_by", 1) or 1)


def _f(t: torch.Tensor) -> float:
    return float(t.detach())


# -- history pool ---------------------------------------------------------------------------------------------------
class ImagePool:
    """CycleGAN's history of generated images (Shrivastava et al. 2017): D sees a mix of current and older fakes.

    Until full, every image is stored and returned; then each image is, with probability 1/2, swapped for a random
    stored one. Draws come from the pool's own generator, whose state is checkpointed with the images.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(int(seed))

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif float(torch.rand(1, generator=self.gen)) < 0.5:
                k = int(torch.randint(len(self.images), (1,), generator=self.gen))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "images": [t.cpu() for t in self.images], "rng": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        self.size = int(state["size"])
        self.images = [t.to(device) for t in state["images"]]
        self.gen.set_state(state["rng"])


# -- the loop -------------------------------------------------------------------------------------------------------
class GanTrainer:
    """Trains the networks of a GAN config for ``training.epochs`` epochs (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, nets: dict[str, nn.Module], sampler: PairSampler, run_dir: str | Path,
                 device: str | torch.device = "cpu", progress: bool = True, preview: Optional[PairCase] = None,
                 val_fn: Any = None, meta: Optional[Mapping[str, Any]] = None,
                 intensity: Optional[IntensityMap] = None) -> None:
        from ctdl.engine.optimizers import build_optimizer
        from ctdl.engine.schedules import build_scheduler
        from ctdl.engine.trainer import resolve_device, to_plain
        from ctdl.losses.adversarial import adversarial_loss
        from ctdl.losses.registry import create_loss

        self.cfg, self.g = cfg, cfg.gan
        self.mode = cfg.gan.mode
        self.intensity = intensity if intensity is not None else window_intensity(cfg)
        self.device = resolve_device(device)
        self.nets = {k: m.to(self.device) for k, m in nets.items()}
        self.sampler = sampler
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.epochs = cfg.training.epochs
        self.progress = progress
        self.preview_case = preview
        self.val_fn = val_fn
        self.meta = to_plain(dict(meta or {}))
        gens = [k for k in nets if k.startswith("G")]
        discs = [k for k in nets if k.startswith("D")]
        self.optims = {
            "G": build_optimizer(self.g.g_optimizer, chain(*(nets[k].parameters() for k in gens))),
            "D": build_optimizer(self.g.d_optimizer, chain(*(nets[k].parameters() for k in discs))),
        }
        self.scheds = {k: build_scheduler(cfg.schedule, o, self.epochs, mode="min") for k, o in self.optims.items()}
        self.adv = adversarial_loss(self.g.adversarial_loss)
        self.l1 = create_loss("gan_l1", weight=self.g.lambda_l1)
        self.cycle = create_loss("gan_cycle", weight=self.g.lambda_cycle)
        self.identity = create_loss("gan_identity", weight=self.g.lambda_identity)
        self.pools = {"x": ImagePool(self.g.pool_size, cfg.seed + 1), "y": ImagePool(self.g.pool_size, cfg.seed + 2)}
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.batch_log: list[dict[str, float]] = []  # per-batch losses of the current epoch (tests, debugging)
        self.grad_clip = cfg.training.grad_clip

    # ---------------------------------------------------------------- steps
    @staticmethod
    def _set_requires_grad(nets: Iterable[nn.Module], flag: bool) -> None:
        for n in nets:
            for p in n.parameters():
                p.requires_grad_(flag)

    @staticmethod
    def _penalty(nets: Sequence[nn.Module]) -> torch.Tensor | float:
        """L1/L2 kernel and activity penalties of DLAE layer-list networks (0 for other networks)."""
        total: torch.Tensor | float = 0.0
        for n in nets:
            fn = getattr(n, "regularization_penalty", None)
            if callable(fn):
                total = total + fn()
        return total

    def _step(self, opt_key: str, loss: torch.Tensor, nets: Sequence[nn.Module]) -> None:
        opt = self.optims[opt_key]
        opt.zero_grad(set_to_none=True)
        loss = loss + self._penalty(nets)  # layer lists' regularisers, as Keras adds model.losses
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(list(chain(*(n.parameters() for n in nets))), self.grad_clip)
        opt.step()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One batch; returns the loss terms (unweighted adversarial terms, weighted L1/cycle/identity)."""
        return self._step_pix2pix(x, y) if self.mode == "pix2pix" else self._step_cyclegan(x, y)

    def _step_pix2pix(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        G, D = self.nets["G"], self.nets["D"]
        fake = G(x)
        # discriminator: real pairs -> 1, generated pairs -> 0
        self._set_requires_grad([D], True)
        d_real = D(torch.cat([x, y], 1))
        d_fake = D(torch.cat([x, fake.detach()], 1))
        d_loss = 0.5 * (self.adv(d_real, True) + self.adv(d_fake, False))
        self._step("D", d_loss, [D])
        # generator: fool D + lambda * L1
        self._set_requires_grad([D], False)
        g_adv = self.adv(D(torch.cat([x, fake], 1)), True)
        g_l1 = self.l1(fake, y)
        g_loss = g_adv + g_l1
        self._step("G", g_loss, [G])
        self._set_requires_grad([D], True)
        return {"g_loss": _f(g_loss), "g_adv": _f(g_adv), "g_l1": _f(g_l1), "d_loss": _f(d_loss),
                "d_real": _f(d_real.mean()), "d_fake": _f(d_fake.mean())}

    def _step_cyclegan(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        Gxy, Gyx, Dx, Dy = (self.nets[k] for k in ("G_xy", "G_yx", "D_x", "D_y"))
        self._set_requires_grad([Dx, Dy], False)
        fake_y, fake_x = Gxy(x), Gyx(y)
        g_adv = self.adv(Dy(fake_y), True) + self.adv(Dx(fake_x), True)
        g_cycle = self.cycle(Gyx(fake_y), x) + self.cycle(Gxy(fake_x), y)
        if self.g.lambda_identity > 0:
            g_identity = self.identity(Gxy(y), y) + self.identity(Gyx(x), x)  # both terms (DLAE reported half)
        else:
            g_identity = torch.zeros((), device=x.device)
        g_loss = g_adv + g_cycle + g_identity
        self._step("G", g_loss, [Gxy, Gyx])
        self._set_requires_grad([Dx, Dy], True)
        px, py = self.pools["x"].query(fake_x), self.pools["y"].query(fake_y)
        d_x = 0.5 * (self.adv(Dx(x), True) + self.adv(Dx(px), False))
        d_y = 0.5 * (self.adv(Dy(y), True) + self.adv(Dy(py), False))
        self._step("D", d_x + d_y, [Dx, Dy])
        return {"g_loss": _f(g_loss), "g_adv": _f(g_adv), "g_cycle": _f(g_cycle),
                "g_identity": _f(g_identity), "d_loss": _f(d_x + d_y), "d_x": _f(d_x), "d_y": _f(d_y)}

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        from ctdl.engine.trainer import capture_rng, rng_to_plain

        main = "G" if self.mode == "pix2pix" else "G_xy"
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model": self.nets[main].state_dict(),  # the generator: what `ctdl predict` applies
            "nets": {k: m.state_dict() for k, m in self.nets.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optims.items()},
            "schedulers": {k: copy.deepcopy(s.state_dict()) for k, s in self.scheds.items()},
            "pools": {k: p.state_dict() for k, p in self.pools.items()},
            "epoch": self.epoch,
            "history": copy.deepcopy(self.history),
            "rng": rng_to_plain(capture_rng()),
            "seed": self.cfg.seed,
            "meta": self.meta,
        }

    def load_state(self, ckpt: Mapping[str, Any]) -> None:
        from ctdl.engine.trainer import restore_rng

        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"not a GAN checkpoint (format {ckpt.get('format')!r})")
        missing = set(self.nets) - set(ckpt["nets"])
        if missing:
            raise InputError(f"GAN checkpoint lacks networks {sorted(missing)} (mode {self.mode})")
        for k, m in self.nets.items():
            m.load_state_dict(ckpt["nets"][k])
        for k, o in self.optims.items():
            o.load_state_dict(ckpt["optimizers"][k])
        for k, s in self.scheds.items():
            s.load_state_dict(ckpt["schedulers"][k])
        for k, p in self.pools.items():
            p.load_state_dict(ckpt["pools"][k], self.device)
        self.epoch = int(ckpt["epoch"])
        self.history = [dict(r) for r in ckpt.get("history") or []]
        restore_rng(ckpt["rng"])

    # ---------------------------------------------------------------- loop
    def fit(self, resume_from: str | Path | None = None) -> list[dict[str, Any]]:
        """Train (or resume from a ``last.pt``) to ``training.epochs``; returns the history."""
        from ctdl.engine.trainer import load_checkpoint, save_checkpoint, seed_everything

        seed_everything(self.cfg.seed, self.cfg.training.deterministic)
        if resume_from is not None:
            self.load_state(load_checkpoint(resume_from))
        writer = self._tensorboard()
        try:
            while self.epoch < self.epochs:
                t0 = time.perf_counter()
                row = self._train_epoch(self.epoch)
                if self.val_fn is not None and ((self.epoch + 1) % self.cfg.training.val_every == 0 or self.epoch + 1 == self.epochs):
                    for n in self.nets.values():
                        n.eval()
                    with torch.no_grad():
                        row.update({f"val_{k}": float(v) for k, v in self.val_fn(self._generator()).items()})
                    for n in self.nets.values():
                        n.train()
                for s in self.scheds.values():
                    s.step(row.get("g_loss"))
                row["epoch_time_s"] = time.perf_counter() - t0
                self.history.append(row)
                self.epoch += 1
                if self.preview_case is not None and (self.epoch % self.g.preview_every == 0 or self.epoch == self.epochs):
                    self.write_preview(self.run_dir / f"preview_epoch_{self.epoch:03d}.png")
                self._write_history()
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch" and isinstance(v, (int, float)):
                            writer.add_scalar(k, float(v), global_step=row["epoch"])
                    writer.flush()
                state = self.state()
                if self.cfg.checkpoint.save_last:
                    save_checkpoint(state, self.run_dir / "last.pt")
                every = self.cfg.checkpoint.every_n
                if every and self.epoch % every == 0:
                    save_checkpoint(state, self.run_dir / f"epoch_{self.epoch:03d}.pt")
        finally:
            if writer is not None:
                writer.close()
        if not self.cfg.checkpoint.save_last:  # the final state is always kept: prediction needs it
            save_checkpoint(self.state(), self.run_dir / "last.pt")
        return self.history

    def _generator(self) -> nn.Module:
        return self.nets["G" if self.mode == "pix2pix" else "G_xy"]

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        for n in self.nets.values():
            n.train()
        lr = {f"lr_{k}": float(o.param_groups[0]["lr"]) for k, o in self.optims.items()}
        sums: dict[str, float] = {}
        n_samples = 0
        self.batch_log = []
        bar = tqdm(total=len(self.sampler), desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                   disable=None if self.progress else True)
        for xb, yb in self.sampler.epoch(epoch):
            x = torch.from_numpy(xb).to(self.device)
            y = torch.from_numpy(yb).to(self.device)
            losses = self.train_step(x, y)
            for k, v in losses.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"non-finite {k} = {v} at epoch {epoch}, batch {len(self.batch_log)}")
            b = x.shape[0]
            self.batch_log.append({**losses, "batch_size": b})
            for k, v in losses.items():  # sample-weighted, so a short last batch counts for what it holds
                sums[k] = sums.get(k, 0.0) + v * b
            n_samples += b
            bar.update(1)
            bar.set_postfix(g=f"{losses['g_loss']:.3g}", d=f"{losses['d_loss']:.3g}", refresh=False)
        bar.close()
        if n_samples == 0:
            warnings.warn(f"epoch {epoch}: the sampler yielded no batches")
        return {"epoch": epoch, **lr, **{k: v / max(n_samples, 1) for k, v in sums.items()}, "samples": n_samples}

    def _write_history(self) -> None:
        cols: list[str] = []
        for r in self.history:
            cols.extend(k for k in r if k not in cols)
        lines = [",".join(cols)]
        for r in self.history:
            lines.append(",".join("" if r.get(c) is None else (f"{r[c]:.8g}" if isinstance(r[c], float) else str(r[c]))
                                  for c in cols))
        atomic_write_text(self.run_dir / "history.csv", "\n".join(lines) + "\n")

    def _tensorboard(self) -> Any:
        if not self.cfg.checkpoint.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as exc:  # tensorboard missing or broken
            warnings.warn(f"TensorBoard logging disabled: {exc}")
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=self.epoch or None)

    # ---------------------------------------------------------------- preview
    def write_preview(self, path: Path) -> Path:
        """PNG of the preview case's middle slice: source | generated | target (CycleGAN: both directions with
        reconstructions: x | G_xy x | G_yx G_xy x | y on the first row, y | G_yx y | G_xy G_yx y | x on the second)."""
        case = self.preview_case
        assert case is not None
        imap = self.intensity
        src = imap.to_unit(case.source.array, "source")
        tgt = imap.to_unit(case.target.array, "target") if case.target is not None else np.full_like(src, -1.0)
        z = src.shape[0] // 2
        dims = task_dims(self.cfg)
        for n in self.nets.values():
            n.eval()
        with torch.no_grad():
            if self.mode == "pix2pix":
                fake = _apply(self.nets["G"], src, dims, self.cfg, self.device)
                rows = [[src[z], fake[z], tgt[z]]]
            else:
                fy = _apply(self.nets["G_xy"], src, dims, self.cfg, self.device)
                rx = _apply(self.nets["G_yx"], fy, dims, self.cfg, self.device)
                fx = _apply(self.nets["G_yx"], tgt, dims, self.cfg, self.device)
                ry = _apply(self.nets["G_xy"], fx, dims, self.cfg, self.device)
                rows = [[src[z], fy[z], rx[z], tgt[z]], [tgt[z], fx[z], ry[z], src[z]]]
        for n in self.nets.values():
            n.train()
        grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
        img = (np.clip(grid, -1, 1) * 0.5 + 0.5)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        plt.imsave(buf, img, cmap="gray", vmin=0.0, vmax=1.0, format="png")
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(buf.getvalue())
        return path


# -- inference ------------------------------------------------------------------------------------------------------
def _pad_to(x: torch.Tensor, div: int, value: float = -1.0) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the trailing spatial dims of x (N, C, *S) at the far end to multiples of ``div``."""
    spatial = x.shape[2:]
    target = [int(math.ceil(s / div) * div) for s in spatial]
    pad: list[int] = []
    for s, t in reversed(list(zip(spatial, target))):
        pad += [0, t - s]
    if any(pad):
        x = torch.nn.functional.pad(x, pad, value=value)
    return x, tuple(spatial)


def _apply(model: nn.Module, vol_unit: np.ndarray, dims: int, cfg: ExperimentConfig, device: torch.device | str,
           batch: int = 8) -> np.ndarray:
    """Generator applied to a whole (D, H, W) volume in [-1, 1]: slice by slice (2D) or with MONAI's
    ``sliding_window_inference`` on ``sampling.patch_size`` windows (3D, gaussian blending)."""
    div = generator_divisor(model)
    was_training = model.training
    model.eval()
    out = np.empty(vol_unit.shape, np.float32)
    try:
        with torch.no_grad():
            if dims == 2:
                for z0 in range(0, vol_unit.shape[0], batch):
                    x = torch.from_numpy(np.ascontiguousarray(vol_unit[z0:z0 + batch, None])).to(device)
                    xp, (h, w) = _pad_to(x, div)
                    out[z0:z0 + batch] = model(xp)[:, 0, :h, :w].cpu().numpy()
            else:
                from monai.inferers import sliding_window_inference

                roi = tuple(int(v) for v in (cfg.inference.roi_size or cfg.sampling.patch_size))
                bad = [r for r in roi if r % div]
                if bad:
                    raise ConfigError(f"sampling.patch_size / inference.roi_size {roi}: every side must be divisible by {div} for this generator")
                x = torch.from_numpy(np.ascontiguousarray(vol_unit[None, None])).to(device)
                y = sliding_window_inference(x, roi, max(1, cfg.inference.batch_size), model, overlap=cfg.inference.overlap,
                                             mode=cfg.inference.blend, cval=-1.0)
                out[:] = torch.as_tensor(y)[0, 0].cpu().numpy()
    finally:
        model.train(was_training)
    return out


def translate_volume(model: nn.Module, cfg: ExperimentConfig, image: Volume, device: torch.device | str = "cpu",
                     intensity: Optional[IntensityMap] = None, direction: str = "forward") -> Volume:
    """Source image -> generated image (float32, the target's units: HU with a window) on exactly the source's
    grid and geometry. ``intensity``: the run's mapping (default: the config's HU window); ``direction``
    'backward' (CycleGAN G_yx) reads a target-domain image and writes a source-domain one."""
    imap = intensity if intensity is not None else window_intensity(cfg)
    roles = ("source", "target") if direction == "forward" else ("target", "source")
    gen = _apply(model, imap.to_unit(image.array, roles[0]), task_dims(cfg), cfg, device)
    out = image.with_array(imap.from_unit(gen, roles[1]))
    info: dict[str, Any] = {"hu_window": list(imap.source)} if imap.is_window else \
        {"intensity_range": list(imap.range(roles[1])), "intensity_origin": imap.origin}
    out.meta.update({"source": image.meta.get("source"), "generated_by": "ctdl gan", **info})
    return out


class GanPredictor:
    """A trained generator with its config: reads a CT, translates it, writes NIfTI with the input's geometry."""

    def __init__(self, model: nn.Module, cfg: ExperimentConfig, device: str = "cpu",
                 intensity: Optional[IntensityMap] = None, direction: str = "forward") -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.intensity = intensity if intensity is not None else window_intensity(cfg)
        self.direction = direction

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", direction: str = "forward") -> "GanPredictor":
        from ctdl.engine.trainer import load_checkpoint

        path = Path(path)
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise InputError(f"{path}: GAN checkpoint not found")
        ckpt = load_checkpoint(path)
        meta = ckpt.get("meta") or {}
        if "config" not in meta:
            raise InputError(f"{path}: checkpoint carries no config (not written by ctdl train)")
        cfg = config_from_dict(meta["config"], f"{path}:meta.config")
        nets = build_networks(cfg)
        key = ("G" if cfg.gan.mode == "pix2pix" else ("G_xy" if direction == "forward" else "G_yx"))
        saved = ckpt.get("nets") or {}
        if key not in saved and key == "G_yx":
            raise InputError(f"{path}: checkpoint has no G_yx generator for the backward direction")
        nets[key].load_state_dict(saved.get(key, ckpt["model"]))
        imap = IntensityMap.from_dict(meta["intensity"]) if meta.get("intensity") else window_intensity(cfg)
        return cls(nets[key], cfg, device, imap, "backward" if key == "G_yx" else "forward")

    def predict_file(self, src: str | Path, dst: str | Path) -> Path:
        return write_volume(translate_volume(self.model, self.cfg, read_volume(src), self.device, self.intensity,
                                             self.direction), dst)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def predict_paths(model: str | Path, inputs: str | Path, output: str | Path, device: str = "auto") -> list[Path]:
    """`ctdl predict` for GAN runs: a volume file, a DICOM series folder or a folder of volumes -> NIfTI volumes."""
    predictor = GanPredictor.from_checkpoint(model, device=_device(device))
    src, out = Path(inputs), Path(output)
    if not src.exists():
        raise InputError(f"{src}: input not found")
    suffixes = (".nii.gz", ".nii", ".nrrd", ".mha", ".npz", ".npy")
    jobs: list[tuple[Path, Path]] = []
    if src.is_dir() and any(p.name.lower().endswith(suffixes) for p in src.iterdir()):
        for p in sorted(src.iterdir()):
            if p.name.lower().endswith(suffixes):
                jobs.append((p, out / (p.name.split(".")[0] + ".nii.gz")))
    else:
        dst = out if out.name.lower().endswith((".nii", ".nii.gz")) else out / (src.name.split(".")[0] + ".nii.gz")
        jobs.append((src, dst))
    return [predictor.predict_file(s, d) for s, d in tqdm(jobs, desc="translate", disable=None if len(jobs) > 1 else True)]


# -- evaluation -----------------------------------------------------------------------------------------------------
def _gaussian_baseline(source_hu: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(source_hu.astype(np.float32), (0, sigma, sigma), mode="nearest")


def evaluate_case(cfg: ExperimentConfig, case: PairCase, generated: np.ndarray,
                  intensity: Optional[IntensityMap] = None) -> dict[str, Any]:
    """Metrics of one held-out case: generator vs target, the identity baseline (source vs target), the in-plane
    Gaussian-filter baselines (denoising) and, when a label map is known, the kidney's mean HU (contrast).
    Scored within the HU window, or the target range of a data-derived ``intensity`` (no body mask then)."""
    from ctdl.metrics.image import window_metrics

    imap = intensity if intensity is not None else window_intensity(cfg)
    window = imap.target
    dims = task_dims(cfg)
    row: dict[str, Any] = {"case_id": case.case_id}
    src = np.asarray(case.source.array, np.float32)
    body = None
    if case.target is not None:
        tgt = np.asarray(case.target.array, np.float32)
        body = tgt > -500 if imap.is_window else None
        row.update(window_metrics(generated, tgt, window, dims=dims, mask=body))
        row.update(window_metrics(src, tgt, window, dims=dims, mask=body, prefix="input_"))
        if cfg.gan.mode == "pix2pix":
            for s in cfg.gan.baseline_sigmas:
                row.update(window_metrics(_gaussian_baseline(src, s), tgt, window, dims=dims, prefix=f"gauss{s:g}_"))
    if case.label is not None and cfg.gan.mode == "cyclegan":
        kid = case.label == 1
        if kid.any():
            row["kidney_hu_source"] = float(src[kid].mean())
            row["kidney_hu_generated"] = float(generated[kid].mean())
            if case.target is not None:
                row["kidney_hu_target"] = float(np.asarray(case.target.array, np.float32)[kid].mean())
                moved = row["kidney_hu_source"] - row["kidney_hu_generated"]
                gap = row["kidney_hu_source"] - row["kidney_hu_target"]
                row["kidney_fraction_moved"] = moved / gap if abs(gap) > 1e-6 else math.nan
    return row


def _val_fn(cfg: ExperimentConfig, cases: list[PairCase], device: torch.device | str,
            intensity: Optional[IntensityMap] = None) -> Any:
    """Validation PSNR / SSIM / MAE (target units, HU with a window) of the generator on whole validation volumes
    (paired data only)."""
    from ctdl.metrics.image import window_metrics

    imap = intensity if intensity is not None else window_intensity(cfg)
    dims = task_dims(cfg)
    usable = [c for c in cases if c.target is not None]

    def run(model: nn.Module) -> dict[str, float]:
        rows = []
        for c in usable:
            gen = imap.from_unit(_apply(model, imap.to_unit(c.source.array, "source"), dims, cfg, device), "target")
            rows.append(window_metrics(gen, np.asarray(c.target.array, np.float32), imap.target, dims=dims))  # type: ignore[union-attr]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}

    return run if usable else None


# -- train ----------------------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a pix2pix or CycleGAN model; writes one run folder and evaluates on the held-out test split."""
    from ctdl.data.splits import save_split
    from ctdl.engine.rundir import write_run_summary
    from ctdl.engine.trainer import seed_everything
    from ctdl.metrics.image import write_image_metrics
    from ctdl.models import count_parameters

    if cfg.task != "gan":
        raise ConfigError(f"task: the GAN trainer got task '{cfg.task}'")
    t0 = time.time()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    seed_everything(cfg.seed, cfg.training.deterministic)
    device = _device(cfg.training.device)
    dims = task_dims(cfg)

    parts = gan_cases(cfg, progress=progress)
    if cfg.data.format == "hdf5":
        parts = _hdf5_split(cfg, parts)
    save_split({k: [c.case_id for c in v] for k, v in parts.items()}, run_dir / "split.json")
    train_cases = parts["train"]
    imap = intensity_map(cfg, train_cases)  # the HU window, or computed once from the training data
    window = imap.source if imap.is_window else UNIT_WINDOW
    if not imap.is_window:
        train_cases = _unit_cases(train_cases, imap)
    if cfg.gan.mode == "pix2pix":
        src_cases, tgt_cases = train_cases, None
    elif cfg.data.format == "synthetic_kits":  # both phases exist for every phantom: use disjoint halves
        src_cases, tgt_cases = unpaired_halves(train_cases)
    else:
        src_cases, tgt_cases = train_cases, train_cases
    patch = tuple(cfg.sampling.patch_size)
    if cfg.data.format == "hdf5" and dims == 2:  # DLAE trains on whole samples (the stored size is the input size)
        patch = (1, max(c.source.shape[1] for c in train_cases), max(c.source.shape[2] for c in train_cases))
    sampler = PairSampler(src_cases, tgt_cases, window, dims, patch, cfg.training.batch_size,
                          cfg.seed, cfg.training.steps_per_epoch, cfg.sampling.samples_per_volume,
                          paired=cfg.gan.mode == "pix2pix", flip=cfg.augmentation.enabled and 2 in cfg.augmentation.flip_axes)
    nets = build_networks(cfg)
    preview = (parts["val"] or parts["test"] or parts["train"])[0]
    meta = {"config": config_to_dict(cfg), "task": "gan", "hu_window": list(imap.source) if imap.is_window else None,
            "intensity": imap.to_dict(), "split": {k: [c.case_id for c in v] for k, v in parts.items()}}
    val_fn = _val_fn(cfg, parts["val"], device, imap) if cfg.gan.mode == "pix2pix" else None
    trainer = GanTrainer(cfg, nets, sampler, run_dir, device, progress, preview, val_fn, meta, imap)
    last = run_dir / "last.pt"
    t1 = time.time()
    trainer.fit(resume_from=last if resume and last.exists() else None)
    timing: dict[str, float] = {"train_s": round(time.time() - t1, 1)}

    metrics: dict[str, Any] = {}
    if parts["test"]:
        t1 = time.time()
        gen = trainer._generator()
        rows = []
        for case in tqdm(parts["test"], desc="test", leave=False, disable=None if progress else True):
            out = translate_volume(gen, cfg, case.source, device, imap)
            write_volume(out, run_dir / "predictions" / f"{case.case_id}.nii.gz")
            rows.append(evaluate_case(cfg, case, np.asarray(out.array, np.float32), imap))
        metrics = write_image_metrics(rows, run_dir, "metrics")
        metrics.update(_baseline_summary(cfg, metrics))
        timing["test_predict_eval_s"] = round(time.time() - t1, 1)
    timing["total_s"] = round(time.time() - t0, 1)
    atomic_write_text(run_dir / "timing.json", json.dumps(timing, indent=2) + "\n")
    write_run_summary(run_dir, "gan", cfg.gan.generator.name, sum(count_parameters(n) for n in nets.values()), metrics,
                      timing, mode=cfg.gan.mode)
    return run_dir


def _baseline_summary(cfg: ExperimentConfig, means: Mapping[str, float]) -> dict[str, float]:
    """The best Gaussian-filter baseline (by mean PSNR over the test cases) under the names ``gauss_best_*``."""
    sig = [s for s in cfg.gan.baseline_sigmas if f"gauss{s:g}_psnr" in means]
    if not sig:
        return {}
    best = max(sig, key=lambda s: means[f"gauss{s:g}_psnr"])
    return {"gauss_best_sigma": best, **{f"gauss_best_{m}": means[f"gauss{best:g}_{m}"] for m in ("psnr", "ssim", "mae_hu")}}


__all__ = ["GanPredictor", "GanTrainer", "ImagePool", "IntensityMap", "LayerListAdapter", "build_networks",
           "evaluate_case", "intensity_map", "predict_paths", "train", "translate_volume", "window_intensity"]
