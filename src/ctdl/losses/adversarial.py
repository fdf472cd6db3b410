"""Adversarial and image-reconstruction losses for pix2pix and CycleGAN (registered in ``LOSSES``).

* ``gan_lsgan`` (least squares, Mao et al. 2017): ``mean((D - 1)^2)`` for "real", ``mean(D^2)`` for "fake"
  on the raw discriminator map. This is what DLAE trains with (its D and combined model are compiled with MSE
  against 1/0 patch maps), although its manual writes the log loss.
* ``gan_bce`` (Goodfellow et al. 2014 / pix2pix paper): sigmoid cross-entropy of the logits against 1/0; the
  generator uses the non-saturating form (fake labelled real), as every implementation does.
* ``gan_l1``, ``gan_cycle`` (``||F(G(x)) - x||_1``) and ``gan_identity`` (``||G(y) - y||_1``): mean absolute error, with a
  ``weight`` (the lambda) applied inside so a config can name the term and its weight together.

The targets are built with ``torch.ones_like``/``zeros_like`` of the discriminator output, so any batch size
(including a short last batch, DLAE bug 21) and any PatchGAN map size work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctdl.losses.registry import LOSSES


class AdversarialLoss(nn.Module):
    """``loss(d_out, real)``: how far the discriminator map is from "real" (``real=True``) or "fake"."""

    kind = "lsgan"

    def __init__(self, weight: float = 1.0, real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= fake_label < real_label <= 1.0:
            raise ValueError(f"need 0 <= fake_label < real_label <= 1, got {fake_label}, {real_label}")
        self.weight = float(weight)
        self.real_label = float(real_label)
        self.fake_label = float(fake_label)

    def target(self, d_out: torch.Tensor, real: bool) -> torch.Tensor:
        return torch.full_like(d_out, self.real_label if real else self.fake_label)

    def forward(self, d_out: torch.Tensor, real: bool) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@LOSSES.register("gan_lsgan", task="gan")
class LSGANLoss(AdversarialLoss):
    """Least-squares GAN loss (DLAE's actual pix2pix/CycleGAN adversarial term): mean squared distance to 1/0."""

    kind = "lsgan"

    def forward(self, d_out: torch.Tensor, real: bool) -> torch.Tensor:
        return self.weight * F.mse_loss(d_out, self.target(d_out, real))


@LOSSES.register("gan_bce", task="gan")
class BCEGANLoss(AdversarialLoss):
    """Original GAN log loss on logits: ``-log sigmoid(D)`` for real, ``-log(1 - sigmoid(D))`` for fake."""

    kind = "bce"

    def forward(self, d_out: torch.Tensor, real: bool) -> torch.Tensor:
        return self.weight * F.binary_cross_entropy_with_logits(d_out, self.target(d_out, real))


class _WeightedL1(nn.Module):
    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"{type(self).__name__}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        return self.weight * F.l1_loss(pred, target)


@LOSSES.register("gan_l1", task="gan")
class L1Loss(_WeightedL1):
    """Mean absolute error times ``weight`` (pix2pix's lambda * L1 term)."""


@LOSSES.register("gan_cycle", task="gan")
class CycleLoss(_WeightedL1):
    """Cycle consistency ``weight * mean|F(G(x)) - x|`` (call with the reconstruction and the original)."""


@LOSSES.register("gan_identity", task="gan")
class IdentityLoss(_WeightedL1):
    """Identity ``weight * mean|G(y) - y|`` (call with G applied to a target-domain image and that image)."""


def adversarial_loss(kind: str) -> AdversarialLoss:
    """The adversarial loss for ``gan.adversarial_loss`` (``lsgan`` or ``bce``)."""
    names = {"lsgan": "gan_lsgan", "bce": "gan_bce"}
    if kind not in names:
        raise ValueError(f"adversarial loss must be one of {', '.join(names)}, got {kind!r}")
    return LOSSES.create(names[kind])  # type: ignore[return-value]


__all__ = ["AdversarialLoss", "BCEGANLoss", "CycleLoss", "IdentityLoss", "L1Loss", "LSGANLoss", "adversarial_loss"]
