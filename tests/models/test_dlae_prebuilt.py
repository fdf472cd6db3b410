"""DLAE's prebuilt models: exact parameter counts, forward + backward at reduced inputs, skip errors."""

from __future__ import annotations

import pytest
import torch

from ctdl.errors import ConfigError, InputError
from ctdl.models import count_parameters, count_parameters_keras, create_model, list_models, model_info
from ctdl.models.backbones import BACKBONES
from ctdl.models.dlae_prebuilt import DENSENET169_UNET_DLAE_STAGES, DLAEFeatureExtractor, dlae_backbone_unet


def _meta(name: str, **kw: object) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


@pytest.mark.parametrize("name,count", [("lenet5", 107_830), ("dlae_unet2d", 34_526_982),
                                        ("dlae_unet3d", 103_539_846)])
def test_known_dlae_counts(name: str, count: int) -> None:
    assert count_parameters(_meta(name)) == count


# Keras' documented totals of the standard applications (3 channels, 224 x 224, 1000 classes): DLAE's
# classifier heads are the Keras tops (GAP-Dense; VGG Flatten-4096-4096; MobileNet dropout + 1x1 conv)
KERAS_TOTAL = {
    "vgg16": 138_357_544, "vgg19": 143_667_240, "resnet50": 25_636_712, "resnet101": 44_707_176,
    "resnet152": 60_419_944, "resnet50v2": 25_613_800, "resnet101v2": 44_675_560, "resnet152v2": 60_380_648,
    "resnext50": 25_097_128, "resnext101": 44_315_560, "xception": 22_910_480, "inceptionv3": 23_851_784,
    "inceptionresnetv2": 55_873_736, "densenet121": 8_062_504, "densenet169": 14_307_880,
    "densenet201": 20_242_984, "mobilenet": 4_253_864, "mobilenetv2": 3_538_984,
}
# first conv (k, out) of each family: a 1-channel input has k*k*2*out fewer weights than a 3-channel one
FIRST_CONV = {"vgg": (3, 64), "resnet": (7, 64), "resnext": (7, 64), "xception": (3, 32), "inception": (3, 32),
              "densenet": (7, 64), "mobilenet": (3, 32)}
# documented trainable counts (3 channels, 1000 classes)
KERAS_TRAINABLE = {"resnet50": 25_583_592, "inceptionv3": 23_817_352, "xception": 22_855_952,
                   "mobilenetv2": 3_504_872, "densenet121": 7_978_856, "vgg16": 138_357_544}


@pytest.mark.parametrize("name", sorted(KERAS_TOTAL))
def test_classifier_equals_keras_application(name: str) -> None:
    m = _meta(name, in_channels=3, input_size=(224, 224))
    assert count_parameters_keras(m) == KERAS_TOTAL[name]
    if name in KERAS_TRAINABLE:
        assert count_parameters(m) == KERAS_TRAINABLE[name]


@pytest.mark.parametrize("name", sorted(KERAS_TRAINABLE))
def test_classifier_trainable_at_dlae_input(name: str) -> None:
    """At DLAE's 512 x 512 x 1: the Keras trainable count less the first conv's two missing input channels
    (VGG also grows its Flatten-Dense from 7 x 7 to 16 x 16 x 512 inputs)."""
    k, c = next(v for f, v in FIRST_CONV.items() if name.startswith(f))
    expected = KERAS_TRAINABLE[name] - k * k * 2 * c
    if name == "vgg16":
        expected += (16 * 16 - 7 * 7) * 512 * 4096
    assert count_parameters(_meta(name)) == expected


def test_vgg16_and_alexnet_counts_by_hand() -> None:
    fc = 16 * 16 * 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert count_parameters(_meta("vgg16")) == 14_714_688 - 2 * 9 * 64 + fc == 572_466_856
    # AlexNet at 512: conv 96 11x11/4 -> 126 -> pool 63 -> 53 -> 26 -> 24 -> 22 -> 20 -> pool 10 (x 256 maps)
    convs = (11 * 11 * 1 * 96 + 96) + (11 * 11 * 96 * 256 + 256) + (9 * 256 * 384 + 384) + (9 * 384 * 384 + 384) \
        + (9 * 384 * 256 + 256)
    bn = 2 * (96 + 256 + 384 + 384 + 256)
    dense = (10 * 10 * 256 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert count_parameters(_meta("alexnet")) == convs + bn + dense


def test_every_prebuilt_name_is_registered() -> None:
    names = set(list_models())
    for bb in BACKBONES:
        assert {bb, f"{bb}_unet", f"{bb}_ssd"} <= names
        assert model_info(bb)["dlae_input"] == (1, 512, 512)
    assert {"lenet5", "alexnet", "dlae_unet2d", "dlae_unet3d"} <= names
    assert model_info("dlae_unet3d")["dlae_input"] == (1, 64, 128, 128)


def test_models_table_lists_counts() -> None:
    from ctdl.models.summary import model_table

    rows = {r["name"]: r for r in model_table("resnet50*")}
    assert rows["resnet50"]["params"] == 25_583_592 - 7 * 7 * 2 * 64
    assert {"resnet50_unet", "resnet50_ssd", "resnet50v2", "resnet50v2_unet"} <= set(rows)


def _small(name: str) -> int:
    """The smallest convenient input: Keras' minimum for Inception (75) and Xception (71), else 32."""
    return 80 if name.startswith("inception") else 72 if name.startswith("xception") else 32


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor) -> None:
    y = model(x)
    ys = y if isinstance(y, list) else [y]
    sum(t.float().mean() for t in ys).backward()
    assert all(torch.isfinite(t).all() for t in ys)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


