"""Xception (Chollet 2017) as in keras-applications 1.0.7; written by hand (MONAI has no Xception).

Layer names follow Keras, including the four auto-named residual convs ``conv2d_1..4`` /
``batch_normalization_1..4`` that an ImageNet .h5 file carries. BatchNorm epsilon 1e-3.
Taps: block1_conv1_act (32), block3_sepconv2_bn (256), block4_sepconv2_bn (728), block13_sepconv2_bn (1024),
block14_sepconv2_act (2048); the first two are zero-padded onto the 1/2 and 1/4 grid (DLAE: ((1, 0), (1, 0))).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.models.backbones._common import MaxPoolSame, SeparableConv2d, TapBackbone, keras_bn


class XceptionBackbone(TapBackbone):
    padded_taps = True
    tap_names = ["block1_conv1_act", "block3_sepconv2_bn", "block4_sepconv2_bn", "block13_sepconv2_bn",
                 "block14_sepconv2_act"]
    tap_channels = [32, 256, 728, 1024, 2048]
    out_channels = 2048
    out_name = "block14_sepconv2_act"

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        L = self.layers = nn.ModuleDict()
        L["block1_conv1"] = nn.Conv2d(in_channels, 32, 3, 2, bias=False)
        L["block1_conv1_bn"] = keras_bn(32)
        L["block1_conv2"] = nn.Conv2d(32, 64, 3, bias=False)
        L["block1_conv2_bn"] = keras_bn(64)
        self.pool = MaxPoolSame(3, 2)
        # entry flow: blocks 2-4 with strided 1x1 residual convs (Keras auto-names conv2d_1..3)
        cin = 64
        for i, (b, c) in enumerate([(2, 128), (3, 256), (4, 728)], start=1):
            L[f"conv2d_{i}"] = nn.Conv2d(cin, c, 1, 2, bias=False)
            L[f"batch_normalization_{i}"] = keras_bn(c)
            L[f"block{b}_sepconv1"] = SeparableConv2d(cin, c)
            L[f"block{b}_sepconv1_bn"] = keras_bn(c)
            L[f"block{b}_sepconv2"] = SeparableConv2d(c, c)
            L[f"block{b}_sepconv2_bn"] = keras_bn(c)
            cin = c
        for b in range(5, 13):  # middle flow
            for j in (1, 2, 3):
                L[f"block{b}_sepconv{j}"] = SeparableConv2d(728, 728)
                L[f"block{b}_sepconv{j}_bn"] = keras_bn(728)
        L["conv2d_4"] = nn.Conv2d(728, 1024, 1, 2, bias=False)
        L["batch_normalization_4"] = keras_bn(1024)
        L["block13_sepconv1"] = SeparableConv2d(728, 728)
        L["block13_sepconv1_bn"] = keras_bn(728)
        L["block13_sepconv2"] = SeparableConv2d(728, 1024)
        L["block13_sepconv2_bn"] = keras_bn(1024)
        L["block14_sepconv1"] = SeparableConv2d(1024, 1536)
        L["block14_sepconv1_bn"] = keras_bn(1536)
        L["block14_sepconv2"] = SeparableConv2d(1536, 2048)
        L["block14_sepconv2_bn"] = keras_bn(2048)

    def _sep(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.layers[name + "_bn"](self.layers[name](x))

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        L = self.layers
        taps = []
        x = F.relu(L["block1_conv1_bn"](L["block1_conv1"](x)))
        taps.append(x)
        x = F.relu(L["block1_conv2_bn"](L["block1_conv2"](x)))
        for i, b in enumerate((2, 3, 4), start=1):
            res = L[f"batch_normalization_{i}"](L[f"conv2d_{i}"](x))
            if b > 2:
                x = F.relu(x)
            x = self._sep(f"block{b}_sepconv1", x)
            x = self._sep(f"block{b}_sepconv2", F.relu(x))
            if b > 2:
                taps.append(x)
            x = self.pool(x) + res
        for b in range(5, 13):
            res = x
            for j in (1, 2, 3):
                x = self._sep(f"block{b}_sepconv{j}", F.relu(x))
            x = x + res
        res = L["batch_normalization_4"](L["conv2d_4"](x))
        x = self._sep("block13_sepconv1", F.relu(x))
        x = self._sep("block13_sepconv2", F.relu(x))
        taps.append(x)
        x = self.pool(x) + res
        x = F.relu(self._sep("block14_sepconv1", x))
        x = F.relu(self._sep("block14_sepconv2", x))
        taps.append(x)
        return taps, x


def xception(in_channels: int = 1) -> XceptionBackbone:
    return XceptionBackbone(in_channels)
