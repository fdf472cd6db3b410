"""CT-like phantoms rendered from real KiTS19 kidney/tumour masks (tests, demo, benchmarks).

The KiTS19 masks in ``shared/data/kits19`` come without their CT images. This module
paints a plausible arterial-phase (corticomedullary) abdominal CT around each real mask:
the kidney and tumour voxels are exactly the mask's, everything else is a simple,
randomised anatomy. Output follows the KiTS19 layout (``case_XXXXX/imaging.nii.gz`` int16
HU + ``segmentation.nii.gz`` uint8, identical geometry).

What is rendered (in-plane geometry is placed relative to the kidneys found in the mask;
"posterior" and "patient left" are read from the affine, so any orientation works):

* air outside a super-elliptical body outline that encloses the kidneys with >= 10 mm
  margin inside the abdominal-wall muscle; the outline's size varies smoothly along the
  slice axis (axis 0);
* subcutaneous fat ring, abdominal-wall muscle ring, psoas and erector-spinae muscles;
* a lumbar spine on the posterior midline running along axis 0: vertebral bodies
  (cancellous core, cortical rim and end plates) separated by intervertebral discs,
  spinal canal (CSF), posterior arch and spinous process;
* aorta (arterial-phase bright) and IVC in front of the spine;
* intraperitoneal content: random smooth soft-tissue blobs (liver/bowel/spleen-like, HU
  modulated per region) in visceral fat, with bowel-gas pockets inside some blobs;
* perirenal fat around the kidneys (thickness varies smoothly, 0 where organs touch);
* kidney: cortex (outer shell of varying thickness) bright, medulla slightly darker, optionally the
  deepest voxels of each kidney as renal pelvis (unopacified urine);
* tumour: per-case mean drawn uniformly from ``tumour_mean_range`` (overlapping the kidney's
  range on purpose), smooth heterogeneity, darker necrotic core in larger tumours;
* fine texture (additive, tissue-dependent std) and a low-frequency multiplicative density
  field; Gaussian partial-volume blur; white Gaussian quantum noise; int16 rounding.

Default HU values (``PhantomParams()``, arterial / corticomedullary phase). They are
approximate textbook figures chosen inside the quoted ranges, not measurements; sources
are given so a reader can check them, and none was re-verified page by page here.

=====================  =============  ========  ===============================================
tissue                 mean HU        texture   basis (approximate literature range)
=====================  =============  ========  ===============================================
air (outside body)     -1000          0         HU scale definition (air -1000, water 0) [1]
subcutaneous fat       -100           10        fat -120..-90 / -100..-50 [1, 2]
visceral fat           -95            12        as fat [1, 2]
perirenal fat          -95            12        as fat [1, 2]
bowel gas              -900           40        air, partial volume with bowel content [1]
muscle                 50             8         muscle 35..55 unenhanced, slight arterial
                                                enhancement [1, 2]
soft tissue blobs      60 +/- 15 mod  10        liver 40..60 unenhanced, 60..80 arterial; bowel
                                                wall / spleen 40..80 [1, 2, 5]
cancellous bone        250            35        lumbar trabecular bone ~150..300 in adults
                                                [3, 4]; cancellous 300..400 in tables [1]
cortical bone          850            80        cortical bone > 700 (500..1900) [1, 2]
intervertebral disc    90             10        fibrocartilage, soft-tissue-like (~50..110)
                                                [2] (approximate, no specific study)
CSF / cord             20             5         CSF ~ 0..15, cord 30..40 [1, 2]
aorta (arterial)       280 (+jitter)  15        CTA targets >= 200..250 HU in arterial phase [5]
IVC (arterial)         90 (+jitter)   15        mixing of enhanced renal return and
                                                unenhanced blood (~40..150) [5]
renal cortex           170 (+jitter)  12        corticomedullary phase cortex ~150..200 [6, 7]
renal medulla          140 (+jitter)  10        medulla ~80..120 early, enhancing toward the cortex
                                                later in the corticomedullary phase [6, 7]
renal pelvis (opt.)    10             5         unopacified urine -5..+15 [1]
tumour                 U(30, 110)     40 + 10   clear-cell RCC ~100..200 in arterial phase,
                       per case                 papillary ~40..80, chromophobe between
                                                [8, 9]; the seed paper puts kidney and tumour
                                                on the same ~100..500 HU range [10]
tumour necrosis        U(15, 45)      8         fluid/necrosis 0..30, partial volume [1, 2]
quantum noise          sigma 15 HU    -         typical abdominal CT noise 10..20 HU
                                                (routine dose) [11]
partial-volume blur    sigma 0.7 vox  -         ~ scanner PSF of 1-2 voxels FWHM [11]
=====================  =============  ========  ===============================================

"texture" is the std (HU) of the smooth additive texture field for that tissue; "jitter"
is a per-case shift U(-10, 10) HU of contrast-enhanced tissues (bolus timing). The
tumour's "40 + 10" is a case-level smooth heterogeneity field (std 40, ~8 mm) plus the
shared fine texture (std 10). The per-case tumour mean U(30, 110) spans hypovascular (papillary,
chromophobe) to moderately enhancing tumours, so a tumour is usually darker than the enhancing
parenchyma but overlaps the kidney's HU range (over half of the tumour voxels lie in the kidney's
5th-95th percentile range, partial volume included) and muscle and soft tissue everywhere else: a
per-voxel HU threshold over the volume scores tumour Dice below 0.03 (tests), while inside the
kidney mask a hypodense tumour is partly separable (pooled best threshold Dice ~0.56), as on real CT.
History of this choice (all measured with recipes/demo.yaml): tumour U(70, 180) with std 30 made
tumours nearly invisible (tumour Dice ~0.2 after 3 CPU minutes); U(40, 140) and U(30, 110) with the
medulla at 100 HU gave 0.38 and 0.35: the network took the dark medulla for tumour. Defaults before
this version: ``tumour_mean_range=(40.0, 140.0)``, ``renal_medulla=(100.0, 10.0)``. Renal cortex thickness is drawn per case from U(5, 9) mm (adult cortex ~5-10 mm)
and modulated +/- 35 % by a smooth field; perirenal fat is 6 +/- 5 mm thick (clipped at 0).
``PhantomParams.noncontrast()`` gives an unenhanced variant
(kidney ~30 HU, RCC 20..45 HU, aorta/IVC 40 HU, liver-like blobs 55 HU) [1, 12].

Sources (standard references; values are approximate):

[1] Hounsfield-unit tables as reproduced in Radiopaedia ("Hounsfield unit") and Wikipedia
    ("Hounsfield scale"), which cite radiology textbooks.
[2] Brant WE, Helms CA, Fundamentals of Diagnostic Radiology; Bushberg JT et al., The
    Essential Physics of Medical Imaging, 3rd ed. (CT number tables).
[3] Pickhardt PJ et al., Opportunistic screening for osteoporosis using abdominal CT scans
    obtained for other indications. Ann Intern Med 2013;158:588-595 (L1 trabecular HU).
[4] Schreiber JJ et al., Hounsfield units for assessing bone mineral density and strength.
    J Bone Joint Surg Am 2011;93:1057-1063.
[5] Fleischmann D, Kamaya A, Optimal vascular and parenchymal contrast enhancement: the
    current state of the art. Radiol Clin North Am 2009;47:13-26.
[6] Yuh BI, Cohan RH, Different phases of renal enhancement: role in detecting and
    characterizing renal masses during helical CT. AJR 1999;173:747-755.
[7] Birnbaum BA et al., Multiphasic renal CT: comparison of renal mass enhancement during
    the corticomedullary and nephrographic phases. Radiology 1996;200:753-758.
[8] Kim JK et al., Differentiation of subtypes of renal cell carcinoma on helical CT scans.
    AJR 2002;178:1499-1506.
[9] Young JR et al., Clear cell renal cell carcinoma: discrimination from other renal cell
    carcinoma subtypes and oncocytoma at multiphasic multidetector CT. Radiology
    2013;267:444-453.
[10] Yang G et al., Automatic segmentation of kidney and renal tumor in CT images based on
    3D fully convolutional neural network with pyramid pooling module (FCN-PPM), ICPR 2018
    (seed 000): arterial-phase kidney and tumour "ranging approximately from 100HU to
    500HU", window [-200, 500] HU.
[11] Kalender WA, Computed Tomography: Fundamentals, System Technology, Image Quality,
    Applications, 3rd ed. 2011 (noise, spatial resolution).
[12] Unenhanced renal parenchyma ~20..45 HU and RCC ~20..45 HU: [1], [6], [8].

Every random choice is drawn from ``np.random.default_rng(seed)``; the same mask, spacing,
seed and params give the same image bit for bit. Rendering is vectorised numpy/scipy in
float32 slabs: ~1 s for case_00000 at 3 x 1.5 x 1.5 mm; case_00000 at its native
611 x 512 x 512 grid took 13-18 s with a 1.6 GB peak resident set (2 CPU cores; writing
its imaging.nii.gz takes another ~8 s).

The table gives tissue values. Label-level means are lower after the partial-volume blur:
at 4 x 2 x 2 mm the kidney label averages ~110 HU (cortex voxels next to perirenal fat),
a 2 mm cortical-bone rim ~650 HU and the spinal canal far above CSF.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from pathlib import Path
from statistics import NormalDist

import numpy as np
from scipy import ndimage

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_write_text
from ctdl.io.nifti import read_nifti, write_nifti
from ctdl.io.volume import Volume

__all__ = [
    "PhantomParams",
    "Tissue",
    "render_phantom",
    "resample_nearest",
    "select_cases",
    "synth_kits_case",
    "synth_kits_dataset",
]

MANIFEST = "synthetic.json"
_SLAB_VOXELS = 8_000_000  # voxels per slab in the slab-wise passes (bounds temporary memory)


class Tissue(IntEnum):
    """Tissue classes of the phantom's tissue map (returned by :func:`render_phantom`)."""

    AIR = 0
    SUBCUT_FAT = 1
    MUSCLE = 2
    VISCERAL_FAT = 3
    SOFT_TISSUE = 4
    BOWEL_GAS = 5
    CANCELLOUS_BONE = 6
    CORTICAL_BONE = 7
    DISC = 8
    CSF = 9
    AORTA = 10
    IVC = 11
    PERIRENAL_FAT = 12
    RENAL_CORTEX = 13
    RENAL_MEDULLA = 14
    RENAL_PELVIS = 15
    TUMOUR = 16
    NECROSIS = 17


