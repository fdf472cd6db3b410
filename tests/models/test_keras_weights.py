"""Keras .h5 weights: layout conversion, strict key checks, VGG16 end to end, and load_pretrained for .pt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctdl.errors import InputError
from ctdl.models import create_model
from ctdl.models.backbones._common import SeparableConv2d
from ctdl.models.keras_weights import load_keras_h5, load_pretrained, read_keras_h5, write_keras_h5

VGG16_PLAN = [(1, 1, 64), (1, 2, 64), (2, 1, 128), (2, 2, 128), (3, 1, 256), (3, 2, 256), (3, 3, 256),
              (4, 1, 512), (4, 2, 512), (4, 3, 512), (5, 1, 512), (5, 2, 512), (5, 3, 512)]


def _vgg16_keras_arrays(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    layers, cin = {}, 3
    for b, i, c in VGG16_PLAN:
        layers[f"block{b}_conv{i}"] = {"kernel": (rng.standard_normal((3, 3, cin, c)) * 0.05).astype(np.float32),
                                       "bias": rng.standard_normal(c).astype(np.float32)}
        cin = c
    return layers


def test_vgg16_keras_h5_loads_exactly(tmp_path: Path) -> None:
    arrays = _vgg16_keras_arrays()
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_h5(path, arrays)
    assert set(read_keras_h5(path)) == set(arrays)
    model = create_model("vgg16", in_channels=3, out_channels=10, input_size=(32, 32))
    head = load_keras_h5(model, path)
    assert head == ["fc1", "fc2", "predictions"]  # a notop file: the head stays initialised, and is reported
    mods = model.keras_modules()
    for name, w in arrays.items():  # every converted tensor equals its source in PyTorch's layout
        assert torch.equal(mods[name].weight, torch.from_numpy(w["kernel"].transpose(3, 2, 0, 1).copy()))
        assert torch.equal(mods[name].bias, torch.from_numpy(w["bias"]))
    # first convolution (3x3 same, ReLU) on a small NHWC input, in NumPy from the same arrays
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 6, 7, 3)).astype(np.float32)
    k, b = arrays["block1_conv1"]["kernel"], arrays["block1_conv1"]["bias"]
    xp = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    ref = np.zeros((6, 7, 64), np.float64)
    for dy in range(3):
        for dx in range(3):
            ref += xp[dy:dy + 6, dx:dx + 7, :] @ k[dy, dx]
    ref = np.maximum(ref + b, 0)
    with torch.no_grad():
        first = model.backbone.features[1](model.backbone.features[0](torch.from_numpy(x).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(first[0].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_missing_unexpected_and_shape_errors_are_listed(tmp_path: Path) -> None:
    arrays = _vgg16_keras_arrays()
    del arrays["block5_conv3"]
    arrays["block6_conv1"] = {"kernel": np.zeros((3, 3, 512, 8), np.float32), "bias": np.zeros(8, np.float32)}
    path = tmp_path / "bad.h5"
    write_keras_h5(path, arrays)
    model = create_model("vgg16_ssd", in_channels=1)  # 1 input channel: block1_conv1 does not fit 3
    with pytest.raises(InputError) as err:
        load_keras_h5(model, path)
    msg = str(err.value)
    assert "bad.h5" in msg
    assert "missing in the file: block5_conv3" in msg
    assert "not in the model: block6_conv1" in msg
    assert "block1_conv1/weight (file (64, 3, 3, 3) after conversion, model (64, 1, 3, 3))" in msg


class _Tiny(nn.Module):
    """Every Keras layer kind the converter handles, with Keras names."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 3)
        self.dw = nn.Conv2d(2, 4, 3, padding=1, groups=2, bias=False)  # depth multiplier 2
        self.sep = SeparableConv2d(2, 5)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(4, 6)

    def keras_modules(self) -> dict[str, nn.Module]:
        return {"dense_1": self.dense, "dw_1": self.dw, "sep_1": self.sep, "bn_1": self.bn, "conv_preds": self.head}


