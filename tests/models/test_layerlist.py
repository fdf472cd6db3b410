"""DLAE layer-list language: every manual layer string in 2D/3D against Keras' shape rules, TF 'same' padding,
channels-last semantics, nested skips with every merge mode, errors, the reference's bug-table fixes, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctdl.models.layerlist import (
    ACTIVATIONS,
    MERGE_MODES,
    BackboneSpec,
    ConvSpec,
    LayerListError,
    build_layer_list,
    layer_output_shape,
    parse_layer,
    regularization_loss,
)
from ctdl.models.registry import count_parameters

TAIL = "he_normal:None:None:0.001:0.001"
IN2 = (9, 10, 3)  # odd/even sizes exercise 'same' padding
IN3 = (9, 10, 7, 3)


def _keras(t: torch.Tensor) -> tuple[int, ...]:
    """Batchless shape of a torch output in Keras' channels-last layout."""
    s = tuple(t.shape[1:])
    return s[1:] + s[:1] if len(s) > 1 else s


# Expected shapes below are hand-computed with Keras' rules: conv same ceil(n/s); conv valid floor((n-keff)/s)+1;
# transposed same n*s, valid n*s + max(keff - s, 0); pooling floor((n-p)/s)+1.
CASES_2D = [
    (f"Convolution 2D:4:(3, 3):(1, 1):same:(1, 1):{TAIL}", (9, 10, 4)),
    (f"Convolution 2D:4:(3, 3):(2, 2):same:(1, 1):{TAIL}", (5, 5, 4)),
    (f"Convolution 2D:4:(4, 4):(2, 2):same:(1, 1):{TAIL}", (5, 5, 4)),
    (f"Convolution 2D:4:(3, 3):(2, 2):valid:(1, 1):{TAIL}", (4, 4, 4)),
    (f"Convolution 2D:4:(3, 3):(1, 1):valid:(2, 2):{TAIL}", (5, 6, 4)),
    (f"Convolution 2D:4:(3, 3):(1, 1):same:(2, 2):{TAIL}", (9, 10, 4)),
    (f"Transpose convolution 2D:4:(3, 3):(2, 2):same:(1, 1):{TAIL}", (18, 20, 4)),
    (f"Transpose convolution 2D:4:(3, 3):(2, 2):valid:(1, 1):{TAIL}", (19, 21, 4)),
    (f"Transpose convolution 2D:4:(1, 1):(2, 2):valid:(1, 1):{TAIL}", (18, 20, 4)),
    (f"Transpose convolution 2D:4:(4, 4):(2, 2):same:(1, 1):{TAIL}", (18, 20, 4)),
    (f"Separable convolution 2D:4:(3, 3):(1, 1):same:(1, 1):{TAIL}", (9, 10, 4)),
    (f"Separable convolution 2D:4:(3, 3):(2, 2):valid:(1, 1):{TAIL}", (4, 4, 4)),
    (f"Depthwise separable convolution 2D:6:(3, 3):(1, 1):same:{TAIL}", (9, 10, 6)),
    (f"Depthwise separable convolution 2D:3:(3, 3):(2, 2):valid:{TAIL}", (4, 4, 3)),
    (f"Resize convolution 2D:4:(3, 3):(1, 1):(2, 2):same:(1, 1):{TAIL}", (18, 20, 4)),
    (f"Resize convolution 2D:4:(3, 3):(2, 2):(2, 2):valid:(1, 1):{TAIL}", (8, 9, 4)),
    ("Upsample 2D:(2, 3)", (18, 30, 3)),
    ("Zero padding 2D:((1, 1), (1, 1))", (11, 12, 3)),
    ("Zero padding 2D:((1, 2), (3, 4))", (12, 17, 3)),
    ("Cropping 2D:((0, 0), (0, 0))", (9, 10, 3)),
    ("Cropping 2D:((1, 2), (0, 3))", (6, 7, 3)),
    ("Max pooling 2D:(2, 2):(2, 2)", (4, 5, 3)),
    ("Max pooling 2D:(3, 3):(1, 1)", (7, 8, 3)),
    ("Average pooling 2D:(2, 2):(2, 2)", (4, 5, 3)),
    ("Global max pooling 2D", (3,)),
    ("Global average pooling 2D", (3,)),
    ("Batch normalization:0.99:0.001", IN2),
    *[(f"Activation:{a}", IN2) for a in ACTIVATIONS],
    ("Leaky reLU:0.2", IN2),
    ("ELU:1.0", IN2),
    ("Thresholded reLU:1.0", IN2),
    ("PreLU", IN2),
    ("Dense:5", (9, 10, 5)),
    ("Flatten", (270,)),
    ("Reshape:(90, 3)", (90, 3)),
    ("Reshape:(-1, 6)", (45, 6)),
    ("Permute:(2, 1, 3)", (10, 9, 3)),
    ("Dropout:0.5", IN2),
    ("Spatial dropout 2D:0.5", IN2),
    ("Gaussian dropout:0.5", IN2),
    ("Alpha dropout:0.5", IN2),
    ("Gaussian noise:0.1", IN2),
    ("Outer skip source:concatenate", IN2),
    ("Inner skip source:add", IN2),
    ("Hook connection source", IN2),
]
K3, S1, S2 = "(3, 3, 3)", "(1, 1, 1)", "(2, 2, 2)"
CASES_3D = [
    (f"Convolution 3D:4:{K3}:{S1}:same:{S1}:{TAIL}", (9, 10, 7, 4)),
    (f"Convolution 3D:4:{K3}:{S2}:same:{S1}:{TAIL}", (5, 5, 4, 4)),
    (f"Convolution 3D:4:{K3}:{S2}:valid:{S1}:{TAIL}", (4, 4, 3, 4)),
    (f"Convolution 3D:4:{K3}:{S1}:valid:{S2}:{TAIL}", (5, 6, 3, 4)),
    (f"Convolution 3D:4:{K3}:{S1}:valid::{TAIL}", (7, 8, 5, 4)),  # empty dilation (bug 15: 2-tuple crash)
    (f"Transpose convolution 3D:4:{K3}:{S2}:same:{S1}:{TAIL}", (18, 20, 14, 4)),
    (f"Transpose convolution 3D:4:{K3}:{S2}:valid:{S1}:{TAIL}", (19, 21, 15, 4)),
    (f"Transpose convolution 3D:4:{K3}:{S2}:same::{TAIL}", (18, 20, 14, 4)),
    (f"Resize convolution 3D:4:{K3}:{S1}:{S2}:same:{S1}:{TAIL}", (18, 20, 14, 4)),
    (f"Resize convolution 3D:4:{K3}:{S2}:(1, 1, 2):valid::{TAIL}", (4, 4, 6, 4)),
    (f"Separable convolution 3D:4:{K3}:{S1}:same:{S1}:{TAIL}", (9, 10, 7, 4)),  # DLAE: 2D only (3D left as TODO)
    (f"Depthwise separable convolution 3D:6:{K3}:{S2}:same:{TAIL}", (5, 5, 4, 6)),
    ("Upsample 3D:(2, 2, 2)", (18, 20, 14, 3)),
    ("Zero padding 3D:((1, 1), (2, 2), (0, 1))", (11, 14, 8, 3)),
    ("Cropping 3D:((1, 1), (2, 2), (0, 1))", (7, 6, 6, 3)),
    ("Max pooling 3D:(2, 2, 2):(2, 2, 2)", (4, 5, 3, 3)),
    ("Average pooling 3D:(2, 2, 2):(2, 2, 2)", (4, 5, 3, 3)),
    ("Global max pooling 3D", (3,)),
    ("Global average pooling 3D", (3,)),
    ("Spatial dropout 3D:0.5", IN3),
    ("Batch normalization:0.99:0.001", IN3),
    ("Activation:softmax", IN3),
    ("Leaky reLU:0.2", IN3),
    ("PreLU", IN3),
    ("Dense:5", (9, 10, 7, 5)),
    ("Flatten", (1890,)),
    ("Reshape:(90, 7, 3)", (90, 7, 3)),
    ("Permute:(3, 1, 2, 4)", (7, 9, 10, 3)),
    ("Gaussian noise:0.1", IN3),
    ("Outer skip source:concatenate", IN3),
    ("Hook connection source", IN3),
]


