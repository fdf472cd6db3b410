"""Segmentation (and simple regression) losses, registered in :data:`ctdl.losses.registry.LOSSES`.

Conventions shared by every loss here:

* ``logits`` are raw model outputs of shape ``(N, C, [D,] H, W)``. Each loss applies its
  own activation: softmax over the class axis when ``C > 1``, sigmoid when ``C == 1``.
* ``target`` is an integer label map ``(N, [D,] H, W)`` or ``(N, 1, [D,] H, W)`` with values
  in ``[0, C)`` (a 0/1 map when ``C == 1``). A tensor with exactly the logits' shape is read
  as a one-hot / probability target (what the thesis' Keras code fed its losses).
* Class weights are given in channel-index order (channel ``c`` is label ``c``; in ctdl label
  maps 0 = background, 1 = kidney, 2 = tumour). ``"balanced"`` means scikit-learn's rule
  ``w_c = N / (C * count_c)`` (:func:`balanced_class_weights`).
* Every loss returns a differentiable scalar and works for 2D and 3D inputs.
* Losses taking a ``weights`` argument carry ``class_weights=True`` in their registry metadata.

MONAI-backed: ``dice``/``jaccard`` (``monai.losses.DiceLoss``), ``tversky``
(``monai.losses.TverskyLoss``: alpha weights false positives and beta false negatives, the same
convention as DLAE), ``focal`` (``monai.losses.FocalLoss``), ``dice_ce``
(``monai.losses.DiceCELoss``). Hand-written (each says why): the weighted CE normalisation
options, the BCE variants, the thesis' global weighted Dice/Jaccard and SDL, MSE/MAE wrappers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import monai.losses
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctdl.losses.registry import LOSSES

__all__ = [
    "balanced_class_weights",
    "CrossEntropyLoss",
    "WeightedCrossEntropyLoss",
    "BinaryCrossEntropyLoss",
    "BalancedBinaryCrossEntropyLoss",
    "DiceLoss",
    "WeightedDiceLoss",
    "WeightedJaccardLoss",
    "JaccardLoss",
    "TverskyLoss",
    "FocalLoss",
    "SoftmaxDiceLoss",
    "MSELoss",
    "MAELoss",
    "DiceCELoss",
]

WeightsArg = Union[Sequence[float], str, Tensor, np.ndarray, None]


# ----------------------------------------------------------------------------- helpers


def balanced_class_weights(
    labels_or_counts: Any,
    n_classes: int,
    *,
    is_counts: bool | None = None,
    absent: str = "raise",
) -> np.ndarray:
    """scikit-learn's ``'balanced'`` weights ``w_c = N / (n_classes * count_c)`` for classes ``0..n_classes-1``.

    ``labels_or_counts`` is an integer label array of any shape, or a vector of per-class
    counts (``N`` is their sum). ``is_counts=None`` reads a 1-D input of exactly ``n_classes``
    values as counts and anything else as labels; pass ``is_counts`` to force either. A class
    with count 0 raises (as scikit-learn does) unless ``absent="zero"`` (weight 0).
    """
    if isinstance(labels_or_counts, Tensor):
        labels_or_counts = labels_or_counts.detach().cpu().numpy()
    arr = np.asarray(labels_or_counts)
    if is_counts is None:
        is_counts = arr.ndim == 1 and arr.size == n_classes
    if is_counts:
        counts = arr.astype(np.float64).ravel()
        if counts.size != n_classes:
            raise ValueError(f"expected {n_classes} class counts, got {counts.size}")
        if (counts < 0).any():
            raise ValueError("class counts must be non-negative")
    else:
        labels = arr.ravel()
        if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("labels must be integer class indices")
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    present = counts > 0
    if not present.all():
        if absent == "raise":
            missing = np.flatnonzero(~present).tolist()
            raise ValueError(f"classes {missing} have no samples; 'balanced' weights are undefined")
        if absent != "zero":
            raise ValueError(f"absent must be 'raise' or 'zero', got {absent!r}")
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = total / (n_classes * counts[present])
    return weights


def _probs(logits: Tensor) -> Tensor:
    """Softmax over the class axis (C > 1) or sigmoid (C == 1)."""
    return torch.softmax(logits, dim=1) if logits.shape[1] > 1 else torch.sigmoid(logits)


def _index_target(target: Tensor, logits: Tensor) -> Tensor | None:
    """Integer label map (N, *spatial) from a (N, ...) / (N, 1, ...) target; None for a logits-shaped target."""
    n, spatial = logits.shape[0], tuple(logits.shape[2:])
    if tuple(target.shape) == tuple(logits.shape):
        return None
    if tuple(target.shape) == (n, *spatial):
        return target.long()
    if tuple(target.shape) == (n, 1, *spatial):
        return target[:, 0].long()
    raise ValueError(
        f"target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}: expected "
        f"{(n, *spatial)}, {(n, 1, *spatial)} (label map) or {tuple(logits.shape)} (one-hot/probabilities)"
    )


def _onehot_target(target: Tensor, logits: Tensor) -> Tensor:
    """Float target of the logits' shape: one-hot of a label map, or the given one-hot/probabilities."""
    idx = _index_target(target, logits)
    if idx is None:
        return target.to(logits.dtype)
    c = logits.shape[1]
    if c == 1:
        return idx.unsqueeze(1).to(logits.dtype)
    return F.one_hot(idx, c).movedim(-1, 1).to(logits.dtype)


