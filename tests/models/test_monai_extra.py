"""dynunet / unetr / swinunetr wrappers: logits at the input's spatial size, smallest accepted inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import ctdl.models.monai_extra  # noqa: F401  (registers dynunet, unetr, swinunetr)
from ctdl.models.monai_extra import nnunet_plan
from ctdl.models.registry import MODELS, count_parameters


def _fwd_bwd(model: nn.Module, shape: tuple[int, ...], out_channels: int) -> None:
    model.train()
    y = model(torch.randn(*shape))
    assert type(y) is torch.Tensor or isinstance(y, torch.Tensor)
    assert y.shape == (shape[0], out_channels, *shape[2:])
    y.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)


def test_nnunet_plan() -> None:
    kernels, strides = nnunet_plan((64, 128, 128))
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert kernels == [[3, 3, 3]] * 6
    # anisotropic spacing: no pooling / 1x3x3 kernels along the thick axis first (nnU-Net rule)
    kernels, strides = nnunet_plan((40, 160, 160), spacing=(3.0, 0.8, 0.8))
    assert strides[1] == [1, 2, 2] and kernels[0] == [1, 3, 3]
    assert strides[2] == [2, 2, 2] and kernels[1] == [3, 3, 3]
    assert len(strides) == 6 and len(kernels) == len(strides)


def test_dynunet_default_plan_and_parameters() -> None:
    m = MODELS.create("dynunet", in_channels=1, out_channels=3)
    print(f"dynunet parameters: {count_parameters(m):,}")
    assert m.strides == nnunet_plan(MODELS.meta("dynunet")["default_input"][1:])[1]
    assert m.multiple == (16, 32, 32)


@pytest.mark.parametrize("shape", [(1, 1, 16, 32, 32), (2, 1, 13, 30, 33)])
def test_dynunet_forward_backward(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    m = MODELS.create("dynunet", in_channels=1, out_channels=3, patch_size=(16, 32, 32), filters=(8, 16, 32, 64))
    assert m.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    _fwd_bwd(m, shape, 3)


def test_unetr_default_and_smallest_input() -> None:
    pytest.importorskip("einops")
    m = MODELS.create("unetr", in_channels=1, out_channels=3)
    print(f"unetr parameters: {count_parameters(m):,}")
    torch.manual_seed(0)
    # smallest token grid: img_size 16 (one 16^3 patch); tiny ViT to keep the test fast
    m = MODELS.create("unetr", in_channels=1, out_channels=2, img_size=16, feature_size=4, hidden_size=32,
                      mlp_dim=64, num_heads=2)
    _fwd_bwd(m, (1, 1, 16, 16, 16), 2)
    m.zero_grad(set_to_none=True)
    _fwd_bwd(m, (1, 1, 20, 16, 11), 2)  # another size: sliding windows (padded where smaller), still trainable
    with pytest.raises(ValueError, match="divisible"):
        MODELS.create("unetr", img_size=24)


def test_swinunetr_default_and_smallest_input() -> None:
    pytest.importorskip("einops")
    m = MODELS.create("swinunetr", in_channels=1, out_channels=3)
    print(f"swinunetr parameters: {count_parameters(m):,}")
    torch.manual_seed(0)
    m = MODELS.create("swinunetr", in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1), window_size=4)
    _fwd_bwd(m, (1, 1, 32, 32, 32), 2)  # smallest MONAI accepts: 2**5 per axis (trained at 32x32x64)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 20, 31, 17)).shape == (1, 2, 20, 31, 17)  # padded to 32 x 32 x 64
    with pytest.raises(ValueError, match="divisible by 12"):
        MODELS.create("swinunetr", feature_size=16)
