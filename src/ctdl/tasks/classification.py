"""Classification (and regression) task: whole CT volumes or video clips -> one label (or a row vector).

Chain: samples (manifest CSV, a folder per class, videos, DLAE HDF5 pairs, or the synthetic TB / video sets) -> preprocessing
(HU window for CT only, spline zoom to ``preprocessing.zoom_shape``, the same normalization for CT and video,
cached on disk) -> seeded stratified split -> model from the registry (optionally ImageNet VGG16 weights from a
local file, ``classification.finetune_from`` a checkpoint with the head replaced, ``classification.freeze``) ->
loss (categorical cross-entropy with optional 'balanced' class weights; MSE/MAE for regression) -> trainer
(reduce-on-plateau, early stopping with the best weights restored) -> evaluation: kappa, accuracy, per-class
precision/recall/F1, macro AUC, confusion matrix, per-sample predictions with probabilities, report.html.

DLAE HDF5 (``data.format: hdf5``, manual 2.5): ``data.train_x``/``train_y`` (and ``val_x``/``val_y``,
``test_x``/``test_y``) hold one 2D (rows, cols[, ch]) or 3D (rows, cols, slices[, ch]) image per dataset '0'..'n-1'
and its annotation: a class id (shape (1,)) or a one-hot vector for classification, a float vector for regression.
Images are used at their stored size (no zoom; DLAE resized nothing). Per sample, in DLAE's order: HU clip (only when
``preprocessing.hu_window`` is set), repeat channels, centring / standardisation, ZCA, then (training only) the
augmentation, then the normalization (a ``*_xy`` kind acts on the image only: DLAE's CNNs never scale y). Without
validation files the validation samples are DLAE's seeded split of the training file
(:func:`ctdl.data.hdf5_dataset.hdf5_split_ids`). Whether samples are 2D or 3D follows the network (the layer list's
Input rank or the registered model's dims), else ``sampling.mode``.

Also :func:`run_strategies`: runs a sweep file of this task (e.g. ``recipes/viptt_strategies.yaml``) and prints
the Table-1-shaped table, for use until the generic ``ctdl sweep`` is available.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ctdl.config.load import config_from_dict, config_to_dict, save_config
from ctdl.config.schema import ExperimentConfig
from ctdl.errors import ConfigError, InputError

log = logging.getLogger("ctdl")

DEFAULT_CLASSES = ["background", "kidney", "tumor"]  # the schema's default (segmentation) class list
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".npy", ".npz")
VIDEO_FORMATS = ("video", "synthetic_video")


@dataclass
class Sample:
    """One item to classify: an id, where it is, its target (class index or float vector) and a fixed split."""

    sample_id: str
    path: Path
    target: Any
    split: str | None = None
    kind: str = "volume"  # volume | clip | hdf5
    index: int | None = None  # hdf5: the dataset name ('0'..'n-1') in the image file ``path``


# -- samples ---------------------------------------------------------------------------------
def cache_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.output_dir) / ".cache"


def _stem(p: Path) -> str:
    name = p.name
    for suf in VOLUME_SUFFIXES + (".avi", ".mp4", ".mov", ".mkv", ".gif", ".webm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _class_names(cfg: ExperimentConfig, found: Sequence[str], source: str) -> list[str]:
    """The configured class list if it covers what the data holds; the found names if classes were left default."""
    given = list(cfg.data.classes)
    if given == DEFAULT_CLASSES and not set(found) <= set(given):
        return sorted(found)
    missing = sorted(set(found) - set(given))
    if missing:
        raise ConfigError(f"data.classes {given} lacks the classes {missing} found in {source}")
    return given


def _parse_label(raw: str, classes: list[str], base: int, where: str) -> int:
    if raw in classes:
        return classes.index(raw)
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{where}: label {raw!r} is neither a class name ({', '.join(classes)}) nor an integer") from None
    idx = value - base
    if not 0 <= idx < len(classes):
        raise InputError(f"{where}: integer label {value} is outside [{base}, {base + len(classes) - 1}] "
                         f"(classification.label_base = {base}, {len(classes)} classes)")
    return idx


def _parse_vector(raw: str, where: str) -> list[float]:
    try:
        return [float(v) for v in raw.replace(";", " ").split()]
    except ValueError:
        raise InputError(f"{where}: regression target {raw!r} must be numbers separated by spaces or ';'") from None


def _folder_samples(root: Path, kind: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """(class name, item path) pairs of ``root/<class>/<item>``; items are volumes/DICOM folders or clips."""
    from ctdl.io.video import is_clip

    if not root.is_dir():
        raise InputError(f"data.root: {root} is not a folder (expected one sub-folder per class)")
    pairs = []
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for c in classes:
        for item in sorted((root / c).iterdir()):
            if item.name.startswith("."):
                continue
            ok = is_clip(item) if kind == "clip" else (item.name.lower().endswith(VOLUME_SUFFIXES) or item.is_dir())
            if ok:
                pairs.append((c, item))
    if not pairs:
        raise InputError(f"data.root: {root} holds no {'clips' if kind == 'clip' else 'volumes'} in class sub-folders")
    return pairs, classes


def resolve_samples(cfg: ExperimentConfig, progress: bool = True) -> tuple[list[Sample], list[str]]:
    """All samples of the configured dataset and the class names (synthetic sets are written to the cache first)."""
    d, c = cfg.data, cfg.classification
    regression = cfg.task == "regression"
    fmt = d.format
    if fmt == "synthetic_tb":
        from ctdl.data.synthetic_tb import TB_CLASSES, write_tb_dataset

        tag = f"tb_n{c.synth_per_class}_{'x'.join(map(str, c.synth_shape))}_h{c.synth_noise_hu:g}_s{cfg.seed}"
        manifest = write_tb_dataset(cache_dir(cfg) / tag, c.synth_per_class, c.synth_shape, cfg.seed,
                                    c.synth_noise_hu, progress)
        return _manifest_samples(manifest, list(TB_CLASSES), 0, regression), list(TB_CLASSES)
    if fmt == "manifest":
        from ctdl.data.datasets import manifest_cases

        cases = manifest_cases(d.manifest)  # type: ignore[arg-type]
        if regression:
            classes = list(d.classes)
        else:
            found = sorted({str(x.target) for x in cases if not str(x.target).lstrip("-").isdigit()})
            classes = _class_names(cfg, found, str(d.manifest)) if found else list(d.classes)
        return _manifest_samples(Path(d.manifest), classes, c.label_base, regression), classes  # type: ignore[arg-type]
    if fmt in ("class_folders", "video", "synthetic_video"):
        if regression:
            raise ConfigError(f"data.format '{fmt}' gives class labels; task 'regression' needs a manifest with vectors")
        if fmt == "synthetic_video":
            from ctdl.data.synthetic_tb import write_video_dataset

            frames, size = c.synth_shape[0], c.synth_shape[2]
            root = write_video_dataset(cache_dir(cfg) / f"videos_n{c.synth_per_class}_t{frames}_{size}_s{cfg.seed}",
                                       c.synth_per_class, frames, size, cfg.seed, progress)
        else:
            if d.root is None:
                raise ConfigError(f"data.root is required for data.format '{fmt}' (a folder with one sub-folder per class)")
            root = Path(d.root)
        kind = "volume" if fmt == "class_folders" else "clip"
        pairs, found = _folder_samples(root, kind)
        classes = _class_names(cfg, found, str(root))
        samples = [Sample(f"{cls}/{_stem(p)}", p, classes.index(cls), None, kind) for cls, p in pairs]
        return samples, classes
    if fmt == "hdf5":
        samples, _ = hdf5_samples(cfg)
        return samples, list(d.classes)
    raise ConfigError(f"data.format '{fmt}' is not a classification dataset "
                      "(use manifest, class_folders, video, hdf5, synthetic_tb or synthetic_video)")


def _manifest_samples(path: Path, classes: list[str], base: int, regression: bool) -> list[Sample]:
    from ctdl.data.datasets import manifest_cases

    samples = []
    seen: set[str] = set()
    for i, case in enumerate(manifest_cases(path), start=2):
        where = f"{path}: line {i}"
        target = _parse_vector(str(case.target), where) if regression else _parse_label(str(case.target), classes, base, where)
        sid = case.case_id if case.case_id not in seen else f"{case.case_id}_{i}"
        seen.add(sid)
        samples.append(Sample(sid, Path(case.image), target, case.split, "volume"))
    if regression and len({len(s.target) for s in samples}) != 1:
        raise InputError(f"{path}: regression targets have different lengths")
    return samples


def make_split(cfg: ExperimentConfig, samples: list[Sample]) -> dict[str, list[str]]:
    """Fixed splits from the manifest where given, else a seeded split stratified by class (paper: 80/20)."""
    from ctdl.data.splits import listed_split, split_ids

    s = cfg.data.split
    listed = listed_split(s, (x.sample_id for x in samples), "sample ids")
    if listed is not None:
        return listed
    if cfg.data.format == "hdf5":  # separate validation/test files, else DLAE's seeded split of the training file
        from ctdl.data.hdf5_dataset import hdf5_split_ids

        by_part: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for x in samples:
            by_part[x.split or "train"].append(x.sample_id)
        return hdf5_split_ids(cfg, by_part)
    fixed = {"train": [], "val": [], "test": []}  # type: dict[str, list[str]]
    free = []
    for x in samples:
        if x.split:
            fixed[x.split].append(x.sample_id)
        else:
            free.append(x)
    strata = None if cfg.task == "regression" else [x.target for x in free]
    auto = split_ids([x.sample_id for x in free], s.train, s.val, s.test,
                     seed=cfg.seed if s.seed is None else s.seed, strata=strata)
    return {k: fixed[k] + auto[k] for k in fixed}


# -- preprocessing ---------------------------------------------------------------------------
def _prep_key(cfg: ExperimentConfig) -> str:
    p = cfg.preprocessing
    spec = {"window": p.hu_window, "norm": p.normalization, "range": p.intensity_range, "zoom": p.zoom_shape,
            "order": p.zoom_order, "reorient": p.reorient, "frames": cfg.classification.video_frames, "v": 1}
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _normalize(arr: np.ndarray, cfg: ExperimentConfig, kind: str | None = None) -> np.ndarray:
    from ctdl.data import preprocess as pp

    kind = cfg.preprocessing.normalization if kind is None else kind
    if kind == "zscore":
        return np.asarray(pp.zscore(arr), np.float32)
    if kind == "unity_minus_mean" or kind.endswith("_xy") and kind.startswith("global"):
        raise ConfigError(f"preprocessing.normalization '{kind}' is not supported for classification "
                          "(use samplewise_unity_x, samplewise_negpos_x, global_*_x with intensity_range, zscore or none)")
    x, _ = pp.normalize(arr, kind, x_range=cfg.preprocessing.intensity_range)
    return np.asarray(x, np.float32)


def prepare_array(sample: Sample, cfg: ExperimentConfig) -> np.ndarray:
    """(1, D, H, W) float32 network input for one sample: window (CT only), spline zoom, normalization."""
    from ctdl.data import preprocess as pp

    p = cfg.preprocessing
    if p.zoom_shape is None:
        raise ConfigError("preprocessing.zoom_shape is required for classification (e.g. [70, 224, 224], ViPTT-Net)")
    if sample.kind == "clip":
        from ctdl.io.video import read_clip

        # video frames are not HU: no window, the same zoom and normalization as CT (the authors kept raw 0..255)
        arr = read_clip(sample.path, cfg.classification.video_frames)
    else:
        from ctdl.io import read_volume

        vol = read_volume(sample.path)
        if p.reorient:
            vol = pp.reorient(vol)
        arr = np.asarray(vol.array, np.float32)
        if p.hu_window is not None:
            arr = np.asarray(pp.clip_hu(arr, p.hu_window), np.float32)
    arr = np.asarray(pp.zoom_to_shape(arr.astype(np.float32), tuple(p.zoom_shape), order=p.zoom_order), np.float32)
    return _normalize(arr, cfg)[None]


class SampleStore:
    """Preprocessed inputs cached as .npy files keyed by the preprocessing settings (loaded on demand)."""

    def __init__(self, cfg: ExperimentConfig, samples: Sequence[Sample], progress: bool = True) -> None:
        self.root = cache_dir(cfg) / f"cls_{_prep_key(cfg)}"
        self.cfg = cfg
        self.paths: dict[str, Path] = {}
        todo = []
        for s in samples:
            h = hashlib.sha1(f"{s.path.resolve()}|{_mtime(s.path)}".encode()).hexdigest()[:12]
            out = self.root / f"{h}.npy"
            self.paths[s.sample_id] = out
            if not out.exists():
                todo.append((s, out))
        from ctdl.io.atomic import atomic_path

        for s, out in tqdm(todo, desc="preprocess", disable=None if progress else True, leave=False):
            arr = prepare_array(s, cfg)
            with atomic_path(out) as tmp:
                np.save(tmp, arr)
        self._memo = _BoundedMemo()  # bigger sets than its budget are re-read from the cache

    def __getitem__(self, sample_id: str) -> np.ndarray:
        return self._memo.get(sample_id, lambda: np.load(self.paths[sample_id]))

    def train_sample(self, sample_id: str, aug: Any, seed: int) -> np.ndarray:
        """The cached input with the training augmentation (drawn from ``seed``) applied."""
        x = self[sample_id]
        return x if aug is None else _augment(aug, x, seed)


class _BoundedMemo:
    """Arrays kept in memory up to a byte budget (default 2 GB); past it, ``make`` runs again on each access."""

    def __init__(self, limit: int = 2 * 1024**3) -> None:
        self._items: dict[str, np.ndarray] = {}
        self._bytes, self._limit = 0, limit

    def get(self, key: str, make: Any) -> np.ndarray:
        arr = self._items.get(key)
        if arr is None:
            arr = make()
            if self._bytes + arr.nbytes <= self._limit:
                self._items[key] = arr
                self._bytes += arr.nbytes
        return arr


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


# -- DLAE HDF5 (data.format: hdf5) ------------------------------------------------------------
_HDF5_PARTS = (("train", "train_x"), ("val", "val_x"), ("test", "test_x"))


def hdf5_context(cfg: ExperimentConfig) -> str:
    """'2D' or '3D' samples: the network's input rank (layer list Input entry, registered model dims), else
    ``sampling.mode`` (slices2d = 2D). DLAE's own switch (image_context) decides the layer list's Input rank."""
    if cfg.model.layers:
        from ctdl.models.layerlist import parse_layer_list

        shape = parse_layer_list(list(cfg.model.layers))[0].shape  # type: ignore[attr-defined]
        return "2D" if len(shape) == 3 else "3D"
    try:
        from ctdl.models import model_info

        dims = model_info(cfg.model.name).get("dims")
    except Exception:  # an unknown name fails later, in build_model, with the registry's message
        dims = None
    if dims in (2, 3):
        return f"{dims}D"
    return "2D" if cfg.sampling.mode == "slices2d" else "3D"


def hdf5_samples(cfg: ExperimentConfig) -> tuple[list[Sample], dict[str, np.ndarray]]:
    """Samples of the DLAE HDF5 files (ids ``<part>_<i:05d>``, split = the file's part) and their channels-first
    images as stored (:func:`ctdl.data.hdf5_dataset.load_hdf5_arrays`; one-hot labels become class ids)."""
    from ctdl.data.hdf5_dataset import load_hdf5_arrays

    d = cfg.data
    if d.train_x is None or d.train_y is None:
        raise ConfigError("data.train_x and data.train_y are required for data.format hdf5 (DLAE image and "
                          "annotation files)")
    if cfg.preprocessing.zoom_shape is not None:
        raise ConfigError("preprocessing.zoom_shape: DLAE HDF5 samples are used at their stored size (DLAE resized "
                          "nothing); leave zoom_shape unset and write the files at the network's input size")
    regression = cfg.task == "regression"
    model = "cnn_regression" if regression else "cnn_classification"
    ctx = hdf5_context(cfg)
    samples: list[Sample] = []
    arrays: dict[str, np.ndarray] = {}
    for part, kx in _HDF5_PARTS:
        for i, (x, y) in enumerate(load_hdf5_arrays(cfg, part, model, context=ctx)):
            sid = f"{part}_{i:05d}"
            target: Any = [float(v) for v in np.asarray(y).reshape(-1)] if regression else int(np.asarray(y).reshape(-1)[0])
            samples.append(Sample(sid, Path(getattr(d, kx)), target, part, "hdf5", i))
            arrays[sid] = x
    if not samples:
        raise InputError(f"{d.train_x}: no samples (data.train_x)")
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) > 1:
        raise InputError(f"{d.train_x} (data.train_x and the validation/test files): images have different shapes "
                         f"{sorted(shapes)[:5]}; a DLAE network takes one input size")
    if regression and len({len(s.target) for s in samples}) != 1:
        raise InputError(f"{d.train_y} (data.train_y and the validation/test files): regression targets have "
                         f"different lengths {sorted({len(s.target) for s in samples})}")
    return samples, arrays


class Hdf5Store:
    """Images of DLAE HDF5 samples, kept as stored (channels-first) and preprocessed on access in DLAE's order:
    HU clip (when ``preprocessing.hu_window`` is set), repeat channels, centring / standardisation, ZCA
    (:func:`ctdl.data.dlae_transforms.dlae_sample_chain`), [augmentation, training only], normalization.

    ``store[id]`` is the network input without augmentation; :meth:`train_sample` applies the augmentation
    between the per-sample chain and the normalization, as DLAE did.
    """

    def __init__(self, cfg: ExperimentConfig, arrays: dict[str, np.ndarray]) -> None:
        p = cfg.preprocessing
        kind = p.normalization
        if kind == "unity_minus_mean":
            raise ConfigError("preprocessing.normalization 'unity_minus_mean' is not supported for classification "
                              "(use a DLAE kind: samplewise_*, global_* with intensity_range, zscore or none)")
        if kind.endswith("_xy"):
            kind = kind[:-3] + "_x"  # DLAE's CNNs never scale y: *_xy acts on the image only
        if kind.startswith("global") and p.intensity_range is None:
            raise ConfigError(f"preprocessing.intensity_range: normalization '{p.normalization}' needs the images' "
                              "[min, max] (DLAE minimum/maximum_image_intensity)")
        self.cfg, self.kind, self.arrays = cfg, kind, arrays
        self._memo = _BoundedMemo()

    @property
    def channels(self) -> int:
        """Network input channels: the stored channels times ``preprocessing.repeat_channels``."""
        first = next(iter(self.arrays.values()))
        return int(first.shape[0]) * self.cfg.preprocessing.repeat_channels

    def base(self, sample_id: str) -> np.ndarray:
        """The sample before augmentation and normalization (float32, channels-first)."""
        return self._memo.get(sample_id, lambda: self._chain(sample_id))

    def _chain(self, sample_id: str) -> np.ndarray:
        from ctdl.data.dlae_transforms import dlae_sample_chain
        from ctdl.data.preprocess import clip_hu, resolve_window

        p = self.cfg.preprocessing
        x = np.asarray(self.arrays[sample_id], np.float32)
        if p.hu_window is not None:
            x = np.asarray(clip_hu(x, resolve_window(p.hu_window)), np.float32)
        return dlae_sample_chain(x, p.repeat_channels, p.center, p.std_normalize, p.zca_epsilon)

    def finish(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(_normalize(np.asarray(x, np.float32), self.cfg, self.kind), dtype=np.float32)

    def __getitem__(self, sample_id: str) -> np.ndarray:
        return self.finish(self.base(sample_id))

    def train_sample(self, sample_id: str, aug: Any, seed: int) -> np.ndarray:
        x = self.base(sample_id)
        if aug is not None:
            x = _augment(aug, x, seed)
        return self.finish(x)


class _WithDepth:
    """Runs (C, D, H, W) image transforms on a 2D (C, H, W) sample as a one-slice volume."""

    def __init__(self, aug: Any) -> None:
        self.aug = aug

    def set_random_state(self, seed: int | None = None, state: Any = None) -> "_WithDepth":
        self.aug.set_random_state(seed=seed)
        return self

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = self.aug({"image": np.asarray(data["image"])[:, None]})
        return {"image": np.asarray(out["image"])[:, 0]}


def build_hdf5_augmentation(cfg: ExperimentConfig, context: str) -> Any:
    """Training augmentation of HDF5 samples: DLAE's affine (``augmentation.affine: dlae``, 2D and slice by slice
    in 3D), else the MONAI image transforms of :func:`build_image_augmentation` (2D samples as one-slice volumes)."""
    if not cfg.augmentation.enabled:
        return None
    if cfg.augmentation.affine == "dlae":
        from ctdl.data.dlae_transforms import build_dlae_augmentation

        return build_dlae_augmentation(cfg.augmentation)
    aug = build_image_augmentation(cfg)
    return _WithDepth(aug) if aug is not None and context == "2D" else aug


def _augment(aug: Any, x: np.ndarray, seed: int) -> np.ndarray:
    aug.set_random_state(seed=int(seed))
    return np.asarray(aug({"image": x})["image"], dtype=np.float32)


# -- augmentation / loading ------------------------------------------------------------------
def build_image_augmentation(cfg: ExperimentConfig) -> Any:
    """Image-only MONAI transforms for (C, D, H, W) inputs: flips, rotation from a discrete set (ViPTT-Net),
    affine (rotation range / zoom / shift) and intensity jitter; None when augmentation is off."""
    from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised, RandScaleIntensityd

    from ctdl.data.augment import RandDiscreteRotated

    a = cfg.augmentation
    if not a.enabled:
        return None
    import math

    t: list[Any] = [RandFlipd(keys=["image"], prob=a.flip_prob, spatial_axis=ax) for ax in a.flip_axes if 0 <= ax < 3]
    if a.rotation_choices:
        t.append(RandDiscreteRotated(["image"], a.rotation_choices, ["bilinear"], prob=1.0))
    if a.rotation_deg or a.zoom or a.shift_px:
        t.append(RandAffined(keys=["image"], prob=a.prob, rotate_range=(math.radians(a.rotation_deg), 0.0, 0.0),
                             translate_range=(0.0, a.shift_px, a.shift_px), scale_range=(0.0, a.zoom, a.zoom),
                             mode="bilinear", padding_mode="border"))
    if a.intensity_scale:
        t.append(RandScaleIntensityd(keys=["image"], factors=a.intensity_scale, prob=a.prob))
    if a.noise_std:
        t.append(RandGaussianNoised(keys=["image"], std=a.noise_std, prob=a.prob))
    return Compose(t) if t else None


class EpochBatches:
    """The batches of one epoch; order and augmentation depend only on (seed, epoch), so resumes are exact."""

    def __init__(self, store: "SampleStore | Hdf5Store", samples: list[Sample], batch_size: int, seed: int, epoch: int,
                 shuffle: bool, aug: Any, regression: bool, rounds: int = 1) -> None:
        from ctdl.engine.trainer import epoch_seed

        self.store, self.samples, self.aug, self.regression = store, samples, aug, regression
        rng = np.random.default_rng(epoch_seed(seed, epoch))
        order = np.concatenate([rng.permutation(len(samples)) if shuffle else np.arange(len(samples))
                                for _ in range(max(1, rounds))])
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if len(self.batches) > 1 and len(self.batches[-1]) == 1 and batch_size > 1:
            self.batches.pop()  # a batch of one breaks BatchNorm layers in training mode
        self.aug_seeds = rng.integers(0, 2**31 - 1, size=len(order))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = 0
        for idx in self.batches:
            xs = []
            for i in idx:
                xs.append(self.store.train_sample(self.samples[i].sample_id, self.aug, int(self.aug_seeds[k])))
                k += 1
            targets = [self.samples[i].target for i in idx]
            y = torch.tensor(targets, dtype=torch.float32 if self.regression else torch.long)
            yield torch.from_numpy(np.stack(xs)), y


def predict_arrays(model: torch.nn.Module, arrays: Sequence[np.ndarray], device: str, batch_size: int = 2,
                   regression: bool = False) -> np.ndarray:
    """(N, K) softmax probabilities (or raw outputs for regression) of preprocessed (1, D, H, W) inputs."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(arrays), batch_size):
            x = torch.from_numpy(np.stack(arrays[i:i + batch_size])).to(device)
            y = model(x).float()
            outs.append((y if regression else torch.softmax(y, 1)).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0))


