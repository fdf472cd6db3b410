"""Keras-applications ImageNet weight files (.h5) for DLAE's backbones, read with h5py; nothing is downloaded.

A model that supports this has ``keras_modules() -> {keras layer name: module}`` (every backbone of
:mod:`ctdl.models.backbones` and the DLAE prebuilt wrappers around them). Kernels are converted to PyTorch's
layout by the target module's type:

- Conv2D ``kernel`` (kh, kw, in, out) -> (out, in, kh, kw); a 1x1 conv kernel into a Linear -> (out, in);
- Dense ``kernel`` (in, out) -> (out, in);
- DepthwiseConv2D ``depthwise_kernel`` (kh, kw, in, m) -> (in*m, 1, kh, kw); ResNeXt's depthwise-then-sum
  -> a grouped conv (weight[g*c+m, j] = k[:, :, g*c+j, m]);
- SeparableConv2D ``depthwise_kernel`` / ``pointwise_kernel`` -> ``depthwise`` / ``pointwise`` convs;
- BatchNormalization gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean, running_var.

Every layer is accounted for: layers of the file that the model lacks, layers of the model the file lacks and
shape mismatches are all listed in one error. The one allowed gap is a classifier head when the file has no top
layers at all (a ``*_notop.h5`` file): then only the backbone is loaded, and ``load_keras_h5`` returns the head
layers it left initialised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ctdl.errors import InputError
from ctdl.models.backbones._common import BatchNormNoScale, GroupedFromDepthwise, SeparableConv2d

H5_SUFFIXES = (".h5", ".hdf5", ".keras")


def read_keras_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight name without the layer prefix and ':0' (kernel, bias, gamma ...): array}}.

    Reads both ``save_weights`` files (keras-applications) and full ``model.save`` files (``model_weights``).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: Keras weight file not found")
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        with h5py.File(path, "r") as f:
            g = f["model_weights"] if "model_weights" in f else f
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("layer_names", [])]
            if not names:
                raise InputError(f"{path}: no 'layer_names' attribute; not a Keras weight file")
            for layer in names:
                lg = g[layer]
                wnames = [n.decode() if isinstance(n, bytes) else str(n) for n in lg.attrs.get("weight_names", [])]
                if not wnames:
                    continue
                weights = {}
                for wn in wnames:
                    short = wn.split("/")[-1].split(":")[0]
                    weights[short] = np.asarray(lg[wn])
                out[layer] = weights
    except InputError:
        raise
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: cannot read as a Keras HDF5 weight file ({exc})") from exc
    return out


def convert_layer(module: nn.Module, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keras weights of one layer -> {module state key: tensor in PyTorch layout}."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    out: dict[str, torch.Tensor] = {}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
        for k, v in t.items():
            if k not in names:
                raise KeyError(k)
            out[names[k]] = v
        return out
    if isinstance(module, SeparableConv2d):
        for k, v in t.items():
            if k == "depthwise_kernel":
                out["depthwise.weight"] = v.permute(2, 3, 0, 1).reshape(-1, 1, v.shape[0], v.shape[1])
            elif k == "pointwise_kernel":
                out["pointwise.weight"] = v.permute(3, 2, 0, 1)
            elif k == "bias":
                out["pointwise.bias"] = v
            else:
                raise KeyError(k)
        return out
    for k, v in t.items():
        if k == "bias":
            out["bias"] = v
        elif k == "kernel" and isinstance(module, nn.Linear):
            out["weight"] = v.reshape(-1, v.shape[-1]).T if v.ndim in (2, 4) else v  # Dense, or a 1x1 conv head
        elif k == "kernel" and v.ndim == 4:
            out["weight"] = v.permute(3, 2, 0, 1)
        elif k == "kernel" and v.ndim == 5:
            out["weight"] = v.permute(4, 3, 0, 1, 2)
        elif k == "depthwise_kernel" and isinstance(module, GroupedFromDepthwise):
            kh, kw, cin, c = v.shape  # channel g*c+j, multiplier m -> output g*c+m, input j
            groups = cin // c
            w = v.reshape(kh, kw, groups, c, c)  # [.., g, j, m]
            out["weight"] = w.permute(2, 4, 3, 0, 1).reshape(cin, c, kh, kw)
        elif k == "depthwise_kernel":
            kh, kw, cin, m = v.shape
            out["weight"] = v.permute(2, 3, 0, 1).reshape(cin * m, 1, kh, kw)
        else:
            raise KeyError(k)
    return out


def _is_head(name: str) -> bool:
    return name in ("fc1", "fc2", "predictions", "conv_preds", "Logits", "probs", "fc1000")


def load_keras_h5(model: nn.Module, path: str | Path) -> list[str]:
    """Load a Keras .h5 weight file into ``model`` (which has ``keras_modules()``), strictly.

    Returns the classifier-head layers left initialised because the file has no top (empty otherwise).
    Raises InputError listing every unexpected, missing and mis-shaped layer weight.
    """
    path = Path(path)
    if not hasattr(model, "keras_modules"):
        raise InputError(f"{path}: model {type(model).__name__} has no Keras layer names; Keras .h5 weights load "
                         "only into DLAE's prebuilt backbones (use a PyTorch state dict otherwise)")
    file = read_keras_h5(path)
    mods: dict[str, nn.Module] = model.keras_modules()
    skipped_head: list[str] = []
    if not any(_is_head(n) for n in file):
        skipped_head = [n for n in mods if _is_head(n)]
        mods = {n: m for n, m in mods.items() if n not in skipped_head}
    unexpected = [n for n in file if n not in mods]
    missing = [n for n, m in mods.items() if n not in file and any(True for _ in m.parameters())]
    bad: list[str] = []
    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, weights in file.items():
        if name not in mods:
            continue
        module = mods[name]
        own = module.state_dict()
        try:
            conv = convert_layer(module, weights)
        except KeyError as exc:
            bad.append(f"{name}/{exc.args[0]} (unknown weight for {type(module).__name__})")
            continue
        for key, value in conv.items():
            if key not in own:
                bad.append(f"{name}/{key} (not in {type(module).__name__})")
            elif tuple(own[key].shape) != tuple(value.shape):
                bad.append(f"{name}/{key} (file {tuple(value.shape)} after conversion, model {tuple(own[key].shape)})")
            else:
                plan.append((own[key], value))
        need = [k for k, v in own.items() if k != "num_batches_tracked" and k not in conv
                and not (isinstance(module, BatchNormNoScale) and k == "weight")]
        missing += [f"{name}/{k}" for k in need]
    if unexpected or missing or bad:
        parts = []
        if missing:
            parts.append("missing in the file: " + ", ".join(missing))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected))
        if bad:
            parts.append("shape/weight mismatch: " + ", ".join(bad))
        raise InputError(f"{path}: Keras weights do not fit {type(model).__name__}; " + "; ".join(parts))
    with torch.no_grad():
        for dst, src in plan:
            dst.copy_(src.to(dst.dtype))
    return skipped_head


def write_keras_h5(path: str | Path, layers: dict[str, dict[str, Any]]) -> None:
    """Write ``{layer: {weight: array}}`` in keras-applications' ``save_weights`` layout (for tests and exports)."""
    import h5py

    from ctdl.io.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = np.array([n.encode() for n in layers])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.2.4"
            for name, weights in layers.items():
                g = f.create_group(name)
                wnames = [f"{name}/{w}:0" for w in weights]
                g.attrs["weight_names"] = np.array([w.encode() for w in wnames])
                for wn, arr in zip(wnames, weights.values()):
                    g.create_dataset(wn, data=np.asarray(arr))


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Load local pretrained weights: a Keras .h5 file (converted) or a PyTorch state dict (strict).

    Returns the head layers left initialised (a Keras file without top); raises InputError naming every
    missing, unexpected or mis-shaped key.
    """
    from ctdl.models.weights import load_weights, read_state_dict

    path = Path(path)
    if path.suffix.lower() in H5_SUFFIXES:
        return load_keras_h5(model, path)
    load_weights(model, read_state_dict(path), source=path)
    return []
