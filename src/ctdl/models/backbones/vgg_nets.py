"""VGG16 / VGG19 as DLAE's backbones (keras-applications layout: 3x3 same convs with bias, ReLU, 2x2 pools).

Reuses :func:`ctdl.models.vgg.vgg_features`; Keras layer names (``block{b}_conv{i}``) are mapped onto its
``nn.Sequential`` indices. Taps: the last conv of each block (block1_conv2 ... block5_conv3/4, strides 1 ... 16);
output block5_pool (stride 32).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ctdl.models.backbones._common import TapBackbone
from ctdl.models.vgg import VGG_PLANS, vgg_features


class VGGBackbone(TapBackbone):
    tap_strides = [1, 2, 4, 8, 16]
    out_stride = 32

    def __init__(self, depth: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.depth = depth
        self.features = vgg_features(depth, in_channels=in_channels)
        self._names: dict[str, int] = {}
        self._tap_idx: list[int] = []
        block, conv, idx = 1, 0, 0
        for v in VGG_PLANS[depth]:
            if v == "M":
                self._tap_idx.append(idx - 1)  # the ReLU of the block's last conv
                block, conv = block + 1, 0
                idx += 1
                continue
            conv += 1
            self._names[f"block{block}_conv{conv}"] = idx
            idx += 2
        last = 4 if depth == 19 else 3
        self.tap_names = ["block1_conv2", "block2_conv2", f"block3_conv{last}", f"block4_conv{last}",
                          f"block5_conv{last}"]
        self.tap_channels = [64, 128, 256, 512, 512]
        self.out_channels = 512
        self.out_name = "block5_pool"

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._tap_idx:
                taps.append(x)
        return taps, x

    def keras_modules(self) -> dict[str, nn.Module]:
        return {name: self.features[i] for name, i in self._names.items()}


def vgg16(in_channels: int = 1) -> VGGBackbone:
    return VGGBackbone(16, in_channels)


def vgg19(in_channels: int = 1) -> VGGBackbone:
    return VGGBackbone(19, in_channels)
