"""pspnet2d / pspnet3d: dilated ResNet-18-like encoder at OS 8, PPM bins 1/2/3/6, logits at input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import ctdl.models.pspnet  # noqa: F401  (registers pspnet2d, pspnet3d)
from ctdl.models.pspnet import DilatedResNet18Like, PyramidPoolingModule
from ctdl.models.registry import MODELS, count_parameters


def _fwd_bwd(model: nn.Module, shape: tuple[int, ...], out_channels: int) -> None:
    model.train()
    y = model(torch.randn(*shape))
    assert y.shape == (shape[0], out_channels, *shape[2:])
    y.pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,dims", [("pspnet2d", 2), ("pspnet3d", 3)])
def test_structure_and_parameter_count(name: str, dims: int) -> None:
    m = MODELS.create(name, in_channels=1, out_channels=3)
    assert MODELS.meta(name)["dims"] == dims
    print(f"{name} parameters: {count_parameters(m):,}")
    assert isinstance(m.encoder, DilatedResNet18Like) and m.encoder.output_stride == 8
    (ppm,) = [x for x in m.modules() if isinstance(x, PyramidPoolingModule)]
    pools = [x for x in ppm.modules() if isinstance(x, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d))]
    assert [p.output_size for p in pools] == [1, 2, 3, 6]
    c = m.encoder.out_channels
    assert ppm.out_channels == 2 * c
    # output stride 8 and dilation 2 / 4 in the last two layers
    size = (64,) * dims if dims == 2 else (16, 32, 32)
    m.eval()
    with torch.no_grad():
        f = m.encoder(torch.zeros(1, 1, *size))
    assert tuple(f.shape[2:]) == tuple(s // 8 for s in size) and f.shape[1] == c
    assert m.encoder.layer3[0].conv1.dilation[0] == 2 and m.encoder.layer4[0].conv1.dilation[0] == 4


def test_pspnet2d_forward_backward_and_odd_size() -> None:
    torch.manual_seed(0)
    m = MODELS.create("pspnet2d", in_channels=1, out_channels=3)
    _fwd_bwd(m, (1, 1, 64, 64), 3)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 45, 61)).shape == (2, 3, 45, 61)


def test_pspnet3d_forward_backward_and_odd_size() -> None:
    torch.manual_seed(0)
    m = MODELS.create("pspnet3d", in_channels=1, out_channels=2, base_channels=16)
    _fwd_bwd(m, (1, 1, 16, 24, 24), 2)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 13, 19, 27)).shape == (1, 2, 13, 19, 27)


class _TinyEncoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 12) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.net = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=4, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, self.net(x)]  # a feature list: the last item is used


def test_custom_encoders() -> None:
    m = MODELS.create("pspnet2d", in_channels=2, out_channels=4, encoder=_TinyEncoder(2))
    _fwd_bwd(m, (2, 2, 30, 34), 4)
    m = MODELS.create("pspnet2d", in_channels=2, out_channels=4, encoder=lambda c: (_TinyEncoder(c, 8), 8))
    assert m.ppm.out_channels == 16
    _fwd_bwd(m, (1, 2, 32, 32), 4)
    enc = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.ReLU())
    m = MODELS.create("pspnet2d", in_channels=1, out_channels=3, encoder=enc, encoder_channels=6)
    _fwd_bwd(m, (1, 1, 20, 20), 3)
    with pytest.raises(ValueError, match="encoder_channels"):
        MODELS.create("pspnet2d", encoder=nn.Sequential(nn.Conv2d(1, 6, 3)))
    with pytest.raises(ValueError, match="unknown encoder"):
        MODELS.create("pspnet2d", encoder="resnet101")
