"""DLAE's prebuilt models, registered under DLAE's names (lowercase).

For every backbone of :data:`ctdl.models.backbones.BACKBONES`:

- ``<bb>``: the classifier DLAE's prebuilt CNN config builds (backbone, GAP, Dense; VGG: Flatten, 4096, 4096;
  MobileNet: GAP, Dropout 0.001, 1x1 conv). It returns logits: DLAE's final softmax belongs to the loss here.
- ``<bb>_unet``: DLAE's prebuilt FCN on that encoder with the skip taps of the reference (task segmentation);
- ``<bb>_ssd``: the backbone as SSD feature extractor (task ``ssd_features``): ``forward`` returns the feature maps at
  DLAE's hook taps, shallow to deep, and ``out_channels`` lists their channels.

Plus ``lenet5``, ``alexnet``, ``dlae_unet2d`` and ``dlae_unet3d`` (``unet2d``/``unet3d`` are other U-Nets here).
Parameter counts equal what DLAE (Keras 2.2.4, keras-applications 1.0.7) builds at its input (meta
``dlae_input``; ``default_input`` is a smaller size for quick contract tests). DLAE's densenet169_unet config
joins a 1/1 map with a 1/2 tap and never builds; ``densenet169_unet`` here uses the layout of its siblings, and
:func:`dlae_backbone_unet` with :data:`DENSENET169_UNET_DLAE_STAGES` raises an error naming that layer.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.errors import ConfigError, InputError
from ctdl.models.backbones import BACKBONES, DLAE_NAMES
from ctdl.models.backbones._common import pad_to
from ctdl.models.backbones.alexnet import AlexNet
from ctdl.models.backbones.lenet import KerasFlatten, LeNet5
from ctdl.models.registry import register_model

DLAE_INPUT_2D = (1, 512, 512)
DLAE_INPUT_3D = (1, 64, 128, 128)  # DLAE's (128, 128, 64, 1) as (C, D, H, W)

# decoder stages of DLAE's <bb>_unet configs: (resize-conv filters, skip target?, convs after it)
UNET_STAGES: list[tuple[int, bool, int]] = [(512, True, 2), (512, True, 2), (512, True, 2), (256, True, 2),
                                            (128, True, 1), (64, False, 1)]
VGG_UNET_STAGES: list[tuple[int, bool, int]] = [(512, True, 2), (512, True, 2), (256, True, 2), (128, True, 1),
                                                (64, True, 1)]
# prebuilt_configs/densenet169_unet.json as published: the last skip target sits after the final upsampling
DENSENET169_UNET_DLAE_STAGES: list[tuple[int, bool, int]] = [(512, True, 2), (512, True, 2), (512, True, 2),
                                                             (256, True, 2), (128, False, 1), (64, True, 1)]


def _bn(c: int, dims: int = 2) -> nn.Module:
    """DLAE's ``Batch normalization:0.99:0.001``."""
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(c, eps=1e-3, momentum=0.01)


class ConvBNReLU(nn.Sequential):
    """DLAE ``Convolution nD:f:3:1:same`` (with bias), BN, ReLU; ``upsample`` makes it a resize convolution."""

    def __init__(self, cin: int, cout: int, dims: int = 2, upsample: bool = False, relu: bool = True) -> None:
        conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(cin, cout, 3, padding=1)
        mods: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
        mods += [conv, _bn(cout, dims)] + ([nn.ReLU(inplace=True)] if relu else [])
        super().__init__(*mods)


