"""SSD models: DLAE's VGG-SSD, ssd_small and the generic head on a tiny extractor of our own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctdl.detection.anchors import AnchorSpec
from ctdl.detection.decode import decode_detections
from ctdl.losses.detection import SSDLoss
from ctdl.metrics.detection import box_iou_np
from ctdl.models import MODELS, create_model, model_info
from ctdl.models.ssd import SSD, build_detector


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyFeatures(nn.Module):
    """Two feature maps (strides 4 and 8) with the ssd_features contract."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.out_channels = [16, 16]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.a(x)
        return [a, self.b(a)]


if "_test_tiny_ssd_features" not in MODELS:
    MODELS.add("_test_tiny_ssd_features", TinyFeatures, task="ssd_features", dims=2, default_input=(1, 32, 32))


def test_registry_entries() -> None:
    for name in ("ssd", "ssd_small"):
        info = model_info(name)
        assert info["task"] == "detection" and info["dims"] == 2


def test_vgg_ssd512_anchor_count_and_small_forward() -> None:
    # SSD512 with DLAE's example ratios has 24564 anchors (ssd_keras' figure for SSD512)
    dlae = [[1.0, 2.0, 0.5]] + [[1.0, 2.0, 0.5, 3.0, 1 / 3]] * 4 + [[1.0, 2.0, 0.5]] * 2
    full = AnchorSpec(aspect_ratios=dlae, two_boxes_for_ar1=True)
    assert len(full.anchors((512, 512), [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)])) == 24564
    m = create_model("ssd", in_channels=1, num_classes=2, n_extra=2)
    assert m.anchor_spec.aspect_ratios == dlae[:4]
    out = m(torch.randn(1, 1, 96, 96))
    # conv4_3 12x12 (stride 8), fc7 6x6 (stride 16), extras 3x3 and 2x2; ratios 3, 5, 5, 5 (+1 each: two boxes)
    n = 12 * 12 * 4 + 6 * 6 * 6 + 3 * 3 * 6 + 2 * 2 * 6
    assert out["cls_logits"].shape == (1, n, 3) and out["box_offsets"].shape == (1, n, 4) and out["anchors"].shape == (n, 4)


def test_default_steps_follow_tap_strides_dlae_bug() -> None:
    """DLAE's prebuilt *_ssd steps did not match the tap strides; without steps ctdl uses image / feature size."""
    m = create_model("ssd_small", num_classes=1, anchors={"aspect_ratios": [1.0], "two_boxes_for_ar1": False},
                     widths=[4, 4, 4, 4, 4])
    a = m(torch.zeros(1, 1, 64, 64))["anchors"]
    # taps at strides 8 (8x8) and 16 (4x4): centres (i + 0.5) * stride
    np.testing.assert_allclose(a[:64, 0].reshape(8, 8)[0].numpy(), (np.arange(8) + 0.5) * 8)
    np.testing.assert_allclose(a[64:, 1].reshape(4, 4)[:, 0].numpy(), (np.arange(4) + 0.5) * 16)


def test_generic_ssd_on_own_extractor_learns_a_box() -> None:
    torch.manual_seed(0)
    spec = AnchorSpec(scales=[0.3, 0.6], aspect_ratios=[1.0, 2.0, 0.5], two_boxes_for_ar1=True, normalize_coords=True)
    model = build_detector("_test_tiny_ssd_features", num_classes=1, anchors=spec)
    assert isinstance(model, SSD) and model.n_boxes == [4, 4]
    x = torch.zeros(4, 1, 32, 32)
    boxes = []
    for i, (x0, y0) in enumerate([(2, 3), (14, 12), (8, 18), (18, 4)]):
        x[i, 0, y0:y0 + 10, x0:x0 + 12] = 1.0
        boxes.append(torch.tensor([[1.0, x0, y0, x0 + 12, y0 + 10]]))
    loss_fn = SSDLoss()
    opt = torch.optim.Adam(model.parameters(), 0.01)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(model(x), boxes)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    with torch.no_grad():
        o = model(x)
    dets = decode_detections(o["cls_logits"], o["box_offsets"], o["anchors"], confidence_threshold=0.3,
                             scale_xy=o["coord_scale"])
    for d, b in zip(dets, boxes):
        assert len(d["scores"]) >= 1 and int(d["labels"][0]) == 1
        assert box_iou_np(d["boxes"][:1].numpy(), b[:, 1:].numpy())[0, 0] > 0.5


def test_build_detector_errors() -> None:
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        build_detector("nope", 1)
    with pytest.raises(ValueError, match="expected task 'detection' or 'ssd_features'"):
        build_detector("unet2d", 1)
    with pytest.raises(TypeError, match="out_channels"):
        SSD(nn.Conv2d(1, 1, 1), 1)


def test_detection_backbone_from_registered_extractor() -> None:
    """`detection.backbone: resnet50_ssd`: a DLAE backbone registered as an ssd_features extractor gets the head."""
    from ctdl.models import list_models

    if "resnet50_ssd" not in list_models():
        pytest.skip("resnet50_ssd extractor not registered in this tree")
    m = build_detector("resnet50_ssd", 2, {"scales": [0.1, 0.9]})
    out = m(torch.zeros(1, 1, 64, 64))
    # DLAE's ResNet taps at strides 2..32: maps 32, 16, 8, 4, 2; 4 anchors per cell (3 ratios + the extra ratio 1)
    n = (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2) * 4
    assert out["cls_logits"].shape == (1, n, 3) and out["anchors"].shape == (n, 4)
