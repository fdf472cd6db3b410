"""GAN networks: every registered task-"gan" model runs forward and backward; PatchGAN's receptive field is 70."""

from __future__ import annotations

import pytest
import torch

from ctdl.models import MODELS, create_model, list_models, model_info
from ctdl.models.gan import PatchGANDiscriminator, patchgan_receptive_field


pytestmark = pytest.mark.usefixtures("one_torch_thread")


GAN_MODELS = [n for n in list_models() if MODELS.meta(n).get("task") == "gan"]
# small widths keep the contract test fast; the layouts (depth, blocks, strides) are the registered ones
LIGHT = {"pix2pix": {"base": 4, "max_channels": 16}, "cyclegan": {"base": 4, "n_blocks": 2},
         "unet_generator2d": {"base": 8}, "resnet_generator2d": {"base": 8, "n_blocks": 2},
         "resnet_generator3d": {"base": 4, "n_blocks": 1}, "unet_generator3d": {"base": 4},
         "patchgan2d": {"base": 8}, "patchgan3d": {"base": 4}}


def test_expected_names_registered() -> None:
    for name in ("unet_generator2d", "unet_generator3d", "resnet_generator2d", "resnet_generator3d", "patchgan2d",
                 "patchgan3d", "pix2pix", "cyclegan"):
        assert name in GAN_MODELS
    assert model_info("pix2pix")["dlae"] and model_info("cyclegan")["dlae"]
    assert model_info("patchgan3d")["dims"] == 3


@pytest.mark.parametrize("name", GAN_MODELS)
def test_forward_backward(name: str) -> None:
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, **LIGHT.get(name, {}))
    x = torch.randn(2, *info["default_input"], requires_grad=True)
    y = model(x)
    if info["role"] == "generator":
        assert y.shape == (2, 1, *info["default_input"][1:])
        assert float(y.detach().abs().max()) <= 1.0  # tanh output: the [-1, 1] HU-window scale
    else:
        assert y.shape[:2] == (2, 1) and y.dim() == x.dim()
    y.square().mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_patchgan_receptive_field_is_70() -> None:
    assert patchgan_receptive_field(3) == 70
    torch.manual_seed(0)
    d = PatchGANDiscriminator(1, dims=2, base=4, n_layers=3, norm="none")
    x = torch.randn(1, 1, 160, 160, requires_grad=True)
    out = d(x)
    i, j = out.shape[2] // 2, out.shape[3] // 2
    out[0, 0, i, j].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70


def test_unet_generator_needs_divisible_input_and_says_so() -> None:
    g = create_model("unet_generator2d", base=4, depth=3)
    assert g.divisible_by == 8
    assert g(torch.zeros(1, 1, 24, 16)).shape == (1, 1, 24, 16)


@pytest.mark.parametrize("name", ["unet_generator2d", "resnet_generator2d"])
def test_residual_generator_starts_near_identity_and_clamps(name: str) -> None:
    torch.manual_seed(0)
    g = create_model(name, base=4, residual=True, **({"depth": 2} if "unet" in name else {"n_blocks": 1}))
    with torch.no_grad():
        for p in g.parameters():
            p.zero_()
        x = torch.linspace(-1.5, 1.5, 64).reshape(1, 1, 8, 8)
        assert torch.equal(g(x), x.clamp(-1, 1))  # zero correction: the clamped input
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        create_model(name, in_channels=2, out_channels=1, residual=True)