# -- classifiers -------------------------------------------------------------------------------
class DLAEClassifier(nn.Module):
    """A DLAE backbone with the head of its prebuilt CNN config; returns logits."""

    def __init__(self, backbone: nn.Module, head: str, num_classes: int, input_size: Sequence[int],
                 head_name: str = "predictions") -> None:
        super().__init__()
        self.backbone = backbone
        self.head_kind = head
        self.head_name = head_name  # the Keras application's name of its last Dense (an ImageNet top loads by it)
        c = backbone.out_channels
        if head == "vgg":
            h, w = (n // 32 for n in input_size)
            if h < 1 or w < 1:
                raise ConfigError(f"VGG classifier: input {tuple(input_size)} is smaller than 32 x 32")
            self.head = nn.ModuleDict({"fc1": nn.Linear(h * w * c, 4096), "fc2": nn.Linear(4096, 4096),
                                       "predictions": nn.Linear(4096, num_classes)})
            self.flatten = KerasFlatten()
        elif head == "mobilenet":
            self.dropout = nn.Dropout(0.001)
            self.head = nn.ModuleDict({"conv_preds": nn.Linear(c, num_classes)})  # a 1x1 conv on a 1x1 map
        else:
            self.head = nn.ModuleDict({head_name: nn.Linear(c, num_classes)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        if self.head_kind == "vgg":
            f = F.relu(self.head["fc1"](self.flatten(f)))
            return self.head["predictions"](F.relu(self.head["fc2"](f)))
        f = f.mean(dim=(2, 3))
        if self.head_kind == "mobilenet":
            return self.head["conv_preds"](self.dropout(f))
        return self.head[self.head_name](f)

    def keras_modules(self) -> dict[str, nn.Module]:
        return {**self.backbone.keras_modules(), **dict(self.head.items())}


# -- U-Net on a backbone -----------------------------------------------------------------------
class DLAEBackboneUNet(nn.Module):
    """DLAE's ``<bb>_unet``: encoder taps (skips on), [pad +] max pooling, 3 x Conv1024, resize-conv stages
    joined (skip first) with the taps deepest first, Conv(out) + BN. Returns logits at the input size."""

    def __init__(self, backbone: nn.Module, name: str, out_channels: int = 2,
                 stages: Sequence[tuple[int, bool, int]] = UNET_STAGES, pool: bool = True) -> None:
        super().__init__()
        if hasattr(backbone, "enable_taps"):
            backbone.enable_taps()
        self.backbone, self.name, self.pool = backbone, name, pool
        self.stages_spec = [tuple(s) for s in stages]
        taps = list(zip(backbone.tap_names, backbone.tap_channels, backbone.tap_strides))
        stride = backbone.out_stride * (2 if pool else 1)
        c = backbone.out_channels
        self.bottom = nn.Sequential(ConvBNReLU(c, 1024), ConvBNReLU(1024, 1024), ConvBNReLU(1024, 1024))
        c = 1024
        self.stages = nn.ModuleList()
        self.skip_taps: list[int | None] = []
        pending = list(range(len(taps)))
        for i, (f, skip, n) in enumerate(stages, start=1):
            stride //= 2
            layer = f"stage {i} ('Outer skip target:concatenate' after 'Resize convolution 2D:{f}')"
            up = ConvBNReLU(c, f, upsample=True)
            c = f
            if skip:
                if not pending:
                    raise ConfigError(f"{name}: {layer} has no skip source left (the encoder has {len(taps)} taps)")
                t = pending.pop()
                tname, tch, tstride = taps[t]
                if tstride != stride:
                    raise ConfigError(
                        f"{name}: {layer} joins a 1/{stride} decoder map with the skip source {tname} at 1/{tstride} "
                        f"(at 512 x 512: {512 // stride} vs {512 // tstride}); the original DLAE cannot build this "
                        "either")
                c += tch
                self.skip_taps.append(t)
            else:
                self.skip_taps.append(None)
            convs = [ConvBNReLU(c if j == 0 else f, f) for j in range(n)]
            c = f
            self.stages.append(nn.Sequential(up, *convs))
        if stride != 1:
            raise ConfigError(f"{name}: the decoder ends at 1/{stride} of the input size, not at full size")
        self.final = ConvBNReLU(c, out_channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        taps, y = self.backbone.forward_taps(x)
        taps = self.backbone.grid_taps(size, taps)
        if self.pool:
            if self.backbone.padded_taps:  # DLAE: "Zero padding 2D:((1, 1), (1, 1))" before the pooling
                y = pad_to(y, [math.ceil(s / self.backbone.out_stride) for s in size], f"{self.name} encoder output")
            y = F.max_pool2d(y, 2)
        y = self.bottom(y)
        for i, (stage, t) in enumerate(zip(self.stages, self.skip_taps), start=1):
            y = stage[0](y)
            if t is not None:
                skip = taps[t]
                if skip.shape[2:] != y.shape[2:]:
                    raise InputError(
                        f"{self.name}: stage {i} ('Outer skip target:concatenate') joins {tuple(y.shape[2:])} with "
                        f"skip {self.backbone.tap_names[t]} {tuple(skip.shape[2:])}; input {tuple(size)} must be a "
                        f"multiple of {self.backbone.out_stride * (2 if self.pool else 1)}")
                y = torch.cat([skip, y], 1)
            for m in list(stage)[1:]:
                y = m(y)
        return self.final(y)

    def keras_modules(self) -> dict[str, nn.Module]:
        return self.backbone.keras_modules()


class DLAEFeatureExtractor(nn.Module):
    """DLAE's ``<bb>_ssd``: the backbone with hooks on; returns the tap feature maps, shallow to deep."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if hasattr(backbone, "enable_taps"):
            backbone.enable_taps()
        self.backbone = backbone
        self.out_channels: list[int] = list(backbone.tap_channels)
        self.strides: list[int] = list(backbone.tap_strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, _ = self.backbone.forward_taps(x)
        return self.backbone.grid_taps(x.shape[2:], taps)

    def keras_modules(self) -> dict[str, nn.Module]:
        return self.backbone.keras_modules()


def dlae_backbone_unet(backbone: str, in_channels: int = 1, out_channels: int = 2,
                       stages: Sequence[tuple[int, bool, int]] | None = None) -> DLAEBackboneUNet:
    """Build DLAE's ``<backbone>_unet`` (``stages`` overrides the decoder layout; mismatched skips raise)."""
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown DLAE backbone '{backbone}'; valid: {', '.join(BACKBONES)}")
    vgg = backbone.startswith("vgg")
    if stages is None:
        stages = VGG_UNET_STAGES if vgg else UNET_STAGES
    return DLAEBackboneUNet(BACKBONES[backbone](in_channels=in_channels), f"{backbone}_unet", out_channels,
                            stages, pool=not vgg)


# -- DLAE's plain U-Nets -------------------------------------------------------------------------
class DLAEUNet(nn.Module):
    """DLAE's prebuilt ``unet2d`` / ``unet3d``: 64-1024 with BN, dropout 0.5 at the two deepest levels,
    resize-conv upsampling, concatenation skip first, final Conv(out) + BN (logits)."""

    def __init__(self, dims: int = 2, in_channels: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        self.dims = dims
        widths = (64, 128, 256, 512)
        self.down = nn.ModuleList()
        c = in_channels
        for f in widths:
            self.down.append(nn.Sequential(ConvBNReLU(c, f, dims), ConvBNReLU(f, f, dims)))
            c = f
        self.drop = nn.Dropout(0.5)
        self.bottom = nn.Sequential(ConvBNReLU(512, 1024, dims), ConvBNReLU(1024, 1024, dims))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        c = 1024
        for f in reversed(widths):
            self.up.append(ConvBNReLU(c, f, dims, upsample=True))
            self.dec.append(nn.Sequential(ConvBNReLU(2 * f, f, dims), ConvBNReLU(f, f, dims)))
            c = f
        self.final = ConvBNReLU(64, out_channels, dims, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            if i == 3:
                x = self.drop(x)
            x = pool(x, 2)
        x = self.drop(self.bottom(x))
        for i, (up, dec) in enumerate(zip(self.up, self.dec)):
            x = up(x)
            skip = skips.pop()
            if skip.shape[2:] != x.shape[2:]:
                raise InputError(f"dlae_unet{self.dims}d: decoder level {i + 1} ('Outer skip target:concatenate') "
                                 f"joins {tuple(x.shape[2:])} with {tuple(skip.shape[2:])}; the input size must be "
                                 "a multiple of 16")
            x = dec(torch.cat([skip, x], 1))
        return self.final(x)


# -- registration --------------------------------------------------------------------------------
def _classes(out_channels: int | None, num_classes: int | None, default: int) -> int:
    return int(out_channels or num_classes or default)


# keras-applications' name of the final Dense per family (VGG: fc1, fc2, predictions; MobileNet: conv_preds)
TOP_NAMES = {"resnet": "probs", "resnext": "probs", "densenet": "fc1000", "mobilenetv2": "Logits"}


def _pretrained(model: nn.Module, path: str | None) -> nn.Module:
    """``pretrained=PATH``: a Keras .h5 (converted) or a PyTorch state dict, loaded strictly."""
    if path:
        from ctdl.models.keras_weights import load_pretrained

        load_pretrained(model, path)
    return model


def _register_backbone(key: str) -> None:
    dlae = DLAE_NAMES[key]
    head = "vgg" if key.startswith("vgg") else "mobilenet" if key == "mobilenet" else "gap"
    build = BACKBONES[key]
    head_name = TOP_NAMES.get(key, TOP_NAMES.get(key.rstrip("0123456789v"), "predictions"))

    def classifier(in_channels: int = 1, out_channels: int | None = None, num_classes: int | None = None,
                   input_size: Sequence[int] = (512, 512), pretrained: str | None = None, **_: Any) -> nn.Module:
        model = DLAEClassifier(build(in_channels=in_channels), head, _classes(out_channels, num_classes, 1000),
                               input_size, head_name=head_name)
        return _pretrained(model, pretrained)

    classifier.__doc__ = f"DLAE prebuilt {dlae} classifier ({'Flatten-4096-4096' if head == 'vgg' else 'GAP'} head)"
    register_model(key, task="classification", dims=2, default_input=DLAE_INPUT_2D, dlae_input=DLAE_INPUT_2D,
                   dlae_name=dlae)(classifier)

    def unet(in_channels: int = 1, out_channels: int = 2, pretrained: str | None = None, **_: Any) -> nn.Module:
        return _pretrained(dlae_backbone_unet(key, in_channels, out_channels), pretrained)

    unet.__doc__ = f"DLAE prebuilt {key}_unet: {dlae} encoder with skips, resize-conv decoder"
    small = (1, 128, 128) if key.startswith("vgg") else (1, 256, 256)
    # smallest contract-test input (spatial): a multiple of the decoder's total stride (VGG 32, else 64) whose
    # bottleneck keeps 2 values per channel for BatchNorm at batch 1; Inception/Xception need >= 75 / 71 pixels
    test = (32, 64) if key.startswith("vgg") else (128, 128) if key.startswith(("inception", "xception")) else (64, 128)
    register_model(f"{key}_unet", task="segmentation", dims=2, default_input=small, dlae_input=DLAE_INPUT_2D,
                   dlae_name=dlae, test_input=test)(unet)

    def ssd(in_channels: int = 1, pretrained: str | None = None, **_: Any) -> nn.Module:
        return _pretrained(DLAEFeatureExtractor(build(in_channels=in_channels)), pretrained)

    ssd.__doc__ = f"DLAE prebuilt {key}_ssd feature extractor: {dlae} maps at the 5 hook taps"
    register_model(f"{key}_ssd", task="ssd_features", dims=2, default_input=DLAE_INPUT_2D, dlae_input=DLAE_INPUT_2D,
                   dlae_name=dlae)(ssd)


for _key in BACKBONES:
    _register_backbone(_key)


@register_model("lenet5", task="classification", dims=2, default_input=(1, 32, 32), dlae_input=(1, 32, 32))
def lenet5(in_channels: int = 1, out_channels: int | None = None, num_classes: int | None = None,
           input_size: Sequence[int] = (32, 32), **_: Any) -> nn.Module:
    """DLAE prebuilt LeNet-5 (BN after each conv; 107,830 parameters at 32 x 32 x 1, 10 classes)"""
    return LeNet5(in_channels, _classes(out_channels, num_classes, 10), input_size)


@register_model("alexnet", task="classification", dims=2, default_input=DLAE_INPUT_2D, dlae_input=DLAE_INPUT_2D)
def alexnet(in_channels: int = 1, out_channels: int | None = None, num_classes: int | None = None,
            input_size: Sequence[int] = (512, 512), **_: Any) -> nn.Module:
    """DLAE prebuilt AlexNet (BN after each conv, Flatten-4096-4096, built for 512 x 512)"""
    return AlexNet(in_channels, _classes(out_channels, num_classes, 1000), input_size)


@register_model("dlae_unet2d", task="segmentation", dims=2, default_input=(1, 128, 128), dlae_input=DLAE_INPUT_2D,
                test_input=(16, 32))
def dlae_unet2d(in_channels: int = 1, out_channels: int = 2, **_: Any) -> nn.Module:
    """DLAE prebuilt unet2d (64-1024, BN, resize convs; 34,526,982 parameters)"""
    return DLAEUNet(2, in_channels, out_channels)


@register_model("dlae_unet3d", task="segmentation", dims=3, default_input=(1, 32, 64, 64), dlae_input=DLAE_INPUT_3D,
                test_input=(16, 16, 32))
def dlae_unet3d(in_channels: int = 1, out_channels: int = 2, **_: Any) -> nn.Module:
    """DLAE prebuilt unet3d (64-1024, BN, resize convs; 103,539,846 parameters)"""
    return DLAEUNet(3, in_channels, out_channels)


# -- backbone entries of DLAE layer lists ----------------------------------------------------------
class LayerListBackbone(nn.Module):
    """A backbone as a layer-list entry (``VGG16:False:none:(512, 512, 1):True:False``): ``forward`` returns
    ``(output, taps)`` with the taps finest first on DLAE's grid (Xception/Inception zero pads applied);
    ``include_top`` appends DLAE's 1000-way softmax classifier (GAP-Dense; VGG Flatten-4096-4096)."""

    def __init__(self, backbone: nn.Module, top: nn.Module | None = None) -> None:
        super().__init__()
        if hasattr(backbone, "enable_taps"):
            backbone.enable_taps()
        self.backbone, self.top = backbone, top

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        taps, out = self.backbone.forward_taps(x)
        taps = self.backbone.grid_taps(x.shape[2:], taps)
        if self.top is not None:
            out = torch.softmax(self.top(x), dim=1)
        return out, taps

    def keras_modules(self) -> dict[str, nn.Module]:
        return self.top.keras_modules() if self.top is not None else self.backbone.keras_modules()


def layerlist_backbone(spec: Any) -> nn.Module:
    """``backbone_factory`` for :func:`ctdl.models.layerlist.build_layer_list` (a ``BackboneSpec`` with ``name``,
    ``include_top``, ``weights``, ``input_shape`` channels-last, ``skips``, ``hooks``).

    ImageNet weights are never downloaded: ``weights: imagenet`` raises and points at ``model.pretrained``.
    """
    key = str(spec.name).lower()
    where = f"layer {getattr(spec, 'index', '?')} '{getattr(spec, 'text', spec.name)}'"
    if key not in BACKBONES:
        raise ConfigError(f"{where}: unknown backbone; valid: {', '.join(DLAE_NAMES.values())}")
    if spec.weights:
        raise ConfigError(f"{where}: weights '{spec.weights}' would be downloaded; build with 'none' and load a "
                          "local Keras .h5 or PyTorch file with model.pretrained / --pretrained PATH")
    shape = tuple(spec.input_shape)
    if len(shape) != 3:
        raise ConfigError(f"{where}: backbones are 2D; input_shape must be (rows, cols, channels), got {shape}")
    if spec.include_top:
        head = "vgg" if key.startswith("vgg") else "mobilenet" if key == "mobilenet" else "gap"
        name = TOP_NAMES.get(key, TOP_NAMES.get(key.rstrip("0123456789v"), "predictions"))
        top = DLAEClassifier(BACKBONES[key](in_channels=shape[2]), head, 1000, shape[:2], head_name=name)
        return LayerListBackbone(top.backbone, top)
    return LayerListBackbone(BACKBONES[key](in_channels=shape[2]))
