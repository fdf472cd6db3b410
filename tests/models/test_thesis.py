"""The seven KiTS19 thesis models: exact Keras/PyTorch parameter counts, shapes, TF-compatible ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctdl.models import thesis as T  # registers the thesis models
from ctdl.models.registry import MODELS, count_parameters, count_parameters_keras


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# name, kwargs, Keras total (trainable + BN moving mean/var), PyTorch trainable, tiny test input (N, C, *spatial)
# All built counts equal the thesis code's counts (reference tables), 3 in / 3 out channels.
CASES = [
    ("unet2d_thesis", {}, 2_465_619, 2_462_143, (2, 3, 32, 32)),
    ("unet3d_thesis", {}, 15_296_451, 15_291_243, (1, 3, 16, 32, 32)),
    # thesis quirk (default): the pyramid branches pool the 3-channel INPUT
    ("pspnet2d_small_thesis", {}, 1_651_331, 1_647_875, (2, 3, 64, 64)),
    # standard PSPNet (pool the 256-channel encoder output): 4 x (256*256 - 3*256) = 259,072 more; not in the thesis
    ("pspnet2d_small_thesis", {"pool_input": False}, 1_910_403, 1_906_947, (2, 3, 64, 64)),
    # equal to the thesis (46,765,763), so the construction is the code's; 64 px is the smallest input (8x8 map)
    ("pspnet2d_big", {}, 46_765_763, 46_707_139, (1, 3, 64, 64)),
    # the code's count; the thesis text repeats PSPNet_s' 1,651,331 by mistake
    ("denseunet_small", {}, 1_636_627, 1_624_659, (2, 3, 32, 32)),
    # the code's count; the thesis text repeats PSPNet_b's 46,765,763 by mistake
    ("denseunet_big", {}, 43_024_099, 42_815_427, (2, 3, 32, 32)),
    # equal to the thesis (image pooling + 1x1 ASPP only; no decoder)
    ("deeplabv3plus_mobilenetv2", {}, 2_142_019, 2_108_931, (2, 3, 32, 32)),
    ("deeplabv3plus_mobilenetv2", {"tf_resize": False}, 2_142_019, 2_108_931, (1, 3, 32, 32)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw, *_ in CASES]


@pytest.mark.parametrize("name, kwargs, keras_total, trainable, shape", CASES, ids=IDS)
def test_counts_and_forward_backward(name, kwargs, keras_total, trainable, shape) -> None:
    torch.manual_seed(0)
    model = MODELS.create(name, **kwargs)
    assert count_parameters_keras(model) == keras_total
    assert count_parameters(model) == trainable

    info = MODELS.meta(name)
    assert info["task"] == "segmentation"
    assert info["dims"] == len(info["default_input"]) - 1 == len(shape) - 2

    x = torch.randn(*shape)
    y = model(x)
    assert y.shape == (shape[0], 3, *shape[2:])
    # logits, not probabilities
    assert not torch.allclose(y.sum(1), torch.ones_like(y.sum(1)), atol=1e-3)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    with torch.no_grad():
        assert model(x).shape == y.shape


def test_registered_metadata() -> None:
    expected = {
        "unet2d_thesis": (2, (3, 128, 128)),
        "unet3d_thesis": (3, (3, 32, 128, 128)),
        "pspnet2d_small_thesis": (2, (3, 128, 128)),
        "pspnet2d_big": (2, (3, 128, 128)),
        "denseunet_small": (2, (3, 128, 128)),
        "denseunet_big": (2, (3, 128, 128)),
        "deeplabv3plus_mobilenetv2": (2, (3, 128, 128)),
    }
    for name, (dims, default_input) in expected.items():
        info = MODELS.meta(name)
        assert (info["dims"], info["default_input"], info["task"]) == (dims, default_input, "segmentation")


def test_channel_arguments() -> None:
    m = MODELS.create("unet2d_thesis", in_channels=1, out_channels=2)
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)
    # Unet2D with one input channel: the first conv loses 2 * 9 * 64 weights
    assert count_parameters_keras(m) == 2_465_619 - 2 * 9 * 64 - (3 - 2) * (10 + 1)


def test_batch_of_one_on_1x1_maps() -> None:
    """Keras trains BN on one value per channel (output = beta); PyTorch BN would raise."""
    for name in ("pspnet2d_big", "deeplabv3plus_mobilenetv2"):
        m = MODELS.create(name, in_channels=1)
        y = m(torch.randn(1, 1, 64, 64))
        y.mean().backward()
        assert y.shape == (1, 3, 64, 64)
    bn = T.KerasBatchNorm2d(4, eps=1e-5, momentum=0.05)
    with torch.no_grad():
        bn.bias.copy_(torch.arange(4.0))
    out = bn(torch.randn(1, 4, 1, 1))
    assert torch.equal(out.flatten(), torch.arange(4.0))
    assert torch.isfinite(bn.running_var).all() and torch.allclose(bn.running_var, torch.full((4,), 0.95))


def test_tf_same_padding() -> None:
    torch.manual_seed(0)
    # even kernel, stride 1: TF pads the extra pixel at the bottom/right
    conv = T.TFSameConv2d(2, 3, 2)
    x = torch.randn(1, 2, 7, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias)
    assert torch.allclose(conv(x), ref)
    # 3x3 stride 2 on an even size: output ceil(n/2), padding only bottom/right
    conv = T.TFSameConv2d(2, 3, 3, stride=2)
    x8 = torch.randn(1, 2, 8, 8)
    ref = F.conv2d(F.pad(x8, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    assert conv(x8).shape[-2:] == (4, 4) and torch.allclose(conv(x8), ref)
    # ... and on an odd size the total padding is even, hence symmetric (7 rows: 1 + 1)
    ref = F.conv2d(F.pad(x, (0, 1, 1, 1)), conv.weight, conv.bias, stride=2)
    assert torch.allclose(conv(x), ref)
    # max pool 'same' pads with -inf (all-negative input must not pick up zeros)
    x = -torch.rand(1, 1, 6, 6) - 1
    y = T.TFSameMaxPool2d(3, 2)(x)
    assert y.shape[-2:] == (3, 3) and (y < 0).all()
    assert torch.equal(y, F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2))


def test_tf1_bilinear_resize() -> None:
    """Keras K.resize_images(bilinear) under TF1: source = index * in/out, clamped (no half-pixel)."""
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ref = F.interpolate(F.pad(x, (0, 1, 0, 1), mode="replicate"), size=(129, 129), mode="bilinear",
                        align_corners=True)[..., :128, :128]
    y = T.tf1_resize_bilinear(x, (128, 128))
    assert torch.allclose(y, ref, atol=1e-12)
    assert torch.equal(y[..., ::8, ::8], x)  # integer factor: the source pixels are hit exactly
    torch_default = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    assert (torch_default - ref).abs().max() > 0.1  # PyTorch's half-pixel resize is not the same


def test_pspnet_small_pools_input_by_default() -> None:
    m = MODELS.create("pspnet2d_small_thesis")
    assert [b.conv.in_channels for b in m.branches] == [3, 3, 3, 3]
    m = MODELS.create("pspnet2d_small_thesis", pool_input=False)
    assert [b.conv.in_channels for b in m.branches] == [256, 256, 256, 256]
    assert T._psp_kernels((128, 128), (8, 4, 2, 1)) == [2, 4, 8, 16]  # the code's kernel = stride table
