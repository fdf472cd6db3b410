"""The seven KiTS19 thesis models, rebuilt layer by layer in PyTorch (logits out).

Source: the thesis author's public Keras code (HypnoOcio/kits19, ``models/*.py``), as restated in
``shared/reference/thesis_models.md`` and ``thesis_training_and_more_models.md``. Every factory
reproduces the Keras parameter count exactly; counts are given in each docstring in two
conventions:

* **Keras total** = trainable weights + BatchNorm moving mean/variance
  (:func:`ctdl.models.registry.count_parameters_keras`);
* **trainable** = PyTorch ``count_parameters`` (no BN running statistics).

Faithfulness conventions used throughout:

* conv -> activation -> BN order where the code does it (Unet2D/3D, PSPNet_s encoder);
* Keras BN defaults (momentum 0.99, eps 1e-3) unless the code sets them; PyTorch momentum is
  ``1 - keras_momentum``;
* TensorFlow ``'same'`` padding everywhere: when the total padding is odd (even kernels such as
  2x2, or stride 2 on an even size) the extra pixel goes to the bottom/right (:class:`TFSameConv`,
  :class:`TFSameMaxPool2d`); symmetric cases use PyTorch's native padding (identical result);
* Keras initialisers: glorot-uniform kernels (``xavier_uniform_``, same bounds for depthwise and
  transposed convs) and zero biases, or he-normal (truncated normal, std sqrt(2/fan_in), Keras 2.2)
  where the code asks for it;
* the thesis' final softmax is *not* applied (the loss applies it).

Importing this module registers the models; :mod:`ctdl.models` must import it for
``create_model`` to see them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.models.registry import register_model

__all__ = [
    "TFSameConv",
    "TFSameMaxPool2d",
    "KerasBatchNorm2d",
    "KerasBatchNorm3d",
    "tf1_resize_bilinear",
    "UNet2DThesis",
    "UNet3DThesis",
    "PSPNetSmallThesis",
    "PSPNetBig",
    "DenseUNetSmall",
    "DenseUNetBig",
    "DeepLabV3PlusMobileNetV2",
]


# --------------------------------------------------------------------------- helpers
def _tf_same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one axis: the extra pixel goes after."""
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _pad_list(x: torch.Tensor, k: Sequence[int], s: Sequence[int], d: Sequence[int]) -> list[int]:
    pads: list[int] = []
    n = len(k)
    for i in reversed(range(n)):  # F.pad starts from the last axis
        pads.extend(_tf_same_pads(x.shape[-n + i], k[i], s[i], d[i]))
    return pads


class TFSameConv(nn.Module):
    """Marker base: convs whose forward applies TensorFlow 'same' padding (see subclasses)."""


class TFSameConv2d(nn.Conv2d, TFSameConv):
    """``nn.Conv2d`` with TensorFlow 'same' padding computed per input (bottom/right extra pixel)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, _pad_list(x, self.kernel_size, self.stride, self.dilation)))


class TFSameMaxPool2d(nn.Module):
    """Keras ``MaxPooling2D(padding='same')``: pads with -inf, extra pixel at the bottom/right."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.k, self.s = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pad_list(x, (self.k, self.k), (self.s, self.s), (1, 1))
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), self.k, self.s)