_ENHANCED = (Tissue.AORTA, Tissue.IVC, Tissue.RENAL_CORTEX, Tissue.RENAL_MEDULLA)
_PERIRENAL_REPLACES = (Tissue.SOFT_TISSUE, Tissue.VISCERAL_FAT, Tissue.BOWEL_GAS, Tissue.MUSCLE)


@dataclass(frozen=True)
class PhantomParams:
    """Every HU level, texture, noise and blur setting of the phantom (pairs are (mean HU, texture std HU))."""

    air: tuple[float, float] = (-1000.0, 0.0)
    subcut_fat: tuple[float, float] = (-100.0, 10.0)
    visceral_fat: tuple[float, float] = (-95.0, 12.0)
    perirenal_fat: tuple[float, float] = (-95.0, 12.0)
    bowel_gas: tuple[float, float] = (-900.0, 40.0)
    muscle: tuple[float, float] = (50.0, 8.0)
    soft_tissue: tuple[float, float] = (60.0, 10.0)
    soft_tissue_modulation_hu: float = 15.0  # std of the low-frequency per-region HU shift of soft tissue
    cancellous_bone: tuple[float, float] = (250.0, 35.0)
    cortical_bone: tuple[float, float] = (850.0, 80.0)
    disc: tuple[float, float] = (90.0, 10.0)
    csf: tuple[float, float] = (20.0, 5.0)
    aorta: tuple[float, float] = (280.0, 15.0)
    ivc: tuple[float, float] = (90.0, 15.0)
    renal_cortex: tuple[float, float] = (170.0, 12.0)
    renal_medulla: tuple[float, float] = (140.0, 10.0)
    renal_pelvis: tuple[float, float] = (10.0, 5.0)
    contrast_jitter_hu: float = 10.0  # per-case U(-j, j) shift of aorta, IVC, cortex, medulla
    tumour_mean_range: tuple[float, float] = (30.0, 110.0)  # per-case tumour mean ~ U(lo, hi)
    tumour_texture_hu: float = 10.0  # shared fine texture inside the tumour
    tumour_heterogeneity_hu: float = 40.0  # case-level smooth heterogeneity field inside the tumour
    tumour_heterogeneity_mm: float = 8.0
    necrosis_range: tuple[float, float] = (15.0, 45.0)  # per-case necrosis mean ~ U(lo, hi)
    necrosis_std: float = 8.0
    necrosis_min_radius_mm: float = 12.0  # tumours whose inscribed radius is smaller get no necrosis
    necrosis_probability: float = 0.6  # chance that a large enough tumour has a necrotic core
    necrosis_depth_fraction: float = 0.55  # core = deeper than this fraction of the inscribed radius
    cortex_thickness_mm: tuple[float, float] = (5.0, 9.0)  # per-case mean cortex thickness ~ U(lo, hi)
    pelvis_fraction: float = 0.04  # deepest fraction of each kidney rendered as renal pelvis (0: off)
    perirenal_fat_mm: tuple[float, float] = (6.0, 5.0)  # thickness = mean + std * smooth field, >= 0
    subcut_fat_mm: tuple[float, float] = (10.0, 35.0)  # per-case thickness ~ U(lo, hi)
    wall_muscle_mm: tuple[float, float] = (8.0, 15.0)
    body_exponent: float = 2.5  # super-ellipse exponent of the body outline (2: ellipse)
    body_z_variation: float = 0.06  # body outline scale varies in [1, 1 + v] along axis 0
    soft_tissue_fraction: float = 0.6  # share of the peritoneal cavity that is soft tissue
    bowel_gas_fraction: float = 0.03  # share of the peritoneal cavity that is bowel gas
    texture_mm: float = 4.0  # feature size of the fine additive texture
    blob_mm: float = 25.0  # feature size of the soft-tissue blobs
    low_frequency_mm: float = 50.0  # feature size of the density / soft-tissue modulation field
    density_modulation: float = 0.01  # relative attenuation modulation (HU += (1000 + HU) * m * field)
    blur_sigma_vox: float = 0.7  # Gaussian partial-volume blur, sigma in voxels (sigma_mm = 0.7 * spacing)
    noise_hu: float = 15.0  # std of white Gaussian quantum noise
    hu_clip: tuple[float, float] = (-1024.0, 3071.0)

    @classmethod
    def arterial(cls) -> "PhantomParams":
        """Arterial / corticomedullary phase (the default)."""
        return cls()

    @classmethod
    def noncontrast(cls) -> "PhantomParams":
        """Unenhanced CT: kidney ~30 HU, RCC 20..45 HU, blood 40 HU, no corticomedullary contrast."""
        return cls(
            muscle=(45.0, 8.0),
            soft_tissue=(55.0, 8.0),
            soft_tissue_modulation_hu=8.0,
            aorta=(40.0, 8.0),
            ivc=(40.0, 8.0),
            renal_cortex=(34.0, 6.0),
            renal_medulla=(30.0, 6.0),
            renal_pelvis=(8.0, 4.0),
            contrast_jitter_hu=3.0,
            tumour_mean_range=(20.0, 45.0),
            tumour_texture_hu=6.0,
            tumour_heterogeneity_hu=8.0,
            necrosis_range=(10.0, 25.0),
            necrosis_std=5.0,
        )

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# -- geometry helpers -----------------------------------------------------------------


