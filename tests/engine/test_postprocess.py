"""Tests for ctdl.engine.postprocess: connectivity, largest components, hole filling, dense CRF, chain."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from ctdl.engine.postprocess import (
    connectivity_structure,
    dense_crf,
    fill_holes,
    largest_components,
    postprocess,
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(a, b).sum() / denom)


def ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Boolean ellipsoid (voxel units)."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


# ----------------------------------------------------------------------------- connectivity


def connectivity_case() -> np.ndarray:
    """2x2x2 blob + a face neighbour, an edge-only neighbour and a corner-only neighbour."""
    lab = np.zeros((5, 5, 5), dtype=np.uint8)
    lab[1:3, 1:3, 1:3] = 1  # blob, 8 voxels
    lab[1, 1, 3] = 2  # face-adjacent to (1, 1, 2)
    lab[3, 3, 2] = 1  # edge-adjacent to (2, 2, 2) only
    lab[0, 0, 0] = 2  # corner-adjacent to (1, 1, 1) only
    return lab


@pytest.mark.parametrize(
    ("connectivity", "edge_kept", "corner_kept"),
    [(6, False, False), (18, True, False), (26, True, True)],
)
def test_connectivity_semantics(connectivity: int, edge_kept: bool, corner_kept: bool) -> None:
    lab = connectivity_case()
    out = largest_components(lab, foreground_labels=(1, 2), connectivity=connectivity, keep=1)
    assert (out[1:3, 1:3, 1:3] == 1).all()
    assert out[1, 1, 3] == 2  # face neighbour: joined for every connectivity, label kept
    assert (out[3, 3, 2] == 1) == edge_kept
    assert (out[0, 0, 0] == 2) == corner_kept
    n_components = ndimage.label(lab > 0, structure=connectivity_structure(connectivity))[1]
    assert n_components == {6: 3, 18: 2, 26: 1}[connectivity]


def test_connectivity_rejects_other_values() -> None:
    with pytest.raises(ValueError):
        connectivity_structure(8)
    with pytest.raises(ValueError):
        largest_components(np.zeros((3, 3, 3), np.uint8), keep=0)


def test_largest_component_removes_far_island_and_raises_dice() -> None:
    shape = (32, 48, 48)
    truth = np.zeros(shape, dtype=np.uint8)
    kidney = ellipsoid(shape, (16, 20, 20), (10, 12, 9))
    truth[kidney] = 1
    truth[ellipsoid(shape, (18, 24, 20), (4, 4, 4)) & kidney] = 2  # tumour inside the kidney
    pred = truth.copy()
    pred[ellipsoid(shape, (5, 40, 40), (3, 4, 4))] = 1  # far island
    pred[26:29, 40:44, 3:6] = 2  # spurious "tumour" island
    before = dice(pred > 0, truth > 0)
    out = largest_components(pred, connectivity=18, keep=1)
    np.testing.assert_array_equal(out, truth)
    assert dice(out > 0, truth > 0) > before + 0.02
    assert out.dtype == pred.dtype and pred.max() == 2  # input untouched


def test_keep_two_kidneys() -> None:
    shape = (24, 40, 60)
    left = ellipsoid(shape, (12, 20, 14), (8, 10, 7))
    right = ellipsoid(shape, (12, 20, 45), (7, 9, 7))
    lab = np.zeros(shape, dtype=np.int16)
    lab[left] = 1
    lab[right] = 1
    lab[12, 20, 45] = 2
    lab[2:4, 2:4, 28:30] = 1  # island
    two = largest_components(lab, keep=2)
    assert (two[left] == 1).all() and (two[right] > 0).all() and two[12, 20, 45] == 2
    assert (two[2:4, 2:4, 28:30] == 0).all()
    one = largest_components(lab, keep=1)
    assert (one[left] == 1).all() and (one[right] == 0).all()
    np.testing.assert_array_equal(largest_components(lab, keep=5), lab)  # fewer components than keep


# ----------------------------------------------------------------------------- holes


def test_fill_holes_fills_enclosed_cavity_not_open_notch() -> None:
    lab = np.zeros((20, 20, 20), dtype=np.uint8)
    lab[3:17, 3:17, 3:17] = 1
    lab[8:12, 8:12, 8:12] = 0  # enclosed cavity
    lab[8:12, 8:12, 13:17] = 0  # notch open to the outside (reaches the face at w = 16)
    out = fill_holes(lab)
    assert (out[8:12, 8:12, 8:12] == 1).all()
    assert (out[8:12, 8:12, 13:17] == 0).all()
    assert (out[lab > 0] == 1).all() and out.sum() == lab.sum() + 64


def test_fill_holes_majority_label_and_other_labels_untouched() -> None:
    lab = np.zeros((15, 15, 15), dtype=np.uint8)
    lab[2:13, 2:13, 2:13] = 1
    lab[2:13, 2:13, 8:13] = 2  # tumour half
    lab[6:9, 6:9, 5:8] = 0  # cavity 1: face neighbours 45 x label 1 (w=4, d and h rims), 9 x label 2 (w=8)
    lab[6:9, 6:9, 9:12] = 0  # cavity 2: 45 x label 2, 0 x label 1 (w=8 and w=12 are both label 2)
    lab[6:9, 6:9, 8] = 2
    out = fill_holes(lab, label_values=(1, 2))
    assert (out[6:9, 6:9, 5:8] == 1).all()
    assert (out[6:9, 6:9, 9:12] == 2).all()
    tie = np.zeros((7, 7, 8), dtype=np.uint8)
    tie[1:6, 1:6, 1:4] = 2
    tie[1:6, 1:6, 4:7] = 1
    tie[3, 3, 3:5] = 0  # two-voxel hole: 5 face neighbours of each label -> tie -> smaller value (1)
    assert (fill_holes(tie)[3, 3, 3:5] == 1).all()
    lab3 = lab.copy()
    lab3[7, 7, 6] = 3  # a different label inside the cavity is left as is
    out3 = fill_holes(lab3, label_values=(1, 2))
    assert out3[7, 7, 6] == 3 and out3[6, 6, 5] == 1


def test_fill_holes_2d_fills_a_tube_that_3d_does_not() -> None:
    lab = np.zeros((10, 12, 12), dtype=np.uint8)
    lab[:, 2:10, 2:10] = 2
    lab[:, 4:8, 4:8] = 0  # a lumen running through all slices: open in 3D, enclosed in every slice
    np.testing.assert_array_equal(fill_holes(lab, mode="3d"), lab)
    assert (fill_holes(lab, mode="2d")[:, 4:8, 4:8] == 2).all()
    assert (fill_holes(lab, mode="both")[:, 4:8, 4:8] == 2).all()
    with pytest.raises(ValueError):
        fill_holes(lab, mode="4d")


# ----------------------------------------------------------------------------- dense CRF


def noisy_case(seed: int = 0, shape: tuple[int, int, int] = (32, 64, 64)) -> tuple[np.ndarray, ...]:
    """Kidney-like blob with a tumour in a noisy image, and a prepared noisy prediction (blurred one-hot + speckle)."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    truth = np.zeros(shape, dtype=np.int64)
    kidney = ellipsoid(shape, (d / 2, h * 0.45, w * 0.45), (d * 0.3, h * 0.3, w * 0.22))
    tumour = ellipsoid(shape, (d * 0.6, h * 0.55, w * 0.5), (d * 0.15, h * 0.14, w * 0.14))
    truth[kidney] = 1
    truth[tumour] = 2
    image = np.select([truth == 1, truth == 2], [0.6, 0.35], 0.1) + rng.normal(0, 0.08, shape)
    onehot = np.stack([truth == k for k in range(3)]).astype(np.float32)
    probs = np.stack([ndimage.gaussian_filter(o, (1, 3, 3)) for o in onehot])
    probs = probs + rng.gamma(0.5, 0.35, probs.shape)  # speckle: random per-voxel class flips
    probs = (probs / probs.sum(0, keepdims=True)).astype(np.float32)
    return truth, image.astype(np.float32), probs