@pytest.mark.parametrize("dims,layer,expected",
                         [(2, s, e) for s, e in CASES_2D] + [(3, s, e) for s, e in CASES_3D],
                         ids=[f"2d-{s.split(':')[0]}-{i}" for i, (s, _) in enumerate(CASES_2D)]
                         + [f"3d-{s.split(':')[0]}-{i}" for i, (s, _) in enumerate(CASES_3D)])
def test_every_manual_layer_string_matches_keras_shape_rule(dims: int, layer: str, expected: tuple) -> None:
    inp = IN2 if dims == 2 else IN3
    net = build_layer_list([f"Input:{inp}", layer], dims=dims)
    assert net.shapes[-1] == expected
    assert layer_output_shape(parse_layer(layer, 1), inp) == expected
    torch.manual_seed(0)
    y = net(torch.randn(2, inp[-1], *inp[:-1]))
    assert _keras(y) == expected
    assert torch.isfinite(y).all()


# -- TensorFlow 'same' padding -----------------------------------------------------------------------------------
def _corr2d(x: np.ndarray, k: np.ndarray, stride: int) -> np.ndarray:
    kh, kw = k.shape
    oh, ow = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    return np.array([[np.sum(x[i * stride:i * stride + kh, j * stride:j * stride + kw] * k) for j in range(ow)]
                     for i in range(oh)])