HEAVY = {"resnet152", "resnet152v2", "resnext101", "inceptionresnetv2", "densenet201", "resnet101", "resnet101v2",
         "densenet169"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in sorted(BACKBONES)])
def test_classifier_and_ssd_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    s = _small(name)
    x = torch.randn(2, 1, s, s)
    clf = create_model(name, out_channels=5, input_size=(s, s))
    _fwd_bwd(clf, x)
    assert clf(x).shape == (2, 5)
    ssd_meta = _meta(f"{name}_ssd")  # the registered extractor, built without memory ...
    ssd = DLAEFeatureExtractor(clf.backbone).eval()  # ... and the same structure on the trained backbone
    assert ssd.out_channels == ssd_meta.out_channels and ssd.strides == ssd_meta.strides
    assert count_parameters(ssd) == count_parameters(ssd_meta)
    with torch.no_grad():
        maps = ssd(x)
    assert [m.shape[1] for m in maps] == ssd.out_channels
    assert [m.shape[-1] for m in maps] == [-(-s // st) for st in ssd.strides]
    assert all(torch.isfinite(m).all() for m in maps)  # the classifier's backward covered the backbone


def test_lenet5_and_alexnet_forward_backward() -> None:
    _fwd_bwd(create_model("lenet5"), torch.randn(2, 1, 32, 32))
    net = create_model("alexnet", out_channels=3, input_size=(215, 215))
    _fwd_bwd(net, torch.randn(2, 1, 215, 215))


def test_original_densenet169_unet_fails_naming_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"densenet169_unet: stage 6 \('Outer skip target:concatenate' after "
                                          r"'Resize convolution 2D:64'\) joins a 1/1 .* conv1/relu at 1/2"):
        dlae_backbone_unet("densenet169", stages=DENSENET169_UNET_DLAE_STAGES)
    m = _meta("densenet169_unet")  # the registered one uses its siblings' layout
    assert m.skip_taps[-1] is None


def test_unet_input_not_on_grid_names_the_layer() -> None:
    net = create_model("vgg16_unet", out_channels=2).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
        with pytest.raises(InputError, match=r"vgg16_unet: stage 1 \('Outer skip target:concatenate'\) joins"):
            net(torch.zeros(1, 1, 48, 48))


def _unet_layer_list(backbone: str, n: int) -> list[str]:
    """DLAE's prebuilt_configs/<bb>_unet.json layer list at an n x n input."""
    def conv(f: int) -> list[str]:
        return [f"Convolution 2D:{f}:(3, 3):(1, 1):same:(1, 1):he_normal:None:None:0.001:0.001",
                "Batch normalization:0.99:0.001", "Activation:relu"]

    def rc(f: int) -> list[str]:
        return [f"Resize convolution 2D:{f}:(3, 3):(1, 1):(2, 2):same:(1, 1):he_normal:None:None:0.001:0.001",
                "Batch normalization:0.99:0.001", "Activation:relu"]

    t = ["Outer skip target:concatenate"]
    lst = [f"Input:({n}, {n}, 1)", f"{backbone}:False:none:({n}, {n}, 1):True:False", "Max pooling 2D:(2, 2):(2, 2)"]
    lst += conv(1024) * 3 + rc(512) + t + conv(512) * 2 + rc(512) + t + conv(512) * 2 + rc(512) + t + conv(512) * 2
    lst += rc(256) + t + conv(256) * 2 + rc(128) + t + conv(128) + rc(64) + conv(64)
    return lst + ["Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):he_normal:None:None:0.001:0.001",
                  "Batch normalization:0.99:0.001", "Activation:softmax"]


@pytest.mark.slow
def test_layer_list_with_backbone_entry_matches_registered_unet() -> None:
    """The layer-list builder with this module's backbone factory builds DLAE's mobilenetv2_unet list into a net
    with exactly the registered model's parameters and the input's output size."""
    layerlist = pytest.importorskip("ctdl.models.layerlist")
    from ctdl.models.dlae_prebuilt import layerlist_backbone

    net = layerlist.build_layer_list(_unet_layer_list("MobileNetV2", 64), backbone_factory=layerlist_backbone)
    assert count_parameters(net) == count_parameters(_meta("mobilenetv2_unet")) == 69_306_566
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