def _is_onehot(target: Tensor) -> bool:
    """True when every voxel of a (N, C, ...) target is a 0/1 vector summing to 1."""
    return bool(((target == 0) | (target == 1)).all() and (target.sum(dim=1) == 1).all())


def _class_view(w: Tensor, ndim: int) -> Tensor:
    """Reshape a (C,) vector to broadcast on axis 1 of an ``ndim`` tensor."""
    return w.view(1, -1, *([1] * (ndim - 2)))


class _ClassWeights(nn.Module):
    """Holds fixed class weights, or computes 'balanced' ones per batch when no counts are given."""

    def __init__(self, weights: WeightsArg, class_counts: Sequence[float] | None = None) -> None:
        super().__init__()
        self.dynamic = False
        fixed: Tensor | None = None
        if isinstance(weights, str) and weights == "none":
            weights = None  # spelled out because the registry's create() drops None kwargs
        if isinstance(weights, str):
            if weights != "balanced":
                raise ValueError(f"weights must be a sequence, 'balanced', 'none' or None, got {weights!r}")
            if class_counts is not None:
                counts = np.asarray(class_counts, dtype=np.float64)
                fixed = torch.as_tensor(
                    balanced_class_weights(counts, counts.size, is_counts=True), dtype=torch.float64
                )
            else:
                self.dynamic = True
        elif weights is not None:
            fixed = torch.as_tensor(np.asarray(weights, dtype=np.float64))  # cast to the logits' dtype on use
            if fixed.ndim != 1 or (fixed < 0).any():
                raise ValueError("class weights must be a 1-D sequence of non-negative numbers")
        self.register_buffer("fixed", fixed)
        self.fixed: Tensor | None

    def resolve(self, n_classes: int, counts: Tensor | None) -> Tensor | None:
        """Weights for ``n_classes`` channels; ``counts`` (per-class sums of the batch target) feed 'balanced'."""
        if self.fixed is not None:
            if self.fixed.numel() != n_classes:
                raise ValueError(f"{self.fixed.numel()} class weights given for {n_classes} channels")
            return self.fixed
        if not self.dynamic:
            return None
        assert counts is not None
        # Per-batch 'balanced' weights: classes absent from the batch get weight 0 (their count is
        # 0, so the rule is undefined). Pass class_counts (whole training set, as the thesis did)
        # for stable weights.
        counts = counts.detach().to(torch.float64)
        w = torch.zeros_like(counts)
        present = counts > 0
        w[present] = counts.sum() / (n_classes * counts[present])
        return w