def resample_nearest(vol: Volume, spacing: tuple[float, float, float]) -> Volume:
    """Nearest-neighbour resampling of a label Volume to ``spacing`` (mm, (D, H, W) order).

    The new grid starts at the same outer edge as the old one; its size is
    ``round(shape * old_spacing / spacing)``; each new voxel takes the old voxel whose cell
    contains its centre. Direction is kept; the origin moves to the new first voxel centre.
    """
    old = np.asarray(vol.spacing, dtype=np.float64)
    new = np.asarray(spacing, dtype=np.float64)
    if new.shape != (3,) or np.any(new <= 0):
        raise InputError(f"spacing must be three positive numbers (D, H, W) in mm, got {spacing!r}")
    shape = np.asarray(vol.shape)
    if np.allclose(old, new, rtol=0, atol=1e-6):
        return vol
    n_new = np.maximum(1, np.round(shape * old / new).astype(int))
    idx = []
    for ax in range(3):
        ratio = new[ax] / old[ax]
        src = np.floor((np.arange(n_new[ax]) + 0.5) * ratio).astype(np.intp)
        idx.append(np.clip(src, 0, shape[ax] - 1))
    arr = vol.array[np.ix_(*idx)]
    affine = np.eye(4)
    affine[:3, :3] = vol.direction @ np.diag(new)
    affine[:3, 3] = vol.affine[:3, :3] @ (0.5 * new / old - 0.5) + vol.affine[:3, 3]
    return replace(vol, array=arr, affine=affine, meta=dict(vol.meta))


