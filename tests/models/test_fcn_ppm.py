"""fcn_ppm3d: the paper's headline structure (13 blocks / 39 convs / 2 poolings / 4-branch PPM), any input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import ctdl.models.fcn_ppm  # noqa: F401  (registers fcn_ppm3d)
from ctdl.models.fcn_ppm import Bottleneck3d, FCNPPM3d, PPMBranch3d, PyramidPooling3d
from ctdl.models.registry import MODELS, count_parameters

_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
          nn.modules.pooling._AdaptiveMaxPoolNd)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return MODELS.create("fcn_ppm3d", in_channels=1, out_channels=3)


def test_registered_with_meta(model: nn.Module) -> None:
    info = MODELS.meta("fcn_ppm3d")
    assert info["dims"] == 3 and info["task"] == "segmentation" and info["default_input"][0] == 1
    assert "FCN-PPM" in info["description"]
    assert isinstance(model, FCNPPM3d)
    n = count_parameters(model)
    print(f"fcn_ppm3d parameters: {n:,}")
    assert 1_000_000 < n < 10_000_000


def test_headline_numbers_from_attributes(model: nn.Module) -> None:
    assert model.n_residual_blocks == 13
    assert model.n_block_convs == 39
    assert model.n_poolings == 2
    assert model.ppm.n_branches == 4
    assert model.ppm.kernel_sizes == (2, 4, 8, 16)
    assert model.n_projection_convs == 3


def test_headline_numbers_from_module_tree(model: nn.Module) -> None:
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck3d)]
    assert len(blocks) == 13
    # counting rule: convolutions on the residual (main) path of the blocks
    body_convs = [c for b in blocks for c in b.body.modules() if isinstance(c, nn.Conv3d)]
    assert len(body_convs) == 39
    assert all(sum(isinstance(c, nn.Conv3d) for c in b.body.modules()) == 3 for b in blocks)
    projections = [c for b in blocks for c in b.shortcut.modules() if isinstance(c, nn.Conv3d)]
    assert len(projections) == 3 and all(c.kernel_size == (1, 1, 1) for c in projections)
    # dilated convolutions in the deep blocks
    assert sorted({c.dilation[0] for c in body_convs}) == [1, 2, 4]
    assert [b.dilation for b in blocks] == [1] * 7 + [2] * 3 + [4] * 3

    # exactly two pooling layers outside the PPM, and no other down-sampling (no strided convs)
    pools = [(n, m) for n, m in model.named_modules() if isinstance(m, _POOLS) and not n.startswith("ppm.")]
    assert len(pools) == 2 and all(isinstance(m, nn.MaxPool3d) for _, m in pools)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert all(c.stride == (1, 1, 1) for c in convs)

    # PPM: 4 branches, each pool -> conv -> deconv with kernel = stride = k
    ppms = [m for m in model.modules() if isinstance(m, PyramidPooling3d)]
    assert len(ppms) == 1
    branches = [m for m in ppms[0].modules() if isinstance(m, PPMBranch3d)]
    assert len(branches) == 4
    ks = []
    for br in branches:
        (pool,) = [m for m in br.modules() if isinstance(m, nn.AvgPool3d)]
        (deconv,) = [m for m in br.modules() if isinstance(m, nn.ConvTranspose3d)]
        assert sum(isinstance(m, nn.Conv3d) for m in br.modules()) == 1
        k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 3
        assert tuple(pool.stride) == tuple(k) == deconv.kernel_size == deconv.stride
        ks.append(k[-1])
    assert tuple(ks) == (2, 4, 8, 16)


def test_forward_backward_tiny(model: nn.Module) -> None:
    model.train()
    x = torch.randn(1, 1, 16, 40, 40)
    y = model(x)
    assert y.shape == (1, 3, 16, 40, 40)
    y.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.stem[0].weight.grad.abs().sum() > 0  # the gradient reaches the first layer
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("shape", [(1, 1, 17, 37, 41), (2, 1, 5, 9, 6)])
def test_odd_sizes_come_back_same_size(model: nn.Module, shape: tuple[int, ...]) -> None:
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(*shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(y).all()


def test_ppm_branch_averages_valid_voxels_only() -> None:
    br = PPMBranch3d(4, 4, 16, norm="none")
    with torch.no_grad():
        br.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1, 1))
        br.conv.bias.zero_()
    x = torch.rand(1, 4, 4, 10, 37)  # depth and height shorter than 16, width ragged
    y = br(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :, 0, 0, 0], x[..., :16].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(y[:, :, 3, 9, 36], x[..., 32:].mean(dim=(2, 3, 4)))


def test_options_inplane_pooling_and_batchnorm_ppm() -> None:
    torch.manual_seed(0)
    m = MODELS.create(
        "fcn_ppm3d", in_channels=2, out_channels=2, pool_kernels=((1, 2, 2), (1, 2, 2)), ppm_norm="batch",
        ppm_pool_depth=False, widths=(16, 32, 32, 32), stem_channels=8, ppm_channels=8, head_channels=16, skips=False,
    )
    assert m.ppm.branches[3].kernel == (1, 16, 16)
    y = m(torch.randn(2, 2, 3, 18, 22))
    assert y.shape == (2, 2, 3, 18, 22)
    y.mean().backward()


def test_documented_activation_memory_estimate() -> None:
    """Saved-for-backward bytes at the paper's crop, batch 4 (meta device: no compute): ~5.85 GB < 12 GB."""
    m = MODELS.create("fcn_ppm3d", in_channels=1, out_channels=3).to("meta")
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = t
        return t

    x = torch.empty(4, 1, 64, 150, 150, device="meta")
    target = torch.empty(4, 64, 150, 150, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nn.functional.cross_entropy(m(x), target)
    params = {id(p) for p in m.parameters()}
    total = sum(t.numel() * t.element_size() for k, t in saved.items() if k not in params)
    print(f"fcn_ppm3d saved activations at 4x1x64x150x150: {total / 1e9:.2f} GB")
    assert 5.0e9 < total < 7.0e9
