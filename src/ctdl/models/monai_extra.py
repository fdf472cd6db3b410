"""More MONAI networks through the registry: ``dynunet`` (nnU-Net style), ``unetr``, ``swinunetr``.

Every wrapper returns logits of the input's spatial size for any input size:

* ``dynunet``: kernels and strides are planned from a patch size (default: the registered
  default input) with nnU-Net's rule (:func:`nnunet_plan`); the input is zero-padded to a
  multiple of the product of the strides and the logits are cropped back.
* ``unetr``: the ViT has a fixed token grid (``img_size``); an input of any other size is run
  with MONAI's sliding-window inference over ``img_size`` windows (one zero-padded window if
  the input is smaller), which is differentiable, so it also trains.
* ``swinunetr``: needs sizes divisible by 2**5 = 32; the input is zero-padded to a multiple
  of 32 (and a 32^3 input to 32 x 32 x 64, so the 1/32 bottleneck has more than one voxel for
  instance norm) and the logits are cropped back.

``unetr`` and ``swinunetr`` need the ``einops`` package (MONAI's optional dependency).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn

from ctdl.models.registry import register_model
from ctdl.models.unet import crop_to, pad_to_multiple


class PadCrop(nn.Module):
    """Zero-pad the input to a multiple of ``multiple`` per spatial axis, run ``net``, crop the logits back."""

    def __init__(self, net: nn.Module, multiple: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.multiple = tuple(int(m) for m in multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        return crop_to(self.net(pad_to_multiple(x, self.multiple)), shape)


class SwinPadCrop(PadCrop):
    """:class:`PadCrop` to a multiple of 32 that also keeps the 1/32 bottleneck grid above one voxel.

    MONAI's SwinUNETR accepts 32^3 (its ``_check_input_size``), but its bottleneck is then a single
    voxel, which instance norm cannot train on; such inputs get their last axis padded to 64.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        x = pad_to_multiple(x, self.multiple)
        if math.prod(s // m for s, m in zip(x.shape[2:], self.multiple)) == 1:
            x = nn.functional.pad(x, (0, x.shape[-1]))
        return crop_to(self.net(x), shape)


class SlidingWindow(nn.Module):
    """Run a fixed-size network on ``roi_size`` inputs directly, on any other size by sliding windows."""

    def __init__(self, net: nn.Module, roi_size: Sequence[int], overlap: float = 0.25, mode: str = "constant") -> None:
        super().__init__()
        self.net = net
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = overlap
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) == self.roi_size:
            return self.net(x)
        from monai.inferers import sliding_window_inference

        out = sliding_window_inference(
            x, self.roi_size, sw_batch_size=1, predictor=self.net, overlap=self.overlap, mode=self.mode, padding_mode="constant"
        )
        return torch.as_tensor(out)  # drop MetaTensor wrapping if any


