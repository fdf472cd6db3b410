"""DLAE HDF5 pairs as training data (``data.format: hdf5``).

Segmentation: every sample of ``data.train_x``/``train_y`` (and ``val_x``/``val_y``,
``test_x``/``test_y``) becomes one case. The samples are written once as NIfTI volumes into the
cache (``<cache_dir>/hdf5_<key>/``), so the segmentation task runs its normal pipeline on them
unchanged; a 2D sample (rows, cols[, 1]) becomes a one-slice volume (1, H, W), a 3D sample
(rows, cols, slices[, 1]) a (D, H, W) volume. DLAE's per-sample centring, standardisation and
ZCA (``preprocessing.center``/``std_normalize``/``zca_epsilon``) are applied here, before the
pipeline's normalization, which is DLAE's order. One-hot label maps are turned back into class
indices. The validation split is DLAE's (first ceil(n * val) samples of the training file after a
shuffle), seeded.

Other tasks read the arrays directly with :func:`load_hdf5_arrays` (classification: class ids, one-hot
labels arg-maxed, or regression vectors) and split sample ids with :func:`hdf5_split_ids`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ctdl.data.datasets import Case
from ctdl.data.dlae_transforms import dlae_sample_chain
from ctdl.errors import ConfigError, InputError
from ctdl.io.atomic import atomic_write_text
from ctdl.io.hdf5 import (
    check_dlae_pair,
    check_dlae_sample,
    dlae_sample_channels_first,
    dlae_sample_to_volume,
    read_dlae_hdf5,
)

_VERSION = 1
_PARTS = (("train", "train_x", "train_y"), ("val", "val_x", "val_y"), ("test", "test_x", "test_y"))


def _context(cfg: Any) -> str:
    return "2D" if cfg.sampling.mode == "slices2d" else "3D"


def _stamp(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _label_indices(y: np.ndarray, ctx: str, n_classes: int, where: str) -> np.ndarray:
    """A label map as class indices: a trailing 1 dropped, a one-hot axis arg-maxed, values checked."""
    base = 2 if ctx == "2D" else 3
    y = np.asarray(y)
    if y.ndim == base + 1:
        y = y[..., 0] if y.shape[-1] == 1 else np.argmax(y, axis=-1)
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise InputError(f"{where}: label map has non-integer values; segmentation needs class indices")
    y = np.rint(y).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise InputError(f"{where}: label values {int(y.min())}..{int(y.max())} outside the declared classes "
                         f"0..{n_classes - 1} (data.classes)")
    return y.astype(np.uint8)


def hdf5_cases(cfg: Any, cache_root: str | Path, progress: bool = True) -> list[Case]:
    """Cases of a DLAE HDF5 dataset for segmentation (NIfTI copies in the cache; ``Case.split`` set)."""
    from ctdl.io import write_volume

    d, pre = cfg.data, cfg.preprocessing
    if d.train_x is None:
        raise ConfigError("data.train_x and data.train_y are required for data.format hdf5")
    ctx = _context(cfg)
    files = [(part, Path(getattr(d, kx)), Path(getattr(d, ky))) for part, kx, ky in _PARTS
             if getattr(d, kx) is not None and getattr(d, ky) is not None]
    for _, x, y in files:
        check_dlae_pair(x, y)
    key = {"v": _VERSION, "ctx": ctx, "files": [[p, _stamp(x), _stamp(y)] for p, x, y in files],
           "center": pre.center, "std": pre.std_normalize, "zca": pre.zca_epsilon, "n_classes": cfg.n_classes}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_root) / f"hdf5_{digest}"
    index = root / "cases.json"
    if index.exists():
        rows = json.loads(index.read_text())
        return [Case(r["id"], root / r["image"], root / r["label"], split=r["split"]) for r in rows]
    rows: list[dict[str, str]] = []
    for part, x_path, y_path in files:
        xs, ys = read_dlae_hdf5(x_path), read_dlae_hdf5(y_path)
        for i, (x, y) in enumerate(tqdm(list(zip(xs, ys)), desc=f"hdf5 {part}", leave=False,
                                        disable=None if progress else True)):
            where = f"{x_path} / {y_path} sample '{i}'"
            check_dlae_sample(x, y, "fcn", ctx, cfg.n_classes, where=where)
            xc = dlae_sample_channels_first(x, ctx)
            if xc.shape[0] != 1:
                raise InputError(f"{where}: image has {xc.shape[0]} channels; the segmentation task reads "
                                 "single-channel samples (use preprocessing.repeat_channels for DLAE repeat_X)")
            xc = dlae_sample_chain(xc, 1, pre.center, pre.std_normalize, pre.zca_epsilon)
            image = dlae_sample_to_volume(xc[0] if ctx == "2D" else np.transpose(xc[0], (1, 2, 0)), ctx)
            label = dlae_sample_to_volume(_label_indices(y, ctx, cfg.n_classes, where), ctx)
            cid = f"{part}_{i:05d}"
            write_volume(image, root / f"{cid}_image.nii.gz")
            write_volume(label, root / f"{cid}_label.nii.gz")
            rows.append({"id": cid, "image": f"{cid}_image.nii.gz", "label": f"{cid}_label.nii.gz", "split": part})
    atomic_write_text(index, json.dumps(rows, indent=1) + "\n")
    return [Case(r["id"], root / r["image"], root / r["label"], split=r["split"]) for r in rows]


def hdf5_split(cfg: Any, cases: list[Case]) -> dict[str, list[str]]:
    """train/val/test ids: separate validation/test files when given, else DLAE's seeded split of the training file.

    With validation files the fraction is not used (explicit files win; DLAE instead ignored the
    files whenever validation_split > 0). Without a test file, ``data.split.test`` takes the next
    ceil(n * test) shuffled samples.
    """
    by_part: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in cases:
        by_part[c.split or "train"].append(c.case_id)
    return hdf5_split_ids(cfg, by_part)


def hdf5_split_ids(cfg: Any, by_part: dict[str, list[str]]) -> dict[str, list[str]]:
    """:func:`hdf5_split` on sample ids grouped by the file they came from (``train``/``val``/``test``).

    Any task reading DLAE HDF5 data (segmentation cases, classification samples) splits this way.
    """
    s = cfg.data.split
    seed = cfg.seed if s.seed is None else s.seed
    by_part = {k: list(by_part.get(k) or []) for k in ("train", "val", "test")}
    train = by_part["train"]
    n = len(train)
    order = np.random.default_rng(seed).permutation(n) if cfg.training.shuffle else np.arange(n)
    n_val = 0 if by_part["val"] else int(np.ceil(round(n * s.val, 9)))
    n_test = 0 if by_part["test"] else int(np.ceil(round(n * s.test, 9)))
    val_idx, test_idx = set(order[:n_val].tolist()), set(order[n_val:n_val + n_test].tolist())
    split = {
        "train": [cid for i, cid in enumerate(train) if i not in val_idx and i not in test_idx],
        "val": by_part["val"] or [cid for i, cid in enumerate(train) if i in val_idx],
        "test": by_part["test"] or [cid for i, cid in enumerate(train) if i in test_idx],
    }
    if not split["train"]:
        raise ConfigError(f"data.split: no training samples left of {n} (val {s.val}, test {s.test})")
    return split


def cnn_class_id(y: np.ndarray, n_classes: int, where: str) -> int:
    """A DLAE CNN classification annotation as a class index: one integer (shape (), (1,) or (1, 1)) or a one-hot
    vector of ``n_classes`` (shape (C,) or (1, C), one 1 and zeros elsewhere)."""
    a = np.asarray(y)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{where}: a class label must be numeric, got dtype {a.dtype}")
    flat = a.reshape(-1)
    if a.ndim <= 2 and flat.size == 1:
        v = float(flat[0])
        if not np.isfinite(v) or v != int(v) or not 0 <= v < n_classes:
            raise InputError(f"{where}: class label {v:g} is not an integer in 0..{n_classes - 1} "
                             f"({n_classes} classes in data.classes)")
        return int(v)
    if a.ndim <= 2 and flat.size == a.shape[-1] == n_classes and np.all((flat == 0) | (flat == 1)) \
            and int(flat.sum()) == 1:
        return int(np.argmax(flat))
    raise InputError(f"{where}: annotation of shape {a.shape} is neither a class id (shape (1,)) nor a one-hot "
                     f"vector of the {n_classes} classes in data.classes (shape ({n_classes},), a single 1); "
                     f"values {flat[:8].tolist()}{' ...' if flat.size > 8 else ''}")


def load_hdf5_arrays(cfg: Any, part: str = "train", model: str = "fcn",
                     context: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, annotation) pairs of one part (train/val/test) for any task, images channels-first.

    ``model`` is an ``ctdl.io.hdf5.MODEL_TYPES`` layout; images become (C, H, W) or (C, D, H, W);
    annotations keep DLAE's layout (label map or boxes), except that a CNN classification label is
    always returned as its class id, shape (1,) (one-hot vectors are arg-maxed), and a CNN regression
    target as a float32 vector. ``context`` ('2D'/'3D') overrides the one derived from the config
    (``sampling.mode``). Files with different sample counts are a :class:`ConfigError` naming both
    fields and files.
    """
    keys = {p: (kx, ky) for p, kx, ky in _PARTS}
    if part not in keys:
        raise ValueError(f"part must be train, val or test, got {part!r}")
    kx, ky = keys[part]
    x, y = getattr(cfg.data, kx), getattr(cfg.data, ky)
    if x is None or y is None:
        return []
    if context is not None:
        ctx = str(context).upper()
    else:
        ctx = _context(cfg) if model in ("fcn", "gan") else ("2D" if model == "bbd" or cfg.sampling.mode == "slices2d" else "3D")
    n_classes = None if model in ("gan", "cnn_regression") else (cfg.n_classes - 1 if model == "bbd" else cfg.n_classes)
    xs, ys = read_dlae_hdf5(x), read_dlae_hdf5(y)
    if len(xs) != len(ys):
        raise ConfigError(f"data.{kx} / data.{ky}: {x} holds {len(xs)} samples but {y} holds {len(ys)}; DLAE pairs "
                          f"image '<i>' with annotation '<i>', so both files need the same samples '0'..'n-1'")
    out = []
    for i, (a, b) in enumerate(zip(xs, ys)):
        where = f"{x} / {y} (data.{kx} / data.{ky}) sample '{i}'"
        if model == "cnn_classification":
            b = np.array([cnn_class_id(b, int(n_classes), where)], np.int64)  # type: ignore[arg-type]
        check_dlae_sample(a, b, model, ctx, n_classes, where=where)
        if model == "cnn_regression":
            b = np.asarray(b, np.float32)
            if not np.all(np.isfinite(b)):
                raise InputError(f"{where}: regression target {b.tolist()[:8]} has non-finite values")
            if out and b.shape != out[0][1].shape:
                raise InputError(f"{where}: regression target has {b.size} values, sample '0' has {out[0][1].size} "
                                 "(every target vector needs the same length)")
        out.append((dlae_sample_channels_first(a, ctx), b))
    return out


__all__ = ["cnn_class_id", "hdf5_cases", "hdf5_split", "hdf5_split_ids", "load_hdf5_arrays"]
