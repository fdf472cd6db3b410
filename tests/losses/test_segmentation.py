"""Segmentation losses against values written out by hand / in NumPy (never via the code under test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from ctdl.losses.registry import LOSSES, create_loss, list_losses
from ctdl.losses.segmentation import WeightedDiceLoss, balanced_class_weights

# ----------------------------------------------------------------------------- NumPy references


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_onehot(t: np.ndarray, c: int) -> np.ndarray:
    return np.moveaxis(np.eye(c)[t], -1, 1)


def np_thesis_tversky(p: np.ndarray, y: np.ndarray, w, a_fn: float, b_fp: float, s: float = 1e-6) -> float:
    """Keras ``tversky_adjusted`` as written in the thesis: channel-last, w on the last axis."""
    p_l, y_l = np.moveaxis(p, 1, -1), np.moveaxis(y, 1, -1)
    w = np.ones(p_l.shape[-1]) if w is None else np.asarray(w, dtype=np.float64)
    tp = np.sum(w * y_l * p_l)
    fn = np.sum(w * y_l * (1 - p_l))
    fp = np.sum(w * (1 - y_l) * p_l)
    return 1.0 - (tp + s) / (tp + a_fn * fn + b_fp * fp + s)


def t(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64 if x.dtype.kind == "f" else torch.int64, requires_grad=grad)


@pytest.fixture
def example() -> tuple[np.ndarray, np.ndarray]:
    """A tiny seeded 3-class 3D example: logits (2, 3, 2, 3, 4) and labels (2, 2, 3, 4)."""
    r = np.random.default_rng(42)
    logits = r.normal(size=(2, 3, 2, 3, 4))
    labels = r.integers(0, 3, size=(2, 2, 3, 4))
    labels[0, 0, 0, :3] = [0, 1, 2]  # every class present
    return logits, labels


# ----------------------------------------------------------------------------- registry


def test_registry_lists_all_losses() -> None:
    expected = {
        "cross_entropy", "weighted_cross_entropy", "binary_cross_entropy", "balanced_binary_cross_entropy",
        "dice", "weighted_dice", "jaccard", "tversky", "focal", "softmax_dice", "mse", "mae", "dice_ce",
    }
    assert expected <= set(list_losses())
    with pytest.raises(KeyError):
        create_loss("no_such_loss")
    # None kwargs keep the defaults
    assert create_loss("softmax_dice", alpha=None).alpha == 0.5
    assert LOSSES.meta("dice_ce")["default"] is True
    weighted = {n for n in list_losses() if LOSSES.meta(n).get("class_weights") and LOSSES.meta(n).get("task") == "segmentation"}
    assert weighted == {"weighted_cross_entropy", "weighted_dice", "weighted_jaccard", "focal", "dice_ce"}
    for name in weighted:
        create_loss(name, weights=[0.2, 1.0, 2.0])


# ----------------------------------------------------------------------------- class weights


def test_balanced_class_weights_match_sklearn() -> None:
    r = np.random.default_rng(1)
    labels = r.choice(3, size=(4, 5, 6), p=[0.8, 0.15, 0.05])
    ours = balanced_class_weights(labels, 3)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=labels.ravel())
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    counts = np.bincount(labels.ravel(), minlength=3)
    np.testing.assert_allclose(balanced_class_weights(counts, 3, is_counts=True), ref, rtol=1e-12)
    # a 1-D vector of exactly n_classes values is read as counts unless told otherwise
    np.testing.assert_allclose(balanced_class_weights(counts, 3), ref, rtol=1e-12)
    np.testing.assert_allclose(balanced_class_weights([0, 1, 2], 3, is_counts=False), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(balanced_class_weights(torch.tensor(labels), 3), ref, rtol=1e-12)
    # hand example: 6 labels, counts 3/2/1 -> 6/(3*3), 6/(3*2), 6/(3*1)
    np.testing.assert_allclose(balanced_class_weights([0, 0, 0, 1, 1, 2], 3), [2 / 3, 1.0, 2.0])


def test_balanced_class_weights_absent_class() -> None:
    with pytest.raises(ValueError):
        balanced_class_weights([0, 0, 1, 1], 3)
    np.testing.assert_allclose(balanced_class_weights([0, 0, 1, 1], 3, absent="zero"), [2 / 3, 2 / 3, 0.0])
    with pytest.raises(ValueError):
        balanced_class_weights([5, 0, 2], 3)  # counts with an empty class
    np.testing.assert_allclose(balanced_class_weights([5, 0, 2], 3, absent="zero"), [7 / 15, 0.0, 7 / 6])
    with pytest.raises(ValueError):
        balanced_class_weights([0, 3], 3)


# ----------------------------------------------------------------------------- cross entropy


def test_weighted_cross_entropy_paper_weights(example) -> None:
    logits, labels = example
    w = np.array([0.2, 1.0, 2.0])
    logp = np.log(np_softmax(logits))
    nll = -np.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    wy = w[labels]
    expected_norm = (wy * nll).sum() / wy.sum()
    expected_mean = (wy * nll).mean()
    got = create_loss("weighted_cross_entropy", weights=[0.2, 1.0, 2.0])(t(logits), t(labels))
    assert got.item() == pytest.approx(expected_norm, rel=1e-10)
    got_mean = create_loss("weighted_cross_entropy", weights=[0.2, 1.0, 2.0], normalize=False)(t(logits), t(labels))
    assert got_mean.item() == pytest.approx(expected_mean, rel=1e-10)
    # one-hot target gives the same value on both normalisations
    oh = np_onehot(labels, 3)
    for normalize, exp in ((True, expected_norm), (False, expected_mean)):
        loss = create_loss("weighted_cross_entropy", weights=w, normalize=normalize)
        assert loss(t(logits), t(oh)).item() == pytest.approx(exp, rel=1e-10)


def test_weighted_cross_entropy_uniform_logits_is_log3() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [2, 2]]])
    loss = create_loss("weighted_cross_entropy", weights=[0.2, 1.0, 2.0])
    assert loss(logits, labels).item() == pytest.approx(math.log(3), rel=1e-6)
    unnorm = create_loss("weighted_cross_entropy", weights=[0.2, 1.0, 2.0], normalize=False)
    # mean of w_y = (0.2 + 1 + 2 + 2) / 4 = 1.3
    assert unnorm(logits, labels).item() == pytest.approx(1.3 * math.log(3), rel=1e-6)


def test_weighted_cross_entropy_balanced(example) -> None:
    logits, labels = example
    w = compute_class_weight("balanced", classes=np.arange(3), y=labels.ravel())
    nll = -np.take_along_axis(np.log(np_softmax(logits)), labels[:, None], axis=1)[:, 0]
    expected = (w[labels] * nll).sum() / w[labels].sum()
    per_batch = create_loss("weighted_cross_entropy", weights="balanced")(t(logits), t(labels))
    assert per_batch.item() == pytest.approx(expected, rel=1e-10)
    counts = np.bincount(labels.ravel(), minlength=3)
    fixed = create_loss("weighted_cross_entropy", weights="balanced", class_counts=counts)
    assert fixed(t(logits), t(labels)).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_and_target_formats(example) -> None:
    logits, labels = example
    nll = -np.take_along_axis(np.log(np_softmax(logits)), labels[:, None], axis=1)[:, 0]
    loss = create_loss("cross_entropy")
    for target in (t(labels), t(labels[:, None]), t(np_onehot(labels, 3))):
        assert loss(t(logits), target).item() == pytest.approx(nll.mean(), rel=1e-10)


# ----------------------------------------------------------------------------- binary CE


def test_binary_cross_entropy_and_balanced() -> None:
    r = np.random.default_rng(3)
    x = r.normal(size=(2, 1, 3, 4))
    y = (r.random(size=(2, 1, 3, 4)) > 0.7).astype(np.float64)
    p = np_sigmoid(x)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert create_loss("binary_cross_entropy")(t(x), t(y)).item() == pytest.approx(bce, rel=1e-9)
    # integer (N, ...) map gives the same
    assert create_loss("binary_cross_entropy")(t(x), t(y[:, 0].astype(np.int64))).item() == pytest.approx(bce, rel=1e-9)
    # pos_weight = 3: DLAE weighted_CE form -3 y log p - (1-y) log(1-p)
    wbce = -(3 * y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert create_loss("binary_cross_entropy", pos_weight=3.0)(t(x), t(y)).item() == pytest.approx(wbce, rel=1e-9)
    # balanced: beta = fraction of negatives by default; thesis balanced_CE uses beta = 0.2
    beta = 1 - y.mean()
    bal = -(beta * y * np.log(p) + (1 - beta) * (1 - y) * np.log(1 - p)).mean()
    assert create_loss("balanced_binary_cross_entropy")(t(x), t(y)).item() == pytest.approx(bal, rel=1e-9)
    bal02 = -(0.2 * y * np.log(p) + 0.8 * (1 - y) * np.log(1 - p)).mean()
    got = create_loss("balanced_binary_cross_entropy", beta=0.2)(t(x), t(y))
    assert got.item() == pytest.approx(bal02, rel=1e-9)


def test_binary_cross_entropy_multichannel_label_map(example) -> None:
    logits, labels = example
    y = np_onehot(labels, 3)
    p = np_sigmoid(logits)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert create_loss("binary_cross_entropy")(t(logits), t(labels)).item() == pytest.approx(bce, rel=1e-9)


# ----------------------------------------------------------------------------- overlap losses


def test_weighted_dice_matches_thesis_formula(example) -> None:
    logits, labels = example
    p, y = np_softmax(logits), np_onehot(labels, 3)
    w = [0.7, 0.3, 2.5]
    expected = np_thesis_tversky(p, y, w, 0.5, 0.5)
    got = create_loss("weighted_dice", weights=w)(t(logits), t(labels))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # = 1 - weighted 2TP / (2TP + FN + FP)
    wl = np.asarray(w)[None, :, None, None, None]
    tp, fn, fp = (wl * y * p).sum(), (wl * y * (1 - p)).sum(), (wl * (1 - y) * p).sum()
    assert got.item() == pytest.approx(1 - 2 * tp / (2 * tp + fn + fp), abs=1e-6)
    # balanced weights (the thesis' training setting), from the batch and from class counts
    wb = compute_class_weight("balanced", classes=np.arange(3), y=labels.ravel())
    expected_b = np_thesis_tversky(p, y, wb, 0.5, 0.5)
    assert create_loss("weighted_dice")(t(logits), t(labels)).item() == pytest.approx(expected_b, rel=1e-9)
    counts = np.bincount(labels.ravel(), minlength=3)
    fixed = create_loss("weighted_dice", weights="balanced", class_counts=counts)
    assert fixed(t(logits), t(labels)).item() == pytest.approx(expected_b, rel=1e-6)
    # unweighted and JC_w (alpha = beta = 1)
    unweighted = np_thesis_tversky(p, y, None, 0.5, 0.5)
    assert create_loss("weighted_dice", weights="none")(t(logits), t(labels)).item() == pytest.approx(unweighted, rel=1e-10)
    assert WeightedDiceLoss(weights=None)(t(logits), t(labels)).item() == pytest.approx(unweighted, rel=1e-10)
    assert create_loss("weighted_jaccard", weights=w)(t(logits), t(labels)).item() == pytest.approx(
        np_thesis_tversky(p, y, w, 1.0, 1.0), rel=1e-10
    )


def test_dice_and_jaccard_vs_numpy(example) -> None:
    logits, labels = example
    p, y = np_softmax(logits), np_onehot(labels, 3)
    axes = (2, 3, 4)
    inter, sy, sp = (y * p).sum(axes), y.sum(axes), p.sum(axes)  # (N, C)
    s = 1e-5
    dice = np.mean(1 - (2 * inter + s) / (sy + sp + s))
    assert create_loss("dice")(t(logits), t(labels)).item() == pytest.approx(dice, rel=1e-9)
    dice_fg = np.mean((1 - (2 * inter + s) / (sy + sp + s))[:, 1:])
    assert create_loss("dice", include_background=False)(t(logits), t(labels)).item() == pytest.approx(dice_fg, rel=1e-9)
    jac = np.mean(1 - inter / (sy + sp - inter))
    assert create_loss("jaccard", smooth=0.0)(t(logits), t(labels)).item() == pytest.approx(jac, rel=1e-9)


def test_tversky_conventions(example) -> None:
    logits, labels = example
    p, y = np_softmax(logits), np_onehot(labels, 3)
    axes = (0, 2, 3, 4)  # DLAE: per class, summed over batch and space
    tp, fp, fn = (p * y).sum(axes), (p * (1 - y)).sum(axes), ((1 - p) * y).sum(axes)
    a, b = 0.3, 0.7  # alpha weights FP, beta weights FN
    tv = tp / (tp + a * fp + b * fn)
    got = create_loss("tversky", alpha=a, beta=b, smooth=0.0)(t(logits), t(labels))
    assert got.item() == pytest.approx(np.mean(1 - tv), rel=1e-9)
    dlae = create_loss("tversky", alpha=a, beta=b, smooth=0.0, reduction="sum")(t(logits), t(labels))
    assert dlae.item() == pytest.approx(3 - tv.sum(), rel=1e-9)
    # alpha = beta = 0.5 is Dice
    tversky = create_loss("tversky", alpha=0.5, beta=0.5, smooth=0.0, batch=False)(t(logits), t(labels))
    dice = create_loss("dice", smooth=0.0)(t(logits), t(labels))
    assert tversky.item() == pytest.approx(dice.item(), rel=1e-9)


def test_focal_vs_numpy(example) -> None:
    logits, labels = example
    p, y = np_softmax(logits), np_onehot(labels, 3)
    fl = np.mean(-((1 - p) ** 2) * y * np.log(p))
    # MONAI's FocalLoss computes in float32
    assert create_loss("focal")(t(logits), t(labels)).item() == pytest.approx(fl, rel=1e-6)
    # gamma = 0 is (per-element-averaged) CE: mean over N*C*voxels of -y log p
    assert create_loss("focal", gamma=0.0)(t(logits), t(labels)).item() == pytest.approx(
        np.mean(-y * np.log(p)), rel=1e-6
    )
    # sigmoid, alpha = 0.25: the thesis' per-channel focal form
    x1 = logits[:, :1]
    y1 = (labels[:, None] == 1).astype(np.float64)
    q = np_sigmoid(x1)
    thesis = np.mean(-0.25 * (1 - q) ** 2 * y1 * np.log(q) - 0.75 * q**2 * (1 - y1) * np.log(1 - q))
    assert create_loss("focal", alpha=0.25)(t(x1), t(y1)).item() == pytest.approx(thesis, rel=1e-6)


def test_softmax_dice_vs_numpy(example) -> None:
    logits, labels = example
    p, y = np_softmax(logits), np_onehot(labels, 3)
    ce = np.mean(-(y * np.log(p)).sum(axis=1))
    dice = (2 * (y * p).sum() + 1e-3) / (y.sum() + p.sum() + 1e-3)
    expected = 0.5 * ce + 0.5 * (1 - dice)
    assert create_loss("softmax_dice")(t(logits), t(labels)).item() == pytest.approx(expected, rel=1e-9)
    got = create_loss("softmax_dice", alpha=0.2, beta=0.8)(t(logits), t(labels))
    assert got.item() == pytest.approx(0.2 * ce + 0.8 * (1 - dice), rel=1e-9)


def test_dice_ce_vs_numpy(example) -> None:
    logits, labels = example
    p, y = np_softmax(logits), np_onehot(labels, 3)
    axes = (2, 3, 4)
    s = 1e-5
    dice = np.mean(1 - (2 * (y * p).sum(axes) + s) / (y.sum(axes) + p.sum(axes) + s))
    ce = np.mean(-(y * np.log(p)).sum(axis=1))
    loss = create_loss("dice_ce")
    for target in (t(labels), t(labels[:, None]), t(y)):
        assert loss(t(logits), target).item() == pytest.approx(dice + ce, rel=1e-7)
    weighted = create_loss("dice_ce", weights=[0.2, 1.0, 2.0])
    assert weighted(t(logits), t(labels)).item() == pytest.approx(weighted(t(logits), t(y)).item(), rel=1e-7)


def test_mse_mae() -> None:
    r = np.random.default_rng(5)
    x, y = r.normal(size=(2, 2, 3, 3)), r.normal(size=(2, 2, 3, 3))
    assert create_loss("mse")(t(x), t(y)).item() == pytest.approx(np.mean((x - y) ** 2), rel=1e-10)
    assert create_loss("mae")(t(x), t(y)).item() == pytest.approx(np.mean(np.abs(x - y)), rel=1e-10)
    labels = r.integers(0, 2, size=(2, 3, 3))
    p, oh = np_softmax(x), np_onehot(labels, 2)
    assert create_loss("mse")(t(x), t(labels)).item() == pytest.approx(np.mean((p - oh) ** 2), rel=1e-10)
    assert create_loss("mae")(t(x), t(labels)).item() == pytest.approx(np.mean(np.abs(p - oh)), rel=1e-10)


# ----------------------------------------------------------------------------- generic properties

MULTICLASS = [
    "cross_entropy", "weighted_cross_entropy", "binary_cross_entropy", "balanced_binary_cross_entropy",
    "dice", "weighted_dice", "weighted_jaccard", "jaccard", "tversky", "focal", "softmax_dice", "mse", "mae",
    "dice_ce",
]
BINARY = [n for n in MULTICLASS if n not in ("cross_entropy", "weighted_cross_entropy")]


@pytest.mark.parametrize("name", MULTICLASS)
def test_perfect_prediction_is_near_zero(name: str) -> None:
    labels = torch.zeros(2, 4, 5, 6, dtype=torch.long)
    labels[:, 1:3, 1:4, 1:3] = 1
    labels[:, 2, 2, 2] = 2
    logits = 30.0 * (torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double() * 2 - 1)
    loss = create_loss(name)
    assert loss(logits, labels).item() == pytest.approx(0.0, abs=1e-4)
    if name in BINARY:  # C == 1 version
        logits1 = 30.0 * ((labels[:, None] > 0).double() * 2 - 1)
        assert loss(logits1, (labels > 0).long()).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("spatial", [(6, 7), (3, 6, 7)], ids=["2d", "3d"])
def test_gradients_flow_2d_3d(name: str, spatial: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, *spatial, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, *spatial), generator=g)
    loss = create_loss(name)(logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # (N, 1, ...) label maps work too and give the same value
    assert create_loss(name)(logits, labels[:, None]).item() == pytest.approx(loss.item(), rel=1e-6)
    if name in BINARY:
        logits1 = logits[:, :1].detach().requires_grad_(True)
        loss1 = create_loss(name)(logits1, (labels > 0).long())
        loss1.backward()
        assert torch.isfinite(loss1) and logits1.grad.abs().sum() > 0


def test_bad_target_shape_raises() -> None:
    with pytest.raises(ValueError):
        create_loss("dice")(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        create_loss("weighted_dice", weights=[1.0, 2.0])(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
