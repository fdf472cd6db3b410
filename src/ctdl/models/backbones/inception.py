"""InceptionV3 and InceptionResNetV2 as in keras-applications 1.0.7; written by hand (MONAI has neither).

Every ``conv2d_bn`` is a bias-free conv, a BatchNorm without scale (``scale=False``: beta only, eps 1e-3) and a
ReLU. Unnamed layers get Keras' auto-names in creation order (``conv2d_N``, ``batch_normalization_N``; the
activations ``activation_N`` are what DLAE's taps are named after), so an ImageNet .h5 maps by name as long as
it was saved from a fresh session, which is how keras-applications' files were made.

Taps (DLAE, with its zero pads onto the 1/2 ... 1/32 grid):
InceptionV3: activation_1 (32), activation_4 (80), activation_29 (96), activation_75 (192), mixed10 (2048);
InceptionResNetV2: activation_1 (32), activation_4 (80), activation_75 (256), activation_162 (288), conv_7b_ac (1536).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctdl.models.backbones._common import BatchNormNoScale, TapBackbone


class _ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: Sequence[int], stride: int, same: bool) -> None:
        super().__init__()
        pad = (k[0] // 2, k[1] // 2) if same else 0  # 'same' only ever with stride 1 and odd kernels here
        self.conv = nn.Conv2d(cin, cout, tuple(k), stride, padding=pad, bias=False)
        self.bn = BatchNormNoScale(cout)


class _KerasAutoNames(TapBackbone):
    """Holds conv/BN pairs under Keras' auto-names; ``cb`` creates one, ``run`` applies one (+ ReLU)."""

    padded_taps = True

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        self._n = 0
        self._cout: dict[int, int] = {}
        self._spec: dict[int, tuple[int, bool]] = {}
        self._tap_ids: set[int] = set()

    def cb(self, cin: int, cout: int, kh: int, kw: int | None = None, stride: int = 1, same: bool = True,
           name: str | None = None) -> int:
        self._n += 1
        n = self._n
        unit = _ConvBN(cin, cout, (kh, kw or kh), stride, same)
        cname = name or f"conv2d_{n}"
        bname = (name + "_bn") if name else f"batch_normalization_{n}"
        self.layers[cname] = unit.conv
        self.layers[bname] = unit.bn
        self._spec[n] = (cname, bname)  # type: ignore[assignment]
        return n

    def run(self, n: int, x: torch.Tensor, taps: list[torch.Tensor] | None = None) -> torch.Tensor:
        cname, bname = self._spec[n]  # type: ignore[misc]
        y = F.relu(self.layers[bname](self.layers[cname](x)))
        if taps is not None and n in self._tap_ids:
            taps.append(y)
        return y


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # AveragePooling2D(3, strides=1, padding='same'): TF averages over the valid pixels only
    return F.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False)


def _max3s2(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, 2)


