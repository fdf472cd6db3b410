"""Small building blocks shared by the hand-written networks."""

from __future__ import annotations

import torch.nn as nn

_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def make_norm(kind: str, dims: int, channels: int) -> nn.Module:
    """Normalization layer by name: 'batch', 'group' (groups of 8 channels) or 'none'."""
    if kind == "batch":
        return _BN[dims](channels)
    if kind == "group":
        if channels < 2:  # one channel in one pooled cell: nothing to normalise over
            return nn.Identity()
        groups = max(1, channels // 8)  # groups of 8 channels (at least 2 per group)
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")
