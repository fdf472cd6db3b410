"""Paired and unpaired CT-to-CT data for the GAN task (pix2pix, CycleGAN).

A :class:`PairCase` holds a source and a target volume in HU (same grid for paired data), and optionally a
label map (phantoms: kidney/tumour) used only for evaluation. Sources of cases:

* ``folder``: ``<root>/<images_dir>`` = source volumes, ``<root>/<labels_dir>`` = target volumes, matched by name;
* ``manifest``: CSV with columns ``source,target[,split]`` (paths relative to the CSV);
* ``hdf5``: DLAE GAN pairs (``train_x``/``train_y``, ``val_x``/``val_y``, ``test_x``/``test_y``) via
  :func:`ctdl.io.hdf5.read_dlae_hdf5`; 2D samples become one-slice volumes;
* ``synthetic_kits`` with ``gan.phantom``: phantoms rendered from KiTS19 masks (:mod:`ctdl.data.synthetic`):
  ``denoise`` (source = clean phantom + correlated low-dose-like noise [+ blur], target = the clean phantom) and
  ``contrast`` (source = arterial-phase rendering, target = non-contrast rendering of the same anatomy; training
  uses disjoint halves of the training cases for the two domains, so the pairs are never seen).

Intensities: HU clipped to the ``preprocessing.hu_window`` and mapped linearly to [-1, 1] (:func:`to_unit`),
undone by :func:`from_unit`. Training batches are drawn by :class:`PairSampler` from a NumPy generator seeded
with ``epoch_seed(seed, epoch)``, so an epoch's data depends only on (seed, epoch): the exact-resume contract.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from scipy import ndimage

from ctdl.config.schema import ExperimentConfig
from ctdl.errors import ConfigError, InputError
from ctdl.io import Volume, read_volume


@dataclass
class PairCase:
    """One case: source and target volumes (HU), an optional label map (evaluation only)."""

    case_id: str
    source: Volume
    target: Optional[Volume]
    label: Optional[np.ndarray] = None
    meta: dict[str, Any] = field(default_factory=dict)


# -- intensity mapping -----------------------------------------------------------------------------------------
def hu_window(cfg: ExperimentConfig) -> tuple[float, float]:
    """The HU window of the config (preset or pair) that is mapped to [-1, 1]."""
    from ctdl.data.preprocess import resolve_window

    w = cfg.preprocessing.hu_window
    if w is None:
        raise ConfigError("preprocessing.hu_window: the GAN task needs an HU window (the range mapped to [-1, 1])")
    return resolve_window(w)


def to_unit(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip HU to the window and map it linearly to [-1, 1] (float32)."""
    from ctdl.data.preprocess import clip_hu, normalize

    clipped = clip_hu(np.asarray(hu, dtype=np.float32), tuple(window))
    out, _ = normalize(clipped, "global_negpos_x", x_range=tuple(window))
    return np.asarray(out, dtype=np.float32)


