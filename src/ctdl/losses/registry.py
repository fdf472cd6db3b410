"""Loss registry: ``create_loss("weighted_dice", weights="balanced")`` -> ``nn.Module``.

Losses register themselves in :mod:`ctdl.losses.segmentation`; the helpers here import
that module explicitly (no folder scanning) so the registry is always filled.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ctdl.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


def _ensure_registered() -> None:
    """Import the modules that register losses (idempotent)."""
    import ctdl.losses.segmentation  # noqa: F401
    import ctdl.losses.classification  # noqa: F401
    import ctdl.losses.detection  # noqa: F401
    import ctdl.losses.adversarial  # noqa: F401


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name``; ``None`` keyword arguments keep the defaults."""
    _ensure_registered()
    return LOSSES.create(name, **kwargs)


def list_losses(pattern: str = "*") -> list[str]:
    """Sorted names of the registered losses matching a glob ``pattern``."""
    _ensure_registered()
    return LOSSES.names(pattern)


def loss_from_config(name: str, params: dict[str, Any], weights: list[float] | None) -> nn.Module:
    """The config's loss (``loss.name`` / ``loss.params``), given the run's class weights unless params set them."""
    kwargs = dict(params)
    if weights is not None:
        kwargs.setdefault("weights", weights)
    return create_loss(name, **kwargs)
