import pytest
import torch

from ctdl.models.vgg import vgg_features


def test_vgg16_features_layout_and_count() -> None:
    f = vgg_features(16)
    convs = [i for i, m in enumerate(f) if isinstance(m, torch.nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # the common features.N layout
    assert sum(p.numel() for p in f.parameters()) == 14_714_688  # Keras VGG16(include_top=False)
    assert f(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_vgg_bad_depth() -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        vgg_features(17)