def test_dense_crf_improves_dice_on_noisy_prediction() -> None:
    truth, image, probs = noisy_case()
    spacing = (2.5, 0.75, 0.75)
    noisy = probs.argmax(0)
    refined = dense_crf(probs, image, spacing)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    crf = refined.argmax(0)
    for cls in (1, 2):
        assert dice(crf == cls, truth == cls) > dice(noisy == cls, truth == cls) + 0.02, cls
    fg_before, fg_after = dice(noisy > 0, truth > 0), dice(crf > 0, truth > 0)
    assert fg_after > fg_before + 0.05 and fg_after > 0.9


def test_dense_crf_zero_weights_is_identity() -> None:
    _, image, probs = noisy_case(shape=(6, 10, 12))
    out = dense_crf(probs, image, (1.0, 1.0, 1.0), w_gaussian=0.0, w_bilateral=0.0)
    np.testing.assert_allclose(out, probs, atol=1e-5)
    with pytest.raises(ValueError):
        dense_crf(probs, image[:-1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        dense_crf(probs, image, (1.0, 1.0, 1.0), compat="nope")


def brute_force_step(probs: np.ndarray, image: np.ndarray, spacing, w_g, s_g, w_b, s_b, s_i) -> np.ndarray:
    """One exact mean-field step with normalised Potts messages (O(N^2), tiny volumes only)."""
    k = probs.shape[0]
    pos = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(image.shape, spacing)], indexing="ij"), -1)
    pos = pos.reshape(-1, 3)
    intensity = image.ravel()
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    q = probs.reshape(k, -1).astype(np.float64)
    energy = np.log(q)
    for w, kern in [
        (w_g, np.exp(-d2 / (2 * s_g**2))),
        (w_b, np.exp(-d2 / (2 * s_b**2) - (intensity[:, None] - intensity[None]) ** 2 / (2 * s_i**2))),
    ]:
        np.fill_diagonal(kern, 0.0)
        m = (kern @ q.T).T / kern.sum(1)
        energy += w * m  # Potts: -w * (1 - m_l) up to a per-voxel constant
    e = np.exp(energy - energy.max(0))
    return (e / e.sum(0)).reshape(probs.shape)