def nnunet_plan(
    patch_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    min_feature_size: int = 4,
    max_pools: int = 5,
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's (v1 ``get_pool_and_conv_props``) kernel/stride plan for a patch size and voxel spacing.

    Each stage pools (stride 2) the axes whose spacing is < 2x the finest current spacing and
    whose size is still >= 2 * ``min_feature_size``; its conv kernel is 3 on the axes whose
    spacing is within a factor 2 of each other (the largest such group), 1 elsewhere; the
    bottleneck kernel is 3 everywhere. At most ``max_pools`` stages pool. Returns
    ``(kernels, strides)`` in DynUNet's format: ``strides[0]`` is all ones.
    """
    dims = len(patch_size)
    sp = [1.0] * dims if spacing is None else [float(s) for s in spacing]
    size = [float(s) for s in patch_size]
    if len(sp) != dims:
        raise ValueError("spacing and patch_size need the same length")
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * dims]
    while len(strides) - 1 < max_pools:
        min_sp = min(sp)
        group: list[int] = []
        for a in range(dims):
            partners = [i for i in range(dims) if sp[i] / sp[a] < 2 and sp[a] / sp[i] < 2]
            if len(partners) > len(group):
                group = partners
        pool_axes = [i for i in range(dims) if sp[i] / min_sp < 2 and size[i] >= 2 * min_feature_size]
        if not pool_axes:
            break
        kernels.append([3 if i in group else 1 for i in range(dims)])
        strides.append([2 if i in pool_axes else 1 for i in range(dims)])
        for i in pool_axes:
            sp[i] *= 2
            size[i] = math.ceil(size[i] / 2)
    kernels.append([3] * dims)
    return kernels, strides


@register_model("dynunet", dims=3, default_input=(1, 64, 128, 128), paper="Isensee et al. 2021, nnU-Net (MONAI DynUNet)")
def dynunet(
    in_channels: int = 1,
    out_channels: int = 3,
    spatial_dims: int = 3,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    filters: Sequence[int] | None = None,
    norm_name: str = "instance",
    res_block: bool = False,
    max_pools: int = 5,
    dropout: float | None = None,
) -> nn.Module:
    """nnU-Net-style DynUNet (MONAI): kernels/strides planned from the patch size and spacing."""
    from monai.networks.nets import DynUNet

    if patch_size is None:
        patch_size = (64, 128, 128) if spatial_dims == 3 else (256, 256)
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch_size {tuple(patch_size)} does not have {spatial_dims} dims")
    kernels, strides = nnunet_plan(patch_size, spacing, max_pools=max_pools)
    net = DynUNet(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=None if filters is None else list(filters),
        dropout=dropout,
        norm_name=norm_name,
        res_block=res_block,
        deep_supervision=False,
    )
    multiple = [math.prod(s[i] for s in strides) for i in range(spatial_dims)]
    wrapped = PadCrop(net, multiple)
    wrapped.kernels, wrapped.strides = kernels, strides  # type: ignore[assignment]
    return wrapped


@register_model("unetr", dims=3, default_input=(1, 64, 64, 64), paper="Hatamizadeh et al. 2022, UNETR")
def unetr(
    in_channels: int = 1,
    out_channels: int = 3,
    img_size: int | Sequence[int] = (64, 64, 64),
    feature_size: int = 16,
    hidden_size: int = 384,
    mlp_dim: int = 1536,
    num_heads: int = 6,
    norm_name: str = "instance",
    dropout_rate: float = 0.0,
    overlap: float = 0.25,
) -> nn.Module:
    """UNETR (MONAI): ViT-S-sized encoder (hidden 384, 6 heads, MLP 1536), 16^3 patches, img_size 64^3.

    ``img_size`` fixes the token grid (each axis a multiple of 16; 16 is the smallest). The
    paper's ViT-B (hidden 768, 12 heads, MLP 3072) is ``hidden_size=768, mlp_dim=3072,
    num_heads=12``; the default is the ViT-S size (about a quarter of the parameters) to fit
    CPU work. Inputs of another size go through sliding-window inference (see the module doc).
    """
    from monai.networks.nets import UNETR

    size = (img_size,) * 3 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if any(s % 16 for s in size):
        raise ValueError(f"img_size {size} must be divisible by the 16^3 patch size")
    net = UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=size,
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        norm_name=norm_name,
        dropout_rate=dropout_rate,
    )
    return SlidingWindow(net, size, overlap=overlap)


@register_model("swinunetr", dims=3, default_input=(1, 64, 64, 64), paper="Hatamizadeh et al. 2022, Swin UNETR")
def swinunetr(
    in_channels: int = 1,
    out_channels: int = 3,
    feature_size: int = 24,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    norm_name: str = "instance",
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    dropout_path_rate: float = 0.0,
    use_v2: bool = False,
    use_checkpoint: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Swin UNETR (MONAI 1.6, no img_size argument): feature_size 24, any input size (padded to x32).

    MONAI 1.6 dropped the ``img_size`` argument; the network takes any size divisible by 32.
    ``feature_size`` must be divisible by 12 (24 here; the paper's 48 has ~4x the parameters).
    """
    from monai.networks.nets import SwinUNETR

    if feature_size % 12:
        raise ValueError(f"feature_size must be divisible by 12, got {feature_size}")
    net = SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
        norm_name=norm_name,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        dropout_path_rate=dropout_path_rate,
        use_v2=use_v2,
        use_checkpoint=use_checkpoint,
        spatial_dims=3,
        **kwargs,
    )
    return SwinPadCrop(net, (32, 32, 32))
