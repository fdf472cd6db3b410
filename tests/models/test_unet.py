"""unet3d (Cicek 2016 channel scheme) and unet2d (Ronneberger 2015): structure, any input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import ctdl.models.unet  # noqa: F401  (registers unet3d, unet2d)
from ctdl.models.registry import MODELS, count_parameters
from ctdl.models.unet import DoubleConv, crop_to, pad_to_multiple


def _conv_channels(block: DoubleConv) -> list[tuple[int, int]]:
    return [(c.in_channels, c.out_channels) for c in block.modules() if isinstance(c, (nn.Conv2d, nn.Conv3d))]


def test_unet3d_cicek_channels() -> None:
    m = MODELS.create("unet3d", in_channels=1, out_channels=3)
    print(f"unet3d parameters: {count_parameters(m):,}")
    assert [_conv_channels(e) for e in m.encoders] == [
        [(1, 32), (32, 64)], [(64, 64), (64, 128)], [(128, 128), (128, 256)], [(256, 256), (256, 512)]
    ]
    assert sum(isinstance(x, nn.MaxPool3d) for x in m.modules()) == 3
    assert [(u.in_channels, u.out_channels, u.stride) for u in m.upconvs] == [
        (512, 512, (2, 2, 2)), (256, 256, (2, 2, 2)), (128, 128, (2, 2, 2))
    ]
    assert [_conv_channels(d) for d in m.decoders] == [
        [(768, 256), (256, 256)], [(384, 128), (128, 128)], [(192, 64), (64, 64)]
    ]
    assert sum(isinstance(x, nn.BatchNorm3d) for x in m.modules()) == 14


def test_unet2d_classic_channels() -> None:
    m = MODELS.create("unet2d", in_channels=1, out_channels=2)
    print(f"unet2d parameters: {count_parameters(m):,}")
    assert [_conv_channels(e)[-1][1] for e in m.encoders] == [64, 128, 256, 512, 1024]
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 4
    assert [(u.in_channels, u.out_channels) for u in m.upconvs] == [(1024, 512), (512, 256), (256, 128), (128, 64)]
    m = MODELS.create("unet2d", in_channels=1, out_channels=2, depth=2, base_channels=8)
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 2


@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 16), (2, 1, 13, 17, 19)])
def test_unet3d_forward_backward(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    m = MODELS.create("unet3d", in_channels=1, out_channels=3, base_channels=8)
    y = m(torch.randn(*shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    y.pow(2).mean().backward()
    assert m.encoders[0].block[0].weight.grad.abs().sum() > 0


def test_unet3d_default_width_forward() -> None:
    m = MODELS.create("unet3d", in_channels=1, out_channels=3)
    y = m(torch.randn(1, 1, 16, 16, 16))
    assert y.shape == (1, 3, 16, 16, 16)
    y.mean().backward()


@pytest.mark.parametrize("shape,depth,base", [((1, 1, 64, 64), 4, 64), ((2, 1, 50, 70), 3, 16)])
def test_unet2d_forward_backward(shape: tuple[int, ...], depth: int, base: int) -> None:
    torch.manual_seed(0)
    m = MODELS.create("unet2d", in_channels=1, out_channels=4, depth=depth, base_channels=base)
    y = m(torch.randn(*shape))
    assert y.shape == (shape[0], 4, *shape[2:])
    y.pow(2).mean().backward()
    assert m.encoders[0].block[0].weight.grad.abs().sum() > 0


def test_pad_and_crop_helpers() -> None:
    x = torch.randn(1, 2, 5, 7, 8)
    p = pad_to_multiple(x, (4, 4, 4))
    assert p.shape == (1, 2, 8, 8, 8)
    assert torch.equal(crop_to(p, (5, 7, 8)), x)
    assert pad_to_multiple(x, 1) is x
    with pytest.raises(ValueError):
        pad_to_multiple(x, (2, 2))