# ----------------------------------------------------------------------------- cross entropy


@LOSSES.register("cross_entropy", task="segmentation")
class CrossEntropyLoss(nn.Module):
    """Multi-class cross-entropy on logits (torch ``F.cross_entropy``), mean over voxels.

    Target: label map (N, ...) / (N, 1, ...), or class probabilities with the logits' shape.
    """

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] < 2:
            raise ValueError("cross_entropy needs C >= 2 channels; use binary_cross_entropy for C == 1")
        idx = _index_target(target, logits)
        if idx is None:
            return F.cross_entropy(logits, target.to(logits.dtype), label_smoothing=self.label_smoothing)
        return F.cross_entropy(
            logits, idx, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )


@LOSSES.register("weighted_cross_entropy", task="segmentation", class_weights=True)
class WeightedCrossEntropyLoss(nn.Module):
    """Class-weighted cross-entropy ``-sum_c w_c y_c log p_c`` (FCN-PPM paper, DLAE).

    Target: label map (N, ...) / (N, 1, ...), or one-hot/probabilities with the logits' shape.
    ``weights``: a list in channel order (the FCN-PPM paper uses ``[0.2, 1.0, 2.0]`` for
    background/kidney/tumour), or ``"balanced"`` (from ``class_counts`` if given, else from each
    batch's target, absent classes weighted 0), or ``"none"`` (plain CE). ``normalize=True``
    divides by the summed weights of the targets (PyTorch's weighted mean); ``False`` takes the
    plain voxel mean (Keras/DLAE).
    """

    def __init__(
        self,
        weights: WeightsArg = "balanced",
        class_counts: Sequence[float] | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.weights = _ClassWeights(weights, class_counts)
        self.normalize = bool(normalize)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        c = logits.shape[1]
        if c < 2:
            raise ValueError("weighted_cross_entropy needs C >= 2 channels")
        idx = _index_target(target, logits)
        if idx is not None:
            counts = torch.bincount(idx.flatten(), minlength=c) if self.weights.dynamic else None
            w = self.weights.resolve(c, counts)
            w = None if w is None else w.to(logits)
            per_voxel = F.cross_entropy(logits, idx, weight=w, reduction="none")  # w_{y_i} * nll_i
            if not self.normalize:
                return per_voxel.mean()
            denom = w[idx].sum() if w is not None else torch.tensor(float(idx.numel()), device=logits.device)
            return per_voxel.sum() / denom.clamp_min(torch.finfo(logits.dtype).tiny)
        # Soft targets written by hand: F.cross_entropy ignores `weight` normalisation for them.
        y = target.to(logits.dtype)
        counts = y.sum(dim=[d for d in range(y.ndim) if d != 1]) if self.weights.dynamic else None
        w = self.weights.resolve(c, counts)
        wy = y if w is None else _class_view(w.to(logits), y.ndim) * y
        per_voxel = -(wy * torch.log_softmax(logits, dim=1)).sum(dim=1)
        if not self.normalize:
            return per_voxel.mean()
        return per_voxel.sum() / wy.sum().clamp_min(torch.finfo(logits.dtype).tiny)


# ----------------------------------------------------------------------------- binary CE


@LOSSES.register("binary_cross_entropy", task="segmentation")
class BinaryCrossEntropyLoss(nn.Module):
    """Sigmoid binary cross-entropy per channel (``F.binary_cross_entropy_with_logits``), mean over elements.

    Target: 0/1 or probability tensor with the logits' shape, or a label map (one-hot encoded
    for C > 1, so each channel is treated as its own binary problem as in the thesis' metrics).
    ``pos_weight``: scalar or per-channel weight of the positive term.
    """

    def __init__(self, pos_weight: float | Sequence[float] | None = None) -> None:
        super().__init__()
        pw = None if pos_weight is None else torch.as_tensor(np.atleast_1d(pos_weight), dtype=torch.float32)
        self.register_buffer("pos_weight", pw)
        self.pos_weight: Tensor | None

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        y = _onehot_target(target, logits)
        pw = None if self.pos_weight is None else _class_view(self.pos_weight.to(logits), logits.ndim)
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw)