def _crop(vol: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """Sub-volume for an index box, with the origin moved so world positions are unchanged."""
    start = np.array([s.start or 0 for s in box], dtype=np.float64)
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ start + vol.affine[:3, 3]
    return replace(vol, array=np.ascontiguousarray(vol.array[box]), affine=affine, meta=dict(vol.meta))


def _anatomical_signs(vol: Volume) -> tuple[float, float]:
    """+1/-1: whether increasing H index goes posterior and increasing W index goes to the patient's left."""
    direction = vol.direction
    a_comp = direction[1, 1]  # anterior component of the H axis (RAS world)
    r_comp = direction[0, 2]  # right component of the W axis
    post = -1.0 if a_comp > 1e-6 else 1.0
    left = -1.0 if r_comp > 1e-6 else 1.0
    return post, left


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight index box of a boolean array, or None when empty."""
    box = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _pad_box(box: tuple[slice, ...], pad: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Grow an index box by ``pad`` voxels per axis, clipped to ``shape``."""
    return tuple(
        slice(max(0, s.start - int(p)), min(n, s.stop + int(p))) for s, p, n in zip(box, pad, shape)
    )


def _superellipse(dy: np.ndarray, dx: np.ndarray, a: float, b: float, p: float) -> np.ndarray:
    """Super-ellipse norm (|dy/a|^p + |dx/b|^p)^(1/p): <= 1 inside."""
    return ((np.abs(dy / a) ** p + np.abs(dx / b) ** p) ** (1.0 / p)).astype(np.float32)


# -- smooth random fields ---------------------------------------------------------------


class _SmoothField:
    """Approximately unit-variance Gaussian random field with feature size ``scale_mm``, served slab by slab."""

    def __init__(self, shape: tuple[int, ...], spacing: np.ndarray, scale_mm: float, rng: np.random.Generator) -> None:
        spacing = np.asarray(spacing, dtype=np.float64)
        grid = np.maximum(spacing, scale_mm / 2.0)  # coarse grid spacing per axis
        extent = (np.asarray(shape) - 1) * spacing
        cshape = tuple(int(n) for n in np.floor(extent / grid).astype(int) + 2)
        coarse = rng.standard_normal(cshape, dtype=np.float32)
        ndimage.gaussian_filter(coarse, 1.0, output=coarse, mode="reflect", truncate=3.0)
        coarse -= coarse.mean()
        coarse /= max(float(coarse.std()), 1e-6)
        self._lerp: list[tuple[np.ndarray, np.ndarray]] = []
        for ax in range(3):
            pos = np.arange(shape[ax]) * (spacing[ax] / grid[ax])
            i0 = np.clip(np.floor(pos).astype(np.intp), 0, cshape[ax] - 2)
            self._lerp.append((i0, (pos - i0).astype(np.float32)))
        plane = _lerp_axis(coarse, *self._lerp[1], axis=1)
        self._plane = _lerp_axis(plane, *self._lerp[2], axis=2)  # (Dc, H, W)

    def slab(self, z0: int, z1: int) -> np.ndarray:
        """Field values for slices z0:z1, shape (z1 - z0, H, W), float32."""
        i0, w = self._lerp[0]
        return _lerp_axis(self._plane, i0[z0:z1], w[z0:z1], axis=0)


def _lerp_axis(a: np.ndarray, i0: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at positions ``i0 + w``."""
    a0 = np.take(a, i0, axis=axis)
    a1 = np.take(a, i0 + 1, axis=axis)
    shape = [1] * a.ndim
    shape[axis] = -1
    a1 -= a0
    a1 *= w.reshape(shape)
    a0 += a1
    return a0


def _smooth_1d(n: int, spacing: float, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random curve in [0, 1] along one axis (knots every ``scale_mm``)."""
    knots = max(2, int(np.ceil(n * spacing / scale_mm)) + 2)
    values = rng.uniform(0.0, 1.0, knots)
    return np.interp(np.arange(n) * spacing / scale_mm, np.arange(knots), values).astype(np.float32)


# -- rendering ---------------------------------------------------------------------------


def _slabs(shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Slice ranges along axis 0 holding about ``_SLAB_VOXELS`` voxels each."""
    step = max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2]))
    return [(z, min(shape[0], z + step)) for z in range(0, shape[0], step)]


def _layout(
    lab: np.ndarray, y: np.ndarray, x: np.ndarray, p: PhantomParams, rng: np.random.Generator
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Random in-plane anatomy placed around the kidneys: body outline, layers and 2D structure maps."""
    counts = np.count_nonzero(lab, axis=0)  # (H, W) organ voxels per column
    hh, ww = np.nonzero(counts)
    if hh.size:
        ky, kx = y[hh], x[ww]
        wts = counts[hh, ww].astype(np.float64)
        ky_c = float(np.average(ky, weights=wts))
        cx = float((kx.min() + kx.max()) / 2) if np.ptp(kx) > 100.0 else float((x.min() + x.max()) / 2)
    else:
        ky = kx = np.zeros(0, np.float32)
        ky_c, cx = float((y.min() + y.max()) / 2), float((x.min() + x.max()) / 2)

    # spine and its neighbours, mm, y posterior-positive, x left-positive
    vy = ky_c + rng.uniform(-5.0, 10.0)
    a_vb, b_vb = rng.uniform(14.0, 18.0), rng.uniform(19.0, 24.0)
    cort = 2.0
    r_canal = rng.uniform(7.0, 9.0)
    canal_y = vy + a_vb + r_canal + 1.0
    arch_r = r_canal + 4.5
    spin_y, spin_a = canal_y + arch_r + 12.0, 13.0
    psoas = (vy + 2.0, b_vb + 14.0, 14.0, 12.0)
    erector = (canal_y + 14.0, 24.0, 20.0, 19.0)
    r_ao = rng.uniform(9.0, 12.0)
    aorta = (vy - a_vb - r_ao - 3.0, cx + rng.uniform(5.0, 15.0))
    ivc = (vy - a_vb - 10.0, cx - rng.uniform(20.0, 30.0))

    t_fat = rng.uniform(*p.subcut_fat_mm)
    t_mus = rng.uniform(*p.wall_muscle_mm)
    y_post = max(erector[0] + erector[2], float(ky.max()) + 15.0 if ky.size else -np.inf, spin_y + spin_a)
    y_post += t_fat + t_mus * 0.5
    y_ant = vy - rng.uniform(100.0, 160.0) - t_fat - t_mus
    cy = (y_post + y_ant) / 2
    a_c = (y_post - y_ant) / 2 - t_fat - t_mus  # cavity semi-axes (inside the wall muscle)
    b_c = rng.uniform(120.0, 165.0)
    pe = p.body_exponent
    margin = 10.0
    if ky.size:  # grow the cavity until every kidney column is inside it with a margin
        rmax = float(_superellipse(ky - cy, kx - cx, a_c - margin, b_c - margin, pe).max())
        if rmax > 1.0:
            a_c = (a_c - margin) * rmax + margin
            b_c = (b_c - margin) * rmax + margin

    dy = (y - cy)[:, None]
    dx = (x - cx)[None, :]
    rho_out = _superellipse(dy, dx, a_c + t_fat + t_mus, b_c + t_fat + t_mus, pe)
    rho_fat = _superellipse(dy, dx, a_c + t_mus, b_c + t_mus, pe)
    rho_cav = _superellipse(dy, dx, a_c, b_c, pe)

    H, W = y.size, x.size
    struct = np.zeros((H, W), np.uint8)
    yy, xx = y[:, None], x[None, :]

    def ell(c_y: float, c_x: float, a: float, b: float) -> np.ndarray:
        return ((yy - c_y) / a) ** 2 + ((xx - c_x) / b) ** 2 <= 1.0

    for side in (-1.0, 1.0):
        struct[ell(psoas[0], cx + side * psoas[1], psoas[2], psoas[3])] = Tissue.MUSCLE
        struct[ell(erector[0], cx + side * erector[1], erector[2], erector[3])] = Tissue.MUSCLE
    struct[ell(aorta[0], aorta[1], r_ao, r_ao)] = Tissue.AORTA
    struct[ell(ivc[0], ivc[1], 9.0, 13.0)] = Tissue.IVC
    struct[ell(canal_y, cx, arch_r, arch_r)] = Tissue.CORTICAL_BONE
    struct[ell(spin_y, cx, spin_a, 3.5)] = Tissue.CORTICAL_BONE
    struct[ell(canal_y, cx, r_canal, r_canal)] = Tissue.CSF
    vb = ell(vy, cx, a_vb, b_vb)
    struct[vb] = Tissue.CORTICAL_BONE
    struct[ell(vy, cx, a_vb - cort, b_vb - cort)] = Tissue.CANCELLOUS_BONE
    disc_map = struct.copy()
    disc_map[vb] = Tissue.DISC
    plate_map = struct.copy()
    plate_map[vb] = Tissue.CORTICAL_BONE
    return (rho_out, rho_fat, rho_cav), np.stack([struct, disc_map, plate_map])


def _slice_kinds(n: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Per slice: 0 vertebral body, 1 disc, 2 end plate (lumbar pitch ~32-38 mm, disc ~8-11 mm)."""
    pitch = rng.uniform(32.0, 38.0)
    disc = rng.uniform(8.0, 11.0)
    plate = 1.5
    m = (np.arange(n) * spacing + rng.uniform(0.0, pitch)) % pitch
    kinds = np.zeros(n, np.intp)
    kinds[(m >= disc) & (m < disc + plate)] = 2
    kinds[m >= pitch - plate] = 2
    kinds[m < disc] = 1
    return kinds


def _column_runs(occupied: np.ndarray, pad: int) -> list[tuple[int, int]]:
    """Index ranges of runs of True along a 1D array, each grown by ``pad`` and merged when they touch."""
    hit = np.flatnonzero(occupied)
    if hit.size == 0:
        return []
    runs: list[list[int]] = []
    for i in hit:
        lo, hi = max(0, int(i) - pad), min(occupied.size, int(i) + pad + 1)
        if runs and lo <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], hi)
        else:
            runs.append([lo, hi])
    return [(lo, hi) for lo, hi in runs]


def _render_kidneys(
    lab: np.ndarray, tissue: np.ndarray, spacing: np.ndarray, p: PhantomParams, rng: np.random.Generator
) -> None:
    """Paint perirenal fat, cortex, medulla, pelvis, tumour and necrosis into ``tissue`` (in place)."""
    organ_all = lab > 0
    box = _bbox(organ_all)
    if box is None:
        return
    peri_mean, peri_std = p.perirenal_fat_mm
    peri_max = peri_mean + 3.0 * peri_std
    pad = np.ceil(peri_max / spacing).astype(int) + 2
    box = _pad_box(box, pad, lab.shape)
    # split the box where whole W-column bands hold no organ (left / right kidney apart)
    occ = organ_all[box].any(axis=(0, 1))
    del organ_all
    runs = _column_runs(occ, int(pad[2]))
    cortex_mm = rng.uniform(*p.cortex_thickness_mm)
    replaceable = np.array([t in _PERIRENAL_REPLACES for t in range(len(Tissue))])
    for lo, hi in runs:
        sub = (box[0], box[1], slice(box[2].start + lo, box[2].start + hi))
        lab_c = lab[sub]
        t_c = tissue[sub]  # view: writes go into ``tissue``
        organ = lab_c > 0
        shape = organ.shape
        # perirenal fat: smooth-thickness shell around kidney + tumour
        d_out = _edt(~organ, spacing)
        thick = _SmoothField(shape, spacing, 20.0, rng).slab(0, shape[0])
        thick *= peri_std
        thick += peri_mean
        peri = (d_out <= thick) & ~organ & replaceable[t_c]
        t_c[peri] = Tissue.PERIRENAL_FAT
        del d_out, thick, peri
        # kidney: cortex shell of varying thickness, medulla, deepest voxels as pelvis
        d_in = _edt(organ, spacing)
        kid = lab_c == 1
        cfield = _SmoothField(shape, spacing, 6.0, rng).slab(0, shape[0])
        cfield *= 0.35 * cortex_mm
        cfield += cortex_mm
        t_c[kid] = Tissue.RENAL_MEDULLA
        t_c[kid & (d_in <= cfield)] = Tissue.RENAL_CORTEX
        del cfield
        if p.pelvis_fraction > 0:
            _paint_pelvis(kid, d_in, t_c, spacing, p.pelvis_fraction)
        # tumour and its necrotic core
        tbox = _bbox(lab_c == 2)
        if tbox is not None:
            tbox = _pad_box(tbox, np.ones(3, int), shape)
            tum = lab_c[tbox] == 2
            t_t = t_c[tbox]  # view
            t_t[tum] = Tissue.TUMOUR
            d_t = _edt(tum, spacing)
            comps, n = ndimage.label(tum)
            radius = np.asarray(ndimage.maximum(d_t, comps, np.arange(1, n + 1)), dtype=np.float32).reshape(-1)
            has_core = (radius >= p.necrosis_min_radius_mm) & (rng.uniform(size=n) < p.necrosis_probability)
            if has_core.any():
                depth = np.concatenate([[np.inf], np.where(has_core, p.necrosis_depth_fraction * radius, np.inf)])
                nfield = _SmoothField(tum.shape, spacing, 6.0, rng).slab(0, tum.shape[0])
                nfield *= 0.2
                nfield += 1.0
                core = tum & (d_t > depth[comps].astype(np.float32) * nfield)
                t_t[core] = Tissue.NECROSIS


def _edt(mask: np.ndarray, spacing: np.ndarray, target_mm: float = 1.0) -> np.ndarray:
    """Distance (mm, float32) to the nearest False voxel; axes finer than target_mm/2 are subsampled, then interpolated."""
    step = np.maximum(1, np.floor(target_mm / spacing)).astype(int)
    step = np.where(np.asarray(mask.shape) >= 2 * step, step, 1)
    if np.all(step == 1):
        return ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32)
    sub = mask[:: step[0], :: step[1], :: step[2]]
    dist = ndimage.distance_transform_edt(sub, sampling=spacing * step).astype(np.float32)
    for ax in range(3):
        if step[ax] > 1:
            pos = np.arange(mask.shape[ax]) / step[ax]
            i0 = np.clip(np.floor(pos).astype(np.intp), 0, dist.shape[ax] - 2)
            dist = _lerp_axis(dist, i0, (pos - i0).astype(np.float32), axis=ax)
    return dist


def _paint_pelvis(kid: np.ndarray, d_in: np.ndarray, t_c: np.ndarray, spacing: np.ndarray, fraction: float) -> None:
    """Mark the deepest ``fraction`` of each kidney component (>= 20 ml) as renal pelvis."""
    comps, n = ndimage.label(kid)
    if n == 0:
        return
    where = np.flatnonzero(comps.ravel())
    comp = comps.ravel()[where]
    depth = d_in.ravel()[where]
    order = np.lexsort((depth, comp))
    comp_sorted = comp[order]
    counts = np.bincount(comp, minlength=n + 1)
    starts = np.concatenate([[0], np.cumsum(counts[1:])])[:-1]
    rank = np.arange(order.size) - starts[comp_sorted - 1]
    big = counts * float(np.prod(spacing)) / 1000.0 >= 20.0
    keep = (rank >= (1.0 - fraction) * counts[comp_sorted]) & big[comp_sorted]
    flat = t_c.reshape(-1) if t_c.flags.c_contiguous else None
    if flat is not None:
        flat[where[order[keep]]] = Tissue.RENAL_PELVIS
    else:
        idx = np.unravel_index(where[order[keep]], t_c.shape)
        t_c[idx] = Tissue.RENAL_PELVIS


def _luts(p: PhantomParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tissue mean HU, texture std and low-frequency modulation amplitude, with this case's draws."""
    n = len(Tissue)
    mean = np.zeros(n, np.float32)
    std = np.zeros(n, np.float32)
    pairs = {
        Tissue.AIR: p.air,
        Tissue.SUBCUT_FAT: p.subcut_fat,
        Tissue.MUSCLE: p.muscle,
        Tissue.VISCERAL_FAT: p.visceral_fat,
        Tissue.SOFT_TISSUE: p.soft_tissue,
        Tissue.BOWEL_GAS: p.bowel_gas,
        Tissue.CANCELLOUS_BONE: p.cancellous_bone,
        Tissue.CORTICAL_BONE: p.cortical_bone,
        Tissue.DISC: p.disc,
        Tissue.CSF: p.csf,
        Tissue.AORTA: p.aorta,
        Tissue.IVC: p.ivc,
        Tissue.PERIRENAL_FAT: p.perirenal_fat,
        Tissue.RENAL_CORTEX: p.renal_cortex,
        Tissue.RENAL_MEDULLA: p.renal_medulla,
        Tissue.RENAL_PELVIS: p.renal_pelvis,
    }
    for t, (m, s) in pairs.items():
        mean[t], std[t] = m, s
    jitter = rng.uniform(-p.contrast_jitter_hu, p.contrast_jitter_hu)
    for t in _ENHANCED:
        mean[t] += jitter
    mean[Tissue.TUMOUR] = rng.uniform(*p.tumour_mean_range)
    std[Tissue.TUMOUR] = p.tumour_texture_hu
    mean[Tissue.NECROSIS] = rng.uniform(*p.necrosis_range)
    std[Tissue.NECROSIS] = p.necrosis_std
    mod = np.zeros(n, np.float32)
    mod[Tissue.SOFT_TISSUE] = p.soft_tissue_modulation_hu
    return mean, std, mod


def render_phantom(
    label: Volume, seed: int = 0, params: PhantomParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render an int16 HU image and a uint8 :class:`Tissue` map on the grid of a 0/1/2 label Volume."""
    p = params or PhantomParams()
    rng = np.random.default_rng(seed)
    lab = np.asarray(label.array)
    if lab.dtype != np.uint8:
        lab = lab.astype(np.uint8)
    D, H, W = lab.shape
    spacing = np.asarray(label.spacing, dtype=np.float64)
    post, left = _anatomical_signs(label)
    y = (np.arange(H) * spacing[1] * post).astype(np.float32)
    x = (np.arange(W) * spacing[2] * left).astype(np.float32)

    (rho_out, rho_fat, rho_cav), struct = _layout(lab, y, x, p, rng)
    kinds = _slice_kinds(D, spacing[0], rng)
    scale = 1.0 + p.body_z_variation * _smooth_1d(D, spacing[0], 60.0, rng)
    blob = _SmoothField(lab.shape, spacing, p.blob_mm, rng)
    low = _SmoothField(lab.shape, spacing, p.low_frequency_mm, rng)
    tex = _SmoothField(lab.shape, spacing, p.texture_mm, rng)
    nd = NormalDist()
    soft_thr = nd.inv_cdf(1.0 - min(max(p.soft_tissue_fraction, 1e-6), 1 - 1e-6))
    gas_share = min(max(2.0 * p.bowel_gas_fraction, 1e-9), 1 - 1e-6)  # gas only where low > 0 (half)
    gas_thr = nd.inv_cdf(1.0 - gas_share)

    # pass 1: tissue map, slab by slab (2D outline/structures broadcast along axis 0)
    tissue = np.zeros(lab.shape, np.uint8)
    for z0, z1 in _slabs(lab.shape):
        s = scale[z0:z1, None, None]
        t = tissue[z0:z1]
        body = rho_out[None] <= s
        t[body] = Tissue.SUBCUT_FAT
        t[rho_fat[None] <= s] = Tissue.MUSCLE
        cav = rho_cav[None] <= s
        fb = blob.slab(z0, z1)
        content = np.where(fb > soft_thr, np.uint8(Tissue.SOFT_TISSUE), np.uint8(Tissue.VISCERAL_FAT))
        content[(fb > gas_thr) & (low.slab(z0, z1) > 0)] = Tissue.BOWEL_GAS
        np.copyto(t, content, where=cav)
        st = struct[kinds[z0:z1]]
        np.copyto(t, st, where=(st > 0) & body)
        del body, cav, fb, content, st
    _render_kidneys(lab, tissue, spacing, p, rng)

    # pass 2: intensities
    mean, std, mod = _luts(p, rng)
    image = np.empty(lab.shape, np.float32)
    for z0, z1 in _slabs(lab.shape):
        t = tissue[z0:z1]
        v = image[z0:z1]
        np.take(mean, t, out=v, mode="clip")
        f = tex.slab(z0, z1)
        f *= np.take(std, t, mode="clip")
        v += f
        f = low.slab(z0, z1)
        v += np.take(mod, t, mode="clip") * f
        f *= p.density_modulation
        f *= v + 1000.0
        v += f
        del f
    box = _bbox(lab == 2)
    if box is not None and p.tumour_heterogeneity_hu > 0:
        tum = lab[box] == 2
        het = _SmoothField(tum.shape, spacing, p.tumour_heterogeneity_mm, rng).slab(0, tum.shape[0])
        het *= p.tumour_heterogeneity_hu
        image[box] += np.where(tum, het, np.float32(0))
        del tum, het
    if p.blur_sigma_vox > 0:
        ndimage.gaussian_filter(image, p.blur_sigma_vox, output=image, mode="nearest", truncate=3.0)
    out = np.empty(lab.shape, np.int16)
    lo, hi = p.hu_clip
    for z0, z1 in _slabs(lab.shape):
        v = image[z0:z1]
        if p.noise_hu > 0:
            n = rng.standard_normal(v.shape, dtype=np.float32)
            n *= p.noise_hu
            v += n
            del n
        np.rint(v, out=v)
        np.clip(v, lo, hi, out=v)
        out[z0:z1] = v
    return out, tissue


def _check_labels(mask: Volume) -> None:
    """Raise InputError unless the mask holds only the labels 0, 1 and 2."""
    arr = np.asarray(mask.array)
    ok = arr.size == 0 or (float(arr.min()) >= 0 and float(arr.max()) <= 2)
    if ok and not np.issubdtype(arr.dtype, np.integer):
        ok = bool(np.all(arr == np.round(arr)))
    if not ok:
        values = np.unique(arr)[:10].tolist()
        raise InputError(f"{mask.meta.get('source', 'mask')}: label values {values} are not within {{0, 1, 2}}")


def synth_kits_case(
    mask: Volume,
    spacing: tuple[float, float, float] | None = (3.0, 1.5, 1.5),
    seed: int = 0,
    params: PhantomParams | None = None,
    *,
    margin_slices: int | None = None,
    crop_to_body: bool = False,
) -> tuple[Volume, Volume]:
    """Phantom CT (int16 HU) and its label (uint8 0/1/2) for a KiTS19 mask, on the same grid.

    ``spacing`` None keeps the native grid. ``margin_slices`` crops axis 0 to the kidneys'
    extent plus that many slices on each side (before rendering, so it also saves time);
    ``crop_to_body`` crops axes 1 and 2 to the body outline plus 2 voxels.
    """
    _check_labels(mask)
    lab_vol = mask if spacing is None else resample_nearest(mask, spacing)
    lab_vol = replace(lab_vol, array=np.asarray(lab_vol.array).astype(np.uint8, copy=False))
    if margin_slices is not None:
        hit = np.flatnonzero(lab_vol.array.any(axis=(1, 2)))
        if hit.size:
            z0 = max(0, int(hit[0]) - margin_slices)
            z1 = min(lab_vol.shape[0], int(hit[-1]) + 1 + margin_slices)
            lab_vol = _crop(lab_vol, (slice(z0, z1), slice(0, lab_vol.shape[1]), slice(0, lab_vol.shape[2])))
    image, tissue = render_phantom(lab_vol, seed, params)
    meta = {k: v for k, v in lab_vol.meta.items() if k != "source"}
    img_vol = replace(lab_vol, array=image, meta={**meta, "modality": "CT", "synthetic": "kits_phantom", "seed": seed})
    seg_vol = replace(lab_vol, meta={**lab_vol.meta, "kind": "label"})
    if crop_to_body:
        box = _bbox(tissue != Tissue.AIR)
        if box is not None:
            box = (slice(0, lab_vol.shape[0]),) + _pad_box(box[1:], np.array([2, 2]), lab_vol.shape[1:])
            img_vol, seg_vol = _crop(img_vol, box), _crop(seg_vol, box)  # type: ignore[arg-type]
    return img_vol, seg_vol


# -- datasets ------------------------------------------------------------------------------


def _case_dirs(kits_root: Path) -> list[str]:
    """Names of the case folders under ``kits_root`` that hold a segmentation.nii.gz, sorted."""
    if not kits_root.is_dir():
        raise InputError(f"{kits_root}: KiTS19 folder not found")
    return sorted(d.name for d in kits_root.iterdir() if (d / "segmentation.nii.gz").is_file())


def select_cases(kits_root: str | Path, n: int, seed: int = 0) -> list[str]:
    """A reproducible random choice of ``n`` case names (sorted) from a KiTS19-layout folder."""
    names = _case_dirs(Path(kits_root))
    if not 0 <= n <= len(names):
        raise InputError(f"{kits_root}: asked for {n} cases, {len(names)} available")
    pick = np.random.default_rng(seed).choice(len(names), size=n, replace=False)
    return sorted(names[int(i)] for i in pick)


def _case_seed(seed: int, name: str) -> int:
    """Per-case seed derived from the dataset seed and the case name."""
    digits = "".join(c for c in name if c.isdigit())
    key = int(digits) if digits else zlib.crc32(name.encode())
    return int(np.random.SeedSequence([int(seed), key]).generate_state(1)[0])


def _render_case(kits_root: Path, case_dir: Path, name: str, spacing: tuple[float, float, float] | None, seed: int,
                 params: PhantomParams, margin_slices: int | None, crop_to_body: bool) -> str:
    """Render and write one phantom case (label first, both atomically); returns its name."""
    mask = read_nifti(kits_root / name / "segmentation.nii.gz")
    img, seg = synth_kits_case(mask, spacing, seed, params, margin_slices=margin_slices, crop_to_body=crop_to_body)
    del mask
    write_nifti(seg, case_dir / "segmentation.nii.gz", dtype=np.uint8)
    write_nifti(img, case_dir / "imaging.nii.gz", dtype=np.int16)
    return name


def synth_kits_dataset(
    kits_root: str | Path,
    out_root: str | Path,
    cases: list[str] | int,
    spacing: tuple[float, float, float] | None = (3.0, 1.5, 1.5),
    seed: int = 0,
    crop_to_body: bool = False,
    progress: bool = True,
    *,
    margin_slices: int | None = None,
    params: PhantomParams | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write phantom cases as ``out_root/case_XXXXX/{imaging,segmentation}.nii.gz``; returns the case folders.

    ``cases`` is a list of case names or a count (``select_cases(kits_root, n, seed)``).
    Cases whose two files already exist are skipped (idempotent); ``out_root/synthetic.json``
    records the settings of every case, and asking for a present case with different
    settings is an error rather than a silent mix. ``workers`` processes render missing cases
    in parallel (None: one per CPU core, at most 4); every case has its own seed, so the files
    are the same for any number of workers.
    """
    from tqdm.auto import tqdm

    kits_root, out_root = Path(kits_root), Path(out_root)
    names = select_cases(kits_root, cases, seed) if isinstance(cases, int) else [str(c) for c in cases]
    missing = [c for c in names if not (kits_root / c / "segmentation.nii.gz").is_file()]
    if missing:
        raise InputError(f"{kits_root}: no segmentation.nii.gz for {', '.join(missing[:5])}")
    p = params or PhantomParams()
    manifest_path = out_root / MANIFEST
    manifest: dict[str, dict[str, object]] = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text()).get("cases", {})
    todo: dict[str, dict[str, object]] = {}  # name -> settings of the cases still to render
    for name in names:
        settings: dict[str, object] = {
            "seed": _case_seed(seed, name),
            "spacing": None if spacing is None else [float(s) for s in spacing],
            "margin_slices": margin_slices,
            "crop_to_body": bool(crop_to_body),
            "params": p.to_dict(),
        }
        case_dir = out_root / name
        if (case_dir / "imaging.nii.gz").is_file() and (case_dir / "segmentation.nii.gz").is_file():
            if name in manifest and manifest[name] != settings:
                raise InputError(
                    f"{case_dir}: already rendered with other settings ({manifest_path}); use a new out_root"
                )
            continue
        todo[name] = settings
    jobs = [(kits_root, out_root / name, name, spacing, int(st["seed"]), p, margin_slices, crop_to_body)
            for name, st in todo.items()]
    n_workers = min(len(jobs), workers if workers is not None else min(4, os.cpu_count() or 1))
    bar = tqdm(total=len(names), initial=len(names) - len(jobs), desc="synthetic KiTS19", unit="case",
               disable=not progress)
    def done(name: str) -> None:
        manifest[name] = todo[name]
        atomic_write_text(manifest_path, json.dumps({"generator": "ctdl.data.synthetic", "cases": manifest}, indent=1))
        bar.update(1)

    if n_workers <= 1:
        for job in jobs:
            done(_render_case(*job))
    else:  # numpy/scipy rendering is mostly single-threaded: one case per core
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
            for fut in as_completed([pool.submit(_render_case, *job) for job in jobs]):
                done(fut.result())
    bar.close()
    return [out_root / name for name in names]
