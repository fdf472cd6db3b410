"""Post-processing of integer label maps ``(D, H, W)``: dense 3D CRF, largest components, hole filling.

Follows the FCN-PPM paper's order (section II.B): 3D fully connected CRF on the network's
class probabilities, then the largest connected component (18-connectivity) of the
kidney + tumour union, then (an addition of ours, optional) filling of enclosed holes.

Dense CRF (Krähenbühl & Koltun 2011), implemented here in torch because
``monai.networks.blocks.CRF`` needs MONAI's compiled ``monai._C`` permutohedral-lattice
extension, which the PyPI wheel installed here lacks (it raises ``OptionalImportError``
even for a tiny tensor), and ``pydensecrf2`` / ``SimpleCRF`` exist only as source
distributions that need a C++ build (not added as dependencies). Energy::

    E(x) = sum_i -log P_i(x_i)
           + sum_{i<j} mu(x_i, x_j) [ w_g k_g(i, j) + w_b k_b(i, j) ]
    k_g = exp(-|p_i - p_j|^2 / (2 s_g^2))                                   (positions in mm)
    k_b = exp(-|p_i - p_j|^2 / (2 s_b^2) - (I_i - I_j)^2 / (2 s_I^2))

Mean-field inference: ``Q <- softmax(log P - sum_k w_k mu @ m_k)`` with the message
``m_k(i) = sum_{j != i} k(i, j) Q(j) / sum_{j != i} k(i, j)``. The messages are
*normalised* (a weighted average of the neighbours' beliefs, like pydensecrf's kernel
normalisation), so ``w_g`` and ``w_b`` are in log-probability units and independent of
the kernel widths and the voxel size. Potts compatibility ``mu = 1 - I`` by default.

* Gaussian (spatial) message: exact up to truncation at ``truncate`` sigmas: a separable
  Gaussian computed as a sum of shifted copies along each axis (faster on CPU than
  ``conv3d``/``conv1d`` for these 5-25-tap kernels), zero outside the volume; the
  normaliser only counts voxels inside the volume.
* Bilateral message: APPROXIMATED with a bilateral grid (piecewise-linear bilateral
  filter of Durand & Dorsey 2002 on a spatially subsampled grid, as in Paris & Durand's
  bilateral grid): intensities are covered by bins ``c_b`` spaced ``intensity_step *
  sigma_intensity`` apart; for each bin the belief weighted by the range kernel
  ``exp(-(I_j - c_b)^2 / (2 s_I^2))`` is average-pooled to a grid with cells of
  ``floor(sigma_bilateral_vox / 2)`` voxels per axis, Gaussian-filtered there,
  trilinearly upsampled and linearly interpolated between the two bins bracketing each
  voxel's own intensity. Exact at bin-centre intensities up to the grid's extra blur
  (a few % of sigma); the self term ``j = i`` is removed with weight 1. Against a
  brute-force O(N^2) mean-field step on small volumes the refined probabilities differ
  by < 0.01 on average (tested).
* ``sigma_intensity=None`` picks 10 % of the image's 1st-99th percentile range.
  Intensities are clipped to the 0.5-99.5th percentiles for binning, and the step is
  enlarged so that at most ``max_bins`` bins are used.

Defaults: ``w_g=3, s_g=2 mm, w_b=5, s_b=5 mm``, 5 iterations. On a synthetic kidney +
tumour with a contrasted image the CRF lifts Dice from ~0.80/0.51 to ~0.99/0.92 (tests);
``s_b=10 mm`` erased a 7 mm-radius tumour there. Caveat: Potts smoothing shrinks convex
objects where the image has little contrast (on a constant image a kidney's Dice fell
from 0.93 to 0.59) and small low-contrast tumours can vanish: validate/tune the weights
on held-out cases, or lower them (``w_g=1, w_b=3`` is gentler).

Speed measured on this 2-core machine (torch 2.13 CPU), 64x150x150 crop, K=3, spacing
(2.5, 0.75, 0.75) mm, defaults (12 intensity bins, grid cells 1x3x3 voxels): about
1.7 s with 2 threads on a lightly loaded machine, 2.2-3.1 s with 1 thread while other
jobs shared the cores; with 2 threads on oversubscribed cores it degraded to ~12 s
(thread contention: the cost is then per operation, not per voxel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "connectivity_structure",
    "largest_components",
    "fill_holes",
    "dense_crf",
    "postprocess",
]

_RANK = {6: 1, 18: 2, 26: 3}


def connectivity_structure(connectivity: int) -> np.ndarray:
    """3D structuring element for 6 (faces), 18 (faces+edges) or 26 (faces+edges+corners) connectivity."""
    if connectivity not in _RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return ndimage.generate_binary_structure(3, _RANK[connectivity])


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Validate an integer (D, H, W) label map and return it as an ndarray."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (D, H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    return labels


def largest_components(
    labels: np.ndarray,
    foreground_labels: Sequence[int] = (1, 2),
    connectivity: int = 18,
    keep: int = 1,
) -> np.ndarray:
    """Keep the ``keep`` largest connected components of the union of ``foreground_labels``; zero the rest."""
    labels = _check_labels(labels)
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    out = labels.copy()
    mask = np.isin(labels, list(foreground_labels))
    comp, n = ndimage.label(mask, structure=connectivity_structure(connectivity))
    if n <= keep:
        return out
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    sizes[0] = 0
    # stable sort: among equal sizes the component found first (lower index) wins
    order = np.argsort(-sizes[1:], kind="stable") + 1
    kept = np.zeros(n + 1, dtype=bool)
    kept[order[:keep]] = True
    out[mask & ~kept[comp]] = 0
    return out


def fill_holes(
    labels: np.ndarray,
    label_values: Sequence[int] = (1, 2),
    mode: str = "3d",
) -> np.ndarray:
    """Fill background voxels enclosed by the union of ``label_values`` ("3d", slice-wise "2d" along axis 0, or "both").

    A hole is a connected set of background (0) voxels that the foreground union
    encloses (not connected to the array border; background connectivity 6 in 3D, 4 in
    2D: scipy's default, the dual of an 18/26- resp. 8-connected foreground). Each hole
    (one connected component of hole voxels) gets the label that is most frequent among
    the foreground voxels face-adjacent to it (in-plane only for "2d"); ties go to the
    smaller label value. Enclosed voxels carrying other non-zero labels are left as they are.
    """
    labels = _check_labels(labels)
    if mode not in ("3d", "2d", "both"):
        raise ValueError(f"mode must be '3d', '2d' or 'both', got {mode!r}")
    out = labels.copy()
    values = np.asarray(sorted(set(int(v) for v in label_values)), dtype=np.int64)
    if values.size == 0:
        return out
    for m in (("3d", "2d") if mode == "both" else (mode,)):
        out = _fill_holes_once(out, values, two_d=(m == "2d"))
    return out


_fill_holes_fn = fill_holes  # alias: postprocess() has a parameter of the same name


def _fill_holes_once(labels: np.ndarray, values: np.ndarray, two_d: bool) -> np.ndarray:
    """One hole-filling pass, 3D or per slice (hand-written majority relabelling: scipy only fills binary masks)."""
    fg = np.isin(labels, values)
    if two_d:
        filled = np.stack([ndimage.binary_fill_holes(s) for s in fg]) if fg.shape[0] else fg
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = ndimage.generate_binary_structure(2, 1)  # in-plane 4-connectivity only
        shifts = [(0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    else:
        filled = ndimage.binary_fill_holes(fg)
        structure = ndimage.generate_binary_structure(3, 1)
        shifts = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    holes = filled & (labels == 0)
    if not holes.any():
        return labels
    hole_id, n = ndimage.label(holes, structure=structure)
    # value index of each voxel's label within `values` (or -1 when not a foreground value)
    vidx = np.full(labels.shape, -1, dtype=np.int64)
    vidx[fg] = np.searchsorted(values, labels[fg])
    counts = np.zeros((n + 1) * values.size, dtype=np.int64)
    for shift in shifts:
        # pair every hole voxel with its neighbour at `shift` (hand-written: no scipy primitive)
        src = tuple(slice(max(0, -s), labels.shape[a] - max(0, s)) for a, s in enumerate(shift))
        dst = tuple(slice(max(0, s), labels.shape[a] - max(0, -s)) for a, s in enumerate(shift))
        h = hole_id[src]
        v = vidx[dst]
        ok = (h > 0) & (v >= 0)
        counts += np.bincount(h[ok] * values.size + v[ok], minlength=counts.size)
    counts = counts.reshape(n + 1, values.size)
    best = values[np.argmax(counts, axis=1)]  # argmax takes the first = smallest value on ties
    has_neighbour = counts.sum(axis=1) > 0
    out = labels.copy()
    sel = holes & has_neighbour[hole_id]
    out[sel] = best[hole_id[sel]].astype(labels.dtype)
    return out


# ----------------------------------------------------------------------------- dense CRF


def _gauss_taps(sigma: float, truncate: float) -> list[float]:
    """Unnormalised 1D Gaussian taps exp(-x^2 / 2 sigma^2) for x in [-r, r], r = round(truncate * sigma)."""
    r = int(truncate * sigma + 0.5)
    return [math.exp(-0.5 * (x / sigma) ** 2) for x in range(-r, r + 1)]


def _gauss_filter(x: torch.Tensor, sigmas: Sequence[float], truncate: float) -> torch.Tensor:
    """Unnormalised separable Gaussian over the last 3 axes of (C, D, H, W), zero outside, via shifted adds.

    Hand-written: sums of shifted views are several times faster on CPU than conv3d/conv1d here.
    """
    for ax, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        taps = _gauss_taps(float(sigma), truncate)
        r = len(taps) // 2
        a = x.ndim - 3 + ax
        n = x.shape[a]
        if r == 0:
            continue
        out = x * taps[r]
        for o in range(1, min(r, n - 1) + 1):
            # out[i] += t[o] * (x[i - o] + x[i + o]), neighbours outside the volume count as zero
            out.narrow(a, o, n - o).add_(x.narrow(a, 0, n - o), alpha=taps[r + o])
            out.narrow(a, 0, n - o).add_(x.narrow(a, o, n - o), alpha=taps[r - o])
        x = out
    return x


def _pool(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Average-pool (C, D, H, W) by ``factor`` (sizes divisible): in-plane 2D pooling, then along D (faster than 3D)."""
    c, d, h, w = x.shape
    fd, fh, fw = factor
    if (fh, fw) != (1, 1):
        x = F.avg_pool2d(x.reshape(1, c * d, h, w), (fh, fw)).reshape(c, d, h // fh, w // fw)
    if fd != 1:
        x = F.avg_pool3d(x.unsqueeze(0), (fd, 1, 1)).squeeze(0)
    return x


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear (align_corners=False) upsampling of (C, d, h, w) to ``size``, done separably: D first, then in-plane."""
    c, d, h, w = x.shape
    if d != size[0]:
        x = F.interpolate(x.unsqueeze(0), size=(size[0], h, w), mode="trilinear", align_corners=False).squeeze(0)
    if (h, w) != tuple(size[1:]):
        x = F.interpolate(x.reshape(1, c * size[0], h, w), size=tuple(size[1:]), mode="bilinear", align_corners=False)
    return x.reshape(c, *size)


class _BilateralGrid:
    """Precomputed binning/grid geometry for the approximate bilateral message (hand-written; see module docstring)."""

    def __init__(
        self,
        image: torch.Tensor,
        sigma_vox: Sequence[float],
        sigma_intensity: float,
        intensity_step: float,
        max_bins: int,
        truncate: float,
    ) -> None:
        lo, hi = _quantiles(image, (0.005, 0.995))
        img = image.clamp(lo, hi)
        step = max(intensity_step * sigma_intensity, (hi - lo) / max(1, max_bins - 2), 1e-12)
        n_bins = int(math.floor((hi - lo) / step)) + 2
        self.centres = [lo + b * step for b in range(n_bins)]
        self.t = (img - lo) / step  # intensity in bin units, in [0, n_bins - 1]
        b0 = self.t.floor().clamp(0, n_bins - 2).to(torch.int64)
        present = torch.unique(b0).tolist()
        self.active = sorted(set(present) | {b + 1 for b in present})
        self.img = img
        self.inv2s2 = 0.5 / (sigma_intensity**2)
        self.factor = tuple(max(1, int(s // 2)) for s in sigma_vox)
        self.grid_sigma = tuple(s / f for s, f in zip(sigma_vox, self.factor))
        self.cell_volume = float(np.prod(self.factor))
        self.shape = tuple(image.shape)
        self.padded = tuple(int(math.ceil(n / f)) * f for n, f in zip(self.shape, self.factor))
        self.truncate = truncate

    def filter(self, q: torch.Tensor) -> torch.Tensor:
        """Approximate sum_j k_b(i, j) q(j) (self term included) for q of shape (K, D, H, W)."""
        pad: list[int] = []
        for n, p in zip(reversed(self.shape), reversed(self.padded)):
            pad += [0, p - n]
        needs_pad = any(pad)
        acc = torch.zeros_like(q)
        grids = []
        for b in self.active:
            w = torch.exp(-self.inv2s2 * (self.img - self.centres[b]) ** 2)
            g = F.pad(q * w, pad) if needs_pad else q * w
            grids.append(_pool(g, self.factor))
        k = q.shape[0]
        stacked = torch.cat(grids, 0)  # (len(active) * K, d, h, w)
        blurred = _gauss_filter(stacked, self.grid_sigma, self.truncate) * self.cell_volume
        for i, b in enumerate(self.active):
            up = _upsample(blurred[i * k : (i + 1) * k], self.padded)
            if needs_pad:
                up = up[:, : self.shape[0], : self.shape[1], : self.shape[2]]
            hat = (1.0 - (self.t - b).abs()).clamp_min_(0.0)  # linear interpolation weight of bin b
            acc.addcmul_(up, hat)
        return acc


def _quantiles(x: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """Quantiles of a tensor, on a strided subsample of at most ~250k values (speed)."""
    flat = x.flatten()
    if flat.numel() > 250_000:
        flat = flat[:: flat.numel() // 250_000 + 1]
    return torch.quantile(flat.double(), torch.tensor(list(qs), dtype=torch.float64)).tolist()


def _compat_matrix(compat: str | np.ndarray | Sequence[Sequence[float]], k: int) -> torch.Tensor:
    """Label compatibility mu (K, K): "potts" -> 1 - I, or a user matrix."""
    if isinstance(compat, str):
        if compat != "potts":
            raise ValueError(f"compat must be 'potts' or a (K, K) matrix, got {compat!r}")
        return 1.0 - torch.eye(k)
    mu = torch.as_tensor(np.asarray(compat, dtype=np.float32))
    if mu.shape != (k, k):
        raise ValueError(f"compat matrix must be ({k}, {k}), got {tuple(mu.shape)}")
    return mu


def dense_crf(
    probs: np.ndarray,
    image: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    n_iter: int = 5,
    w_gaussian: float = 3.0,
    sigma_gaussian_mm: float = 2.0,
    w_bilateral: float = 5.0,
    sigma_bilateral_mm: float = 5.0,
    sigma_intensity: float | None = None,
    compat: str | np.ndarray = "potts",
    intensity_step: float = 1.0,
    max_bins: int = 32,
    truncate: float = 3.0,
    eps: float = 1e-6,
) -> np.ndarray:
    """3D fully connected CRF (mean field; Gaussian + approximate bilateral kernel) -> probs (K, D, H, W) float32."""
    p = np.asarray(probs)
    img = np.asarray(image)
    if p.ndim != 4:
        raise ValueError(f"probs must be (K, D, H, W), got shape {p.shape}")
    if img.shape != p.shape[1:]:
        raise ValueError(f"image shape {img.shape} must equal the probs' spatial shape {p.shape[1:]}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers (mm, D/H/W order), got {spacing!r}")
    if max_bins < 3 or intensity_step <= 0 or n_iter < 0:
        raise ValueError(
            f"need max_bins >= 3, intensity_step > 0, n_iter >= 0 (got {max_bins}, {intensity_step}, {n_iter})"
        )
    k = p.shape[0]
    with torch.inference_mode():
        pt = torch.as_tensor(p, dtype=torch.float32).clamp_min(eps)
        unary = torch.log(pt / pt.sum(0, keepdim=True))  # = -U
        it = torch.as_tensor(img, dtype=torch.float32)
        if sigma_intensity is None:
            q01, q99 = _quantiles(it, (0.01, 0.99))
            sigma_intensity = max(0.1 * (q99 - q01), 1e-6)
        mu = _compat_matrix(compat, k)
        sg = [sigma_gaussian_mm / s for s in spacing]
        sb = [sigma_bilateral_mm / s for s in spacing]
        grid = (
            _BilateralGrid(it, sb, float(sigma_intensity), intensity_step, max_bins, truncate)
            if w_bilateral != 0
            else None
        )
        q = torch.softmax(unary, 0)
        for _ in range(n_iter):
            energy = unary.clone()
            if w_gaussian != 0:
                mg = _gauss_filter(q, sg, truncate)
                mg = (mg - q) / (mg.sum(0, keepdim=True) - 1.0).clamp_min(eps)  # drop j = i, normalise
                energy -= w_gaussian * torch.einsum("lk,k...->l...", mu, mg)
            if grid is not None:
                mb = grid.filter(q)
                mb = (mb - q) / (mb.sum(0, keepdim=True) - 1.0).clamp_min(eps)
                energy -= w_bilateral * torch.einsum("lk,k...->l...", mu, mb)
            q = torch.softmax(energy, 0)
        return q.numpy().astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- chain


def postprocess(
    labels: np.ndarray,
    probs: np.ndarray | None = None,
    image: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    crf: dict[str, Any] | None = None,
    largest_component: dict[str, Any] | None = None,
    fill_holes: bool | dict[str, Any] = False,
) -> np.ndarray:
    """Paper order: CRF (needs probs + image; labels := argmax) -> largest component(s) -> hole filling; each optional.

    ``crf`` / ``largest_component`` are keyword dicts for :func:`dense_crf` /
    :func:`largest_components` (``{}`` = defaults, ``None`` = skip); ``fill_holes`` is
    ``True``/``False`` or a keyword dict for :func:`fill_holes`. ``spacing`` defaults to
    1 mm isotropic.
    """
    out = _check_labels(labels)
    if crf is not None:
        if probs is None or image is None:
            raise ValueError("postprocess: the CRF step needs both `probs` (K, D, H, W) and `image` (D, H, W)")
        refined = dense_crf(probs, image, spacing if spacing is not None else (1.0, 1.0, 1.0), **crf)
        out = np.argmax(refined, axis=0).astype(out.dtype if out.dtype != np.bool_ else np.uint8)
    if largest_component is not None:
        out = largest_components(out, **largest_component)
    if fill_holes:
        kwargs = fill_holes if isinstance(fill_holes, dict) else {}
        out = _fill_holes_fn(out, **kwargs)
    return out