def _conv(dims: int, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
          bias: bool = True, groups: int = 1) -> nn.Module:
    """Conv with TF 'same' padding; native symmetric padding when that is exactly equivalent."""
    eff = (k - 1) * dilation
    if stride == 1 and eff % 2 == 0:
        cls = nn.Conv2d if dims == 2 else nn.Conv3d
        return cls(cin, cout, k, stride=1, padding=eff // 2, dilation=dilation, bias=bias, groups=groups)
    if dims != 2:
        raise NotImplementedError("asymmetric TF 'same' padding is only needed in 2D here")
    return TFSameConv2d(cin, cout, k, stride=stride, dilation=dilation, bias=bias, groups=groups)


class _KerasBNMixin:
    """Keras-like training step when a batch holds ONE value per channel (batch 1 on a 1x1 map, as in
    PSPNet's 1x1 pyramid bin or DeepLab's image pooling): Keras uses mean = x, var = 0, so the output
    is beta; PyTorch would raise. Running stats move towards (x, 0). Otherwise plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.numel() == x.shape[1]):
            return super().forward(x)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(x.detach().reshape(-1), alpha=m)
                self.running_var.mul_(1 - m)
                self.num_batches_tracked.add_(1)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - x) / math.sqrt(self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class KerasBatchNorm2d(_KerasBNMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also trains on one value per channel, as Keras does."""


class KerasBatchNorm3d(_KerasBNMixin, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` that also trains on one value per channel, as Keras does."""


def _bn(dims: int, c: int, keras_momentum: float = 0.99, eps: float = 1e-3) -> nn.Module:
    """BatchNorm with Keras semantics (PyTorch momentum = 1 - Keras momentum)."""
    cls = KerasBatchNorm2d if dims == 2 else KerasBatchNorm3d
    return cls(c, eps=eps, momentum=1.0 - keras_momentum)


@torch.no_grad()
def _trunc_normal_(w: torch.Tensor, std: float) -> torch.Tensor:
    """Normal(0, std) truncated at 2 std by redrawing outliers (as TensorFlow does; fast)."""
    flat = w.view(-1)
    flat.normal_(0.0, std)
    idx = (flat.abs() > 2 * std).nonzero().squeeze(1)
    while idx.numel():
        vals = torch.randn(idx.numel(), dtype=w.dtype, device=w.device) * std
        flat[idx] = vals
        idx = idx[vals.abs() > 2 * std]
    return w


_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _keras_init(module: nn.Module, kind: str = "glorot_uniform") -> None:
    """Keras initialisers on every conv under ``module``; biases zero."""
    for m in module.modules():
        if isinstance(m, _CONVS):
            if kind == "he_normal":  # Keras 2.2 VarianceScaling(2, fan_in, 'normal') = truncated normal
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                std = math.sqrt(2.0 / fan_in)
                _trunc_normal_(m.weight, std)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def tf1_resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """TF1 ``tf.image.resize_bilinear(align_corners=False)`` (no half-pixel offset), exactly.

    Source coordinate = output index * in/out, clamped at the last row/column. This is what
    Keras ``K.resize_images(..., interpolation='bilinear')`` did in TF1; it differs from PyTorch's
    ``align_corners=False`` (half-pixel centres).
    """
    out = x
    for axis, n_out in zip((-2, -1), size):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        src = torch.arange(n_out, device=x.device, dtype=torch.float64) * (n_in / n_out)
        i0 = src.floor().long().clamp_(max=n_in - 1)
        i1 = (i0 + 1).clamp_(max=n_in - 1)
        w = (src - i0.to(torch.float64)).to(x.dtype)
        shape = [1] * out.dim()
        shape[axis] = n_out
        w = w.view(shape)
        a, b = out.index_select(axis, i0), out.index_select(axis, i1)
        out = a + (b - a) * w
    return out


# --------------------------------------------------------------------------- Unet2D
class _ConvReluBN(nn.Sequential):
    """Keras ``Conv(..., activation='relu', padding='same')`` then ``BatchNormalization``."""

    def __init__(self, dims: int, cin: int, cout: int, k: int = 3) -> None:
        super().__init__(_conv(dims, cin, cout, k), nn.ReLU(inplace=True), _bn(dims, cout))


class UNet2DThesis(nn.Module):
    """Thesis Unet2D (``models/model.py: Unet2D_small``): two poolings, 64/128/256 filters."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_filters: int = 64,
                 pre_head_filters: int = 10) -> None:
        super().__init__()
        f1, f2, f3 = base_filters, 2 * base_filters, 4 * base_filters
        self.enc0 = nn.Sequential(_ConvReluBN(2, in_channels, f1), _ConvReluBN(2, f1, f1))
        self.enc1 = nn.Sequential(_ConvReluBN(2, f1, f2), _ConvReluBN(2, f2, f2))
        self.bottom = nn.Sequential(_ConvReluBN(2, f2, f3), _ConvReluBN(2, f3, f3), _ConvReluBN(2, f3, f3))
        self.up1 = _ConvReluBN(2, f3, f2, k=2)
        self.dec1 = nn.Sequential(_ConvReluBN(2, 2 * f2, f2), _ConvReluBN(2, f2, f2))
        self.up0 = _ConvReluBN(2, f2, f1, k=2)
        self.dec0 = nn.Sequential(_ConvReluBN(2, 2 * f1, f1), _ConvReluBN(2, f1, f1),
                                  _ConvReluBN(2, f1, pre_head_filters))
        self.head = nn.Conv2d(pre_head_filters, out_channels, 1)
        _keras_init(self, "he_normal")
        _keras_init(self.head, "glorot_uniform")  # the output conv has no kernel_initializer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        b = self.bottom(F.max_pool2d(e1, 2))
        d1 = self.dec1(torch.cat([e1, self.up1(F.interpolate(b, scale_factor=2, mode="nearest"))], 1))
        d0 = self.dec0(torch.cat([e0, self.up0(F.interpolate(d1, scale_factor=2, mode="nearest"))], 1))
        return self.head(d0)


@register_model("unet2d_thesis", task="segmentation", dims=2, default_input=(3, 128, 128),
                keras_params=2_465_619, trainable_params=2_462_143)
def unet2d_thesis(in_channels: int = 3, out_channels: int = 3, base_filters: int = 64,
                  pre_head_filters: int = 10) -> nn.Module:
    """Thesis Unet2D (2 poolings, 64/128/256 filters, conv->ReLU->BN); input divisible by 4.

    Keras total 2,465,619, trainable 2,462,143 (thesis table 5.1), for 3 in / 3 out channels.
    The 2x2 up-convs use TF 'same' padding (extra pixel bottom/right); upsampling is nearest x2;
    convs are he-normal initialised, BN uses Keras defaults (momentum 0.99, eps 1e-3).
    """
    return UNet2DThesis(in_channels, out_channels, base_filters, pre_head_filters)


# --------------------------------------------------------------------------- Unet3D
class _Contracting3D(nn.Module):
    def __init__(self, cin: int, n: int) -> None:
        super().__init__()
        self.bn_in = _bn(3, cin)
        self.conv1 = nn.Sequential(_conv(3, cin, n), nn.ReLU(inplace=True), _bn(3, n))
        self.conv2 = nn.Sequential(_conv(3, n, n), nn.ReLU(inplace=True), _bn(3, n))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bn_in(x)
        skip = self.conv2(self.conv1(x))
        return F.max_pool3d(torch.cat([x, skip], 1), 2), skip


class _Middle3D(nn.Module):
    def __init__(self, cin: int, n: int) -> None:
        super().__init__()
        self.bn_in = _bn(3, cin)
        self.conv1 = nn.Sequential(_conv(3, cin, n), nn.ReLU(inplace=True), _bn(3, n))
        self.conv2 = nn.Sequential(_conv(3, n, n), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(x)
        return torch.cat([x, self.conv2(self.conv1(x))], 1)


class _Expanding3D(nn.Module):
    def __init__(self, cin: int, n: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, n, 2, stride=2)  # 'same' with k = s: exact doubling
        self.bn_up = _bn(3, 2 * n)
        self.conv1 = nn.Sequential(_conv(3, 2 * n, n), nn.ReLU(inplace=True), _bn(3, n))
        self.conv2 = nn.Sequential(_conv(3, n, n), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.bn_up(torch.cat([self.up(x), skip], 1))
        return torch.cat([up, self.conv2(self.conv1(up))], 1)


class UNet3DThesis(nn.Module):
    """Thesis Unet3D (``models/model.py: Unet3D``): 'dense-style' levels concatenating input and output."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_filters: int = 48, depth: int = 3) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            n = base_filters * 2**i
            self.down.append(_Contracting3D(c, n))
            c = c + n
        n = base_filters * 2**depth
        self.middle = _Middle3D(c, n)
        c = c + n
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            n = base_filters * 2**i
            self.up.append(_Expanding3D(c, n))
            c = 3 * n
        self.head = nn.Conv3d(c, out_channels, 1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in self.down:
            x, s = level(x)
            skips.append(s)
        x = self.middle(x)
        for level, s in zip(self.up, reversed(skips)):
            x = level(x, s)
        return self.head(x)


@register_model("unet3d_thesis", task="segmentation", dims=3, default_input=(3, 32, 128, 128),
                keras_params=15_296_451, trainable_params=15_291_243)
def unet3d_thesis(in_channels: int = 3, out_channels: int = 3, base_filters: int = 48, depth: int = 3) -> nn.Module:
    """Thesis Unet3D (base 48, depth 3, middle 384, level-wise input/output concatenation).

    Keras total 15,296,451, trainable 15,291,243 (thesis table 5.2). Each spatial size must be
    divisible by 2**depth (8). Glorot-uniform init, Keras-default BN (momentum 0.99, eps 1e-3).
    """
    return UNet3DThesis(in_channels, out_channels, base_filters, depth)


# --------------------------------------------------------------------------- PSPNet (shared)
class _PoolBranch(nn.Module):
    """Average pool (kernel = stride), 1x1 conv without bias, BN(0.95, 1e-5), ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = _bn(2, cout, 0.95, 1e-5)

    def forward(self, x: torch.Tensor, kernel: int, size: Sequence[int]) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(F.avg_pool2d(x, kernel, kernel))))
        return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=True)


def _psp_kernels(input_hw: Sequence[int], bins: Sequence[int]) -> list[int]:
    """The code's kernel = stride table: ceil(input / 8) // bin (128 -> 16, 8, 4, 2 for bins 1, 2, 4, 8).

    The same rule yields every entry the code defines for bins 1/2/4/8 (128, 320, 512 inputs).
    """
    base = -(-min(input_hw) // 8)
    return [max(1, base // b) for b in bins]


# --------------------------------------------------------------------------- PSPNet_s
class PSPNetSmallThesis(nn.Module):
    """Thesis PSPNet_s (``models/pspNet_small.py``): small conv encoder + pyramid pooling."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, pool_input: bool = True,
                 encoder_filters: Sequence[int] = (64, 128, 256), pyramid_channels: int = 256,
                 bins: Sequence[int] = (8, 4, 2, 1), dropout: float = 0.1) -> None:
        super().__init__()
        f1, f2, f3 = encoder_filters
        self.pool_input = pool_input
        self.bins = tuple(bins)
        self.encoder = nn.Sequential(
            _ConvReluBN(2, in_channels, f1, 3), nn.MaxPool2d(2),
            _ConvReluBN(2, f1, f2, 2),
            _ConvReluBN(2, f2, f3, 3), nn.MaxPool2d(2),
        )
        branch_in = in_channels if pool_input else f3
        self.branches = nn.ModuleList(_PoolBranch(branch_in, pyramid_channels) for _ in self.bins)
        self.fuse = nn.Sequential(
            _conv(2, f3 + len(self.bins) * pyramid_channels, pyramid_channels, 2, bias=False),
            _bn(2, pyramid_channels, 0.95, 1e-5), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.head = nn.Conv2d(pyramid_channels, out_channels, 1)
        _keras_init(self)
        _keras_init(self.encoder, "he_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[-2:]
        feat = self.encoder(x)
        src = x if self.pool_input else feat
        kernels = _psp_kernels(hw, self.bins)
        branches = [b(src, k, feat.shape[-2:]) for b, k in zip(self.branches, kernels)]
        y = self.head(self.fuse(torch.cat([feat, *branches], 1)))
        return F.interpolate(y, size=tuple(hw), mode="bilinear", align_corners=True)


@register_model("pspnet2d_small_thesis", task="segmentation", dims=2, default_input=(3, 128, 128),
                keras_params=1_651_331, trainable_params=1_647_875)
def pspnet2d_small_thesis(in_channels: int = 3, out_channels: int = 3, pool_input: bool = True,
                          pyramid_channels: int = 256, dropout: float = 0.1) -> nn.Module:
    """Thesis PSPNet_s; ``pool_input=True`` (default) keeps the code's quirk of pooling the INPUT.

    Counts (3 in / 3 out): ``pool_input=True`` Keras 1,651,331 / trainable 1,647,875 (the thesis'
    numbers); ``pool_input=False`` (standard PSPNet: the branches pool the 32x32x256 encoder output,
    so each branch's 1x1 conv is 256->256 instead of 3->256) Keras 1,910,403 / trainable 1,906,947.

    Encoder conv 3x3 -> pool -> conv 2x2 -> conv 3x3 -> pool (output stride 4, conv->ReLU->BN,
    Keras-default BN); four branches with average-pool kernel = stride = ceil(H/8) // bin for bins
    8, 4, 2, 1 (16/8/4/2 at 128 px, as in the code), concatenated in the code's order
    [encoder, k=2, k=4, k=8, k=16]; fuse conv 2x2 (TF 'same') 1280->256 without bias, BN (0.95,
    1e-5), ReLU, dropout 0.1; 1x1 head; align-corners bilinear resize. Input divisible by 4, at
    least 64 px with ``pool_input=False`` (the biggest kernel must fit the encoder map).
    """
    return PSPNetSmallThesis(in_channels, out_channels, pool_input=pool_input,
                             pyramid_channels=pyramid_channels, dropout=dropout)


# --------------------------------------------------------------------------- PSPNet_b
class _Bottleneck(nn.Module):
    """The code's ResNet block: ReLU on the input, Caffe-style stride on the 1x1 convs."""

    def __init__(self, cin: int, level: int, dilation: int, stride: int, project: bool) -> None:
        super().__init__()
        mid, out = 64 * level, 256 * level
        bn = lambda c: _bn(2, c, 0.95, 1e-5)  # noqa: E731
        self.residual = nn.Sequential(
            nn.Conv2d(cin, mid, 1, stride=stride, bias=False), bn(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False), bn(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out, 1, bias=False), bn(out),
        )
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride, bias=False), bn(out))
                         if project else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.residual(x) + self.shortcut(x)


class PSPNetBig(nn.Module):
    """Thesis PSPNet_b (``models/pspNet_big.py``): dilated ResNet-50, output stride 8, bins 1/2/4/8."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, resnet_layers: int = 50,
                 pyramid_channels: int = 512, bins: Sequence[int] = (8, 4, 2, 1), dropout: float = 0.1) -> None:
        super().__init__()
        bn = lambda c: _bn(2, c, 0.95, 1e-5)  # noqa: E731
        self.stem = nn.Sequential(
            _conv(2, in_channels, 64, 3, stride=2, bias=False), bn(64), nn.ReLU(inplace=True),
            _conv(2, 64, 64, 3, bias=False), bn(64), nn.ReLU(inplace=True),
            _conv(2, 64, 128, 3, bias=False), bn(128), nn.ReLU(inplace=True),
            TFSameMaxPool2d(3, 2),
        )
        n4 = {50: 6, 101: 23}[resnet_layers]
        blocks: list[nn.Module] = []
        cin = 128
        for level, n, dil, stride in ((1, 3, 1, 1), (2, 4, 1, 2), (4, n4, 2, 1), (8, 3, 4, 1)):
            for i in range(n):
                blocks.append(_Bottleneck(cin, level, dil, stride if i == 0 else 1, project=i == 0))
                cin = 256 * level
        blocks.append(nn.ReLU(inplace=True))
        self.encoder = nn.Sequential(*blocks)
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(_PoolBranch(cin, pyramid_channels) for _ in self.bins)
        self.fuse = nn.Sequential(
            nn.Conv2d(cin + len(self.bins) * pyramid_channels, pyramid_channels, 3, padding=1, bias=False),
            bn(pyramid_channels), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.head = nn.Conv2d(pyramid_channels, out_channels, 1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[-2:]
        feat = self.encoder(self.stem(x))
        kernels = _psp_kernels(hw, self.bins)
        branches = [b(feat, k, feat.shape[-2:]) for b, k in zip(self.branches, kernels)]
        y = self.head(self.fuse(torch.cat([feat, *branches], 1)))
        return F.interpolate(y, size=tuple(hw), mode="bilinear", align_corners=True)


@register_model("pspnet2d_big", task="segmentation", dims=2, default_input=(3, 128, 128),
                keras_params=46_765_763, trainable_params=46_707_139)
def pspnet2d_big(in_channels: int = 3, out_channels: int = 3, resnet_layers: int = 50,
                 pyramid_channels: int = 512, dropout: float = 0.1) -> nn.Module:
    """Thesis PSPNet_b: dilated ResNet-50 (output stride 8) + pyramid pooling; no auxiliary head.

    Keras total 46,765,763, trainable 46,707,139 (3 in / 3 out): equal to the thesis, so the
    construction below is the code's. Deep stem (3x3 s2 64, 64, 128; TF 'same' s2 conv and 3x3 s2
    max pool), bottleneck stages 3/4/6/3 with the stride on the 1x1 convs, stage 4 dilation 2 and
    stage 5 dilation 4, every block starting with a ReLU, final ReLU; all BN momentum 0.95 (Keras),
    eps 1e-5; pyramid on the encoder output with average-pool kernel = stride = 2/4/8/16 at 128 px
    (grids 8/4/2/1 on the 16x16 map, concatenated in the code's order [encoder, 8x8, 4x4, 2x2, 1x1];
    the rule ceil(H/8) // bin scales this to other sizes), 1x1 2048->512, BN, ReLU, align-corners
    bilinear back to the map size; fuse conv 3x3 4096->512 (the code comment says 1x1), BN, ReLU,
    dropout 0.1; 1x1 head with bias; align-corners bilinear to the input size. ``resnet_layers=101`` builds the ResNet-101 variant.
    Input divisible by 8 and at least 64 px.
    """
    return PSPNetBig(in_channels, out_channels, resnet_layers, pyramid_channels, dropout=dropout)


# --------------------------------------------------------------------------- DenseUnet_s
class _DenseLayerSmall(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_bn(2, cin), nn.ReLU(inplace=True), nn.Conv2d(cin, growth, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def _dense_block_small(cin: int, growth: int, n: int) -> tuple[nn.Sequential, int]:
    layers = [_DenseLayerSmall(cin + i * growth, growth) for i in range(n)]
    return nn.Sequential(*layers), cin + n * growth


def _bn_relu_conv1x1(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_bn(2, cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1))


class DenseUNetSmall(nn.Module):
    """Thesis DenseUnet_s (``models/denseUNet_small.py``), only the layers connected to the output."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, stem_filters: int = 16,
                 growth_rates: Sequence[int] = (4, 8, 16, 32, 64), layers_per_block: int = 4,
                 dropout: float = 0.05) -> None:
        super().__init__()
        g = list(growth_rates)
        n = layers_per_block
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_filters, 3, padding=1), _bn(2, stem_filters),
                                  nn.ReLU(inplace=True))
        self.down = nn.ModuleList()
        c = stem_filters
        skips = []
        for i, gi in enumerate(g):
            block, c = _dense_block_small(c, gi, n)
            self.down.append(block)
            if i < len(g) - 1:
                skips.append(c)
        self.drop = nn.Dropout2d(dropout)
        self.ups = nn.ModuleList()
        self.reductions = nn.ModuleList()
        self.dec = nn.ModuleList()
        for gi, cs in zip(reversed(g[:-1]), reversed(skips)):
            cu = int(c * 0.5)
            self.ups.append(_bn_relu_conv1x1(c, cu))
            cr = int((cu + cs) * 0.25)
            self.reductions.append(_bn_relu_conv1x1(cu + cs, cr))
            block, c = _dense_block_small(cr, gi, n)
            self.dec.append(block)
        # the last decoder block is the code's ``dense10`` (growth g[0] on the last reduction);
        # the code's ``dense9``/``reduction5`` never reach the output and are not built
        self.head = nn.Conv2d(c, out_channels, 1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.drop(F.max_pool2d(x, 2))
        x = self.drop(x)
        for up, red, block, s in zip(self.ups, self.reductions, self.dec, reversed(skips)):
            u = F.interpolate(up(x), scale_factor=2, mode="nearest")
            x = block(red(self.drop(torch.cat([u, s], 1))))
        return self.head(x)


@register_model("denseunet_small", task="segmentation", dims=2, default_input=(3, 128, 128),
                keras_params=1_636_627, trainable_params=1_624_659)
def denseunet_small(in_channels: int = 3, out_channels: int = 3, stem_filters: int = 16,
                    growth_rates: Sequence[int] = (4, 8, 16, 32, 64), dropout: float = 0.05) -> nn.Module:
    """Thesis DenseUnet_s (Tiramisu-like, 4-layer dense blocks, growth 4/8/16/32/64, 4 poolings).

    Keras total 1,636,627, trainable 1,624,659 (3 in / 3 out): the author's code. The thesis text
    repeats PSPNet_s' 1,651,331 by mistake. The code's unconnected ``dense9``/``reduction5`` branch
    is not built (registering it would give 1,640,555 / 1,628,347). Dense layer = BN, ReLU,
    conv 3x3 (bias); transition down = max pool + spatial dropout 0.05; transition up = BN, ReLU,
    1x1 to half, nearest x2; concat skip, spatial dropout, reduction (BN, ReLU, 1x1 to a quarter).
    Keras-default BN (momentum 0.99, eps 1e-3). Input divisible by 16.
    """
    return DenseUNetSmall(in_channels, out_channels, stem_filters, growth_rates, dropout=dropout)


# --------------------------------------------------------------------------- DenseUnet_b
_EPS_DENSENET = 1.1e-5


class _DenseLayerBig(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        inter = 4 * growth
        self.body = nn.Sequential(
            _bn(2, cin, eps=_EPS_DENSENET), nn.ReLU(inplace=True), nn.Conv2d(cin, inter, 1, bias=False),
            _bn(2, inter, eps=_EPS_DENSENET), nn.ReLU(inplace=True), nn.Conv2d(inter, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class _ConvBNReLU(nn.Sequential):
    """conv (bias) -> BN (Keras default) -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2), _bn(2, cout), nn.ReLU(inplace=True))


class DenseUNetBig(nn.Module):
    """Thesis DenseUnet_b (``models/denseUNet_big.py``): DenseNet encoder + additive-skip decoder."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, growth_rate: int = 48,
                 block_layers: Sequence[int] = (6, 12, 24, 16), init_filters: int = 64,
                 decoder_filters: Sequence[int] = (1024, 768, 384, 192, 96, 64), dropout: float = 0.3) -> None:
        super().__init__()
        if len(block_layers) != 4 or len(decoder_filters) != 6:
            raise ValueError("DenseUnet_b needs 4 dense blocks and 6 decoder widths")
        eps = _EPS_DENSENET
        self.stem = nn.Sequential(nn.Conv2d(in_channels, init_filters, 7, stride=2, padding=3, bias=False),
                                  _bn(2, init_filters, eps=eps), nn.ReLU(inplace=True))
        self.pool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2))
        c = init_filters
        box_ch = [c]
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, n in enumerate(block_layers):
            self.blocks.append(nn.Sequential(*[_DenseLayerBig(c + j * growth_rate, growth_rate) for j in range(n)]))
            c += n * growth_rate
            if i < len(block_layers) - 1:
                box_ch.append(c)
                self.transitions.append(nn.Sequential(_bn(2, c, eps=eps), nn.ReLU(inplace=True),
                                                      nn.Conv2d(c, c, 1, bias=False), nn.AvgPool2d(2)))
        self.final = nn.Sequential(_bn(2, c, eps=eps), nn.ReLU(inplace=True))
        f0, f1, f2, f3, f4, f5 = decoder_filters
        self.up0 = _ConvBNReLU(c, f0, 1)
        self.line0 = nn.Conv2d(box_ch[3], f0, 1)  # no BN / ReLU in the code
        self.conv_up0 = _ConvBNReLU(f0, f1, 3)
        self.box2 = _ConvBNReLU(box_ch[2], f1, 1)
        self.conv_up1 = _ConvBNReLU(f1, f2, 3)
        self.box1 = _ConvBNReLU(box_ch[1], f2, 1)
        self.conv_up2 = _ConvBNReLU(f2, f3, 3)
        self.box0 = _ConvBNReLU(box_ch[0], f3, 1)
        self.conv_up3 = _ConvBNReLU(f3, f4, 3)
        self.conv_up4 = nn.Sequential(nn.Conv2d(f4, f5, 3, padding=1), nn.Dropout(dropout), _bn(2, f5),
                                      nn.ReLU(inplace=True))
        self.head = nn.Conv2d(f5, out_channels, 1)
        _keras_init(self, "he_normal")

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box0 = self.stem(x)
        x = self.pool(box0)
        boxes = [box0]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                boxes.append(x)
                x = self.transitions[i](x)
        x = self.final(x)
        x = self.up0(self._up(x)) + self.line0(boxes[3])
        x = self._up(self.conv_up0(x)) + self.box2(boxes[2])
        x = self._up(self.conv_up1(x)) + self.box1(boxes[1])
        x = self._up(self.conv_up2(x)) + self.box0(boxes[0])
        x = self._up(self.conv_up3(x))
        return self.head(self.conv_up4(x))


@register_model("denseunet_big", task="segmentation", dims=2, default_input=(3, 128, 128),
                keras_params=43_024_099, trainable_params=42_815_427)
def denseunet_big(in_channels: int = 3, out_channels: int = 3, growth_rate: int = 48,
                  block_layers: Sequence[int] = (6, 12, 24, 16), init_filters: int = 64,
                  dropout: float = 0.3) -> nn.Module:
    """Thesis DenseUnet_b: DenseNet-121 layer counts with growth 48, no compression, additive skips.

    Keras total 43,024,099, trainable 42,815,427 (3 in / 3 out): the author's code. The thesis text
    repeats PSPNet_b's 46,765,763 by mistake. Encoder: 7x7 s2 conv, BN (eps 1.1e-5), ReLU, zero-pad
    + 3x3 s2 max pool; dense layers BN-ReLU-1x1(192)-BN-ReLU-3x3(48), bias-free; square transitions
    (BN, ReLU, 1x1 c->c, avg pool 2). Decoder: nearest x2 upsamplings, convs with bias, Keras-default
    BN; skips 2080->1024 (plain 1x1, no BN), 928->768, 352->384, 64->192 merged by addition; dropout
    0.3 before the last BN. He-normal init. Input divisible by 32.
    """
    return DenseUNetBig(in_channels, out_channels, growth_rate, block_layers, init_filters, dropout=dropout)


# --------------------------------------------------------------------------- Deeplabv3+
def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int, rate: int, skip: bool) -> None:
        super().__init__()
        bn = lambda c: _bn(2, c, 0.999, 1e-3)  # noqa: E731
        layers: list[nn.Module] = []
        mid = cin
        if expansion != 1:
            mid = expansion * cin
            layers += [nn.Conv2d(cin, mid, 1, bias=False), bn(mid), nn.ReLU6(inplace=True)]
        layers += [_conv(2, mid, mid, 3, stride=stride, dilation=rate, bias=False, groups=mid), bn(mid),
                   nn.ReLU6(inplace=True), nn.Conv2d(mid, cout, 1, bias=False), bn(cout)]
        self.body = nn.Sequential(*layers)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.skip else y


# (expansion, filters, stride, rate, skip) for blocks 0..16, as in the code (OS 8)
_MBV2_OS8 = (
    (1, 16, 1, 1, False),
    (6, 24, 2, 1, False), (6, 24, 1, 1, True),
    (6, 32, 2, 1, False), (6, 32, 1, 1, True), (6, 32, 1, 1, True),
    (6, 64, 1, 1, False), (6, 64, 1, 2, True), (6, 64, 1, 2, True), (6, 64, 1, 2, True),
    (6, 96, 1, 2, False), (6, 96, 1, 2, True), (6, 96, 1, 2, True),
    (6, 160, 1, 2, False), (6, 160, 1, 4, True), (6, 160, 1, 4, True),
    (6, 320, 1, 4, False),
)


class DeepLabV3PlusMobileNetV2(nn.Module):
    """Thesis 'Deeplabv3+' (``models/deeplabv3plus.py``, MobileNetV2 branch): dilated MobileNetV2 at
    output stride 8, ASPP reduced to image pooling + 1x1, no decoder."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, alpha: float = 1.0,
                 aspp_channels: int = 256, tf_resize: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.tf_resize = tf_resize
        c = _make_divisible(32 * alpha, 8)
        self.stem = nn.Sequential(_conv(2, in_channels, c, 3, stride=2, bias=False), _bn(2, c, 0.999, 1e-3),
                                  nn.ReLU6(inplace=True))
        blocks = []
        for t, f, s, r, skip in _MBV2_OS8:
            cout = _make_divisible(f * alpha, 8)
            blocks.append(_InvertedResidual(c, cout, t, s, r, skip))
            c = cout
        self.backbone = nn.Sequential(*blocks)
        bn = lambda n: _bn(2, n, 0.99, 1e-5)  # noqa: E731
        self.image_pooling = nn.Sequential(nn.Conv2d(c, aspp_channels, 1, bias=False), bn(aspp_channels),
                                           nn.ReLU(inplace=True))
        self.aspp0 = nn.Sequential(nn.Conv2d(c, aspp_channels, 1, bias=False), bn(aspp_channels),
                                   nn.ReLU(inplace=True))
        self.projection = nn.Sequential(nn.Conv2d(2 * aspp_channels, aspp_channels, 1, bias=False),
                                        bn(aspp_channels), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.logits = nn.Conv2d(aspp_channels, out_channels, 1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = tuple(x.shape[-2:])
        feat = self.backbone(self.stem(x))
        pooled = self.image_pooling(feat.mean(dim=(-2, -1), keepdim=True)).expand(-1, -1, *feat.shape[-2:])
        y = self.logits(self.projection(torch.cat([pooled, self.aspp0(feat)], 1)))
        if self.tf_resize:
            return tf1_resize_bilinear(y, hw)
        return F.interpolate(y, size=hw, mode="bilinear", align_corners=False)


@register_model("deeplabv3plus_mobilenetv2", task="segmentation", dims=2, default_input=(3, 128, 128),
                keras_params=2_142_019, trainable_params=2_108_931)
def deeplabv3plus_mobilenetv2(in_channels: int = 3, out_channels: int = 3, alpha: float = 1.0,
                              tf_resize: bool = True, dropout: float = 0.1) -> nn.Module:
    """Thesis 'Deeplabv3+': MobileNetV2 (OS 8, rates 2/4) + image pooling and 1x1 ASPP, no decoder.

    Keras total 2,142,019, trainable 2,108,931 (3 in / 3 out): equal to the thesis. As in the code's
    MobileNetV2 branch there are no atrous 6/12/18 ASPP branches (with them: 2,599,939), no
    Deeplabv3+ decoder/low-level skip and no final 1280 conv. Backbone BN momentum 0.999 (Keras),
    eps 1e-3, bias-free convs, TF 'same' padding on the stride-2 stem and depthwise convs; head BN
    eps 1e-5; logits conv with bias.

    ``tf_resize=True`` (default) reproduces the code's final x8 upsampling exactly: Keras
    ``K.resize_images(interpolation='bilinear')`` = TF1 ``resize_bilinear`` with align_corners=False
    and no half-pixel offset (source = index * in/out, clamped), see :func:`tf1_resize_bilinear`;
    ``tf_resize=False`` uses PyTorch's half-pixel ``align_corners=False`` bilinear instead (same
    parameters, outputs differ). Output always has the input's size; input divisible by 8.
    """
    return DeepLabV3PlusMobileNetV2(in_channels, out_channels, alpha, tf_resize=tf_resize, dropout=dropout)