def from_unit(z: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Inverse of :func:`to_unit` (values outside [-1, 1] are clipped first)."""
    from ctdl.data.preprocess import denormalize

    return np.asarray(denormalize(np.clip(np.asarray(z, dtype=np.float32), -1, 1), "negpos", tuple(window)), np.float32)


# -- case sources ----------------------------------------------------------------------------------------------
def _pair_volumes(cid: str, src: Path, tgt: Optional[Path], paired: bool) -> PairCase:
    s = read_volume(src)
    t = read_volume(tgt) if tgt is not None else None
    if paired and t is not None and s.shape != t.shape:
        raise InputError(f"{tgt}: target shape {t.shape} differs from source {src} shape {s.shape} (paired data must share the grid)")
    return PairCase(cid, s, t, None, {"source": str(src), "target": str(tgt) if tgt else None})


def folder_pairs(root: Path, source_dir: str, target_dir: str, paired: bool = True) -> list[PairCase]:
    """Source/target volumes of two sub-folders matched by file name."""
    from ctdl.data.datasets import folder_cases

    cases = folder_cases(root, source_dir, target_dir)
    missing = [c.case_id for c in cases if c.label is None]
    if paired and missing:
        raise InputError(f"{Path(root) / target_dir}: no target for source cases {missing[:10]} (data.labels_dir holds the targets)")
    return [_pair_volumes(c.case_id, Path(c.image), Path(c.label) if c.label else None, paired) for c in cases]


def manifest_pairs(path: Path, paired: bool = True) -> tuple[list[PairCase], dict[str, str]]:
    """Cases of a CSV manifest ``source,target[,split]``; returns the cases and their split column (if any)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "source" not in cols or "target" not in cols:
            raise InputError(f"{path}: a GAN manifest needs the columns source,target[,split]; found {cols}")
        rows = list(reader)
    cases, splits = [], {}
    for i, row in enumerate(rows):
        src = (path.parent / row["source"]).resolve()
        tgt = (path.parent / row["target"]).resolve() if row.get("target") else None
        for p, col in ((src, "source"), (tgt, "target")):
            if p is not None and not p.exists():
                raise InputError(f"{path}, row {i + 2}, column {col}: file not found: {p}")
        cid = f"{i:04d}_{src.name.split('.')[0]}"
        cases.append(_pair_volumes(cid, src, tgt, paired))
        if row.get("split"):
            if row["split"] not in ("train", "val", "test"):
                raise InputError(f"{path}, row {i + 2}, column split: expected train, val or test, got {row['split']!r}")
            splits[cid] = row["split"]
    return cases, splits


def hdf5_pairs(x_path: Path, y_path: Optional[Path], context: str, prefix: str) -> list[PairCase]:
    """DLAE HDF5 GAN pairs (one sample per case); single-channel samples only."""
    from ctdl.io.hdf5 import dlae_sample_to_volume, read_dlae_hdf5

    xs = read_dlae_hdf5(x_path)
    ys = read_dlae_hdf5(y_path) if y_path is not None else [None] * len(xs)
    if len(xs) != len(ys):
        raise InputError(f"{x_path} has {len(xs)} samples but {y_path} has {len(ys)} (DLAE pairs are matched by index)")
    out = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        sv = dlae_sample_to_volume(x, context)
        tv = dlae_sample_to_volume(y, context) if y is not None else None
        if tv is not None and tv.shape != sv.shape:
            raise InputError(f"{y_path}: sample {i} has shape {tv.shape}, source {x_path} sample {i} {sv.shape}")
        out.append(PairCase(f"{prefix}{i:05d}", sv, tv, None, {"source": f"{x_path}:{i}"}))
    return out


# -- phantoms ----------------------------------------------------------------------------------------------------
def degrade(clean_hu: np.ndarray, noise_hu: float, corr: float, blur: float, seed: int) -> np.ndarray:
    """Low-dose-like source: optional in-plane blur, plus Gaussian noise low-pass filtered in-plane to a
    correlation length ``corr`` (voxels) and rescaled to std ``noise_hu`` (low-dose CT noise is correlated)."""
    img = np.asarray(clean_hu, dtype=np.float32)
    if blur > 0:
        img = ndimage.gaussian_filter(img, (0, blur, blur), mode="nearest")
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(img.shape, dtype=np.float32)
    if corr > 0:
        n = ndimage.gaussian_filter(n, (0, corr, corr), mode="wrap")
        n /= max(float(n.std()), 1e-6)
    return (img + noise_hu * n).astype(np.float32)


def _phantom_root(cfg: ExperimentConfig, kind: str, params: Any) -> Path:
    from ctdl.tasks.segmentation import cache_dir

    d = cfg.data
    tag = "x".join(f"{s:g}" for s in (d.synth_spacing or (0, 0, 0)))
    h = hashlib.sha1(json.dumps(params.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return cache_dir(cfg) / f"gan_phantoms_{kind}_{tag}_m{d.synth_margin_slices}_s{cfg.seed}_{h}"


def phantom_pairs(cfg: ExperimentConfig, progress: bool = True) -> list[PairCase]:
    """Render (cached) the demo phantoms and build the source/target pairs of ``gan.phantom``."""
    from dataclasses import replace

    from ctdl.data.synthetic import PhantomParams, select_cases, synth_kits_dataset

    d, g = cfg.data, cfg.gan
    ids = d.cases if isinstance(d.cases, list) else select_cases(d.synth_source, d.cases or 12, seed=cfg.seed)
    if g.phantom == "denoise":
        variants = {"clean": replace(PhantomParams(), noise_hu=0.0)}
    else:
        variants = {"arterial": PhantomParams.arterial(), "noncontrast": PhantomParams.noncontrast()}
    roots = {}
    for kind, params in variants.items():
        roots[kind] = _phantom_root(cfg, kind, params)
        synth_kits_dataset(d.synth_source, roots[kind], ids, spacing=d.synth_spacing, seed=cfg.seed,
                           crop_to_body=True, progress=progress, margin_slices=d.synth_margin_slices, params=params)
    cases = []
    for i, cid in enumerate(ids):
        if g.phantom == "denoise":
            clean = read_volume(roots["clean"] / cid / "imaging.nii.gz")
            seed = int(np.random.SeedSequence([cfg.seed, 7919, i]).generate_state(1)[0])
            noisy = degrade(clean.array, g.phantom_noise_hu, g.phantom_noise_corr, g.phantom_blur, seed)
            src, tgt = clean.with_array(noisy), clean.with_array(clean.array.astype(np.float32))
            lab_path = roots["clean"] / cid / "segmentation.nii.gz"
        else:
            src = read_volume(roots["arterial"] / cid / "imaging.nii.gz")
            tgt = read_volume(roots["noncontrast"] / cid / "imaging.nii.gz")
            lab_path = roots["arterial"] / cid / "segmentation.nii.gz"
        label = np.asarray(read_volume(lab_path).array).astype(np.uint8)
        cases.append(PairCase(cid, src, tgt, label, {"phantom": g.phantom}))
    return cases


# -- all cases + split -------------------------------------------------------------------------------------------
def gan_cases(cfg: ExperimentConfig, progress: bool = True) -> dict[str, list[PairCase]]:
    """The train/val/test cases of a GAN config."""
    from ctdl.data.splits import split_ids

    d = cfg.data
    paired = cfg.gan.mode == "pix2pix"
    fixed: dict[str, str] = {}
    if d.format == "hdf5":
        if d.train_x is None:
            raise ConfigError("data.train_x / data.train_y: DLAE HDF5 GAN data needs the training source and target files")
        ctx = "2D" if cfg.sampling.mode == "slices2d" else "3D"
        parts = {"train": hdf5_pairs(d.train_x, d.train_y, ctx, "train_")}
        parts["val"] = hdf5_pairs(d.val_x, d.val_y, ctx, "val_") if d.val_x else []
        parts["test"] = hdf5_pairs(d.test_x, d.test_y, ctx, "test_") if d.test_x else []
        return parts
    if d.format == "folder":
        cases = folder_pairs(d.root, d.images_dir, d.labels_dir, paired)  # type: ignore[arg-type]
    elif d.format == "manifest":
        cases, fixed = manifest_pairs(d.manifest, paired)  # type: ignore[arg-type]
    elif d.format == "synthetic_kits":
        cases = phantom_pairs(cfg, progress)
    else:
        raise ConfigError(f"data.format '{d.format}' is not a GAN dataset (use folder, manifest, hdf5 or synthetic_kits)")
    if d.format != "synthetic_kits" and isinstance(d.cases, int):
        cases = cases[: d.cases]
    by_id = {c.case_id: c for c in cases}
    s = d.split
    if s.train_cases is not None:
        split = {"train": list(s.train_cases), "val": list(s.val_cases or []), "test": list(s.test_cases or [])}
        unknown = [i for v in split.values() for i in v if i not in by_id]
        if unknown:
            raise ConfigError(f"data.split: unknown case ids {unknown[:10]}")
    elif fixed:
        split = {k: [c.case_id for c in cases if fixed.get(c.case_id, "train") == k] for k in ("train", "val", "test")}
    else:
        split = split_ids([c.case_id for c in cases], s.train, s.val, s.test, seed=cfg.seed if s.seed is None else s.seed)
    return {k: [by_id[i] for i in v] for k, v in split.items()}


# -- training samples ---------------------------------------------------------------------------------------------
class PairSampler:
    """Training batches ``(source, target)`` of shape (B, 1, H, W) (2D) or (B, 1, D, H, W) (3D) in [-1, 1].

    Paired: the same crop of source and target. Unpaired (CycleGAN): source crops from ``source_cases`` and target
    crops from ``target_cases``, drawn independently. Without ``steps_per_epoch`` an epoch is one shuffled pass
    over every slice (2D) or ``samples_per_volume`` patches per volume (3D), so the last batch may be short;
    with it, ``steps_per_epoch`` full batches of random slices/patches. Crops are centred on body voxels.
    """

    def __init__(self, source_cases: list[PairCase], target_cases: list[PairCase] | None, window: Sequence[float],
                 dims: int, patch: Sequence[int], batch_size: int, seed: int, steps_per_epoch: int | None = None,
                 samples_per_volume: int = 1, paired: bool = True, flip: bool = False) -> None:
        if not source_cases:
            raise ConfigError("data.split: the GAN training split is empty")
        self.dims, self.batch_size, self.seed = dims, int(batch_size), int(seed)
        self.patch = tuple(int(p) for p in (patch[-2:] if dims == 2 else patch))
        self.steps_per_epoch, self.samples_per_volume, self.paired, self.flip = steps_per_epoch, samples_per_volume, paired, flip
        self.src = [to_unit(c.source.array, window) for c in source_cases]
        tcases = source_cases if (paired or target_cases is None) else target_cases
        missing = [c.case_id for c in tcases if c.target is None]
        if missing:
            raise InputError(f"the GAN needs a target-domain volume for every training case; missing for {missing[:10]}")
        self.tgt = [to_unit(c.target.array, window) for c in tcases]  # type: ignore[union-attr]
        self._src_units = self._units(self.src)
        self._tgt_units = self._src_units if paired else self._units(self.tgt)

    def _units(self, vols: list[np.ndarray]) -> list[tuple[int, int]]:
        """(case, slice) per 2D sample, (case, -1) repeated samples_per_volume times for 3D."""
        if self.dims == 2:
            return [(i, z) for i, v in enumerate(vols) for z in range(v.shape[0])]
        return [(i, -1) for i, _ in enumerate(vols) for _ in range(self.samples_per_volume)]

    def __len__(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return -(-len(self._src_units) // self.batch_size)

    def _crop(self, vol: np.ndarray, unit: tuple[int, int], rng: np.random.Generator, others: Sequence[np.ndarray] = ()
              ) -> list[np.ndarray]:
        i, z = unit
        arrays = [vol, *others]
        if self.dims == 2:
            arrays = [a[z] for a in arrays]
        shape = arrays[0].shape
        body = np.argwhere(arrays[0] > -0.95)
        centre = body[rng.integers(len(body))] if len(body) else np.array(shape) // 2
        out = []
        starts = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, p, s in zip(centre, self.patch, shape)]
        for a in arrays:
            sl = tuple(slice(st, st + p) for st, p in zip(starts, self.patch))
            crop = a[sl]
            pad = [(0, p - s) for p, s in zip(self.patch, crop.shape)]
            if any(b for _, b in pad):
                crop = np.pad(crop, pad, constant_values=-1.0)
            out.append(crop)
        if self.flip and rng.random() < 0.5:
            out = [np.ascontiguousarray(np.flip(c, -1)) for c in out]
        return out

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of ``epoch`` (a function of (seed, epoch) only)."""
        from ctdl.engine.trainer import epoch_seed

        rng = np.random.default_rng(epoch_seed(self.seed, epoch))
        if self.steps_per_epoch is not None:
            n = self.steps_per_epoch * self.batch_size
            src_units = [self._src_units[k] for k in rng.integers(len(self._src_units), size=n)]
        else:
            src_units = [self._src_units[k] for k in rng.permutation(len(self._src_units))]
        tgt_units = None
        if not self.paired:
            tgt_units = [self._tgt_units[k] for k in rng.integers(len(self._tgt_units), size=len(src_units))]
        for b0 in range(0, len(src_units), self.batch_size):
            xs, ys = [], []
            for j in range(b0, min(b0 + self.batch_size, len(src_units))):
                u = src_units[j]
                if self.paired:
                    x, y = self._crop(self.src[u[0]], u, rng, [self.tgt[u[0]]])  # type: ignore[list-item]
                else:
                    (x,) = self._crop(self.src[u[0]], u, rng)
                    v = tgt_units[j]  # type: ignore[index]
                    (y,) = self._crop(self.tgt[v[0]], v, rng)  # type: ignore[arg-type]
                xs.append(x[None])
                ys.append(y[None])
            yield np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def unpaired_halves(cases: list[PairCase]) -> tuple[list[PairCase], list[PairCase]]:
    """Disjoint source-domain and target-domain case lists for CycleGAN training on paired-by-design data
    (phantoms rendered in both phases): even positions give sources, odd positions give targets."""
    if len(cases) < 2:
        return cases, cases
    return cases[0::2], cases[1::2]


__all__ = ["PairCase", "PairSampler", "degrade", "from_unit", "gan_cases", "hu_window", "to_unit", "unpaired_halves"]
