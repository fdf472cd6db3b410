"""DLAE HDF5 layout: one file of images, one of annotations, one dataset per sample.

Per the DLAE manual, each sample is a top-level dataset named "0".."n-1" and an image is
paired with the annotation of the same name. Samples are channels-last (Keras): 2D
``(rows, cols[, ch])``, 3D ``(rows, cols, slices[, ch])``. Detection annotations are
``(n_boxes, 5)`` rows ``(class_id, xmin, ymin, xmax, ymax)`` with ``class_id >= 1``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_path
from ctdl.io.volume import Volume, affine_from_geometry

_INDEX = re.compile(r"0|[1-9][0-9]*")
_SHOW = 20  # names quoted in an error message at most


def _short(items: Sequence[Any]) -> str:
    items = list(items)
    more = f" ... ({len(items)} in all)" if len(items) > _SHOW else ""
    return f"{items[:_SHOW]}{more}"


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: HDF5 file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _name_order(names: set[str]) -> list[str]:
    """Index names numerically first, anything else after, alphabetically."""
    return sorted(names, key=lambda n: (0, int(n), n) if _INDEX.fullmatch(n) else (1, 0, n))


def _sample_names(f: h5py.File, path: Path) -> list[str]:
    """Dataset names in sample order; the names must be exactly '0'..'n-1'."""
    names = list(f.keys())
    groups = [n for n in names if not isinstance(f[n], h5py.Dataset)]
    if groups:
        raise InputError(f"{path}: DLAE files hold only datasets at the top level; these are groups: {_short(groups)}")
    bad = [n for n in names if not _INDEX.fullmatch(n)]
    if bad:
        raise InputError(
            f"{path}: DLAE dataset names must be sample indices '0'..'n-1'; bad names: {_short(sorted(bad))}"
        )
    idx = sorted(int(n) for n in names)
    if idx and idx[-1] != len(idx) - 1:
        missing = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise InputError(
            f"{path}: DLAE samples must be numbered 0..n-1 without gaps; {len(idx)} samples up to "
            f"'{idx[-1]}', missing {_short([str(i) for i in missing])}"
        )
    return [str(i) for i in idx]


def read_dlae_hdf5(path: str | Path) -> list[np.ndarray]:
    """Read every sample of a DLAE HDF5 file, in sample order (dataset '0' first)."""
    path = Path(path)
    with _open(path) as f:
        names = _sample_names(f, path)
        try:
            return [np.asarray(f[n][()]) for n in names]
        except OSError as exc:
            raise InputError(f"{path}: cannot read sample data ({exc}); truncated or corrupt file?") from exc


def write_dlae_hdf5(path: str | Path, arrays: Sequence[np.ndarray]) -> Path:
    """Write samples as datasets '0'..'n-1' (DLAE layout), atomically."""
    path = Path(path)
    arrays = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrays):
        if a.dtype.kind not in "biuf":
            raise InputError(f"{path}: sample {i} has dtype {a.dtype}; expected a numeric or boolean array")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for i, a in enumerate(arrays):
                f.create_dataset(str(i), data=a)
    return path


def check_dlae_pair(x_path: str | Path, y_path: str | Path) -> int:
    """Check an image file and its annotation file hold the same sample names; return the count."""
    x_path, y_path = Path(x_path), Path(y_path)
    with _open(x_path) as fx, _open(y_path) as fy:
        nx, ny = set(fx.keys()), set(fy.keys())
        if nx != ny:
            parts = []
            if nx - ny:
                parts.append(f"missing from {y_path}: {_short(_name_order(nx - ny))}")
            if ny - nx:
                parts.append(f"missing from {x_path}: {_short(_name_order(ny - nx))}")
            raise InputError(
                f"{x_path} and {y_path}: images and annotations must have identical sample names; "
                + "; ".join(parts)
            )
        names = _sample_names(fx, x_path)
        _sample_names(fy, y_path)
    return len(names)


def hdf5_info(path: str | Path) -> dict[str, Any]:
    """Summary of a DLAE HDF5 file for ``ctdl data info``: sample count, shapes and dtypes seen."""
    path = Path(path)
    with _open(path) as f:
        names = _sample_names(f, path)
        shapes = Counter(tuple(int(s) for s in f[n].shape) for n in names)
        dtypes = Counter(str(f[n].dtype) for n in names)
        lo = hi = None
        values: set[float] = set()
        for n in names[:2000]:  # value range over (at most) the first 2000 samples
            a = f[n][()]
            if a.size:
                lo = float(a.min()) if lo is None else min(lo, float(a.min()))
                hi = float(a.max()) if hi is None else max(hi, float(a.max()))
                if a.dtype.kind in "biu" and len(values) <= 64:
                    values.update(np.unique(a).tolist())
    return {
        "content": guess_annotation_kind(list(shapes), list(dtypes)),
        "value_range": [lo, hi],
        "integer_values": sorted(values) if values and len(values) <= 64 else None,
        "path": str(path),
        "n_samples": len(names),
        "shapes": sorted(shapes),
        "shape_counts": {str(s): c for s, c in sorted(shapes.items())},
        "dtypes": sorted(dtypes),
        "ndims": sorted({len(s) for s in shapes}),
    }


def _context(context: str) -> str:
    ctx = str(context).upper()
    if ctx not in ("2D", "3D"):
        raise InputError(f"DLAE context must be '2D' or '3D', got {context!r}")
    return ctx


def _channel_count(arr: np.ndarray, ctx: str) -> int:
    """Channels in a channels-last sample (1 when the channel axis is absent); validates ndim."""
    base = 2 if ctx == "2D" else 3
    if arr.ndim == base:
        return 1
    if arr.ndim == base + 1:
        return int(arr.shape[-1])
    layout = "(rows, cols[, ch])" if ctx == "2D" else "(rows, cols, slices[, ch])"
    raise InputError(f"a {ctx} DLAE sample must be {layout}, got shape {arr.shape}")


def dlae_sample_to_volume(
    arr: np.ndarray, context: str, spacing: tuple[float, ...] | None = None
) -> Volume:
    """Single-channel DLAE sample -> Volume: 3D (r, c, s[, 1]) -> (s, r, c); 2D (r, c[, 1]) -> (1, r, c).

    ``spacing`` is in Volume order (D, H, W); for 2D samples (H, W) is accepted too. DLAE files
    hold no geometry, so the affine is the default one (1 mm unless given).
    """
    arr = np.asarray(arr)
    ctx = _context(context)
    channels = _channel_count(arr, ctx)
    if channels != 1:
        raise InputError(
            f"DLAE {ctx} sample of shape {arr.shape} has {channels} channels; channels are not a volume axis - "
            "use dlae_sample_channels_first() to get (C, [D,] H, W)"
        )
    base = 2 if ctx == "2D" else 3
    if arr.ndim > base:
        arr = arr[..., 0]
    if spacing is None:
        sp: tuple[float, ...] = (1.0, 1.0, 1.0)
    else:
        sp = tuple(float(s) for s in spacing)
        if ctx == "2D" and len(sp) == 2:
            sp = (1.0, *sp)
        if len(sp) != 3 or not all(s > 0 for s in sp):
            raise InputError(f"spacing must be 3 positive numbers in (D, H, W) order, got {spacing!r}")
    if ctx == "2D":
        return Volume(arr[None], affine_from_geometry(sp), {"format": "dlae-hdf5", "context": ctx})
    # file order (r, c, s); array axis 0 (slices) came from file axis 2
    vol_arr = np.transpose(arr, (2, 0, 1))
    return Volume(vol_arr, affine_from_geometry(sp), {"format": "dlae-hdf5", "context": ctx}, (2, 0, 1))


def dlae_sample_channels_first(arr: np.ndarray, context: str) -> np.ndarray:
    """Channels-last DLAE sample -> (C, H, W) for 2D or (C, D, H, W) for 3D (slices first, like Volume)."""
    arr = np.asarray(arr)
    ctx = _context(context)
    base = 2 if ctx == "2D" else 3
    _channel_count(arr, ctx)
    if arr.ndim == base:
        arr = arr[..., None]
    if ctx == "2D":
        return np.transpose(arr, (2, 0, 1))
    return np.transpose(arr, (3, 2, 0, 1))


# -- layouts per model type (reference section 2) ----------------------------------------------
MODEL_TYPES = ("cnn_classification", "cnn_regression", "fcn", "gan", "bbd")


def _spatial(arr: np.ndarray, ctx: str) -> tuple[int, ...]:
    _channel_count(arr, ctx)
    return tuple(int(s) for s in arr.shape[: 2 if ctx == "2D" else 3])


def check_dlae_sample(x: np.ndarray, y: np.ndarray, model: str, context: str = "2D", n_classes: int | None = None,
                      where: str = "sample") -> None:
    """Check one (image, annotation) pair against DLAE's layout for ``model`` (one of MODEL_TYPES).

    CNN classification: y is one integer class (shape () or (1,)), in 0..n_classes-1; regression: y
    is a vector (n,) of numbers; FCN: y has X's rows, cols (, slices), optionally a trailing 1 or a
    one-hot axis of n_classes; GAN: y has X's spatial size and any channel count; BBD (2D only): y
    is (n_boxes, 5) or (5,) rows (class_id, xmin, ymin, xmax, ymax) in pixels with class_id >= 1
    (0 is background; the manual's "start at 0" is wrong) and xmin < xmax, ymin < ymax.
    """
    ctx = _context(context)
    x, y = np.asarray(x), np.asarray(y)
    if model not in MODEL_TYPES:
        raise InputError(f"{where}: unknown DLAE model type {model!r}; expected one of {', '.join(MODEL_TYPES)}")
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise InputError(f"{where}: image and annotation must be numeric, got {x.dtype} and {y.dtype}")
    sp = _spatial(x, ctx)
    if model == "cnn_classification":
        if y.size != 1 or y.ndim > 1:
            raise InputError(f"{where}: a CNN class label is one integer (shape (1,)), got shape {y.shape}")
        v = float(y.reshape(-1)[0])
        if v != int(v) or v < 0 or (n_classes is not None and v >= n_classes):
            rng = f"0..{n_classes - 1}" if n_classes else ">= 0"
            raise InputError(f"{where}: class label {v:g} is not an integer in {rng}")
    elif model == "cnn_regression":
        if y.ndim != 1 or y.size < 1:
            raise InputError(f"{where}: a CNN regression target is a vector (n,), got shape {y.shape}")
    elif model in ("fcn", "gan"):
        ysp = tuple(int(s) for s in y.shape[: len(sp)])
        extra = y.shape[len(sp):]
        if ysp != sp or len(extra) > 1:
            raise InputError(f"{where}: annotation shape {y.shape} must have the image's spatial size {sp} "
                             f"(+ an optional channel axis), image shape {x.shape}")
        if model == "fcn" and extra and extra[0] != 1 and (n_classes is None or extra[0] != n_classes):
            raise InputError(f"{where}: an FCN label map has a trailing axis of 1 (or n_classes one-hot), got {y.shape}")
    else:
        if ctx != "2D":
            raise InputError(f"{where}: bounding-box detection data is 2D only")
        boxes = y.reshape(1, 5) if y.shape == (5,) else y
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise InputError(f"{where}: boxes must be (n_boxes, 5) rows (class_id, xmin, ymin, xmax, ymax), got {y.shape}")
        if boxes.size:
            cls = boxes[:, 0]
            if np.any(cls < 1) or np.any(cls != np.round(cls)) or (n_classes is not None and np.any(cls > n_classes)):
                top = f"1..{n_classes}" if n_classes else ">= 1"
                raise InputError(f"{where}: box class ids must be integers {top} (0 is background), got {cls.tolist()}")
            bad = (boxes[:, 1] >= boxes[:, 3]) | (boxes[:, 2] >= boxes[:, 4])
            if bad.any():
                raise InputError(f"{where}: degenerate boxes (need xmin < xmax, ymin < ymax): {boxes[bad].tolist()[:5]}")
            h, w = sp
            if np.any(boxes[:, 1:] < 0) or np.any(boxes[:, [1, 3]] > w) or np.any(boxes[:, [2, 4]] > h):
                raise InputError(f"{where}: box coordinates outside the {h} x {w} image (absolute pixels, x = column)")


def read_dlae_pairs(x_path: str | Path, y_path: str | Path, model: str, context: str = "2D",
                    n_classes: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """All (image, annotation) pairs of a DLAE file pair, checked for ``model``'s layout, in sample order."""
    check_dlae_pair(x_path, y_path)
    xs, ys = read_dlae_hdf5(x_path), read_dlae_hdf5(y_path)
    for i, (x, y) in enumerate(zip(xs, ys)):
        check_dlae_sample(x, y, model, context, n_classes, where=f"{x_path} / {y_path} sample '{i}'")
    return list(zip(xs, ys))


def write_dlae_pairs(x_path: str | Path, y_path: str | Path, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                     model: str, context: str = "2D", n_classes: int | None = None) -> tuple[Path, Path]:
    """Check every pair against ``model``'s layout, then write both files (datasets '0'..'n-1')."""
    if len(xs) != len(ys):
        raise InputError(f"{x_path}: {len(xs)} images but {len(ys)} annotations")
    for i, (x, y) in enumerate(zip(xs, ys)):
        check_dlae_sample(x, y, model, context, n_classes, where=f"sample {i}")
    return write_dlae_hdf5(x_path, xs), write_dlae_hdf5(y_path, ys)


def dlae_validation_split(n: int, fraction: float, seed: int, shuffle: bool = True) -> tuple[list[int], list[int]]:
    """DLAE's validation split of one training file, seeded: (train indices, validation indices).

    The sample order is shuffled with ``seed`` (DLAE's ``random.shuffle`` was not seeded) when
    ``shuffle``; the first ceil(n * fraction) become validation, the rest (floor(n (1 - fraction))) training.
    """
    if not 0 <= fraction < 1:
        raise InputError(f"validation split must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    n_val = int(np.ceil(round(n * fraction, 9)))
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def label_map_boxes(label: np.ndarray) -> np.ndarray:
    """DLAE BBD rows (class_id, xmin, ymin, xmax, ymax) of a 2D label map: one box per connected
    component of each label value >= 1 (x = column; xmax/ymax one past the last pixel, so a
    one-pixel object has a non-empty box). (0, 5) when the map is empty."""
    from scipy import ndimage

    rows = []
    for k in sorted(int(v) for v in np.unique(label) if v > 0):
        comps, n = ndimage.label(label == k)
        for sl in ndimage.find_objects(comps):
            if sl is not None:
                rows.append([k, sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _annotation(lab: np.ndarray, model: str) -> np.ndarray:
    if model == "fcn":
        return lab[..., None]
    if model == "cnn_classification":  # the highest label present (KiTS: 0 none, 1 kidney, 2 tumour)
        return np.array([int(lab.max()) if lab.size else 0], np.uint8)
    return label_map_boxes(lab)


def nifti_cases_to_hdf5(src: str | Path, x_path: str | Path, y_path: str | Path, context: str = "2D",
                        cases: Sequence[str] | None = None, skip_empty: bool = False, dtype: str = "float32",
                        progress: bool = True, model: str = "fcn") -> dict[str, Any]:
    """Write NIfTI cases (KiTS19 folder or images/labels folders) as a DLAE pair for ``model``.

    2D: one sample per axial slice, X (rows, cols, 1); 3D: one sample per volume, (rows, cols,
    slices, 1) (ctdl's (D, H, W) becomes DLAE's (r, c, s)). Annotations: ``fcn`` the label map
    (uint8, trailing 1); ``cnn_classification`` the highest label value present, shape (1,);
    ``bbd`` (2D only) one box per connected component of each label (:func:`label_map_boxes`).
    ``skip_empty`` leaves out samples without any labelled voxel. Samples are streamed into the
    files (one case in memory at a time); both files appear atomically.
    """
    if model not in ("fcn", "cnn_classification", "bbd"):
        raise InputError(f"to-hdf5 writes fcn, cnn_classification or bbd layouts from label maps, got {model!r}")
    if model == "bbd" and _context(context) != "2D":
        raise InputError("bbd samples are 2D only (DLAE has no 3D detector)")
    from tqdm import tqdm

    from ctdl.data.datasets import folder_cases, is_kits19_root, kits19_cases, limit_cases, load_case

    ctx = _context(context)
    src = Path(src)
    found = kits19_cases(src, require_images=True) if is_kits19_root(src) else folder_cases(src)
    chosen = limit_cases(found, list(cases) if cases else None)
    if not chosen:
        raise InputError(f"{src}: no cases selected")
    n = 0
    shapes: Counter[tuple[int, ...]] = Counter()
    with atomic_path(Path(x_path)) as tx, atomic_path(Path(y_path)) as ty:
        with h5py.File(tx, "w") as fx, h5py.File(ty, "w") as fy:
            for case in tqdm(chosen, desc="to-hdf5", leave=False, disable=None if progress else True):
                image, label = load_case(case)
                if label is None:
                    raise InputError(f"case {case.case_id}: no label file (an FCN pair needs labels)")
                img = image.array.astype(dtype)
                lab = np.rint(label.array).astype(np.uint8)
                if ctx == "2D":
                    items = [(img[d][..., None], _annotation(lab[d], model)) for d in range(img.shape[0])
                             if not skip_empty or lab[d].any()]
                elif skip_empty and not lab.any():
                    items = []
                else:
                    items = [(np.transpose(img, (1, 2, 0))[..., None], _annotation(np.transpose(lab, (1, 2, 0)), model))]
                for a, b in items:
                    fx.create_dataset(str(n), data=a)
                    fy.create_dataset(str(n), data=b)
                    shapes[a.shape] += 1
                    n += 1
    return {"x": str(x_path), "y": str(y_path), "n_samples": n,
            "shape": sorted(shapes)[0] if len(shapes) == 1 else sorted(shapes), "cases": [c.case_id for c in chosen]}


def guess_annotation_kind(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]) -> str:
    """What an HDF5 file's samples look like: images, class labels, regression vectors or boxes."""
    if not shapes:
        return "empty"
    if all(len(s) <= 1 and (not s or s[0] == 1) for s in shapes):
        return "class labels (CNN classification)"
    if all(len(s) == 2 and s[1] == 5 for s in shapes) or all(s == (5,) for s in shapes):
        return "boxes (BBD: class_id, xmin, ymin, xmax, ymax)"
    if all(len(s) == 1 for s in shapes):
        return "vectors (CNN regression)"
    return "images / label maps (2D or 3D, channels last)"


__all__ = [
    "MODEL_TYPES",
    "check_dlae_sample",
    "dlae_validation_split",
    "nifti_cases_to_hdf5",
    "read_dlae_pairs",
    "write_dlae_pairs",
    "guess_annotation_kind",
    "label_map_boxes",
    "read_dlae_hdf5",
    "write_dlae_hdf5",
    "check_dlae_pair",
    "hdf5_info",
    "dlae_sample_to_volume",
    "dlae_sample_channels_first",
]
