"""ResNet50/101/152, ResNet50V2/101V2/152V2 and ResNeXt50/101 as in keras-applications 1.0.7 ``resnet_common``.

Written by hand: MONAI's (and torchvision's) ResNet puts the stride on the 3x3 conv and has bias-free convs,
whereas Keras' V1 strides the first 1x1 conv and gives every conv a bias (V2: pre-activation, stride at the
end of a stack; ResNeXt: bias-free, grouped 3x3). Layer names follow Keras (``conv2_block1_1_conv`` ...),
BatchNorm epsilon 1.001e-5.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.models.backbones._common import GroupedFromDepthwise, TapBackbone, keras_bn

EPS = 1.001e-5
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# DLAE's V2 taps use these block numbers for conv2/conv3/conv4 (reference table); all lie on the 1/4, 1/8, 1/16 grid
V2_TAP_BLOCKS = {50: (3, 4, 6), 101: (3, 4, 16), 152: (2, 8, 36)}


def _bn(c: int) -> nn.BatchNorm2d:
    return keras_bn(c, eps=EPS)


class ResNetBackbone(TapBackbone):
    """``variant`` is 'v1', 'v2' or 'next' (ResNeXt, 32 groups)."""

    def __init__(self, depth: int = 50, variant: str = "v1", in_channels: int = 1) -> None:
        super().__init__()
        if depth not in DEPTHS or variant not in ("v1", "v2", "next") or (variant == "next" and depth == 152):
            raise ValueError(f"no ResNet variant {variant} with depth {depth}")
        self.variant, self.depth = variant, depth
        L = self.layers = nn.ModuleDict()
        bias = variant != "next"
        L["conv1_conv"] = nn.Conv2d(in_channels, 64, 7, 2, bias=bias)  # after conv1_pad (3)
        if variant != "v2":
            L["conv1_bn"] = _bn(64)
        self.plan: list[tuple[str, int, int, bool]] = []  # (block name, filters, stride, conv_shortcut)
        cin = 64
        blocks = DEPTHS[depth]
        if variant == "next":
            filters = (128, 256, 512, 1024)
        else:
            filters = (64, 128, 256, 512)
        for s, (f, n) in enumerate(zip(filters, blocks)):
            stack = f"conv{s + 2}"
            for b in range(1, n + 1):
                name = f"{stack}_block{b}"
                if variant == "v2":
                    stride = 2 if (b == n and s < 3) else 1
                    shortcut = b == 1
                else:
                    stride = 2 if (b == 1 and s > 0) else 1
                    shortcut = b == 1
                cin = self._block(name, cin, f, stride, shortcut)
                self.plan.append((name, f, stride, shortcut))
        if variant == "v2":
            L["post_bn"] = _bn(cin)
        self.out_channels = cin
        if variant == "v1":
            last = [f"conv{s + 2}_block{n}_out" for s, n in enumerate(blocks)]
            self.tap_names = ["conv1_relu"] + last[:4]
            self.tap_channels = [64, 256, 512, 1024, 2048]
            self.out_name = last[-1]
        elif variant == "v2":
            b2, b3, b4 = V2_TAP_BLOCKS[depth]
            self.tap_names = ["conv1_conv+bn+relu", f"conv2_block{b2}_1_relu", f"conv3_block{b3}_1_relu",
                              f"conv4_block{b4}_1_relu", "post_relu"]
            self.tap_channels = [64, 64, 128, 256, 2048]
            self.out_name = "post_relu"
        else:
            self.tap_names = ["conv1_relu", "conv3_block1_1_relu", "conv4_block1_1_relu", "conv5_block1_1_relu",
                              f"conv5_block{blocks[3]}_out"]
            self.tap_channels = [64, 256, 512, 1024, 2048]
            self.out_name = f"conv5_block{blocks[3]}_out"
        self.tap_bn: nn.Module | None = None

    def enable_taps(self) -> None:
        """DLAE taps ResNetV2 after conv1_conv through a BN and ReLU of its own (trainable, 128 parameters)."""
        if self.variant == "v2" and self.tap_bn is None:
            self.tap_bn = _bn(64)

    def _block(self, name: str, cin: int, f: int, stride: int, shortcut: bool) -> int:
        L = self.layers
        if self.variant == "v1":
            if shortcut:
                L[name + "_0_conv"] = nn.Conv2d(cin, 4 * f, 1, stride)
                L[name + "_0_bn"] = _bn(4 * f)
            L[name + "_1_conv"] = nn.Conv2d(cin, f, 1, stride)
            L[name + "_1_bn"] = _bn(f)
            L[name + "_2_conv"] = nn.Conv2d(f, f, 3, 1, padding=1)
            L[name + "_2_bn"] = _bn(f)
            L[name + "_3_conv"] = nn.Conv2d(f, 4 * f, 1)
            L[name + "_3_bn"] = _bn(4 * f)
            return 4 * f
        if self.variant == "v2":
            L[name + "_preact_bn"] = _bn(cin)
            if shortcut:
                L[name + "_0_conv"] = nn.Conv2d(cin, 4 * f, 1, stride)
            L[name + "_1_conv"] = nn.Conv2d(cin, f, 1, bias=False)
            L[name + "_1_bn"] = _bn(f)
            L[name + "_2_conv"] = nn.Conv2d(f, f, 3, stride, bias=False)  # after _2_pad (1)
            L[name + "_2_bn"] = _bn(f)
            L[name + "_3_conv"] = nn.Conv2d(f, 4 * f, 1)
            return 4 * f
        cout = 2 * f  # (64 // groups) * filters
        if shortcut:
            L[name + "_0_conv"] = nn.Conv2d(cin, cout, 1, stride, bias=False)
            L[name + "_0_bn"] = _bn(cout)
        L[name + "_1_conv"] = nn.Conv2d(cin, f, 1, bias=False)
        L[name + "_1_bn"] = _bn(f)
        L[name + "_2_conv"] = GroupedFromDepthwise(f, f, 3, stride, padding=1, groups=32, bias=False)
        L[name + "_2_bn"] = _bn(f)
        L[name + "_3_conv"] = nn.Conv2d(f, cout, 1, bias=False)
        L[name + "_3_bn"] = _bn(cout)
        return cout

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        L = self.layers
        taps: list[torch.Tensor] = []
        x = L["conv1_conv"](F.pad(x, (3, 3, 3, 3)))
        if self.variant == "v2":
            if self.tap_bn is not None:
                taps.append(F.relu(self.tap_bn(x)))
        else:
            x = F.relu(L["conv1_bn"](x))
            taps.append(x)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # pool1_pad (zeros, as Keras) + pool1_pool
        for name, _f, stride, shortcut in self.plan:
            x = self._run_block(name, x, stride, shortcut, taps)
        if self.variant == "v2":
            x = F.relu(L["post_bn"](x))
            taps.append(x)
        else:
            taps.append(x)
        return taps, x

    def _run_block(self, name: str, x: torch.Tensor, stride: int, shortcut: bool, taps: list[torch.Tensor]) -> torch.Tensor:
        L = self.layers
        want = set(self.tap_names)
        if self.variant == "v2":
            pre = F.relu(L[name + "_preact_bn"](x))
            if shortcut:
                sc = L[name + "_0_conv"](pre)
            else:
                sc = x[:, :, ::stride, ::stride] if stride > 1 else x  # MaxPooling2D(1, strides=stride)
            y = F.relu(L[name + "_1_bn"](L[name + "_1_conv"](pre)))
            if name + "_1_relu" in want:
                taps.append(y)
            y = F.relu(L[name + "_2_bn"](L[name + "_2_conv"](F.pad(y, (1, 1, 1, 1)))))
            return sc + L[name + "_3_conv"](y)
        sc = L[name + "_0_bn"](L[name + "_0_conv"](x)) if shortcut else x
        y = F.relu(L[name + "_1_bn"](L[name + "_1_conv"](x)))
        if name + "_1_relu" in want:
            taps.append(y)
        y = F.relu(L[name + "_2_bn"](L[name + "_2_conv"](y)))
        y = L[name + "_3_bn"](L[name + "_3_conv"](y))
        out = F.relu(sc + y)
        if name + "_out" in want and name + "_out" != self.out_name:
            taps.append(out)
        return out


def _make(depth: int, variant: str):
    def build(in_channels: int = 1) -> ResNetBackbone:
        return ResNetBackbone(depth, variant, in_channels)
    return build


resnet50, resnet101, resnet152 = _make(50, "v1"), _make(101, "v1"), _make(152, "v1")
resnet50v2, resnet101v2, resnet152v2 = _make(50, "v2"), _make(101, "v2"), _make(152, "v2")
resnext50, resnext101 = _make(50, "next"), _make(101, "next")