@pytest.mark.parametrize("n,k,before,after", [(6, 3, 0, 1), (7, 4, 1, 2), (8, 4, 1, 1), (5, 3, 1, 1)])
def test_same_padding_puts_odd_pixel_bottom_right(n: int, k: int, before: int, after: int) -> None:
    """TF: total = max((ceil(n/2)-1)*2 + k - n, 0); total//2 on top/left, the rest bottom/right."""
    net = build_layer_list([f"Input:({n}, {n}, 1)", f"Convolution 2D:1:({k}, {k}):(2, 2):same:(1, 1):{TAIL}"])
    kernel = np.arange(1, k * k + 1, dtype=np.float64).reshape(k, k) / 10
    conv = net.layers[1].conv
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(kernel)[None, None])
        conv.bias.zero_()
    x = np.arange(n * n, dtype=np.float64).reshape(n, n) + 1
    out = net(torch.tensor(x, dtype=torch.float32)[None, None])[0, 0].detach().double().numpy()
    expected = _corr2d(np.pad(x, ((before, after), (before, after))), kernel, 2)
    assert out.shape == (math.ceil(n / 2),) * 2
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    wrong = _corr2d(np.pad(x, ((after, before), (after, before))), kernel, 2)
    if before != after:
        assert not np.allclose(out, wrong)


@pytest.mark.parametrize("n,k", [(8, 3), (8, 4), (6, 1), (9, 3)])
def test_transposed_same_is_adjoint_of_same_conv(n: int, k: int) -> None:
    """Keras/TF Conv2DTranspose 'same' is the gradient of a 'same' Conv2D with output n*s: <Cy, x> = <y, C^T x>."""
    torch.manual_seed(1)
    m = math.ceil(n / 2)
    conv = build_layer_list([f"Input:({m * 2}, {m * 2}, 2)", f"Convolution 2D:3:({k}, {k}):(2, 2):same:(1, 1):{TAIL}"])
    tconv = build_layer_list([f"Input:({m}, {m}, 3)",
                              f"Transpose convolution 2D:2:({k}, {k}):(2, 2):same:(1, 1):{TAIL}"])
    with torch.no_grad():
        tconv.layers[1].conv.weight.copy_(conv.layers[1].conv.weight)  # (3, 2, k, k) both ways
        tconv.layers[1].conv.bias.zero_()
        conv.layers[1].conv.bias.zero_()
    y = torch.randn(1, 2, 2 * m, 2 * m, dtype=torch.float32)
    x = torch.randn(1, 3, m, m)
    lhs = (conv(y) * x).sum().detach()
    rhs = (y * tconv(x)).sum().detach()
    assert tconv(x).shape == (1, 2, 2 * m, 2 * m)
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-4, abs=1e-4)


# -- channels-last semantics -------------------------------------------------------------------------------------
def _np_input(shape_keras: tuple) -> tuple[np.ndarray, torch.Tensor]:
    a = np.arange(np.prod(shape_keras), dtype=np.float32).reshape(1, *shape_keras)
    return a, torch.from_numpy(np.moveaxis(a, -1, 1).copy())


def test_flatten_reshape_permute_follow_channels_last_order() -> None:
    a, t = _np_input((2, 3, 4))
    np.testing.assert_array_equal(build_layer_list(["Input:(2, 3, 4)", "Flatten"])(t).numpy(), a.reshape(1, -1))
    out = build_layer_list(["Input:(2, 3, 4)", "Reshape:(6, 4)"])(t)  # (1, 4, 6) in torch layout
    np.testing.assert_array_equal(np.moveaxis(out.numpy(), 1, -1), a.reshape(1, 6, 4))
    out = build_layer_list(["Input:(2, 3, 4)", "Permute:(3, 1, 2)"])(t)
    np.testing.assert_array_equal(np.moveaxis(out.numpy(), 1, -1), a.transpose(0, 3, 1, 2))
    a3, t3 = _np_input((2, 3, 2, 2))
    out = build_layer_list(["Input:(2, 3, 2, 2)", "Permute:(2, 1, 3, 4)", "Flatten"])(t3)
    np.testing.assert_array_equal(out.numpy(), a3.transpose(0, 2, 1, 3, 4).reshape(1, -1))


def test_dense_acts_on_channel_axis_and_softmax_sums_over_channels() -> None:
    net = build_layer_list(["Input:(3, 4, 2)", "Dense:5", "Activation:softmax"])
    x = torch.randn(2, 2, 3, 4)
    w, b = net.layers[1].linear.weight, net.layers[1].linear.bias
    logits = torch.einsum("nchw,oc->nohw", x, w) + b[None, :, None, None]
    torch.testing.assert_close(net(x), torch.softmax(logits, 1))
    torch.testing.assert_close(net(x).sum(1), torch.ones(2, 3, 4))


def test_activation_values_match_keras_definitions() -> None:
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.5, 1.0, 1.5, 4.0]])

    def run(layer: str) -> torch.Tensor:
        return build_layer_list(["Input:(7,)", layer])(x)

    torch.testing.assert_close(run("Activation:hard_sigmoid"), torch.clamp(0.2 * x + 0.5, 0, 1))
    torch.testing.assert_close(run("Thresholded reLU:1.0"), torch.where(x > 1.0, x, torch.zeros_like(x)))
    torch.testing.assert_close(run("Leaky reLU:0.2"), torch.where(x > 0, x, 0.2 * x))
    torch.testing.assert_close(run("ELU:0.5"), torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1)))
    torch.testing.assert_close(run("Activation:softsign"), x / (1 + x.abs()))
    torch.testing.assert_close(run("Activation:linear"), x)


