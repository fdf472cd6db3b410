"""MONAI networks users expect by name, wrapped through the registry (logits out)."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from ctdl.models.registry import register_model


@register_model("unet3d_small", dims=3, divisible_by=8, default_input=(1, 32, 64, 64))
def unet3d_small(
    in_channels: int = 1,
    out_channels: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    """Small residual 3D U-Net (MONAI UNet) for CPU demos; input divisible by 8."""
    from monai.networks.nets import UNet

    return UNet(3, in_channels, out_channels, channels=tuple(channels), strides=tuple(strides),
                num_res_units=num_res_units, norm=norm, dropout=dropout)


@register_model("monai_unet", dims=3, divisible_by=16, default_input=(1, 64, 64, 64))
def monai_unet(
    in_channels: int = 1,
    out_channels: int = 3,
    spatial_dims: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI UNet (residual units, configurable depth), 2D or 3D."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims, in_channels, out_channels, channels=tuple(channels), strides=tuple(strides),
                num_res_units=num_res_units, norm=norm, dropout=dropout)


@register_model("basicunet", dims=3, divisible_by=16, default_input=(1, 32, 64, 64))
def basicunet(in_channels: int = 1, out_channels: int = 3, spatial_dims: int = 3,
              features: Sequence[int] = (32, 32, 64, 128, 256, 32)) -> nn.Module:
    """MONAI BasicUNet (the classic U-Net with four poolings), 2D or 3D."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=tuple(features))


@register_model("segresnet", dims=3, divisible_by=8, default_input=(1, 32, 64, 64))
def segresnet(in_channels: int = 1, out_channels: int = 3, spatial_dims: int = 3, init_filters: int = 8) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018), 2D or 3D."""
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, init_filters=init_filters)
