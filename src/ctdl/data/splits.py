"""Seeded, stratified train/validation/test splits, saved into the run folder."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Hashable, Iterable, Sequence

import numpy as np

from ctdl.errors import ConfigError, InputError
from ctdl.io.atomic import atomic_write_text


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of n items to fractions (sums exactly to n)."""
    raw = [f * n for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_ids(
    ids: Sequence[str],
    train: float = 0.7,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    strata: Sequence[Hashable] | None = None,
) -> dict[str, list[str]]:
    """Split ids into train/val/test by fractions; with ``strata`` each stratum is split alike.

    Deterministic for a seed; ids keep their input order inside each part.
    """
    if len(set(ids)) != len(ids):
        raise InputError("split: case ids are not unique")
    if abs(train + val + test - 1.0) > 1e-6:
        raise InputError(f"split: fractions must sum to 1, got {train + val + test:g}")
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, s in enumerate(strata if strata is not None else [None] * len(ids)):
        groups[s].append(i)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for key in sorted(groups, key=lambda k: str(k)):
        idx = np.array(groups[key])
        idx = idx[rng.permutation(len(idx))]
        n_tr, n_va, n_te = _allocate(len(idx), (train, val, test))
        parts["train"] += idx[:n_tr].tolist()
        parts["val"] += idx[n_tr : n_tr + n_va].tolist()
        parts["test"] += idx[n_tr + n_va :].tolist()
    return {k: [ids[i] for i in sorted(v)] for k, v in parts.items()}


def listed_split(split_cfg: Any, known: Iterable[str], what: str = "case ids",
                 hint: str = "") -> dict[str, list[str]] | None:
    """The split a config lists explicitly (``data.split.train_cases`` / ``val_cases`` / ``test_cases``), checked
    against the ids the dataset has; None when it lists none (the caller splits by fractions or files)."""
    if split_cfg.train_cases is None:
        return None
    ids = set(known)
    split = {"train": list(split_cfg.train_cases), "val": list(split_cfg.val_cases or []),
             "test": list(split_cfg.test_cases or [])}
    unknown = [i for v in split.values() for i in v if i not in ids]
    if unknown:
        raise ConfigError(f"data.split: unknown {what} {unknown[:10]}{hint}")
    return split


def save_split(split: dict[str, list[str]], path: str | Path) -> Path:
    atomic_write_text(path, json.dumps(split, indent=2) + "\n")
    return Path(path)


def load_split(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read split file ({exc})") from exc
    return {k: list(data.get(k, [])) for k in ("train", "val", "test")}
