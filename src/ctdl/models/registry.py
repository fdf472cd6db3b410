"""The model registry: ``@register_model``, ``create_model(name, **kw)``, ``list_models()``.

Filled by explicit imports in :mod:`ctdl.models` (never by scanning folders).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from ctdl.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def register_model(
    name: str, task: str = "segmentation", dims: int = 3, default_input: tuple[int, ...] | None = None, **meta: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory with its task, spatial dims and default input shape (C, [D,] H, W)."""
    return MODELS.register(name, task=task, dims=dims, default_input=default_input, **meta)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``None`` kwargs are dropped so they never override defaults."""
    import ctdl.models  # noqa: F401  (fills the registry)

    return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    import ctdl.models  # noqa: F401

    return MODELS.names(pattern)


def model_info(name: str) -> dict[str, Any]:
    import ctdl.models  # noqa: F401

    return MODELS.meta(name)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_parameters_keras(model: nn.Module) -> int:
    """Keras 'Total params': trainable weights + BatchNorm moving mean/variance."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n += m.running_mean.numel() + m.running_var.numel()
    return n