# -- model -----------------------------------------------------------------------------------
def head_prefix(model: torch.nn.Module) -> str | None:
    """State-dict key prefix of the model's classifier head (its ``head`` attribute), e.g. ``'head.'``."""
    head = getattr(model, "head", None)
    if not isinstance(head, torch.nn.Module):
        return None
    for name, mod in model.named_modules():
        if mod is head and name:
            return name + "."
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).exists():
                return p / name
        raise InputError(f"{p}: no best.pt or last.pt in this run folder")
    if not p.exists():
        raise InputError(f"classification.finetune_from: checkpoint {p} not found "
                         "(train the pretraining recipe first, e.g. ctdl train recipes/viptt_pretrain_video.yaml)")
    return p


def load_finetune(model: torch.nn.Module, path: str | Path, replace_head: bool = True) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model``; with ``replace_head`` the head keeps its new initialisation.

    Every other key must match in name and shape (errors list them), so the backbone is carried over whole.
    """
    from ctdl.models.weights import load_weights, read_state_dict

    ckpt = resolve_checkpoint(path)
    state = read_state_dict(ckpt)
    prefix = head_prefix(model)
    info: dict[str, Any] = {"finetuned_from": str(ckpt), "head_replaced": False}
    if replace_head:
        if prefix is None:
            raise ConfigError(f"classification.replace_head: model {type(model).__name__} has no 'head' attribute")
        old = {k: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        load_weights(model, state, source=ckpt, ignore=(prefix,))
        info.update(head_replaced=True, old_head_shapes=old)
    else:
        load_weights(model, state, source=ckpt)
    return info


def build_model(cfg: ExperimentConfig, out_channels: int, in_channels: int | None = None) -> torch.nn.Module:
    """Model from the registry, or the DLAE layer list in ``model.layers``, with this task's input channels
    (``model.in_channels``, else ``in_channels``: what the data holds, else 1) and output count."""
    in_ch = cfg.model.in_channels or in_channels or 1
    if cfg.model.layers:
        from ctdl.models.layerlist import build_layer_list

        net = build_layer_list(list(cfg.model.layers), in_channels=in_ch, logits=cfg.task != "regression")
        if tuple(net.output_shape) != (out_channels,):
            what = "values per target vector" if cfg.task == "regression" else "classes (data.classes)"
            raise ConfigError(f"model.layers: the list ends in an output of shape {tuple(net.output_shape)}, but the "
                              f"data has {out_channels} {what}; the last Dense entry must be Dense:{out_channels}")
        if net.dims == 3:  # layer lists take (C, rows, cols, slices); ctdl's 3D samples are (C, D, H, W)
            from ctdl.tasks.gan import LayerListAdapter

            return LayerListAdapter(net, 3)
        return net
    from ctdl.models import create_model

    params = dict(cfg.model.params)
    params.setdefault("in_channels", in_ch)
    params.setdefault("out_channels", out_channels)
    return create_model(cfg.model.name, **params)


def load_pretrained(model: torch.nn.Module, path: str | Path) -> None:
    """ImageNet-style weights from a local file: a model's own ``load_vgg`` when it has one (ViPTT-Net), else the
    whole model strictly (missing / unexpected / mis-shaped keys are listed)."""
    from ctdl.models.weights import load_weights, read_state_dict

    if hasattr(model, "load_vgg"):
        model.load_vgg(path)
    else:
        load_weights(model, read_state_dict(path), source=path)


def freeze(model: torch.nn.Module, prefixes: Sequence[str]) -> int:
    """Set requires_grad=False on parameters whose names start with any prefix; returns how many tensors."""
    n = 0
    for name, p in model.named_parameters():
        if any(name == pre or name.startswith(pre.rstrip(".") + ".") for pre in prefixes):
            p.requires_grad_(False)
            n += 1
    if prefixes and n == 0:
        raise ConfigError(f"classification.freeze: no parameter name starts with {list(prefixes)}")
    return n


def class_weights(cfg: ExperimentConfig, train: list[Sample], n_classes: int) -> list[float] | None:
    """loss.class_weights: None, a list, or 'balanced' over the training samples (scikit-learn's rule)."""
    cw = cfg.loss.class_weights
    if cw is None or cfg.task == "regression":
        return None
    if cw == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        y = np.array([s.target for s in train])
        present = np.unique(y)
        if len(present) != n_classes:
            raise ConfigError(f"loss.class_weights 'balanced': classes {sorted(set(range(n_classes)) - set(present.tolist()))} "
                              "have no training samples")
        weights = [float(w) for w in compute_class_weight("balanced", classes=np.arange(n_classes), y=y)]
    else:
        if len(cw) != n_classes:
            raise ConfigError(f"loss.class_weights has {len(cw)} values for {n_classes} classes")
        weights = [float(w) for w in cw]
    if cfg.loss.class_weight_factors:
        weights = [w * f for w, f in zip(weights, cfg.loss.class_weight_factors)]
    return weights


def build_loss(cfg: ExperimentConfig, weights: list[float] | None) -> torch.nn.Module:
    from ctdl.losses.registry import loss_from_config

    return loss_from_config(cfg.loss.name, cfg.loss.params, weights)


# -- training --------------------------------------------------------------------------------
def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _write_json(path: Path, data: Any) -> None:
    from ctdl.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a classifier (or regressor) on whole volumes / clips; writes one run folder and scores the eval split."""
    from ctdl.engine.callbacks import default_callbacks
    from ctdl.engine.optimizers import build_optimizer
    from ctdl.engine.rundir import write_run_summary
    from ctdl.engine.schedules import build_scheduler
    from ctdl.engine.trainer import Trainer, load_checkpoint, seed_everything
    from ctdl.models import count_parameters

    t0 = time.time()
    regression = cfg.task == "regression"
    if cfg.training.monitor.startswith("val_dice"):  # the schema's default is segmentation's; DLAE watched val_loss
        log.info("training.monitor '%s' is a segmentation metric: monitoring val_loss (min)", cfg.training.monitor)
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"monitor": "val_loss",
                                                                                  "monitor_mode": "min"})})
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    seed_everything(cfg.seed, cfg.training.deterministic)
    device = _device(cfg.training.device)
    timing: dict[str, float] = {}

    hdf5 = cfg.data.format == "hdf5"
    if hdf5:
        samples, arrays = hdf5_samples(cfg)
        classes = list(cfg.data.classes)
    else:
        samples, classes = resolve_samples(cfg, progress)
    split = make_split(cfg, samples)
    from ctdl.data.splits import save_split

    save_split(split, run_dir / "split.json")
    by_id = {s.sample_id: s for s in samples}
    train_s = [by_id[i] for i in split["train"]]
    val_s = [by_id[i] for i in split["val"]]
    if not train_s:
        raise ConfigError("data.split: the training split is empty")
    t1 = time.time()
    store: SampleStore | Hdf5Store = Hdf5Store(cfg, arrays) if hdf5 else SampleStore(cfg, samples, progress)
    timing["preprocess_s"] = round(time.time() - t1, 1)
    in_channels = store.channels if isinstance(store, Hdf5Store) else None

    n_out = len(train_s[0].target) if regression else len(classes)
    seed_everything(cfg.seed, cfg.training.deterministic)  # the model's init does not depend on the data step
    model = build_model(cfg, n_out, in_channels)
    extra: dict[str, Any] = {}
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
        extra["pretrained"] = str(cfg.model.pretrained)
    if cfg.classification.finetune_from:
        extra.update(load_finetune(model, cfg.classification.finetune_from, cfg.classification.replace_head))
    if cfg.classification.freeze:
        extra["frozen_tensors"] = freeze(model, cfg.classification.freeze)
    weights = class_weights(cfg, train_s, n_out)
    loss_fn = build_loss(cfg, weights)
    val_loss_fn = build_loss(cfg, None)  # Keras applies class weights to training only
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, trainable)
    monitor = cfg.training.monitor if val_s else "train_loss"
    mode = cfg.training.monitor_mode if val_s else "min"
    scheduler = build_scheduler(cfg.schedule, optimizer, cfg.training.epochs, mode=mode)
    aug = build_hdf5_augmentation(cfg, hdf5_context(cfg)) if hdf5 else build_image_augmentation(cfg)

    def loader(epoch: int) -> EpochBatches:
        return EpochBatches(store, train_s, cfg.training.batch_size, cfg.seed, epoch, cfg.training.shuffle, aug,
                            regression, cfg.augmentation.rounds)

    def validate(m: torch.nn.Module) -> dict[str, float]:
        return _score(m, [store[s.sample_id] for s in val_s], [s.target for s in val_s], classes, device,
                      cfg.training.batch_size, regression, val_loss_fn, short=True)

    meta = {"config": config_to_dict(cfg), "classes": classes, "task": cfg.task, "class_weights": weights,
            "split": split, "n_outputs": n_out, "in_channels": in_channels, **extra}
    trainer = Trainer(
        model, optimizer, scheduler, loss_fn, loader, validate if val_s else None, run_dir, cfg.training.epochs,
        callbacks=default_callbacks(cfg, run_dir, progress=progress), device=device, grad_clip=cfg.training.grad_clip,
        amp=cfg.training.amp, channels_last=cfg.training.channels_last, monitor=monitor, monitor_mode=mode, seed=cfg.seed,
        steps_per_epoch=cfg.training.steps_per_epoch, val_every=cfg.training.val_every, progress=progress,
        deterministic=cfg.training.deterministic, checkpoint_meta=meta,
    )
    t1 = time.time()
    resume_from = run_dir / "last.pt" if resume and (run_dir / "last.pt").exists() else None
    fit = trainer.fit(resume_from=resume_from)
    timing["train_s"] = round(time.time() - t1, 1)
    if trainer.restored_best_epoch is None and (run_dir / "best.pt").exists():
        model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])  # best weights, as EarlyStopping would

    # final evaluation
    which = cfg.classification.eval_split
    if which == "auto":
        which = "test" if split["test"] else "val"
    eval_s = [by_id[i] for i in split[which]]
    metrics: dict[str, Any] = {}
    t1 = time.time()
    if eval_s:
        arrays = [store[s.sample_id] for s in eval_s]
        out = predict_arrays(model, arrays, device, max(1, cfg.training.batch_size), regression)
        metrics = write_evaluation(run_dir, eval_s, out, classes, regression)
    timing["eval_s"] = round(time.time() - t1, 1)
    timing["total_s"] = round(time.time() - t0, 1)
    _write_json(run_dir / "timing.json", timing)
    write_run_summary(run_dir, cfg.task, cfg.model.name, count_parameters(model), metrics, timing,
                      eval_split=which, n_eval=len(eval_s), best_epoch=fit.get("best_epoch"),
                      epochs_completed=fit.get("epochs_completed"), classes=classes,
                      finetuned_from=extra.get("finetuned_from"), zoom_order=cfg.preprocessing.zoom_order)
    if cfg.classification.report:
        try:
            from ctdl.report.classification import write_classification_report

            write_classification_report(run_dir)
        except Exception as exc:  # the report must never lose the run
            log.warning("report failed: %s", exc)
    return run_dir


def _score(model: torch.nn.Module, arrays: list[np.ndarray], targets: list[Any], classes: list[str], device: str,
           batch_size: int, regression: bool, loss_fn: torch.nn.Module, short: bool = False) -> dict[str, float]:
    """Validation loss and metrics (kappa, accuracy, macro AUC; MSE/MAE for regression)."""
    from ctdl.metrics.classification import classification_metrics, regression_metrics

    model.eval()
    logits = []
    with torch.no_grad():
        for i in range(0, len(arrays), max(1, batch_size)):
            x = torch.from_numpy(np.stack(arrays[i:i + batch_size])).to(device)
            logits.append(model(x).float().cpu())
    lg = torch.cat(logits)
    y = torch.tensor(targets, dtype=torch.float32 if regression else torch.long)
    out = {"loss": float(loss_fn(lg, y))}
    if regression:
        out.update(regression_metrics(np.asarray(targets), lg.numpy()))
        return out
    m = classification_metrics(np.asarray(targets), torch.softmax(lg, 1).numpy(), classes)
    keys = ("kappa", "accuracy", "macro_auc", "macro_f1") if short else tuple(m)
    out.update({k: m[k] for k in keys})
    return out


def write_evaluation(run_dir: Path, samples: list[Sample], out: np.ndarray, classes: list[str],
                     regression: bool) -> dict[str, float]:
    """predictions.csv, confusion_matrix.csv, metrics_summary.csv; returns the flat metrics for summary.json."""
    from ctdl.io.atomic import atomic_path
    from ctdl.metrics.classification import classification_metrics, confusion_matrix, regression_metrics

    with atomic_path(run_dir / "predictions.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            if regression:
                w.writerow(["sample_id", "path"] + [f"true_{i}" for i in range(out.shape[1])]
                           + [f"pred_{i}" for i in range(out.shape[1])])
                for s, row in zip(samples, out):
                    w.writerow([s.sample_id, s.path, *s.target, *(f"{v:.6g}" for v in row)])
            else:
                w.writerow(["sample_id", "path", "true", "pred"] + [f"prob_{c}" for c in classes])
                for s, row in zip(samples, out):
                    w.writerow([s.sample_id, s.path, classes[s.target], classes[int(row.argmax())],
                                *(f"{v:.6f}" for v in row)])
    if regression:
        metrics = regression_metrics(np.array([s.target for s in samples]), out)
    else:
        y = np.array([s.target for s in samples])
        metrics = classification_metrics(y, out, classes)
        cm = confusion_matrix(y, out.argmax(1), len(classes))
        with atomic_path(run_dir / "confusion_matrix.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["true \\ pred", *classes])
                for c, row in zip(classes, cm):
                    w.writerow([c, *row.tolist()])
    # metrics_summary.csv (run-folder contract): one value per metric over the n scored samples
    with atomic_path(run_dir / "metrics_summary.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["metric", "mean", "std", "min", "max", "n", "n_nan"])
            for k, v in metrics.items():
                nan = int(not np.isfinite(v))
                w.writerow([k, v, "", v, v, len(samples), nan])
    return metrics


# -- prediction ------------------------------------------------------------------------------
def predict_paths(model: str | Path, inputs: str | Path, output: str | Path, device: str = "auto") -> list[Path]:
    """`ctdl predict` for classifiers: a volume, a clip, a folder of them, or a DLAE HDF5 image file -> one CSV of
    classes + probabilities (regression: the predicted vectors)."""
    from ctdl.engine.trainer import load_checkpoint
    from ctdl.io.video import VIDEO_EXTS, is_clip

    dev = _device(device)
    ckpt_path = resolve_checkpoint(model)
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt.get("meta") or {}
    if "config" not in meta:
        raise InputError(f"{ckpt_path}: checkpoint carries no config (not written by ctdl train)")
    cfg = config_from_dict(meta["config"], f"{ckpt_path}:meta.config")
    classes = list(meta.get("classes") or cfg.data.classes)
    regression = cfg.task == "regression"
    net = build_model(cfg, int(meta.get("n_outputs") or len(classes)), meta.get("in_channels"))
    net.load_state_dict(ckpt["model"])
    net.to(dev)
    src = Path(inputs)
    if not src.exists():
        raise InputError(f"{src}: input not found")
    if src.is_file() and src.name.lower().endswith((".h5", ".hdf5")):  # a DLAE image file: one row per dataset
        from ctdl.io.hdf5 import dlae_sample_channels_first, read_dlae_hdf5

        ctx = hdf5_context(cfg)
        raw = {str(i): dlae_sample_channels_first(a, ctx) for i, a in enumerate(read_dlae_hdf5(src))}
        h5_store = Hdf5Store(cfg, raw)
        samples = [Sample(sid, src, 0 if not regression else [], None, "hdf5", int(sid)) for sid in raw]
        out = predict_arrays(net, [h5_store[s.sample_id] for s in samples], dev, 2, regression)
        return [_write_predictions(Path(output), samples, out, classes, regression)]
    clip_mode = cfg.data.format in VIDEO_FORMATS

    def as_sample(p: Path) -> Sample:
        return Sample(_stem(p), p, 0 if not regression else [], None, "clip" if clip_mode or p.suffix.lower() in VIDEO_EXTS else "volume")

    if src.is_dir() and not (clip_mode and is_clip(src)) and not any(f.suffix.lower() == ".dcm" for f in src.iterdir()):
        items = [p for p in sorted(src.iterdir()) if not p.name.startswith(".")
                 and (p.name.lower().endswith(VOLUME_SUFFIXES) or (clip_mode and is_clip(p)))]
        if not items:
            raise InputError(f"{src}: no volumes or clips found")
    else:
        items = [src]
    samples = [as_sample(p) for p in items]
    arrays = [prepare_array(s, cfg) for s in tqdm(samples, desc="predict", disable=None if len(samples) > 1 else True)]
    out = predict_arrays(net, arrays, dev, 2, regression)
    return [_write_predictions(Path(output), samples, out, classes, regression)]


def _write_predictions(output: Path, samples: Sequence[Sample], out: np.ndarray, classes: list[str],
                       regression: bool) -> Path:
    """``ctdl predict``'s CSV (``output`` itself when it ends in .csv, else ``output/predictions.csv``), atomically."""
    from ctdl.io.atomic import atomic_path

    dst = output if output.suffix.lower() == ".csv" else output / "predictions.csv"
    with atomic_path(dst) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            if regression:
                w.writerow(["sample_id", "path"] + [f"pred_{i}" for i in range(out.shape[1])])
                for s, row in zip(samples, out):
                    w.writerow([s.sample_id, s.path, *(f"{v:.6g}" for v in row)])
            else:
                w.writerow(["sample_id", "path", "pred"] + [f"prob_{c}" for c in classes])
                for s, row in zip(samples, out):
                    w.writerow([s.sample_id, s.path, classes[int(row.argmax())], *(f"{v:.6f}" for v in row)])
    return dst


# -- strategies (until `ctdl sweep` lands) ---------------------------------------------------
def run_strategies(sweep_file: str | Path, progress: bool = False, only: Sequence[str] | None = None,
                   pretrain: str | Path | None = None) -> list[dict[str, Any]]:
    """Run the listed ``runs`` of a sweep file (base recipe + dotted overrides + optional scale) one after the
    other and return one row per run with the file's ``columns``; prints the Table-1-shaped table.

    Runs whose finetune_from checkpoint is missing get it by first training the ``pretrain`` recipe at the same
    scale. ``grid`` is not handled here (``ctdl sweep`` does that).
    """
    import yaml

    from ctdl.config.load import load_config
    from ctdl.config.scale import apply_scale
    from ctdl.engine.rundir import read_run_summary

    sweep_file = Path(sweep_file)
    spec = yaml.safe_load(sweep_file.read_text()) or {}
    for key in ("base", "runs"):
        if key not in spec:
            raise ConfigError(f"{sweep_file}: '{key}' is required")
    base = sweep_file.parent / spec["base"]
    scale = spec.get("scale")
    out_root = Path(spec.get("output", "runs/sweeps/" + sweep_file.stem))
    columns = list(spec.get("columns") or ["kappa", "accuracy"])
    rows = []
    for run in spec["runs"]:
        name = run["name"]
        if only and name not in only:
            continue
        overrides = [f"{k}={json.dumps(v) if v is not None else 'null'}" for k, v in (run.get("set") or {}).items()]
        cfg = load_config(base)
        if scale:
            cfg = apply_scale(cfg, scale, base)
        data = config_to_dict(cfg)
        from ctdl.config.load import apply_overrides

        data = apply_overrides(data, overrides + [f"name={name}", f"output_dir={out_root}"])
        cfg = config_from_dict(data, f"{sweep_file} run {name}")
        ft = cfg.classification.finetune_from
        if ft is not None and not Path(ft).exists() and pretrain:
            pcfg = load_config(pretrain)
            if scale:
                pcfg = apply_scale(pcfg, scale, pretrain)
            print(f"[{name}] {ft} missing: training {pretrain} first")
            from ctdl.api import train as api_train

            api_train(pcfg, progress=progress)
        print(f"[{name}] training -> {cfg.run_dir}")
        from ctdl.api import train as api_train

        run_dir = api_train(cfg, progress=progress)
        summ = read_run_summary(run_dir) or {}
        m = summ.get("metrics", {})
        rows.append({"name": name, **{c: m.get(c) for c in columns}, "train_s": summ.get("timing", {}).get("train_s")})
    print(format_table(rows, ["name", *columns, "train_s"]))
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (floats with 2 decimals, as in the paper's Table 1)."""
    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))

    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) if rows else len(c) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ctdl.tasks.classification recipes/viptt_strategies.yaml [--only a b]``: the strategies table."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ctdl.tasks.classification")
    ap.add_argument("sweep")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--pretrain", help="recipe trained first when a run's finetune_from checkpoint is missing")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    run_strategies(args.sweep, args.progress, args.only, args.pretrain)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
