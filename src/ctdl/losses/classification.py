"""Classification losses: categorical cross-entropy on (N, K) logits with optional per-class weights.

Keras' ``class_weight`` (what ViPTT-Net's PT+CW strategy uses) multiplies each sample's loss by the weight of
its class and divides by the batch size; PyTorch's ``F.cross_entropy(weight=...)`` divides by the summed weights
instead. ``normalize=False`` (default) gives the Keras rule, ``True`` the PyTorch one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctdl.losses.registry import LOSSES


@LOSSES.register("categorical_cross_entropy", task="classification", class_weights=True)
class CategoricalCrossEntropy(nn.Module):
    """Softmax cross-entropy of (N, K) logits against (N,) class indices or (N, K) one-hot/probabilities."""

    def __init__(self, weights: Sequence[float] | None = None, normalize: bool = False,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        w = None if weights is None else torch.as_tensor([float(v) for v in weights], dtype=torch.float32)
        if w is not None and (w.ndim != 1 or (w < 0).any()):
            raise ValueError("categorical_cross_entropy: weights must be a list of non-negative numbers")
        self.register_buffer("weights", w)
        self.weights: Tensor | None
        self.normalize = bool(normalize)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim != 2:
            raise ValueError(f"categorical_cross_entropy expects (N, K) logits, got shape {tuple(logits.shape)}")
        k = logits.shape[1]
        if target.ndim == 2:
            soft = target.to(logits.dtype)
        else:
            soft = F.one_hot(target.long(), k).to(logits.dtype)
        if self.label_smoothing:
            soft = soft * (1 - self.label_smoothing) + self.label_smoothing / k
        per_sample = -(soft * F.log_softmax(logits, dim=1)).sum(1)
        if self.weights is None:
            return per_sample.mean()
        if self.weights.numel() != k:
            raise ValueError(f"categorical_cross_entropy: {self.weights.numel()} class weights for {k} classes")
        sw = (soft * self.weights.to(logits.dtype)).sum(1)  # weight of each sample's class
        if self.normalize:
            return (sw * per_sample).sum() / sw.sum().clamp_min(1e-12)
        return (sw * per_sample).mean()
