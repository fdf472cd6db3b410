"""The one volume type: an array with its geometry and metadata.

Convention (see ``ctdl.__init__``): ``array`` is ``(D, H, W)`` = (slices, rows, columns),
``spacing`` in mm in the same order, ``affine`` maps ``(d, h, w, 1)`` to RAS+ world mm.
``file_axes`` records how the array axes were permuted from the file's voxel order so a
writer can restore exactly the file layout it was read from (shape and affine).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np

from ctdl.errors import InputError

# index of the world (RAS) axis each array axis should follow: D<-S/I (2), H<-A/P (1), W<-L/R (0)
_TARGET_WORLD = (2, 1, 0)


def affine_from_geometry(
    spacing: tuple[float, ...], origin: tuple[float, ...] | None = None, direction: np.ndarray | None = None
) -> np.ndarray:
    """Build a 4x4 affine for (d, h, w) indices; default direction maps D->S, H->A, W->R."""
    spacing = tuple(float(s) for s in spacing)
    if direction is None:
        direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, dtype=float) @ np.diag(spacing)
    aff[:3, 3] = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
    return aff


@dataclass
class Volume:
    """A 3D image or label map with its geometry.

    Attributes:
        array: the voxel data, shape (D, H, W).
        affine: 4x4 voxel-(d, h, w)-to-RAS-mm matrix.
        meta: free metadata (modality, source path, series UID, ...).
        file_axes: permutation p with ``file_array = array.transpose(argsort(p))``; i.e.
            array axis n came from file axis ``p[n]``. Identity for arrays made in code.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    meta: dict[str, Any] = field(default_factory=dict)
    file_axes: tuple[int, int, int] = (0, 1, 2)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InputError(f"Volume expects a 3D array (D, H, W), got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError(f"Volume affine must be 4x4, got {self.affine.shape}")

    # -- geometry ----------------------------------------------------------------
    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        origin: tuple[float, float, float] | None = None,
        direction: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> "Volume":
        return cls(np.asarray(array), affine_from_geometry(spacing, origin, direction), dict(meta or {}))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix of unit columns: world (RAS) direction of each array axis."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes in RAS terms, e.g. 'IPL' for KiTS19 as stored."""
        return "".join(nib.aff2axcodes(self.affine))

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """Same geometry, new data of the same shape (e.g. a label map for this image)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise InputError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def copy(self) -> "Volume":
        return Volume(self.array.copy(), self.affine.copy(), dict(self.meta), self.file_axes)

    def same_geometry(self, other: "Volume", atol: float = 1e-4) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        return f"Volume(shape={self.shape}, spacing=({sp}), orientation={self.orientation}, dtype={self.array.dtype})"


def canonical_axes(affine: np.ndarray) -> tuple[int, int, int]:
    """For a file affine (voxel axes -> RAS), the file axis to put at D, H and W.

    Uses nibabel's ``io_orientation`` so oblique directions are assigned unambiguously.
    """
    ornt = nib.orientations.io_orientation(affine)  # row i: world axis of file axis i
    world_of_file = [int(w) for w in ornt[:, 0]]
    return tuple(world_of_file.index(w) for w in _TARGET_WORLD)  # type: ignore[return-value]


def from_file_order(array: np.ndarray, affine: np.ndarray, meta: dict[str, Any] | None = None) -> Volume:
    """Make a Volume from an array in file voxel order and its file affine (axes permuted, data untouched)."""
    perm = canonical_axes(affine)
    arr = np.transpose(array, perm)
    aff = np.eye(4)
    aff[:3, :3] = affine[:3, :3][:, list(perm)]
    aff[:3, 3] = affine[:3, 3]
    return Volume(arr, aff, dict(meta or {}), perm)


def to_file_order(vol: Volume, file_axes: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`from_file_order`: the array and affine in the file's voxel order."""
    perm = vol.file_axes if file_axes is None else file_axes
    inv = tuple(int(i) for i in np.argsort(perm))
    arr = np.transpose(vol.array, inv)
    aff = np.eye(4)
    aff[:3, :3] = vol.affine[:3, :3][:, list(inv)]
    aff[:3, 3] = vol.affine[:3, 3]
    return arr, aff
