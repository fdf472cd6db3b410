"""3D CNN classifiers: the DLAE section-12 layer list (hand-counted parameters) and the MONAI baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ctdl.models import count_parameters, count_parameters_keras, create_model, model_info


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dlae_layer_list_and_counts() -> None:
    m = create_model("cnn3d_dlae")
    types = [type(x).__name__ for x in m.features] + [type(x).__name__ for x in m.fc] + [type(m.head).__name__]
    assert types == ["Conv3d", "BatchNorm3d", "ReLU", "MaxPool3d", "Conv3d", "BatchNorm3d", "ReLU", "MaxPool3d",
                     "Conv3d", "BatchNorm3d", "ReLU", "Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    # hand count for input 13 x 13 x 7: convs 27*64+64, 27*64*128+128, 27*128*256+256; BN 2*(64+128+256);
    # pooled 7x13x13 -> 3x6x6 -> 1x3x3, flatten 256*9 = 2304; Dense 2304*2048+2048, BN 2*2048, Dense 2048*2+2
    convs = (27 * 64 + 64) + (27 * 64 * 128 + 128) + (27 * 128 * 256 + 256)
    bn = 2 * (64 + 128 + 256) + 2 * 2048
    dense = 2304 * 2048 + 2048 + 2048 * 2 + 2
    assert count_parameters(m) == convs + bn + dense
    assert count_parameters_keras(m) == convs + 2 * bn + dense  # Keras adds moving mean/variance
    bn3 = m.features[1]
    assert bn3.eps == pytest.approx(1e-3) and bn3.momentum == pytest.approx(0.01)  # Keras 0.99 -> torch 0.01
    assert m.fc[4].p == 0.5
    m.eval()
    out = m(torch.randn(3, 1, 7, 13, 13))
    assert out.shape == (3, 2)
    assert model_info("cnn3d_dlae")["default_input"] == (1, 7, 13, 13)


def test_dlae_localizer_variant_and_bad_size() -> None:
    loc = create_model("cnn3d_dlae", out_channels=3)
    assert loc.head.out_features == 3 and not any(isinstance(x, nn.Softmax) for x in loc.modules())
    with pytest.raises(ValueError, match="too small"):
        create_model("cnn3d_dlae", input_size=(3, 13, 13))


@pytest.mark.parametrize("name", ["resnet3d_small", "densenet3d_small", "cnn3d_dlae"])
def test_classifier_contract(name: str) -> None:
    torch.manual_seed(0)
    info = model_info(name)
    size = (8, 16, 16) if name == "cnn3d_dlae" else (16, 32, 32)  # DenseNet downsamples 16x
    kw = {"input_size": size} if name == "cnn3d_dlae" else {}
    m = create_model(name, in_channels=1, out_channels=4, **kw)
    x = torch.randn(2, 1, *size)
    y = m(x)
    assert info["task"] == "classification" and y.shape == (2, 4)
    y.sum().backward()
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 4
    assert m.head.weight.grad is not None and m.head.weight.grad.abs().sum() > 0
