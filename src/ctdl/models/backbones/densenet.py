"""DenseNet121/169/201 from MONAI (its structure equals keras-applications' exactly: 7x7/2 stem without bias,
BN-ReLU-1x1-BN-ReLU-3x3 dense layers, BN-ReLU-1x1-avgpool transitions with reduction 0.5, final BN).

Only BatchNorm's epsilon (Keras 1.001e-5) and momentum are adjusted. ``keras_modules`` maps Keras names
(``conv1/conv``, ``conv2_block1_0_bn``, ``pool2_conv``, ``bn`` ...) onto MONAI's modules.
Taps: conv1/relu (64), pool2_relu (256), pool3_relu (512), pool4_relu (1024/1280/1792), relu (1024/1664/1920).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import DenseNet

BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}


class DenseNetBackbone(nn.Module):
    def __init__(self, depth: int = 121, in_channels: int = 1) -> None:
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"DenseNet depth must be one of {sorted(BLOCKS)} (got {depth})")
        self.depth = depth
        net = DenseNet(spatial_dims=2, in_channels=in_channels, out_channels=1, init_features=64, growth_rate=32,
                       block_config=BLOCKS[depth], bn_size=4)
        self.features = net.features  # the classifier part of MONAI's net is not used
        for m in self.features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1.001e-5, 0.01
        c = 64
        chans = []
        for i, n in enumerate(BLOCKS[depth]):
            c += 32 * n
            chans.append(c)
            if i < 3:
                c //= 2
        self.tap_channels = [64, chans[0], chans[1], chans[2], chans[3]]
        self.out_channels = chans[3]
        self.tap_names = ["conv1/relu", "pool2_relu", "pool3_relu", "pool4_relu", "relu"]
        self.out_name = "relu"

    padded_taps = False
    tap_strides = [2, 4, 8, 16, 32]
    out_stride = 32

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        f = self.features
        taps = []
        x = f.relu0(f.norm0(f.conv0(x)))
        taps.append(x)
        x = f.pool0(x)  # MaxPool(3, 2, padding 1) on a ReLU output equals Keras' zero pad + valid pool
        for i in range(1, 5):
            x = getattr(f, f"denseblock{i}")(x)
            if i < 4:
                t = getattr(f, f"transition{i}")
                x = t.relu(t.norm(x))
                taps.append(x)
                x = t.pool(t.conv(x))
        x = F.relu(f.norm5(x))
        taps.append(x)
        return taps, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[1]

    def grid_taps(self, x_size, taps):  # type: ignore[no-untyped-def]
        return taps

    def keras_modules(self) -> dict[str, nn.Module]:
        f = self.features
        out: dict[str, nn.Module] = {"conv1/conv": f.conv0, "conv1/bn": f.norm0, "bn": f.norm5}
        for i, n in enumerate(BLOCKS[self.depth], start=1):
            block = getattr(f, f"denseblock{i}")
            for j in range(1, n + 1):
                layers = getattr(block, f"denselayer{j}").layers
                p = f"conv{i + 1}_block{j}"
                out[p + "_0_bn"] = layers.norm1
                out[p + "_1_conv"] = layers.conv1
                out[p + "_1_bn"] = layers.norm2
                out[p + "_2_conv"] = layers.conv2
            if i < 4:
                t = getattr(f, f"transition{i}")
                out[f"pool{i + 1}_bn"] = t.norm
                out[f"pool{i + 1}_conv"] = t.conv
        return out


def densenet121(in_channels: int = 1) -> DenseNetBackbone:
    return DenseNetBackbone(121, in_channels)


def densenet169(in_channels: int = 1) -> DenseNetBackbone:
    return DenseNetBackbone(169, in_channels)


def densenet201(in_channels: int = 1) -> DenseNetBackbone:
    return DenseNetBackbone(201, in_channels)
