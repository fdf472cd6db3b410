"""3D CNN volume classifiers: the DLAE manual's section-12 classifier and small MONAI baselines (logits out).

``cnn3d_dlae`` follows the manual's layer list for 13 x 13 x 7 prostate sub-windows exactly::

    Input (13, 13, 7, 1)
    Conv3D 64 3x3x3 same, he_normal -> BN(0.99, 1e-3) -> ReLU -> MaxPool3D 2/2
    Conv3D 128 3x3x3 same           -> BN             -> ReLU -> MaxPool3D 2/2
    Conv3D 256 3x3x3 same           -> BN             -> ReLU
    Flatten -> Dense 2048 -> BN -> ReLU -> Dropout 0.5 -> Dense 2 -> softmax

ctdl is channels-first (C, D, H, W), so Keras' (rows 13, cols 13, slices 7, 1) is ``(1, 7, 13, 13)`` here. The
regularizer fields of the manual's strings are ``None``, so no L1/L2 penalty is applied (the 0.001 values are
unused there too). The localizer variant is the same list with 3 outputs and no softmax:
``cnn3d_dlae(out_channels=3)`` trained with the ``mse`` loss (task ``regression``). Keras BN momentum 0.99 is
PyTorch momentum 0.01. Flatten order differs from Keras (channels-first here), which only matters when porting
Keras Dense weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ctdl.models.registry import register_model


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    conv = nn.Conv3d(cin, cout, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # he_normal (Keras truncates at 2 sigma; close enough)
    nn.init.zeros_(conv.bias)
    return [conv, nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]


class DlaeCnn3d(nn.Module):
    """The DLAE manual's 3D classifier (section 12), parameterised only by input size and output count."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, input_size: Sequence[int] = (7, 13, 13),
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 64), nn.MaxPool3d(2, 2),
            *_conv_bn_relu(64, 128), nn.MaxPool3d(2, 2),
            *_conv_bn_relu(128, 256),
        )
        d, h, w = (int(s) for s in input_size)
        flat = 256 * (d // 2 // 2) * (h // 2 // 2) * (w // 2 // 2)
        if flat == 0:
            raise ValueError(f"cnn3d_dlae: input_size {tuple(input_size)} is too small for two 2x poolings (>= 4 per axis)")
        dense = nn.Linear(flat, 2048)
        out = nn.Linear(2048, out_channels)
        for lin in (dense, out):  # Keras Dense default: glorot_uniform, zero bias
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.fc = nn.Sequential(nn.Flatten(), dense, nn.BatchNorm1d(2048, eps=1e-3, momentum=0.01),
                                nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.head = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


@register_model("cnn3d_dlae", task="classification", dims=3, default_input=(1, 7, 13, 13),
                paper="DLAE manual section 12 (prostate seed classifier / localizer)")
def cnn3d_dlae(in_channels: int = 1, out_channels: int = 2, input_size: Sequence[int] = (7, 13, 13),
               dropout: float = 0.5) -> nn.Module:
    """DLAE 3D CNN: 3 x (Conv3D+BN+ReLU) with 2 poolings, Dense 2048+BN+ReLU+Dropout, Dense out."""
    return DlaeCnn3d(in_channels, out_channels, input_size, dropout)


class _HeadAlias(nn.Module):
    """Wraps a MONAI classifier so its last Linear is reachable as ``.head`` (fine-tuning replaces it)."""

    def __init__(self, net: nn.Module, head_attr: str) -> None:
        super().__init__()
        self.net = net
        self._head_attr = head_attr

    @property
    def head(self) -> nn.Module:
        obj = self.net
        for part in self._head_attr.split("."):
            obj = getattr(obj, part)
        return obj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("resnet3d_small", task="classification", dims=3, default_input=(1, 32, 64, 64),
                paper="Hara et al. 2018 3D ResNet (MONAI ResNet, 1 basic block per stage)")
def resnet3d_small(in_channels: int = 1, out_channels: int = 5, widths: Sequence[int] = (16, 32, 64, 128),
                   layers: Sequence[int] = (1, 1, 1, 1)) -> nn.Module:
    """Small 3D ResNet classifier from MONAI (ResNet-10 layout, reduced widths) as a standard baseline."""
    from monai.networks.nets import ResNet

    net = ResNet("basic", list(layers), list(widths), spatial_dims=3, n_input_channels=in_channels,
                 num_classes=out_channels)
    return _HeadAlias(net, "fc")


@register_model("densenet3d_small", task="classification", dims=3, default_input=(1, 32, 64, 64),
                paper="Huang et al. 2017 DenseNet (MONAI DenseNet, 3 short dense blocks)")
def densenet3d_small(in_channels: int = 1, out_channels: int = 5, init_features: int = 16, growth_rate: int = 8,
                     block_config: Sequence[int] = (2, 2, 2)) -> nn.Module:
    """Small 3D DenseNet classifier from MONAI as a standard baseline."""
    from monai.networks.nets import DenseNet

    net = DenseNet(3, in_channels, out_channels, init_features=init_features, growth_rate=growth_rate,
                   block_config=tuple(block_config))
    return _HeadAlias(net, "class_layers.out")
