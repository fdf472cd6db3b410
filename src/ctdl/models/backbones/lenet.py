"""DLAE's prebuilt LeNet-5 classifier, layer for layer as its layer list builds it.

Written by hand (no library has these exact variants: BN after each conv, TF 'valid'/'same' padding,
Keras' channels-last Flatten). Both return logits; DLAE's final softmax belongs to the loss here.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ctdl.models.backbones._common import keras_bn


class KerasFlatten(nn.Module):
    """Keras ``Flatten``: (N, C, H, W) flattened in (H, W, C) order, so Dense kernels from Keras load unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x.movedim(1, -1), 1)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, same: bool = False) -> list[nn.Module]:
    # 'same' with stride 1 and an odd kernel is symmetric padding k // 2
    return [nn.Conv2d(cin, cout, k, stride, padding=k // 2 if same else 0), keras_bn(cout), nn.ReLU(inplace=True)]


class LeNet5(nn.Module):
    """DLAE ``lenet5``: conv6 5x5 valid, BN, ReLU, pool; conv16 5x5 same, BN, ReLU, pool; 120-84-classes.

    107,830 trainable parameters at DLAE's 32 x 32 x 1 input and 10 classes.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        h, w = input_size
        h, w = (h - 4) // 2 // 2, (w - 4) // 2 // 2
        if h < 1 or w < 1:
            raise ValueError(f"lenet5: input {tuple(input_size)} is too small (at least 8 x 8)")
        self.features = nn.Sequential(*_conv_bn_relu(in_channels, 6, 5), nn.MaxPool2d(2, 2),
                                      *_conv_bn_relu(6, 16, 5, same=True), nn.MaxPool2d(2, 2))
        self.classifier = nn.Sequential(KerasFlatten(), nn.Linear(h * w * 16, 120), nn.ReLU(inplace=True),
                                        nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
