"""SSD detectors: DLAE's VGG-SSD (``ssd``), a small CPU variant (``ssd_small``), and a generic :class:`SSD` head
that turns any multi-scale feature extractor into a detector.

A feature extractor is any module whose ``forward(x)`` returns a list of feature maps (B, C_k, H_k, W_k) and
which has ``out_channels: list[int]`` (the ``<backbone>_ssd`` models, task ``ssd_features``). :class:`SSD`
puts on each map DLAE's head (Liu et al. 2016): a trainable L2 normalisation on the first map (gamma 20),
then a 3x3 class convolution (n_boxes * (C + 1) filters) and a 3x3 box convolution (n_boxes * 4). The
forward returns ``{"cls_logits": (B, N, C+1), "box_offsets": (B, N, 4), "anchors": (N, 4), "coord_scale"}``
with anchors as (cx, cy, w, h) centroids, recomputed from the actual feature sizes (so any input size
works, and steps/offsets travel with the model's ``anchor_spec`` instead of being lost like DLAE's).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.detection.anchors import AnchorSpec
from ctdl.models.registry import register_model
from ctdl.models.vgg import vgg_features


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a trainable per-channel scale (SSD's conv4_3 normalisation)."""

    def __init__(self, channels: int, init: float = 20.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma.view(1, -1, 1, 1) * F.normalize(x, p=2, dim=1, eps=1e-10)


def _anchor_spec(anchors: AnchorSpec | Mapping[str, Any] | None) -> AnchorSpec:
    if anchors is None:
        return AnchorSpec()
    if isinstance(anchors, AnchorSpec):
        return anchors
    return AnchorSpec(**dict(anchors))


class SSD(nn.Module):
    """Class and box heads on the feature maps of ``backbone`` (see the module docstring)."""

    def __init__(self, backbone: nn.Module, num_classes: int, anchors: AnchorSpec | Mapping[str, Any] | None = None,
                 l2norm_first: bool = True) -> None:
        super().__init__()
        chans = getattr(backbone, "out_channels", None)
        if not isinstance(chans, (list, tuple)) or not chans:
            raise TypeError(f"SSD backbone {type(backbone).__name__} needs out_channels: list[int] (one per feature map)")
        if num_classes < 1:
            raise ValueError(f"num_classes (positive classes) must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.anchor_spec = _anchor_spec(anchors)
        n = len(chans)
        self.n_boxes = self.anchor_spec.boxes_per_layer(n)
        self.l2norm = L2Norm(int(chans[0])) if l2norm_first else nn.Identity()
        self.cls_heads = nn.ModuleList(nn.Conv2d(int(c), b * (num_classes + 1), 3, padding=1) for c, b in zip(chans, self.n_boxes))
        self.box_heads = nn.ModuleList(nn.Conv2d(int(c), b * 4, 3, padding=1) for c, b in zip(chans, self.n_boxes))
        for m in list(self.cls_heads) + list(self.box_heads):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # DLAE: he_normal with bias
            nn.init.zeros_(m.bias)
        self._anchor_cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def anchors(self, image_hw: tuple[int, int], feature_hws: Sequence[tuple[int, int]],
                device: torch.device | str = "cpu") -> torch.Tensor:
        key = (tuple(image_hw), tuple(tuple(f) for f in feature_hws), str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self.anchor_spec.anchors_torch(image_hw, feature_hws, device)
        return self._anchor_cache[key]

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        feats = list(self.backbone(x))
        if len(feats) != len(self.cls_heads):
            raise RuntimeError(f"backbone returned {len(feats)} feature maps, the heads expect {len(self.cls_heads)}")
        feats[0] = self.l2norm(feats[0])
        b = x.shape[0]
        cls, box = [], []
        for f, hc, hb in zip(feats, self.cls_heads, self.box_heads):
            cls.append(hc(f).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes + 1))
            box.append(hb(f).permute(0, 2, 3, 1).reshape(b, -1, 4))
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        anchors = self.anchors(hw, [(int(f.shape[-2]), int(f.shape[-1])) for f in feats], x.device)
        scale = (float(hw[1]), float(hw[0])) if self.anchor_spec.normalize_coords else None
        return {"cls_logits": torch.cat(cls, 1), "box_offsets": torch.cat(box, 1), "anchors": anchors,
                "coord_scale": scale}


class VGGSSDFeatures(nn.Module):
    """DLAE's VGG16-SSD feature taps: conv4_3 (1/8), fc7 (1/16, a dilated fc6 3x3 conv and a 3x3 fc7 as in DLAE's
    ``ssd`` config) and ``n_extra`` extra layers (1x1 then 3x3 stride 2; the last a 4x4 valid conv, SSD512)."""

    def __init__(self, in_channels: int = 1, depth: int = 16, n_extra: int = 5) -> None:
        super().__init__()
        feats = vgg_features(depth, in_channels=in_channels, final_pool=False)
        # the ReLU after the last conv of block 4 ends the conv4_3 tap (index of the 4th max pooling)
        pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
        self.to_conv4 = feats[: pools[3]]
        self.to_conv5 = feats[pools[3]:]
        self.fc = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.ReLU(True),
                                nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        plan = [(256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 4, 1, 1)]
        extras, c = [], 1024
        for mid, out, k, s, p in plan[:n_extra]:
            extras.append(nn.Sequential(nn.Conv2d(c, mid, 1), nn.ReLU(True), nn.ZeroPad2d(p),
                                        nn.Conv2d(mid, out, k, stride=s), nn.ReLU(True)))
            c = out
        self.extras = nn.ModuleList(extras)
        self.out_channels = [512, 1024] + [p[1] for p in plan[:n_extra]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c4 = self.to_conv4(x)
        y = self.fc(self.to_conv5(c4))
        out = [c4, y]
        for e in self.extras:
            y = e(y)
            out.append(y)
        return out


class SmallSSDFeatures(nn.Module):
    """A small VGG-style extractor for CPU demos: stages of two 3x3 conv + BN + ReLU with 2x2 pooling, tapped at
    strides 2**n_stem, 2**(n_stem + 1), ... (one tap per stage after the first ``n_stem``; 3 -> first tap at stride 8,
    2 -> stride 4, which gives anchors for small lesions)."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 96, 128, 128), n_stem: int = 3) -> None:
        super().__init__()
        if len(widths) < n_stem + 1 or n_stem < 1:
            raise ValueError(f"ssd_small needs n_stem >= 1 and more than n_stem = {n_stem} widths, got {list(widths)}")
        stages, c = [], in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.MaxPool2d(2, 2, ceil_mode=True)]
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
            stages.append(nn.Sequential(*layers))
            c = w
        self.stages = nn.ModuleList(stages)
        self.n_stem = int(n_stem)
        self.out_channels = [int(w) for w in widths[self.n_stem:]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, s in enumerate(self.stages):
            x = s(x)
            if i >= self.n_stem:
                out.append(x)
        return out


@register_model("ssd", task="detection", dims=2, default_input=(1, 512, 512),
                paper="Liu et al. 2016, SSD512 on VGG16 (DLAE prebuilt 'ssd', 7 hooks)")
def ssd(in_channels: int = 1, num_classes: int = 1, anchors: Optional[Mapping[str, Any]] = None, depth: int = 16,
        n_extra: int = 5) -> SSD:
    """DLAE's VGG-SSD: conv4_3 + fc7 + 5 extra layers (7 feature maps; needs inputs of about 300 px or more)."""
    spec = _anchor_spec(anchors)
    if anchors is None:  # DLAE's example_bbd ratios and SSD512 steps
        spec = AnchorSpec(aspect_ratios=[[1.0, 2.0, 0.5]] + [[1.0, 2.0, 0.5, 3.0, 1 / 3]] * 4 + [[1.0, 2.0, 0.5]] * 2)
        spec.aspect_ratios = spec.aspect_ratios[: 2 + n_extra]
    return SSD(VGGSSDFeatures(in_channels, depth, n_extra), num_classes, spec)


@register_model("ssd_small", task="detection", dims=2, default_input=(1, 128, 128),
                paper="SSD head (Liu et al. 2016) on a small VGG-style extractor, for CPU demos")
def ssd_small(in_channels: int = 1, num_classes: int = 1, anchors: Optional[Mapping[str, Any]] = None,
              widths: Sequence[int] = (16, 32, 64, 96, 128, 128), n_stem: int = 3) -> SSD:
    """A few-hundred-thousand-parameter SSD; 128 x 128 inputs give maps of 16, 8, 4 and 2 cells (n_stem 3)."""
    return SSD(SmallSSDFeatures(in_channels, widths, n_stem), num_classes, anchors, l2norm_first=False)


def build_detector(name: str, num_classes: int, anchors: AnchorSpec | Mapping[str, Any] | None = None,
                   in_channels: int = 1, **params: Any) -> SSD:
    """A detector by registry name: a ``detection`` model directly, or an ``ssd_features`` extractor (e.g.
    ``resnet50_ssd``) under the generic :class:`SSD` head."""
    from ctdl.models import create_model, list_models, model_info

    if name not in list_models():
        raise KeyError(f"detection.backbone: unknown model '{name}'; detectors: "
                       f"{', '.join(n for n in list_models() if model_info(n).get('task') in ('detection', 'ssd_features'))}")
    task = model_info(name).get("task")
    spec = _anchor_spec(anchors)
    if task == "detection":
        return create_model(name, in_channels=in_channels, num_classes=num_classes, anchors=spec.to_dict(), **params)
    if task == "ssd_features":
        return SSD(create_model(name, in_channels=in_channels, **params), num_classes, spec)
    raise ValueError(f"detection.backbone: '{name}' is a {task} model; expected task 'detection' or 'ssd_features'")