def test_upsample_pooling_padding_cropping_values() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    up = build_layer_list(["Input:(4, 4, 1)", "Upsample 2D:(2, 2)"])(x)
    torch.testing.assert_close(up[0, 0, :2, :2], torch.zeros(2, 2))
    torch.testing.assert_close(up[0, 0, 6:, 6:], torch.full((2, 2), 15.0))
    mp = build_layer_list(["Input:(4, 4, 1)", "Max pooling 2D:(2, 2):(2, 2)"])(x)
    torch.testing.assert_close(mp[0, 0], torch.tensor([[5.0, 7.0], [13.0, 15.0]]))
    ap = build_layer_list(["Input:(4, 4, 1)", "Average pooling 2D:(2, 2):(2, 2)"])(x)
    torch.testing.assert_close(ap[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    zp = build_layer_list(["Input:(4, 4, 1)", "Zero padding 2D:((1, 0), (0, 2))"])(x)
    assert zp.shape == (1, 1, 5, 6) and zp[0, 0, 0].abs().sum() == 0 and zp[0, 0, 1, 0] == 0.0
    cr = build_layer_list(["Input:(4, 4, 1)", "Cropping 2D:((1, 0), (0, 2))"])(x)
    torch.testing.assert_close(cr[0, 0], x[0, 0, 1:, :2])


def test_keras_parameter_counts_and_lenet5() -> None:
    def n(layers: list[str]) -> int:
        return count_parameters(build_layer_list(layers))

    assert n(["Input:(8, 8, 3)", f"Convolution 2D:8:(3, 3):(1, 1):same:(1, 1):{TAIL}"]) == 3 * 3 * 3 * 8 + 8
    assert n(["Input:(8, 8, 3)", f"Transpose convolution 2D:4:(3, 3):(2, 2):same:(1, 1):{TAIL}"]) == 108 + 4
    assert n(["Input:(8, 8, 3)", f"Separable convolution 2D:4:(3, 3):(1, 1):same:(1, 1):{TAIL}"]) == 27 + 12 + 4
    assert n(["Input:(8, 8, 3)", f"Depthwise separable convolution 2D:6:(3, 3):(1, 1):same:{TAIL}"]) == 54 + 6
    assert n(["Input:(8, 8, 3)", "PreLU"]) == 8 * 8 * 3  # one alpha per element
    assert n(["Input:(8, 8, 3)", "Batch normalization:0.99:0.001"]) == 6
    lenet5 = ["Input:(32, 32, 1)", f"Convolution 2D:6:(5, 5):(1, 1):valid:(1, 1):{TAIL}",
              "Batch normalization:0.99:0.001", "Activation:relu", "Max pooling 2D:(2, 2):(2, 2)",
              f"Convolution 2D:16:(5, 5):(1, 1):same:(1, 1):{TAIL}", "Batch normalization:0.99:0.001",
              "Activation:relu", "Max pooling 2D:(2, 2):(2, 2)", "Flatten", "Dense:120", "Activation:relu",
              "Dense:84", "Activation:relu", "Dense:10", "Activation:softmax"]
    assert n(lenet5) == 107_830  # the figure for DLAE's prebuilt lenet5


def _unet(dims: int, widths: tuple, classes: int, inp: str) -> list[str]:
    """DLAE's prebuilt U-Net pattern (conv-BN-ReLU x2 per level, resize-conv decoder, concat skips)."""
    k, s, p = str((3,) * dims), str((1,) * dims), str((2,) * dims)

    def cbr(m: int) -> list[str]:
        return [f"Convolution {dims}D:{m}:{k}:{s}:same:{s}:{TAIL}", "Batch normalization:0.99:0.001",
                "Activation:relu"]

    layers = [f"Input:{inp}"]
    for m in widths[:-1]:
        layers += cbr(m) + cbr(m) + ["Outer skip source:concatenate"]
        layers += (["Dropout:0.5"] if m == widths[-2] else []) + [f"Max pooling {dims}D:{p}:{p}"]
    layers += cbr(widths[-1]) + cbr(widths[-1]) + ["Dropout:0.5"]
    for m in reversed(widths[:-1]):
        layers += [f"Resize convolution {dims}D:{m}:{k}:{s}:{p}:same:{s}:{TAIL}", "Batch normalization:0.99:0.001",
                   "Activation:relu", "Outer skip target:concatenate"] + cbr(m) + cbr(m)
    return layers + cbr(classes)[:2] + ["Activation:softmax"]


def test_prebuilt_unet_counts_match_dlae() -> None:
    with torch.device("meta"):  # counts only: no memory, no init time
        n2 = build_layer_list(_unet(2, (64, 128, 256, 512, 1024), 2, "(512, 512, 1)"))
        n3 = build_layer_list(_unet(3, (64, 128, 256, 512, 1024), 2, "(128, 128, 64, 1)"))
    assert count_parameters(n2) == 34_526_982 and n2.shapes[-1] == (512, 512, 2)
    assert n2.divisible_by == 16 and n3.divisible_by == 16
    assert count_parameters(n3) == 103_539_846 and n3.shapes[-1] == (128, 128, 64, 2)


def test_he_normal_is_keras_truncated_normal() -> None:
    torch.manual_seed(0)
    w = build_layer_list(["Input:(8, 8, 16)", f"Convolution 2D:64:(3, 3):(1, 1):same:(1, 1):{TAIL}"]).layers[1]
    w = w.conv.weight.detach()
    std = math.sqrt(2 / (16 * 9))
    assert float(w.std()) == pytest.approx(std, rel=0.05)
    assert float(w.abs().max()) <= 2 * std / 0.87962566 + 1e-6


# -- skips and hooks ---------------------------------------------------------------------------------------------
def _hand_merge(mode: str, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return {"concatenate": lambda: torch.cat([skip, x], 1), "add": lambda: skip + x, "subtract": lambda: skip - x,
            "multiply": lambda: skip * x, "average": lambda: 0.5 * (skip + x),
            "maximum": lambda: torch.where(skip > x, skip, x)}[mode]()


@pytest.mark.parametrize("mode", MERGE_MODES)
def test_nested_outer_and_inner_skips_every_merge_mode(mode: str) -> None:
    layers = ["Input:(8, 8, 2)",
              f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{TAIL}",
              f"Outer skip source:{mode}",
              f"Convolution 2D:2:(3, 3):(2, 2):same:(1, 1):{TAIL}",
              f"Inner skip source:{mode}",
              f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{TAIL}",
              f"Inner skip target:{mode}",
              f"Resize convolution 2D:2:(3, 3):(1, 1):(2, 2):same:(1, 1):{TAIL}",
              f"Outer skip target:{mode}"]
    net = build_layer_list(layers)
    ch = 4 if mode == "concatenate" else 2
    assert net.shapes[6] == (4, 4, ch) and net.shapes[-1] == (8, 8, ch)
    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 8)
    L = net.layers
    a = L[1](x)
    b = L[3](a)
    d = _hand_merge(mode, b, L[5](b))
    expected = _hand_merge(mode, a, L[7](d))
    torch.testing.assert_close(net(x), expected)


def test_inner_skips_nest_lifo_bug14() -> None:
    """DLAE merged every inner target with the *first* inner source; nested inner skips now pair LIFO."""
    layers = ["Input:(4, 4, 1)", "Inner skip source:subtract", "Activation:relu", "Inner skip source:subtract",
              "Activation:sigmoid", "Inner skip target:subtract", "Activation:tanh", "Inner skip target:subtract"]
    x = torch.randn(3, 1, 4, 4)
    b = torch.relu(x)
    expected = x - torch.tanh(b - torch.sigmoid(b))
    dlae = x - torch.tanh(x - torch.sigmoid(b))  # what the original computed
    out = build_layer_list(layers)(x)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, dlae)


def test_hooks_are_returned_in_order() -> None:
    layers = ["Input:(8, 8, 1)", f"Convolution 2D:3:(3, 3):(1, 1):same:(1, 1):{TAIL}", "Hook connection source",
              "Max pooling 2D:(2, 2):(2, 2)", "Hook connection source", "Global max pooling 2D"]
    net = build_layer_list(layers)
    assert net.hook_shapes == ((8, 8, 3), (4, 4, 3))
    x = torch.randn(1, 1, 8, 8)
    out, hooks = net.forward_with_hooks(x)
    assert [_keras(h) for h in hooks] == [(8, 8, 3), (4, 4, 3)]
    torch.testing.assert_close(out, hooks[1].amax((2, 3)))


def test_dlae_example_configs_build_with_keras_shapes() -> None:
    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "dlae_configs"
    if not root.is_dir():
        pytest.skip("shared/data/dlae_configs not present")

    def lists(name: str) -> dict:
        return json.loads((root / name).read_text())["layers"]

    with torch.device("meta"):
        fcn = build_layer_list(lists("example_fcn.json")["serial_layer_list"])
        gan = lists("example_gan.json")
        gen = build_layer_list(gan["generator_layer_list"])
        disc = build_layer_list(gan["discriminator_layer_list"])
        bbd = build_layer_list(lists("example_bbd.json")["serial_layer_list"])
    assert fcn.shapes[-1] == (512, 512, 4) and gen.shapes[-1] == (512, 512, 1) and disc.shapes[-1] == (32, 32, 1)
    # SSD512-like list: DLAE's pooling is 'valid', so its 3x3/1 pool5 shrinks 32 -> 30 (as Keras builds it)
    assert bbd.hook_shapes == ((64, 64, 512), (30, 30, 1024), (15, 15, 512), (8, 8, 256), (4, 4, 256),
                               (2, 2, 256), (1, 1, 256))


class _FakeBackbone(torch.nn.Module):
    """Stands in for a prebuilt backbone: returns (output, taps finest first)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        t1 = self.c1(x)
        t2 = self.c2(t1)
        return F.max_pool2d(t2, 2), [t1, t2]


def test_backbone_entry_feeds_skip_taps() -> None:
    layers = ["Input:(16, 16, 1)", "VGG16:False:none:(16, 16, 1):True:True",
              "Upsample 2D:(2, 2)", "Outer skip target:concatenate", "Upsample 2D:(2, 2)",
              "Outer skip target:concatenate"]
    spec = parse_layer(layers[1], 1)
    assert isinstance(spec, BackboneSpec) and spec.skips and spec.hooks and spec.weights is None
    net = build_layer_list(layers, backbone_factory=lambda s: _FakeBackbone())
    assert net.hook_shapes == ((16, 16, 4), (8, 8, 8)) and net.shapes[-1] == (16, 16, 4 + 8 + 8)
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 20, 16, 16)


# -- errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers,pattern", [
    (["Input:(8, 8, 1)", "Outer skip source:concatenate", "Max pooling 2D:(2, 2):(2, 2)",
      "Outer skip target:concatenate"],
     r"entry 3 'Outer skip target:concatenate'.*entry 1 'Outer skip source:concatenate'.*\(8, 8, 1\).*\(4, 4, 1\)"),
    (["Input:(8, 8, 1)", "Inner skip source:add", f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{TAIL}",
      "Inner skip target:add"], r"entry 3 'Inner skip target:add'.*add needs equal shapes"),
    (["Input:(8, 8, 1)", "Outer skip target:add"], r"entry 1 'Outer skip target:add'.*no open 'Outer skip source'"),
    (["Input:(8, 8, 1)", "Inner skip target:"], r"entry 1 'Inner skip target:'.*field\(s\) mode required"),
    (["Input:(8, 8, 1)", "Convolution 4D:2:(3, 3)"], r"entry 1 'Convolution 4D:2:\(3, 3\)'.*unknown layer name"),
    (["Input:(8, 8, 1)", "Convolution 2D:2:(3, 3):(1, 1):full"], r"entry 1 .*field 'padding'.*same, valid"),
    (["Input:(8, 8, 1)", "Convolution 3D:2:(3, 3):(1, 1, 1):same"], r"entry 1 .*field 'kernel'.*3-tuple"),
    (["Input:(8, 8, 1)", "Convolution 2D"], r"entry 1 'Convolution 2D'.*maps, kernel required"),
    (["Input:(8, 8, 1)", f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{TAIL}:7"], r"entry 1 .*at most 10 field"),
    (["Input:(8, 8, 1)", f"Convolution 3D:2:(3, 3, 3):(1, 1, 1):same:(1, 1, 1):{TAIL}"],
     r"entry 1 .*expects a 3D feature map.*\(8, 8, 1\)"),
    (["Input:(8, 8, 1)", "Activation:swish"], r"entry 1 'Activation:swish'.*relu, tanh, sigmoid, softmax"),
    (["Input:(8, 8, 1)", "Hook connection target"], r"entry 1 'Hook connection target'.*not a layer"),
    (["Input:(8, 8, 1)", "Permute:(1, 1, 3)"], r"entry 1 'Permute:\(1, 1, 3\)'.*permutation"),
    (["Input:(8, 8, 1)", "Permute:(2, 1)"], r"entry 1 'Permute:\(2, 1\)'.*has 2 axes"),
    (["Input:(8, 8, 1)", "Reshape:(7, 7)"], r"entry 1 'Reshape:\(7, 7\)'.*cannot reshape"),
    (["Input:(8, 8, 2)", f"Depthwise separable convolution 2D:3:(3, 3):(1, 1):same:{TAIL}"],
     r"entry 1 .*multiple of its input channels \(2\)"),
    (["Input:(3, 3, 1)", "Max pooling 2D:(4, 4):(1, 1)"], r"entry 1 .*empty output"),
    (["Dense:3"], r"entry 0 'Dense:3'.*first entry must be 'Input"),
    (["Input:(8, 8, 1)", "Input:(8, 8, 1)"], r"entry 1 'Input:\(8, 8, 1\)'.*only be the first"),
    (["Input:(8, 8, 1)", "Dropout:1.5"], r"entry 1 'Dropout:1.5'.*field 'rate'"),
    (["Input:(8, 8, 1)", "Dense:3", "VGG16:False:none:(8, 8, 1):False:False"], r"entry 2 .*directly follow"),
])
def test_errors_name_index_and_string(layers: list[str], pattern: str) -> None:
    with pytest.raises(LayerListError, match=pattern):
        build_layer_list(layers)


def test_misplaced_last_skip_target_fails_at_build_bug25() -> None:
    """densenet169_unet placed its last skip target after the final upsampling; ctdl names the layer."""
    layers = ["Input:(16, 16, 1)", "Outer skip source:concatenate", "Max pooling 2D:(2, 2):(2, 2)",
              "Outer skip source:concatenate", "Max pooling 2D:(2, 2):(2, 2)", "Upsample 2D:(2, 2)",
              "Outer skip target:concatenate", "Upsample 2D:(2, 2)", "Upsample 2D:(2, 2)",
              "Outer skip target:concatenate"]
    with pytest.raises(LayerListError, match=r"entry 9 'Outer skip target:concatenate'.*entry 1 .*\(32, 32, 2\)"):
        build_layer_list(layers)


def test_input_shape_and_dims_arguments() -> None:
    layers = ["Input:(512, 512, 1)", f"Convolution 2D:2:(3, 3):(2, 2):same:(1, 1):{TAIL}"]
    net = build_layer_list(layers, input_shape=(3, 9, 7), dims=2)
    assert net.shapes == ((9, 7, 3), (5, 4, 2)) and net.input_shape == (3, 9, 7) and net.output_shape == (2, 5, 4)
    assert build_layer_list(layers, in_channels=4).layers[1].conv.in_channels == 4
    with pytest.raises(LayerListError, match=r"entry 0 'Input:\(512, 512, 1\)'.*3D input"):
        build_layer_list(layers, dims=3)
    with pytest.raises(LayerListError, match=r"entry 0 .*rank"):
        build_layer_list(layers, input_shape=(1, 8, 8, 8))


# -- bug table (reference section 10) fixes ----------------------------------------------------------------------
def test_depthwise_convolution_builds_and_is_per_channel_bug15() -> None:
    """DLAE passed positional arguments to DepthwiseConv2D and always crashed."""
    net = build_layer_list(["Input:(6, 6, 3)", f"Depthwise separable convolution 2D:6:(3, 3):(1, 1):same:{TAIL}"])
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    x2 = x.clone()
    x2[:, 1] += 1.0  # change input channel 1 only: only its two output maps (2, 3) move (Keras order c*mult + m)
    d = (net(x2) - net(x)).abs().amax((0, 2, 3))
    assert d[[2, 3]].min() > 0 and d[[0, 1, 4, 5]].max() == 0
    spec = parse_layer(f"Depthwise separable convolution 2D:6:(3, 3):(2, 2):same:(2, 2):{TAIL}", 1)
    assert isinstance(spec, ConvSpec) and spec.dilation == (2, 2)  # the form with a dilation field also parses


def test_empty_fields_take_keras_defaults_bug15() -> None:
    bn = build_layer_list(["Input:(4, 4, 2)", "Batch normalization::"]).layers[1]
    assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)
    assert build_layer_list(["Input:(4, 4, 2)", "Leaky reLU:"]).layers[1].negative_slope == pytest.approx(0.3)
    assert build_layer_list(["Input:(4, 4, 2)", "ELU"]).layers[1].alpha == pytest.approx(1.0)
    assert build_layer_list(["Input:(4, 4, 2)", "Thresholded reLU:"]).layers[1].threshold == pytest.approx(1.0)
    conv3 = parse_layer(f"Transpose convolution 3D:2:(3, 3, 3):(2, 2, 2):same::{TAIL}", 1)
    assert isinstance(conv3, ConvSpec) and conv3.dilation == (1, 1, 1)


def test_permute_is_parsed_bug15() -> None:
    """DLAE passed the unparsed string to Permute (always failed); the manual's example is 0-based."""
    spec = parse_layer("Permute:(1, 0, 2)", 4)
    assert spec.dims == (2, 1, 3)  # type: ignore[attr-defined]
    a, t = _np_input((2, 3, 4))
    out = build_layer_list(["Input:(2, 3, 4)", "Permute:(1, 0, 2)"])(t)
    np.testing.assert_array_equal(np.moveaxis(out.numpy(), 1, -1), a.transpose(0, 2, 1, 3))


def test_errors_are_raised_not_collected_bug14() -> None:
    """DLAE collected (and partly swallowed) errors; here the first bad entry raises, later ones are not reached."""
    with pytest.raises(LayerListError, match=r"^layer list entry 2 'Dense:0'"):
        build_layer_list(["Input:(4, 4, 1)", "Flatten", "Dense:0", "Foo"])


def test_separable_kernel_regulariser_covers_both_kernels() -> None:
    net = build_layer_list(["Input:(5, 5, 2)",
                            "Separable convolution 2D:3:(3, 3):(1, 1):same:(1, 1):he_normal:l1:None:0.01:0.0"])
    conv = net.layers[1]
    expected = 0.01 * (conv.depthwise.weight.abs().sum() + conv.pointwise.weight.abs().sum())
    torch.testing.assert_close(regularization_loss(net), expected)


# -- regularisers ------------------------------------------------------------------------------------------------
def test_kernel_and_activity_regularisers() -> None:
    net = build_layer_list(["Input:(6, 6, 2)",
                            "Convolution 2D:4:(3, 3):(1, 1):same:(1, 1):he_normal:l2:l1_l2:0.01:0.0005",
                            "Activation:relu",
                            f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{TAIL}"])
    x = torch.randn(2, 2, 6, 6)
    y = net.layers[1](x)
    w = net.layers[1].conv.weight
    expected = 0.0005 * w.pow(2).sum() + 0.01 * y.abs().sum() + 0.0005 * y.pow(2).sum()
    torch.testing.assert_close(regularization_loss(net), expected)  # activity of the latest forward (layer 1 above)
    net.zero_grad()
    net(x)
    (regularization_loss(net) - 0.01 * net.layers[1](x).abs().sum()
     - 0.0005 * net.layers[1](x).pow(2).sum()).backward()
    torch.testing.assert_close(w.grad, 2 * 0.0005 * w.detach())
    plain = build_layer_list(["Input:(6, 6, 2)", f"Convolution 2D:2:(3, 3):(1, 1):same:(1, 1):{TAIL}"])
    plain(x)
    assert float(regularization_loss(plain)) == 0.0


def test_dropouts_are_identity_in_eval_and_noisy_in_training() -> None:
    x = torch.ones(4, 8, 6, 6)
    for layer in ("Dropout:0.5", "Spatial dropout 2D:0.5", "Gaussian dropout:0.5", "Alpha dropout:0.5",
                  "Gaussian noise:0.1"):
        net = build_layer_list(["Input:(6, 6, 8)", layer])
        torch.testing.assert_close(net.eval()(x), x)
        assert not torch.allclose(net.train()(x), x)
    torch.manual_seed(0)
    sd = build_layer_list(["Input:(6, 6, 8)", "Spatial dropout 2D:0.5"]).train()(x)
    per_map = sd.flatten(2)
    assert bool(((per_map == 0).all(-1) | (per_map == 2).all(-1)).all())  # whole channels dropped, as Keras
    torch.manual_seed(0)
    gd = build_layer_list(["Input:(6, 6, 8)", "Gaussian dropout:0.2"]).train()(torch.ones(64, 8, 6, 6))
    assert float(gd.std()) == pytest.approx(math.sqrt(0.2 / 0.8), rel=0.05)


# -- training ----------------------------------------------------------------------------------------------------
def _train(layers: list[str], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    torch.manual_seed(0)
    net = build_layer_list(layers, logits=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        out = net(x)
        loss = F.cross_entropy(out, y) + regularization_loss(net)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_train_step_2d_unet_with_skips() -> None:
    c = "(3, 3):(1, 1):same:(1, 1):he_normal"
    layers = ["Input:(16, 16, 1)", f"Convolution 2D:4:{c}:l2:None:0.0:0.0001", "Batch normalization:0.99:0.001",
              "Activation:relu", "Outer skip source:concatenate", "Max pooling 2D:(2, 2):(2, 2)",
              f"Convolution 2D:8:{c}", "Activation:relu", "Inner skip source:add", f"Convolution 2D:8:{c}",
              "Leaky reLU:0.1", "Inner skip target:add",
              f"Resize convolution 2D:4:(3, 3):(1, 1):(2, 2):same:(1, 1):he_normal", "Activation:relu",
              "Outer skip target:concatenate", f"Convolution 2D:3:{c}", "Activation:softmax"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 0] > 1).long()
    losses = _train(layers, x, y)
    assert losses[-1] < losses[0]


def test_train_step_3d_unet_with_skips() -> None:
    c = "(3, 3, 3):(1, 1, 1):same:(1, 1, 1):he_normal"
    layers = ["Input:(8, 8, 8, 1)", f"Convolution 3D:4:{c}", "Activation:relu", "Outer skip source:concatenate",
              "Max pooling 3D:(2, 2, 2):(2, 2, 2)", f"Convolution 3D:8:{c}", "Activation:relu",
              "Transpose convolution 3D:4:(2, 2, 2):(2, 2, 2):same:(1, 1, 1):he_normal", "Outer skip target:add",
              f"Convolution 3D:2:{c}", "Activation:softmax"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, 8, generator=g)
    y = (x[:, 0] > 0).long()
    losses = _train(layers, x, y)
    assert losses[-1] < losses[0]


def test_segmentation_build_model_uses_layer_list() -> None:
    from ctdl.config.schema import ExperimentConfig
    from ctdl.models.layerlist import LayerListNet
    from ctdl.tasks.segmentation import build_model

    layers = ["Input:(64, 64, 16, 3)", f"Convolution 3D:2:(3, 3, 3):(1, 1, 1):same:(1, 1, 1):{TAIL}",
              "Activation:softmax"]
    cfg = ExperimentConfig.model_validate({"data": {"format": "kits19", "root": "x"}, "model": {"layers": layers}})
    net = build_model(cfg)
    assert isinstance(net, LayerListNet) and net.layers[1].conv.in_channels == cfg.preprocessing.repeat_channels
    x = torch.randn(1, cfg.preprocessing.repeat_channels, 8, 8, 8)
    assert not torch.allclose(net(x).sum(1), torch.ones(1, 8, 8, 8))  # logits: the softmax is left to the loss