@LOSSES.register("balanced_binary_cross_entropy", task="segmentation")
class BalancedBinaryCrossEntropyLoss(nn.Module):
    """Class-balanced BCE ``-mean(beta y log p + (1 - beta)(1 - y) log(1 - p))``, ``p = sigmoid(logits)``.

    Target: as :class:`BinaryCrossEntropyLoss`. ``beta`` defaults to the fraction of negatives in
    the batch target (HED-style); the thesis' ``balanced_CE`` metric is ``beta = 0.2``.
    Hand-written: torch's ``pos_weight`` cannot weight the negative term.
    """

    def __init__(self, beta: float | None = None) -> None:
        super().__init__()
        self.beta = None if beta is None else float(beta)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        y = _onehot_target(target, logits)
        beta = (1.0 - y.detach().mean()) if self.beta is None else torch.tensor(self.beta).to(logits)
        loss = beta * y * F.logsigmoid(logits) + (1.0 - beta) * (1.0 - y) * F.logsigmoid(-logits)
        return -loss.mean()


# ----------------------------------------------------------------------------- overlap losses


@LOSSES.register("dice", task="segmentation")
class DiceLoss(nn.Module):
    """Soft Dice loss ``1 - (2 sum yp + s)/(sum y + sum p + s)`` per sample and class, averaged (monai DiceLoss).

    Target: label map or one-hot/probabilities with the logits' shape. ``batch=True`` sums over
    the batch before the ratio (one ratio per class).
    """

    def __init__(
        self, include_background: bool = True, smooth: float = 1e-5, batch: bool = False, squared: bool = False
    ) -> None:
        super().__init__()
        self.inner = monai.losses.DiceLoss(
            include_background=include_background,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=batch,
            squared_pred=squared,
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.inner(_probs(logits), _onehot_target(target, logits))


@LOSSES.register("jaccard", task="segmentation")
class JaccardLoss(nn.Module):
    """Soft Jaccard (IoU) distance ``1 - sum yp / (sum y + sum p - sum yp)`` per sample and class.

    MONAI ``DiceLoss(jaccard=True)``. Target: label map or one-hot/probabilities. DLAE's per-pixel ``(1 - J) * s`` variant is a
    bug (s = 0 gives 0) and is not reproduced.
    """

    def __init__(self, include_background: bool = True, smooth: float = 1e-5, batch: bool = False) -> None:
        super().__init__()
        self.inner = monai.losses.DiceLoss(
            include_background=include_background, smooth_nr=smooth, smooth_dr=smooth, batch=batch, jaccard=True
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.inner(_probs(logits), _onehot_target(target, logits))


@LOSSES.register("tversky", task="segmentation")
class TverskyLoss(nn.Module):
    """Tversky loss ``1 - TP/(TP + alpha FP + beta FN)`` per class (monai TverskyLoss).

    Target: label map or one-hot/probabilities. Alpha weights false positives and beta false
    negatives, as in DLAE and MONAI. Defaults follow DLAE: sums over batch and space
    (``batch=True``); ``reduction="sum"`` with ``smooth=0`` gives DLAE's ``C - sum_c T_c`` exactly,
    the default ``"mean"`` divides that by C.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        include_background: bool = True,
        smooth: float = 1e-5,
        batch: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.inner = monai.losses.TverskyLoss(
            include_background=include_background,
            alpha=alpha,
            beta=beta,
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=batch,
            reduction=reduction,
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.inner(_probs(logits), _onehot_target(target, logits))


class _GlobalWeightedTversky(nn.Module):
    """Thesis ``tversky_adjusted``: one global ratio ``(TP+s)/(TP + a FN + b FP + s)`` per batch, class-weighted.

    Hand-written: MONAI's Dice/Tversky losses form one ratio per class (and sample), while the
    thesis sums ``w_c``-weighted TP/FN/FP over samples, voxels and classes into a single ratio.
    """

    fn_weight: float = 0.5
    fp_weight: float = 0.5

    def __init__(
        self,
        weights: WeightsArg = "balanced",
        class_counts: Sequence[float] | None = None,
        smooth: float = 1e-6,
    ) -> None:
        super().__init__()
        self.weights = _ClassWeights(weights, class_counts)
        self.smooth = float(smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        p = _probs(logits)
        y = _onehot_target(target, logits)
        counts = y.sum(dim=[d for d in range(y.ndim) if d != 1]) if self.weights.dynamic else None
        w = self.weights.resolve(logits.shape[1], counts)
        wv: Tensor | float = 1.0 if w is None else _class_view(w.to(p), p.ndim)
        tp = (wv * y * p).sum()
        fn = (wv * y * (1.0 - p)).sum()
        fp = (wv * (1.0 - y) * p).sum()
        s = self.smooth
        return 1.0 - (tp + s) / (tp + self.fn_weight * fn + self.fp_weight * fp + s)


@LOSSES.register("weighted_dice", task="segmentation", class_weights=True)
class WeightedDiceLoss(_GlobalWeightedTversky):
    """Thesis DCL_w: ``1 - (TP + s)/(TP + 0.5 FN + 0.5 FP + s)`` with class-weighted global sums, s = 1e-6.

    Target: label map or one-hot/probabilities. ``weights``: list in channel order, ``"balanced"``
    (from ``class_counts`` if given, as the thesis did on its training set, else per batch with
    absent classes weighted 0) or ``"none"``/None (unweighted; use ``"none"`` through
    :func:`create_loss`, which drops None arguments).
    """

    fn_weight = 0.5
    fp_weight = 0.5


@LOSSES.register("weighted_jaccard", task="segmentation", class_weights=True)
class WeightedJaccardLoss(_GlobalWeightedTversky):
    """Thesis JC_w loss: ``1 - (TP + s)/(TP + FN + FP + s)`` with class-weighted global sums, s = 1e-6.

    Target and ``weights`` as :class:`WeightedDiceLoss`.
    """

    fn_weight = 1.0
    fp_weight = 1.0


@LOSSES.register("focal", task="segmentation", class_weights=True)
class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (monai FocalLoss), mean over elements.

    Target: label map or one-hot/probabilities. Softmax focal loss when C > 1, sigmoid when
    C == 1 (override with ``use_softmax``). A scalar ``alpha`` means ``1 - alpha`` for background
    and ``alpha`` for the other classes (softmax) or for positives (sigmoid; ``alpha=0.25`` with
    ``use_softmax=False`` is the thesis' per-channel focal metric); a list is per class.
    ``weights``: optional per-class multipliers.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
        include_background: bool = True,
        use_softmax: bool | None = None,
    ) -> None:
        super().__init__()
        self.use_softmax = use_softmax
        kw: dict[str, Any] = dict(include_background=include_background, gamma=gamma, alpha=alpha, weight=weights)
        self.softmax_loss = monai.losses.FocalLoss(use_softmax=True, **kw)
        self.sigmoid_loss = monai.losses.FocalLoss(use_softmax=False, **kw)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        use_softmax = logits.shape[1] > 1 if self.use_softmax is None else self.use_softmax
        loss_fn = self.softmax_loss if use_softmax else self.sigmoid_loss
        return loss_fn(logits, _onehot_target(target, logits))


@LOSSES.register("softmax_dice", task="segmentation")
class SoftmaxDiceLoss(nn.Module):
    """Thesis SDL: ``alpha * CE + beta * (1 - (2 sum yp + s)/(sum y + sum p + s))``, Dice over the flattened batch.

    Target: label map or one-hot/probabilities. CE is softmax cross-entropy (sigmoid BCE when
    C == 1), mean over voxels; the Dice term is one global ratio over samples, voxels and
    classes (s = 1e-3). Hand-written: MONAI's DiceCELoss forms per-class ratios.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1e-3) -> None:
        super().__init__()
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        y = _onehot_target(target, logits)
        if logits.shape[1] > 1:
            ce = F.cross_entropy(logits, y)
        else:
            ce = F.binary_cross_entropy_with_logits(logits, y)
        p = _probs(logits)
        dice = (2.0 * (y * p).sum() + self.smooth) / (y.sum() + p.sum() + self.smooth)
        return self.alpha * ce + self.beta * (1.0 - dice)


# ----------------------------------------------------------------------------- regression


class _PointwiseLoss(nn.Module):
    """Shared target handling for MSE/MAE (hand-written: chooses the activation from the target)."""

    def __init__(self, activation: str = "auto") -> None:
        super().__init__()
        if activation not in ("auto", "none", "softmax", "sigmoid"):
            raise ValueError(f"activation must be auto|none|softmax|sigmoid, got {activation!r}")
        self.activation = activation

    def _pair(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        act = self.activation
        if act == "auto":
            regression = tuple(target.shape) == tuple(logits.shape) and target.is_floating_point()
            act = "none" if regression else ("softmax" if logits.shape[1] > 1 else "sigmoid")
        if act == "none":
            pred = logits
        elif act == "softmax":
            pred = torch.softmax(logits, dim=1)
        else:
            pred = torch.sigmoid(logits)
        return pred, _onehot_target(target, logits)


@LOSSES.register("mse", task="regression")
class MSELoss(_PointwiseLoss):
    """Mean squared error between outputs and target.

    Target: a float tensor of the outputs' shape (regression: raw outputs compared) or a label
    map (segmentation: softmax/sigmoid probabilities vs one-hot). ``activation`` overrides.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        pred, y = self._pair(logits, target)
        return F.mse_loss(pred, y)


@LOSSES.register("mae", task="regression")
class MAELoss(_PointwiseLoss):
    """Mean absolute error between outputs and target (target handling as :class:`MSELoss`)."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        pred, y = self._pair(logits, target)
        return F.l1_loss(pred, y)


# ----------------------------------------------------------------------------- default


@LOSSES.register("dice_ce", task="segmentation", default=True, class_weights=True)
class DiceCELoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * CE`` (monai DiceCELoss); a sensible default for segmentation.

    Target: label map or one-hot/probabilities. Softmax + CE when C > 1, sigmoid + BCE when
    C == 1. ``weights``: optional per-class weights handed to MONAI (its CE weight; label-map
    and exact one-hot targets give the same weighted mean).
    """

    def __init__(
        self,
        include_background: bool = True,
        smooth: float = 1e-5,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        batch: bool = False,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
        self.weighted = w is not None
        kw: dict[str, Any] = dict(
            include_background=include_background,
            smooth_nr=smooth,
            smooth_dr=smooth,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
            batch=batch,
            weight=w,
        )
        # MONAI fixes activation and one-hot conversion at construction; keep one per input kind.
        self.softmax_index = monai.losses.DiceCELoss(softmax=True, to_onehot_y=True, **kw)
        self.softmax_onehot = monai.losses.DiceCELoss(softmax=True, to_onehot_y=False, **kw)
        self.sigmoid = monai.losses.DiceCELoss(sigmoid=True, to_onehot_y=False, **kw)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.weighted and self.softmax_index.cross_entropy.weight.dtype != logits.dtype:
            self.to(dtype=logits.dtype)  # MONAI keeps the CE weight as a buffer of fixed dtype
        if logits.shape[1] == 1:
            return self.sigmoid(logits, _onehot_target(target, logits))
        idx = _index_target(target, logits)
        if idx is None and self.weighted and _is_onehot(target):
            # MONAI's weighted CE is a weighted mean for label maps but a plain mean for
            # probability targets; route exact one-hot targets through the label-map path.
            idx = target.argmax(dim=1)
        if idx is None:
            return self.softmax_onehot(logits, target.to(logits.dtype))
        return self.softmax_index(logits, idx.unsqueeze(1))