class InceptionV3Backbone(_KerasAutoNames):
    tap_names = ["activation_1", "activation_4", "activation_29", "activation_75", "mixed10"]
    tap_channels = [32, 80, 96, 192, 2048]
    out_channels = 2048
    out_name = "mixed10"

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        cb = self.cb
        self.stem = [cb(in_channels, 32, 3, stride=2, same=False), cb(32, 32, 3, same=False), cb(32, 64, 3),
                     cb(64, 80, 1, same=False), cb(80, 192, 3, same=False)]
        self.blocks: list[tuple[str, dict[str, list[int]]]] = []
        c = 192
        for pool_f in (32, 64, 64):  # mixed0-2 (35 x 35 grid)
            b = {"b1": [cb(c, 64, 1)], "b5": [cb(c, 48, 1), cb(48, 64, 5)],
                 "b3": [cb(c, 64, 1), cb(64, 96, 3), cb(96, 96, 3)], "bp": [cb(c, pool_f, 1)]}
            self.blocks.append(("A", b))
            c = 64 + 64 + 96 + pool_f
        b = {"b3": [cb(c, 384, 3, stride=2, same=False)],
             "b3d": [cb(c, 64, 1), cb(64, 96, 3), cb(96, 96, 3, stride=2, same=False)]}
        self.blocks.append(("B", b))  # mixed3
        c = 384 + 96 + c
        for m in (128, 160, 160, 192):  # mixed4-7 (17 x 17 grid)
            b = {"b1": [cb(c, 192, 1)], "b7": [cb(c, m, 1), cb(m, m, 1, 7), cb(m, 192, 7, 1)],
                 "b7d": [cb(c, m, 1), cb(m, m, 7, 1), cb(m, m, 1, 7), cb(m, m, 7, 1), cb(m, 192, 1, 7)],
                 "bp": [cb(c, 192, 1)]}
            self.blocks.append(("C", b))
            c = 768
        b = {"b3": [cb(c, 192, 1), cb(192, 320, 3, stride=2, same=False)],
             "b7": [cb(c, 192, 1), cb(192, 192, 1, 7), cb(192, 192, 7, 1), cb(192, 192, 3, stride=2, same=False)]}
        self.blocks.append(("D", b))  # mixed8
        c = 320 + 192 + 768
        for _ in range(2):  # mixed9-10 (8 x 8 grid)
            b = {"b1": [cb(c, 320, 1)], "b3": [cb(c, 384, 1)], "b3a": [cb(384, 384, 1, 3)], "b3b": [cb(384, 384, 3, 1)],
                 "bd": [cb(c, 448, 1), cb(448, 384, 3)], "bda": [cb(384, 384, 1, 3)], "bdb": [cb(384, 384, 3, 1)],
                 "bp": [cb(c, 192, 1)]}
            self.blocks.append(("E", b))
            c = 2048
        self._tap_ids = {1, 4, 29, 75}

    def _seq(self, ids: list[int], x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        for n in ids:
            x = self.run(n, x, taps)
        return x

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        taps: list[torch.Tensor] = []
        s = self.stem
        x = self._seq(s[:3], x, taps)
        x = self._seq(s[3:], _max3s2(x), taps)
        x = _max3s2(x)
        for kind, b in self.blocks:
            q = lambda k, y: self._seq(b[k], y, taps)  # noqa: E731
            if kind == "A":
                x = torch.cat([q("b1", x), q("b5", x), q("b3", x), q("bp", _avg3(x))], 1)
            elif kind == "B":
                x = torch.cat([q("b3", x), q("b3d", x), _max3s2(x)], 1)
            elif kind == "C":
                x = torch.cat([q("b1", x), q("b7", x), q("b7d", x), q("bp", _avg3(x))], 1)
            elif kind == "D":
                x = torch.cat([q("b3", x), q("b7", x), _max3s2(x)], 1)
            else:
                y3 = q("b3", x)
                yd = q("bd", x)
                x = torch.cat([q("b1", x), q("b3a", y3), q("b3b", y3), q("bda", yd), q("bdb", yd), q("bp", _avg3(x))], 1)
        taps.append(x)
        return taps, x


class InceptionResNetV2Backbone(_KerasAutoNames):
    tap_names = ["activation_1", "activation_4", "activation_75", "activation_162", "conv_7b_ac"]
    tap_channels = [32, 80, 256, 288, 1536]
    out_channels = 1536
    out_name = "conv_7b_ac"

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        cb = self.cb
        L = self.layers
        self.stem = [cb(in_channels, 32, 3, stride=2, same=False), cb(32, 32, 3, same=False), cb(32, 64, 3),
                     cb(64, 80, 1, same=False), cb(80, 192, 3, same=False)]
        self.m5b = {"b0": [cb(192, 96, 1)], "b1": [cb(192, 48, 1), cb(48, 64, 5)],
                    "b2": [cb(192, 64, 1), cb(64, 96, 3), cb(96, 96, 3)], "bp": [cb(192, 64, 1)]}
        self.res_blocks: list[tuple[str, float, bool, dict[str, list[int]]]] = []
        c = 320
        for i in range(1, 11):
            b = {"b0": [cb(c, 32, 1)], "b1": [cb(c, 32, 1), cb(32, 32, 3)],
                 "b2": [cb(c, 32, 1), cb(32, 48, 3), cb(48, 64, 3)]}
            L[f"block35_{i}_conv"] = nn.Conv2d(128, c, 1)
            self.res_blocks.append((f"block35_{i}", 0.17, True, b))
        self.m6a = {"b0": [cb(c, 384, 3, stride=2, same=False)],
                    "b1": [cb(c, 256, 1), cb(256, 256, 3), cb(256, 384, 3, stride=2, same=False)]}
        c = 384 + 384 + 320
        self.res_blocks_17: list[tuple[str, float, bool, dict[str, list[int]]]] = []
        for i in range(1, 21):
            b = {"b0": [cb(c, 192, 1)], "b1": [cb(c, 128, 1), cb(128, 160, 1, 7), cb(160, 192, 7, 1)]}
            L[f"block17_{i}_conv"] = nn.Conv2d(384, c, 1)
            self.res_blocks_17.append((f"block17_{i}", 0.1, True, b))
        self.m7a = {"b0": [cb(c, 256, 1), cb(256, 384, 3, stride=2, same=False)],
                    "b1": [cb(c, 256, 1), cb(256, 288, 3, stride=2, same=False)],
                    "b2": [cb(c, 256, 1), cb(256, 288, 3), cb(288, 320, 3, stride=2, same=False)]}
        c = 384 + 288 + 320 + c
        self.res_blocks_8: list[tuple[str, float, bool, dict[str, list[int]]]] = []
        for i in range(1, 11):
            b = {"b0": [cb(c, 192, 1)], "b1": [cb(c, 192, 1), cb(192, 224, 1, 3), cb(224, 256, 3, 1)]}
            L[f"block8_{i}_conv"] = nn.Conv2d(448, c, 1)
            self.res_blocks_8.append((f"block8_{i}", 0.2 if i < 10 else 1.0, i < 10, b))
        self.conv7b = cb(c, 1536, 1, name="conv_7b")
        self._tap_ids = {1, 4, 75, 162}

    def _seq(self, ids: list[int], x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        for n in ids:
            x = self.run(n, x, taps)
        return x

    def forward_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        taps: list[torch.Tensor] = []
        s = self.stem
        x = self._seq(s[:3], x, taps)
        x = _max3s2(self._seq(s[3:], _max3s2(x), taps))
        q = lambda b, k, y: self._seq(b[k], y, taps)  # noqa: E731
        m = self.m5b
        x = torch.cat([q(m, "b0", x), q(m, "b1", x), q(m, "b2", x), q(m, "bp", _avg3(x))], 1)
        for blocks in (self.res_blocks, None, self.res_blocks_17, None, self.res_blocks_8):
            if blocks is None:
                m = self.m6a if x.shape[1] == 320 else self.m7a
                x = torch.cat([q(m, k, x) for k in m] + [_max3s2(x)], 1)
                continue
            for name, scale, act, b in blocks:
                mixed = torch.cat([q(b, k, x) for k in b], 1)
                x = x + scale * self.layers[name + "_conv"](mixed)
                if act:
                    x = F.relu(x)
        x = self.run(self.conv7b, x)
        taps.append(x)
        return taps, x


def inceptionv3(in_channels: int = 1) -> InceptionV3Backbone:
    return InceptionV3Backbone(in_channels)


def inceptionresnetv2(in_channels: int = 1) -> InceptionResNetV2Backbone:
    return InceptionResNetV2Backbone(in_channels)
