"""DLAE's prebuilt AlexNet classifier, layer for layer as its layer list builds it (written by hand: BN after
each conv and Keras' channels-last Flatten are DLAE's own variant). Returns logits (DLAE's list has no softmax)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ctdl.models.backbones.lenet import KerasFlatten, _conv_bn_relu


class AlexNet(nn.Module):
    """DLAE ``alexnet``: 96 11x11/4, 256 11x11, 384, 384, 256 (all valid, each with BN), three 2x2 pools,
    Flatten, 4096-4096 (dropout 0.4), classes. At 512 x 512 the flattened map is 10 x 10 x 256."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1000, input_size: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        sizes = []
        for n in input_size:
            n = ((n - 11) // 4 + 1) // 2
            n = (n - 10) // 2
            n = (n - 6) // 2
            sizes.append(n)
        if min(sizes) < 1:
            raise ValueError(f"alexnet: input {tuple(input_size)} is too small (at least 215 x 215)")
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 96, 11, stride=4), nn.MaxPool2d(2, 2),
            *_conv_bn_relu(96, 256, 11), nn.MaxPool2d(2, 2),
            *_conv_bn_relu(256, 384, 3), *_conv_bn_relu(384, 384, 3), *_conv_bn_relu(384, 256, 3), nn.MaxPool2d(2, 2))
        self.classifier = nn.Sequential(
            KerasFlatten(), nn.Linear(sizes[0] * sizes[1] * 256, 4096), nn.ReLU(inplace=True), nn.Dropout(0.4),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.4), nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
