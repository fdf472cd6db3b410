"""Adversarial losses against hand-computed values (DLAE bug 27: least squares is what DLAE trains with)."""

from __future__ import annotations

import math

import pytest
import torch

from ctdl.losses.adversarial import adversarial_loss
from ctdl.losses.registry import create_loss, list_losses


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registered() -> None:
    assert {"gan_lsgan", "gan_bce", "gan_l1", "gan_cycle", "gan_identity"} <= set(list_losses("gan_*"))


def test_least_squares_by_hand() -> None:
    d = torch.tensor([[0.5, 2.0]])
    loss = adversarial_loss("lsgan")
    assert float(loss(d, True)) == pytest.approx(((0.5 - 1) ** 2 + (2 - 1) ** 2) / 2)  # 0.625
    assert float(loss(d, False)) == pytest.approx((0.25 + 4.0) / 2)  # 2.125


def test_bce_by_hand() -> None:
    d = torch.tensor([0.0, 2.0])
    loss = adversarial_loss("bce")
    real = (math.log(2) + math.log(1 + math.exp(-2))) / 2  # -log sigmoid
    fake = (math.log(2) + math.log(1 + math.exp(2))) / 2  # -log(1 - sigmoid)
    assert float(loss(d, True)) == pytest.approx(real, rel=1e-6)
    assert float(loss(d, False)) == pytest.approx(fake, rel=1e-6)


@pytest.mark.parametrize("kind", ["lsgan", "bce"])
def test_any_batch_and_patch_map_size(kind: str) -> None:
    # DLAE built 1/0 label tensors with a fixed batch size, so a short last batch crashed (bug 21)
    loss = adversarial_loss(kind)
    for shape in [(1, 1, 6, 6), (3, 1, 5, 7), (2, 1, 2, 3, 4)]:
        assert torch.isfinite(loss(torch.randn(shape), True))


def test_weighted_l1_terms() -> None:
    a, b = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 2.0, 1.0])
    assert float(create_loss("gan_l1", weight=100.0)(a, b)) == pytest.approx(100 * 4 / 3)
    assert float(create_loss("gan_cycle", weight=10.0)(a, b)) == pytest.approx(10 * 4 / 3)
    assert float(create_loss("gan_identity", weight=0.5)(a, b)) == pytest.approx(0.5 * 4 / 3)
    with pytest.raises(ValueError, match="shape"):
        create_loss("gan_l1")(a, b[:2])
    with pytest.raises(ValueError, match="lsgan"):
        adversarial_loss("wgan")
