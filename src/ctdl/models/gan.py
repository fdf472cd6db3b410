"""GAN networks for image-to-image translation (pix2pix, CycleGAN), 2D and 3D.

* ``unet_generator{2,3}d``: the pix2pix U-Net (Isola et al. 2017): stride-2 conv encoder with LeakyReLU(0.2),
  transposed-conv decoder with ReLU, skip concatenations, dropout in the innermost decoder blocks, tanh output.
* ``resnet_generator{2,3}d``: the CycleGAN ResNet generator (Zhu et al. 2017): 7x7 stem, two stride-2 downsamplings,
  ``n_blocks`` residual blocks, two upsamplings, 7x7 head, tanh output.
* ``patchgan{2,3}d``: the 70x70 PatchGAN discriminator (3 stride-2 4x4 convs + 2 stride-1, 2D receptive field 70):
  one real/fake logit per patch (no sigmoid: the adversarial loss decides, see :mod:`ctdl.losses.adversarial`).
* ``residual=True`` (either generator): output = clamp(input + network, -1, 1) instead of tanh(network).
* ``pix2pix`` / ``cyclegan``: DLAE's prebuilt names, the 2D generators above with the papers' defaults.

Written here (MONAI has no PatchGAN, and its UNet lacks the pix2pix layout); instance norm is the default
because batches are small (1-4) on CT, where batch-norm statistics are noisy.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ctdl.models.registry import register_model

Norm = Literal["instance", "batch", "none"]


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _tconv(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d


def _norm(dims: int, norm: Norm, ch: int) -> nn.Module:
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(ch)
    if norm == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(ch, affine=True)
    raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {norm!r}")


def _check_dims(dims: int) -> None:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")


def _check_residual(residual: bool, in_channels: int, out_channels: int) -> bool:
    if residual and in_channels != out_channels:
        raise ValueError(f"residual=True adds the input to the output: needs in_channels == out_channels, got {in_channels}, {out_channels}")
    return bool(residual)


def _residual_out(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Input plus a learned correction, clamped to the [-1, 1] range of the targets.

    For translations where the output is close to the input (denoising, contrast change) the network only has to
    learn the difference, and full-resolution detail passes through unchanged (the pix2pix U-Net has no
    full-resolution skip: its last layer upsamples from half resolution).
    """
    return torch.clamp(x + delta, -1.0, 1.0)


