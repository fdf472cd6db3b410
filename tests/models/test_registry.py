"""Contract test: every registered model builds, runs forward+backward and keeps the spatial shape."""

from __future__ import annotations

import pytest
import torch

from ctdl.models import MODELS, count_parameters, count_parameters_keras, create_model, list_models, model_info


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    info = model_info(name)
    if info.get("task") != "segmentation":
        pytest.skip("segmentation contract only")
    model = create_model(name, in_channels=1, out_channels=3)
    c, *spatial = info["default_input"]
    small = list(info.get("test_input") or [max(16, s // 2) for s in spatial])  # test_input: smallest valid size
    x = torch.randn(1, 1, *small)
    y = model(x)
    assert y.shape == (1, 3, *small)
    y.float().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_registry_errors_and_none_dropping() -> None:
    with pytest.raises(KeyError, match="unknown model 'nope'; valid names: .*unet3d_small"):
        create_model("nope")
    m = create_model("unet3d_small", in_channels=1, out_channels=2, dropout=None)  # None keeps the default
    assert count_parameters(m) > 0
    assert "unet3d_small" in MODELS


def test_keras_count_adds_bn_statistics() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    # conv 3*3*3*4 + 4 = 112; BN gamma/beta 8 trainable + moving mean/var 8
    assert count_parameters(net) == 120
    assert count_parameters_keras(net) == 128
