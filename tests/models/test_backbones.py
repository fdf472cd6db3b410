"""DLAE's backbones: Keras parameter counts, tap shapes at DLAE's 512 x 512 input, Keras-specific layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctdl.models.backbones import BACKBONES
from ctdl.models.backbones._common import GroupedFromDepthwise, MaxPoolSame, pad_to
from ctdl.models.registry import count_parameters, count_parameters_keras

# keras-applications' documented totals with the ImageNet top (3 channels, 1000 classes) minus that top
# (Dense 1000 on the pooled features; VGG: only the conv part), i.e. the `include_top=False` totals
KERAS_NOTOP_TOTAL = {
    "vgg16": 14_714_688, "vgg19": 20_024_384,
    "resnet50": 25_636_712 - 2_049_000, "resnet101": 44_707_176 - 2_049_000, "resnet152": 60_419_944 - 2_049_000,
    "resnet50v2": 25_613_800 - 2_049_000, "resnet101v2": 44_675_560 - 2_049_000,
    "resnet152v2": 60_380_648 - 2_049_000, "resnext50": 25_097_128 - 2_049_000, "resnext101": 44_315_560 - 2_049_000,
    "xception": 22_910_480 - 2_049_000, "inceptionv3": 23_851_784 - 2_049_000,
    "inceptionresnetv2": 55_873_736 - 1_537_000, "densenet121": 8_062_504 - 1_025_000,
    "densenet169": 14_307_880 - 1_665_000, "densenet201": 20_242_984 - 1_921_000,
    "mobilenet": 4_253_864 - 1_025_000, "mobilenetv2": 3_538_984 - 1_281_000,
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_keras_notop_parameter_count(name: str) -> None:
    with torch.device("meta"):
        b = BACKBONES[name](in_channels=3)
    assert count_parameters_keras(b) == KERAS_NOTOP_TOTAL[name]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_taps_at_dlae_input(name: str) -> None:
    """At 512 x 512 the five taps lie on DLAE's grid (after its zero pads) with the reference's channels."""
    with torch.device("meta"):
        b = BACKBONES[name](in_channels=1)
        if hasattr(b, "enable_taps"):
            b.enable_taps()
        taps, out = b.forward_taps(torch.zeros(1, 1, 512, 512))
        taps = b.grid_taps((512, 512), taps)
    assert [t.shape[1] for t in taps] == list(b.tap_channels)
    assert [t.shape[-1] for t in taps] == [512 // s for s in b.tap_strides]
    assert out.shape[1] == b.out_channels
    expected_out = 14 if name.startswith("inception") else 16  # Inception's output is unpadded (DLAE pads it)
    assert out.shape[-1] == expected_out


def test_reference_tap_channels() -> None:
    ch = {n: BACKBONES[n](in_channels=1).tap_channels for n in ("resnet50v2", "densenet169", "mobilenetv2")}
    assert ch["resnet50v2"] == [64, 64, 128, 256, 2048]
    assert ch["densenet169"] == [64, 256, 512, 1280, 1664]
    assert ch["mobilenetv2"] == [96, 144, 192, 576, 1280]


def test_resnet50v2_tap_bn_adds_128_trainable() -> None:
    """DLAE taps ResNetV2 after conv1_conv through a new BN + ReLU (64 gamma + 64 beta)."""
    with torch.device("meta"):
        b = BACKBONES["resnet50v2"](in_channels=1)
        n0 = count_parameters(b)
        b.enable_taps()
    assert count_parameters(b) - n0 == 128


def test_grouped_conv_equals_keras_depthwise_then_sum() -> None:
    """ResNeXt's Keras construction (DepthwiseConv2D with multiplier c, reshape (g, c, c), sum over the input
    axis) computed in NumPy equals the grouped conv with the converted kernel."""
    from ctdl.models.keras_weights import convert_layer

    rng = np.random.default_rng(0)
    groups, c, h = 4, 3, 5
    cin = groups * c
    x = rng.standard_normal((1, h, h, cin)).astype(np.float32)  # NHWC
    k = rng.standard_normal((3, 3, cin, c)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dw = np.zeros((h, h, cin, c), np.float32)  # depthwise output, channel index in*c + m
    for dy in range(3):
        for dx in range(3):
            dw += xp[0, dy:dy + h, dx:dx + h, :, None] * k[dy, dx]
    ref = dw.reshape(h, h, groups, c, c).sum(axis=3).reshape(h, h, cin)  # sum over j (input within the group)
    conv = GroupedFromDepthwise(cin, cin, 3, 1, padding=1, groups=groups, bias=False)
    conv.weight.data.copy_(convert_layer(conv, {"depthwise_kernel": k})["weight"])
    y = conv(torch.from_numpy(x).permute(0, 3, 1, 2))[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_tf_same_maxpool_pads_bottom_right() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF 'same' 3x3/2 on 4: total pad 1, all at the bottom/right -> windows start at 0 and 2
    y = MaxPoolSame(3, 2)(x)
    assert y.tolist() == [[[[10.0, 11.0], [14.0, 15.0]]]]


def test_pad_to_puts_extra_pixel_top_left() -> None:
    x = torch.ones(1, 1, 61, 255)
    y = pad_to(x, (64, 256), "t")
    assert y.shape[-2:] == (64, 256)
    assert y[0, 0, :2].sum() == 0 and y[0, 0, 2:-1, 1:].min() == 1 and y[0, 0, -1].sum() == 0  # ((2, 1), ...)
    assert y[0, 0, 5, 0] == 0 and y[0, 0, 5, 1:].min() == 1  # ((1, 0)) on the width
    with pytest.raises(ValueError, match="larger than the grid"):
        pad_to(torch.ones(1, 1, 9, 9), (8, 8), "t")


def test_mobilenetv2_correct_pad_on_odd_input() -> None:
    b = BACKBONES["mobilenetv2"](in_channels=1).eval()
    for n in (33, 32):
        with torch.no_grad():
            taps, out = b.forward_taps(torch.zeros(1, 1, n, n))
        assert out.shape[-1] == -(-n // 32)  # ceil, as Keras' correct_pad + valid conv gives
    assert F.relu6(torch.tensor(7.0)) == 6.0
