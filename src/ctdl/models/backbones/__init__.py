"""DLAE's prebuilt backbones (keras-applications 1.0.7 structures and layer names), one module per family.

``BACKBONES`` maps DLAE's backbone names (lowercase) to ``factory(in_channels) -> backbone``; every backbone
has ``forward_taps(x) -> (taps, out)``, ``tap_channels``, ``out_channels`` and ``keras_modules()``.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ctdl.models.backbones import densenet, inception, mobilenet, resnet, vgg_nets, xception

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg_nets.vgg16, "vgg19": vgg_nets.vgg19,
    "resnet50": resnet.resnet50, "resnet101": resnet.resnet101, "resnet152": resnet.resnet152,
    "resnet50v2": resnet.resnet50v2, "resnet101v2": resnet.resnet101v2, "resnet152v2": resnet.resnet152v2,
    "resnext50": resnet.resnext50, "resnext101": resnet.resnext101,
    "xception": xception.xception,
    "inceptionv3": inception.inceptionv3, "inceptionresnetv2": inception.inceptionresnetv2,
    "densenet121": densenet.densenet121, "densenet169": densenet.densenet169, "densenet201": densenet.densenet201,
    "mobilenet": mobilenet.mobilenet, "mobilenetv2": mobilenet.mobilenetv2,
}

# DLAE's spelling of each backbone in a layer list (``ResNet50:False:none:(512, 512, 1):True:False``)
DLAE_NAMES: dict[str, str] = {
    "vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152",
    "resnet50v2": "ResNet50V2", "resnet101v2": "ResNet101V2", "resnet152v2": "ResNet152V2",
    "resnext50": "ResNeXt50", "resnext101": "ResNeXt101", "xception": "Xception", "inceptionv3": "InceptionV3",
    "inceptionresnetv2": "InceptionResNetV2", "densenet121": "DenseNet121", "densenet169": "DenseNet169",
    "densenet201": "DenseNet201", "mobilenet": "MobileNet", "mobilenetv2": "MobileNetV2",
}

__all__ = ["BACKBONES", "DLAE_NAMES"]
