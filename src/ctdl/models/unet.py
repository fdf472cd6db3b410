"""Classic U-Nets: ``unet3d`` (Cicek et al. 2016) and ``unet2d`` (Ronneberger et al. 2015).

Both use "same" padding (the papers use valid convolutions and predict a smaller centre
crop); inputs of any size are padded internally to a multiple of ``2 ** depth`` and the
logits are cropped back to the input's spatial size.

Also holds two small helpers shared by the other model files: :func:`pad_to_multiple` and
:func:`crop_to`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.models.registry import register_model

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int], mode: str = "constant") -> torch.Tensor:
    """Pad the spatial dims of ``x`` (N, C, *spatial) at the high end up to a multiple of ``multiple``.

    ``multiple`` is one int for all axes or one per spatial axis. Returns ``x`` unchanged when
    no padding is needed. ``mode`` is passed to :func:`torch.nn.functional.pad`.
    """
    spatial = x.shape[2:]
    mult = [int(multiple)] * len(spatial) if isinstance(multiple, int) else [int(m) for m in multiple]
    if len(mult) != len(spatial):
        raise ValueError(f"multiple {tuple(mult)} does not match {len(spatial)} spatial dims")
    extra = [(-s) % m for s, m in zip(spatial, mult)]
    if not any(extra):
        return x
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pad += [0, e]
    return F.pad(x, pad, mode=mode)


def crop_to(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Crop the spatial dims of ``x`` to ``spatial`` from the low corner (inverse of :func:`pad_to_multiple`)."""
    spatial = tuple(int(s) for s in spatial)
    if tuple(x.shape[2:]) == spatial:
        return x
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


class DoubleConv(nn.Module):
    """Two (conv 3 -> [BN] -> ReLU) layers."""

    def __init__(self, dims: int, c_in: int, c_mid: int, c_out: int, batch_norm: bool = True) -> None:
        super().__init__()
        conv, bn = _CONV[dims], _BN[dims]
        layers: list[nn.Module] = []
        for a, b in ((c_in, c_mid), (c_mid, c_out)):
            layers.append(conv(a, b, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(bn(b))
            layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet(nn.Module):
    """Generic U-Net with two channel schemes.

    * ``scheme="cicek"`` (3D U-Net): level ``i`` has convs ``(c_i -> c_i) -> 2 c_i`` -- the
      channel count doubles *before* pooling (32-64, 64-128, 128-256, 256-512 for base 32);
      the up-convolution keeps the channel count (512 -> 512) and the two synthesis convs
      bring ``skip + up`` channels down to the skip's channel count.
    * ``scheme="ronneberger"`` (2D U-Net): level ``i`` has two convs to ``base * 2**i``
      (64, 128, 256, 512, 1024); the up-convolution halves the channels.

    ``depth`` is the number of poolings (max-pool 2, stride 2). Output: logits of the input's
    spatial size (the input is padded to a multiple of ``2 ** depth`` and cropped back).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        depth: int,
        scheme: str = "cicek",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if scheme not in ("cicek", "ronneberger"):
            raise ValueError(f"scheme must be 'cicek' or 'ronneberger', got {scheme!r}")
        self.dims, self.depth, self.scheme = dims, depth, scheme
        conv, upconv, pool = _CONV[dims], _UPCONV[dims], _POOL[dims]
        b = base_channels

        self.encoders = nn.ModuleList()
        skip_ch: list[int] = []
        c_prev = in_channels
        for i in range(depth + 1):  # levels 0..depth-1 feed skips, level `depth` is the bottom
            if scheme == "cicek":
                c_mid, c_out = b * 2**i, b * 2 ** (i + 1)
            else:
                c_mid = c_out = b * 2**i
            self.encoders.append(DoubleConv(dims, c_prev, c_mid, c_out, batch_norm))
            skip_ch.append(c_out)
            c_prev = c_out
        self.pools = nn.ModuleList(pool(2, 2) for _ in range(depth))

        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            c_up = c_prev if scheme == "cicek" else c_prev // 2
            self.upconvs.append(upconv(c_prev, c_up, 2, stride=2))
            self.decoders.append(DoubleConv(dims, c_up + skip_ch[i], skip_ch[i], skip_ch[i], batch_norm))
            c_prev = skip_ch[i]
        self.head = conv(c_prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        x = pad_to_multiple(x, 2**self.depth)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.depth:
                skips.append(x)
                x = self.pools[i](x)
        for up, dec in zip(self.upconvs, self.decoders):
            x = up(x)
            x = dec(torch.cat([skips.pop(), x], dim=1))
        return crop_to(self.head(x), shape)


@register_model("unet3d", dims=3, default_input=(1, 64, 64, 64), paper="Cicek et al. 2016, 3D U-Net")
def unet3d(
    in_channels: int = 1,
    out_channels: int = 3,
    base_channels: int = 32,
    depth: int = 3,
    batch_norm: bool = True,
) -> nn.Module:
    """3D U-Net (Cicek 2016): 3 poolings, channels doubled before pooling (32-64 ... 256-512), BN."""
    return UNet(3, in_channels, out_channels, base_channels, depth, scheme="cicek", batch_norm=batch_norm)


@register_model("unet2d", dims=2, default_input=(1, 256, 256), paper="Ronneberger et al. 2015, U-Net")
def unet2d(
    in_channels: int = 1,
    out_channels: int = 3,
    base_channels: int = 64,
    depth: int = 4,
    batch_norm: bool = True,
) -> nn.Module:
    """Classic 2D U-Net (Ronneberger 2015): 4 poolings, 64-1024 channels, same padding, BN."""
    return UNet(2, in_channels, out_channels, base_channels, depth, scheme="ronneberger", batch_norm=batch_norm)
