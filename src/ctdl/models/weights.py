"""Pretrained weights from a local file the user names; nothing is ever downloaded.

Every key is accounted for: missing, unexpected or mis-shaped keys raise an error that lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from ctdl.errors import InputError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a PyTorch state dict (plain, or inside a checkpoint under 'model' / 'state_dict')."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pretrained weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a PyTorch state dict ({exc})") from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(obj)


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path = "<state dict>",
                 prefix: str = "", ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` (keys starting with ``prefix``, which is stripped) into ``module`` strictly.

    Keys of the file that do not start with ``prefix`` are not this module's and are left out on purpose;
    ``ignore`` lists module key prefixes that are allowed to stay unloaded (a new classifier head).
    Raises InputError naming every missing, unexpected and mis-shaped key.
    """
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = [k for k in own if k not in picked and not k.startswith(ignore)]
    unexpected = [k for k in picked if k not in own]
    shape = [f"{k} (file {tuple(picked[k].shape)}, model {tuple(own[k].shape)})"
             for k in own if k in picked and picked[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(prefix + k for k in missing))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(prefix + k for k in unexpected))
        if shape:
            parts.append("shape mismatch: " + ", ".join(prefix + s for s in shape))
        raise InputError(f"{source}: weights do not fit the model; " + "; ".join(parts))
    with torch.no_grad():
        for k, v in picked.items():
            own[k].copy_(v.to(own[k].dtype))
