"""Building blocks shared by the Keras-application backbones (DLAE's prebuilt encoders).

Keras and PyTorch differ in three places that change numbers or shapes, handled here:
- TensorFlow 'same' padding puts the odd pixel at the bottom/right for stride 2 (:func:`tf_same_pad`);
- Keras BatchNormalization(scale=False) has no gamma (:class:`BatchNormNoScale`);
- Keras momentum m is PyTorch momentum 1 - m (:func:`keras_bn`).

Every backbone names its layers as keras-applications 1.0.7 does (``keras_modules()`` returns
``{keras layer name: module}``) so that ImageNet .h5 files map onto it by name (:mod:`ctdl.models.keras_weights`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def keras_bn(channels: int, eps: float = 1e-3, momentum: float = 0.99) -> nn.BatchNorm2d:
    """A BatchNorm2d with Keras' epsilon and (converted) momentum."""
    return nn.BatchNorm2d(channels, eps=eps, momentum=1.0 - momentum)


class BatchNormNoScale(nn.BatchNorm2d):
    """Keras ``BatchNormalization(scale=False)``: a shift (beta) but no trainable scale (gamma).

    Used by InceptionV3 and InceptionResNetV2; gamma is fixed at 1 (a buffer, not a parameter), so the
    trainable count equals Keras'.
    """

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.99) -> None:
        super().__init__(channels, eps=eps, momentum=1.0 - momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias.view(1, -1, 1, 1)


def tf_same_pad(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) as TensorFlow's 'same' does: total = max((ceil(n/s)-1)*s + k - n, 0),
    the smaller half at the top/left and the extra pixel at the bottom/right."""
    pads: list[int] = []
    for n, k, s in zip(reversed(x.shape[2:]), reversed(list(kernel)), reversed(list(stride))):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


def correct_pad(x: torch.Tensor, kernel: int = 3) -> tuple[int, int, int, int]:
    """keras-applications' ``correct_pad`` for a stride-2 valid conv: ((k//2 - adjust, k//2) per axis),
    adjust = 1 for an even size. Returned in F.pad order (left, right, top, bottom)."""
    h, w = x.shape[2], x.shape[3]
    c = kernel // 2
    return (c - (1 - w % 2), c, c - (1 - h % 2), c)


class MaxPoolSame(nn.Module):
    """``MaxPooling2D(padding='same')``: TF padding (ignored by the max, so padded with -inf)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_same_pad(x, (self.kernel, self.kernel), (self.stride, self.stride), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1): depthwise 3x3 then pointwise 1x1."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, bias: bool = False) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class GroupedFromDepthwise(nn.Conv2d):
    """ResNeXt's grouped 3x3 conv. keras-applications builds it as a DepthwiseConv2D with multiplier c
    followed by a fixed sum over c; that equals a grouped conv with weight[g*c+m, j] = dw[:, :, g*c+j, m]
    (the conversion lives in :mod:`ctdl.models.keras_weights`). A marker class so the converter knows."""


def pad_to(x: torch.Tensor, size: Sequence[int], name: str) -> torch.Tensor:
    """Zero-pad (N, C, H, W) to ``size`` with the extra pixel at the top/left, as DLAE's fixed tap pads do
    at 512 x 512 (e.g. 255 -> ((1, 0), (1, 0)), 61 -> ((2, 1), (2, 1)))."""
    pads: list[int] = []
    for n, t in zip(reversed(x.shape[2:]), reversed(list(size))):
        total = int(t) - int(n)
        if total < 0:
            raise ValueError(f"{name}: feature map {tuple(x.shape[2:])} is larger than the grid {tuple(size)}")
        pads += [total - total // 2, total // 2]
    return F.pad(x, pads) if any(pads) else x


class TapBackbone(nn.Module):
    """Base of all DLAE backbones.

    ``forward_taps(x)`` returns (taps, out): the five DLAE skip/hook taps (finest first) and the last feature
    map; ``forward(x)`` returns the last feature map. ``tap_channels``, ``out_channels``, ``tap_names`` and
    ``padded_taps`` (Xception/Inception: taps are zero-padded onto the 1/2 ... 1/32 grid) describe them.
    """

    tap_names: list[str] = []
    tap_channels: list[int] = []
    out_channels: int = 0
    out_name: str = ""
    padded_taps: bool = False
    # input-stride of each tap (DLAE's grid at 512): 2, 4, 8, 16, 32 (VGG: 1 ... 16) and of the output
    tap_strides: list[int] = [2, 4, 8, 16, 32]
    out_stride: int = 32

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[1]

    def keras_modules(self) -> dict[str, nn.Module]:
        layers = getattr(self, "layers", None)
        if isinstance(layers, nn.ModuleDict):
            return dict(layers.items())
        raise NotImplementedError

    def grid_taps(self, x_size: Sequence[int], taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Taps padded onto the input's 1/stride grid (only for ``padded_taps`` backbones)."""
        if not self.padded_taps:
            return taps
        return [pad_to(t, [math.ceil(s / st) for s in x_size], f"tap {n}")
                for t, st, n in zip(taps, self.tap_strides, self.tap_names)]
