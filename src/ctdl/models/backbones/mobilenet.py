"""MobileNet (V1, alpha 1) and MobileNetV2 (alpha 1) as in keras-applications 1.0.7; written by hand (MONAI has
neither). Stride-2 convs are zero-padded as Keras does (V1: ((0, 1), (0, 1)); V2: ``correct_pad``), ReLU6,
BatchNorm eps 1e-3 (V2 momentum 0.999).

Taps: MobileNet conv_pw_{1,3,5,11,13}_relu (64, 128, 256, 512, 1024);
MobileNetV2 block_{1,3,6,13}_expand_relu (96, 144, 192, 576) and out_relu (1280).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.models.backbones._common import TapBackbone, correct_pad, keras_bn


def _relu6(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x)


class MobileNetBackbone(TapBackbone):
    tap_names = [f"conv_pw_{i}_relu" for i in (1, 3, 5, 11, 13)]
    tap_channels = [64, 128, 256, 512, 1024]
    out_channels = 1024
    out_name = "conv_pw_13_relu"
    PLAN = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        L = self.layers = nn.ModuleDict()
        L["conv1"] = nn.Conv2d(in_channels, 32, 3, 2, bias=False)
        L["conv1_bn"] = keras_bn(32)
        c = 32
        for i, (f, s) in enumerate(self.PLAN, start=1):
            L[f"conv_dw_{i}"] = nn.Conv2d(c, c, 3, s, padding=1 if s == 1 else 0, groups=c, bias=False)
            L[f"conv_dw_{i}_bn"] = keras_bn(c)
            L[f"conv_pw_{i}"] = nn.Conv2d(c, f, 1, bias=False)
            L[f"conv_pw_{i}_bn"] = keras_bn(f)
            c = f

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        L = self.layers
        taps = []
        x = _relu6(L["conv1_bn"](L["conv1"](F.pad(x, (0, 1, 0, 1)))))
        for i, (_f, s) in enumerate(self.PLAN, start=1):
            if s == 2:
                x = F.pad(x, (0, 1, 0, 1))
            x = _relu6(L[f"conv_dw_{i}_bn"](L[f"conv_dw_{i}"](x)))
            x = _relu6(L[f"conv_pw_{i}_bn"](L[f"conv_pw_{i}"](x)))
            if i in (1, 3, 5, 11, 13):
                taps.append(x)
        return taps, x


def _bn2(c: int) -> nn.BatchNorm2d:
    return keras_bn(c, eps=1e-3, momentum=0.999)


class MobileNetV2Backbone(TapBackbone):
    tap_names = ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
                 "out_relu"]
    tap_channels = [96, 144, 192, 576, 1280]
    out_channels = 1280
    out_name = "out_relu"
    # (filters, stride, expansion) for block ids 0..16
    PLAN = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6), (64, 2, 6), (64, 1, 6),
            (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6),
            (320, 1, 6)]

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        L = self.layers = nn.ModuleDict()
        L["Conv1"] = nn.Conv2d(in_channels, 32, 3, 2, bias=False)
        L["bn_Conv1"] = _bn2(32)
        c = 32
        self.blocks: list[tuple[str, int, bool, bool]] = []
        for i, (f, s, e) in enumerate(self.PLAN):
            p = f"block_{i}_" if i else "expanded_conv_"
            if i:
                L[p + "expand"] = nn.Conv2d(c, e * c, 1, bias=False)
                L[p + "expand_BN"] = _bn2(e * c)
            h = e * c
            L[p + "depthwise"] = nn.Conv2d(h, h, 3, s, padding=1 if s == 1 else 0, groups=h, bias=False)
            L[p + "depthwise_BN"] = _bn2(h)
            L[p + "project"] = nn.Conv2d(h, f, 1, bias=False)
            L[p + "project_BN"] = _bn2(f)
            self.blocks.append((p, s, bool(i), c == f and s == 1))
            c = f
        L["Conv_1"] = nn.Conv2d(c, 1280, 1, bias=False)
        L["Conv_1_bn"] = _bn2(1280)

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        L = self.layers
        taps = []
        x = _relu6(L["bn_Conv1"](L["Conv1"](F.pad(x, correct_pad(x)))))
        for p, s, expand, add in self.blocks:
            y = x
            if expand:
                y = _relu6(L[p + "expand_BN"](L[p + "expand"](y)))
                if p in ("block_1_", "block_3_", "block_6_", "block_13_"):
                    taps.append(y)
            if s == 2:
                y = F.pad(y, correct_pad(y))
            y = _relu6(L[p + "depthwise_BN"](L[p + "depthwise"](y)))
            y = L[p + "project_BN"](L[p + "project"](y))
            x = x + y if add else y
        x = _relu6(L["Conv_1_bn"](L["Conv_1"](x)))
        taps.append(x)
        return taps, x


def mobilenet(in_channels: int = 1) -> MobileNetBackbone:
    return MobileNetBackbone(in_channels)


def mobilenetv2(in_channels: int = 1) -> MobileNetV2Backbone:
    return MobileNetV2Backbone(in_channels)
