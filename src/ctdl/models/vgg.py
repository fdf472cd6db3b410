"""VGG convolutional features (Simonyan & Zisserman 2015) in the common PyTorch key layout.

``vgg_features(16)`` is an ``nn.Sequential`` whose indices match the widespread ``features.N.weight`` layout
(conv at 0, 2, 5, 7, 10, ...), so an ImageNet state dict in that layout loads without renaming. Written here
because torchvision (which has it) cannot be used on this machine; MONAI has no VGG.
"""

from __future__ import annotations

import torch.nn as nn

# channel plan per depth; "M" is a 2x2 max pooling
VGG_PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg_features(depth: int = 16, in_channels: int = 3, batch_norm: bool = False,
                 final_pool: bool = True) -> nn.Sequential:
    """The convolutional part of VGG-``depth`` (3x3 convs, padding 1, ReLU, 2x2 max pooling).

    ``final_pool=False`` drops the last pooling (feature extractors that pool themselves).
    """
    if depth not in VGG_PLANS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_PLANS)} (got {depth})")
    plan = list(VGG_PLANS[depth])
    if not final_pool:
        plan = plan[:-1]
    layers: list[nn.Module] = []
    c = in_channels
    for v in plan:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(c, int(v), 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        c = int(v)
    return nn.Sequential(*layers)
