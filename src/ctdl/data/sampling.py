"""Training-example sampling from preprocessed volumes: 3D patches with class oversampling,
2D slices without background-only slices, 3D blocks of N slices with overlap (thesis), and
tumour duplication.

Every sampler derives its randomness from ``(seed, epoch)`` alone, so an epoch's batches are
identical whether a run was interrupted or not (exact resume). The patch sampler is written by
hand rather than with MONAI's ``RandCropByLabelClassesd`` because it precomputes each case's
class voxel indices once (MONAI recomputes them on every call, which dominates on big volumes)
and draws from an explicit per-epoch generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from ctdl.config.schema import SamplingConfig
from ctdl.data.augment import apply_augmentation


@dataclass
class PreparedCase:
    """One preprocessed case: image (C, D, H, W) float32, label (D, H, W) uint8."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    class_index: dict[int, np.ndarray] = field(default_factory=dict)

    def index_classes(self) -> None:
        if self.label is not None and not self.class_index:
            flat = self.label.ravel()
            for c in np.unique(flat):
                self.class_index[int(c)] = np.flatnonzero(flat == c)


def block_starts(n: int, block: int, overlap: int) -> list[int]:
    """Thesis block generation: windows of ``block`` slices at stride block-overlap, last one moved back."""
    if n < block:
        return []
    stride = max(1, block - overlap)
    starts = list(range(0, n - block + 1, stride))
    if starts[-1] + block < n:
        starts.append(n - block)
    return starts


def crop_patch(array: np.ndarray, center: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """Crop a patch of ``size`` around ``center`` from the last 3 axes, padding with ``fill`` outside."""
    spatial = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(center, size, spatial):
        lo = int(c) - s // 2
        a, b = max(lo, 0), min(lo + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[(...,) + tuple(dst)] = array[(...,) + tuple(src)]
    return out


def inside_center(center: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Move ``center`` so a ``size`` patch around it (as :func:`crop_patch` places it) lies inside ``shape``
    on every axis where the volume is at least as long as the patch; other axes are left as drawn."""
    out = []
    for c, s, n in zip(center, size, shape):
        out.append(int(min(max(c, s // 2), n - s + s // 2)) if n >= s else int(c))
    return tuple(out)


class Sampler:
    """Yields (image batch, label batch) tensors for one epoch from prepared cases."""

    def __init__(self, cases: list[PreparedCase], cfg: SamplingConfig, batch_size: int, augmentation=None,
                 seed: int = 0, steps_per_epoch: int | None = None, rounds: int = 1) -> None:
        self.cases = cases
        self.cfg = cfg
        self.batch_size = batch_size
        self.aug = augmentation
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.rounds = rounds
        if cfg.mode == "patch3d":
            for c in cases:
                c.index_classes()
        self.items = self._static_items()

    # -- item lists ------------------------------------------------------------------
    def _static_items(self) -> list[tuple[int, int]]:
        """For slices2d/blocks3d/whole: (case index, start) pairs incl. tumour duplicates."""
        cfg = self.cfg
        items: list[tuple[int, int]] = []
        for ci, case in enumerate(self.cases):
            lab = case.label
            if cfg.mode == "slices2d":
                # every slice (preprocessing.remove_background_slices drops label-free ones beforehand)
                base = [(ci, int(s)) for s in range(case.image.shape[1])]
                tum = [(ci, s) for _, s in base if lab is not None and (lab[s] == cfg.tumor_label).any()]
            elif cfg.mode == "blocks3d":
                starts = block_starts(case.image.shape[1], cfg.block_slices, cfg.block_overlap)
                base = [(ci, s) for s in starts]
                tum = [(ci, s) for s in starts if lab is not None and (lab[s : s + cfg.block_slices] == cfg.tumor_label).any()]
            elif cfg.mode == "whole":
                base, tum = [(ci, 0)], []
            else:
                return []
            items += base + tum * cfg.tumor_duplication
        return items

    def __len__(self) -> int:
        n = self._n_examples()
        steps = -(-n // self.batch_size)
        return min(steps, self.steps_per_epoch) if self.steps_per_epoch else steps

    def _n_examples(self) -> int:
        if self.cfg.mode == "patch3d":
            return len(self.cases) * self.cfg.samples_per_volume * self.rounds
        return len(self.items) * self.rounds

    # -- drawing ---------------------------------------------------------------------
    def _patch_center(self, case: PreparedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        shape = case.image.shape[1:]
        ratios = self.cfg.class_ratios
        if ratios and case.class_index:
            present = [c for c in range(len(ratios)) if c in case.class_index and ratios[c] > 0]
            p = np.array([ratios[c] for c in present], float)
            cls = present[rng.choice(len(present), p=p / p.sum())]
            flat = case.class_index[cls][rng.integers(len(case.class_index[cls]))]
            return tuple(int(v) for v in np.unravel_index(flat, shape))  # type: ignore[return-value]
        return tuple(int(rng.integers(n)) for n in shape)  # type: ignore[return-value]

    def _example(self, key: tuple[int, int] | int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        if cfg.mode == "patch3d":
            case = self.cases[int(key)]  # type: ignore[arg-type]
            center = self._patch_center(case, rng)
            if cfg.patch_inside:
                center = inside_center(center, cfg.patch_size, case.image.shape[-3:])
            img = crop_patch(case.image, center, cfg.patch_size, float(case.image.min()))
            lab = crop_patch(case.label, center, cfg.patch_size, 0)
        else:
            ci, s = key  # type: ignore[misc]
            case = self.cases[ci]
            if cfg.mode == "slices2d":
                img, lab = case.image[:, s], case.label[s]
            elif cfg.mode == "blocks3d":
                img, lab = case.image[:, s : s + cfg.block_slices], case.label[s : s + cfg.block_slices]
            else:
                img, lab = case.image, case.label
        return img, lab

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, fully determined by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.aug is not None:
            self.aug.set_random_state(seed=int(rng.integers(2**31 - 1)))
        if self.cfg.mode == "patch3d":
            keys: list = [i for i in range(len(self.cases)) for _ in range(self.cfg.samples_per_volume)] * self.rounds
        else:
            keys = list(self.items) * self.rounds
        order = rng.permutation(len(keys))
        n_batches = len(self)
        for b in range(n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if len(idx) == 0:
                break
            imgs, labs = [], []
            for i in idx:
                img, lab = self._example(keys[i], rng)
                img, lab = apply_augmentation(self.aug, img, lab)
                imgs.append(img)
                labs.append(lab)
            yield torch.from_numpy(np.stack(imgs)).float(), torch.from_numpy(np.stack(labs)).long()
