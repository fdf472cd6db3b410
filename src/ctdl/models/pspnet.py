"""PSPNet (Zhao et al. 2017) in 2D (``pspnet2d``) and 3D (``pspnet3d``) with a small own encoder.

Encoder ``"resnet18like"`` (no torchvision): a dilated ResNet-18 at output stride 8, as in the
PSPNet paper's dilated ResNets --

* deep stem: 3x3 conv stride 2 (c/2) -> 3x3 conv (c/2) -> 3x3 conv (c), each + BN + ReLU,
  then 3x3 max-pool stride 2 (OS 4);
* layer1: 2 basic blocks, c channels; layer2: 2 blocks, 2c, stride 2 (OS 8);
  layer3: 2 blocks, 4c, dilation 2; layer4: 2 blocks, 8c, dilation 4 (no more striding).

``c = base_channels`` (64 in 2D: the ResNet-18 widths 64..512; 32 in 3D). Head: pyramid
pooling module with adaptive average pooling to bins 1, 2, 3, 6, each followed by a 1x1 conv
to ``C / 4`` channels, norm and ReLU, (bi/tri)linearly upsampled to the feature size and
concatenated with the features (2C channels) -> 3x3 fusion conv + BN + ReLU + dropout 0.1 ->
1x1 classifier -> (bi/tri)linear upsampling to the input size. Any input size works (no
divisibility needed). The auxiliary (deep-supervision) head of the paper is not included.

The pooled branches use GroupNorm by default (``ppm_norm="group"``): the bin-1 branch has a
single value per channel at batch 1, where BatchNorm cannot train; ``ppm_norm="batch"`` gives
the paper's BN (needs batch >= 2).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.models.blocks import make_norm
from ctdl.models.registry import register_model

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_ADAPTIVE = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
_MODE = {2: "bilinear", 3: "trilinear"}


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    return make_norm(kind, dims, channels)


def _conv_bn_relu(dims: int, c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        _CONV[dims](c_in, c_out, 3, stride=stride, padding=1, bias=False), _BN[dims](c_out), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + BN) with optional stride / dilation and projection shortcut."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        conv, bn = _CONV[dims], _BN[dims]
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = bn(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = bn(c_out)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), bn(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class DilatedResNet18Like(nn.Module):
    """Dilated ResNet-18-style encoder at output stride 8 (2D or 3D); ``out_channels = 8 * base``."""

    def __init__(self, dims: int, in_channels: int, base_channels: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        c = base_channels
        self.stem = nn.Sequential(
            _conv_bn_relu(dims, in_channels, c // 2, stride=2),
            _conv_bn_relu(dims, c // 2, c // 2),
            _conv_bn_relu(dims, c // 2, c),
            _MAXPOOL[dims](3, stride=2, padding=1),
        )
        cfg = [(c, 1, 1), (2 * c, 2, 1), (4 * c, 1, 2), (8 * c, 1, 4)]  # (channels, stride, dilation)
        layers = []
        c_prev = c
        for n, (c_out, stride, dilation) in zip(blocks, cfg):
            blk = [BasicBlock(dims, c_prev, c_out, stride=stride, dilation=dilation)]
            blk += [BasicBlock(dims, c_out, c_out, dilation=dilation) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blk))
            c_prev = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = c_prev
        self.output_stride = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


class PyramidPoolingModule(nn.Module):
    """PSPNet PPM: features concatenated with adaptive-avg-pooled (bins), 1x1-conv'd, upsampled branches."""

    def __init__(
        self, dims: int, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), branch_channels: int | None = None, norm: str = "group"
    ) -> None:
        super().__init__()
        self.dims = dims
        self.bins = tuple(int(b) for b in bins)
        c_b = branch_channels or max(1, in_channels // len(self.bins))
        self.branches = nn.ModuleList(
            nn.Sequential(
                _ADAPTIVE[dims](b), _CONV[dims](in_channels, c_b, 1, bias=norm == "none"), _norm(norm, dims, c_b), nn.ReLU(inplace=True)
            )
            for b in self.bins
        )
        self.out_channels = in_channels + c_b * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        outs = [x] + [F.interpolate(br(x), size=size, mode=_MODE[self.dims], align_corners=False) for br in self.branches]
        return torch.cat(outs, dim=1)


class PSPNet(nn.Module):
    """Encoder -> PPM -> 3x3 fusion conv -> classifier -> upsampling to the input size (logits)."""

    def __init__(
        self,
        dims: int,
        encoder: nn.Module,
        encoder_channels: int,
        out_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        fusion_channels: int | None = None,
        ppm_norm: str = "group",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = encoder
        self.ppm = PyramidPoolingModule(dims, encoder_channels, bins, norm=ppm_norm)
        c_f = fusion_channels or max(out_channels, encoder_channels // 2)
        self.fusion = nn.Sequential(
            _CONV[dims](self.ppm.out_channels, c_f, 3, padding=1, bias=False),
            _BN[dims](c_f),
            nn.ReLU(inplace=True),
            _DROPOUT[dims](dropout) if dropout > 0 else nn.Identity(),
        )
        self.classifier = _CONV[dims](c_f, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        feats = self.encoder(x)
        if isinstance(feats, (list, tuple)):
            feats = feats[-1]
        y = self.classifier(self.fusion(self.ppm(feats)))
        return F.interpolate(y, size=size, mode=_MODE[self.dims], align_corners=False)


def _build_encoder(
    dims: int, encoder: Any, in_channels: int, base_channels: int, encoder_channels: int | None
) -> tuple[nn.Module, int]:
    """Resolve the ``encoder`` option to ``(module, channels)``.

    ``encoder`` is ``"resnet18like"``; an ``nn.Module`` (channels from ``encoder_channels`` or its
    ``out_channels`` attribute); or a callable ``f(in_channels)`` returning a module or
    ``(module, channels)``. A custom encoder returns a feature tensor (or a list whose last item
    is used); its output stride is free (the logits are upsampled to the input size).
    """
    if isinstance(encoder, str):
        if encoder != "resnet18like":
            raise ValueError(f"unknown encoder {encoder!r}; use 'resnet18like', an nn.Module or a callable")
        enc = DilatedResNet18Like(dims, in_channels, base_channels)
        return enc, enc.out_channels
    if isinstance(encoder, nn.Module):
        module: nn.Module = encoder
        channels = encoder_channels
    elif callable(encoder):
        built = encoder(in_channels)
        if isinstance(built, tuple):
            module, channels = built
        else:
            module, channels = built, encoder_channels
    else:
        raise TypeError(f"encoder must be a string, an nn.Module or a callable, got {type(encoder).__name__}")
    if channels is None:
        channels = getattr(module, "out_channels", None)
    if not isinstance(channels, int):
        raise ValueError("custom encoder: pass encoder_channels=, give the module an int out_channels, or return (module, channels)")
    return module, channels


@register_model("pspnet2d", dims=2, default_input=(1, 256, 256), paper="Zhao et al. 2017, PSPNet")
def pspnet2d(
    in_channels: int = 1,
    out_channels: int = 3,
    encoder: str | nn.Module | Callable[..., Any] = "resnet18like",
    encoder_channels: int | None = None,
    base_channels: int = 64,
    bins: Sequence[int] = (1, 2, 3, 6),
    fusion_channels: int | None = None,
    ppm_norm: str = "group",
    dropout: float = 0.1,
) -> nn.Module:
    """2D PSPNet: dilated ResNet-18-like encoder (OS 8), PPM bins 1/2/3/6, bilinear upsampling."""
    enc, ch = _build_encoder(2, encoder, in_channels, base_channels, encoder_channels)
    return PSPNet(2, enc, ch, out_channels, bins, fusion_channels, ppm_norm, dropout)


@register_model("pspnet3d", dims=3, default_input=(1, 64, 128, 128), paper="Zhao et al. 2017, PSPNet (3D variant)")
def pspnet3d(
    in_channels: int = 1,
    out_channels: int = 3,
    encoder: str | nn.Module | Callable[..., Any] = "resnet18like",
    encoder_channels: int | None = None,
    base_channels: int = 32,
    bins: Sequence[int] = (1, 2, 3, 6),
    fusion_channels: int | None = None,
    ppm_norm: str = "group",
    dropout: float = 0.1,
) -> nn.Module:
    """3D PSPNet: dilated ResNet-18-like encoder (OS 8, base 32), PPM bins 1/2/3/6, trilinear upsampling."""
    enc, ch = _build_encoder(3, encoder, in_channels, base_channels, encoder_channels)
    return PSPNet(3, enc, ch, out_channels, bins, fusion_channels, ppm_norm, dropout)
