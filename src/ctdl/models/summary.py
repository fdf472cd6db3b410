"""Model listing and layer summaries for `ctdl models` (output shapes via forward hooks)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from ctdl.models.registry import count_parameters, count_parameters_keras, create_model, list_models, model_info


def model_table(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered model: name, task, dims, default input, parameter counts, description."""
    rows = []
    for name in list_models(pattern):
        info = model_info(name)
        torch.manual_seed(0)
        try:  # counting needs shapes only: the meta device allocates nothing (VGG16 at 512 x 512 has 572 M)
            with torch.device("meta"):
                model = create_model(name)
        except Exception:  # a factory that computes with real tensors while building
            model = create_model(name)
        rows.append({
            "name": name,
            "task": info.get("task", ""),
            "dims": info.get("dims", ""),
            "default_input": "x".join(str(s) for s in info.get("default_input") or ()),
            "params": count_parameters(model),
            "params_keras": count_parameters_keras(model),
            "description": info.get("description", ""),
        })
        del model
    return rows


def layer_summary(name: str, input_shape: Sequence[int], **kwargs: Any) -> list[dict[str, Any]]:
    """Leaf-module summary (module path, type, output shape, own parameters) for one forward pass."""
    model = create_model(name, **kwargs).eval()
    rows: list[dict[str, Any]] = []
    hooks = []
    for path, mod in model.named_modules():
        if path and not list(mod.children()):
            def hook(m: nn.Module, _inp: Any, out: Any, path: str = path) -> None:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                rows.append({"layer": path, "type": type(m).__name__, "output": shape,
                             "params": sum(p.numel() for p in m.parameters(recurse=False))})
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        out = model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else [tuple(o.shape) for o in out]  # feature lists
    rows.append({"layer": "(output)", "type": "", "output": shape, "params": count_parameters(model)})
    return rows