def test_each_layer_kind_converts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = {
        "dense_1": {"kernel": rng.standard_normal((4, 3)).astype(np.float32), "bias": rng.standard_normal(3).astype(np.float32)},
        "dw_1": {"depthwise_kernel": rng.standard_normal((3, 3, 2, 2)).astype(np.float32)},
        "sep_1": {"depthwise_kernel": rng.standard_normal((3, 3, 2, 1)).astype(np.float32),
                  "pointwise_kernel": rng.standard_normal((1, 1, 2, 5)).astype(np.float32)},
        "bn_1": {"gamma": np.array([1.5, 2.0], np.float32), "beta": np.array([0.1, -0.2], np.float32),
                 "moving_mean": np.array([0.3, 0.4], np.float32), "moving_variance": np.array([2.0, 3.0], np.float32)},
        "conv_preds": {"kernel": rng.standard_normal((1, 1, 4, 6)).astype(np.float32),
                       "bias": np.zeros(6, np.float32)},
    }
    path = tmp_path / "tiny.h5"
    write_keras_h5(path, a)
    m = _Tiny()
    assert load_keras_h5(m, path) == []
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(m.dense(torch.from_numpy(x)).detach().numpy(),
                               x @ a["dense_1"]["kernel"] + a["dense_1"]["bias"], atol=1e-5)
    np.testing.assert_allclose(m.head(torch.from_numpy(x)).detach().numpy(), x @ a["conv_preds"]["kernel"][0, 0],
                               atol=1e-5)
    # depthwise: output channel i*m + j = input channel i convolved with k[:, :, i, j]
    img = rng.standard_normal((1, 5, 5, 2)).astype(np.float32)
    xp = np.pad(img[0], ((1, 1), (1, 1), (0, 0)))
    k = a["dw_1"]["depthwise_kernel"]
    ref = np.zeros((5, 5, 2, 2))
    for dy in range(3):
        for dx in range(3):
            ref += xp[dy:dy + 5, dx:dx + 5, :, None] * k[dy, dx]
    y = m.dw(torch.from_numpy(img).permute(0, 3, 1, 2))[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(y, ref.reshape(5, 5, 4), atol=1e-5)
    # separable = depthwise then pointwise
    kd, kp = a["sep_1"]["depthwise_kernel"], a["sep_1"]["pointwise_kernel"]
    d = np.zeros((5, 5, 2))
    for dy in range(3):
        for dx in range(3):
            d += xp[dy:dy + 5, dx:dx + 5, :] * kd[dy, dx, :, 0]
    y = m.sep(torch.from_numpy(img).permute(0, 3, 1, 2))[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(y, d @ kp[0, 0], atol=1e-5)
    assert m.bn.weight.tolist() == [1.5, 2.0] and m.bn.running_var.tolist() == [2.0, 3.0]
    assert m.bn.bias.tolist() == pytest.approx([0.1, -0.2]) and m.bn.running_mean.tolist() == pytest.approx([0.3, 0.4])


def test_load_pretrained_state_dict_and_errors(tmp_path: Path) -> None:
    src = create_model("lenet5")
    path = tmp_path / "lenet.pt"
    torch.save(src.state_dict(), path)
    dst = create_model("lenet5")
    assert load_pretrained(dst, path) == []
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    state = src.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.5.bias"]
    torch.save(state, path)
    with pytest.raises(InputError, match=r"lenet\.pt.*missing keys: classifier\.5\.bias.*unexpected keys: extra\.weight"):
        load_pretrained(dst, path)
    with pytest.raises(InputError, match="no Keras layer names"):
        write_keras_h5(tmp_path / "x.h5", {"a": {"bias": np.zeros(1, np.float32)}})
        load_pretrained(dst, tmp_path / "x.h5")
    with pytest.raises(InputError, match="not found"):
        load_pretrained(create_model("vgg16_ssd"), tmp_path / "nope.h5")


def _to_keras(module: nn.Module) -> dict[str, np.ndarray]:
    """Inverse of the converter (PyTorch -> Keras layout) for a round trip through an .h5 file."""
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    if isinstance(module, nn.BatchNorm2d):
        return {"gamma": sd["weight"], "beta": sd["bias"], "moving_mean": sd["running_mean"],
                "moving_variance": sd["running_var"]}
    if isinstance(module, nn.Linear):
        return {"kernel": sd["weight"].T, "bias": sd["bias"]}
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels and module.groups > 1:
        out = {"depthwise_kernel": sd["weight"].transpose(2, 3, 0, 1)}
    else:
        out = {"kernel": sd["weight"].transpose(2, 3, 1, 0)}
    if "bias" in sd:
        out["bias"] = sd["bias"]
    return out


@pytest.mark.parametrize("name", ["mobilenet", "mobilenetv2"])
def test_keras_roundtrip_through_create_model(name: str, tmp_path: Path) -> None:
    """Every layer of a randomly initialised backbone written in Keras layout (with top) and loaded back by
    ``create_model(..., pretrained=PATH)`` gives back the same tensors."""
    torch.manual_seed(0)
    src = create_model(name, in_channels=3, out_channels=7)
    for m in src.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / f"{name}.h5"
    write_keras_h5(path, {k: _to_keras(m) for k, m in src.keras_modules().items()})
    torch.manual_seed(1)
    dst = create_model(name, in_channels=3, out_channels=7, pretrained=str(path))
    a, b = src.state_dict(), dst.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(a[k], b[k]), k
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(src.eval()(x), dst.eval()(x))
