"""3D FCN with a pyramid pooling module (``fcn_ppm3d``) for kidney / renal-tumour CT segmentation.

Re-implementation of the "3D_FCN_PPM" network of the kidney-tumour paper (seed
``000_e3b5bb7754e9d47f``, section II.A). The text fixes: residual blocks (13 blocks, 39
convolutions), only two pooling layers, a narrow-and-deep body, dilated convolutions, and a
pyramid pooling module (PPM) with a shortcut and four branches (pooling -> convolution ->
deconvolution, kernel sizes 2, 4, 8, 16) whose outputs are concatenated with the PPM input;
training used 64-slice x 150 x 150 ROI crops at batch 4 on a 12 GB GPU. Fig. 3 (the layer
table) is not in the text, so widths, dilations and the decoder below are our choices, made to
respect those facts. Everything is configurable through :func:`fcn_ppm3d`.

Design (defaults)
-----------------
Shapes for the paper's crop (1, 64, 150, 150); the input is first replicate-padded at the high
end to a multiple of 4 (the two poolings): 64 x 152 x 152 (L0). Output logits are cropped back.

=========================  =====================================  ==========  ===============
part                       layers                                 channels    resolution
=========================  =====================================  ==========  ===============
stem                       conv 3^3 + BN + ReLU                   1 -> 16     L0 64x152x152
pool 1                     max-pool 2x2x2, stride 2               16          L1 32x76x76
stage 1 (3 blocks)         bottleneck, dilation 1                 16/64       L1
pool 2                     max-pool 2x2x2, stride 2               64          L2 16x38x38
stage 2 (4 blocks)         bottleneck, dilation 1                 32/128      L2
stage 3 (3 blocks)         bottleneck, dilation 2                 64/256      L2
stage 4 (3 blocks)         bottleneck, dilation 4                 64/256      L2
PPM                        input shortcut + 4 branches k=2,4,8,16 256 + 4x64   L2
fusion                     conv 3^3 + BN + ReLU + dropout 0.1     512 -> 128  L2
classifier                 conv 1^3                               128 -> K    L2
decoder (FCN-8s style)     2 x [bilinear-initialised deconv x2    K           L1, then L0
                           + 1^3 "score" conv of stage-1 / stem
                           features, zero-initialised, added]
=========================  =====================================  ==========  ===============

"16/64" means bottleneck width 16, block output 64 (expansion 4, as in ResNet-50). Blocks are
``1^3 conv -> BN -> ReLU -> 3^3 conv (dilated) -> BN -> ReLU -> 1^3 conv -> BN``, added to the
shortcut, then ReLU. The first block of stages 1-3 changes the channel count and has a 1^3
projection shortcut (conv + BN); all other shortcuts are identities. Depth 13 (3+4+3+3) and a
width of at most 256 keep the body "narrow and deep"; after only two poolings the dilations
(2 in stage 3, 4 in stage 4) and the PPM supply the large receptive field. No stride-2
convolutions are used, so the only down-sampling layers are the two max-pools.

Both poolings are 2x2x2 (isotropic): a 64-slice crop becomes 16 slices at L2, so the largest
PPM kernel (16) spans the whole crop depth exactly. ``pool_kernels=((1, 2, 2), (1, 2, 2))``
gives in-plane-only pooling (for thick slices) at 4x the L1/L2 memory (16.4 GB, see below).

PPM branch k (k = 2, 4, 8, 16): average pool with kernel = stride = (k, k, k)
(``ppm_pool_depth=False``: (1, k, k)) in ``ceil_mode`` with ``count_include_pad=False``, so a
ragged border cell averages only its valid voxels (an axis shorter than k is zero-padded to k
and renormalised by a pooled mask: the cell is then the global mean) -> 1^3 conv 256 -> 64
-> norm -> ReLU -> depth-wise transposed conv with kernel = stride = the pooling kernel
(initialised to ones, i.e. nearest upsampling, then learned) -> crop to the input size. The
four branch outputs and the PPM input (the shortcut) are concatenated: 256 + 4 x 64 = 512
channels. Deviations, documented:

* the branch norm defaults to GroupNorm (8 channels per group): with a 16^3 kernel one pooled
  cell can be the only one at batch 1, where BatchNorm cannot train. ``ppm_norm="batch"``
  gives BatchNorm as in PSPNet (fine at the paper's 64 x 150 x 150 crops, batch 4).
* the branch deconvolutions are depth-wise (groups = channels): a dense 64 -> 64 deconvolution
  with a 16^3 kernel alone would hold 16.8 M weights, over 5x the rest of the network (3.2 M).
* the FCN-style score skips (``skips=True``) are our choice ("inspired by the idea of FCN").

Counting rule (headline numbers 13 and 39)
------------------------------------------
``n_residual_blocks`` = number of :class:`Bottleneck3d` modules = 13. ``n_block_convs`` =
convolutions on the residual (main) path of those blocks = 13 x 3 = 39. NOT counted: the
3 projection-shortcut 1^3 convs (``n_projection_convs``), the stem conv, the 4 PPM branch
1^3 convs and 4 PPM deconvolutions, the fusion conv, the classifier, the 2 score convs and the
2 decoder deconvolutions. ``n_poolings`` = max-pools of the body = 2 (the PPM's average pools
are part of the PPM, as in the paper's text). Tests recount all of these by walking the
module tree.

Activation memory estimate (training, batch 4, 64 x 150 x 150, float32)
------------------------------------------------------------------------
One feature-map channel at batch 4, in float32:
L0 = 4 x 64 x 152 x 152 x 4 B = 23.66 MB, L1 = 4 x 32 x 76 x 76 x 4 B = 2.957 MB,
L2 = 4 x 16 x 38 x 38 x 4 B = 0.370 MB.

Tensors autograd keeps for backward: a conv keeps its input, BN its input, ReLU its output
(a conv input that is a ReLU output is the same tensor: counted once), max-pool its input and
int64 indices (2 float32-channel equivalents per output channel); additions, concatenation,
padding and cropping keep nothing. A bottleneck block with width m and output c keeps
4m (two BN inputs, two ReLU outputs) + 2c (BN3 input, final ReLU output), + c with a
projection shortcut (its BN input).

* L0: padded input 1 + stem BN input 16 + stem ReLU output 16 = 33 ch        -> 0.78 GB;
  the cross-entropy on the cropped K = 3 logits (logits 3 + log-softmax 3 + int64 target 2)
  = 8 ch at 64 x 150 x 150 (23.04 MB each)                                   -> 0.18 GB
* L1: pool-1 output 16 + indices 2 x 16 + stage 1 [(4x16 + 2x64 + 64) + 2 x (4x16 + 2x64)
  = 256 + 384 = 640] + decoder deconv input 3 = 691 ch x 2.957 MB             -> 2.04 GB
* L2: pool-2 output 64 + indices 2 x 64 + stage 2 [(128 + 256 + 128) + 3 x 384 = 1664]
  + stage 3 [(256 + 512 + 256) + 2 x 768 = 2560] + stage 4 [3 x 768 = 2304] + PPM concat
  (fusion-conv input) 512 + fusion BN input 128 + ReLU 128 + dropout output 128
  + deconv input 3 = 7619 ch x 0.370 MB                                       -> 2.82 GB
  (the PPM's pooled maps are 1/8 .. 1/4096 of L2 per channel: < 0.03 GB)

Total 0.78 + 0.18 + 2.04 + 2.82 + 0.03 = 5.85 GB of saved activations. Cross-check:
counting the tensors autograd saves (``torch.autograd.graph.saved_tensors_hooks``; model and a
4 x 1 x 64 x 150 x 150 input on the meta device, cross-entropy loss included) gives
5.85 GB. Backward adds transient gradient buffers (the largest: a few 16-channel L0 maps,
0.4-0.8 GB); 3.2 M parameters + gradients + Adam state are ~0.05 GB; CUDA context + cuDNN
workspace ~1 GB: ~8 GB peak, which fits the paper's 12 GB GPU. The same body with
in-plane-only pooling (``pool_kernels=((1, 2, 2), (1, 2, 2))``) keeps 16.4 GB (same count)
and would not fit.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from ctdl.models.blocks import make_norm
from ctdl.models.registry import register_model
from ctdl.models.unet import crop_to, pad_to_multiple


def _triple(k: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(k, int):
        return (k, k, k)
    t = tuple(int(v) for v in k)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 ints, got {k!r}")
    return t  # type: ignore[return-value]


def _norm3d(kind: str, channels: int) -> nn.Module:
    return make_norm(kind, 3, channels)


def _bilinear_kernel(kernel: tuple[int, ...]) -> torch.Tensor:
    """Separable (bi/tri)linear upsampling kernel of the given size (FCN's ``upsample_filt``)."""
    out = torch.ones(())
    for k in kernel:
        factor = (k + 1) // 2
        center = factor - 1 if k % 2 == 1 else factor - 0.5
        w = 1 - (torch.arange(k, dtype=torch.float32) - center).abs() / factor
        out = out.unsqueeze(-1) * w
    return out


class Bottleneck3d(nn.Module):
    """Residual bottleneck block: 1^3 reduce -> 3^3 (dilated) -> 1^3 expand, each + BN; shortcut add; ReLU.

    ``body`` holds the three main-path convolutions (the ones counted as "block convolutions");
    ``shortcut`` is an identity or a 1^3 projection (conv + BN) when the channel count changes.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, dilation: int = 1) -> None:
        super().__init__()
        self.dilation = dilation
        self.body = nn.Sequential(
            nn.Conv3d(c_in, c_mid, 1, bias=False),
            nn.BatchNorm3d(c_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_mid, c_mid, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm3d(c_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_mid, c_out, 1, bias=False),
            nn.BatchNorm3d(c_out),
        )
        if c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, bias=False), nn.BatchNorm3d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class PPMBranch3d(nn.Module):
    """One PPM branch: masked average pool (kernel = stride = k) -> 1^3 conv -> norm -> ReLU -> deconv (kernel = stride = k)."""

    def __init__(self, in_channels: int, channels: int, k: int, pool_depth: bool = True, norm: str = "group") -> None:
        super().__init__()
        self.k = k
        self.kernel = (k if pool_depth else 1, k, k)
        # ceil_mode + count_include_pad=False: cells at a ragged border average their valid voxels only
        self.pool = nn.AvgPool3d(self.kernel, stride=self.kernel, ceil_mode=True, count_include_pad=False)
        self.conv = nn.Conv3d(in_channels, channels, 1, bias=norm == "none")
        self.norm = _norm3d(norm, channels)
        self.act = nn.ReLU(inplace=True)
        self.deconv = nn.ConvTranspose3d(channels, channels, self.kernel, stride=self.kernel, groups=channels, bias=False)
        nn.init.ones_(self.deconv.weight)  # start as nearest-neighbour upsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        short = [max(k, s) for k, s in zip(self.kernel, shape)]
        if list(shape) != short:  # an axis shorter than the kernel: zero-pad it, then renormalise by a mask
            pooled = self.pool(pad_to_multiple(x, short)) / self.pool(pad_to_multiple(x.new_ones((1, 1, *shape)), short))
        else:
            pooled = self.pool(x)
        y = self.act(self.norm(self.conv(pooled)))
        return crop_to(self.deconv(y), shape)


class PyramidPooling3d(nn.Module):
    """PPM: the input (shortcut) concatenated with one :class:`PPMBranch3d` per kernel size."""

    def __init__(
        self,
        in_channels: int,
        branch_channels: int,
        kernel_sizes: Sequence[int] = (2, 4, 8, 16),
        pool_depth: bool = True,
        norm: str = "group",
    ) -> None:
        super().__init__()
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.branches = nn.ModuleList(PPMBranch3d(in_channels, branch_channels, k, pool_depth, norm) for k in self.kernel_sizes)
        self.out_channels = in_channels + branch_channels * len(self.kernel_sizes)

    @property
    def n_branches(self) -> int:
        return len(self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [b(x) for b in self.branches], dim=1)


class FCNPPM3d(nn.Module):
    """3D FCN-PPM: stem, pool, residual stages with dilation, pool, PPM, fusion, classifier, x4 FCN decoder.

    See the module docstring for the default design, counting rule and memory estimate.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        stem_channels: int = 16,
        blocks: Sequence[int] = (3, 4, 3, 3),
        widths: Sequence[int] = (64, 128, 256, 256),
        dilations: Sequence[int] = (1, 1, 2, 4),
        expansion: int = 4,
        pool_kernels: Sequence[int | Sequence[int]] = (2, 2),
        ppm_kernel_sizes: Sequence[int] = (2, 4, 8, 16),
        ppm_channels: int = 64,
        ppm_pool_depth: bool = True,
        ppm_norm: str = "group",
        head_channels: int = 128,
        dropout: float = 0.1,
        skips: bool = True,
    ) -> None:
        super().__init__()
        if not (len(blocks) == len(widths) == len(dilations)) or len(blocks) < 2:
            raise ValueError("blocks, widths and dilations need the same length (>= 2 stages)")
        if len(pool_kernels) != 2:
            raise ValueError("FCN-PPM has exactly two pooling layers: pool_kernels needs 2 entries")
        if any(w % expansion for w in widths):
            raise ValueError(f"every width must be divisible by expansion={expansion}")
        self.pool_kernels = tuple(_triple(k) for k in pool_kernels)
        self.multiple = tuple(a * b for a, b in zip(*self.pool_kernels))
        self.skips = skips

        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(stem_channels),
            nn.ReLU(inplace=True),
        )
        self.pool1 = nn.MaxPool3d(self.pool_kernels[0], stride=self.pool_kernels[0])
        self.pool2 = nn.MaxPool3d(self.pool_kernels[1], stride=self.pool_kernels[1])
        stages = []
        c = stem_channels
        for n, w, d in zip(blocks, widths, dilations):
            layers = []
            for _ in range(n):
                layers.append(Bottleneck3d(c, w // expansion, w, dilation=d))
                c = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.ppm = PyramidPooling3d(c, ppm_channels, ppm_kernel_sizes, ppm_pool_depth, ppm_norm)
        self.fusion = nn.Sequential(
            nn.Conv3d(self.ppm.out_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
        )
        self.classifier = nn.Conv3d(head_channels, out_channels, 1)
        self.up1 = self._upsampler(out_channels, self.pool_kernels[1])
        self.up0 = self._upsampler(out_channels, self.pool_kernels[0])
        if skips:
            self.score1 = nn.Conv3d(widths[0], out_channels, 1)
            self.score0 = nn.Conv3d(stem_channels, out_channels, 1)
            for m in (self.score1, self.score0):  # FCN: skip scores start at zero
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

        self.n_residual_blocks = sum(blocks)
        self.n_block_convs = 3 * self.n_residual_blocks
        self.n_projection_convs = sum(1 for b in self.residual_blocks() if not isinstance(b.shortcut, nn.Identity))
        self.n_poolings = 2

    @staticmethod
    def _upsampler(channels: int, factor: tuple[int, int, int]) -> nn.ConvTranspose3d:
        """Deconvolution by ``factor`` per axis, initialised to (bi/tri)linear interpolation (FCN)."""
        kernel = tuple(2 * s - s % 2 for s in factor)
        padding = tuple(math.ceil((s - 1) / 2) for s in factor)
        up = nn.ConvTranspose3d(channels, channels, kernel, stride=factor, padding=padding, bias=False)
        with torch.no_grad():
            up.weight.zero_()
            filt = _bilinear_kernel(kernel)
            for i in range(channels):
                up.weight[i, i] = filt
        return up

    def residual_blocks(self) -> list[Bottleneck3d]:
        return [m for m in self.modules() if isinstance(m, Bottleneck3d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        x = pad_to_multiple(x, self.multiple, mode="replicate")
        f0 = self.stem(x)
        f1 = self.stages[0](self.pool1(f0))
        y = self.pool2(f1)
        for stage in self.stages[1:]:
            y = stage(y)
        y = self.classifier(self.fusion(self.ppm(y)))
        y = self.up1(y)
        if self.skips:
            y = y + self.score1(f1)
        y = self.up0(y)
        if self.skips:
            y = y + self.score0(f0)
        return crop_to(y, shape)


@register_model("fcn_ppm3d", dims=3, default_input=(1, 64, 144, 144), paper="3D FCN-PPM, kidney tumour CT (seed 000_e3b5bb7754e9d47f)")
def fcn_ppm3d(
    in_channels: int = 1,
    out_channels: int = 3,
    stem_channels: int = 16,
    blocks: Sequence[int] = (3, 4, 3, 3),
    widths: Sequence[int] = (64, 128, 256, 256),
    dilations: Sequence[int] = (1, 1, 2, 4),
    pool_kernels: Sequence[int | Sequence[int]] = (2, 2),
    ppm_kernel_sizes: Sequence[int] = (2, 4, 8, 16),
    ppm_channels: int = 64,
    ppm_pool_depth: bool = True,
    ppm_norm: str = "group",
    head_channels: int = 128,
    dropout: float = 0.1,
    skips: bool = True,
) -> nn.Module:
    """3D FCN-PPM (13 residual blocks / 39 convs, 2 poolings, dilation 2/4, PPM k=2,4,8,16); any input size.

    Arguments mirror :class:`FCNPPM3d`; the defaults are the design in the module docstring
    (crop 64 x 150 x 150 at batch 4 keeps ~5.8 GB of activations for backward in float32).
    """
    return FCNPPM3d(
        in_channels=in_channels,
        out_channels=out_channels,
        stem_channels=stem_channels,
        blocks=tuple(blocks),
        widths=tuple(widths),
        dilations=tuple(dilations),
        pool_kernels=tuple(pool_kernels),
        ppm_kernel_sizes=tuple(ppm_kernel_sizes),
        ppm_channels=ppm_channels,
        ppm_pool_depth=ppm_pool_depth,
        ppm_norm=ppm_norm,
        head_channels=head_channels,
        dropout=dropout,
        skips=skips,
    )