class UNetGenerator(nn.Module):
    """pix2pix U-Net generator; input sides must be divisible by ``2 ** depth``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, dims: int = 2, base: int = 64, depth: int = 8,
                 max_channels: int = 512, norm: Norm = "instance", dropout: float = 0.5, n_dropout: int = 3,
                 residual: bool = False) -> None:
        super().__init__()
        _check_dims(dims)
        self.residual = _check_residual(residual, in_channels, out_channels)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.divisible_by = 2 ** depth
        conv, tconv = _conv(dims), _tconv(dims)
        chans = [min(base * 2 ** i, max_channels) for i in range(depth)]
        self.down = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(chans):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.LeakyReLU(0.2))
            layers.append(conv(prev, ch, 4, 2, 1, bias=(i == 0 or i == depth - 1 or norm != "batch")))
            if 0 < i < depth - 1:
                layers.append(_norm(dims, norm, ch))
            self.down.append(nn.Sequential(*layers))
            prev = ch
        self.up = nn.ModuleList()
        for j in range(depth - 1, 0, -1):  # decoder block producing the resolution of encoder level j-1
            in_ch = chans[j] if j == depth - 1 else chans[j] * 2
            layers = [nn.ReLU(), tconv(in_ch, chans[j - 1], 4, 2, 1), _norm(dims, norm, chans[j - 1])]
            if dropout > 0 and (depth - 1 - j) < n_dropout and j > 1:
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        last_in = chans[0] * 2 if depth > 1 else chans[0]
        self.head = nn.Sequential(nn.ReLU(), tconv(last_in, out_channels, 4, 2, 1), nn.Identity() if residual else nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        for block in self.up:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return _residual_out(inp, self.head(x)) if self.residual else self.head(x)


class _ResBlock(nn.Module):
    def __init__(self, dims: int, ch: int, norm: Norm, dropout: float) -> None:
        super().__init__()
        pad = nn.ReflectionPad2d if dims == 2 else nn.ReplicationPad3d  # no 3D reflection pad for all shapes
        conv = _conv(dims)
        layers: list[nn.Module] = [pad(1), conv(ch, ch, 3), _norm(dims, norm, ch), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [pad(1), conv(ch, ch, 3), _norm(dims, norm, ch)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """CycleGAN ResNet generator; input sides must be divisible by ``2 ** n_down``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, dims: int = 2, base: int = 64, n_blocks: int = 9,
                 n_down: int = 2, norm: Norm = "instance", dropout: float = 0.0, residual: bool = False) -> None:
        super().__init__()
        _check_dims(dims)
        self.residual = _check_residual(residual, in_channels, out_channels)
        self.divisible_by = 2 ** n_down
        conv, tconv = _conv(dims), _tconv(dims)
        pad = nn.ReflectionPad2d if dims == 2 else nn.ReplicationPad3d
        layers: list[nn.Module] = [pad(3), conv(in_channels, base, 7), _norm(dims, norm, base), nn.ReLU()]
        ch = base
        for _ in range(n_down):
            layers += [conv(ch, ch * 2, 3, 2, 1), _norm(dims, norm, ch * 2), nn.ReLU()]
            ch *= 2
        layers += [_ResBlock(dims, ch, norm, dropout) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [tconv(ch, ch // 2, 3, 2, 1, output_padding=1), _norm(dims, norm, ch // 2), nn.ReLU()]
            ch //= 2
        layers += [pad(3), conv(ch, out_channels, 7), nn.Identity() if residual else nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _residual_out(x, self.net(x)) if self.residual else self.net(x)


class PatchGANDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 4x4 convs then two stride-1 ones; one logit per receptive-field patch.

    With ``n_layers=3`` (default) each output sees a 70x70 (2D) / 70^3 (3D) input patch.
    """

    def __init__(self, in_channels: int = 2, dims: int = 2, base: int = 64, n_layers: int = 3,
                 norm: Norm = "instance", max_channels: int = 512) -> None:
        super().__init__()
        _check_dims(dims)
        conv = _conv(dims)
        layers: list[nn.Module] = [conv(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = base
        for i in range(1, n_layers + 1):
            out = min(base * 2 ** i, max_channels)
            stride = 2 if i < n_layers else 1
            layers += [conv(ch, out, 4, stride, 1, bias=norm != "batch"), _norm(dims, norm, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(conv(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        self.receptive_field = patchgan_receptive_field(n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def patchgan_receptive_field(n_layers: int = 3) -> int:
    """Receptive field (pixels per side) of a PatchGAN output: 70 for ``n_layers=3``, as the paper's name says."""
    rf = 1
    # walk back from the output (two stride-1 4x4 convs, then n_layers stride-2 ones): rf_in = (rf_out - 1) * s + k
    for k, s in [(4, 1), (4, 1)] + [(4, 2)] * n_layers:
        rf = (rf - 1) * s + k
    return rf


# -- registered factories ------------------------------------------------------------------------------------
@register_model("unet_generator2d", task="gan", dims=2, default_input=(1, 64, 64), role="generator", divisible_by=64)
def unet_generator2d(in_channels: int = 1, out_channels: int = 1, base: int = 64, depth: int = 6, **kw: object) -> nn.Module:
    """pix2pix U-Net generator, 2D (depth 6: input sides divisible by 64)."""
    return UNetGenerator(in_channels, out_channels, 2, base, depth, **kw)  # type: ignore[arg-type]


@register_model("unet_generator3d", task="gan", dims=3, default_input=(1, 32, 32, 32), role="generator", divisible_by=16)
def unet_generator3d(in_channels: int = 1, out_channels: int = 1, base: int = 16, depth: int = 4, **kw: object) -> nn.Module:
    """pix2pix U-Net generator, 3D (depth 4: input sides divisible by 16)."""
    return UNetGenerator(in_channels, out_channels, 3, base, depth, max_channels=256, **kw)  # type: ignore[arg-type]


@register_model("resnet_generator2d", task="gan", dims=2, default_input=(1, 64, 64), role="generator", divisible_by=4)
def resnet_generator2d(in_channels: int = 1, out_channels: int = 1, base: int = 64, n_blocks: int = 9, **kw: object) -> nn.Module:
    """CycleGAN ResNet generator, 2D (9 residual blocks, inputs divisible by 4)."""
    return ResNetGenerator(in_channels, out_channels, 2, base, n_blocks, **kw)  # type: ignore[arg-type]


@register_model("resnet_generator3d", task="gan", dims=3, default_input=(1, 16, 32, 32), role="generator", divisible_by=4)
def resnet_generator3d(in_channels: int = 1, out_channels: int = 1, base: int = 16, n_blocks: int = 6, **kw: object) -> nn.Module:
    """CycleGAN ResNet generator, 3D (6 residual blocks, inputs divisible by 4)."""
    return ResNetGenerator(in_channels, out_channels, 3, base, n_blocks, **kw)  # type: ignore[arg-type]


@register_model("patchgan2d", task="gan", dims=2, default_input=(2, 64, 64), role="discriminator")
def patchgan2d(in_channels: int = 2, base: int = 64, n_layers: int = 3, **kw: object) -> nn.Module:
    """70x70 PatchGAN discriminator, 2D (pix2pix: in_channels = source + target channels)."""
    return PatchGANDiscriminator(in_channels, 2, base, n_layers, **kw)  # type: ignore[arg-type]


@register_model("patchgan3d", task="gan", dims=3, default_input=(2, 32, 32, 32), role="discriminator")
def patchgan3d(in_channels: int = 2, base: int = 16, n_layers: int = 3, **kw: object) -> nn.Module:
    """PatchGAN discriminator, 3D (70^3 receptive field with n_layers=3)."""
    return PatchGANDiscriminator(in_channels, 3, base, n_layers, max_channels=256, **kw)  # type: ignore[arg-type]


@register_model("pix2pix", task="gan", dims=2, default_input=(1, 256, 256), role="generator", divisible_by=256, dlae=True)
def pix2pix(in_channels: int = 1, out_channels: int = 1, **kw: object) -> nn.Module:
    """DLAE prebuilt pix2pix generator: the paper's 8-level U-Net (256x256 inputs); pair it with patchgan2d."""
    kw.setdefault("depth", 8)
    return UNetGenerator(in_channels, out_channels, 2, **kw)  # type: ignore[arg-type]


@register_model("cyclegan", task="gan", dims=2, default_input=(1, 64, 64), role="generator", divisible_by=4, dlae=True)
def cyclegan(in_channels: int = 1, out_channels: int = 1, **kw: object) -> nn.Module:
    """DLAE prebuilt CycleGAN generator: the paper's 9-block ResNet generator; pair it with patchgan2d(in_channels=1)."""
    return ResNetGenerator(in_channels, out_channels, 2, **kw)  # type: ignore[arg-type]


__all__ = ["PatchGANDiscriminator", "ResNetGenerator", "UNetGenerator", "patchgan_receptive_field"]
