"""Live validation previews: at each validation epoch, a downsampled prediction of one validation case.

The web UI's viewer shows them with an epoch slider while a run trains (``evaluation.previews``). Layout,
under ``<run_dir>/previews/`` (every file written atomically, so a reader never sees half a file):

- ``ct/<case_id>.nii.gz``: the case's preprocessed image (channel 0, on the model's grid after resampling and
  ROI crop), strided to at most :data:`MAX_SIZE` voxels per axis and scaled to uint8 0..255 between its 1st and
  99th percentiles (the normalized intensities are no longer HU). Written once.
- ``epoch_NNN/<case_id>.nii.gz``: the label map predicted at epoch ``NNN`` (0-based, as in ``history.csv``),
  uint8, on the same grid as the CT preview.

The affine maps the prepared arrays' axes to the canonical ``SPL`` orientation the pipeline reorients to (see
:mod:`ctdl.data.preprocess`), with the preprocessing spacing times the stride.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ctdl.engine.callbacks import Callback
from ctdl.io import Volume, write_volume
from ctdl.io.volume import affine_from_geometry

if TYPE_CHECKING:  # pragma: no cover
    from ctdl.config.schema import ExperimentConfig
    from ctdl.data.sampling import PreparedCase
    from ctdl.engine.trainer import Trainer

log = logging.getLogger("ctdl")

PREVIEW_DIR = "previews"
CT_DIR = "ct"
MAX_SIZE = 128
EPOCH_RE = re.compile(r"^epoch_(\d+)$")
# array axes (D, H, W) -> world (R, A, S) for the canonical SPL orientation: D -> +S, H -> -A (P), W -> -R (L)
SPL_DIRECTION = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])


def epoch_dir_name(epoch: int) -> str:
    return f"epoch_{int(epoch):03d}"


def preview_stride(shape: Sequence[int], max_size: int = MAX_SIZE) -> tuple[int, int, int]:
    """The per-axis stride that brings ``shape`` to at most ``max_size`` voxels per axis."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    return tuple(max(1, math.ceil(int(n) / max_size)) for n in shape)  # type: ignore[return-value]


def _strided(arr: np.ndarray, stride: Sequence[int]) -> np.ndarray:
    return np.ascontiguousarray(arr[:: stride[0], :: stride[1], :: stride[2]])


def ct_to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale a normalized image to 0..255 between its 1st and 99th percentiles (clipped)."""
    lo, hi = (float(v) for v in np.percentile(image, [1.0, 99.0]))
    if not hi > lo:
        hi = lo + 1.0
    return np.round(np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


class ValidationPreviews(Callback):
    """Writes the preview of one validation case; the segmentation task's validation hands it each prediction
    through :meth:`record` (only ``case``'s is kept), the trainer tells it the epoch (``on_epoch_start``).

    A failed write is logged and never stops the training.
    """

    def __init__(self, run_dir: str | Path, case: "PreparedCase", max_size: int = MAX_SIZE) -> None:
        self.root = Path(run_dir) / PREVIEW_DIR
        self.case = case
        self.case_id = safe_case_id(case.case_id)
        self.stride = preview_stride(case.image.shape[-3:], max_size)
        self.affine = affine_from_geometry(tuple(float(s) * k for s, k in zip(case.spacing, self.stride)),
                                           direction=SPL_DIRECTION)
        self.epoch: Optional[int] = None
        self.written: list[int] = []

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        self.epoch = int(epoch)

    def record(self, case: "PreparedCase", labels: np.ndarray) -> None:
        """Called with every validation prediction; writes the one of the preview case."""
        if case is not self.case or self.epoch is None:
            return
        try:
            self.write(self.epoch, labels)
        except Exception as exc:  # a preview must never lose the run
            log.warning("validation preview of epoch %d not written: %s", self.epoch, exc)

    def write(self, epoch: int, labels: np.ndarray) -> Path:
        """Write the epoch's label map (and the CT preview the first time); returns the label map's path."""
        if tuple(labels.shape) != tuple(self.case.image.shape[-3:]):
            raise ValueError(f"preview labels of shape {tuple(labels.shape)} do not match the case's image "
                             f"{tuple(self.case.image.shape[-3:])}")
        ct = self.root / CT_DIR / f"{self.case_id}.nii.gz"
        if not ct.exists():
            image = self.case.image[0] if self.case.image.ndim == 4 else self.case.image
            write_volume(Volume(ct_to_uint8(_strided(image, self.stride)), self.affine), ct)
        out = self.root / epoch_dir_name(epoch) / f"{self.case_id}.nii.gz"
        write_volume(Volume(_strided(np.asarray(labels), self.stride).astype(np.uint8), self.affine), out)
        self.written.append(int(epoch))
        return out


def safe_case_id(case_id: str) -> str:
    """A case id usable as a file name (anything but letters, digits, ``._-`` becomes ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(case_id)).lstrip(".")
    return name or "case"


def validation_previews(cfg: "ExperimentConfig", val_set: Sequence["PreparedCase"], run_dir: str | Path
                        ) -> Optional[ValidationPreviews]:
    """The previews callback for a segmentation run (None when ``evaluation.previews`` is off or no validation)."""
    if not cfg.evaluation.previews or not val_set:
        return None
    return ValidationPreviews(run_dir, val_set[0])


def list_previews(run_dir: str | Path) -> dict[str, Any]:
    """What a run folder holds: ``{"epochs": ["epoch_000", ...], "cases": {case_id: {"ct": rel, "epochs": [...]}}}``
    with paths relative to the run folder; an epoch counts once its file exists (temporary files start with '.')."""
    root = Path(run_dir) / PREVIEW_DIR
    cases: dict[str, dict[str, Any]] = {}
    epochs: list[str] = []
    if not root.is_dir():
        return {"epochs": epochs, "cases": cases}
    ct_dir = root / CT_DIR
    for p in sorted(ct_dir.glob("*.nii.gz")) if ct_dir.is_dir() else []:
        if not p.name.startswith("."):
            cid = p.name[: -len(".nii.gz")]
            cases[cid] = {"ct": f"{PREVIEW_DIR}/{CT_DIR}/{p.name}", "epochs": []}
    dirs = sorted((int(m.group(1)), d.name) for d in root.iterdir() if d.is_dir() and (m := EPOCH_RE.match(d.name)))
    for _, name in dirs:
        found = False
        for cid, item in cases.items():
            if (root / name / f"{cid}.nii.gz").is_file():
                item["epochs"].append(name)
                found = True
        if found:
            epochs.append(name)
    return {"epochs": epochs, "cases": cases}


__all__ = ["ValidationPreviews", "validation_previews", "list_previews", "preview_stride", "ct_to_uint8",
           "epoch_dir_name", "PREVIEW_DIR", "MAX_SIZE"]
