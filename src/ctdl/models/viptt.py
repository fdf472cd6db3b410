"""ViPTT-Net (Zunair et al. 2021): a CNN-RNN that reads a CT volume as a sequence of axial slices.

Layers (input (N, 1, D, H, W)): a 1x1x1 Conv3d mapping 1 channel to 3; the VGG16 convolutional part applied
to every axial slice (time-distributed) and globally pooled to a 512-vector per slice; an LSTM (or GRU) with
256 units whose last step feeds Dense 1024 + ReLU and a final Dense over the classes. The model returns
logits; the softmax lives in the loss / prediction (numerically safer, same probabilities).

Options beyond the paper (defaults are the paper's): ``rnn="gru"``; ``rnn_output="max"|"mean"`` pools the RNN's
outputs over all slices instead of taking the last step (every slice then gets a direct gradient path; the small
CPU demo needs it: with the last step only it predicted the majority class for 300 steps while the pooled variant
learned within 50); ``batch_norm`` (vgg16_bn layout); ``vgg_width`` < 1 (a thinner VGG for CPU demos).

At 1 x 70 x 224 x 224 with 5 classes the PyTorch count is 15,771,467 (Keras 15,770,443: PyTorch's LSTM keeps two
bias vectors per gate). The VGG16 part keeps the ``features.N.weight`` key layout so an ImageNet state dict
loads with :meth:`ViPTTNet.load_vgg` (strict: missing, unexpected or mis-shaped keys are listed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from ctdl.models.registry import register_model
from ctdl.models.vgg import VGG_PLANS, vgg_features


def _vgg16(width: float, batch_norm: bool = False) -> nn.Sequential:
    """VGG16 features; ``width < 1`` scales every channel count (a CPU-sized demo variant, same index layout).

    ``batch_norm`` inserts BatchNorm after every conv (the vgg16_bn layout): not the paper's network, but a small
    VGG trained from scratch on few volumes needs it to learn in a CPU-sized demo.
    """
    if width == 1.0:
        return vgg_features(16, batch_norm=batch_norm)
    if not 0 < width <= 1:
        raise ValueError(f"vgg_width must lie in (0, 1], got {width}")
    layers: list[nn.Module] = []
    c = 3
    for v in VGG_PLANS[16]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = max(4, int(round(int(v) * width)))
        layers += [nn.Conv2d(c, out, 3, padding=1)] + ([nn.BatchNorm2d(out)] if batch_norm else []) + [nn.ReLU(inplace=True)]
        c = out
    return nn.Sequential(*layers)


class ViPTTNet(nn.Module):
    """Conv3d 1->3, time-distributed VGG16 + global pooling, LSTM/GRU (last step), Dense 1024 ReLU, Dense classes."""

    def __init__(self, in_channels: int = 1, out_channels: int = 5, rnn: Literal["lstm", "gru"] = "lstm",
                 rnn_units: int = 256, dense_units: int = 1024, pooling: Literal["avg", "max"] = "avg",
                 freeze_features: bool = False, vgg_width: float = 1.0, batch_norm: bool = False,
                 rnn_output: Literal["last", "max", "mean"] = "last", slice_chunk: int = 64,
                 pretrained: str | Path | None = None) -> None:
        super().__init__()
        if rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn must be 'lstm' or 'gru', got {rnn!r}")
        if rnn_output not in ("last", "max", "mean"):
            raise ValueError(f"rnn_output must be 'last', 'max' or 'mean', got {rnn_output!r}")
        self.rnn_output = rnn_output
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        self.channel_map = nn.Conv3d(in_channels, 3, kernel_size=1)
        self.features = _vgg16(float(vgg_width), batch_norm)
        feat = [m for m in self.features if isinstance(m, nn.Conv2d)][-1].out_channels
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        rnn_cls = nn.LSTM if rnn == "lstm" else nn.GRU
        self.rnn = rnn_cls(feat, rnn_units, batch_first=True)
        self.fc = nn.Linear(rnn_units, dense_units)
        self.head = nn.Linear(dense_units, out_channels)
        self.slice_chunk = int(slice_chunk)
        for m in self.features.modules():  # torchvision's VGG init: without it 13 plain convs shrink the signal ~1000x
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self._keras_init()
        if pretrained:
            self.load_vgg(pretrained)
        if freeze_features:
            self.freeze_features()

    def _keras_init(self) -> None:
        """The authors' Keras defaults for the layers they added: glorot-uniform kernels, zero biases, orthogonal
        recurrent kernels and, for the LSTM, forget-gate bias 1 (``unit_forget_bias``). PyTorch's defaults (uniform
        biases, forget bias ~0) leave the last step's state with little memory of early slices; with them the
        small demo network did not learn at all in 300 steps."""
        for lin in (self.channel_map, self.fc, self.head):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        h = self.rnn.hidden_size
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_ih"):  # Keras initialises all gates' kernels as one matrix
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
                if isinstance(self.rnn, nn.LSTM) and name.startswith("bias_ih"):
                    p.data[h:2 * h] = 1.0  # PyTorch gate order: input, forget, cell, output

    def freeze_features(self, frozen: bool = True) -> None:
        """Stop (or restart) training the VGG16 part (video pretraining keeps it frozen)."""
        for p in self.features.parameters():
            p.requires_grad_(not frozen)

    def load_vgg(self, path: str | Path) -> None:
        """Load ImageNet VGG16 weights from a local state dict with ``features.N.weight`` keys (never downloads)."""
        from ctdl.models.weights import load_weights, read_state_dict

        load_weights(self.features, read_state_dict(path), source=path, prefix="features.")

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) -> (N, D, F): the pooled VGG feature vector of every axial slice."""
        x = self.channel_map(x)
        n, c, d, h, w = x.shape
        slices = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        # chunks bound the activation memory at 70 x 224 x 224 (VGG16 on 140 slices at once is ~10 GB)
        outs = [self.pool(self.features(chunk)).flatten(1) for chunk in slices.split(max(1, self.slice_chunk))]
        return torch.cat(outs).reshape(n, d, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.slice_features(x)
        out, _ = self.rnn(seq)
        if self.rnn_output == "last":  # the paper: only the last step's output
            z = out[:, -1]
        elif self.rnn_output == "max":
            z = out.max(1).values
        else:
            z = out.mean(1)
        return self.head(torch.relu(self.fc(z)))


@register_model("viptt_net", task="classification", dims=3, default_input=(1, 70, 224, 224),
                paper="Zunair et al. 2021, ViPTT-Net (CLEF 2021)")
def viptt_net(in_channels: int = 1, out_channels: int = 5, **kwargs: object) -> ViPTTNet:
    """ViPTT-Net: VGG16 per axial slice + LSTM 256 + Dense 1024 (CT volume classification)."""
    return ViPTTNet(in_channels, out_channels, **kwargs)  # type: ignore[arg-type]
