"""Dataset check: one row per case (shape, spacing, orientation, HU range, label values) with flags for
cases that disagree with the config or with the rest of the dataset, so a data mistake is caught before
training. Reads KiTS19 folders, images/labels folder pairs and flat folders of volumes through
:mod:`ctdl.data.datasets`; voxel data are read with :func:`ctdl.io.read_volume` in the (D, H, W) convention.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ctdl.data.datasets import Case, folder_cases, is_kits19_root, kits19_cases
from ctdl.errors import CtdlError
from ctdl.web.paths import is_volume_name


def find_cases(root: Path) -> tuple[str, list[Case]]:
    """(layout, cases) of a dataset folder: kits19, folder (images/ + labels/) or flat (volume files)."""
    if is_kits19_root(root):
        return "kits19", kits19_cases(root)
    if (root / "images").is_dir():
        return "folder", folder_cases(root)
    files = sorted(p for p in root.iterdir() if p.is_file() and is_volume_name(p.name))
    if not files:
        raise CtdlError(f"{root}: no KiTS19 case folders, no images/ folder and no volume files")
    # a flat folder: X.nii.gz with X_seg.nii.gz beside it is an image/label pair
    by_name = {p.name: p for p in files}
    cases: list[Case] = []
    for p in files:
        stem = p.name.split(".")[0]
        if stem.endswith(("_seg", "_label", "_mask")):
            continue
        suffix = p.name[len(stem):]
        label = next((by_name[f"{stem}{tag}{suffix}"] for tag in ("_seg", "_label", "_mask")
                      if f"{stem}{tag}{suffix}" in by_name), None)
        cases.append(Case(stem, p, label))
    return "flat", cases


def _geometry(path: Path) -> dict[str, Any]:
    from ctdl.io import read_volume

    vol = read_volume(path)
    arr = vol.array
    out: dict[str, Any] = {"shape": list(vol.shape), "spacing": [round(float(s), 4) for s in vol.spacing],
                           "orientation": vol.orientation, "dtype": str(arr.dtype), "_affine": vol.affine}
    return out | {"_array": arr}


def case_row(case: Case, n_classes: int | None) -> dict[str, Any]:
    """Describe one case; problems within the case itself (unreadable, mismatched, bad labels) are flagged."""
    row: dict[str, Any] = {"case_id": case.case_id, "flags": [],
                           "image": str(case.image) if case.image else None,
                           "label": str(case.label) if case.label else None}
    img = lab = None
    try:
        if case.image is not None:
            img = _geometry(case.image)
            a = img.pop("_array")
            row.update(shape=img["shape"], spacing=img["spacing"], orientation=img["orientation"],
                       hu_min=float(np.min(a)), hu_max=float(np.max(a)))
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                row["flags"].append("image has NaN/inf voxels")
            if row["hu_min"] >= 0 and row["hu_max"] <= 4096:
                row["flags"].append(f"intensity range {row['hu_min']:g}..{row['hu_max']:g} does not look like HU (no air below 0)")
        if case.label is not None:
            lab = _geometry(case.label)
            a = lab.pop("_array")
            values = np.unique(a)
            row["label_values"] = [int(v) if float(v).is_integer() else float(v) for v in values.tolist()]
            for k in ("shape", "spacing", "orientation"):
                row.setdefault(k, lab[k])
            if n_classes is not None:
                bad = [v for v in row["label_values"] if not (isinstance(v, int) and 0 <= v < n_classes)]
                if bad:
                    row["flags"].append(f"label values {bad} outside the config's classes 0..{n_classes - 1}")
        if img is not None and lab is not None:
            if img["shape"] != lab["shape"]:
                row["flags"].append(f"label shape {lab['shape']} differs from image shape {img['shape']}")
            elif not np.allclose(img["_affine"], lab["_affine"], atol=1e-3):
                row["flags"].append("label geometry (spacing/origin/direction) differs from the image")
        if case.image is None:
            row["flags"].append("no image file")
        if case.label is None:
            row["flags"].append("no label file")
    except Exception as exc:  # one unreadable case is a row with a flag, not a failed page
        row["flags"].append(f"unreadable: {exc}")
    return row


def check_dataset(root: Path, n_classes: int | None = None, offset: int = 0, limit: int = 20,
                  target_spacing: list[float] | None = None) -> dict[str, Any]:
    """Rows for cases ``offset .. offset+limit`` plus dataset-level flags (odd spacing, flipped orientation)."""
    layout, cases = find_cases(root)
    chosen = cases[offset: offset + limit]
    rows = [case_row(c, n_classes) for c in chosen]
    ok = [r for r in rows if "spacing" in r]
    if ok:
        # the majority orientation; a case that differs is flipped relative to the rest
        orients = [r["orientation"] for r in ok]
        major = max(set(orients), key=orients.count)
        for r in ok:
            if r["orientation"] != major:
                r["flags"].append(f"orientation {r['orientation']} differs from most cases ({major}): flipped?")
        # spacing far (x2) from the median on any axis, or outside a plausible CT range
        med = [statistics.median(r["spacing"][i] for r in ok) for i in range(3)]
        for r in ok:
            odd = [i for i in range(3) if not (med[i] / 2 <= r["spacing"][i] <= med[i] * 2)]
            if odd:
                r["flags"].append(f"spacing {r['spacing']} far from the dataset median {[round(m, 3) for m in med]}")
            if any(s <= 0.1 or s > 10 for s in r["spacing"]):
                r["flags"].append(f"spacing {r['spacing']} mm is implausible for CT")
    return {"root": str(root), "layout": layout, "n_cases": len(cases), "offset": offset, "limit": limit,
            "n_classes": n_classes, "rows": rows}