def test_dense_crf_one_step_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    shape, spacing = (8, 12, 12), (2.0, 0.8, 0.8)
    image = np.where(np.arange(12)[None, :, None] < 6, 0.2, 0.8) + rng.uniform(-0.05, 0.05, shape)
    image = np.broadcast_to(image, shape).astype(np.float32)
    probs = rng.dirichlet(np.ones(2), size=shape).transpose(3, 0, 1, 2).astype(np.float32)
    args = dict(w_g=2.0, s_g=1.5, w_b=3.0, s_b=4.0, s_i=0.1)
    exact = brute_force_step(probs, image, spacing, **args)
    ours = dense_crf(
        probs, image, spacing, n_iter=1, w_gaussian=2.0, sigma_gaussian_mm=1.5,
        w_bilateral=3.0, sigma_bilateral_mm=4.0, sigma_intensity=0.1,
    )  # fmt: skip
    err = np.abs(ours - exact)
    assert err.mean() < 0.01 and err.max() < 0.08, (err.mean(), err.max())
    gauss_only = dense_crf(probs, image, spacing, n_iter=1, w_gaussian=2.0, sigma_gaussian_mm=1.5, w_bilateral=0.0)
    exact_g = brute_force_step(probs, image, spacing, **{**args, "w_b": 0.0})
    np.testing.assert_allclose(gauss_only, exact_g, atol=2e-3)  # Gaussian message: exact up to 3-sigma truncation


def test_dense_crf_speed_on_roi_crop() -> None:
    truth, image, probs = noisy_case(seed=1, shape=(64, 150, 150))
    start = time.perf_counter()
    dense_crf(probs, image, (2.5, 0.75, 0.75))
    assert time.perf_counter() - start < 60.0  # loose complexity guard: ~1.7 s on 2 idle cores, >10 s when shared


# ----------------------------------------------------------------------------- chain


def test_postprocess_chain_improves_dice_and_steps_are_optional() -> None:
    truth, image, probs = noisy_case(seed=2)
    labels = probs.argmax(0).astype(np.uint8)
    labels[2:4, 55:60, 55:60] = 1  # a far false-positive island
    np.testing.assert_array_equal(postprocess(labels), labels)  # nothing asked: unchanged
    lc = postprocess(labels, largest_component={"connectivity": 18, "keep": 1})
    assert dice(lc > 0, truth > 0) > dice(labels > 0, truth > 0)
    probs[:, 2:4, 55:60, 55:60] = np.array([0.02, 0.96, 0.02], np.float32)[:, None, None, None]
    out = postprocess(
        labels,
        probs=probs,
        image=image,
        spacing=(2.5, 0.75, 0.75),
        crf={},
        largest_component={"connectivity": 18},
        fill_holes=True,
    )
    assert out.shape == labels.shape and out.dtype == labels.dtype
    assert (out[2:4, 55:60, 55:60] == 0).all()
    assert dice(out > 0, truth > 0) > dice(labels > 0, truth > 0) + 0.05
    with pytest.raises(ValueError, match="probs"):
        postprocess(labels, crf={})
