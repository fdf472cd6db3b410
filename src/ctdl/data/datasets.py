"""Dataset layouts: KiTS19 case folders, an images/labels folder pair, a CSV manifest.

Each layout yields :class:`Case` records (paths only); :func:`load_case` reads one and checks
it (image and label agree in shape and geometry, label values within the declared classes,
no NaNs in the image), raising :class:`ctdl.errors.InputError` naming the file otherwise.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ctdl.errors import InputError
from ctdl.io import Volume, read_volume

_CASE_RE = re.compile(r"^case_\d{5}$")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz")


@dataclass
class Case:
    """One dataset item: where its image and label live (either may be absent)."""

    case_id: str
    image: Path | None = None
    label: Path | None = None
    target: Any = None  # classification/regression target from a manifest
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def is_kits19_root(root: str | Path) -> bool:
    root = Path(root)
    return root.is_dir() and any(_CASE_RE.match(p.name) and p.is_dir() for p in root.iterdir())


def kits19_cases(root: str | Path, require_images: bool = False) -> list[Case]:
    """Cases of a KiTS19 folder: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``, optional ``kits.json``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: KiTS19 folder not found")
    meta: dict[str, dict[str, Any]] = {}
    kj = root / "kits.json"
    if kj.exists():
        try:
            meta = {m["case_id"]: m for m in json.loads(kj.read_text())}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{kj}: not a valid kits.json ({exc})") from exc
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _CASE_RE.match(p.name)):
        img = d / "imaging.nii.gz"
        seg = d / "segmentation.nii.gz"
        case = Case(d.name, img if img.exists() else None, seg if seg.exists() else None, meta=meta.get(d.name, {}))
        if require_images and case.image is None:
            raise InputError(f"{d}: imaging.nii.gz is missing (KiTS19 layout: case_XXXXX/imaging.nii.gz)")
        cases.append(case)
    if not cases:
        raise InputError(f"{root}: no case_XXXXX folders found (KiTS19 layout)")
    return cases


def _stem(path: Path) -> str:
    name = path.name
    for suf in _VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def folder_cases(root: str | Path, images_dir: str = "images", labels_dir: str = "labels") -> list[Case]:
    """Cases of an images/labels folder pair, matched by file name (extension ignored)."""
    root = Path(root)
    idir, ldir = root / images_dir, root / labels_dir
    if not idir.is_dir():
        raise InputError(f"{idir}: images folder not found")
    images = {_stem(p): p for p in sorted(idir.iterdir()) if p.name.lower().endswith(_VOLUME_SUFFIXES)}
    if not images:
        raise InputError(f"{idir}: no volume files ({', '.join(_VOLUME_SUFFIXES)})")
    labels = {}
    if ldir.is_dir():
        labels = {_stem(p): p for p in sorted(ldir.iterdir()) if p.name.lower().endswith(_VOLUME_SUFFIXES)}
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise InputError(f"{ldir}: labels without a matching image in {idir}: {', '.join(orphans[:10])}")
    return [Case(k, v, labels.get(k)) for k, v in images.items()]


def manifest_cases(path: str | Path) -> list[Case]:
    """Cases of a CSV manifest with columns ``path,label[,split]`` (paths relative to the CSV)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: manifest not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or "label" not in cols:
            raise InputError(f"{path}: manifest needs columns 'path' and 'label' (optional 'split'), found {cols}")
        cases = []
        for i, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("path"):
                raise InputError(f"{path}: line {i}: empty 'path'")
            p = Path(row["path"])
            p = p if p.is_absolute() else path.parent / p
            split = row.get("split") or None
            if split not in (None, "train", "val", "test"):
                raise InputError(f"{path}: line {i}: split must be train, val or test, got {split!r}")
            cases.append(Case(_stem(p), p, None, target=row["label"], split=split))
    if not cases:
        raise InputError(f"{path}: manifest has no rows")
    return cases


def check_pair(image: Volume, label: Volume, n_classes: int | None, label_path: str | Path = "label") -> None:
    """Raise if image and label disagree in shape/geometry or the label has undeclared values."""
    src_i = image.meta.get("source", "image")
    if image.shape != label.shape:
        raise InputError(f"{label_path}: label shape {label.shape} differs from image {src_i} shape {image.shape}")
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        raise InputError(
            f"{label_path}: label geometry (spacing {label.spacing}, origin {label.origin}) differs from image "
            f"{src_i} (spacing {image.spacing}, origin {image.origin})"
        )
    if n_classes is not None:
        values = np.unique(label.array)
        bad = values[(values < 0) | (values >= n_classes) | (values != np.round(values))]
        if bad.size:
            raise InputError(
                f"{label_path}: label values {bad.tolist()[:10]} outside the declared classes 0..{n_classes - 1}"
            )


def check_image(image: Volume) -> None:
    if np.issubdtype(image.array.dtype, np.floating) and not np.isfinite(image.array).all():
        n = int((~np.isfinite(image.array)).sum())
        raise InputError(f"{image.meta.get('source', 'image')}: image contains {n} NaN/inf voxels")


def load_case(case: Case, n_classes: int | None = None) -> tuple[Volume, Volume | None]:
    """Read and check one case's image (and label, if any)."""
    if case.image is None:
        raise InputError(f"case {case.case_id}: no image file")
    image = read_volume(case.image)
    check_image(image)
    label = None
    if case.label is not None:
        label = read_volume(case.label)
        check_pair(image, label, n_classes, case.label)
    return image, label


def limit_cases(cases: Sequence[Case], limit: int | list[str] | None) -> list[Case]:
    if limit is None:
        return list(cases)
    if isinstance(limit, int):
        return list(cases)[:limit]
    by_id = {c.case_id: c for c in cases}
    missing = [c for c in limit if c not in by_id]
    if missing:
        raise InputError(f"data.cases: unknown case ids {missing[:10]}")
    return [by_id[c] for c in limit]
